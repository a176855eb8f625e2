// Work decomposition and index arithmetic of the fused block selection (select_kernel.cuh), shared
// by the kernel, its launcher and host-side checks of the kernel's bookkeeping. Plain C++ (no CUDA
// headers): every function is usable on the host and the device.
//
// Query rows are packed in m-tiles of 16 rows (one mma.sync A tile). With a group sum over
// heads_used >= 2 heads, an m-tile holds 8 tokens x 2 heads (rows 0-7 head 2m, rows 8-15 head
// 2m + 1 of the same 8 tokens), so the thread that holds rows r and r + 8 of an S fragment holds
// one token's two heads, and a token's sum over heads stays in that thread's registers across the
// ceil(heads_used / 2) m-tiles of its "token group". With heads_used = 1 an m-tile is 16 tokens.
// A CTA holds `groups` token groups; the kWarps warps split as groups x parts, part p of a group
// taking its m-tiles p, p + parts, ... (one per "round"); parts > 1 leave partial sums that are
// added in part order. Rounds are loaded into shared memory `rounds_per_chunk` at a time.
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#define FSA_SEL_HD __host__ __device__ __forceinline__
#else
#define FSA_SEL_HD inline
#endif

namespace fsa::cuda::sel {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kKeys = 64;           // compressed keys per tile
constexpr int kMaxTopk = 64;        // two list slots per lane of the warp that owns a token
constexpr int kLdProb = kKeys + 8;  // floats per token row of summed probabilities: the float2
                                    // stores of a fragment (8 tokens x 4 pairs) hit 16 distinct banks
constexpr int kPadHalf = 8;         // 16-bit elements of padding per shared Q/K row (ldmatrix banks)
constexpr int kMaxPending = 64;     // offers a token holds between merges into its list (2 per lane)

struct SelectShape {
  int heads_used;        // heads whose probabilities are summed: G, or 1 (first_head)
  int tokens_per_mtile;  // 16 when heads_used == 1, else 8
  int mtiles_per_group;  // m-tiles of a token group: 1, or ceil(heads_used / 2)
  int groups;            // token groups per CTA: 1, 2, 4 or 8
  int parts;             // warps per token group: kWarps / groups
  int active_parts;      // parts that own at least one m-tile: min(parts, mtiles_per_group)
  int rounds;            // m-tiles per warp: ceil(mtiles_per_group / parts)
  int rounds_per_chunk;  // rounds whose Q rows are in shared memory at once (all of them: Q resident)
  int tokens_per_cta;    // groups * tokens_per_mtile (<= 64)
  int ring_slots;        // per-token slots of block scores still being summed (ring_slots_for)
  int block_keys;        // keys whose window can meet a block: (B + l) / s - 1 (block_weight)
  int max_offers;        // blocks one key tile closes, at most: ceil(kKeys s / B) (max_offers_per_tile)
  int pending_slots;     // per-token buffer of offers not yet merged into the list (pending_slots_for)
  int ctas_per_sm;       // 2: the kernel variant limited to 128 registers, smem within half an SM
};

FSA_SEL_HD std::size_t align_bytes(std::size_t bytes) { return (bytes + 127) / 128 * 128; }

// A score entry of a token's chosen list (sorted: best first; empty = (-inf, INT_MAX)).
struct TopEntry {
  float score;
  int block;
};

// Dynamic shared memory of one CTA, in bytes from the start of the buffer. `swizzled`: the Hopper
// (wgmma) variant's Q and K~ tiles, unpadded in the 128-byte swizzle on 1024-byte boundaries
// (wgmma_sm90.cuh), the buffer realigned to 1024 bytes by the kernel (1024 more bytes); never more
// than the padded layout, so a shape chosen for one fits the other.
struct SelectSmem {
  std::size_t q, k, prob, ring, top, pending, row_offset, row_bias, weight, capacity, worst, pending_count, bytes;
  SelectSmem() = default;
  FSA_SEL_HD SelectSmem(const SelectShape& sh, int dqk, int topk, bool swizzled = false) {
    const std::size_t ld = static_cast<std::size_t>(swizzled ? dqk : dqk + kPadHalf) * 2;  // bytes per Q/K row
    const std::size_t q_rows = static_cast<std::size_t>(sh.rounds_per_chunk) * kWarps * 16;
    const std::size_t tokens = static_cast<std::size_t>(sh.tokens_per_cta);
    q = 0;
    k = q + (swizzled ? (q_rows * ld + 1023) / 1024 * 1024 : align_bytes(q_rows * ld));
    prob = k + align_bytes(kKeys * ld);  // one K stage: loaded while phase B runs
    ring = prob + align_bytes(static_cast<std::size_t>(sh.active_parts) * tokens * kLdProb * sizeof(float));
    top = ring + align_bytes(tokens * static_cast<std::size_t>(sh.ring_slots) * sizeof(float));
    pending = top + align_bytes(tokens * static_cast<std::size_t>(topk) * sizeof(TopEntry));
    row_offset = pending + align_bytes(tokens * static_cast<std::size_t>(sh.pending_slots) * sizeof(TopEntry));
    row_bias = row_offset + align_bytes(q_rows * sizeof(long long));
    weight = row_bias + align_bytes(q_rows * sizeof(float));
    capacity = weight + align_bytes(static_cast<std::size_t>(sh.block_keys) * sizeof(float));
    worst = capacity + align_bytes(tokens * sizeof(int));
    pending_count = worst + align_bytes(tokens * sizeof(TopEntry));
    bytes = pending_count + align_bytes(tokens * sizeof(int)) + (swizzled ? 1024 : 0);
  }
};

// Compressed keys visible to local query t: i*s + l - 1 <= t  <=>  i < visible_count(t).
FSA_SEL_HD int visible_count(long long t, int l, int s) {
  return t >= l - 1 ? static_cast<int>((t - l + 1) / s) + 1 : 0;
}

// Blocks touched by the key tile [key0, key0 + kKeys): [tile_first_block, tile_last_block]. Blocks
// below tile_final_end receive no key after this tile (block j's last key is (j + 1) B / s - 1).
FSA_SEL_HD int tile_first_block(int key0, int s, int B) { return static_cast<int>(static_cast<long long>(key0) * s / B); }
FSA_SEL_HD int tile_last_block(int key0, int l, int s, int B) {
  return static_cast<int>((static_cast<long long>(key0 + kKeys - 1) * s + l - 1) / B);
}
FSA_SEL_HD int tile_final_end(int key0, int s, int B) {
  return static_cast<int>(static_cast<long long>(key0 + kKeys) * s / B);
}
// Ring slots per token: a tile touches at most floor((63 s + l - 1) / B) + 2 blocks, and the slots
// of one tile's blocks (j mod ring_slots) must be distinct.
FSA_SEL_HD int ring_slots_for(int l, int s, int B) {
  return static_cast<int>((static_cast<long long>(kKeys - 1) * s + l - 1) / B) + 2;
}
// Blocks closed by one key tile (tile_final_end - tile_first_block), at most: ceil(kKeys s / B).
FSA_SEL_HD int max_offers_per_tile(int s, int B) { return (kKeys * s + B - 1) / B; }
// A token's pending offers are merged into its list once they could not take another tile's
// offers: the buffer holds at least two tiles' worth (one merge per two tiles while every
// candidate is offered, the list filling up), 32 or 64 entries (one or two per lane of the merge).
FSA_SEL_HD int pending_slots_for(int s, int B) {
  return 2 * max_offers_per_tile(s, B) <= 32 ? 32 : kMaxPending;
}

// The overlap weight w(i, j) = |[i s, i s + l) n [j B, (j + 1) B)| / s (an integer: s divides l
// and B) by the key's place in the block: in units of s, block j is [j b, j b + b) with b = B / s
// and key i covers [i, i + c) with c = l / s, so the keys that meet it are i = j b - c + 1 + k for
// k in [0, b + c - 1) (those with i >= 0), with weight min(k + 1, b) - max(k - c + 1, 0), whatever j.
FSA_SEL_HD int block_weight(int k, int l, int s, int B) {
  const int b = B / s, c = l / s;
  return (k + 1 < b ? k + 1 : b) - (k - c + 1 > 0 ? k - c + 1 : 0);
}

// Forced blocks of a query in block bq: [0, forced_head) and [forced_tail_start, bq].
FSA_SEL_HD int forced_head(int bq, int init_blocks) { return init_blocks < bq + 1 ? init_blocks : bq + 1; }
FSA_SEL_HD int forced_tail_start(int bq, int init_blocks, int local_blocks) {
  return init_blocks > bq - local_blocks + 1 ? init_blocks : bq - local_blocks + 1;
}
FSA_SEL_HD int forced_count(int bq, int init_blocks, int local_blocks) {
  const int tail = bq - forced_tail_start(bq, init_blocks, local_blocks) + 1;
  return forced_head(bq, init_blocks) + (tail > 0 ? tail : 0);
}
// Blocks chosen by score beyond the forced ones: min(K, bq + 1) - |F| (never negative: K >= I + L).
FSA_SEL_HD int chosen_capacity(int bq, int topk, int init_blocks, int local_blocks) {
  return (topk < bq + 1 ? topk : bq + 1) - forced_count(bq, init_blocks, local_blocks);
}
// Non-forced candidates: I <= j <= bq - L.
FSA_SEL_HD bool is_candidate(int j, int bq, int init_blocks, int local_blocks) {
  return j >= init_blocks && j <= bq - local_blocks;
}

// The CTA shape for a head count and head dim: about `target_rows` query rows per key tile (each K~
// tile loaded once for that many rows), at most 64 tokens, within `max_smem` bytes of the layout
// (SelectSmem; `swizzled`: the wgmma variant's). Returns tokens_per_cta == 0 when nothing fits.
// `target_rows` is a multiple of 16 * kWarps.
inline SelectShape choose_shape(int heads_used, int dqk, int cmp_len, int cmp_stride, int block_size, int topk,
                                std::size_t max_smem, int target_rows, int ctas_per_sm, bool swizzled = false) {
  SelectShape sh{};
  sh.heads_used = heads_used;
  sh.tokens_per_mtile = heads_used == 1 ? 16 : 8;
  sh.mtiles_per_group = heads_used == 1 ? 1 : (heads_used + 1) / 2;
  sh.ring_slots = ring_slots_for(cmp_len, cmp_stride, block_size);
  sh.block_keys = (block_size + cmp_len) / cmp_stride - 1;
  sh.max_offers = max_offers_per_tile(cmp_stride, block_size);
  sh.pending_slots = pending_slots_for(cmp_stride, block_size);
  sh.ctas_per_sm = ctas_per_sm;
  const int max_groups = 64 / sh.tokens_per_mtile;
  const int target_mtiles = target_rows / 16;
  int groups = 1;
  while (groups * 2 <= max_groups && groups * 2 * sh.mtiles_per_group <= target_mtiles) groups *= 2;
  int chunk_cap = target_mtiles / kWarps > 1 ? target_mtiles / kWarps : 1;
  for (;;) {
    sh.groups = groups;
    sh.parts = kWarps / groups;
    sh.active_parts = sh.parts < sh.mtiles_per_group ? sh.parts : sh.mtiles_per_group;
    sh.rounds = (sh.mtiles_per_group + sh.parts - 1) / sh.parts;
    sh.rounds_per_chunk = sh.rounds < chunk_cap ? sh.rounds : chunk_cap;
    sh.tokens_per_cta = groups * sh.tokens_per_mtile;
    if (SelectSmem(sh, dqk, topk, swizzled).bytes <= max_smem) return sh;
    if (sh.pending_slots > sh.max_offers) {  // a merge after every tile with offers before fewer tokens
      sh.pending_slots = sh.max_offers;
    } else if (groups > 1) {
      sh.pending_slots = pending_slots_for(cmp_stride, block_size);
      groups /= 2;
    } else if (chunk_cap > 1) {
      --chunk_cap;
    } else {
      sh.tokens_per_cta = 0;
      return sh;
    }
  }
}

// Shared memory a CTA may use: with two CTAs per SM (half an SM's, less the per-CTA reservation)
// and with one.
struct SmemLimits {
  std::size_t two_per_sm, one_per_sm;
};

// The limits of a device with `max_optin` bytes a block may opt in to, `per_sm` an SM holds and
// `reserved` it keeps per block.
inline SmemLimits launch_limits(std::size_t max_optin, std::size_t per_sm, std::size_t reserved) {
  const std::size_t half = per_sm / 2 - reserved;
  return {max_optin < half ? max_optin : half, max_optin};
}

// Query rows per K~ tile to aim for: each K~ tile is read from L2 once per CTA, so more rows per
// CTA means less L2 traffic; 256 rows of Q plus the K~ stage fit one CTA per SM up to Dqk = 192,
// 128 rows at Dqk = 256.
inline int target_rows(int dqk) { return dqk <= 192 ? 256 : 128; }

// The launch shape. Two CTAs per SM (the 128-register kernel, half an SM's shared memory each) when
// its Q rows stay resident and it keeps at least half the rows per K~ tile of one CTA per SM (K~ is
// read from L2 once per CTA); else one CTA per SM with up to 256 resident rows and two m-tiles per B
// fragment. `wgmma`: the two-CTA shape runs the Hopper variant, whose swizzled tiles are unpadded,
// so its shape is chosen against that smaller layout (e.g. 32 pending offers per token at G = 16,
// D = 128 instead of 16: half the merges). tokens_per_cta == 0: nothing fits.
inline SelectShape choose_launch_shape(int heads_used, int dqk, int cmp_len, int cmp_stride, int block_size, int topk,
                                       const SmemLimits& limits, bool wgmma) {
  const SelectShape two = choose_shape(heads_used, dqk, cmp_len, cmp_stride, block_size, topk, limits.two_per_sm,
                                       target_rows(dqk), 2, wgmma);
  const SelectShape one = choose_shape(heads_used, dqk, cmp_len, cmp_stride, block_size, topk, limits.one_per_sm,
                                       target_rows(dqk), 1);
  auto resident = [](const SelectShape& sh) { return sh.tokens_per_cta > 0 && sh.rounds <= sh.rounds_per_chunk; };
  const bool prefer_two = resident(two) && (!resident(one) || 2 * two.tokens_per_cta >= one.tokens_per_cta);
  return prefer_two || (!resident(one) && two.tokens_per_cta > 0) ? two : one;
}

}  // namespace fsa::cuda::sel
