// Build and machine information.
#include "fsa/runtime.hpp"

#include <algorithm>
#include <string>
#include <thread>

#include "common/env_value.hpp"
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

Status check_environment() {
  int threads = 0;
  FSA_RETURN_IF_ERROR(ref::env_num_threads(&threads));
  std::string word;
  FSA_RETURN_IF_ERROR(detail::env_disable_wgmma(&word));
  FSA_RETURN_IF_ERROR(detail::env_decode_select(&word));
  FSA_RETURN_IF_ERROR(detail::env_decode_quarter_kernel(&word));
  long long number = 0;
  FSA_RETURN_IF_ERROR(detail::env_prefill_long_chunk_min_tokens(&number));
  FSA_RETURN_IF_ERROR(detail::env_slc_min_chunk_tokens(&number));
  FSA_RETURN_IF_ERROR(detail::env_decode_attn_stages(&number));
  FSA_RETURN_IF_ERROR(detail::env_decode_attn_splits(&number));
  return detail::env_compress_k_splits(&number);
}

}  // namespace fsa
