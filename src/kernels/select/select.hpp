// Block selection on the GPU (spec section 4), fused: scores are recomputed tile by tile from q,
// compressed k and lse_cmp and never stored. Arguments are validated by src/api; this layer checks
// what only the GPU path limits.
#pragma once

#include "fsa/config.hpp"
#include "fsa/types.hpp"

namespace fsa::cuda {

Status select_blocks(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                     const TensorView& lse_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                     const TensorView& topk_idx);

}  // namespace fsa::cuda
