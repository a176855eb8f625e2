// Selected attention on the GPU (FSA loop order): plan, forward and backward for the whole packed
// batch. Arguments are validated by src/api; this layer checks what only the GPU path limits.
#pragma once

#include "fsa/config.hpp"
#include "fsa/ops.hpp"
#include "fsa/types.hpp"

namespace fsa::cuda {

Status slc_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                        const TensorView& lse, const SlcOptions& options);
Status slc_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                         const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                         const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                         const TensorView& dv, const SlcOptions& options);

}  // namespace fsa::cuda
