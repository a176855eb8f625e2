// Element types, devices and the non-owning strided tensor view used by every entry point.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>

namespace fsa {

enum class DType : std::uint8_t {
  kBFloat16,
  kFloat16,
  kFloat32,
  kFloat64,  // CPU reference only: used by tests for finite-difference gradient checks
  kInt32,    // index tensors: cu_seqlens, topk_idx
  kUInt8,    // opaque byte buffers: the saved activations of the whole layer
};

std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
inline bool is_floating(DType d) {
  return d == DType::kBFloat16 || d == DType::kFloat16 || d == DType::kFloat32 || d == DType::kFloat64;
}

enum class DeviceKind : std::uint8_t { kCPU, kCUDA };

struct Device {
  DeviceKind kind = DeviceKind::kCPU;
  int index = 0;

  static Device cpu() { return {DeviceKind::kCPU, 0}; }
  static Device cuda(int index = 0) { return {DeviceKind::kCUDA, index}; }
  bool operator==(const Device& other) const { return kind == other.kind && index == other.index; }
  bool operator!=(const Device& other) const { return !(*this == other); }
};

std::string device_name(Device device);

// A non-owning view of a tensor of up to kMaxDims dimensions. Strides are in elements and are
// 64-bit so that tensors with more than 2^31 elements index correctly. Every entry point requires
// the last dimension to be contiguous (stride 1).
struct TensorView {
  static constexpr int kMaxDims = 4;

  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Device device{};
  int ndim = 0;
  std::array<std::int64_t, kMaxDims> sizes{};
  std::array<std::int64_t, kMaxDims> strides{};

  // A row-major contiguous view.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<std::int64_t> sizes,
                               Device device = Device::cpu());
  static TensorView contiguous(void* data, DType dtype, std::span<const std::int64_t> sizes,
                               Device device = Device::cpu());
  // A view with explicit strides (in elements).
  static TensorView strided(void* data, DType dtype, std::initializer_list<std::int64_t> sizes,
                            std::initializer_list<std::int64_t> strides, Device device = Device::cpu());

  bool defined() const { return ndim > 0 || data != nullptr; }
  std::int64_t size(int dim) const { return sizes[static_cast<std::size_t>(dim)]; }
  std::int64_t stride(int dim) const { return strides[static_cast<std::size_t>(dim)]; }
  std::int64_t numel() const;
  bool is_contiguous() const;
  std::string shape_string() const;  // "[4, 2, 64]"

  template <class T>
  T* ptr() const { return static_cast<T*>(data); }
};

}  // namespace fsa
