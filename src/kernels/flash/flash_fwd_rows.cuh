// The query rows of a forward CTA of the masked flash attention (both forward kernels): the tile of
// kRows rows (packed tokens x G heads of one sequence, kv head blockIdx.y) that CTA blockIdx.x
// covers, and per row its q offset and key interval in shared memory.
#pragma once

#include "kernels/common/query_prefix.hpp"
#include "kernels/flash/flash_mask.cuh"
#include "kernels/flash/flash_params.hpp"
#include "kernels/flash/flash_tiles.cuh"

namespace fsa::cuda::flash {

template <int kRows>
struct FwdRowTable {
  long long q_offset[kRows];  // -1: past the sequence
  int lo[kRows], hi[kRows];   // the row's keys [lo, hi)
};

struct FwdTile {
  bool valid;
  long long first_row, last_row;  // local to the sequence; last_row within it
  int seq;
  long long seq_start, key_start;  // global token of the sequence's first token, the row of its key 0
  // The rows hold tokens [t_first, t_last]: they see keys [first.lo, last.hi), and every one of
  // them sees all keys of [last.lo, first.hi) (tiles there need no mask).
  KeyInterval first, last;
};

// Threads < kRows write the table; the caller syncs before reading it.
template <int kRows>
__device__ __forceinline__ FwdTile forward_tile(const FlashParams& p, FwdRowTable<kRows>& rows) {
  FwdTile t{};
  const int g = blockIdx.y, G = p.group;
  const SeqTile tile = find_seq_tile(p.cu_seqlens, p.cu_stride, p.num_seqs, G, kRows, blockIdx.x);
  t.valid = tile.valid;
  if (!tile.valid) return t;
  t.first_row = tile.first;
  t.seq_start = p.cu_seqlens[tile.seq * p.cu_stride];
  const long long seq_len = p.cu_seqlens[(tile.seq + 1) * p.cu_stride] - t.seq_start;
  t.seq = tile.seq;
  t.key_start = p.key_base[tile.seq * p.key_base_stride];
  t.last_row = min(tile.first + kRows, seq_len * G) - 1;
  const long long prefix = common::prefix_of(p.prefix, tile.seq);  // position of the sequence's token 0
  t.first = key_interval(p, prefix + tile.first / G);
  t.last = key_interval(p, prefix + t.last_row / G);
  if (threadIdx.x < kRows) {
    const long long row = tile.first + threadIdx.x;
    long long offset = -1;
    KeyInterval keys{0, 0};
    if (row <= t.last_row) {
      offset = (t.seq_start + row / G) * p.q_token_stride + (g * G + row % G) * p.q_head_stride;
      keys = key_interval(p, prefix + row / G);
    }
    rows.q_offset[threadIdx.x] = offset;
    rows.lo[threadIdx.x] = keys.lo;
    rows.hi[threadIdx.x] = keys.hi;
  }
  return t;
}

}  // namespace fsa::cuda::flash
