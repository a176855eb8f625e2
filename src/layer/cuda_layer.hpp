// The whole NSA layer on the GPU: the ops of include/fsa/ops.hpp composed in the order of
// include/fsa/layer.hpp, with stream-ordered workspaces (no host synchronisation, capturable in a
// CUDA graph). Arguments are validated by src/api/layer.cpp before these run.
#pragma once

#include <cstddef>

#include "fsa/config.hpp"
#include "fsa/layer.hpp"
#include "fsa/types.hpp"

namespace fsa::cuda {

// Bytes of the GPU layout of `saved` (see SavedLayout in cuda_layer.cu).
std::size_t nsa_saved_bytes(const NsaConfig& config, const NsaLayerShape& shape);

Status nsa_forward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& o,
                   const TensorView& saved);
Status nsa_backward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& saved,
                    const TensorView& d_o, const NsaLayerGrads& grads);

}  // namespace fsa::cuda
