// Entry of the selected-attention backward kernels, instantiated per (dtype, head dims) in
// instantiations/slc_bwd_*.cu.
#pragma once

#include <cuda_runtime.h>

#include "fsa/status.hpp"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda {

// dq, dk, dv of selected attention over the forward's plan (reused, not rebuilt). Uses p.delta and
// the fp32 accumulators of p as scratch; zeroes them itself.
template <class Element, int kDqk, int kDv>
Status launch_slc_backward(const SlcBackwardParams& p, cudaStream_t stream);

}  // namespace fsa::cuda
