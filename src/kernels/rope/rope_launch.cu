// Host side of the RoPE kernel: fills the params and turns the runtime dtype into the template
// argument (the one place it happens for this op).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/rope_frequency.hpp"
#include "cuda/runtime.hpp"
#include "kernels/common/launch_checks.hpp"
#include "cuda/backend.hpp"
#include "kernels/rope/rope_params.hpp"

namespace fsa::cuda {

template <class Element>
Status launch_rope(const RopeParams& params, cudaStream_t stream);  // instantiations/rope_*.cu

Status rope(const RopeConfig& config, const TensorView& x, const TensorView& cu, int position_stride,
            const TensorView& y, bool inverse) {
  const int pairs = static_cast<int>(x.size(2) / 2);
  if (pairs > RopeParams::kMaxPairs)
    return FSA_ERROR(StatusCode::kNotImplemented, "x: RoPE on CUDA supports head dims up to " +
                                                      std::to_string(2 * RopeParams::kMaxPairs) + ", got " +
                                                      std::to_string(x.size(2)));
  RopeParams p{};
  p.x = x.data;
  p.y = y.data;
  p.x_row_stride = x.stride(0);
  p.x_head_stride = x.stride(1);
  p.y_row_stride = y.stride(0);
  p.y_head_stride = y.stride(1);
  p.cu = cu.ptr<const std::int32_t>();
  p.cu_stride = cu.stride(0);
  p.num_seqs = static_cast<int>(cu.size(0) - 1);
  p.rows = x.size(0);
  p.heads = static_cast<int>(x.size(1));
  p.pairs = pairs;
  p.position_stride = position_stride;
  p.sign = inverse ? -1.0f : 1.0f;
  const auto even = [](std::int64_t v) { return v % 2 == 0; };
  p.paired = pairs % 2 == 0 && even(p.x_row_stride) && even(p.x_head_stride) && even(p.y_row_stride) &&
             even(p.y_head_stride) && reinterpret_cast<std::uintptr_t>(x.data) % 4 == 0 &&
             reinterpret_cast<std::uintptr_t>(y.data) % 4 == 0;
  for (int i = 0; i < pairs; ++i) p.frequency[i] = rope_frequency(config, i, static_cast<int>(x.size(2)));
  if (p.num_seqs == 0) return Status::ok();

  const DeviceGuard guard(x.device.index);
  return common::dispatch_dtype(inverse ? "rope_backward" : "rope_forward", "x", x.dtype,
                                [&]<class Element>() { return launch_rope<Element>(p, current_stream()); });
}

}  // namespace fsa::cuda
