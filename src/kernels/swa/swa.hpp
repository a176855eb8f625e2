// Sliding-window attention on the GPU (spec section 6): forward and backward for the whole packed
// batch, with the signatures of the public ops. Arguments are validated by src/api; this layer
// checks what only the GPU path limits.
#pragma once

#include "fsa/config.hpp"
#include "fsa/types.hpp"

namespace fsa::cuda {

Status swa_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                   const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse);
Status swa_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse, const TensorView& d_o,
                    const TensorView& dq, const TensorView& dk, const TensorView& dv);

}  // namespace fsa::cuda
