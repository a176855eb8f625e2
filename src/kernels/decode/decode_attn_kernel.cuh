// Attention of the new tokens over the paged cache, for the three branches (decode_params.hpp,
// Branch): compressed tokens, selected blocks, sliding window.
//
// One CTA per (tile of 64 query rows of one sequence, kv head g, branch and split). Rows are the
// sequence's new tokens x G heads, token-major (row r: token r / G, head g*G + r % G), so every
// key tile is loaded once for all heads of the group and the handful of tokens of a decode step
// fill the tensor-core tiles together. The branch defines a list of keys for the tile's tokens:
//   compressed: compressed tokens [0, visible(last token)), from the compressed pages;
//   window:     raw positions [first token - w, last token], from the raw pages;
//   selected:   the union of the blocks the tile's tokens selected (decode_union.cuh), each block's
//               B raw positions, from the raw pages;
// and every row is masked to its own token's keys (visible compressed keys; keys in [t - w, t];
// keys <= t of blocks its token selected). The list is cut in `splits` equal parts per sequence,
// one per CTA (split over the context so that a few long sequences still fill the GPU); a split
// writes its unnormalised output and row statistics, which decode_merge.cu combines in split order.
// With one split the CTA writes o and lse itself. A decode step's compressed launch also writes
// each key tile's block partials for the fused selection (decode_block_partials.cuh).
//
// Per key tile: the tile's 64 key rows are located in the pools (page table lookups, one thread per
// key, bounds-checked; rows without a page and positions not yet written read as zeros and are
// masked) and resolved to row addresses once, K and V copied with cp.async from them
// (copy_rows_async), then the online softmax of the masked flash-attention forward (kernels/flash)
// and O += P V on mma.sync. For Dv = 256 the output columns are split over two warp groups, as in
// the flash forward. A tile of at most 16 rows (a decode step's q_len x G <= 16) splits each key
// tile's keys over the four warps instead of its rows (the key-quarter layout, attend_tiles).
//
// Pipeline: a decode step is bound by its bytes, and one tile's chain (table load, then K and V
// copies, then the products) left most of HBM idle (48% of its rate at 16 x 128K): in iteration j
// the copies of tile j + 1 are in flight (two K / V stages) and the table loads of tile j + 2
// (a ring of three located tiles), while tile j's products run. Where two stages do not fit the
// shared memory (p.stages 1: Dqk = Dv = 256 on an A100), tile j's copies are issued at the top of
// iteration j, after tile j - 1's products, and only the table loads run ahead. In the key-quarter
// layout (Dv <= 128) each warp runs this pipeline over its own 16 keys of every tile, with warp
// barriers only (warp-local tiles, below); with one stage its next K copies follow its Q K^T and
// its next V copies its P V, so that each is in flight under the rest of the tile.
#pragma once

#include <climits>
#include <cstdint>

#include "cuda/runtime.hpp"
#include "kernels/common/dependent_launch.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"
#include "kernels/decode/decode.hpp"
#include "kernels/decode/decode_block_partials.cuh"
#include "kernels/decode/decode_paged.cuh"
#include "kernels/decode/decode_params.hpp"
#include "kernels/decode/decode_tiling.hpp"
#include "kernels/decode/decode_union.cuh"
#include "kernels/flash/flash_fwd_traits.cuh"
#include "kernels/flash/flash_softmax.cuh"
#include "kernels/flash/flash_tiles.cuh"

namespace fsa::cuda::decode {

// The flash forward's tiling: the same rows, key tiles, warps and padded shared-memory rows.
template <class Element, int kDqk, int kDv>
using AttnTraits = flash::FwdTraits<Element, kDqk, kDv>;

// CTAs a SM the registers must allow (__launch_bounds__): three CTAs of four warps, so that the
// launch keeps twelve warps a SM where its shared memory allows (one K / V stage: the launcher
// chooses, launch_decode_attention); eight warps (Dv = 256) take what they need.
template <class Element, int kDqk, int kDv>
constexpr int kAttnMinCtas = AttnTraits<Element, kDqk, kDv>::kThreads <= 128 ? 3 : 1;
static_assert(kAttnMinCtas<__nv_bfloat16, 128, 128> == attn_ctas_per_sm(128) &&
                  kAttnMinCtas<__nv_bfloat16, 256, 256> == attn_ctas_per_sm(256),
              "the plan's wave (attn_ctas_per_sm) is the launch bounds' CTAs a SM");

// Where key list position v0 + r of a tile lives (its pool row), and what it is (AttnSlot: `key`
// is the compressed token index (compressed branch) or the position (raw branches), INT_MAX for a
// list position past the split's end; `unit` is the union entry of the selected branch).
struct KeySlot {
  PageRow at;
  AttnSlot slot;
};

// Columns c and c + 1 of one row's output, unnormalised (o0, o1) with the row's (max, sum) in the
// online softmax's log2 domain: with one split o and (with_stats) lse, else the split's partial
// output and (with_stats) its statistics, which merge_splits_kernel combines.
template <class Element, int kDv>
__device__ __forceinline__ void store_row_pair(const BranchOutput& out, int heads_q, long long tokens, int split,
                                               long long token, int head, int c, float o0, float o1, float row_max,
                                               float row_sum, bool with_stats) {
  if (out.splits == 1) {
    const float inv_sum = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;
    Element* orow = static_cast<Element*>(out.o) + token * out.o_token_stride + head * out.o_head_stride;
    *reinterpret_cast<std::uint32_t*>(orow + c) = mma::pack2<Element>(o0 * inv_sum, o1 * inv_sum);
    if (with_stats && out.lse != nullptr)
      out.lse[head * out.lse_head_stride + token * out.lse_token_stride] = flash::row_lse(row_max, row_sum);
    return;
  }
  const long long index = (static_cast<long long>(split) * tokens + token) * heads_q + head;
  if (with_stats) out.stats[index] = {row_max, row_sum};
  if (row_sum > 0.0f)  // the merge reads no output of a split without keys
    *reinterpret_cast<float2*>(out.o_part + index * kDv + c) = make_float2(o0, o1);
}

// The key-quarter layout's end (decode_attn_kernel): four warps (per column half) hold the same
// rows' online softmax over different quarters of every key tile. Each writes its unnormalised
// output and (max, sum) per row into o_s (the Q, K and V stages' space, free after the last tile:
// 4 x 16 rows x Dv floats, then the 4 x 16 maxima and sums); then one thread per row combines its
// quarters' statistics at the largest maximum (the factors of the quarters' outputs, the row's sum)
// and places the row (where(r, &token, &head)), and the CTA's threads combine, per row and pair of
// columns, the quarters' outputs with those factors, as the split merge does with splits, and write
// the row as the rows layout does (store_row_pair). Per row, not per pair of columns: the pairs'
// loop had repeated the statistics' loads, exponentials and the row's placement (8% of the
// compressed launch's instructions at 16 x 128K, G 16).
// Per row of a key-quarter tile: its four quarters' factors and its place (the kernel's static
// shared memory, one copy whatever the branch loops that merge: decode_attn_kernel).
struct QuarterRows {
  float4 factor[kQuarterTileRows];
  long long token[kQuarterTileRows];
  int head[kQuarterTileRows];
};

template <class Element, int kDv, int kDvPart, int kThreads, class Where>
__device__ __forceinline__ void merge_key_quarters(float* o_s, QuarterRows& rows_s, const float (&acc)[kDvPart / 8][4],
                                                   const float (&row_max)[2], const float (&row_sum)[2], int quarter,
                                                   int col0, const BranchOutput& out, int heads_q, long long tokens,
                                                   int split, int rows, Where where) {
  const int lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
  float* max_s = o_s + 4 * 16 * kDv;  // [quarter][row]; then each row's combined maximum
  float* sum_s = max_s + 4 * 16;      // [quarter][row]; then each row's combined sum
  float4* factor_s = rows_s.factor;   // per row, the four quarters' factors
  long long* token_s = rows_s.token;
  int* head_s = rows_s.head;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = group + 8 * h;
    float* orow = o_s + (quarter * 16 + r) * kDv + col0;
#pragma unroll
    for (int n = 0; n < kDvPart / 8; ++n)
      *reinterpret_cast<float2*>(orow + n * 8 + 2 * pair) = make_float2(acc[n][2 * h], acc[n][2 * h + 1]);
    if (pair == 0 && col0 == 0) {
      max_s[quarter * 16 + r] = row_max[h];
      sum_s[quarter * 16 + r] = row_sum[h];
    }
  }
  __syncthreads();
  if (threadIdx.x < rows) {
    const int r = threadIdx.x;
    float most = -INFINITY;
#pragma unroll
    for (int w = 0; w < 4; ++w) most = fmaxf(most, max_s[w * 16 + r]);
    float f[4], sum = 0.0f;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float m = max_s[w * 16 + r];
      f[w] = m == -INFINITY ? 0.0f : common::fast_exp2(m - most);  // a quarter without keys: sums and outputs 0
      sum += sum_s[w * 16 + r] * f[w];
    }
    factor_s[r] = make_float4(f[0], f[1], f[2], f[3]);
    where(r, &token_s[r], &head_s[r]);
    max_s[r] = most;  // over quarter 0's entry of row r, which only this thread reads
    sum_s[r] = sum;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < rows * (kDv / 2); idx += kThreads) {
    const int r = idx / (kDv / 2), c = idx % (kDv / 2) * 2;
    const float4 f = factor_s[r];
    const float fw[4] = {f.x, f.y, f.z, f.w};
    float o0 = 0.0f, o1 = 0.0f;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float2 o = *reinterpret_cast<const float2*>(o_s + (w * 16 + r) * kDv + c);
      o0 += o.x * fw[w];
      o1 += o.y * fw[w];
    }
    store_row_pair<Element, kDv>(out, heads_q, tokens, split, token_s[r], head_s[r], c, o0, o1, max_s[r], sum_s[r],
                                 c == 0);
  }
}

// kQuarters: the key-quarter kernel (decode_tiling.hpp, kQuarterTileRows): a decode step's tiles of
// at most 16 rows only, one K / V stage, warp-local tiles, a Q tile of 16 rows and registers for
// kQuarterMinCtas CTAs a SM; the other tiles of that step run in the kernel without it, a launch
// before (AttnParams::quarter_launch), which then skips the small tiles.
template <class Element, int kDqk, int kDv, bool kQuarters>
__global__ void __launch_bounds__(AttnTraits<Element, kDqk, kDv>::kThreads,
                                  (kQuarters ? kQuarterMinCtas : kAttnMinCtas<Element, kDqk, kDv>))
    decode_attn_kernel(const __grid_constant__ AttnParams p) {
  using T = AttnTraits<Element, kDqk, kDv>;
  static_assert(!kQuarters || T::kThreads == 128, "the key-quarter kernel is one warp group (Dv <= 128)");
  // The Q tile's rows in shared memory.
  constexpr int kQRows = kQuarters ? kQuarterTileRows : kRows;
  static_assert(T::kRows == kRows && T::kKeys == kKeys && T::kLdQk == kDqk + kPad && T::kLdV == kDv + kPad,
                "the flash tiling is the decode layout's (AttnSmem)");
  static_assert(sizeof(Element) == 2, "16-bit elements");
  constexpr int kThreads = T::kThreads;  // four warps of 16 rows (Dv = 256: times two column halves)
  static_assert(kThreads >= kRows && kKeys == kRows, "a thread per query row and per key row");
  static_assert((4 * 16 * kDv + 2 * 4 * 16) * 4 <=
                    (kQRows * (kDqk + kPad) + kKeys * (kDqk + kPad) + kKeys * (kDv + kPad)) * 2,
                "the key quarters' outputs fit where the Q tile and one K and V stage were (merge_key_quarters)");
  extern __shared__ __align__(128) unsigned char smem[];
  // Static shared memory, at most kAttnStaticSmem (the plan's CTAs a SM count on it; the launcher
  // checks): per Q tile row its q offset and its block partials' row, the key quarters' merge rows.
  __shared__ long long q_offset[kQRows];  // -1: no row
  __shared__ int union_count;
  __shared__ PartialRow partial_row_s[kQRows];  // where each tile row's block partials go (partial_row_at)
  __shared__ uint2 partial_weights_s[32];       // the partials' fixed weights, per lane (make_fixed_weights)
  __shared__ QuarterRows quarter_rows_s;

  // The branch and split of blockIdx.z.
  int launch = 0;
  while (launch + 1 < p.num_launch_branches && static_cast<int>(blockIdx.z) >= p.z_begin[launch + 1]) ++launch;
  const Branch branch = p.launch_branch[launch];
  const BranchOutput& out = p.out[static_cast<int>(branch)];
  const int split = static_cast<int>(blockIdx.z) - p.z_begin[launch];
  if (split < 0 || split >= out.splits) {
    common::before_early_exit();
    return;
  }

  const BatchInfo& batch = p.batch;
  const int g = blockIdx.y, G = p.nsa.group;
  const int l = p.nsa.cmp_len, s = p.nsa.cmp_stride, B = p.nsa.block_size;
  const flash::SeqTile tile = flash::find_seq_tile(batch.cu_seqlens, batch.cu_stride, batch.num_seqs, G, kRows,
                                                   blockIdx.x);
  if (!tile.valid) {
    common::before_early_exit();
    return;
  }
  const int b = tile.seq;
  const SeqInfo seq = seq_info(batch, b);
  const long long seq_len = seq.cached + seq.new_tokens;  // cached tokens after the append
  const long long first_row = tile.first;
  const long long last_row = min(first_row + kRows, seq.new_tokens * G) - 1;
  const long long t_first = first_row / G, t_last = last_row / G;
  const long long pos_first = seq.cached + t_first, pos_last = seq.cached + t_last;
  // A decode step's small tiles run in the key-quarter kernel, the others in this one.
  const bool quarter_tile = last_row - first_row < kQuarterTileRows;
  if constexpr (kQuarters) {
    if (!quarter_tile) {
      common::before_early_exit();
      return;
    }
  } else {
    if (p.quarter_launch && quarter_tile) {
      common::before_early_exit();
      return;
    }
  }
  const int tile_splits = kQuarters ? out.splits : out.rows_splits;

  const bool block_partials = branch == Branch::kCompressed && p.partials.values != nullptr;
  const int stages = kQuarters ? 1 : p.stages;  // 1 or 2 (CTA-uniform)
  const AttnSmem layout(kDqk, kDv, p.union_words, p.union_capacity, stages, kQRows);
  auto* q_s = reinterpret_cast<Element*>(smem + layout.q);
  // Tile j's stage is j & 1; with one stage both stages are the same bytes (stride 0).
  const std::uint32_t k_stride = stages == 2 ? static_cast<std::uint32_t>(layout.k_stage) : 0u;
  const std::uint32_t v_stride = stages == 2 ? static_cast<std::uint32_t>(layout.v_stage) : 0u;
  auto k_s = [&](int tile) { return reinterpret_cast<Element*>(smem + layout.k + (tile & 1) * k_stride); };
  auto v_s = [&](int tile) { return reinterpret_cast<Element*>(smem + layout.v + (tile & 1) * v_stride); };
  // Located tile j: its rows' slots (the masks') and K / V addresses in the pools (null: zeros),
  // resolved once by the row's thread, so that a copy's vector costs one pointer load (the page
  // arithmetic per vector cost about 46 instructions a vector).
  auto slots_of = [&](int tile) {
    return reinterpret_cast<AttnSlot*>(smem + layout.slots) + (tile % kAttnLocatedTiles) * kKeys;
  };
  auto sources_of = [&](int tile) {  // [0, kKeys): K rows, [kKeys, 2 kKeys): V rows
    return reinterpret_cast<const Element**>(smem + layout.sources) + (tile % kAttnLocatedTiles) * 2 * kKeys;
  };
  const UnionView uni{reinterpret_cast<std::uint32_t*>(smem + layout.bitmap),
                      reinterpret_cast<std::int32_t*>(smem + layout.blocks),
                      reinterpret_cast<unsigned long long*>(smem + layout.token_masks)};
  if (threadIdx.x < kQRows) {
    const long long row = first_row + threadIdx.x;
    q_offset[threadIdx.x] =
        row <= last_row ? (seq.row0 + row / G) * p.q_token_stride + (g * G + row % G) * p.q_head_stride : -1;
    if (block_partials) partial_row_s[threadIdx.x] = partial_row_at(p.partials, row, last_row, seq.row0, p.nsa, g);
  }
  const uint2* fixed_weights =
      block_partials && make_fixed_weights(p.partials, p.nsa, partial_weights_s) ? partial_weights_s : nullptr;
  __syncthreads();
  // Everything above reads only the caller's batch description (cu_seqlens, cache_seqlens), which no
  // kernel of the step writes, so it runs while the kernel before this one finishes; what follows
  // reads the step's own writes (q_rot, the pages, topk_idx) and waits for them (dependent_launch.cuh).
  common::await_prior_grids();
  if (split >= tile_splits) {  // a large tile's split past its own count: no keys, for the merge
    if (threadIdx.x <= last_row - first_row) {
      const long long row = first_row + threadIdx.x;
      const long long token = seq.row0 + row / G;
      const int head = g * G + static_cast<int>(row % G);
      out.stats[(static_cast<long long>(split) * batch.tokens + token) * p.nsa.heads_q + head] = {-INFINITY, 0.0f};
    }
    return;
  }
  const auto* q = static_cast<const Element*>(p.q);
  common::copy_tile_async<kQRows, kDqk, kThreads>(
      q_s, T::kLdQk, [&](int r) -> const Element* { return q_offset[r] >= 0 ? q + q_offset[r] : nullptr; });
  common::cp_async_commit();

  // The tile's key list: [0, total) positions.
  long long total = 0, window_lo = 0;
  if (branch == Branch::kCompressed) {
    total = visible_count(pos_last, l, s);
  } else if (branch == Branch::kWindow) {
    window_lo = pos_first > p.nsa.window ? pos_first - p.nsa.window : 0;
    total = pos_last + 1 - window_lo;
  } else {
    const int count = build_union<kThreads>(p, uni, g, seq.row0, seq.cached, t_first, t_last,
                                               static_cast<int>(pos_last / B + 1), &union_count);
    total = static_cast<long long>(count) * B;
  }
  // This split's part, in whole key tiles.
  const long long per_split = (total + tile_splits - 1) / tile_splits;
  const long long split_keys = (per_split + kKeys - 1) / kKeys * kKeys;
  const long long v_begin = min(total, split * split_keys), v_end = min(total, v_begin + split_keys);
  const int num_tiles = static_cast<int>((v_end - v_begin + kKeys - 1) / kKeys);
  const long long num_compressed = compressed_count(seq_len, l, s);

  // The rest of the kernel, for one branch known at compile time (kBranch, a Branch) or the CTA's
  // (kBranch -1). The key-quarter kernel compiles each branch's tile loop apart: its masks, key
  // lookup and the compressed branch's block partials then cost no test per tile, and ptxas fits
  // one branch's values at a time in the 128 registers of its four CTAs a SM (sm_90a, bf16, D 128:
  // the compressed loop reloads 3 spilled values a tile where the loop of any branch reloaded 7).
  // The kernel of any tile keeps one loop: its instantiations, which also serve prefill chunks,
  // would be three times larger.
  auto attend_branch = [&]<int kBranch>() {
    const Branch br = kBranch < 0 ? branch : static_cast<Branch>(kBranch);
    const bool partials_on = block_partials && br == Branch::kCompressed;
    // List position v as a key slot (thread r of the first kKeys).
    auto slot_of = [&](long long v) -> KeySlot {
      if (v >= v_end) return {{-1, 0}, {INT_MAX, 0}};
      if (br == Branch::kCompressed) {
        if (v >= num_compressed) return {{-1, 0}, {static_cast<int>(v), 0}};
        return {locate(p.cmp_block_table, p.k_cmp_pages, b, v), {static_cast<int>(v), 0}};
      }
      long long position;
      int unit = 0;
      if (br == Branch::kWindow) {
        position = window_lo + v;
      } else {
        unit = static_cast<int>(v / B);
        position = static_cast<long long>(uni.blocks[unit]) * B + v % B;
      }
      // Positions at or past seq_len were never written: zeros (and masked: they are after every token).
      // REVIEW: a position below seq_len whose table entry is invalid (caller error) is not masked: its
      // zero key scores 0 and still takes softmax weight (with a zero value). Documented as "reads as
      // zeros", but a NaN-free exclusion would need the mask to test the row's page too.
      const PageRow at = position < seq_len ? locate(p.block_table, p.k_pages, b, position) : PageRow{-1, 0};
      return {at, {static_cast<int>(position), unit}};
    };
    const PagedPool& k_pool = br == Branch::kCompressed ? p.k_cmp_pages : p.k_pages;
    const PagedPool& v_pool = br == Branch::kCompressed ? p.v_cmp_pages : p.v_pages;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
    const int quarter = warp % 4, col0 = (warp / 4) * T::kDvPart;
    const float scale_log2 = p.nsa.scale * flash::kLog2e;

    // Warp-local tiles (the key-quarter layout of one warp group, Dv <= 128: a tile of at most 16
    // rows, below): warp w reads only keys 16w .. 16w + 15 of each key tile, so it locates and copies
    // them itself and waits on its own copies with a warp barrier; the CTA's four warps then stream
    // their quarters independently, with no CTA barrier per tile (three a tile, each waiting for the
    // slowest warp, where warps 0 and 1 alone also located the tile's rows). Else the CTA locates and
    // copies each tile together and meets at a barrier before reading it.
    const bool warp_local = kQuarters || (kThreads == 128 && quarter_tile);
    auto sync_tile = [&] {
      if (warp_local) __syncwarp(); else __syncthreads();
    };
    // The key row this thread locates (-1: none), in the first or the second (located_second) of
    // the two tiles located together: threads r and kKeys + r locate row r of tiles j and j + 1;
    // warp-local, lanes r and 16 + r of warp w row 16 w + r. Every other iteration locates the next
    // two tiles, so each warp issues the lookup's chain of integer instructions (the bounds, the
    // division by the page size, the table load, both pool addresses) once per two tiles; one
    // thread a row each tile had left half of every warp idle through it.
    const int located_row = warp_local ? kQuarterKeys * warp + lane % kQuarterKeys
                                       : (threadIdx.x < 2 * kKeys ? static_cast<int>(threadIdx.x) % kKeys : -1);
    const int located_second = warp_local ? lane / kQuarterKeys : static_cast<int>(threadIdx.x) / kKeys;
    // Tile j's located row (the table load), then its store.
    auto locate_tile = [&](int tile) { return slot_of(v_begin + static_cast<long long>(tile) * kKeys + located_row); };
    auto store_located = [&](int tile, const KeySlot& located) {
      slots_of(tile)[located_row] = located.slot;
      const Element** sources = sources_of(tile);
      sources[located_row] = pool_row<const Element>(k_pool, located.at, g);
      sources[kKeys + located_row] = pool_row<const Element>(v_pool, located.at, g);
    };
    // Tile j's K copies, then its V copies, one cp.async group each (empty past the last tile, so
    // that every iteration waits on the same group counts); warp-local, this warp's 16 rows by its
    // lanes. issue_rows: one of the two, kCols columns from `sources` into the stage `stage`.
    auto issue_rows = [&]<int kCols>(int tile, Element* stage, int ld, const Element* const* sources) {
      const int r0 = kQuarterKeys * warp;
      if (tile < num_tiles) {
        if (warp_local)
          copy_rows_async<kQuarterKeys, kCols, 32>(stage + r0 * ld, ld, sources + r0, lane);
        else
          copy_rows_async<kKeys, kCols, kThreads>(stage, ld, sources);
      }
      common::cp_async_commit();
    };
    auto issue_k = [&](int tile) {
      issue_rows.template operator()<kDqk>(tile, k_s(tile), T::kLdQk, sources_of(tile));
    };
    auto issue_v = [&](int tile) {
      issue_rows.template operator()<kDv>(tile, v_s(tile), T::kLdV, sources_of(tile) + kKeys);
    };
    auto issue_copies = [&](int tile) {
      issue_k(tile);
      issue_v(tile);
    };
    // Warp-local with one K / V stage, the copies of tile j + 1 follow tile j's uses of the stage:
    // K's once the warp's Q K^T products have read K_j, V's once its P V products have read V_j, so
    // that each is in flight under the rest of the tile (with the CTA's barriers in between this
    // measured no gain; warp-local it costs two warp barriers).
    const bool split_copies = warp_local && stages == 1;
    if (located_row >= 0 && located_second < num_tiles)  // tiles 0 and 1
      store_located(located_second, locate_tile(located_second));
    // Warp-local tiles never meet at a CTA barrier again before the last tile: the Q tile, which
    // every warp reads, lands here and the barrier below publishes it.
    if (warp_local) common::cp_async_wait<0>();
    __syncthreads();
    if (stages == 2 || split_copies) issue_copies(0);

    // The key tiles, in one of two warp layouts (CTA-uniform):
    //   rows:  warp quarter w takes rows 16w .. 16w + 15 of the tile and every key of a key tile;
    //   keys:  the tile has at most 16 rows (a decode step's q_len x G <= 16), so every warp takes
    //          them all and quarter w takes keys 16w .. 16w + 15 of each key tile, keeping its own
    //          online softmax; the four are merged once, after the last tile (merge_key_quarters).
    // With the rows layout three of four warps of a decode step at G 16 would only help copy, while
    // one warp ran every product, softmax and P V of a key tile in series.
    auto attend_tiles = [&]<bool kKeySplit>() {
      constexpr int kCols = kKeySplit ? kKeys / 4 : kKeys;  // key columns of a tile per warp
      const int row0 = kKeySplit ? 0 : quarter * 16;
      const int key0 = kKeySplit ? quarter * kCols : 0;
      // A warp whose 16 rows are all past the tile's last row (q_len x G below 64) only helps copy: it
      // skips the MMAs and the softmax (warp-uniform).
      const bool warp_has_rows = first_row + row0 <= last_row;
      // This thread's two rows (group, group + 8): valid, token index in the tile, and the mask's
      // limits in 32 bits (key indices and positions are below 2^31): compressed keys [0, cmp_end);
      // window list positions [window_first, window_last]; selected positions up to raw_hi, in the
      // blocks the token's bit marks. A row past the tile sees nothing (cmp_end 0, window_last and
      // raw_hi -1), and no row sees a list position past the split (key INT_MAX).
      bool row_valid[2];
      int row_token_bit[2], cmp_end[2], raw_hi[2], window_first[2], window_last[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const long long row = first_row + row0 + group + 8 * h;
        row_valid[h] = row <= last_row;
        const long long t = row / G;
        const long long position = seq.cached + t;
        // The compressed key of list position v is v (v < v_end), so the limit folds in the split's end.
        cmp_end[h] = row_valid[h] ? static_cast<int>(min(visible_count(position, l, s), v_end)) : 0;
        raw_hi[h] = row_valid[h] ? static_cast<int>(position) : -1;
        // The window's key of list position v is position window_lo + v (v < v_end): the row's keys
        // [max(position - w, 0), position] as list positions, the split's end folded in.
        window_first[h] = static_cast<int>(max(position - p.nsa.window, 0LL) - window_lo);
        window_last[h] = row_valid[h] ? static_cast<int>(min(position - window_lo, v_end - 1)) : -1;
        row_token_bit[h] = static_cast<int>(t - t_first);
      }
      // The branch's mask, chosen once (the branch is the CTA's): per score a compare or two, and for
      // the selected branch a shared-memory load of the key's slot, where one test for all branches
      // spent a dozen instructions and branches. The compressed and window branches' keys are their
      // list positions (offset by window_lo): no slot to load.
      const AttnSlot* slots = nullptr;  // the current tile's (set per iteration)
      int tile_key0 = 0;                // the list position of this warp's first key of the current tile
      auto compressed_visible = [&](int h, int column) { return tile_key0 + column < cmp_end[h]; };
      auto window_visible = [&](int h, int column) {
        const int v = tile_key0 + column;
        return v >= window_first[h] && v <= window_last[h];
      };
      auto selected_visible = [&](int h, int column) {
        const AttnSlot& key = slots[key0 + column];
        return key.key <= raw_hi[h] && ((uni.token_masks[key.unit] >> row_token_bit[h]) & 1ull) != 0;
      };

      float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
      float acc[T::kDvPart / 8][4];
      common::zero_acc<T::kDvPart>(acc);

      for (int it = 0; it < num_tiles; ++it) {
        const long long v0 = v_begin + static_cast<long long>(it) * kKeys;
        // Every warp is done with tile it - 1: its K / V stage (tile it + 1's) and its located slot
        // (tile it + 2's) are free; tile it + 1's located rows (stored in iteration it - 1) are visible
        // (warp-local: the same within the warp, the only reader and writer of its rows).
        sync_tile();
        if (!split_copies) {
          issue_copies(stages == 2 ? it + 1 : it);
          if (stages == 1) {  // the same group counts below: K_it, V_it, then two empty groups
            common::cp_async_commit();
            common::cp_async_commit();
          }
        }
        // Even iterations locate tiles it + 2 and it + 3 (ring slots of tiles it - 2 and it - 1,
        // which every warp is done with after the barrier at the top of this iteration).
        const int ahead_tile = it + 2 + located_second;
        const bool locates = located_row >= 0 && it % 2 == 0 && ahead_tile < num_tiles;
        KeySlot ahead{};
        if (locates) ahead = locate_tile(ahead_tile);  // stored at the end of the iteration

        // K of tile it has landed (V_it, K_it+1, V_it+1 may be in flight; split: V_it)
        if (split_copies) common::cp_async_wait<1>(); else common::cp_async_wait<3>();
        sync_tile();
        slots = slots_of(it);
        tile_key0 = static_cast<int>(v0) + key0;
        float sc[kCols / 8][4];
        if (warp_has_rows) {
          common::zero_acc<kCols>(sc);
          common::warp_tile_mma<Element, kDqk, kCols, false, false, T::kQkUnroll>(sc, q_s, T::kLdQk, row0, k_s(it),
                                                                                   T::kLdQk, key0);
        }
        if (split_copies) {  // the warp's lanes have read its K rows of tile it
          __syncwarp();
          issue_k(it + 1);
        }
        if (warp_has_rows) {
          if (br == Branch::kCompressed) {
            flash::online_softmax_tile_lazy<true, kCols, T::kDvPart>(sc, acc, row_max, row_sum, scale_log2, compressed_visible);
          } else if (br == Branch::kWindow) {
            flash::online_softmax_tile_lazy<true, kCols, T::kDvPart>(sc, acc, row_max, row_sum, scale_log2, window_visible);
          } else {
            flash::online_softmax_tile_lazy<true, kCols, T::kDvPart>(sc, acc, row_max, row_sum, scale_log2, selected_visible);
          }
        }
        // The fused selection's block partials of the keys this warp holds (CTA-uniform branch).
        if (partials_on && col0 == 0 && warp_has_rows)
          write_partials<kCols>(p.partials, p.nsa, fixed_weights, sc, row_max, partial_row_s + row0,
                                static_cast<int>(v_begin / kKeys) + it, kKeySplit ? quarter : 0);

        // V of tile it has landed (split: K_it+1 may be in flight)
        if (split_copies) common::cp_async_wait<1>(); else common::cp_async_wait<2>();
        sync_tile();
        if (warp_has_rows)
          common::warp_pv_mma<Element, kCols, T::kDvPart>(acc, sc, v_s(it) + key0 * T::kLdV, T::kLdV, col0);
        if (split_copies) {  // the warp's lanes have read its V rows of tile it
          __syncwarp();
          issue_v(it + 1);
        }
        if (locates) store_located(ahead_tile, ahead);
      }
      common::cp_async_wait<0>();  // the Q copies, when no key tile ran
      flash::quad_row_sums(row_sum);  // the lazy softmax kept each thread's columns' sums

      if constexpr (kKeySplit) {
        __syncthreads();  // every warp is done with Q, K and V: their space holds the quarters' outputs
        merge_key_quarters<Element, kDv, T::kDvPart, kThreads>(
            reinterpret_cast<float*>(smem + layout.q), quarter_rows_s, acc, row_max, row_sum, quarter, col0, out,
            p.nsa.heads_q, batch.tokens, split, static_cast<int>(last_row - first_row + 1),
            [&](int r, long long* token, int* head) {
              const long long row = first_row + r;
              *token = seq.row0 + row / G;
              *head = g * G + static_cast<int>(row % G);
            });
      } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (!row_valid[h]) continue;
          const long long row = first_row + row0 + group + 8 * h;
          const long long token = seq.row0 + row / G;
          const int head = g * G + static_cast<int>(row % G);
#pragma unroll
          for (int n = 0; n < T::kDvPart / 8; ++n)
            store_row_pair<Element, kDv>(out, p.nsa.heads_q, batch.tokens, split, token, head, col0 + n * 8 + 2 * pair,
                                         acc[n][2 * h], acc[n][2 * h + 1], row_max[h], row_sum[h],
                                         n == 0 && pair == 0 && col0 == 0);
        }
      }
    };
    if constexpr (kQuarters) {
      attend_tiles.template operator()<true>();
    } else {
      if (quarter_tile) {
        attend_tiles.template operator()<true>();
      } else {
        attend_tiles.template operator()<false>();
      }
    }
  };
  if constexpr (kQuarters) {
    if (branch == Branch::kCompressed) {
      attend_branch.template operator()<static_cast<int>(Branch::kCompressed)>();
    } else if (branch == Branch::kWindow) {
      attend_branch.template operator()<static_cast<int>(Branch::kWindow)>();
    } else {
      attend_branch.template operator()<static_cast<int>(Branch::kSelected)>();
    }
  } else {
    attend_branch.template operator()<-1>();
  }
}

// A kernel's static shared memory against the margin the plan counts CTAs a SM with
// (kAttnStaticSmem): past it the plan's splits would be sized for CTAs that do not fit. Read once a
// process (a property of the image; a failed query counts as 0 and leaves the launch to report).
template <auto* kKernel>
Status check_static_smem(const char* name) {
  static const std::size_t bytes = [] {
    cudaFuncAttributes attributes{};
    const bool known = cudaFuncGetAttributes(&attributes, kKernel) == cudaSuccess;
    cudaGetLastError();
    return known ? attributes.sharedSizeBytes : std::size_t{0};
  }();
  if (bytes <= kAttnStaticSmem) return Status::ok();
  return FSA_ERROR(StatusCode::kInternal, std::string(name) + ": " + std::to_string(bytes) +
                                              " bytes of static shared memory, past the plan's kAttnStaticSmem");
}

// One CTA per (attention tile, kv head, branch split); the branches of `p` run in one launch, or,
// where a decode step runs its small tiles in the key-quarter kernel (p.quarter_launch), in two: the
// larger tiles first (none in a step of q_len x G <= 16: its CTAs exit at once), then the small ones.
template <class Element, int kDqk, int kDv>
Status launch_decode_attention(const AttnParams& p, cudaStream_t stream) {
  using T = AttnTraits<Element, kDqk, kDv>;
  if (p.batch.tokens == 0 || p.batch.num_seqs == 0 || p.num_launch_branches == 0) return Status::ok();
  if (p.stages < 1 || p.stages > kAttnMaxStages)
    return FSA_ERROR(StatusCode::kInternal, "decode attention: AttnParams::stages must be 1 or 2, got " +
                                                std::to_string(p.stages));
  const long long tiles = p.batch.tokens * p.nsa.group / kRows + p.batch.num_seqs;
  if (tiles > 0x7fffffffLL)
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "q: nsa_prefill: " + std::to_string(tiles) + " query tiles exceed the grid limit");
  const int last = p.num_launch_branches - 1;
  const int z = p.z_begin[last] + p.out[static_cast<int>(p.launch_branch[last])].splits;
  const dim3 grid(static_cast<unsigned>(tiles), p.nsa.heads_kv, z);
  auto smem_of = [&](int stages) {
    return AttnSmem(kDqk, kDv, p.union_words, p.union_capacity, stages).bytes;
  };
  auto* kernel = decode_attn_kernel<Element, kDqk, kDv, false>;
  FSA_RETURN_IF_ERROR((check_static_smem<&decode_attn_kernel<Element, kDqk, kDv, false>>("decode_attn_kernel")));
  FSA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_of(p.stages))));
  // One stage where it fits more CTAs a SM than two: the tile chain is latency-bound, and on an H100
  // a second stage measured the same as one at equal CTAs a SM (docs/kernels/decode.md, "Key
  // quarters with the pipeline"), while the launch with three CTAs a SM was faster than with two.
  AttnParams run = p;
  if (p.stages > 1 && !p.stages_forced) {
    int with_two = 0, with_one = 0;
    FSA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&with_two, kernel, T::kThreads, smem_of(2)));
    FSA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&with_one, kernel, T::kThreads, smem_of(1)));
    if (with_one > with_two) run.stages = 1;
  }
  constexpr auto* kAnyTile = &decode_attn_kernel<Element, kDqk, kDv, false>;
  FSA_RETURN_IF_ERROR(
      common::launch_dependent<kAnyTile>("decode_attn_kernel", grid, T::kThreads, smem_of(run.stages), stream, run));
  if (!p.quarter_launch) return Status::ok();
  if constexpr (T::kThreads == 128) {
    const std::size_t smem = AttnSmem(kDqk, kDv, p.union_words, p.union_capacity, 1, kQuarterTileRows).bytes;
    FSA_RETURN_IF_ERROR(
        (check_static_smem<&decode_attn_kernel<Element, kDqk, kDv, true>>("decode_attn_quarters_kernel")));
    note_quarter_launch();
    FSA_CUDA_CHECK(cudaFuncSetAttribute(decode_attn_kernel<Element, kDqk, kDv, true>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    constexpr auto* kQuarterTiles = &decode_attn_kernel<Element, kDqk, kDv, true>;
    return common::launch_dependent<kQuarterTiles>(
        "decode_attn_quarters_kernel", grid, T::kThreads, smem, stream, p);
  } else {
    return FSA_ERROR(StatusCode::kInternal, "decode attention: no key-quarter kernel above Dv = 128");
  }
}

}  // namespace fsa::cuda::decode
