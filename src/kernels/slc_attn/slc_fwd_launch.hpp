// Entry of the selected-attention forward kernels, instantiated per (dtype, head dims) in
// instantiations/slc_fwd_*.cu.
#pragma once

#include <cuda_runtime.h>

#include "fsa/status.hpp"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda::slc {

template <class Element, int kDqk, int kDv>
Status launch_slc_forward(const SlcForwardParams& p, cudaStream_t stream);

}  // namespace fsa::cuda::slc
