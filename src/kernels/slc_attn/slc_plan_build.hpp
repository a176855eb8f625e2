// Builds the selected-attention plan (slc_plan.hpp) on the GPU from topk_idx and cu_seqlens.
#pragma once

#include <cuda_runtime.h>

#include "fsa/status.hpp"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda {

// Fills every buffer of `plan` (laid out by slc_plan_layout for plan.shape) with launches on
// `stream`: no host synchronisation and no allocation, so it can be captured in a CUDA graph.
// The current device must be the one that holds the workspace and the inputs. The order of the
// entries inside a list is not deterministic unless plan.shape.sorted_lists; everything else is.
Status build_slc_plan(const SlcPlan& plan, const SlcPlanInputs& in, cudaStream_t stream);

}  // namespace fsa::cuda
