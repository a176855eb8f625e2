// Fused block selection (spec section 4): compressed-attention probabilities recomputed tile by
// tile, summed over the group's heads, spread over the selection blocks with the overlap weights,
// and a running top-K per token, all on chip. Global memory holds only the inputs and topk_idx.
// No float atomics: every sum has one owner and a fixed order, so topk_idx is bitwise reproducible.
//
// One CTA per (tile of tokens of one sequence, kv head g), 8 warps; the row layout and the split
// of the group's heads over warps are select_tiling.hpp's. Per tile of 64 compressed keys visible
// to the CTA's last token (Q resident in shared memory when it fits, else reloaded in chunks; one
// K~ stage, copied with cp.async while phases B and C of the tile run):
//   A. S = Q K~^T on tensor cores for all of the CTA's query rows against the one K~ tile, and
//      p = exp2(S * scale * log2 e - lse * log2 e) (masked by i*s + l - 1 <= t only in the tiles
//      that reach past the first token's visible keys), summed over the token's heads in the
//      registers of the thread that holds its rows (heads 2m, then 2m + 1, m ascending): one
//      float per (part, token, key) in shared memory, the parts added in part order in B;
//   B. the 16 lanes that own a token for the CTA's lifetime continue the scores of the blocks the
//      tile touches, S[j] += w(i, j) * p[i] over the tile's keys in ascending i (the reference's
//      order and weights), from the value carried in the token's ring of open blocks (default
//      geometry B = 4 s, l = 2 s: one block per lane from a float4 of sums and a shuffle); a final
//      candidate that beats the token's K-th best is appended to its buffer of pending offers;
//   C. the owning warp merges a token's buffer into its list, kept sorted (higher score first, then
//      lower block), when the buffer could not take another tile's offers: a few offers one by one
//      (ranks by ballot, one scatter: merge_offers), more by a bitonic network (merge_sorted). The
//      chosen set is the top of a strict total order, whatever order the offers come in.
// After the last tile the blocks no tile closed are offered, then each row is written ascending
// (chosen plus forced blocks, rank = count of smaller values), then -1 padding.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>
#include <string>

#include "cuda/runtime.hpp"
#include "kernels/common/fast_exp.cuh"
#include "kernels/common/mma_sm80.cuh"
#include "kernels/common/sm90_dispatch.hpp"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/wgmma_sm90.cuh"
#include "kernels/select/select_params.hpp"
#include "kernels/select/select_tiling.hpp"

namespace fsa::cuda::sel {

using common::fast_exp2;
using common::kLog2e;
constexpr unsigned kFullMask = 0xffffffffu;
// Offers merged one by one (~26 instructions each) up to this many; more go through the bitonic
// network (~21 compare-exchange steps of ~11 instructions).
constexpr int kSerialMergeLimit = 8;

// The tile of a packed sequence that CTA `index` covers, from shapes alone: sequence b's tiles take
// the indices [floor(start_b / tile) + b, ... + ceil(n_b / tile)), disjoint and below
// total / tile + nseq (the flash kernels' find_seq_tile with factor 1, copied to keep this op
// self-contained).
struct SeqTile {
  int seq;
  long long first;  // first token of the tile, local to the sequence
  bool valid;
};

__device__ __forceinline__ SeqTile find_seq_tile(const std::int32_t* offsets, std::int64_t stride, int num_seqs,
                                                 int tile, long long index) {
  auto first_index = [&](int b) { return static_cast<long long>(offsets[b * stride]) / tile + b; };
  int lo = 0, hi = num_seqs - 1;  // last b with first_index(b) <= index (strictly increasing)
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (first_index(mid) <= index) lo = mid; else hi = mid - 1;
  }
  const long long first = (index - first_index(lo)) * tile;
  const long long units = static_cast<long long>(offsets[(lo + 1) * stride] - offsets[lo * stride]);
  return {lo, first, first < units};
}

// The total order of candidates: higher score first, then lower block index.
__device__ __forceinline__ bool ranks_before(float score_a, int block_a, float score_b, int block_b) {
  return score_a > score_b || (score_a == score_b && block_a < block_b);
}

// Query rows of round chunk `chunk` (select_tiling.hpp's layout: slot = local round * kWarps + warp,
// 16 rows per slot): the offset of each row in q (-1: padding, zero-filled) and lse * log2 e (+inf
// for padding, so that its probabilities are exp2(-inf) = 0), then the cp.async copies of the rows.
// The caller commits, waits and synchronises.
template <class Element, int kDqk, bool kSwizzled>
__device__ __forceinline__ void load_q_chunk(const SelectParams& p, int chunk, int g, long long token0, int tokens,
                                             Element* q_s, long long* row_offset_s, float* row_bias_s) {
  const SelectShape& sh = p.shape;
  const int rows = sh.rounds_per_chunk * kWarps * 16;
  for (int row = threadIdx.x; row < rows; row += kThreads) {
    const int slot = row / 16, r = row % 16;
    const int warp = slot % kWarps, round = chunk * sh.rounds_per_chunk + slot / kWarps;
    const int group = warp / sh.parts, part = warp % sh.parts;
    const int m = round * sh.parts + part;
    const bool rows_are_tokens = sh.tokens_per_mtile == 16;
    const int head = rows_are_tokens ? 0 : 2 * m + r / 8;
    const int tok = group * sh.tokens_per_mtile + (rows_are_tokens ? r : r % 8);
    long long offset = -1;
    float bias = INFINITY;
    if (round < sh.rounds && m < sh.mtiles_per_group && head < sh.heads_used && tok < tokens) {
      const long long token = token0 + tok;
      const long long h = static_cast<long long>(g) * p.group + head;
      offset = token * p.q_token_stride + h * p.q_head_stride;
      bias = p.lse[h * p.lse_head_stride + token * p.lse_token_stride] * kLog2e;
    }
    row_offset_s[row] = offset;
    row_bias_s[row] = bias;
  }
  __syncthreads();
  constexpr int kVectors = kDqk / 8;
  constexpr int kLd = kDqk + kPadHalf;
  const auto* q = static_cast<const Element*>(p.q);
  for (int idx = threadIdx.x; idx < rows * kVectors; idx += kThreads) {
    const int row = idx / kVectors, vec = idx % kVectors;
    const long long offset = row_offset_s[row];
    uint4* dst = kSwizzled ? reinterpret_cast<uint4*>(reinterpret_cast<unsigned char*>(q_s) +
                                                      wgmma::swizzled_offset(rows, row, vec * 8))
                           : reinterpret_cast<uint4*>(q_s + row * kLd) + vec;
    if (offset >= 0) {
      common::cp_async_16(dst, reinterpret_cast<const uint4*>(q + offset) + vec);
    } else {
      *dst = make_uint4(0, 0, 0, 0);
    }
  }
}

// Keys [key0, key0 + kKeys) of the head's compressed keys into the K stage; keys past keys_total are
// zero rows (their probabilities are masked). Offsets within the tile in 32 bits (kKeys rows). When
// the row's vectors divide the CTA, each thread copies one column of every kRowsPerPass-th row:
// its offsets are computed once.
template <class Element, int kDqk, bool kSwizzled>
__device__ __forceinline__ void load_k_tile(const Element* k, std::int64_t row_stride, int key0, int keys_total,
                                            Element* dst) {
  constexpr int kVectors = kDqk / 8;
  constexpr int kLd = kDqk + kPadHalf;
  const Element* base = k + static_cast<long long>(key0) * row_stride;
  const int rows = keys_total - key0, stride = static_cast<int>(row_stride);
  if constexpr (kSwizzled && kThreads % kVectors == 0) {
    wgmma::copy_rows_swizzled_async<kKeys, kDqk, kThreads>(dst, base, row_stride, rows);
  } else if constexpr (kSwizzled) {
    wgmma::copy_tile_swizzled_async<kKeys, kDqk, kThreads>(
        dst, [&](int row) { return row < rows ? base + row * stride : nullptr; });
  } else if constexpr (kThreads % kVectors == 0) {
    constexpr int kRowsPerPass = kThreads / kVectors;
    const int row0 = threadIdx.x / kVectors, vec = threadIdx.x % kVectors;
    const Element* from = base + row0 * stride + vec * 8;
    Element* to = dst + row0 * kLd + vec * 8;
#pragma unroll
    for (int i = 0; i < kKeys / kRowsPerPass; ++i) {
      if (row0 + i * kRowsPerPass < rows) {
        common::cp_async_16(to + i * kRowsPerPass * kLd, from + i * kRowsPerPass * stride);
      } else {
        *reinterpret_cast<uint4*>(to + i * kRowsPerPass * kLd) = make_uint4(0, 0, 0, 0);
      }
    }
  } else {
#pragma unroll
    for (int idx = threadIdx.x; idx < kKeys * kVectors; idx += kThreads) {
      const int row = idx / kVectors, vec = idx % kVectors;
      uint4* to = reinterpret_cast<uint4*>(dst + row * kLd) + vec;
      if (row < rows) {
        common::cp_async_16(to, base + row * stride + vec * 8);
      } else {
        *to = make_uint4(0, 0, 0, 0);
      }
    }
  }
}

// S for one or two m-tiles (q0, q1: their first rows) against the 64 keys of a K stage; the two
// m-tiles share each B fragment.
template <class Element, int kDqk, bool kTwo>
__device__ __forceinline__ void qk_tiles(float (&acc0)[kKeys / 8][4], float (&acc1)[kKeys / 8][4], const Element* q0,
                                         const Element* q1, const Element* k_s) {
  constexpr int kLd = kDqk + kPadHalf;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      acc0[n][c] = 0.0f;
      if constexpr (kTwo) acc1[n][c] = 0.0f;
    }
  const Element* a0 = q0 + (lane % 16) * kLd + (lane / 16) * 8;
  const Element* a1 = q1 + (lane % 16) * kLd + (lane / 16) * 8;
  const Element* b = k_s + (lane % 8 + (lane / 16) * 8) * kLd + ((lane / 8) % 2) * 8;
#pragma unroll 2
  for (int k0 = 0; k0 < kDqk; k0 += 16) {
    std::uint32_t af0[4], af1[4];
    mma::ldmatrix_x4(af0, a0 + k0);
    if constexpr (kTwo) mma::ldmatrix_x4(af1, a1 + k0);
#pragma unroll
    for (int n = 0; n < kKeys / 8; n += 2) {
      std::uint32_t bf[4];
      mma::ldmatrix_x4(bf, b + n * 8 * kLd + k0);
      mma::mma_16816<Element>(acc0[n], af0, bf[0], bf[1]);
      mma::mma_16816<Element>(acc0[n + 1], af0, bf[2], bf[3]);
      if constexpr (kTwo) {
        mma::mma_16816<Element>(acc1[n], af1, bf[0], bf[1]);
        mma::mma_16816<Element>(acc1[n + 1], af1, bf[2], bf[3]);
      }
    }
  }
}

// S of the 64 rows from `first_row` of the swizzled Q tile (q_rows rows: this warpgroup's four
// m-tiles of a round, 16 rows per warp) against the 64 keys of the swizzled K stage, by wgmma
// (sm_90a): the accumulators have qk_tiles' layout (wgmma_sm90.cuh). All 4 warps of the group take
// part; the shared operands were fenced (fence_async_shared) and synchronised by the caller.
// qk_wgmma_issue issues the products as one wgmma group and returns; the caller waits for it
// (wgmma::wait_group, then fence_operands) before reading acc.
template <class Element, int kDqk>
__device__ __forceinline__ void qk_wgmma_issue(float (&acc)[kKeys / 8][4], const Element* q_s, int q_rows,
                                               int first_row, const Element* k_s) {
  constexpr std::uint32_t kGroupBytes = 8 * wgmma::kPanelRowBytes;  // 8-row groups (K-major operands)
  // With first_row visibly warp-uniform (the caller's warpgroup index comes through a shuffle), the
  // compiler builds the steps' descriptors in uniform registers, a few uniform instructions a step.
  // Above Dqk = 128 the addresses pass through an opaque move that keeps the descriptors per call:
  // before the shuffle the compiler hoisted all steps' descriptors out of the tile loop there and
  // spilled them (116 B at Dqk = 256). With the shuffle, ptxas reports no spill without the move
  // (110 / 111 registers at Dqk = 192 / 256); dropping it is not yet measured on the device.
  std::uint32_t q_address = mma::shared_address(q_s) + first_row * wgmma::kPanelRowBytes;
  std::uint32_t k_address = mma::shared_address(k_s);
  if constexpr (kDqk > 128) {
    asm volatile("mov.u32 %0, %0;" : "+r"(q_address));
    asm volatile("mov.u32 %0, %0;" : "+r"(k_address));
  }
  const std::uint64_t q_desc = wgmma::descriptor_at(q_address, 0, kGroupBytes);
  const std::uint64_t k_desc = wgmma::descriptor_at(k_address, 0, kGroupBytes);
  // k step kk of 16 columns: panel kk / 4 (panels of rows x 128 bytes), 32 bytes per step within it.
  auto step = [](int rows, int kk) {
    return static_cast<std::uint32_t>((kk / 4) * rows * wgmma::kPanelRowBytes + (kk % 4) * 32);
  };
  wgmma::fence();
#pragma unroll
  for (int kk = 0; kk < kDqk / 16; ++kk)
    wgmma::mma_ss<Element, kKeys, 0>(acc, wgmma::advance(q_desc, step(q_rows, kk)),
                                     wgmma::advance(k_desc, step(kKeys, kk)), kk > 0);
  wgmma::commit_group();
}
template <class Element, int kDqk>
__device__ __forceinline__ void qk_wgmma(float (&acc)[kKeys / 8][4], const Element* q_s, int q_rows, int first_row,
                                         const Element* k_s) {
  qk_wgmma_issue<Element, kDqk>(acc, q_s, q_rows, first_row, k_s);
  wgmma::wait_group<0>();
  wgmma::fence_operands<kKeys>(acc);
}

// One pass of a token's offers into its chosen list (cap > 0 slots in shared memory, sorted: best
// first, empty slots (-inf, INT_MAX) last), by a whole warp: each lane offers (score, block) where
// `offered` (a final candidate; a block is offered once). Offers that beat the current K-th best
// (`worst`) are merged in one step: each list entry moves down by the number of offers that rank
// before it, and each offer lands at (offers before it) + (list entries before it), counted by a
// ballot over the list held in the lanes (slots c and c + 32). Ranks in a strict total order are
// distinct, so the scatter is a permutation, and the list does not depend on the offers' order.
// Warp-uniform control flow only (every shuffle and ballot converged).
template <bool kWide>
__device__ __forceinline__ void merge_offers(TopEntry* list, int cap, TopEntry& worst, bool offered, float score,
                                             int j) {
  const int lane = threadIdx.x % 32;
  offered = offered && ranks_before(score, j, worst.score, worst.block);
  const unsigned offers = __ballot_sync(kFullMask, offered);
  if (offers == 0) return;
  const TopEntry empty{-INFINITY, INT_MAX};
  const bool in_lo = lane < cap, in_hi = kWide && lane + 32 < cap;
  const TopEntry lo = in_lo ? list[lane] : empty;
  const TopEntry hi = in_hi ? list[lane + 32] : empty;
  int lo_shift = 0, hi_shift = 0;  // offers that rank before this lane's list entries
  int rank = 0;                    // this lane's offer: offers, then list entries, before it
  for (unsigned pending = offers; pending != 0; pending &= pending - 1) {
    const int src = __ffs(pending) - 1;
    const float other_s = __shfl_sync(kFullMask, score, src);
    const int other_b = __shfl_sync(kFullMask, j, src);
    // An offer is never equal to a list entry (each block is offered once), so "entry before
    // offer" is "not offer before entry".
    const bool before_lo = ranks_before(other_s, other_b, lo.score, lo.block);
    lo_shift += before_lo ? 1 : 0;
    rank += ranks_before(other_s, other_b, score, j) ? 1 : 0;
    int entries_before = __popc(__ballot_sync(kFullMask, in_lo && !before_lo));
    if constexpr (kWide) {
      const bool before_hi = ranks_before(other_s, other_b, hi.score, hi.block);
      hi_shift += before_hi ? 1 : 0;
      entries_before += __popc(__ballot_sync(kFullMask, in_hi && !before_hi));
    }
    rank += lane == src ? entries_before : 0;
  }
  __syncwarp();  // every lane has read the list
  if (in_lo && lane + lo_shift < cap) list[lane + lo_shift] = lo;
  if (in_hi && lane + 32 + hi_shift < cap) list[lane + 32 + hi_shift] = hi;
  if (offered && rank < cap) list[rank] = {score, j};
  __syncwarp();
  worst = list[cap - 1];
}

template <class Fn>
__device__ __forceinline__ void with_width(int cap, Fn&& fn) {
  if (cap > 32) {
    fn.template operator()<true>();
  } else {
    fn.template operator()<false>();
  }
}

// A candidate as one 64-bit key whose unsigned order is the strict order of ranks_before: the
// score's bits mapped to an order-preserving unsigned (scores are never NaN here: NaN is offered
// as -inf; -0 is made +0, equal as floats), then the block complemented (a lower block ranks
// first). Distinct blocks give distinct keys; the empty entry (-inf, INT_MAX) ranks below every
// block with a score.
__device__ __forceinline__ unsigned long long rank_key(float score, int block) {
  const unsigned bits = __float_as_uint(score + 0.0f);
  const unsigned ordered = bits & 0x80000000u ? ~bits : bits | 0x80000000u;
  return static_cast<unsigned long long>(ordered) << 32 | ~static_cast<unsigned>(block);
}
__device__ __forceinline__ TopEntry entry_of(unsigned long long key) {
  const unsigned ordered = static_cast<unsigned>(key >> 32);
  const unsigned bits = ordered & 0x80000000u ? ordered & 0x7fffffffu : ~ordered;
  return {__uint_as_float(bits), static_cast<int>(~static_cast<unsigned>(key))};
}

// One compare-exchange step of a bitonic network over the warp's lanes (one key per lane):
// partner lane ^ `stride`; the pair ends in `first_lower ? best first : best last` order.
__device__ __forceinline__ void bitonic_step(unsigned long long& key, int stride, bool first_lower) {
  const int lane = threadIdx.x % 32;
  const unsigned long long other = __shfl_xor_sync(kFullMask, key, stride);
  const bool lower = (lane & stride) == 0;
  if (lower == first_lower ? other > key : other < key) key = other;
}

// Up to 32 offers (one per lane, empty (-inf, INT_MAX) where none) merged into a list of cap <= 32
// entries by a bitonic sort of the offers (best first), one half-cleaner step against the list
// (lane i keeps the better of list[i] and offer[31 - i]: the best 32 of both, as a bitonic
// sequence), and a bitonic merge; lanes below cap write back. The list becomes the best cap of
// list and offers in the strict total order: the serial merge_offers' result, in 21 steps of a
// 64-bit shuffle, compare and select (rank_key) whatever the number of offers.
__device__ __forceinline__ void merge_sorted(TopEntry* list, int cap, TopEntry offer) {
  const int lane = threadIdx.x % 32;
  unsigned long long key = rank_key(offer.score, offer.block);
#pragma unroll
  for (int size = 2; size <= 32; size <<= 1)
#pragma unroll
    for (int stride = size / 2; stride > 0; stride >>= 1) bitonic_step(key, stride, (lane & size) == 0);
  const TopEntry held = lane < cap ? list[lane] : TopEntry{-INFINITY, INT_MAX};
  unsigned long long mine = rank_key(held.score, held.block);
  const unsigned long long reversed = __shfl_sync(kFullMask, key, 31 - lane);
  mine = reversed > mine ? reversed : mine;
#pragma unroll
  for (int stride = 16; stride > 0; stride >>= 1) bitonic_step(mine, stride, true);
  __syncwarp();  // every lane has read the list
  if (lane < cap) list[lane] = entry_of(mine);
  __syncwarp();
}

// A token's pending offers (count <= kMaxPending, in arrival order) merged into its list by a
// whole warp, 32 at a time: a few one by one (merge_offers), more through the bitonic network
// (lists of up to 32); `worst` becomes the list's new K-th best. The offers were written by lanes
// of this warp: the caller has synchronised the warp.
__device__ __forceinline__ void merge_pending(TopEntry* list, int cap, TopEntry& worst, const TopEntry* pending,
                                              int count) {
  const int lane = threadIdx.x % 32;
  worst = list[cap - 1];
  for (int base = 0; base < count; base += 32) {
    const bool offered = base + lane < count;
    const TopEntry offer = offered ? pending[base + lane] : TopEntry{-INFINITY, INT_MAX};
    if (cap <= 32 && count - base > kSerialMergeLimit) {
      merge_sorted(list, cap, offer);
      worst = list[cap - 1];
    } else {
      with_width(cap, [&]<bool kWide>() { merge_offers<kWide>(list, cap, worst, offered, offer.score, offer.block); });
    }
  }
}

// p = exp2(S * scale * log2 e - bias) of one m-tile's S fragment in place: rows `group` (bias_lo)
// and `group + 8` (bias_hi), keys 8n + 2 pair + e. kMasked: keys at or past limit_lo / limit_hi
// (visible count - key0) give 0.
template <bool kMasked>
__device__ __forceinline__ void to_probs(float (&acc)[kKeys / 8][4], float scale_log2, float bias_lo, float bias_hi,
                                         int limit_lo, int limit_hi) {
  const int pair = threadIdx.x % 4;
#pragma unroll
  for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float p_lo = fast_exp2(fmaf(acc[n][e], scale_log2, -bias_lo));
      float p_hi = fast_exp2(fmaf(acc[n][2 + e], scale_log2, -bias_hi));
      if constexpr (kMasked) {
        const int key = n * 8 + 2 * pair + e;
        p_lo = key < limit_lo ? p_lo : 0.0f;
        p_hi = key < limit_hi ? p_hi : 0.0f;
      }
      acc[n][e] = p_lo;
      acc[n][2 + e] = p_hi;
    }
}

// The kernel's body (select_blocks_kernel below). kWgmma (sm_90a, two CTAs per SM): phase A's
// products by wgmma from swizzled Q and K~ tiles.
template <class Element, int kDqk, int kCtasPerSm, bool kWgmma>
__device__ __forceinline__ void select_blocks(const SelectParams& p) {
  // kCtasPerSm == 1: two m-tiles per K~ B fragment (up to ~200 registers); 2: one at a time (128).
  constexpr bool kPairs = kCtasPerSm == 1;
  static_assert(!(kWgmma && kPairs), "the wgmma variant runs one m-tile per warp and round");
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  // The swizzle is a function of the address bits: the wgmma variant's tiles start on 1024 bytes.
  unsigned char* smem = kWgmma ? wgmma::swizzle_aligned(smem_raw) : smem_raw;
  const SelectShape& sh = p.shape;
  const SelectSmem& layout = p.layout;
  auto* q_s = reinterpret_cast<Element*>(smem + layout.q);
  auto* k_s = reinterpret_cast<Element*>(smem + layout.k);
  auto* prob_s = reinterpret_cast<float*>(smem + layout.prob);
  auto* ring_s = reinterpret_cast<float*>(smem + layout.ring);
  auto* top_s = reinterpret_cast<TopEntry*>(smem + layout.top);
  auto* pending_s = reinterpret_cast<TopEntry*>(smem + layout.pending);
  auto* row_offset_s = reinterpret_cast<long long*>(smem + layout.row_offset);
  auto* row_bias_s = reinterpret_cast<float*>(smem + layout.row_bias);
  auto* weight_s = reinterpret_cast<float*>(smem + layout.weight);
  auto* cap_s = reinterpret_cast<int*>(smem + layout.capacity);
  auto* worst_s = reinterpret_cast<TopEntry*>(smem + layout.worst);
  auto* pending_count_s = reinterpret_cast<int*>(smem + layout.pending_count);
  constexpr int kLd = kDqk + kPadHalf;

  const int g = blockIdx.y, K = p.topk_width, R = sh.ring_slots, T = sh.tokens_per_cta;
  const int B = p.block_size, l = p.cmp_len, s = p.cmp_stride, I = p.init_blocks, L = p.local_blocks;
  const SeqTile tile = find_seq_tile(p.cu_seqlens, p.cu_stride, p.num_seqs, T, blockIdx.x);
  if (!tile.valid) return;
  const long long seq_start = p.cu_seqlens[tile.seq * p.cu_stride];
  const long long seq_len = p.cu_seqlens[(tile.seq + 1) * p.cu_stride] - seq_start;
  const long long cmp_start = p.cu_cmp[tile.seq * p.cu_cmp_stride];
  const int tokens = static_cast<int>(min(static_cast<long long>(T), seq_len - tile.first));
  // Local positions are below 2^31 (int32 cu_seqlens); s and B are powers of two (B is 32, 64 or
  // 128 and s divides it), so block and key arithmetic is 32-bit shifts.
  const int first_pos = static_cast<int>(tile.first);
  const int s_shift = __ffs(s) - 1, b_shift = __ffs(B) - 1;
  const int windows = l >> s_shift;  // c = l / s
  const int keys_total = visible_count(first_pos + tokens - 1, l, s);
  const int key_tiles = (keys_total + kKeys - 1) / kKeys;
  const int chunks = (sh.rounds + sh.rounds_per_chunk - 1) / sh.rounds_per_chunk;
  const bool q_resident = chunks == 1;
  const int q_rows = sh.rounds_per_chunk * kWarps * 16;  // rows of the Q tile in shared memory

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane / 4, pair = lane % 4;
  // The wgmma variant's warpgroup through a shuffle: visibly warp-uniform, so that the Q descriptors
  // derived from it are computed in uniform registers, not moved there before every wgmma.
  const int warpgroup = __shfl_sync(kFullMask, threadIdx.x / 128, 0);
  const int my_group = warp / sh.parts, my_part = warp % sh.parts;
  // Phase A: this thread's S rows `grp` and `grp + 8` belong to tokens tok_lo and tok_hi (equal
  // unless rows are tokens).
  const bool rows_are_tokens = sh.tokens_per_mtile == 16;
  const int tok_lo = my_group * sh.tokens_per_mtile + grp;
  const int tok_hi = rows_are_tokens ? tok_lo + 8 : tok_lo;
  const int visible_lo = tok_lo < tokens ? visible_count(first_pos + tok_lo, l, s) : 0;
  const int visible_hi = tok_hi < tokens ? visible_count(first_pos + tok_hi, l, s) : 0;
  const int visible_first = visible_count(first_pos, l, s);
  const float scale_log2 = p.scale * kLog2e;
  // Where this thread's head sums of rows tok_lo / tok_hi go (key 8n + 2 pair at + 8n).
  float* const sum_lo = prob_s + (my_part * T + tok_lo) * kLdProb + 2 * pair;
  float* const sum_hi = prob_s + (my_part * T + tok_hi) * kLdProb + 2 * pair;
  // Phases B and C: token t belongs to half-warp t % 16 (lanes 16 (t % 2) + u of warp (t % 16) / 2),
  // the same for every tile; T > 16 tokens take rounds t / 16. The token's 16 lanes sum its blocks
  // of the tile and append the final candidates that beat the list's K-th best (worst_s) to its
  // buffer of pending offers (pending_s, pending_count_s); the warp merges a token's buffer into
  // its list when it could not take another tile's offers.
  const int half = lane / 16, u = lane % 16;
  const int token_rounds = (T + 15) / 16;
  const int pending_limit = sh.pending_slots - sh.max_offers;  // merge above this: room for one more tile
  // The default geometry (B = 4 s, l = 2 s): block j of the tile is keys 4j - 1 .. 4j + 3 relative to
  // it with weights 1, 2, 2, 2, 1, one block per lane (the tile closes 16); else a loop per block.
  const bool fast_blocks = B == 4 * s && l == 2 * s;

  for (int idx = threadIdx.x; idx < T * K; idx += kThreads) top_s[idx] = {-INFINITY, INT_MAX};
  for (int k = threadIdx.x; k < sh.block_keys; k += kThreads) weight_s[k] = static_cast<float>(block_weight(k, l, s, B));
  for (int t = threadIdx.x; t < T; t += kThreads) {
    const int cap = chosen_capacity((first_pos + t) >> b_shift, K, I, L);
    cap_s[t] = cap;
    worst_s[t] = cap > 0 ? TopEntry{-INFINITY, INT_MAX} : TopEntry{INFINITY, -1};  // (+inf, -1): beaten by none
    pending_count_s[t] = 0;
  }
  __syncthreads();  // the per-token tables, read by other threads even when no key tile runs

  const auto* k_head = static_cast<const Element*>(p.k) + g * p.k_head_stride + cmp_start * p.k_row_stride;
  const long long token0 = seq_start + first_pos;  // global row of the CTA's token 0
  if (q_resident) load_q_chunk<Element, kDqk, kWgmma>(p, 0, g, token0, tokens, q_s, row_offset_s, row_bias_s);
  if (key_tiles > 0) load_k_tile<Element, kDqk, kWgmma>(k_head, p.k_row_stride, 0, keys_total, k_s);
  common::cp_async_commit();

  int ring_base = 0, ring_j_lo = 0;  // block ring_j_lo's ring slot (tile 0: block 0, slot 0)
  for (int kt = 0; kt < key_tiles; ++kt) {
    const int key0 = kt * kKeys;
    common::cp_async_wait<0>();
    if constexpr (kWgmma) wgmma::fence_async_shared();  // the copies and zero fills, before wgmma reads
    __syncthreads();  // K~ tile kt (and Q) landed; phase C of tile kt - 1 is done

    // ---- A: probabilities, summed over the heads of each token ----
    const bool masked = key0 + kKeys > visible_first;
    const int limit_lo = visible_lo - key0, limit_hi = visible_hi - key0;
    // This thread's rows of Q slot `slot`: their lse * log2 e (row_bias_s). The wgmma paths read
    // them before waiting for the products, so that the loads' latency hides under the wait.
    auto bias_of = [&](int slot) { return make_float2(row_bias_s[slot * 16 + grp], row_bias_s[slot * 16 + grp + 8]); };
    // Probabilities of an m-tile with row biases `bias`, in place; the mask only in the tiles that
    // reach past the first token's visible keys.
    auto probs = [&](float (&acc)[kKeys / 8][4], float2 bias) {
      if (masked) {
        to_probs<true>(acc, scale_log2, bias.x, bias.y, limit_lo, limit_hi);
      } else {
        to_probs<false>(acc, scale_log2, bias.x, bias.y, limit_lo, limit_hi);
      }
    };
    // This thread's sums (rows grp, grp + 8) into its part's rows of prob_s: two tokens, or the
    // token's even heads plus its odd heads.
    auto store_sums = [&](const float (&sum)[kKeys / 8][4]) {
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) {
        if (rows_are_tokens) {
          *reinterpret_cast<float2*>(sum_lo + n * 8) = make_float2(sum[n][0], sum[n][1]);
          *reinterpret_cast<float2*>(sum_hi + n * 8) = make_float2(sum[n][2], sum[n][3]);
        } else {
          *reinterpret_cast<float2*>(sum_lo + n * 8) = make_float2(sum[n][0] + sum[n][2], sum[n][1] + sum[n][3]);
        }
      }
    };
    if (sh.rounds == 1 && q_resident) {  // one m-tile per warp: no running sum
      float acc[kKeys / 8][4];
      if constexpr (kWgmma) qk_wgmma_issue<Element, kDqk>(acc, q_s, q_rows, warpgroup * 64, k_s);  // all 4 warps
      const float2 bias = bias_of(warp);
      if constexpr (kWgmma) {
        wgmma::wait_group<0>();
        wgmma::fence_operands<kKeys>(acc);
      }
      if (my_part < sh.mtiles_per_group) {
        if constexpr (!kWgmma) qk_tiles<Element, kDqk, false>(acc, acc, q_s + warp * 16 * kLd, q_s, k_s);
        probs(acc, bias);
        store_sums(acc);
      }
    } else if (kWgmma && sh.rounds == 2 && q_resident) {
      // Two m-tiles per warp (G = 9..16): both rounds' products issued at once, the first round's
      // probabilities computed while the second's run; acc0 becomes the sum (0 + p0 + p1 = p0 + p1,
      // the general path's value).
      float acc0[kKeys / 8][4], acc1[kKeys / 8][4];
      qk_wgmma_issue<Element, kDqk>(acc0, q_s, q_rows, warpgroup * 64, k_s);
      qk_wgmma_issue<Element, kDqk>(acc1, q_s, q_rows, kWarps * 16 + warpgroup * 64, k_s);
      const float2 bias0 = bias_of(warp), bias1 = bias_of(kWarps + warp);
      wgmma::wait_group<1>();
      wgmma::fence_operands<kKeys>(acc0);
      probs(acc0, bias0);
      wgmma::wait_group<0>();
      wgmma::fence_operands<kKeys>(acc1);
      probs(acc1, bias1);
      if (my_part < sh.active_parts) {
#pragma unroll
        for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc0[n][c] += acc1[n][c];
        store_sums(acc0);
      }
    } else {
      float sum[kKeys / 8][4];
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) sum[n][0] = sum[n][1] = sum[n][2] = sum[n][3] = 0.0f;
      for (int chunk = 0; chunk < chunks; ++chunk) {
        if (!q_resident) {
          __syncthreads();  // the previous chunk's rows and tables are no longer read
          load_q_chunk<Element, kDqk, kWgmma>(p, chunk, g, token0, tokens, q_s, row_offset_s, row_bias_s);
          common::cp_async_commit();
          common::cp_async_wait<0>();
          if constexpr (kWgmma) wgmma::fence_async_shared();
          __syncthreads();
        }
        const int round_begin = chunk * sh.rounds_per_chunk;
        const int round_end = min(sh.rounds, round_begin + sh.rounds_per_chunk);
        for (int round = round_begin; round < round_end; round += kPairs ? 2 : 1) {
          // Later rounds have no m-tile for this warp either. The wgmma variant runs every round in
          // all 4 warps of a group (its padding rows are zero with probability 0: load_q_chunk).
          if (!kWgmma && round * sh.parts + my_part >= sh.mtiles_per_group) break;
          const bool two =
              kPairs && round + 1 < round_end && (round + 1) * sh.parts + my_part < sh.mtiles_per_group;
          const int slot0 = (round - round_begin) * kWarps + warp, slot1 = slot0 + kWarps;
          float acc0[kKeys / 8][4], acc1[kKeys / 8][4];
          if constexpr (kWgmma) {
            qk_wgmma<Element, kDqk>(acc0, q_s, q_rows, (round - round_begin) * kWarps * 16 + warpgroup * 64, k_s);
          } else if (two) {
            qk_tiles<Element, kDqk, kPairs>(acc0, acc1, q_s + slot0 * 16 * kLd, q_s + slot1 * 16 * kLd, k_s);
          } else {
            qk_tiles<Element, kDqk, false>(acc0, acc1, q_s + slot0 * 16 * kLd, q_s, k_s);
          }
          probs(acc0, bias_of(slot0));
#pragma unroll
          for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) sum[n][c] += acc0[n][c];
          if (kPairs && two) {
            probs(acc1, bias_of(slot1));
#pragma unroll
            for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
              for (int c = 0; c < 4; ++c) sum[n][c] += acc1[n][c];
          }
        }
      }
      if (my_part < sh.active_parts) store_sums(sum);
    }
    __syncthreads();  // sums written; every warp is done with the K~ stage
    if (kt + 1 < key_tiles) load_k_tile<Element, kDqk, kWgmma>(k_head, p.k_row_stride, key0 + kKeys, keys_total, k_s);
    common::cp_async_commit();  // lands while phases B and C run

    // ---- B: each token's 16 lanes sum the blocks the tile touches and offer the final ones ----
    const int j_lo = (key0 << s_shift) >> b_shift;                          // tile_first_block
    const int j_hi = (((key0 + kKeys - 1) << s_shift) + l - 1) >> b_shift;  // tile_last_block
    const int j_final = ((key0 + kKeys) << s_shift) >> b_shift;             // tile_final_end
    const int blocks = j_hi - j_lo + 1;  // <= R; the same for every tile unless B does not divide 64 s
    // Ring slot of block j_lo: j_lo mod R, advanced from the previous tile's (a tile's first block
    // moves by at most ceil(64 s / B) < R), so no division per tile.
    ring_base += j_lo - ring_j_lo;
    ring_base -= ring_base >= R ? R : 0;
    ring_j_lo = j_lo;
    auto ring_slot = [&](int jj) {  // jj < blocks <= R: a tile's blocks have distinct slots
      const int slot = ring_base + jj;
      return slot >= R ? slot - R : slot;
    };
    for (int round = 0; round < token_rounds; ++round) {
      const int t = round * 16 + warp * 2 + half;
      const bool token_ok = t < tokens;
      const int bq = (first_pos + t) >> b_shift;
      const float* probs = prob_s + t * kLdProb;
      float* ring = ring_s + t * R;
      const TopEntry worst = token_ok ? worst_s[t] : TopEntry{INFINITY, -1};
      int count = token_ok ? pending_count_s[t] : 0;
      // Appends this round's offers (at most one per lane) to the token's buffer.
      auto append = [&](bool offer, float score, int j) {
        const unsigned offers = (__ballot_sync(kFullMask, offer) >> (16 * half)) & 0xffffu;
        if (offer) pending_s[t * sh.pending_slots + count + __popc(offers & ((1u << u) - 1))] = {score, j};
        count += __popc(offers);
      };
      auto offers_block = [&](float score, int j) {  // a final candidate that beats the K-th best
        return token_ok && j <= bq && is_candidate(j, bq, I, L) &&
               ranks_before(isnan(score) ? -INFINITY : score, j, worst.score, worst.block);
      };
      if (fast_blocks) {
        // Lane u: keys 4u .. 4u + 3 of the tile (the parts' head sums added in part order) close
        // block j_lo + u, whose first key 4u - 1 is lane u - 1's last, or for u = 0 the previous
        // tile's key 63, carried in the ring as block j_lo's partial sum; key 63 starts block
        // j_lo + 16 (= j_hi). In ascending i with the reference's weights: w * p is exact for w = 1
        // and 2, so each fma is the reference's mul then add.
        float4 p4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (token_ok) p4 = *reinterpret_cast<const float4*>(probs + 4 * u);
        for (int part = 1; part < sh.active_parts && token_ok; ++part) {
          const float4 v = *reinterpret_cast<const float4*>(probs + part * T * kLdProb + 4 * u);
          p4.x += v.x;
          p4.y += v.y;
          p4.z += v.z;
          p4.w += v.w;
        }
        const float previous = __shfl_up_sync(kFullMask, p4.w, 1);
        float score = u > 0 ? previous : (key0 > 0 && token_ok ? ring[ring_slot(0)] : 0.0f);
        score = fmaf(2.0f, p4.x, score);
        score = fmaf(2.0f, p4.y, score);
        score = fmaf(2.0f, p4.z, score);
        score = __fadd_rn(score, p4.w);
        if (u == 15 && token_ok) ring[ring_slot(16)] = p4.w;  // 0 + 1 * p[63]
        const int j = j_lo + u;
        const bool offer = offers_block(score, j);
        append(offer, isnan(score) ? -INFINITY : score, j);
      } else {
        // Keys i = i_base + k, k in [0, block_keys), meet block j with weight_s[k] (block_weight);
        // with j = j_lo + jj, i_base - key0 = rel_lo + jj * b. A block whose first key precedes the
        // tile continues the sum carried in the ring (i_base < key0 and key0 > 0).
        const int rel_lo = (j_lo << (b_shift - s_shift)) - key0 - windows + 1;
        for (int jj = u; jj - u < blocks; jj += 16) {  // warp-uniform trip count
          const int j = j_lo + jj;
          float score = 0.0f;
          bool offer = false;
          if (token_ok && jj < blocks && j <= bq) {
            const int rel = rel_lo + (jj << (b_shift - s_shift));
            const int k_begin = max(-rel, 0), k_end = min(sh.block_keys, kKeys - rel);
            score = key0 > 0 && rel < 0 ? ring[ring_slot(jj)] : 0.0f;
            // In ascending i, as the reference: scores[j] += w * prob, the key's probability being
            // the sum of the parts' head sums in part order.
            for (int k = k_begin; k < k_end; ++k) {
              const float* at = probs + rel + k;
              float prob = at[0];
              for (int part = 1; part < sh.active_parts; ++part) prob += at[part * T * kLdProb];
              score = __fadd_rn(score, __fmul_rn(weight_s[k], prob));
            }
            ring[ring_slot(jj)] = score;
            offer = j < j_final && offers_block(score, j);
          }
          append(offer, isnan(score) ? -INFINITY : score, j);
        }
      }
      if (token_ok && u == 0) pending_count_s[t] = count;
    }

    // ---- C: each warp merges the buffers of its tokens that could not take another tile ----
    __syncwarp();  // the buffers and counts written by the warp's lanes are visible to all of them
    for (int t = warp * 2; t < tokens; t += (t % 2 == 0 ? 1 : 15)) {  // t % 16 in {2 warp, 2 warp + 1}
      const int count = pending_count_s[t];
      if (count <= pending_limit) continue;  // warp-uniform
      TopEntry worst;
      merge_pending(top_s + t * K, cap_s[t], worst, pending_s + t * sh.pending_slots, count);
      if (lane == 0) {
        worst_s[t] = worst;
        pending_count_s[t] = 0;
      }
      __syncwarp();
    }
  }
  // The offers still pending, merged before the lists are read by other warps.
  __syncwarp();
  for (int t = warp * 2; t < tokens; t += (t % 2 == 0 ? 1 : 15)) {
    const int count = pending_count_s[t];
    if (count == 0) continue;  // warp-uniform
    TopEntry worst;
    merge_pending(top_s + t * K, cap_s[t], worst, pending_s + t * sh.pending_slots, count);
  }
  common::cp_async_wait<0>();
  __syncthreads();  // the lists' initial values (when no tile ran)

  // Blocks no tile closed: summed up to the last tile (ring) or touched by no visible key (0).
  const int last_key0 = (key_tiles - 1) * kKeys;
  const int j_done = key_tiles > 0 ? tile_final_end(last_key0, s, B) : 0;
  const int j_touched = key_tiles > 0 ? tile_last_block(last_key0, l, s, B) : -1;
  const int last_j_lo = key_tiles > 0 ? tile_first_block(last_key0, s, B) : 0;
  const int last_ring_base = last_j_lo % R;
  auto* out = p.topk + g * p.topk_head_stride;
  for (int t = warp; t < tokens; t += kWarps) {
    const int bq = (first_pos + t) >> b_shift;
    const int cap = cap_s[t];
    TopEntry* list = top_s + t * K;
    if (cap > 0) {
      const float* ring = ring_s + t * R;
      TopEntry worst = list[cap - 1];
      for (int j0 = j_done; j0 <= bq; j0 += 32) {
        const int j = j0 + lane;
        float score = 0.0f;
        if (j <= j_touched) {
          int slot = last_ring_base + (j - last_j_lo);  // j - last_j_lo < R for j <= j_touched
          slot -= slot >= R ? R : 0;
          score = ring[slot];
          if (isnan(score)) score = -INFINITY;
        }
        const bool offered = j <= bq && is_candidate(j, bq, I, L);
        with_width(cap, [&]<bool kWide>() { merge_offers<kWide>(list, cap, worst, offered, score, j); });
      }
    }
    __syncwarp();
    // Chosen plus forced blocks, ascending: each value's rank is the count of smaller ones.
    const int head_end = forced_head(bq, I);
    const int tail_start = forced_tail_start(bq, I, L);
    const int total = min(K, bq + 1);
    std::int32_t* row = out + (token0 + t) * p.topk_token_stride;
    for (int u = lane; u < K; u += 32) {
      if (u >= total) {
        row[u] = -1;
        continue;
      }
      const int f = u - cap;
      const int value = u < cap ? list[u].block : (f < head_end ? f : tail_start + (f - head_end));
      int rank = min(value, head_end) + max(0, min(value, bq + 1) - tail_start);
      for (int c = 0; c < cap; ++c) rank += list[c].block < value ? 1 : 0;
      row[rank] = value;
    }
  }
}

template <class Element, int kDqk, int kCtasPerSm, bool kWgmma>
__global__ void __launch_bounds__(kThreads, kCtasPerSm) select_blocks_kernel(const __grid_constant__ SelectParams p) {
  if constexpr (kWgmma && !FSA_HAS_WGMMA) {
    __trap();  // wgmma is sm_90a only; the launcher picks this variant where that image runs
  } else {
    select_blocks<Element, kDqk, kCtasPerSm, kWgmma>(p);
  }
}

}  // namespace fsa::cuda::sel

namespace fsa::cuda {

// Picks the shape (sel::choose_launch_shape) knowing whether the wgmma variant runs, its layout,
// then launches one CTA per (token tile, kv head).
template <class Element, int kDqk>
Status launch_select_blocks(SelectParams p, const sel::SmemLimits& limits, cudaStream_t stream) {
  if (p.tokens == 0 || p.num_seqs == 0 || p.heads_kv == 0) return Status::ok();
  // On Hopper (the sm_90a image loaded) the two-CTA shape runs its wgmma variant.
  const bool wgmma_image = common::runs_sm90_image<sel::select_blocks_kernel<Element, kDqk, 2, true>>();
  p.shape = sel::choose_launch_shape(p.heads_used, kDqk, p.cmp_len, p.cmp_stride, p.block_size, p.topk_width,
                                     limits, wgmma_image);
  if (p.shape.tokens_per_cta == 0)
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "select_blocks: cmp_len: the per-token ring of block scores (l=" + std::to_string(p.cmp_len) +
                         ", s=" + std::to_string(p.cmp_stride) + ", B=" + std::to_string(p.block_size) +
                         ") and K=" + std::to_string(p.topk_width) + " do not fit in shared memory");
  const bool wgmma = wgmma_image && p.shape.ctas_per_sm == 2;
  p.layout = sel::SelectSmem(p.shape, kDqk, p.topk_width, wgmma);
  const sel::SelectSmem& layout = p.layout;
  auto* kernel = wgmma                      ? sel::select_blocks_kernel<Element, kDqk, 2, true>
                 : p.shape.ctas_per_sm == 2 ? sel::select_blocks_kernel<Element, kDqk, 2, false>
                                            : sel::select_blocks_kernel<Element, kDqk, 1, false>;
  FSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(layout.bytes)));
  const long long tiles = p.tokens / p.shape.tokens_per_cta + p.num_seqs;
  if (tiles > 0x7fffffffLL)
    return FSA_ERROR(StatusCode::kNotImplemented, "select_blocks: " + std::to_string(tiles) + " token tiles exceed the grid limit");
  kernel<<<dim3(static_cast<unsigned>(tiles), p.heads_kv), sel::kThreads, layout.bytes, stream>>>(p);
  FSA_CHECK_LAUNCH("select_blocks_kernel", stream);
  return Status::ok();
}

}  // namespace fsa::cuda
