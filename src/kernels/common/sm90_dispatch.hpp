// Host-side choice between a kernel's Hopper (wgmma) variant and its sm80 (mma.sync) one.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>

namespace fsa::cuda::common {

// Whether FSA_DISABLE_WGMMA is set (to anything but "0"): every op then runs its mma.sync kernels,
// so the two can be compared (and both tested) on one Hopper machine.
inline bool wgmma_disabled() {
  static const bool disabled = [] {
    const char* env = std::getenv("FSA_DISABLE_WGMMA");
    return env != nullptr && *env != '\0' && *env != '0';
  }();
  return disabled;
}

// Whether the current device runs the sm_90a image of kKernel (a Hopper GPU and a build that
// includes 90a; on a Hopper GPU a build for sm_80 only loads the sm_80 image, whose body of a
// wgmma kernel is a trap). Cached per device.
template <auto kKernel>
bool runs_sm90_image() {
  static std::atomic<int> cached[64];  // 0: unknown, 1: yes, 2: no
  int device = 0;
  if (wgmma_disabled() || cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return false;
  int state = cached[device].load(std::memory_order_relaxed);
  if (state == 0) {
    cudaFuncAttributes attributes{};
    const bool ok = cudaFuncGetAttributes(&attributes, kKernel) == cudaSuccess;
    if (!ok) cudaGetLastError();
    state = ok && attributes.binaryVersion / 10 == 9 ? 1 : 2;
    cached[device].store(state, std::memory_order_relaxed);
  }
  return state == 1;
}

}  // namespace fsa::cuda::common
