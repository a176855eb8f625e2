#include "cuda/runtime.hpp"

#include "kernels/common/dispatch_table.hpp"

namespace fsa::cuda {

CudaDeviceInfo query_device() {
  CudaDeviceInfo info;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    info.reason = err != cudaSuccess ? std::string("no usable CUDA device: ") + cudaGetErrorString(err)
                                     : std::string("no CUDA device present");
    cudaGetLastError();  // clear the sticky error of a failed query
    return info;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    info.reason = "cudaGetDeviceProperties failed";
    return info;
  }
  info.available = true;
  info.device_count = count;
  info.name = prop.name;
  info.sm_major = prop.major;
  info.sm_minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  int current = 0;
  if (cudaGetDevice(&current) == cudaSuccess && current == 0)
    info.kernel_set = common::kernel_arch() == common::KernelArch::kSm90a ? "sm_90a (wgmma)" : "sm80 (mma.sync)";
  return info;
}

Status check_launch(const char* kernel, cudaStream_t stream, const char* file, int line) {
  FSA_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), kernel, file, line));
#ifdef FSA_SYNC_AFTER_LAUNCH
  // A stream being captured into a graph cannot be synchronised; its kernels run at replay.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  FSA_RETURN_IF_ERROR(cuda_status(cudaStreamIsCapturing(stream, &capture), kernel, file, line));
  if (capture == cudaStreamCaptureStatusNone)
    FSA_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(stream), kernel, file, line));
#else
  (void)stream;
#endif
  return Status::ok();
}

}  // namespace fsa::cuda
