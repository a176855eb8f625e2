// Compressed attention on the GPU (spec section 3): forward and backward for the whole packed
// batch. Arguments are validated by src/api; this layer checks what only the GPU path limits.
#pragma once

#include "fsa/config.hpp"
#include "fsa/types.hpp"

namespace fsa::cuda {

Status cmp_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                        const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                        const TensorView& o, const TensorView& lse);
Status cmp_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                         const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                         const TensorView& o, const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                         const TensorView& dk_cmp, const TensorView& dv_cmp);

}  // namespace fsa::cuda
