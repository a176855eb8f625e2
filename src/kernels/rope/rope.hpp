// RoPE on the GPU: forward and backward (rotation by the negative angle).
#pragma once

#include "fsa/config.hpp"
#include "fsa/types.hpp"

namespace fsa::cuda {

// x, y [rows, H, D] bf16/fp16 and cu int32 on one CUDA device, already validated.
Status rope(const RopeConfig& rope, const TensorView& x, const TensorView& cu, int position_stride,
            const TensorView& y, bool inverse);

}  // namespace fsa::cuda
