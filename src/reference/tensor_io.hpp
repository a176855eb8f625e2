// Moving data between strided TensorViews of any dtype and the contiguous fp32/fp64 arrays the
// reference computes on. bf16/fp16 conversions round to nearest even, as the GPU does.
#pragma once

#include <cstdint>
#include <vector>

#include "fsa/convert.hpp"
#include "fsa/types.hpp"

namespace fsa::ref {

using fsa::bf16_to_float;
using fsa::float_to_bf16;
using fsa::float_to_half;
using fsa::half_to_float;

// Contiguous row-major copy of a host tensor, converted to T. An undefined view gives {}.
template <class T>
std::vector<T> load(const TensorView& view);
// Writes a contiguous row-major array into a host tensor, converting to its dtype.
template <class T>
void store(const std::vector<T>& values, const TensorView& view);

std::vector<std::int32_t> load_int32(const TensorView& view);
void store_int32(const std::vector<std::int32_t>& values, const TensorView& view);

}  // namespace fsa::ref
