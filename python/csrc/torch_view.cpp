#include "torch_view.hpp"

#include <c10/util/Exception.h>

#include <string>

namespace fsa::torch_ext {

DType to_fsa_dtype(at::ScalarType type, const char* name) {
  switch (type) {
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kHalf:
      return DType::kFloat16;
    case at::kFloat:
      return DType::kFloat32;
    case at::kDouble:
      return DType::kFloat64;
    case at::kInt:
      return DType::kInt32;
    case at::kByte:
      return DType::kUInt8;
    default:
      TORCH_CHECK_TYPE(false, name, ": dtype ", type,
                       " is not supported by fsa (floating: bfloat16, float16, float32, float64; "
                       "indices: int32)");
  }
}

namespace {

Device to_fsa_device(const at::Device& device, const char* name) {
  if (device.is_cpu()) return Device::cpu();
  if (device.is_cuda()) return Device::cuda(device.has_index() ? device.index() : 0);
  TORCH_CHECK_VALUE(false, name, ": device ", device, " is not supported by fsa (cpu or cuda)");
}

}  // namespace

TensorView to_view(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK_VALUE(tensor.defined(), name, ": expected a tensor, got an undefined one");
  TORCH_CHECK_VALUE(tensor.dim() >= 1 && tensor.dim() <= TensorView::kMaxDims, name, ": expected 1 to ",
                    TensorView::kMaxDims, " dims, got ", tensor.dim(), " (shape ", tensor.sizes(), ")");
  TensorView view;
  view.data = tensor.data_ptr();
  view.dtype = to_fsa_dtype(tensor.scalar_type(), name);
  view.device = to_fsa_device(tensor.device(), name);
  view.ndim = static_cast<int>(tensor.dim());
  for (int d = 0; d < view.ndim; ++d) {
    view.sizes[static_cast<std::size_t>(d)] = tensor.size(d);
    view.strides[static_cast<std::size_t>(d)] = tensor.stride(d);
  }
  return view;
}

TensorView to_view(const std::optional<at::Tensor>& tensor, const char* name) {
  if (!tensor.has_value() || !tensor->defined()) return TensorView{};
  return to_view(*tensor, name);
}

void throw_if_error(const Status& status) {
  if (status.is_ok()) return;
  // The message alone, "d_o: expected ...": the exception's type says the code, the op registration
  // appends the op (named_op.hpp), and the source location stays with the Status (to_string()) for
  // C++ callers: every validation failure is raised by the same helper, so to a Python user the
  // location says nothing.
  switch (status.code()) {
    case StatusCode::kNotImplemented:
      TORCH_CHECK_NOT_IMPLEMENTED(false, status.message());
    case StatusCode::kInvalidArgument:
      TORCH_CHECK_VALUE(false, status.message());
    default:
      // A RuntimeError is every kind of failure; say which (CUDA error, internal error).
      TORCH_CHECK(false, status_code_name(status.code()), ": ", status.message());
  }
}

}  // namespace fsa::torch_ext
