// Inference with a cache: the key/value cache of an NSA layer, owned by the caller (a serving
// engine allocates the pools once and hands out pages), and the two calls that use it:
// nsa_prefill (append a chunk of any length per sequence) and nsa_decode (1-8 new tokens per
// sequence, for speculative verification). Both produce, for every new token, the output a
// one-shot nsa_forward over the whole sequence gives for that token.
//
// What the cache holds, per sequence (docs/inference.md says why):
//   - raw keys, rotated at their position, and raw values, in pages of `page_size` tokens
//     (a multiple of the selection block B, so a selected block never straddles pages);
//   - compressed keys, rotated at i*s, and compressed values, in pages of `cmp_page_size`
//     compressed tokens, addressed by their own per-sequence table;
//   - the pre-RoPE keys of the last tokens (a ring of nsa_cache_tail_rows(config) rows indexed by
//     position mod its rows), from which the next compression windows are finished: the rotated
//     keys cannot be un-rotated exactly in bf16/fp16, and values are never rotated, so their raw
//     pages serve as they are. l - 1 rows would finish every window; kMaxDecodeTokens more let a
//     caller drop the rejected tail of an nsa_decode call (speculative decoding) and go on.
//
// Every attention of a call reads its keys back from the cache after the call has written the new
// ones, so the outputs do not depend on how a sequence is cut into calls.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fsa/config.hpp"
#include "fsa/layer.hpp"
#include "fsa/status.hpp"
#include "fsa/types.hpp"
#include "fsa/workspace.hpp"

namespace fsa {

// Sizes of a cache's pools: enough to size them without touching data.
struct NsaCacheShape {
  int heads_kv = 0, head_dim_qk = 0, head_dim_v = 0;
  std::int64_t num_pages = 0;      // pages of the raw pool
  int page_size = 0;               // raw tokens per page: a positive multiple of config.block_size
  std::int64_t num_cmp_pages = 0;  // pages of the compressed pool
  int cmp_page_size = 0;           // compressed tokens per page (positive)
  std::int64_t num_slots = 0;      // sequences whose window state the cache holds at once
  DType dtype = DType::kBFloat16;
  Device device{};
};

// The pools, caller-owned (every view on the cache's device, last dim contiguous). nsa_prefill and
// nsa_decode write into them; nothing else does.
struct NsaCache {
  TensorView k_pages;      // [num_pages, page_size, Hkv, Dqk] keys rotated at their position
  TensorView v_pages;      // [num_pages, page_size, Hkv, Dv]
  TensorView k_cmp_pages;  // [num_cmp_pages, cmp_page_size, Hkv, Dqk] compressed keys rotated at i*s
  TensorView v_cmp_pages;  // [num_cmp_pages, cmp_page_size, Hkv, Dv]
  TensorView k_tail;       // [num_slots, R, Hkv, Dqk] pre-RoPE keys, R = nsa_cache_tail_rows(config);
                           // token p of a sequence at row p % R
};

// Which sequences one call works on and where their pages are (int32, on the cache's device; the
// caller advances cache_seqlens by the new tokens after the call). A sequence with no new tokens is
// skipped: none of its entries is read.
struct NsaCacheBatch {
  TensorView block_table;      // [nseq, max_pages]: raw pool page of the sequence's j-th page
  TensorView cmp_block_table;  // [nseq, max_cmp_pages]: compressed pool page of its j-th page
  TensorView cache_seqlens;    // [nseq]: tokens already in the cache (the new ones go after them)
  TensorView slots;            // [nseq]: the sequence's row of k_tail
};

// The most new tokens a sequence brings to one nsa_decode call.
inline constexpr int kMaxDecodeTokens = 8;

// Rows of k_tail per slot: l + kMaxDecodeTokens - 1. After a call that brought c <= kMaxDecodeTokens
// new tokens to a sequence of P cached ones, the caller may keep the first 0..c of them (pass
// P + kept as the next cache_seqlens): the ring still holds every pre-RoPE key the next windows
// need, and what the dropped tokens wrote is overwritten before it is read. (A longer chunk must be
// kept whole.)
int nsa_cache_tail_rows(const NsaConfig& config);

// Bytes of each pool (on the cache's device), from shapes alone; all 0 for an invalid config or
// shape (the calls name the invalid field).
struct NsaCacheBytes {
  std::size_t k_pages = 0, v_pages = 0, k_cmp_pages = 0, v_cmp_pages = 0, k_tail = 0;
  std::size_t total() const { return k_pages + v_pages + k_cmp_pages + v_cmp_pages + k_tail; }
};
NsaCacheBytes nsa_cache_bytes(const NsaConfig& config, const NsaCacheShape& shape);

// Pages a sequence of `tokens` tokens needs in each pool (the block tables' widths for a maximum
// context); 0 for an invalid shape or a negative count.
std::int64_t nsa_cache_pages(const NsaCacheShape& shape, std::int64_t tokens);
std::int64_t nsa_cache_cmp_pages(const NsaConfig& config, const NsaCacheShape& shape, std::int64_t tokens);

// Optional per-branch results of the new tokens (any may be undefined): for tests and analysis.
struct NsaInferenceBranches {
  TensorView o_cmp, o_slc, o_swa;  // [N, Hq, Dv]
  TensorView topk_idx;             // int32 [Hkv, N, K], as select_blocks writes it
};

// Appends the new tokens of every sequence of `batch` (inputs.cu_seqlens: the packed chunk, any
// length per sequence, 0 included) after its cache_seqlens cached tokens: rotates them, writes
// raw keys and values, the compressed tokens whose windows they complete and the key tail into
// `cache`, and writes o [N, Hq, Dv], each token attending to its prefix and the chunk causally.
// The outputs, branches and pools are written: none may share memory with the inputs, the batch
// or one another (an error naming it, as for every op: ops.hpp).
Status nsa_prefill(const NsaConfig& config, const NsaLayerInputs& inputs, const NsaCache& cache,
                   const NsaCacheBatch& batch, const TensorView& o, const NsaInferenceBranches& branches = {},
                   const Workspace& workspace = {});

// nsa_prefill for 1..kMaxDecodeTokens new tokens per sequence (ragged across the batch; a
// sequence with 0 new tokens is skipped).
Status nsa_decode(const NsaConfig& config, const NsaLayerInputs& inputs, const NsaCache& cache,
                  const NsaCacheBatch& batch, const TensorView& o, const NsaInferenceBranches& branches = {},
                  const Workspace& workspace = {});

// ---- GPU workspace ----------------------------------------------------------------------------
// The sizes a GPU call's workspace depends on, from shapes alone (no tensor data is read). The
// bytes only grow with each field, so one workspace sized for the largest batch and context a
// serving loop or a CUDA graph will see serves every call up to them.
struct NsaInferenceShape {
  std::int64_t tokens = 0;       // N: new tokens of the call (rows of the packed chunk)
  int num_seqs = 0;              // sequences of the batch
  std::int64_t max_context = 0;  // tokens of the longest sequence after the call, at most
  int heads_q = 0, heads_kv = 0, head_dim_qk = 0, head_dim_v = 0;
  DType dtype = DType::kBFloat16;
  Device device{};

  // A call's shape: N and the heads from the inputs, the sequences from the batch, and as context
  // the most its block table can address (block_table.size(1) * page_size).
  static NsaInferenceShape of(const NsaLayerInputs& inputs, const NsaCache& cache, const NsaCacheBatch& batch);
};

// Workspace bytes of nsa_prefill and nsa_decode (0 on the CPU, which needs none).
std::size_t nsa_prefill_workspace_bytes(const NsaConfig& config, const NsaInferenceShape& shape);
std::size_t nsa_decode_workspace_bytes(const NsaConfig& config, const NsaInferenceShape& shape);

}  // namespace fsa
