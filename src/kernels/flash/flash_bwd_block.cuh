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
  const long long block_first = (p.split_relative ? rows_begin : 0) + blockIdx.z * p.split_rows;
  b.row_first = max(rows_begin, block_first);
  b.row_end = min(rows_end, block_first + p.split_rows);
  b.valid = b.row_first < b.row_end;
  return b;
}

// The CTA walks its chunks from chunk (step + rotation) mod chunks. With a sliding window, the
// tiles launched together (consecutive key tiles) share most of their rows, each starting
// kKeys * G rows after the previous one. Walked from its first row, a tile reaches a shared row
// (kKeys * G) / chunk steps after the next tile did (~50 us at S64-G4), and the row's Q / dO and
// its dq accumulator lines had left L2 in between (Nsight Compute: 32% L2 hits, 2.2 TB/s of
// DRAM). Walked in the order of their index in the sequence modulo the period (the chunks of a
// full tile's rows), the chunks of every full tile come in the same order, so the CTAs running
// together take a shared row at the same step and share its reads and atomics in L2.
__device__ __forceinline__ int chunk_rotation(const FlashParams& p, const BwdBlock& b, int row_chunk, int chunks) {
  if (p.split_period <= 0) return 0;
  const int phase = static_cast<int>(b.row_first / row_chunk % p.split_period);
  return phase + chunks > p.split_period ? p.split_period - phase : 0;
}

}  // namespace fsa::cuda::flash
