// Gated combination of the three branches on the GPU (spec section 7), and the elementwise sum the
// whole layer's backward uses to add the branches' gradients.
#pragma once

#include "fsa/config.hpp"
#include "fsa/types.hpp"

namespace fsa::cuda {

// Arguments already validated by the API layer (same shapes, dtype bf16/fp16, one device).
Status combine_forward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                       const TensorView& o_slc, const TensorView& o_swa, const TensorView& o);
Status combine_backward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                        const TensorView& o_slc, const TensorView& o_swa, const TensorView& d_o,
                        const TensorView& d_gates, const TensorView& d_o_cmp, const TensorView& d_o_slc,
                        const TensorView& d_o_swa);

// dst += src for two [rows, H, D] views of one dtype (bf16/fp16), in fp32 then rounded once.
Status add_into(const TensorView& dst, const TensorView& src);

}  // namespace fsa::cuda
