// The selected branch's key set of one attention tile, in shared memory: the union of the blocks
// that the tile's tokens selected, ascending, and for each block the tokens that selected it (bit
// t - t_first of a 64-bit mask; an attention tile touches at most 64 tokens). The keys of the
// union are then walked as one list (block u covers list positions [u*B, (u+1)*B)), each row
// masked to its own token's blocks.
//
// Entries are taken as selected attention takes any producer's: negative, past the token's own
// block or past the sequence's blocks are ignored, duplicates count once.
#pragma once

#include <cstdint>

#include "kernels/decode/decode_params.hpp"

namespace fsa::cuda::decode {

struct UnionView {
  std::uint32_t* bitmap;             // [words]
  std::int32_t* blocks;              // [capacity] ascending
  unsigned long long* token_masks;   // [capacity]
};

// Index of `block` in the ascending list (count entries), or -1.
__device__ __forceinline__ int union_index(const std::int32_t* blocks, int count, int block) {
  int lo = 0, hi = count;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (blocks[mid] < block) lo = mid + 1; else hi = mid;
  }
  return lo < count && blocks[lo] == block ? lo : -1;
}

// Builds the union of the topk rows of tokens [t_first, t_last] (local to the sequence; packed row
// row0 + t, position cached + t) of kv head g, over blocks [0, num_blocks). All threads of the CTA
// call it; returns the number of distinct blocks (the caller reads the lists after it returns).
// `count_s` is a shared int.
template <int kThreads>
__device__ __forceinline__ int build_union(const AttnParams& p, const UnionView& u, int g, long long row0,
                                           long long cached, long long t_first, long long t_last, int num_blocks,
                                           int* count_s) {
  const int K = p.nsa.topk, B = p.nsa.block_size;
  const int words = min((num_blocks + 31) / 32, p.union_words);
  const int blocks = min(num_blocks, words * 32);
  for (int w = threadIdx.x; w < words; w += kThreads) u.bitmap[w] = 0u;
  __syncthreads();
  const int entries = static_cast<int>(t_last - t_first + 1) * K;
  // The entry of (token t_first + e / K, column e % K) if it is a valid block for that token, else -1.
  auto entry = [&](int e) -> int {
    const long long t = t_first + e / K;
    const std::int32_t j = p.topk[g * p.topk_head_stride + (row0 + t) * p.topk_token_stride + (e % K) * p.topk_col_stride];
    const long long own_block = (cached + t) / B;
    return j >= 0 && j <= own_block && j < blocks ? j : -1;
  };
  for (int e = threadIdx.x; e < entries; e += kThreads) {
    const int j = entry(e);
    if (j >= 0) atomicOr(&u.bitmap[j / 32], 1u << (j % 32));
  }
  __syncthreads();
  // Compaction by warp 0: each lane a word, a shuffle scan of their bit counts per 32 words.
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int base = 0;
    for (int w0 = 0; w0 < words; w0 += 32) {
      std::uint32_t bits = w0 + lane < words ? u.bitmap[w0 + lane] : 0u;
      const int count = __popc(bits);
      int inclusive = count;
#pragma unroll
      for (int d = 1; d < 32; d *= 2) {
        const int other = __shfl_up_sync(0xffffffffu, inclusive, d);
        if (lane >= d) inclusive += other;
      }
      int at = base + inclusive - count;
      while (bits != 0u) {
        const int bit = __ffs(bits) - 1;
        if (at < p.union_capacity) u.blocks[at] = (w0 + lane) * 32 + bit;
        ++at;
        bits &= bits - 1u;
      }
      base += __shfl_sync(0xffffffffu, inclusive, 31);
    }
    if (lane == 0) *count_s = min(base, p.union_capacity);
  }
  __syncthreads();
  const int count = *count_s;
  for (int i = threadIdx.x; i < count; i += kThreads) u.token_masks[i] = 0ull;
  __syncthreads();
  for (int e = threadIdx.x; e < entries; e += kThreads) {
    const int j = entry(e);
    const int i = j >= 0 ? union_index(u.blocks, count, j) : -1;
    if (i >= 0) atomicOr(&u.token_masks[i], 1ull << (e / K));
  }
  __syncthreads();
  return count;
}

}  // namespace fsa::cuda::decode
