// Builds the selected-attention plan (slc_plan.hpp) on the GPU from topk_idx and cu_seqlens.
#pragma once

#include <cuda_runtime.h>

#include "fsa/status.hpp"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda {

// Fills every buffer of `plan` (laid out by slc_plan_layout for plan.shape, or a view of it) with
// launches on `stream`: no host synchronisation and no allocation, so it can be captured in a CUDA
// graph. The current device must be the one that holds the workspace and the inputs. The order of
// the entries inside a list's sparse and dense parts is not deterministic unless
// plan.shape.sorted_lists; everything else is. The kernels take slc_plan_forward_view(plan) or
// slc_plan_backward_view(plan).
Status build_slc_plan(const SlcPlan& plan, const SlcPlanInputs& in, cudaStream_t stream);

}  // namespace fsa::cuda
