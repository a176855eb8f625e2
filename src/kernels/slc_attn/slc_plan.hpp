// The device-side plan of selected attention (FSA loop order), built from topk_idx and cu_seqlens
// with no host synchronisation, and the workspace layout that holds it. Sizes depend on shapes
// only, so the plan and the kernels that use it can be captured in a CUDA graph.
//
// Numbering. Key block j of sequence b has the global block id gb = block_offsets[b] + j, with
// block_offsets the exclusive prefix sum of nblk(n_b) = ceil(n_b / B). A (kv head g, global block)
// pair is the "list" s = g * max_blocks + gb.
//
// A "pair" is one valid, de-duplicated entry k of the row topk_idx[g, t, :] (spec section 5:
// negative, future (> t / B) and out-of-range (>= nblk) entries are ignored, duplicates count once;
// the first occurrence is kept). Each pair owns the output slot (t, h, k) of the partial buffers for
// the G heads h of group g. The pairs of list s are stored contiguously (a CSR over lists):
// entries pair_offsets[s] .. pair_offsets[s+1] of pair_token / pair_slot. Their order inside a list
// is not deterministic (atomic ranks); the kernels never let it change a result: every row of a
// list is computed independently of the others.
//
// A "row" of list s is (entry e, head offset i) with row index r = e * G + i, i.e. query head
// h = g * G + i of token pair_token[pair_offsets[s] + e]. Work units cut each list's rows into
// pieces of at most kRowsPerUnit rows; unit_offsets is the exclusive prefix sum of the units of
// the lists, so unit u belongs to the list s with unit_offsets[s] <= u < unit_offsets[s+1].
#pragma once

#include <cstddef>
#include <cstdint>

namespace fsa::cuda {

struct SlcPlanShape {
  std::int64_t tokens = 0;  // N
  int num_seqs = 0;
  int heads_kv = 0;
  int group = 1;       // G
  int width = 0;       // Kw, the topk_idx row width (<= kMaxWidth)
  int block_size = 64; // B

  static constexpr int kMaxWidth = 64;        // slot masks are one uint64 per (g, t)
  static constexpr int kRowsPerUnit = 256;    // rows per work unit: amortises the K/V load and the dK/dV atomics

  // constexpr so device code can call them too (built with --expt-relaxed-constexpr).
  // Upper bound of the global blocks (== query tiles) of any packed batch of these shapes.
  constexpr std::int64_t max_blocks() const { return (tokens + block_size - 1) / block_size + num_seqs; }
  constexpr std::int64_t num_lists() const { return static_cast<std::int64_t>(heads_kv) * max_blocks(); }
  constexpr std::int64_t max_pairs() const { return static_cast<std::int64_t>(heads_kv) * tokens * width; }
  // sum_s ceil(rows_s / R) <= sum_s rows_s / R + num_lists, with sum_s rows_s <= max_pairs * G.
  constexpr std::int64_t max_units() const {
    return (max_pairs() * group + kRowsPerUnit - 1) / kRowsPerUnit + num_lists();
  }
};

// Device pointers into the workspace. All int32 unless said otherwise.
struct SlcPlan {
  SlcPlanShape shape;
  std::int32_t* block_offsets;  // [num_seqs + 1]
  std::int32_t* pair_count;     // [num_lists]          pairs of each list
  std::int32_t* pair_offsets;   // [num_lists + 1]      exclusive scan of pair_count (last = total)
  std::int32_t* unit_offsets;   // [num_lists + 1]      exclusive scan of ceil(pair_count * G / R)
  std::int32_t* pair_rank;      // [heads_kv, N, width] rank of the entry in its list, -1 if ignored
  std::int32_t* pair_token;     // [max_pairs]          global token of each CSR entry
  std::uint8_t* pair_slot;      // [max_pairs]          slot k (< width) of each CSR entry
  std::uint64_t* slot_mask;     // [heads_kv, N]        bit k: entry k of the row is a pair
  void* scan_temp;              // CUB scan scratch
  std::size_t scan_temp_bytes;
};

// Bytes of workspace the plan needs (aligned sub-buffers), from shapes alone.
std::size_t slc_plan_workspace_bytes(const SlcPlanShape& shape);
// Carves the plan's buffers out of `workspace` (at least slc_plan_workspace_bytes bytes, 256-byte
// aligned).
SlcPlan slc_plan_layout(const SlcPlanShape& shape, void* workspace);

}  // namespace fsa::cuda
