// The whole NSA layer on the CPU reference backend, composed from the typed ops of reference.hpp.
#pragma once

#include <cstddef>

#include "fsa/layer.hpp"

namespace fsa::ref {

// Bytes of the reference's saved-activation buffer: compressed keys (rotated) and values, each
// branch's output and lse, topk_idx and cu_cmp, in the compute type (fp64 for fp64 inputs, else
// fp32). q and k are rotated again in the backward instead of being saved: RoPE costs less than
// the memory traffic of two more [N, H, D] tensors.
std::size_t nsa_saved_bytes(const NsaConfig& config, const NsaLayerShape& shape);

void nsa_forward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& o, const TensorView& saved);
void nsa_backward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& saved,
                  const TensorView& d_o, const NsaLayerGrads& grads);

}  // namespace fsa::ref
