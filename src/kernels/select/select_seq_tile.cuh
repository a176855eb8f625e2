// Which tile of which packed sequence a selection CTA covers (blockIdx.x), from cu_seqlens alone.
#pragma once

#include <cstdint>

namespace fsa::cuda::sel {

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

}  // namespace fsa::cuda::sel
