// The work split of the masked flash-attention backward, from shapes alone (no host
// synchronisation, so the backward stays capturable in a CUDA graph).
//
// A key tile of the backward sees the query rows (tokens x G) of the tokens that see one of its
// keys: to the end of the sequence for compressed attention (causal: the first tiles see almost
// every row), at most (tile + w) tokens for a sliding window. One CTA per tile would walk up to
// N * G rows serially (262144 rows at S64-G4, 256 CTAs in all). So the rows are cut in blocks of
// `rows` consecutive rows of the sequence, one CTA per (key tile, kv head, block) that meets them,
// each adding its dK/dV partial to fp32 accumulators:
// - rows: N * G / kTargetSplits rounded up to the row chunk, at least kMinSplitRows. At S64-G4
//   with 128-key tiles: 4096 rows, 32 tiles x 64 blocks x 4 heads = 8192 CTAs of which ~4200 have
//   rows (the causal triangle), each ~128 chunks of 32 rows: thousands of equal CTAs.
// - absolute blocks (compressed attention, and windows of at least N): block z is rows
//   [z * rows, (z + 1) * rows) of the sequence, so the CTAs launched together (consecutive key
//   tiles of one block) read the same q / d_o rows and add into the same dq rows while those are in
//   L2. CTAs of blocks before a tile's first row exit at once.
// - relative blocks (windows shorter than N): a tile's rows span at most (tile + w) * G rows,
//   so block z starts z * rows after the tile's first row and the grid has ceil(span / rows)
//   blocks per tile, not N * G / rows (one at S64, w = 512). Neighbouring tiles share most of
//   their rows, each starting tile * G rows after the previous one: the CTAs walk their chunks in
//   a rotated order (period = the chunks of a full tile's rows) so that those launched together
//   take a shared row at the same step (flash_bwd_block.cuh, chunk_rotation).
// Workspace: dq, dk and dv accumulators in fp32 (N * Hq * Dqk + key_rows * Hkv * (Dqk + Dv)
// floats) and delta (N * Hq floats), whatever the split.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/flash/flash_params.hpp"

namespace fsa::cuda::flash {

// Blocks per sequence of N tokens: enough CTAs at every shape of the benchmarks (S64 at G = 1..16:
// 1024..16384 rows per block) and a bounded grid z (<= 65).
constexpr long long kTargetSplits = 64;
// Below this a CTA's fixed cost (its K/V tile, the dK/dV atomics of 128 keys) outweighs its rows.
constexpr long long kMinSplitRows = 512;

struct BackwardSplit {
  long long rows;   // rows per block, a multiple of the row chunk
  bool relative;    // blocks counted from the tile's first row
  long long blocks; // grid z
  int period;       // chunks of the rotated walk (relative blocks), else 0
};

inline BackwardSplit plan_backward_split(const FlashParams& p, int keys_per_tile, int row_chunk) {
  const auto ceil_div = [](long long a, long long b) { return (a + b - 1) / b; };
  const long long rows_total = p.tokens * p.group;
  const long long span_tokens = p.mask == FlashMask::kWindow
                                    ? std::min<long long>(p.tokens, static_cast<long long>(keys_per_tile) + p.window)
                                    : p.tokens;
  long long rows = ceil_div(std::max(1LL, rows_total), kTargetSplits);
  rows = std::max(kMinSplitRows, ceil_div(rows, row_chunk) * row_chunk);
  const bool relative = span_tokens < p.tokens;
  const long long blocks = relative ? ceil_div(span_tokens * p.group, rows) : ceil_div(rows_total, rows);
  const long long period = relative ? ceil_div(std::min(rows, span_tokens * p.group), row_chunk) : 0;
  return {rows, relative, std::max(1LL, blocks), static_cast<int>(period)};
}

}  // namespace fsa::cuda::flash
