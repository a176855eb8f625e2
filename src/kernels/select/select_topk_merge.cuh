// Phase C of the fused block selection (select_kernel.cuh): a token's running top-K list in shared
// memory and the warp-collective merges of its pending offers into it, serial (merge_offers) or by
// a bitonic network (merge_sorted). Candidates are ranked by one strict total order (ranks_before),
// so the chosen set does not depend on the order the offers arrive in.
#pragma once

#include <climits>

#include "kernels/select/select_tiling.hpp"

namespace fsa::cuda::sel {

constexpr unsigned kFullMask = 0xffffffffu;
// Offers merged one by one (~26 instructions each) up to this many; more go through the bitonic
// network (~21 compare-exchange steps of ~11 instructions).
constexpr int kSerialMergeLimit = 8;

// The total order of candidates: higher score first, then lower block index.
__device__ __forceinline__ bool ranks_before(float score_a, int block_a, float score_b, int block_b) {
  return score_a > score_b || (score_a == score_b && block_a < block_b);
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

}  // namespace fsa::cuda::sel
