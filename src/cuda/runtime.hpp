// CUDA runtime glue shared by the launchers: error checks that become Status values, the device
// query, and the launch check (with a synchronising debug mode).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "fsa/runtime.hpp"
#include "fsa/status.hpp"

namespace fsa::cuda {

CudaDeviceInfo query_device();

inline Status cuda_status(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return Status::ok();
  return Status(StatusCode::kCudaError, std::string(what) + ": " + cudaGetErrorName(err) + " (" +
                                            cudaGetErrorString(err) + ")",
                file, line);
}

// Makes `device` current for the scope and restores the caller's device after it, so a call on a
// tensor of another GPU leaves the caller's state as it was.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cudaGetDevice(&previous_);
    if (device != previous_) cudaSetDevice(device);
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// The stream set with fsa::set_cuda_stream on this thread (the legacy default stream if none).
inline cudaStream_t current_stream() { return static_cast<cudaStream_t>(fsa::cuda_stream()); }

// After every launch: the launch error, and with FSA_SYNC_AFTER_LAUNCH the kernel's own error.
Status check_launch(const char* kernel, cudaStream_t stream, const char* file, int line);

}  // namespace fsa::cuda

#define FSA_CUDA_CHECK(expr) \
  FSA_RETURN_IF_ERROR(::fsa::cuda::cuda_status((expr), #expr, __FILE__, __LINE__))
#define FSA_CHECK_LAUNCH(kernel, stream) \
  FSA_RETURN_IF_ERROR(::fsa::cuda::check_launch((kernel), (stream), __FILE__, __LINE__))
