// Build and machine information.
#include "fsa/runtime.hpp"

#include <algorithm>
#include <thread>

#include "reference/parallel.hpp"

#ifdef FSA_WITH_CUDA
#include "cuda/runtime.hpp"
#endif

namespace fsa {

bool built_with_cuda() {
#ifdef FSA_WITH_CUDA
  return true;
#else
  return false;
#endif
}

CudaDeviceInfo cuda_device_info() {
#ifdef FSA_WITH_CUDA
  return cuda::query_device();
#else
  CudaDeviceInfo info;
  info.reason = "built without CUDA (no nvcc at configure time, or FSA_ENABLE_CUDA=OFF)";
  return info;
#endif
}

namespace {
thread_local void* current_cuda_stream = nullptr;
}

void set_cuda_stream(void* stream) { current_cuda_stream = stream; }
void* cuda_stream() { return current_cuda_stream; }

const char* version() { return "0.1.0"; }

Status cpu_threads(int* threads) {
  int n = 0;
  const Status s = ref::env_num_threads(&n);
  *threads = n > 0 ? n : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return s;
}

}  // namespace fsa
