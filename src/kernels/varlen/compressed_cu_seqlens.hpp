// cu_cmp from cu_seqlens on the GPU (one CTA, no host synchronisation).
#pragma once

#include "fsa/config.hpp"
#include "fsa/types.hpp"

namespace fsa::cuda {

// Both tensors int32 [nseq+1] on one CUDA device, already validated. Runs on the
// current stream (fsa::set_cuda_stream).
Status compressed_cu_seqlens(const NsaConfig& config, const TensorView& cu_seqlens, const TensorView& cu_cmp);

}  // namespace fsa::cuda
