// The work of a backward CTA of the masked flash attention (both backward kernels): the key tile of
// kKeys keys of one sequence that CTA blockIdx.x covers (kv head blockIdx.y), and the block
// blockIdx.z of the query rows (tokens x G heads) that see it, as flash_split.hpp's plan cuts them.
#pragma once

#include "kernels/flash/flash_mask.cuh"
#include "kernels/flash/flash_params.hpp"
#include "kernels/flash/flash_tiles.cuh"

namespace fsa::cuda::flash {

struct BwdBlock {
  bool valid;                    // false: no tile, or no row of the tile in this block
  long long seq_start;           // global token of the sequence's first token
  long long key_start;           // global row of the sequence's first key
  int key0, keys;                // the tile: local keys [key0, key0 + keys)
  long long row_first, row_end;  // the block's rows, local to the sequence: [row_first, row_end)
};

template <int kKeys>
__device__ __forceinline__ BwdBlock backward_block(const FlashParams& p) {
  BwdBlock b{};
  const int G = p.group;
  const SeqTile tile = find_seq_tile(p.key_base, p.key_base_stride, p.num_seqs, 1, kKeys, blockIdx.x);
  if (!tile.valid) return b;
  b.seq_start = p.cu_seqlens[tile.seq * p.cu_stride];
  const long long seq_len = p.cu_seqlens[(tile.seq + 1) * p.cu_stride] - b.seq_start;
  b.key_start = p.key_base[tile.seq * p.key_base_stride];
  const long long key_count = p.key_base[(tile.seq + 1) * p.key_base_stride] - b.key_start;
  b.key0 = static_cast<int>(tile.first);
  b.keys = static_cast<int>(min(static_cast<long long>(kKeys), key_count - b.key0));
  // The rows of the tokens that see a key of the tile, within block z (absolute, or counted from
  // the tile's first row: flash_split.hpp).
  const TokenRange tokens = tokens_seeing(p, b.key0, b.key0 + b.keys - 1, seq_len);
  const long long rows_begin = tokens.first * G, rows_end = tokens.end * G;
  const long long block = p.split_relative ? rows_begin / p.split_rows + blockIdx.z : blockIdx.z;
  b.row_first = max(rows_begin, block * p.split_rows);
  b.row_end = min(rows_end, (block + 1) * p.split_rows);
  b.valid = b.row_first < b.row_end;
  return b;
}

}  // namespace fsa::cuda::flash
