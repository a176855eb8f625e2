// The mapping of a CTA index to its tile of a packed sequence without host synchronisation, for
// the masked flash-attention kernels (query tiles in the forward, key tiles in the backward).
#pragma once

#include <cstdint>

namespace fsa::cuda::flash {

// A sequence b with `units` items (query rows n_b * G, or key rows) cut in tiles of `tile`: its
// tiles take the global indices [floor(start_b / tile) + b, ... + ceil(units_b / tile)), where
// start_b is the prefix sum of units. These ranges are disjoint (the next sequence starts at least
// floor(units_b / tile) + 1 later) and lie below floor(total / tile) + nseq, so a grid of that size
// covers every tile from shapes alone; indices in the gaps have no tile.
struct SeqTile {
  int seq;
  long long first;  // first item of the tile, local to the sequence
  bool valid;
};

// offsets[b * stride] * factor = start_b (factor G turns token offsets into query-row offsets).
__device__ __forceinline__ SeqTile find_seq_tile(const std::int32_t* offsets, std::int64_t stride, int num_seqs,
                                                 long long factor, int tile, long long index) {
  auto first_index = [&](int b) { return static_cast<long long>(offsets[b * stride]) * factor / tile + b; };
  int lo = 0, hi = num_seqs - 1;  // last b with first_index(b) <= index (strictly increasing)
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (first_index(mid) <= index) lo = mid; else hi = mid - 1;
  }
  const long long first = (index - first_index(lo)) * tile;
  const long long units = static_cast<long long>(offsets[(lo + 1) * stride] - offsets[lo * stride]) * factor;
  return {lo, first, first < units};
}

}  // namespace fsa::cuda::flash
