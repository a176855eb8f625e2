// The architecture choice (dispatch_table.hpp's kernel_arch): which image of the library's kernels the
// current device loaded, probed once per device with one kernel built with the same flags as all
// the others.
#include <cuda_runtime.h>

#include <atomic>
#include <string>

#include "common/env_value.hpp"
#include "kernels/common/dispatch_table.hpp"

namespace fsa::cuda::common {

namespace {

// Static shared memory that only the sm_90a image of the probe declares: cudaFuncGetAttributes then
// tells an sm_90a image (wgmma compiled in) from an sm_90 one (no wgmma: its Hopper kernels are
// traps) or an sm_80 one, which the image's binaryVersion alone does not.
constexpr int kSm90aMarkerInts = 90;

__global__ void kernel_arch_probe(int* sink) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  volatile __shared__ int marker[kSm90aMarkerInts];
  marker[threadIdx.x % kSm90aMarkerInts] = 1;
  if (sink != nullptr) *sink = marker[0];
#else
  if (sink != nullptr) *sink = 0;
#endif
}

// Whether FSA_DISABLE_WGMMA is set (to anything but "0"; fsa::check_environment refuses anything
// but 0 or 1): every op then runs its mma.sync kernels, so the two sets can be compared (and both
// tested) on one Hopper machine.
bool wgmma_disabled() {
  static const bool disabled = [] {
    std::string value = "0";
    return !fsa::detail::env_disable_wgmma(&value).is_ok() || value == "1";
  }();
  return disabled;
}

}  // namespace

KernelArch kernel_arch() {
  static std::atomic<int> cached[64];  // 0: unknown, else 1 + KernelArch
  int device = 0;
  if (wgmma_disabled() || cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return KernelArch::kSm80;
  int state = cached[device].load(std::memory_order_relaxed);
  if (state == 0) {
    cudaFuncAttributes attributes{};
    const bool ok = cudaFuncGetAttributes(&attributes, kernel_arch_probe) == cudaSuccess;
    if (!ok) cudaGetLastError();  // no image for this device: the ops' own launches report it
    const bool sm90a = ok && attributes.binaryVersion / 10 == 9 &&
                       attributes.sharedSizeBytes >= kSm90aMarkerInts * sizeof(int);
    state = 1 + static_cast<int>(sm90a ? KernelArch::kSm90a : KernelArch::kSm80);
    cached[device].store(state, std::memory_order_relaxed);
  }
  return static_cast<KernelArch>(state - 1);
}

}  // namespace fsa::cuda::common
