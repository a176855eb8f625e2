// StreamScratch (cuda/backend.hpp): the convenience allocation behind an empty Workspace. Stream
// ordered, so a call never waits for the host and stays capturable in a CUDA graph; the device's
// default memory pool is used as it is configured (no release threshold is changed: a caller that
// wants the memory kept passes its own workspace, as the benchmarks and the PyTorch extension do).
#include <cuda_runtime.h>

#include <string>

#include "cuda/backend.hpp"
#include "cuda/runtime.hpp"

namespace fsa::cuda {

namespace {

Status allocate(std::size_t bytes, int device, void** data, void** stream) {
  if (bytes == 0) return Status::ok();
  const DeviceGuard guard(device);
  *stream = current_stream();
  const cudaError_t err = cudaMallocAsync(data, bytes, static_cast<cudaStream_t>(*stream));
  if (err == cudaSuccess) return Status::ok();
  cudaGetLastError();
  *data = nullptr;
  return FSA_ERROR(StatusCode::kCudaError, "workspace: allocating " + std::to_string(bytes) +
                                               " bytes with cudaMallocAsync failed (" + cudaGetErrorName(err) +
                                               "); lower SlcOptions::workspace_cap or pass a Workspace of your own");
}

}  // namespace

StreamScratch::StreamScratch(std::size_t bytes, int device)
    : bytes_(bytes), device_(device), status_(allocate(bytes, device, &data_, &stream_)) {}

StreamScratch::~StreamScratch() {
  if (data_ == nullptr) return;
  const DeviceGuard guard(device_);
  cudaFreeAsync(data_, static_cast<cudaStream_t>(stream_));
}

}  // namespace fsa::cuda
