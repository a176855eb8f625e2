// The workspace queries of nsa_prefill / nsa_decode (include/fsa/cache.hpp): shapes only, so a
// serving engine or a CUDA-graph capture sizes the workspace once for its largest batch and context.
#include "fsa/cache.hpp"
#include "route.hpp"

namespace fsa {

NsaInferenceShape NsaInferenceShape::of(const NsaLayerInputs& inputs, const NsaCache& cache,
                                        const NsaCacheBatch& batch) {
  NsaInferenceShape s;
  if (inputs.q.ndim == 3) {
    s.tokens = inputs.q.size(0);
    s.heads_q = static_cast<int>(inputs.q.size(1));
    s.head_dim_qk = static_cast<int>(inputs.q.size(2));
  }
  if (inputs.k.ndim == 3) s.heads_kv = static_cast<int>(inputs.k.size(1));
  if (inputs.v.ndim == 3) s.head_dim_v = static_cast<int>(inputs.v.size(2));
  if (batch.cache_seqlens.ndim == 1) {
    s.num_seqs = static_cast<int>(batch.cache_seqlens.size(0));
  } else if (inputs.cu_seqlens.ndim == 1) {
    s.num_seqs = static_cast<int>(inputs.cu_seqlens.size(0) - 1);
  }
  // Every cached token has a page: a sequence never outgrows what its table row addresses.
  if (batch.block_table.ndim == 2 && cache.k_pages.ndim == 4)
    s.max_context = batch.block_table.size(1) * cache.k_pages.size(1);
  s.dtype = inputs.q.dtype;
  s.device = inputs.q.device;
  return s;
}

std::size_t nsa_prefill_workspace_bytes(const NsaConfig& config, const NsaInferenceShape& shape) {
  return detail::query_bytes(config.validate(), shape.device,
                             [&] { return FSA_CUDA_QUERY(cuda::nsa_prefill_workspace_bytes(config, shape)); });
}

std::size_t nsa_decode_workspace_bytes(const NsaConfig& config, const NsaInferenceShape& shape) {
  return detail::query_bytes(config.validate(), shape.device,
                             [&] { return FSA_CUDA_QUERY(cuda::nsa_decode_workspace_bytes(config, shape)); });
}

}  // namespace fsa
