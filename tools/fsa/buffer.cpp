#include "buffer.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#ifdef FSA_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace fsa::tool {

namespace {

std::vector<unsigned char> encode(const std::vector<double>& values, DType dtype) {
  std::vector<unsigned char> bytes(values.size() * dtype_size(dtype));
  for (std::size_t i = 0; i < values.size(); ++i) {
    unsigned char* p = bytes.data() + i * dtype_size(dtype);
    switch (dtype) {
      case DType::kBFloat16: { const std::uint16_t b = float_to_bf16(static_cast<float>(values[i])); std::memcpy(p, &b, 2); break; }
      case DType::kFloat16: { const std::uint16_t b = float_to_half(static_cast<float>(values[i])); std::memcpy(p, &b, 2); break; }
      case DType::kFloat32: { const float f = static_cast<float>(values[i]); std::memcpy(p, &f, 4); break; }
      case DType::kFloat64: std::memcpy(p, &values[i], 8); break;
      case DType::kInt32: { const std::int32_t v = static_cast<std::int32_t>(values[i]); std::memcpy(p, &v, 4); break; }
      case DType::kUInt8: *p = static_cast<unsigned char>(values[i]); break;
    }
  }
  return bytes;
}

std::vector<double> decode(const unsigned char* bytes, std::size_t count, DType dtype) {
  std::vector<double> values(count);
  for (std::size_t i = 0; i < count; ++i) {
    const unsigned char* p = bytes + i * dtype_size(dtype);
    switch (dtype) {
      case DType::kBFloat16: { std::uint16_t b; std::memcpy(&b, p, 2); values[i] = bf16_to_float(b); break; }
      case DType::kFloat16: { std::uint16_t b; std::memcpy(&b, p, 2); values[i] = half_to_float(b); break; }
      case DType::kFloat32: { float f; std::memcpy(&f, p, 4); values[i] = f; break; }
      case DType::kFloat64: std::memcpy(&values[i], p, 8); break;
      case DType::kInt32: { std::int32_t v; std::memcpy(&v, p, 4); values[i] = v; break; }
      case DType::kUInt8: values[i] = *p; break;
    }
  }
  return values;
}

}  // namespace

Buffer::Buffer(Device device, DType dtype, std::vector<std::int64_t> sizes, std::string* error)
    : device_(device), dtype_(dtype), sizes_(std::move(sizes)) {
  const std::size_t n = bytes() + 16;  // never a null pointer, even when empty
  if (device_.kind == DeviceKind::kCPU) {
    data_ = std::calloc(n, 1);
    if (data_ == nullptr && error) *error = "host allocation of " + std::to_string(n) + " bytes failed";
    return;
  }
#ifdef FSA_WITH_CUDA
  if (cudaMalloc(&data_, n) != cudaSuccess) {
    data_ = nullptr;
    if (error) *error = "cudaMalloc of " + std::to_string(n) + " bytes failed";
  }
#else
  if (error) *error = "built without CUDA";
#endif
}

Buffer::~Buffer() { release(); }

Buffer::Buffer(Buffer&& other) noexcept { *this = std::move(other); }

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    release();
    device_ = other.device_;
    dtype_ = other.dtype_;
    sizes_ = std::move(other.sizes_);
    data_ = other.data_;
    other.data_ = nullptr;
  }
  return *this;
}

void Buffer::release() {
  if (data_ == nullptr) return;
  if (device_.kind == DeviceKind::kCPU) {
    std::free(data_);
  } else {
#ifdef FSA_WITH_CUDA
    cudaFree(data_);
#endif
  }
  data_ = nullptr;
}

std::int64_t Buffer::numel() const {
  std::int64_t n = 1;
  for (std::int64_t s : sizes_) n *= s;
  return n;
}

TensorView Buffer::view() const { return TensorView::contiguous(data_, dtype_, sizes_, device_); }

Status Buffer::upload(const std::vector<double>& values) {
  const std::vector<unsigned char> bytes = encode(values, dtype_);
  if (device_.kind == DeviceKind::kCPU) {
    std::memcpy(data_, bytes.data(), bytes.size());
    return Status::ok();
  }
#ifdef FSA_WITH_CUDA
  if (cudaMemcpy(data_, bytes.data(), bytes.size(), cudaMemcpyHostToDevice) != cudaSuccess)
    return FSA_ERROR(StatusCode::kCudaError, "upload: cudaMemcpy failed");
#endif
  return Status::ok();
}

Status Buffer::upload_repeating(const std::vector<double>& block) {
  if (block.empty() || static_cast<std::int64_t>(block.size()) >= numel()) {
    std::vector<double> values(static_cast<std::size_t>(numel()));
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = block.empty() ? 0.0 : block[i % block.size()];
    return upload(values);
  }
  const std::vector<unsigned char> bytes = encode(block, dtype_);
  const std::size_t total = this->bytes();
  for (std::size_t at = 0; at < total; at += bytes.size()) {
    const std::size_t n = std::min(bytes.size(), total - at);
    auto* dst = static_cast<unsigned char*>(data_) + at;
    if (device_.kind == DeviceKind::kCPU) {
      std::memcpy(dst, bytes.data(), n);
      continue;
    }
#ifdef FSA_WITH_CUDA
    if (cudaMemcpy(dst, bytes.data(), n, cudaMemcpyHostToDevice) != cudaSuccess)
      return FSA_ERROR(StatusCode::kCudaError, "upload: cudaMemcpy failed");
#endif
  }
  return Status::ok();
}

Status Buffer::download(std::vector<double>* values) const {
  std::vector<unsigned char> bytes(this->bytes());
  if (device_.kind == DeviceKind::kCPU) {
    std::memcpy(bytes.data(), data_, bytes.size());
  } else {
#ifdef FSA_WITH_CUDA
    if (cudaMemcpy(bytes.data(), data_, bytes.size(), cudaMemcpyDeviceToHost) != cudaSuccess)
      return FSA_ERROR(StatusCode::kCudaError, "download: cudaMemcpy failed");
#endif
  }
  *values = decode(bytes.data(), static_cast<std::size_t>(numel()), dtype_);
  return Status::ok();
}

bool cuda_usable() { return cuda_device_info().available; }

bool cuda_memory_info(std::uint64_t* free_bytes, std::uint64_t* total_bytes) {
  *free_bytes = *total_bytes = 0;
#ifdef FSA_WITH_CUDA
  std::size_t free_now = 0, total = 0;
  if (cudaMemGetInfo(&free_now, &total) != cudaSuccess) {
    cudaGetLastError();  // clear the error of the failed query
    return false;
  }
  *free_bytes = free_now;
  *total_bytes = total;
  return true;
#else
  return false;
#endif
}

Status synchronize(Device device) {
  if (device.kind == DeviceKind::kCPU) return Status::ok();
#ifdef FSA_WITH_CUDA
  if (cudaDeviceSynchronize() != cudaSuccess)
    return FSA_ERROR(StatusCode::kCudaError, std::string("cudaDeviceSynchronize: ") +
                                                 cudaGetErrorString(cudaGetLastError()));
#endif
  return Status::ok();
}

}  // namespace fsa::tool
