// Compression on the GPU (spec section 1): forward and backward for the whole packed batch.
// Arguments are validated by src/api; this layer checks what only the GPU path limits.
#pragma once

#include "fsa/config.hpp"
#include "fsa/types.hpp"

namespace fsa::cuda {

Status compress_forward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                        const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                        const TensorView& y);
Status compress_backward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                         const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                         const TensorView& dy, const TensorView& dx, const TensorView& d_weight,
                         const TensorView& d_pos_emb);

}  // namespace fsa::cuda
