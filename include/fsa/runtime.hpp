// What the library was built with and what the machine offers.
#pragma once

#include <string>

#include "fsa/status.hpp"

namespace fsa {

struct CudaDeviceInfo {
  bool available = false;  // built with CUDA and a device is present
  int device_count = 0;
  std::string name;        // of device 0
  int sm_major = 0, sm_minor = 0;
  int multiprocessors = 0;
  // The kernel set device 0 runs: "sm_90a (wgmma)" on a Hopper GPU with a build that includes
  // sm_90a (and FSA_DISABLE_WGMMA unset), else "sm80 (mma.sync)".
  std::string kernel_set;
  std::string reason;      // why not available, when it is not
};

bool built_with_cuda();

// The CUDA stream (a cudaStream_t, passed as void* so this header needs no CUDA) on which the
// calling thread's GPU work is enqueued; nullptr (the default) is the legacy default stream.
// Entry points never synchronise with the host, so capturing them into a CUDA graph on this stream
// works.
void set_cuda_stream(void* stream);
void* cuda_stream();

// Sets the stream for a scope and restores the previous one after it.
class CudaStreamScope {
 public:
  explicit CudaStreamScope(void* stream) : previous_(cuda_stream()) { set_cuda_stream(stream); }
  ~CudaStreamScope() { set_cuda_stream(previous_); }
  CudaStreamScope(const CudaStreamScope&) = delete;
  CudaStreamScope& operator=(const CudaStreamScope&) = delete;

 private:
  void* previous_;
};
CudaDeviceInfo cuda_device_info();
const char* version();

// The threads the CPU reference runs on: FSA_NUM_THREADS when set, else every core. An error
// naming FSA_NUM_THREADS when it is set to anything but an integer from 1 to 1024; the CPU
// reference then uses every core (and says so once on stderr), so a program can refuse the
// setting up front instead.
Status cpu_threads(int* threads);

// Every environment variable the library reads, checked at once: FSA_NUM_THREADS (above),
// FSA_DISABLE_WGMMA (0 or 1), FSA_DECODE_SELECT (fused or two-pass), FSA_DECODE_QUARTER_KERNEL (0
// or 1), and
// the integer switches FSA_PREFILL_LONG_CHUNK_MIN_TOKENS, FSA_SLC_MIN_CHUNK_TOKENS,
// FSA_COMPRESS_K_SPLITS, FSA_DECODE_ATTN_STAGES and FSA_DECODE_ATTN_SPLITS (docs/architecture.md).
// The first bad one is an error naming it. The ops themselves refuse a bad decode switch or
// FSA_PREFILL_LONG_CHUNK_MIN_TOKENS by name and use the default for the others (saying so once on
// stderr), so a program that wants every setting honoured checks up front.
Status check_environment();

}  // namespace fsa
