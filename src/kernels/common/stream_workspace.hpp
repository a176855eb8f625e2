// A stream-ordered device workspace (cudaMallocAsync / cudaFreeAsync on the launch stream): the
// call never waits for the host and stays capturable in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/runtime.hpp"

namespace fsa::cuda::common {

// Freed workspace should stay in the device's memory pool. With the pool's default release
// threshold (0) the pool hands its memory back to the driver at every synchronisation and the next
// call maps it again: measured ~3 ms per call for the 4 GB of selected-attention partials at
// S64-G4 on H100, more than some of the kernels. So the threshold of the current pool is raised to
// at least the largest workspace asked for (never lowered). Best effort: a failure only costs time.
// Skipped while the stream is being captured: pool attribute calls would invalidate the capture
// (and a graph's allocations are not returned between replays anyway).
inline void keep_in_pool(std::size_t bytes, cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) return;
  int device = 0;
  cudaMemPool_t pool;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetMemPool(&pool, device) != cudaSuccess) return;
  std::uint64_t threshold = 0;
  if (cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold) != cudaSuccess) return;
  if (threshold < bytes) {
    std::uint64_t wanted = bytes;
    cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &wanted);
  }
}

class StreamWorkspace {
 public:
  StreamWorkspace(std::size_t bytes, cudaStream_t stream)
      : stream_(stream),
        status_((keep_in_pool(bytes, stream), cuda_status(cudaMallocAsync(&data_, bytes > 0 ? bytes : 256, stream),
                                                  "cudaMallocAsync", __FILE__, __LINE__))) {}
  ~StreamWorkspace() {
    if (data_ != nullptr) cudaFreeAsync(data_, stream_);
  }
  StreamWorkspace(const StreamWorkspace&) = delete;
  StreamWorkspace& operator=(const StreamWorkspace&) = delete;
  const Status& status() const { return status_; }
  unsigned char* bytes() const { return static_cast<unsigned char*>(data_); }

 private:
  void* data_ = nullptr;
  cudaStream_t stream_;
  Status status_;
};

inline std::size_t align256(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace fsa::cuda::common
