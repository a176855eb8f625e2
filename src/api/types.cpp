// TensorView helpers, dtype/device names and Status formatting.
#include <sstream>

#include "fsa/status.hpp"
#include "fsa/types.hpp"

namespace fsa {

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
    case DType::kFloat16: return 2;
    case DType::kFloat32:
    case DType::kInt32: return 4;
    case DType::kFloat64: return 8;
    case DType::kUInt8: return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16: return "bf16";
    case DType::kFloat16: return "fp16";
    case DType::kFloat32: return "fp32";
    case DType::kFloat64: return "fp64";
    case DType::kInt32: return "int32";
    case DType::kUInt8: return "uint8";
  }
  return "?";
}

std::string device_name(Device device) {
  return device.kind == DeviceKind::kCPU ? std::string("cpu") : "cuda:" + std::to_string(device.index);
}

namespace {
TensorView make_view(void* data, DType dtype, std::span<const std::int64_t> sizes, Device device) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.ndim = static_cast<int>(sizes.size());
  int i = 0;
  for (std::int64_t s : sizes) {
    if (i < TensorView::kMaxDims) t.sizes[static_cast<std::size_t>(i)] = s;
    ++i;
  }
  return t;
}
}  // namespace

TensorView TensorView::contiguous(void* data, DType dtype, std::initializer_list<std::int64_t> sizes,
                                  Device device) {
  return contiguous(data, dtype, std::span<const std::int64_t>(sizes.begin(), sizes.size()), device);
}

TensorView TensorView::contiguous(void* data, DType dtype, std::span<const std::int64_t> sizes, Device device) {
  TensorView t = make_view(data, dtype, sizes, device);
  std::int64_t stride = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    if (d < kMaxDims) t.strides[static_cast<std::size_t>(d)] = stride;
    stride *= t.sizes[static_cast<std::size_t>(d)];
  }
  return t;
}

TensorView TensorView::strided(void* data, DType dtype, std::initializer_list<std::int64_t> sizes,
                               std::initializer_list<std::int64_t> strides, Device device) {
  TensorView t = make_view(data, dtype, std::span<const std::int64_t>(sizes.begin(), sizes.size()), device);
  int i = 0;
  for (std::int64_t s : strides) {
    if (i < kMaxDims) t.strides[static_cast<std::size_t>(i)] = s;
    ++i;
  }
  if (i != t.ndim) t.ndim = -1;  // rejected by validation: sizes and strides disagree
  return t;
}

std::int64_t TensorView::numel() const {
  std::int64_t n = 1;
  for (int d = 0; d < ndim && d < kMaxDims; ++d) n *= sizes[static_cast<std::size_t>(d)];
  return ndim > 0 ? n : 0;
}

bool TensorView::is_contiguous() const {
  std::int64_t expected = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (sizes[static_cast<std::size_t>(d)] != 1 && strides[static_cast<std::size_t>(d)] != expected) return false;
    expected *= sizes[static_cast<std::size_t>(d)];
  }
  return true;
}

std::string TensorView::shape_string() const {
  std::ostringstream out;
  out << '[';
  for (int d = 0; d < ndim && d < kMaxDims; ++d) out << (d ? ", " : "") << sizes[static_cast<std::size_t>(d)];
  out << ']';
  return out.str();
}

const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kInvalidArgument: return "invalid argument";
    case StatusCode::kNotImplemented: return "not implemented";
    case StatusCode::kCudaError: return "CUDA error";
    case StatusCode::kInternal: return "internal error";
  }
  return "?";
}

std::string Status::to_string() const {
  if (is_ok()) return "ok";
  std::ostringstream out;
  out << status_code_name(code_) << ": " << message_;
  if (file_ != nullptr && *file_ != '\0') out << " (" << file_ << ':' << line_ << ')';
  return out.str();
}

}  // namespace fsa
