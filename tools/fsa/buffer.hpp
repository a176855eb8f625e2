// Owning tensor storage for the tool, on the host or on a CUDA device, with staging through
// double-precision host vectors.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fsa/fsa.hpp"

namespace fsa::tool {

class Buffer {
 public:
  Buffer() = default;
  // Allocates dtype[sizes] on `device`; `error` is set when a CUDA allocation fails.
  Buffer(Device device, DType dtype, std::vector<std::int64_t> sizes, std::string* error);
  ~Buffer();
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  TensorView view() const;
  std::int64_t numel() const;
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }

  // Converts to the buffer's dtype (rounding to nearest even) and copies to its device.
  Status upload(const std::vector<double>& values);
  // Fills the buffer with `block` repeated (long benchmark inputs without billions of host values).
  Status upload_repeating(const std::vector<double>& block);
  Status download(std::vector<double>* values) const;

 private:
  void release();

  Device device_{};
  DType dtype_ = DType::kFloat32;
  std::vector<std::int64_t> sizes_;
  void* data_ = nullptr;
};

// Whether the tool can allocate on and synchronise with CUDA device 0.
bool cuda_usable();
// Free and total memory of CUDA device 0 (cudaMemGetInfo); false without CUDA or when the query fails.
bool cuda_memory_info(std::uint64_t* free_bytes, std::uint64_t* total_bytes);
// Blocks until the device's queued work is done (no-op on the CPU); the timer uses it.
Status synchronize(Device device);

}  // namespace fsa::tool
