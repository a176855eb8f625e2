// Parameters of the inference kernels (nsa_prefill / nsa_decode with a paged cache), shared by host
// and device (trivially copyable, passed as __grid_constant__ arguments). Strides are in elements.
//
// Everything a kernel learns about the batch comes from device memory (cu_seqlens, cache_seqlens,
// the page tables, slots): the host fills these structs from shapes alone, so a step can be
// captured in a CUDA graph and replayed with new lengths. A table entry that points outside its
// pool (a caller error the host cannot see without reading device memory) is never dereferenced:
// such a row reads as zeros and is not written.
#pragma once

#include <cstdint>

#include "kernels/common/paged_pool.hpp"

namespace fsa::cuda::decode {

using common::PagedPool;
using common::PageTable;

// The kernels' fixed tiling (the host sizes grids and workspaces with the same numbers).
constexpr int kRows = 64;          // query rows (token x head pairs) per attention / selection tile
constexpr int kKeys = 64;          // keys per key tile
constexpr int kMaxSplits = 64;     // context splits of one attention tile, at most
constexpr int kScoreFloats = 8192;  // block scores one selection CTA keeps in shared memory (32 KB)
constexpr int kMaxTopk = 64;       // topk width served (the finalize kernel's per-warp list)
// Steps of at most this many new tokens per sequence select blocks from the compressed attention's
// block partials (the fused route, decode_block_scores.cu); longer ones score in a second pass over
// the compressed keys (decode_select_kernel.cuh). Equals kMaxDecodeTokens (include/fsa/cache.hpp).
constexpr int kFusedSelectTokensPerSeq = 8;

// The sequences of one call: the packed chunk of new tokens and where each sequence's cache stands.
struct BatchInfo {
  const std::int32_t* cu_seqlens;  // [nseq + 1]: new tokens of sequence b are rows [cu[b], cu[b+1])
  std::int64_t cu_stride;
  const std::int32_t* cache_seqlens;  // [nseq]: tokens already cached (the new ones follow)
  std::int64_t cache_stride;
  const std::int32_t* slots;  // [nseq]: the sequence's row of k_tail
  std::int64_t slot_stride;
  int num_seqs;
  std::int64_t tokens;  // N: rows of the packed chunk
};

// The layer's hyperparameters (NsaConfig) and head counts as the kernels read them.
struct NsaNumbers {
  int cmp_len, cmp_stride, block_size, topk, init_blocks, local_blocks;  // l, s, B, K, I, L
  std::int64_t window;                                                  // w
  int heads_q, heads_kv, group;                                         // Hq, Hkv, G
  int heads_used;  // heads whose probabilities select blocks: G (group sum) or 1 (first head)
  float scale;
};

// ---- Append (decode_append.cu): rotate and store the new tokens, finish compression windows ----
struct AppendParams {
  static constexpr int kMaxPairs = 128;  // D <= 256

  BatchInfo batch;
  NsaNumbers nsa;
  // The chunk's inputs (pre-RoPE q, k; v).
  const void* q;
  std::int64_t q_row_stride, q_head_stride;
  const void* k;
  std::int64_t k_row_stride, k_head_stride;
  const void* v;
  std::int64_t v_row_stride, v_head_stride;
  void* q_rot;  // [N, Hq, Dqk] contiguous (workspace): q rotated at its position
  PagedPool k_pages, v_pages, k_cmp_pages, v_cmp_pages;
  PageTable block_table, cmp_block_table;
  void* k_tail;  // [num_slots, tail_rows, Hkv, Dqk]: pre-RoPE keys, position p at row p % tail_rows
  std::int64_t tail_slot_stride, tail_row_stride, tail_head_stride;
  std::int64_t num_slots;
  int tail_rows;  // nsa_cache_tail_rows(config) = l + kMaxDecodeTokens - 1 (>= l)
  // Staging of the windows that complete in this call (workspace, contiguous; not used by a decode
  // step, whose compress_append_kernel reads the windows where they are): per sequence the
  // pre-RoPE keys and the values of positions [n_cmp(P) * s, P + c) when a window completes, else
  // nothing; the compression kernels see them as a packed batch (cu_stage / cu_cmp_stage).
  std::int32_t* cu_stage;      // [nseq + 1]
  std::int32_t* cu_cmp_stage;  // [nseq + 1]
  void* k_stage;               // [stage_rows, Hkv, Dqk]
  void* v_stage;               // [stage_rows, Hkv, Dv]
  std::int64_t stage_rows;
  const void* k_cmp_new;  // [cmp_rows, Hkv, Dqk]: the compression of the staged windows
  const void* v_cmp_new;  // [cmp_rows, Hkv, Dv]
  std::int64_t cmp_rows;  // new compressed tokens of the call, at most (StepPlan)
  int dim_qk, dim_v;
  int rope;  // rotate q, k and compressed k (config.rope.enabled)
  // RoPE frequencies of the Dqk / 2 pairs, computed on the host by the reference's function.
  float frequency[kMaxPairs];
};

// The compression's parameters of a decode step (decode_compress.cu): tensor 0 is k (with pos_emb),
// 1 is v.
struct CompressWeights {
  const void* weight[2];  // [Hkv, l D, D] (kLinear) or null (kMean)
  std::int64_t weight_head_stride[2], weight_row_stride[2];
  const void* pos_emb;    // k only: [Hkv, l, D] or null
  std::int64_t pos_emb_head_stride, pos_emb_row_stride;
};

// A decode step's compression of the windows it completes, two routes (decode_compress.cu): at most
// kFusedSelectTokensPerSeq / s + 1 windows per sequence and kv head complete (none in most steps),
// so one CTA per (new compressed row, kv head, tensor) computes its row as a product of the
// window's l x D inputs with the head's weight, instead of the training's compression GEMM
// launches (which a step that completes no window still pays for).
//
// Each CTA finds its row's sequence, reads the
// window's pre-RoPE inputs where they are (window_row, decode_append.cuh: the key tail and the
// value pages, then the chunk) and writes its row into the compressed pages (k~ rotated at i*s),
// in place of the staging, the compression and the append; an nsa_decode call's launch appends its
// new tokens too (append_token_heads). The staging fields of `append` are unused.
struct CompressAppendParams {
  AppendParams append;  // the batch, the windows' rows, the compressed pools, RoPE, cmp_rows
  CompressWeights weights;
  // Set by launch_compress_append: the compression's CTAs per (kv head, k or v), and the CTAs a new
  // token's heads take when the launch appends the tokens too (0: it does not).
  long long row_ctas;
  int token_slices;
};

// ---- Gathered keys of a long prefill chunk (decode_gather.cu) -----------------------------------
// A long chunk's compressed attention, selection and window run in the training's kernels, which
// read keys as contiguous rows with the queries after a prefix (kernels/common/query_prefix.hpp).
// The gather copies each sequence's keys out of the pages into a slot of its own, sized from the
// shape (StepPlan), and writes where they are:
//   prefix[b]   = min(cache_seqlens[b], max_context - c_b), at least 0 (P: equal for every valid
//                 call; a length past the tables' capacity, which the host cannot see, keeps the
//                 rows inside their slots);
//   compressed: tokens [0, n_cmp(P + c_b)) at rows cmp_base[b] + i, cmp_base[b] = b cmp_slot;
//   window:     positions [P - min(P, w), P + c_b) at rows win_base[b] + position,
//               win_base[b] = b window_slot + cu[b] - (P - min(P, w)) (negative where the window
//               starts far into the sequence: only its sum with a position is a row).
// Pages the tables do not hold read as zero rows, as in the decode kernels.
struct GatherParams {
  BatchInfo batch;
  NsaNumbers nsa;
  PagedPool k_pages, v_pages, k_cmp_pages, v_cmp_pages;
  PageTable block_table, cmp_block_table;
  std::int64_t max_context;  // the tables' context (NsaInferenceShape::max_context)
  std::int32_t* prefix;      // [nseq]
  std::int32_t* cmp_base;    // [nseq]
  std::int32_t* win_base;    // [nseq]
  void* k_cmp;  // [nseq cmp_slot, Hkv, Dqk] contiguous
  void* v_cmp;  // [nseq cmp_slot, Hkv, Dv]
  void* k_win;  // [nseq window_slot + N, Hkv, Dqk]
  void* v_win;  // [nseq window_slot + N, Hkv, Dv]
  std::int64_t cmp_slot, window_slot;
  int dim_qk, dim_v;
};

// ---- Attention over the cache (decode_attn_kernel.cuh, decode_merge.cu) -----------------------
enum class Branch : std::int32_t {
  kCompressed = 0,  // compressed tokens visible to the row's token (i*s + l - 1 <= t)
  kSelected = 1,    // raw keys of the blocks the row's token selected, keys <= t
  kWindow = 2,      // raw keys [t - w, t]
};
constexpr int kBranches = 3;

// One branch's outputs. With splits == 1 the attention kernel writes o and lse; with more, every
// split writes its unnormalised fp32 output (o_part [splits, N, Hq, Dv]) and its row statistics
// (stats [splits, N, Hq]: the log2-domain maximum and the sum of exponentials), and the merge
// kernel writes o and lse.
struct RowStats {
  float max_log2;  // max of scale * log2(e) * q.k over the split's keys (-inf: none)
  float sum;       // sum of 2^(x - max_log2) over them
};

struct BranchOutput {
  void* o;  // [N, Hq, Dv]
  std::int64_t o_token_stride, o_head_stride;
  float* lse;  // [Hq, N] natural log, or null
  std::int64_t lse_head_stride, lse_token_stride;
  float* o_part;
  RowStats* stats;
  int splits;       // the launch's (grid z) and the merge's
  int rows_splits;  // a tile's of more than kQuarterTileRows rows (StepPlan::rows_splits): <= splits
};

// The fused selection's block partials (decode steps; decode_block_scores.cu), per key quarter u
// of a row's compressed keys (kQuarterKeys keys, decode_tiling.hpp). With M_u the running maximum
// (log2 domain) that the writer's probabilities of quarter u are relative to (the quarter's warp's
// own in the key-quarter layout, the row's in the rows layout), values holds for each block j the
// quarter meets sum_i w(i, j) 2^(x_i - M_u) over the quarter's keys i (x: the row's scaled scores,
// masked keys 0; at most l / s, kept in fp16 (half the bytes the scoring kernel reads, which bound
// it; 2^-11 relative), and quarter_max holds M_u: the row's probability mass of block j in quarter
// u is values * 2^(M_u - lse log2 e), known once the splits merge. Rows are token * Hq + head.
struct BlockPartials {
  std::uint16_t* values;  // [rows, quarters, quarter_blocks] fp16 bits; null: the launch writes none
  float* quarter_max;  // [rows, quarters]
  std::int64_t quarters;  // key quarters of a row's compressed keys, at most (the longest context's)
  int quarter_blocks;  // blocks one key quarter meets, at most (quarter_block_count)
};

struct AttnParams {
  BatchInfo batch;
  NsaNumbers nsa;
  const void* q;  // [N, Hq, Dqk] rotated
  std::int64_t q_token_stride, q_head_stride;
  PagedPool k_pages, v_pages, k_cmp_pages, v_cmp_pages;
  PageTable block_table, cmp_block_table;
  const std::int32_t* topk;  // [Hkv, N, K] (kSelected)
  std::int64_t topk_head_stride, topk_token_stride, topk_col_stride;
  BranchOutput out[kBranches];
  // The branches of this launch, in blockIdx.z order: branch launch_branch[i] takes
  // z in [z_begin[i], z_begin[i] + out[branch].splits).
  int num_launch_branches;
  Branch launch_branch[kBranches];
  int z_begin[kBranches];
  // The selected branch's union of blocks in shared memory: bitmap words over the sequence's blocks
  // and the list of distinct blocks with the mask of tokens that selected each (sizes from the
  // largest context the page tables can address).
  int union_words, union_capacity;
  // K / V stages (AttnSmem): at most 2 where they fit the device's shared memory, else 1
  // (check_gpu_limits). Unless stages_forced (FSA_DECODE_ATTN_STAGES), launch_decode_attention runs
  // one where one fits more CTAs a SM than two.
  int stages;
  bool stages_forced;
  // The compressed branch's block partials for the fused selection (values null: none).
  BlockPartials partials;
  // A decode step's tiles of at most kQuarterTileRows rows run in the key-quarter kernel, a launch
  // of their own after the one of the larger tiles (StepPlan::quarter_launch).
  bool quarter_launch;
};

// The gated combination's rows for merge_combine_kernel (decode_merge.cu): the gates [N, Hq, 3]
// (gate_head_stride 0 for shared gates [N, 3]; the three gates contiguous) and the output o.
struct CombineRows {
  const void* gates;
  std::int64_t gate_token_stride, gate_head_stride;
  void* o;  // [N, Hq, Dv]
  std::int64_t o_token_stride, o_head_stride;
};

// ---- Block selection (decode_select_kernel.cuh, decode_topk.cu) -------------------------------
// A candidate of a token's top-K: score and block (-1: none).
struct Candidate {
  float score;
  std::int32_t block;
};

struct SelectParams {
  BatchInfo batch;
  NsaNumbers nsa;
  const void* q;  // [N, Hq, Dqk] rotated
  std::int64_t q_token_stride, q_head_stride;
  PagedPool k_cmp_pages;
  PageTable cmp_block_table;
  const float* lse;  // compressed attention's [Hq, N]
  std::int64_t lse_head_stride, lse_token_stride;
  // Each selection CTA scores one range of a token tile's blocks and keeps, per token, its range's
  // best candidates: candidates [Hkv, N, ranges, K] (contiguous). The finalize kernel merges them.
  // The fused route's scoring kernel reads the compressed attention's block partials instead of
  // q and the compressed keys (one token per CTA; tile_tokens and row_chunks unused).
  BlockPartials partials;
  Candidate* candidates;
  int ranges;
  int tile_tokens;  // tokens per selection tile (their rows tile_tokens x G in chunks of kRows)
  int row_chunks;   // ceil(tile_tokens * G / kRows)
  int range_capacity;  // blocks of one range, at most (kScoreFloats / tile_tokens)
  std::int32_t* topk;  // [Hkv, N, K] (finalize)
  std::int64_t topk_head_stride, topk_token_stride, topk_col_stride;
};

}  // namespace fsa::cuda::decode
