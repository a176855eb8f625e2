// Which kernel set a launch runs: the Hopper (wgmma) variants or the sm80 (mma.sync) ones. Shared by
// host and device code (it travels in the kernels' params); the choice itself is kernel_arch() in
// dispatch_table.hpp, made once per op call.
#pragma once

#include <cstdint>

namespace fsa::cuda::common {

enum class KernelArch : std::int32_t {
  kSm80 = 0,   // mma.sync kernels: every GPU from sm80 on, and Hopper with FSA_DISABLE_WGMMA=1
  kSm90a = 1,  // wgmma kernels: a Hopper GPU running a build that includes sm_90a
};

}  // namespace fsa::cuda::common
