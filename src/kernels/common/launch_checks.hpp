// Host-side checks and dispatch shared by the launchers of the kernel families: the limits every
// CUDA path has (16-byte rows, bf16/fp16, the head dims instantiated by
// tools/gen_instantiations.py), and the one place each turns runtime values into template
// arguments. Errors are kNotImplemented (a valid request this path does not serve) and start
// with the argument's name.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "fsa/status.hpp"
#include "fsa/types.hpp"

namespace fsa::cuda::common {

// The kernels move rows as 16-byte vectors: the data pointer is 16-byte aligned and every stride
// but the last (contiguous) dim's is a multiple of 16 bytes. An undefined tensor passes.
inline Status check_rows_aligned(const char* op, const char* name, const TensorView& t) {
  if (!t.defined()) return Status::ok();
  const auto address = reinterpret_cast<std::uintptr_t>(t.data);
  const std::int64_t vector = 16 / static_cast<std::int64_t>(dtype_size(t.dtype));
  bool aligned = address % 16 == 0;
  for (int d = 0; d + 1 < t.ndim; ++d) aligned = aligned && t.stride(d) % vector == 0;
  if (aligned) return Status::ok();
  return FSA_ERROR(StatusCode::kNotImplemented,
                   std::string(name) + ": " + op +
                       " on CUDA needs 16-byte aligned rows (data pointer and strides multiples of 16 bytes)");
}

// The same check for several named tensors of one call; the first misaligned one is reported.
struct NamedView {
  const char* name;
  const TensorView& view;
};
inline Status check_rows_aligned(const char* op, std::initializer_list<NamedView> views) {
  for (const NamedView& v : views) FSA_RETURN_IF_ERROR(check_rows_aligned(op, v.name, v.view));
  return Status::ok();
}

// Calls fn.template operator()<Element>() for bf16 and fp16; `name` is the argument whose dtype
// decides.
template <class Fn>
Status dispatch_dtype(const char* op, const char* name, DType dtype, Fn&& fn) {
  if (dtype == DType::kBFloat16) return fn.template operator()<__nv_bfloat16>();
  if (dtype == DType::kFloat16) return fn.template operator()<__half>();
  return FSA_ERROR(StatusCode::kNotImplemented, std::string(name) + ": " + op +
                                                    " on CUDA supports bf16 and fp16, got " + dtype_name(dtype));
}

// Calls fn.template operator()<Element, Dqk, Dv>() for the attention head dims of the spec's models
// (64, 128, 256, and MLA-style 192 for q/k with 128 for v) in bf16 and fp16.
template <class Fn>
Status dispatch_attention(const char* op, DType dtype, std::int64_t dqk, std::int64_t dv, Fn&& fn) {
  return dispatch_dtype(op, "q", dtype, [&]<class Element>() -> Status {
    if (dqk == 64 && dv == 64) return fn.template operator()<Element, 64, 64>();
    if (dqk == 128 && dv == 128) return fn.template operator()<Element, 128, 128>();
    if (dqk == 192 && dv == 128) return fn.template operator()<Element, 192, 128>();
    if (dqk == 256 && dv == 256) return fn.template operator()<Element, 256, 256>();
    return FSA_ERROR(StatusCode::kNotImplemented,
                     std::string("q: ") + op + " on CUDA supports head dims (Dqk/Dv) 64/64, 128/128, 192/128 and " +
                         "256/256, got " + std::to_string(dqk) + "/" + std::to_string(dv));
  });
}

}  // namespace fsa::cuda::common
