// The key intervals of the masked flash-attention kernels (flash_params.hpp): which keys a query
// token sees, and which tokens see a run of keys. Both interval ends are non-decreasing in t, so a
// run of tokens [t0, t1] sees exactly the keys [lo(t0), hi(t1)), and every key of [hi(t0), lo(t1))
// is seen by all of them (a tile there needs no mask).
#pragma once

#include "kernels/flash/flash_params.hpp"

namespace fsa::cuda::flash {

// Compressed keys visible to local query t: i*s + l - 1 <= t  <=>  i < visible_count(t)
// (docs/semantics.md section 3).
__device__ __forceinline__ int visible_count(long long t, int l, int s) {
  return t >= l - 1 ? static_cast<int>((t - l + 1) / s) + 1 : 0;
}

// Keys [lo, hi), local to the sequence.
struct KeyInterval {
  int lo, hi;
};

__device__ __forceinline__ KeyInterval key_interval(const FlashParams& p, long long t) {
  if (p.mask == FlashMask::kCompressed) return {0, visible_count(t, p.cmp_len, p.cmp_stride)};
  return {static_cast<int>(t > p.window ? t - p.window : 0LL), static_cast<int>(t + 1)};
}

// Local tokens [first, end) that see at least one key of [k_first, k_last] in a sequence of n
// tokens: from the first token whose interval reaches k_first to the first whose interval starts
// after k_last. Empty (first >= end) only for inconsistent metadata.
struct TokenRange {
  long long first, end;
};

__device__ __forceinline__ TokenRange tokens_seeing(const FlashParams& p, long long k_first, long long k_last,
                                                    long long n) {
  if (p.mask == FlashMask::kCompressed)
    return {k_first * p.cmp_stride + p.cmp_len - 1, n};  // i*s + l - 1 <= t, and lo = 0
  return {k_first, min(n, k_last + p.window + 1)};        // t - w <= k_last
}

}  // namespace fsa::cuda::flash
