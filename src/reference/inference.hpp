// Inference with a cache on the CPU reference backend (include/fsa/cache.hpp): the test oracle of
// the GPU kernels and the CPU path of nsa_prefill / nsa_decode.
#pragma once

#include "fsa/cache.hpp"

namespace fsa::ref {

// Appends each sequence's new tokens to the cache, then computes their outputs over the whole
// sequence read back from the cache. Arguments are validated (src/api/cache.cpp); nsa_decode is the
// same computation.
void nsa_prefill(const NsaConfig& config, const NsaLayerInputs& inputs, const NsaCache& cache,
                 const NsaCacheBatch& batch, const TensorView& o, const NsaInferenceBranches& branches);

}  // namespace fsa::ref
