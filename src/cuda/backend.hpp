// The CUDA backend: every GPU entry point of the library in one list. src/api validates the
// arguments (once) and routes CUDA tensors here; the GPU layer (src/layer) calls these directly.
// What only the GPU path limits (16-byte rows, supported head dims, topk width) is checked here,
// with errors naming the argument. Workspaces are the caller's (fsa/workspace.hpp): no function
// here allocates device memory, and each *_workspace_bytes reads sizes only.
#pragma once

#include <cstddef>

#include "fsa/cache.hpp"
#include "fsa/config.hpp"
#include "fsa/layer.hpp"
#include "fsa/ops.hpp"
#include "fsa/types.hpp"
#include "fsa/workspace.hpp"

namespace fsa::cuda {

// ---- Sequence metadata (kernels/varlen) --------------------------------------------------------
Status compressed_cu_seqlens(const NsaConfig& config, const TensorView& cu_seqlens, const TensorView& cu_cmp);

// ---- Compression (kernels/compress) ------------------------------------------------------------
std::size_t compress_forward_workspace_bytes(const NsaConfig& config, const TensorView& x, const TensorView& weight,
                                             const TensorView& y);
std::size_t compress_backward_workspace_bytes(const NsaConfig& config, const TensorView& x, const TensorView& dy,
                                              const TensorView& d_weight);
Status compress_forward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                        const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                        const TensorView& y, const Workspace& workspace);
Status compress_backward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                         const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                         const TensorView& dy, const TensorView& dx, const TensorView& d_weight,
                         const TensorView& d_pos_emb, const Workspace& workspace);

// ---- Rotary embedding (kernels/rope) -----------------------------------------------------------
Status rope(const RopeConfig& rope, const TensorView& x, const TensorView& cu, int position_stride,
            const TensorView& y, bool inverse);

// ---- Compressed and sliding-window attention (kernels/flash, kernels/cmp_attn, kernels/swa) -----
// The backward's fp32 accumulators of dq, dk, dv and the row sums of o * d_o.
std::size_t flash_backward_workspace_bytes(const TensorView& q, const TensorView& k, const TensorView& v);
// A chunk of new tokens after a cached prefix, its keys gathered out of the cache into contiguous
// rows (nsa_prefill's long chunks, kernels/decode/decode_gather.cu): sequence b's queries are
// positions P_b = key_prefix[b] .. P_b + n_b - 1, its key i (a position, or a compressed token
// index) is row key_base[b] + i of k / v ([rows, Hkv, D]); key_base[b] may be negative where the
// rows start at a window's first key.
struct PrefixedKeyRows {
  TensorView key_prefix;  // [nseq] int32
  TensorView key_base;    // [nseq] int32
  TensorView k, v;
};
// The same with the keys in a paged cache (the selected branch of a long chunk, whose blocks lie in
// one page each): key i is row i % page_size of page block_table[b, i / page_size] of k_pages /
// v_pages ([pages, page_size, Hkv, D]). Table entries outside the pool read as zero rows.
struct PagedKeyInputs {
  TensorView key_prefix;   // [nseq] int32
  TensorView block_table;  // [nseq, max_pages] int32
  TensorView k_pages, v_pages;
  std::int64_t max_context = 0;
};

Status cmp_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                        const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                        const TensorView& o, const TensorView& lse);
// Compressed attention of a chunk after a cached prefix (keys: its gathered compressed tokens).
Status cmp_attn_prefixed_forward(const NsaConfig& config, const TensorView& q, const PrefixedKeyRows& keys,
                                 const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse);
Status cmp_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                         const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                         const TensorView& o, const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                         const TensorView& dk_cmp, const TensorView& dv_cmp, const Workspace& workspace);
Status swa_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                   const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse);
// Sliding-window attention of a chunk after a cached prefix (keys: its gathered window rows).
Status swa_prefixed_forward(const NsaConfig& config, const TensorView& q, const PrefixedKeyRows& keys,
                            const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse);
Status swa_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse, const TensorView& d_o,
                    const TensorView& dq, const TensorView& dk, const TensorView& dv, const Workspace& workspace);

// ---- Block selection (kernels/select) ----------------------------------------------------------
Status select_blocks(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                     const TensorView& lse_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                     const TensorView& topk_idx);
// The selection of a chunk after a cached prefix (keys: its gathered compressed tokens; v unread),
// lse_cmp from cmp_attn_prefixed_forward.
Status select_blocks_prefixed(const NsaConfig& config, const TensorView& q, const PrefixedKeyRows& keys,
                              const TensorView& lse_cmp, const TensorView& cu_seqlens, const TensorView& topk_idx);

// ---- Selected attention (kernels/slc_attn) -----------------------------------------------------
// The problem of one selected-attention call, from its tensors' sizes.
struct SlcProblem {
  std::int64_t tokens = 0;
  // Key rows the queries can reach, a bound (SlcPlanShape::key_tokens): 0 means `tokens`; with a
  // paged cache, the chunk and every sequence's context.
  std::int64_t key_tokens = 0;
  int num_seqs = 0, heads_q = 0, heads_kv = 0, dim_qk = 0, dim_v = 0, width = 0, block_size = 64;
  DType dtype = DType::kBFloat16;
  int device = 0;

  static SlcProblem of(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& topk_idx, const TensorView& cu_seqlens) {
    SlcProblem p;
    p.tokens = q.size(0);
    p.num_seqs = static_cast<int>(cu_seqlens.size(0) - 1);
    p.heads_q = static_cast<int>(q.size(1));
    p.heads_kv = static_cast<int>(k.size(1));
    p.dim_qk = static_cast<int>(q.size(2));
    p.dim_v = static_cast<int>(v.size(2));
    p.width = static_cast<int>(topk_idx.size(2));
    p.block_size = config.block_size;
    p.dtype = q.dtype;
    p.device = q.device.index;
    return p;
  }
};
std::size_t slc_plan_bytes(const SlcProblem& problem, const SlcOptions& options);
std::size_t slc_forward_workspace_bytes(const SlcProblem& problem, const SlcOptions& options, bool plan_given);
std::size_t slc_backward_workspace_bytes(const SlcProblem& problem, const SlcOptions& options, bool plan_given);
Status slc_plan_build(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& plan,
                      const SlcOptions& options);
// `plan`: built by slc_plan_build, or undefined (then built per chunk in the workspace).
Status slc_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                        const TensorView& lse, const SlcOptions& options, const TensorView& plan,
                        const Workspace& workspace);
Status slc_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                         const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                         const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                         const TensorView& dv, const SlcOptions& options, const TensorView& plan,
                         const Workspace& workspace);
// The selected attention of a chunk of new tokens over keys in a paged cache (nsa_prefill's
// selected branch, KV-outer kernels, no split), keys and queries as PagedKeyInputs says (above;
// page_size a multiple of B). max_context bounds P_b + n_b (it sizes the plan).
SlcProblem slc_paged_problem(const NsaConfig& config, const TensorView& q, const PagedKeyInputs& keys,
                             const TensorView& topk_idx, const TensorView& cu_seqlens);
std::size_t slc_paged_forward_workspace_bytes(const SlcProblem& problem, const SlcOptions& options);
// o [N, Hq, Dv], lse [Hq, N] (fp32) as slc_attn_forward's.
Status slc_paged_forward(const NsaConfig& config, const TensorView& q, const PagedKeyInputs& keys,
                         const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                         const TensorView& lse, const SlcOptions& options, const Workspace& workspace);
// Chunk plans built by this process so far (the tests check that a layer forward + backward
// builds its plan once).
std::int64_t slc_plan_builds();

// ---- Gated combination (kernels/combine) -------------------------------------------------------
Status combine_forward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                       const TensorView& o_slc, const TensorView& o_swa, const TensorView& o);
Status combine_backward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                        const TensorView& o_slc, const TensorView& o_swa, const TensorView& d_o,
                        const TensorView& d_gates, const TensorView& d_o_cmp, const TensorView& d_o_slc,
                        const TensorView& d_o_swa);
// dst += src, elementwise, in the input dtype (the layer's gradient sums).
Status add_into(const TensorView& dst, const TensorView& src);

// ---- The whole layer (layer/cuda_layer.cu) -----------------------------------------------------
std::size_t nsa_saved_bytes(const NsaConfig& config, const NsaLayerShape& shape, const NsaLayerOptions& options);
std::size_t nsa_forward_workspace_bytes(const NsaConfig& config, const NsaLayerShape& shape, bool with_saved,
                                        const NsaLayerOptions& options);
std::size_t nsa_backward_workspace_bytes(const NsaConfig& config, const NsaLayerShape& shape,
                                         const NsaLayerOptions& options);
Status nsa_forward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& o,
                   const TensorView& saved, const NsaLayerOptions& options, const Workspace& workspace);
Status nsa_backward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& saved,
                    const TensorView& d_o, const NsaLayerGrads& grads, const NsaLayerOptions& options,
                    const Workspace& workspace);

// ---- Inference with a paged cache (kernels/decode) ----------------------------------------------
// Arguments validated by src/api (shapes, dtypes, devices; the device-side metadata is read only by
// the kernels). Workspaces sized from the call's shape alone (NsaInferenceShape), so a step is
// capturable in a CUDA graph: nothing here allocates, synchronises or reads device memory.
std::size_t nsa_prefill_workspace_bytes(const NsaConfig& config, const NsaInferenceShape& shape);
std::size_t nsa_decode_workspace_bytes(const NsaConfig& config, const NsaInferenceShape& shape);
Status nsa_prefill(const NsaConfig& config, const NsaLayerInputs& inputs, const NsaCache& cache,
                   const NsaCacheBatch& batch, const TensorView& o, const NsaInferenceBranches& branches,
                   const Workspace& workspace);
// nsa_prefill for at most kMaxDecodeTokens new tokens per sequence: its workspace is sized for
// min(N, kMaxDecodeTokens * nseq) tokens.
Status nsa_decode(const NsaConfig& config, const NsaLayerInputs& inputs, const NsaCache& cache,
                  const NsaCacheBatch& batch, const TensorView& o, const NsaInferenceBranches& branches,
                  const Workspace& workspace);

// ---- The convenience allocation (cuda/scratch.cu) ----------------------------------------------
// Stream-ordered device memory for a caller that passed an empty Workspace: cudaMallocAsync on the
// current stream, cudaFreeAsync at the end of the scope. The only device allocation of the library.
class StreamScratch {
 public:
  StreamScratch(std::size_t bytes, int device);
  ~StreamScratch();
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  const Status& status() const { return status_; }
  Workspace workspace() const { return {data_, bytes_}; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  void* stream_ = nullptr;
  int device_ = 0;
  Status status_;
};

}  // namespace fsa::cuda
