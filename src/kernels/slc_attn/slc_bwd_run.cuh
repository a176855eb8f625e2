// The run of a CTA of the selected-attention backward's main kernels (the mma.sync kernel of
// slc_bwd_kernel.cuh and the Hopper one of slc_bwd_sm90_kernel.cuh): which list, tile and rows it
// walks, the run's list entries in shared memory, and each gathered row's source and table entry.
// The two kernels differ in their chunk cores and shared-memory layouts, not in this.
#pragma once

#include <cstdint>

#include "kernels/common/tile_copy.cuh"
#include "kernels/slc_attn/slc_bwd_launch.hpp"
#include "kernels/slc_attn/slc_common.cuh"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda::slc {

constexpr float kBwdLog2e = 1.4426950408889634f;  // P = exp2(S * scale * log2(e) - lse * log2(e))

// What a CTA knows about its run (rows of one list, one tile of the list's block).
struct RunRows {
  long long seq_start;  // global token of the sequence's first token
  int row_begin, row_end;  // rows of the list
  int entry_begin;      // the run's first list entry, row_begin / G
  int kv_head;
  int block_end;        // local position one past the block's last key
  int chunks;
  int keys;             // keys of the CTA's tile
};

// The list entries one run can span: units_per_cta * kRowsPerUnit rows, one entry each at G = 1,
// plus one when G does not divide the run's first row.
template <bool kDeterministic>
constexpr int kSlcBwdRunEntries =
    (kDeterministic ? kSlcBwdDeterministicUnitsPerCta : kSlcBwdUnitsPerCta) * SlcPlanShape::kRowsPerUnit + 1;

// The run's list entries (token and slot of each), read from the plan once at the start so that a
// chunk's copies depend on no global load.
template <int kEntries>
struct RunTable {
  int token[kEntries];
  std::uint8_t slot[kEntries];
};

// Finds the run of this CTA (blockIdx.x: the run's group index, blockIdx.y: its tile of kKeys keys
// of the block) and fills `table` with the run's entries (all threads take part; the caller syncs
// before reading it). Returns false, uniformly over the CTA, when the group index has no run.
// key0: local position of the tile's first key. A tile past the block's end (B = 128, the
// sequence's last block cut short) has no keys; it still runs (all keys masked) so that its dq
// plane holds zeros.
template <int kKeys, int kEntries>
__device__ __forceinline__ bool begin_run(const SlcBackwardParams& p, int chunk_rows, RunRows& run, int& key0,
                                          RunTable<kEntries>& table) {
  const int unit = p.run_unit[blockIdx.x];
  UnitWork w;
  if (unit < 0 || !find_unit<false>(p.plan, p.in, unit, &w)) return false;
  const int G = p.plan.shape.group, B = p.plan.shape.block_size;
  const int key_first = static_cast<int>(blockIdx.y) * kKeys;  // first key of the tile in its block
  run.seq_start = w.seq_start;
  run.row_begin = w.row_begin;
  run.row_end = min(w.row_begin + p.units_per_cta * SlcPlanShape::kRowsPerUnit, p.plan.pair_count[w.list] * G);
  run.entry_begin = w.row_begin / G;
  run.kv_head = w.kv_head;
  run.block_end = w.block * B + w.keys;
  run.chunks = (run.row_end - run.row_begin + chunk_rows - 1) / chunk_rows;
  run.keys = max(0, min(kKeys, w.keys - key_first));
  key0 = w.block * B + key_first;
  const int entries = (run.row_end - 1) / G - run.entry_begin + 1;  // <= kEntries (host-checked U)
  for (int e = threadIdx.x; e < entries; e += blockDim.x) {
    table.token[e] = p.plan.pair_token[w.pair_base + run.entry_begin + e];
    table.slot[e] = p.plan.pair_slot[w.pair_base + run.entry_begin + e];
  }
  return true;
}

// Row x of the list (entry x / G, head kv_head * G + x % G); rows at or past row_end are not valid.
struct RunRow {
  bool valid;
  int entry;  // index into the run's table
  long long token;
  int head;
};
template <int kEntries>
__device__ __forceinline__ RunRow run_row(const RunRows& rows, const RunTable<kEntries>& table, int G, int x) {
  RunRow r;
  r.valid = x < rows.row_end;
  r.entry = r.valid ? x / G - rows.entry_begin : 0;
  r.token = table.token[r.entry];
  r.head = rows.kv_head * G + x % G;
  return r;
}

// Issues the cp.async copies of a row's lse and delta (the row's first thread, with its Q / dO).
__device__ __forceinline__ void copy_row_stats(const SlcBackwardParams& p, const RunRow& row, float* lse_dst,
                                               float* delta_dst) {
  common::cp_async_4(lse_dst, p.lse + row.head * p.lse_head_stride + row.token * p.lse_token_stride);
  common::cp_async_4(delta_dst, p.delta + row.head * p.plan.shape.tokens + row.token);
}

// A row's entry in the chunk's row table (flash::BwdRowTable, with lo = 0), from its copied lse and
// delta: it sees the block's keys up to its own token (hi, local positions), none when its lse is
// not finite (hi = 0), and its dQ goes to its slot of the tile's plane of dq_part (every pair's
// slot is written, zeros for an empty key set: the reduction reads them all) or to its
// accumulator row (-1: nothing to add).
struct RowEntry {
  int hi;
  float lse;  // times log2(e)
  float delta;
  long long dq;
};
template <int kDqk, bool kDqSlots, int kEntries>
__device__ __forceinline__ RowEntry row_entry(const SlcBackwardParams& p, const RunRows& rows,
                                              const RunTable<kEntries>& table, const RunRow& row, float raw_lse,
                                              float raw_delta) {
  RowEntry e{0, 0.0f, 0.0f, -1};
  if (!row.valid) return e;
  if (isfinite(raw_lse)) {
    e.hi = min(static_cast<int>(row.token - rows.seq_start) + 1, rows.block_end);
    e.lse = raw_lse * kBwdLog2e;
    e.delta = raw_delta;
  }
  const long long hq = p.in.heads_q;
  if constexpr (kDqSlots)
    e.dq = static_cast<long long>(blockIdx.y) * p.plan.shape.tokens * hq * p.plan.shape.width * kDqk +
           ((row.token * hq + row.head) * p.plan.shape.width + table.slot[row.entry]) * kDqk;
  else if (isfinite(raw_lse))
    e.dq = (row.token * hq + row.head) * kDqk;
  return e;
}

}  // namespace fsa::cuda::slc
