// rope_forward / rope_backward: validation and the route to a backend.
#include "fsa/ops.hpp"
#include "reference/ops.hpp"
#include "route.hpp"
#include "validate.hpp"

namespace fsa {

using detail::Arg;
using detail::Dim;

namespace {

Status rope(const char* op, const char* in_name, const char* out_name, const RopeConfig& config,
            const TensorView& x, const TensorView& cu, int position_stride, const TensorView& y, bool inverse) {
  FSA_RETURN_IF_ERROR(config.validate());
  const Arg xa{in_name, x};
  FSA_RETURN_IF_ERROR(detail::check_float_dtype(xa));
  FSA_RETURN_IF_ERROR(detail::check_tensor(xa, {{Dim::kAnyDim, "rows"}, {Dim::kAnyDim, "H"}, {Dim::kAnyDim, "D"}}));
  if (x.size(2) % 2 != 0)
    return FSA_INVALID(std::string(in_name) + ": expected an even head dim D for rotate-half, got " +
                       std::to_string(x.size(2)));
  const Arg cua{"cu", cu};
  FSA_RETURN_IF_ERROR(detail::check_same_device(cua, xa));
  FSA_RETURN_IF_ERROR(detail::check_cu_seqlens(cua, x.size(0), "rows (x.size(0))", /*exact=*/false));
  if (position_stride < 1)
    return FSA_INVALID("position_stride: expected >= 1, got " + std::to_string(position_stride));
  FSA_RETURN_IF_ERROR(detail::check_like({out_name, y}, xa));
  // The output may be the input itself (each thread rotates the pairs it reads), nothing else.
  FSA_RETURN_IF_ERROR(detail::check_no_overlap({{out_name, y}}, {xa, cua}, {}, {out_name, in_name}));
  return detail::route(
      op, x.device, [&] { ref::rope(config, x, cu, position_stride, y, inverse); },
      [&] { return FSA_CUDA_BACKEND(op, x.device, cuda::rope(config, x, cu, position_stride, y, inverse)); });
}

}  // namespace

Status rope_forward(const RopeConfig& rope_config, const TensorView& x, const TensorView& cu, int position_stride,
                    const TensorView& y) {
  return rope("rope_forward", "x", "y", rope_config, x, cu, position_stride, y, false);
}

Status rope_backward(const RopeConfig& rope_config, const TensorView& dy, const TensorView& cu, int position_stride,
                     const TensorView& dx) {
  return rope("rope_backward", "dy", "dx", rope_config, dy, cu, position_stride, dx, true);
}

}  // namespace fsa
