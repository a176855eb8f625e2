// Entry of the selected-attention backward kernels, instantiated per (dtype, head dims) in
// instantiations/slc_bwd_*.cu.
#pragma once

#include <cuda_runtime.h>

#include "fsa/status.hpp"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda {

// Work units of one list per CTA of the main kernel (SlcBackwardParams::units_per_cta): longer runs
// mean fewer dK / dV atomics (each CTA adds 64 keys x (Dqk + Dv) floats) for fewer CTAs; the
// deterministic mode takes longer runs to bound its kv_part.
constexpr int kSlcBwdUnitsPerCta = 4;
constexpr int kSlcBwdDeterministicUnitsPerCta = 8;

// dq, dk, dv of selected attention over an all-pairs plan. Uses p.delta and either the fp32
// accumulators (zeroed here) or, in the deterministic mode (p.dq_part set), the partials of p as
// scratch.
template <class Element, int kDqk, int kDv>
Status launch_slc_backward(const SlcBackwardParams& p, cudaStream_t stream);

}  // namespace fsa::cuda
