// Index arithmetic of the inference kernels and the work plan of one step, from shapes alone.
// Plain C++ (no CUDA headers): the host sizes grids and the workspace with the same functions the
// kernels index with.
//
// The plan depends on the call's shape only (new tokens N, sequences, the longest context the page
// tables can address): a CUDA graph captured for a maximum batch and context replays with any
// lengths up to them, and the kernels read the actual lengths on the device.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/decode/decode_params.hpp"

#ifdef __CUDACC__
#define FSA_DECODE_HD __host__ __device__ __forceinline__
#else
#define FSA_DECODE_HD inline
#endif

namespace fsa::cuda::decode {

// Compressed tokens of a sequence of n tokens: (n - l) / s + 1 when n >= l, else 0.
FSA_DECODE_HD long long compressed_count(long long n, int l, int s) { return n >= l ? (n - l) / s + 1 : 0; }

// Compressed keys visible to the token at position t: i*s + l - 1 <= t  <=>  i < visible_count(t).
FSA_DECODE_HD long long visible_count(long long t, int l, int s) { return t >= l - 1 ? (t - l + 1) / s + 1 : 0; }

// The compressed keys whose window [i*s, i*s + l) meets block j ([j*B, (j+1)*B)):
// [first_key_of_block(j), end_key_of_block(j)).
FSA_DECODE_HD long long first_key_of_block(long long j, int l, int s, int B) {
  const long long x = j * B - l;
  return x >= 0 ? x / s + 1 : 0;
}
FSA_DECODE_HD long long end_key_of_block(long long j, int s, int B) { return (j + 1) * B / s; }

// w(i, j) = |[i*s, i*s + l) n [j*B, (j+1)*B)| / s (an integer: s divides l and B).
FSA_DECODE_HD int overlap_weight(long long i, long long j, int l, int s, int B) {
  const long long lo = i * s > j * B ? i * s : j * B;
  const long long hi = i * s + l < (j + 1) * B ? i * s + l : (j + 1) * B;
  return hi > lo ? static_cast<int>((hi - lo) / s) : 0;
}

// Range `range` of `ranges` equal ranges of a token's blocks [0, num_blocks), at most `capacity`
// blocks each: blocks [first, end) (empty past the last). Only a context past the plan's, which the
// page tables cannot address, would need more than `capacity` per range; it is cut there.
struct BlockRange {
  long long first, end;
};
FSA_DECODE_HD BlockRange block_range(long long num_blocks, int ranges, int capacity, int range) {
  long long per_range = (num_blocks + ranges - 1) / ranges;
  if (per_range > capacity) per_range = capacity;
  const long long first = range * per_range < num_blocks ? range * per_range : num_blocks;
  return {first, first + per_range < num_blocks ? first + per_range : num_blocks};
}

// The fused selection's partials are kept per key quarter: quarter u of a row's compressed keys is
// keys [u kQuarterKeys, (u + 1) kQuarterKeys), quarter q of key tile t is u = 4 t + q (one warp's
// keys in the attention's key-quarter layout, decode_attn_kernel.cuh).
constexpr int kQuarterKeys = kKeys / 4;

// Quarter u meets the blocks [quarter_first_block(u), quarter_first_block(u) + quarter_block_count)
// at most: its first key starts in the first, at an offset from that block's start that is a
// multiple of d = gcd(kQuarterKeys s, B) (so at most B - d), and its last key's window ends
// 15 s + l - 1 positions after that start (5 blocks at l 32, s 16, B 64).
FSA_DECODE_HD long long quarter_first_block(long long u, int s, int B) { return u * kQuarterKeys * s / B; }
FSA_DECODE_HD int quarter_block_count(int l, int s, int B) {
  int d = kQuarterKeys * s, r = B;
  while (r != 0) {
    const int next = d % r;
    d = r;
    r = next;
  }
  return (B - d + (kQuarterKeys - 1) * s + l - 1) / B + 1;
}

// The same in units of s (s divides l and B), relative to quarter u's first key u kQuarterKeys, for
// the partials' 32-bit arithmetic: key u kQuarterKeys + i covers [i, i + Ls) and block
// quarter_first_block(u) + jj covers [block_lo, block_lo + Bs) with block_lo =
// quarter_block_start(u, jj); w(u kQuarterKeys + i, j) = unit_overlap(i, block_lo, Ls, Bs).
// Quarter indices are below 2^27 (positions below 2^31), so this is 32-bit: Bs = B / s, and quarter u
// starts in block floor(u kQuarterKeys / Bs) = quarter_first_block(u).
FSA_DECODE_HD int quarter_first_block_units(int u, int Bs) { return u * kQuarterKeys / Bs; }
FSA_DECODE_HD int quarter_block_start(int u, int jj, int Bs) {
  return quarter_first_block_units(u, Bs) * Bs - u * kQuarterKeys + jj * Bs;
}
// first_key_of_block(j) and end_key_of_block(j) in 32-bit arithmetic and units of s: block j meets
// keys [j Bs - Ls + 1, (j + 1) Bs), from 0 while j B < l (blocks below 2^31 / B). The end is
// returned in 64 bits: (j + 1) Bs reaches 2^31 for the last block at s = 1.
FSA_DECODE_HD int first_key_of_block_units(int j, int Ls, int Bs) { return j * Bs >= Ls ? j * Bs - Ls + 1 : 0; }
FSA_DECODE_HD long long end_key_of_block_units(int j, int Bs) { return static_cast<long long>(j + 1) * Bs; }
FSA_DECODE_HD int unit_overlap(int i, int block_lo, int Ls, int Bs) {
  const int lo = i > block_lo ? i : block_lo, hi = i + Ls < block_lo + Bs ? i + Ls : block_lo + Bs;
  return hi > lo ? hi - lo : 0;
}

// The windows a chunk of c new tokens after P cached ones completes: compressed tokens
// [first, first + count) with first = n_cmp(P), whose windows cover the positions
// [first * s, P + c) (`rows` of them, staged for the compression); all zero when none completes.
// The cached positions among them are the key tail's: first * s > P - l.
struct StagedWindows {
  long long first, count, rows;
};
FSA_DECODE_HD StagedWindows staged_windows(long long cached, long long new_tokens, int l, int s) {
  const long long before = compressed_count(cached, l, s);
  const long long after = compressed_count(cached + new_tokens, l, s);
  if (after <= before) return {before, 0, 0};
  return {before, after - before, cached + new_tokens - before * s};
}

// Tokens an attention tile (kRows rows: tokens x G heads, token-major) can touch: a tile may
// start and end inside a token's heads.
FSA_DECODE_HD int attn_tile_tokens(int group) {
  const int t = (kRows - 1) / group + 2;
  return t < kRows ? t : kRows;
}

// Tokens of a selection tile: whole tokens (a token's group sum needs all its heads in one CTA),
// about kRows rows, at most 16 tokens so that a range of block scores stays long (kScoreFloats /
// tokens). Above kRows heads a tile is one token whose rows run in several chunks.
FSA_DECODE_HD int select_tile_tokens(int group) {
  const int t = kRows / group;
  return t < 1 ? 1 : (t > 16 ? 16 : t);
}

// ---- Shared-memory layouts (bytes from the start of the dynamic buffer, 128-byte aligned pieces) --
FSA_DECODE_HD std::size_t align_smem(std::size_t bytes) { return (bytes + 127) / 128 * 128; }
// Rows in shared memory are padded by 8 16-bit elements (ldmatrix bank spread, 16-byte alignment).
constexpr int kPad = 8;
constexpr int kLdProb = kKeys + 4;  // floats per row of the selection's probability tiles

// The attention kernel: Q tile (kRows rows), `stages` K and V tiles (two: the next tile's copies
// land while this one's products run; one where two do not fit, at Dqk = Dv = 256 on an A100),
// the located key rows of kAttnLocatedTiles tiles (what the masks read and where the copies read
// from: decode_attn_kernel.cuh), and the selected branch's union of blocks (bitmap words over the
// sequence's blocks, the distinct blocks, the tokens that chose each). The fused selection's block
// partials need none: each warp writes them from its registers (decode_block_partials.cuh).
constexpr int kAttnMaxStages = 2;
// Tiles j (masks), j + 1 (its copies issued), j + 2 and j + 3 (located together in even iterations).
constexpr int kAttnLocatedTiles = 4;
struct AttnSlot {  // a located key row: its key (compressed index or position; INT_MAX: past the list) and union entry
  int key, unit;
};
// `q_rows`: the Q tile's rows (kRows; the key-quarter kernel's kQuarterTileRows).
struct AttnSmem {
  std::size_t q, k, v, k_stage, v_stage, slots, sources, bitmap, blocks, token_masks, bytes;
  FSA_DECODE_HD AttnSmem(int dim_qk, int dim_v, int union_words, int union_capacity, int stages = kAttnMaxStages,
                         int q_rows = kRows) {
    q = 0;
    k = q + align_smem(static_cast<std::size_t>(q_rows) * (dim_qk + kPad) * 2);
    k_stage = align_smem(static_cast<std::size_t>(kKeys) * (dim_qk + kPad) * 2);
    v = k + stages * k_stage;
    v_stage = align_smem(static_cast<std::size_t>(kKeys) * (dim_v + kPad) * 2);
    slots = v + stages * v_stage;
    sources = slots + align_smem(static_cast<std::size_t>(kAttnLocatedTiles) * kKeys * sizeof(AttnSlot));
    // Per located tile, each row's K address then its V address.
    bitmap = sources + align_smem(static_cast<std::size_t>(kAttnLocatedTiles) * kKeys * 2 * sizeof(void*));
    blocks = bitmap + align_smem(static_cast<std::size_t>(union_words) * 4);
    token_masks = blocks + align_smem(static_cast<std::size_t>(union_capacity) * 4);
    bytes = token_masks + align_smem(static_cast<std::size_t>(union_capacity) * 8);
  }
};

// The key-quarter kernel (decode_attn_kernel.cuh, kQuarters): tiles of at most kQuarterTileRows query
// rows (a decode step's q_len x G <= 16), every warp on all of them and a quarter of each key tile,
// one K / V stage, its Q tile of 16 rows, and registers for kQuarterMinCtas CTAs of four warps a SM
// where the attention of any tile takes three (kAttnMinCtas). The tile chain is latency-bound (a
// warp's instructions ~7.5 cycles apart at 168 registers), so a fourth CTA a SM is a third more
// warps to issue from. Dv <= 128 only (four warps of 128 threads).
constexpr int kQuarterTileRows = 16;
constexpr int kQuarterMinCtas = 4;
// A margin for the decode kernels' static shared memory (row tables, the merge's factors; at
// sm_90a 2.3 KB for the attention of any tile, 1.2 KB for the key-quarter kernel, which the launcher
// checks against it) on top of their dynamic layouts, and what the GPU reserves per CTA, for the
// CTAs-a-SM count below.
constexpr std::size_t kAttnStaticSmem = 3072;
constexpr std::size_t kSmemReservedPerCta = 1024;
// The key-quarter kernel's CTAs a SM on a device of `smem_per_sm` bytes of shared memory a SM:
// kQuarterMinCtas where they fit (its registers allow that many), else 0, where it would run fewer
// CTAs a SM than the kernel of any tile with fewer registers (an A100's 164 KB; Dqk 192), and
// where it does not serve the head dims (Dv > 128).
inline int attn_quarter_ctas_per_sm(int dim_qk, int dim_v, int union_words, int union_capacity,
                                    std::size_t smem_per_sm) {
  if (dim_v > 128) return 0;
  const std::size_t cta = AttnSmem(dim_qk, dim_v, union_words, union_capacity, 1, kQuarterTileRows).bytes +
                          kAttnStaticSmem + kSmemReservedPerCta;
  return smem_per_sm / cta >= static_cast<std::size_t>(kQuarterMinCtas) ? kQuarterMinCtas : 0;
}

// The attention's K / V stages at this shape: two where they fit `max_smem` bytes, else one.
inline int attn_stages(int dim_qk, int dim_v, int union_words, int union_capacity, std::size_t max_smem) {
  return AttnSmem(dim_qk, dim_v, union_words, union_capacity, kAttnMaxStages).bytes <= max_smem ? kAttnMaxStages : 1;
}

// The selection kernel: the tile's Q rows (all chunks), one K~ tile, the probabilities of one row
// chunk, their per-token sums, the range's block scores, and per row its lse (log2) and visible
// compressed keys and q offset.
struct SelectSmem {
  std::size_t q, k, prob, token_prob, scores, row_bias, row_visible, q_offset, bytes;
  FSA_DECODE_HD SelectSmem(int dim_qk, int row_chunks, int tile_tokens, int range_capacity) {
    const std::size_t rows = static_cast<std::size_t>(row_chunks) * kRows;
    q = 0;
    k = q + align_smem(rows * (dim_qk + kPad) * 2);
    prob = k + align_smem(static_cast<std::size_t>(kKeys) * (dim_qk + kPad) * 2);
    token_prob = prob + align_smem(static_cast<std::size_t>(kRows) * kLdProb * 4);
    scores = token_prob + align_smem(static_cast<std::size_t>(tile_tokens) * kLdProb * 4);
    row_bias = scores + align_smem(static_cast<std::size_t>(tile_tokens) * range_capacity * 4);
    row_visible = row_bias + align_smem(rows * 4);
    q_offset = row_visible + align_smem(rows * 4);
    bytes = q_offset + align_smem(rows * 8);
  }
};

// The work of one step. Grids: attention (attn_tiles, Hkv, sum of the launched branches' splits),
// selection (select_tiles, Hkv, ranges).
//
// A long prefill chunk's gathered keys of sequence b (GatherParams) for one branch: keys [first,
// end) at rows dst0 + (key - first), with the chunk's first token at position `prefix`. The
// sequence's packed rows [row0, row0 + new_tokens) and cached length come from the device; they are
// clamped (rows into [0, N), prefix into [0, max(0, max_context - new)], max_context the tables'
// context) so that prefix <= max_context and, with new <= N, prefix + new <= max(max_context, N)
// = StepPlan::max_context: every range fits its slot (n_cmp(prefix + new) <= cmp_slot, min(prefix,
// w) + new <= window_slot + N - row0), and the KV-outer selected branch, which takes the same
// prefix, stays within its plan's N + nseq x max_context keys. A valid call (cached + new <=
// max_context) keeps prefix = cached.
struct GatheredRange {
  long long prefix, first, end, dst0;
};
FSA_DECODE_HD GatheredRange gathered_range(const GatherParams& p, int b, long long row0, long long new_tokens,
                                           long long cached, bool compressed) {
  const long long tokens = p.batch.tokens, window = p.nsa.window;
  const long long first_row = row0 < 0 ? 0 : (row0 > tokens ? tokens : row0);
  const long long fresh_max = tokens - first_row;
  const long long fresh = new_tokens < 0 ? 0 : (new_tokens > fresh_max ? fresh_max : new_tokens);
  const long long room = p.max_context - fresh;
  const long long prefix = cached < 0 ? 0 : (cached > room ? (room > 0 ? room : 0) : cached);
  if (compressed)
    return {prefix, 0, compressed_count(prefix + fresh, p.nsa.cmp_len, p.nsa.cmp_stride), b * p.cmp_slot};
  const long long back = prefix < window ? prefix : window;
  return {prefix, prefix - back, prefix + fresh, b * p.window_slot + first_row};
}

// The split and range counts depend on the shape in both directions (more tiles, fewer splits),
// so the scratch they need is sized by bounds that only grow with the shape: a workspace sized
// for the largest batch and context then serves every smaller call.
struct StepPlan {
  std::int64_t tokens = 0;       // N
  int num_seqs = 0;
  std::int64_t max_context = 0;  // tokens of the longest sequence after the step, at most
  std::int64_t stage_rows = 0;   // staged window rows, at most: N + nseq (l - 1)
  std::int64_t cmp_rows = 0;     // new compressed tokens, at most: N / s + nseq
  std::int64_t attn_tiles = 0;   // attention grid x: N G / kRows + nseq
  // Per branch: the launch's splits (grid z, the merge's count) and those of its tiles of more than
  // kQuarterTileRows rows (rows_splits <= splits). They differ only where a decode step runs its
  // small tiles in the key-quarter kernel (quarter_launch), whose wave of four CTAs a SM fits more
  // splits; a large tile's splits past its own count write empty statistics.
  int splits[kBranches] = {1, 1, 1};
  int rows_splits[kBranches] = {1, 1, 1};
  bool quarter_launch = false;
  // Bound of splits x N of each branch (its partial outputs hold that many token rows), 0 when the
  // branch can never run in several splits at this shape's context.
  std::int64_t split_tokens[kBranches] = {0, 0, 0};
  std::int64_t select_tiles = 0;  // selection grid x: N / tile_tokens + nseq
  int tile_tokens = 1, row_chunks = 1, range_capacity = 1, ranges = 1;
  std::int64_t range_tokens = 0;  // bound of ranges x N (the candidates hold that many token lists)
  int union_words = 1, union_capacity = 1;
  // The fused selection (fuses_selection): the compressed launch's block partials for
  // partial_rows token-head rows, each partial_quarters key quarters of quarter_blocks values and a
  // maximum (BlockPartials); then one scoring CTA per (token, kv head, range of at most
  // score_range_capacity blocks). The bounds are those of
  // min(N, kFusedSelectTokensPerSeq nseq) tokens, the most a fusing call of this shape or a
  // smaller one has, so that they only grow with the shape too.
  std::int64_t partial_rows = 0, partial_quarters = 0;
  int quarter_blocks = 0;
  int score_ranges = 1, score_range_capacity = kScoreFloats;
  std::int64_t score_range_tokens = 0;  // bound of score_ranges x N over fusing calls
  // A long prefill chunk's gathered keys (GatherParams): rows of a sequence's compressed slot
  // (n_cmp(max_context)) and of its window slot before its chunk (min(w, max_context)).
  std::int64_t gather_cmp_slot = 0, gather_window_slot = 0;
};

// Whether a call of this shape selects through the compressed attention's block partials: at most
// kFusedSelectTokensPerSeq new tokens per sequence (the partials grow with tokens x context; a
// long prefill chunk scores in the second pass instead).
FSA_DECODE_HD bool fuses_selection(std::int64_t tokens, int num_seqs) {
  return tokens <= static_cast<std::int64_t>(kFusedSelectTokensPerSeq) * num_seqs;
}

// CTAs a selection launch aims at: two waves of an H100's 132 SMs at one CTA a SM, so that a
// decode step with few sequences still spreads over the GPU (the range count is fixed by the shape;
// each sequence divides its own blocks among the ranges on the device).
constexpr long long kTargetCtas = 256;

// The attention kernel's CTAs a SM (its __launch_bounds__, kAttnMinCtas in decode_attn_kernel.cuh):
// three of four warps where Dv <= 128, one of eight warps above. The attention's splits fill one
// wave of them, `attn_wave_ctas` = SMs x that (attn_wave_ctas in decode_step.cu from the device);
// kDefaultAttnWaveCtas is an H100 SXM's at Dv <= 128 (132 x 3), for plans made without a device.
FSA_DECODE_HD constexpr int attn_ctas_per_sm(int dim_v) { return dim_v <= 128 ? 3 : 1; }
constexpr long long kDefaultAttnWaveCtas = 132 * 3;

inline long long ceil_div(long long a, long long b) { return b > 0 ? (a + b - 1) / b : 0; }
inline long long clamp_ll(long long v, long long lo, long long hi) { return v < lo ? lo : (v > hi ? hi : v); }
inline long long min_ll(long long a, long long b) { return a < b ? a : b; }
inline long long max_ll(long long a, long long b) { return a > b ? a : b; }

// The device figures the key-quarter kernel's wave needs (sms 0: plan without it, as for a plan
// made without a device). `enabled` (FSA_DECODE_QUARTER_KERNEL): off, the plan is the one without
// it, bounds included (the workspace query and the call read the same switch; a workspace sized
// with it off is too small for a call with it on, which the call reports).
struct QuarterDevice {
  long long sms = 0;
  std::size_t smem_per_sm = 0;
  int dim_qk = 0, dim_v = 0;
  bool enabled = true;
};

// forced_splits (FSA_DECODE_ATTN_SPLITS, 0: the plan's own): every branch's attention splits (both
// kernels') set to it, at most the branch's key tiles, for measuring the split count; the partials'
// bound grows to cover it.
inline StepPlan plan_step(const NsaNumbers& nsa, std::int64_t tokens, int num_seqs, std::int64_t max_context,
                          long long attn_wave_ctas = kDefaultAttnWaveCtas, const QuarterDevice& quarter = {},
                          int forced_splits = 0) {
  StepPlan p;
  const long long G = nsa.group, hkv = nsa.heads_kv > 0 ? nsa.heads_kv : 1;
  const int l = nsa.cmp_len, s = nsa.cmp_stride, B = nsa.block_size, K = nsa.topk;
  p.tokens = tokens;
  p.num_seqs = num_seqs;
  p.max_context = max_ll(max_context, tokens);
  p.stage_rows = tokens + static_cast<std::int64_t>(num_seqs) * (l - 1);
  p.cmp_rows = tokens / s + num_seqs;
  p.attn_tiles = tokens * G / kRows + num_seqs;

  // Attention splits: as many as keep the launch within one wave of W = attn_wave_ctas CTAs
  // (floor(W / (row_tiles Hkv)), at least 1), never more splits than key tiles. The tile chain is
  // latency-bound, so a wave's CTAs each with fewer key tiles finish sooner, while a second wave
  // (more splits than fit) costs more than it spreads (H100, docs/kernels/decode.md: 16 x 128K G 16
  // 4 -> 6 splits 3.5% faster; 64 x 32K G 4 1 -> 2 splits, 512 CTAs, 12-15% slower). With C =
  // W kRows / (G Hkv): a call of N' tokens splits only when its row tiles are at most W / (2 Hkv),
  // and then splits x N' <= W / (row_tiles Hkv) N' <= C (row_tiles >= N' G / kRows); also <= cap
  // x N'. The partials' bound min(cap N, C + min(N, C)) covers every N' <= N and grows with N.
  const long long row_tiles = max_ll(ceil_div(tokens * G, kRows), num_seqs);
  const long long wanted = attn_wave_ctas / max_ll(row_tiles * hkv, 1);
  const long long max_blocks = ceil_div(p.max_context, B);
  const long long tile_tokens = attn_tile_tokens(static_cast<int>(G));
  const long long union_blocks = min_ll(tile_tokens * K, max_blocks);
  const long long key_tiles[kBranches] = {
      ceil_div(compressed_count(p.max_context, l, s), kKeys),               // compressed
      ceil_div(union_blocks * B, kKeys),                                    // selected
      ceil_div(min_ll(nsa.window + tile_tokens, p.max_context), kKeys)};   // window
  p.union_words = static_cast<int>(max_ll(ceil_div(max_blocks, 32), 1));
  p.union_capacity = static_cast<int>(max_ll(union_blocks, 1));
  // A decode step (fuses_selection) whose head dims the key-quarter kernel serves runs its tiles of
  // at most kQuarterTileRows rows there (one a sequence: q_len x G <= 16 rows), split to fill that
  // kernel's wave: splits = max(the large tiles' rows_splits, W_q / (nseq Hkv)). For a fusing call
  // of N' <= 8 nseq' tokens, W_q / (nseq' Hkv) N' <= 8 W_q / Hkv, with W_q at most SMs x
  // kQuarterMinCtas (a bound of the device alone, so that it does not fall as the context's union
  // grows the kernel's shared memory).
  const bool quarter_dims = quarter.enabled && quarter.sms > 0 &&
                            attn_quarter_ctas_per_sm(quarter.dim_qk, quarter.dim_v, 1, 1, SIZE_MAX) > 0;
  const long long quarter_wave =
      quarter_dims ? quarter.sms * attn_quarter_ctas_per_sm(quarter.dim_qk, quarter.dim_v, p.union_words,
                                                            p.union_capacity, quarter.smem_per_sm)
                   : 0;
  p.quarter_launch = quarter_wave > 0 && fuses_selection(tokens, num_seqs);
  const long long quarter_wanted = quarter_wave / max_ll(static_cast<long long>(num_seqs) * hkv, 1);
  for (int b = 0; b < kBranches; ++b) {
    const long long cap = clamp_ll(key_tiles[b], 1, kMaxSplits);
    p.rows_splits[b] = static_cast<int>(clamp_ll(wanted, 1, cap));
    p.splits[b] = p.quarter_launch ? static_cast<int>(max_ll(p.rows_splits[b], clamp_ll(quarter_wanted, 1, cap)))
                                   : p.rows_splits[b];
    const long long c = ceil_div(attn_wave_ctas * kRows, G * hkv);
    p.split_tokens[b] = cap > 1 ? min_ll(cap * tokens, c + min_ll(tokens, c)) : 0;
    if (quarter_dims && cap > 1)
      p.split_tokens[b] = max_ll(
          p.split_tokens[b], min_ll(cap * tokens, ceil_div(kFusedSelectTokensPerSeq * quarter.sms * kQuarterMinCtas, hkv)));
    if (forced_splits > 0) {
      p.rows_splits[b] = p.splits[b] = static_cast<int>(clamp_ll(forced_splits, 1, cap));
      if (cap > 1) p.split_tokens[b] = max_ll(p.split_tokens[b], p.splits[b] * tokens);
    }
  }

  // Selection: ranges of at most range_capacity blocks; more ranges than shared memory needs when
  // the tiles are few (each range keeps K candidates per token and kv head, 8 bytes each).
  p.tile_tokens = select_tile_tokens(static_cast<int>(G));
  p.row_chunks = static_cast<int>(ceil_div(p.tile_tokens * G, kRows));
  p.range_capacity = kScoreFloats / p.tile_tokens;
  p.select_tiles = tokens / p.tile_tokens + num_seqs;
  const long long select_row_tiles = max_ll(ceil_div(tokens, p.tile_tokens), num_seqs);
  const long long needed = max_ll(ceil_div(max_blocks, p.range_capacity), 1);
  const long long extra_cap = clamp_ll(ceil_div(max_blocks, 64), 1, kMaxSplits);
  const long long wanted_ranges = clamp_ll(ceil_div(kTargetCtas, max_ll(select_row_tiles * hkv, 1)), 1, extra_cap);
  p.ranges = static_cast<int>(max_ll(needed, wanted_ranges));
  // ranges x N' <= needed N' + wanted_ranges N' where wanted_ranges > 1 only for N' < C_r =
  // kTargetCtas tile_tokens / Hkv, and then wanted_ranges N' <= C_r + N' (as for the splits).
  const long long c_r = ceil_div(kTargetCtas * p.tile_tokens, hkv);
  p.range_tokens = needed * tokens + min_ll(extra_cap * tokens, c_r + min_ll(tokens, c_r));

  // Fused selection. Scoring reads about G x 1.2 floats per block of a token: cheap but latency
  // bound, so about twice kTargetCtas CTAs, ranges of at least 128 blocks.
  const long long fused_tokens = min_ll(tokens, static_cast<long long>(kFusedSelectTokensPerSeq) * num_seqs);
  p.partial_rows = fused_tokens * nsa.heads_q;
  p.partial_quarters = 4 * ceil_div(compressed_count(p.max_context, l, s), kKeys);  // whole key tiles
  p.quarter_blocks = quarter_block_count(l, s, B);
  const long long score_needed = max_ll(ceil_div(max_blocks, kScoreFloats), 1);
  const long long score_cap = clamp_ll(ceil_div(max_blocks, 128), 1, kMaxSplits);
  const long long score_wanted = clamp_ll(ceil_div(2 * kTargetCtas, max_ll(tokens * hkv, 1)), 1, score_cap);
  p.score_ranges = static_cast<int>(max_ll(score_needed, score_wanted));
  // As for the ranges: score_wanted > 1 only for N' < c_s, and then score_wanted N' <= c_s + N'.
  const long long c_s = ceil_div(2 * kTargetCtas, hkv);
  p.score_range_tokens = score_needed * fused_tokens + min_ll(score_cap * fused_tokens, c_s + min_ll(fused_tokens, c_s));

  p.gather_cmp_slot = compressed_count(p.max_context, l, s);
  p.gather_window_slot = min_ll(nsa.window, p.max_context);
  return p;
}

}  // namespace fsa::cuda::decode
