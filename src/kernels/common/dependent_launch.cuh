// Programmatic dependent launch (Hopper): a kernel launched with launch_dependent may be scheduled
// while the kernel before it in the stream is still finishing, so that its CTAs are resident when
// that kernel's last CTAs retire, instead of the launch starting only then (a gap of a few
// microseconds a kernel boundary, which a decode step of a dozen small launches pays a dozen times,
// in CUDA-graph replay too: stream capture keeps the programmatic edges).
//
// The contract: a kernel launched this way calls await_prior_grids() before it reads anything the
// kernels before it in the stream may write, and before it writes anything they may read.
// griddepcontrol.wait returns once every prerequisite grid has completed and its writes are
// visible, so the stream order holds for memory as with a plain launch; launch_dependents then
// lets the next such launch start early. What comes before the wait is the kernel's preamble, run
// while its predecessor finishes: early exits (through before_early_exit), arithmetic, shared
// memory, and reads of inputs that
// no kernel of the sequence writes (the decode step's batch description: cu_seqlens,
// cache_seqlens, block tables, written by the caller before the step's first kernel, which waits
// for them). A kernel launched plainly runs await_prior_grids() as a no-op.
//
// The attribute is set only where the kernel's loaded image has the wait (compiled for sm_90 or
// later: cudaFuncAttributes::binaryVersion, per device); elsewhere the launch is a plain one.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>

#include "cuda/runtime.hpp"

namespace fsa::cuda::common {

__device__ __forceinline__ void await_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Return from a CTA before its await_prior_grids (an early exit of the preamble) through this: the
// grid's first CTA waits first. griddepcontrol.wait orders a kernel after the one grid before it,
// and that grid completes when its last CTA exits; a grid none of whose CTAs waits (every CTA
// exiting early, as a launch with nothing to do for a step does) could complete while its own
// predecessor still runs, and the next kernel's wait would then not cover that predecessor. One
// waiting CTA keeps the chain: the grid cannot complete before the grid before it.
__device__ __forceinline__ void before_early_exit() {
  if (blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) await_prior_grids();
}

namespace detail {
// Per device: 2 when the kernel's loaded image waits (sm_90+), 1 when not, 0 not asked yet.
constexpr int kMaxDevices = 64;
template <auto* kKernel>
bool image_awaits_prior_grids(int device) {
  static std::atomic<int> known[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices) return false;
  const int cached = known[device].load(std::memory_order_relaxed);
  if (cached != 0) return cached == 2;
  cudaFuncAttributes attributes{};
  const bool awaits = cudaFuncGetAttributes(&attributes, kKernel) == cudaSuccess && attributes.binaryVersion >= 90;
  cudaGetLastError();  // a failed query leaves no sticky error: the plain launch reports its own
  known[device].store(awaits ? 2 : 1, std::memory_order_relaxed);
  return awaits;
}
}  // namespace detail

// kKernel<<<grid, block, smem, stream>>>(args...), dependent on the stream's previous kernel
// programmatically where the image supports it (above), then the launch check every launcher makes
// (check_launch: the launch's error, and with FSA_SYNC_AFTER_LAUNCH the kernel's own), naming `name`.
template <auto* kKernel, class... Args>
Status launch_dependent(const char* name, dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream,
                        const Args&... args) {
  int device = 0;
  cudaGetDevice(&device);
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = detail::image_awaits_prior_grids<kKernel>(device) ? 1 : 0;
  FSA_RETURN_IF_ERROR(cuda_status(cudaLaunchKernelEx(&config, kKernel, args...), name, __FILE__, __LINE__));
  return check_launch(name, stream, __FILE__, __LINE__);
}

}  // namespace fsa::cuda::common
