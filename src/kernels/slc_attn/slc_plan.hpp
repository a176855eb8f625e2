// The device-side plan of selected attention (FSA loop order), built from topk_idx and cu_seqlens
// with no host synchronisation, and the workspace layout that holds it. Sizes depend on shapes
// only, so the plan and the kernels that use it can be captured in a CUDA graph.
//
// Numbering. Key block j of sequence b has the global block id gb = block_offsets[b] + j, with
// block_offsets the exclusive prefix sum of nblk(n_b) = ceil(n_b / B). A (kv head g, global block)
// pair is the "list" s = g * max_blocks + gb.
//
// A "pair" is one valid, de-duplicated entry k of the row topk_idx[g, t, :] (docs/semantics.md
// section 5: negative, future (> t / B) and out-of-range (>= nblk) entries are ignored, duplicates
// count once; the first occurrence is kept). Each pair owns the output slot (t, h, k) of the
// partial buffers for the G heads h of group g. The pairs of list s are stored contiguously (a CSR
// over lists): entries pair_offsets[s] .. pair_offsets[s+1] of pair_token / pair_slot. Their order
// inside a list (inside its sparse and dense parts with the split, below) is not deterministic
// (atomic ranks); the kernels never let it change a result: every row of a list is computed
// independently of the others.
//
// A "row" of list s is (entry e, head offset i) with row index r = e * G + i, i.e. query head
// h = g * G + i of token pair_token[pair_offsets[s] + e]. Work units cut each list's rows into
// pieces of at most kRowsPerUnit rows; unit_offsets is the exclusive prefix sum of the units of
// the lists, so unit u belongs to the list s with unit_offsets[s] <= u < unit_offsets[s+1], which
// unit_list[u] holds: a CTA finds its list with one load instead of a binary search over the
// lists (a dozen dependent loads before its first copy).
//
// Dense/sparse split (shape.dense_threshold > 0). Query tile gb is the B tokens of global block gb
// (the tokens of key block j of sequence b), so the (kv head, tile) pairs are numbered like the
// lists. A (kv head, tile, key block) triple is dense when at least dense_threshold of the tile's
// tokens selected the block: the forward runs dense triples in the tile kernel (flash attention
// over the tile's dense blocks with a token mask per block) and the rest in the KV-outer kernel.
// Tile s has dense_count[s] dense blocks, ascending, at dense_block[s * cap ..] with the tokens that
// selected each in dense_tokens[(s * cap + i) * kMaskWords ..] (bit u = token t0 + u of the tile).
// dense_slots[g, t] has bit k set when entry k of the row went dense. A dense pair is still a pair
// of its list: each list holds its sparse pairs first, then its dense ones.
//
// Views: one plan, built once per layer's forward, serves the forward and its backward. The
// forward's KV-outer kernel walks only the sparse pairs of each list (the tile kernel does the
// dense ones), the backward walks every pair; both read the same CSR (pair_offsets, pair_token,
// pair_slot) through different per-list tables: `sparse` (the sparse prefix of each list, its work
// units, the sparse slots that the forward's merge adds) and `kept` (all of each list, its units,
// every kept slot, whose dQ the backward sums). slc_plan_forward_view and slc_plan_backward_view
// point the fields the kernels read (pair_count, unit_offsets, unit_list, slot_mask) at one of the
// two, so the kernels are the same with or without the split. Without the split the two tables are
// the same arrays (no extra memory or work), and both views are the same plan. With it the plan
// costs one more count array, scan and unit table and one more slot mask ([heads_kv, N] uint64),
// 5% of the plan at S64-G4 (47.5 -> 50.0 MB), and counts and fills the dense pairs too: 0.56 ms
// against 0.475 for the forward-only split plan and 0.31 for the backward's own (slc_plan.cu).
//
// With shape.sorted_lists (the deterministic backward), a segmented radix sort then puts each
// list's sparse part and its dense part in ascending token order (a token occurs at most once per
// list; the sort keys of dense pairs carry a bit above every token), so that the forward view's
// lists stay the sparse prefix, and the rows' grouping into chunks and work units, and with it
// every floating-point sum over a list's rows, is the same on every run (the sparse/dense choice
// is deterministic). A split plan's lists hold the same pairs as the plan without the split, in
// another order, so the deterministic backward's sums over them are reproducible for each, not
// bitwise the same between the two. pair_rank then refers to the fill order (fill_token,
// fill_slot).
#pragma once

#include <cstddef>
#include <cstdint>

namespace fsa::cuda {

struct SlcPlanShape {
  std::int64_t tokens = 0;  // N: the query rows (topk_idx rows) the plan covers
  // Key rows the queries can reach, for the bound on global blocks; 0 means `tokens`. A query chunk
  // (queries [t0, t1) of a longer batch, cu_seqlens shifted by -t0) reaches the keys before t0.
  std::int64_t key_tokens = 0;
  int num_seqs = 0;
  int heads_kv = 0;
  int group = 1;       // G
  int width = 0;       // Kw, the topk_idx row width (<= kMaxWidth)
  int block_size = 64; // B

  // Minimum tokens of one query tile that must select a block for the (tile, block) pair to run in
  // the tile kernel; 0 disables the split (every pair goes KV-outer).
  int dense_threshold = 0;
  // A tile with fewer dense blocks than this sends them all KV-outer: the tile kernel's fixed cost
  // per tile (query rows, pipeline start) outweighs the partials a few blocks save (measured at
  // S64-G4 with random selections, whose tiles share only their 3 forced blocks: the split was
  // 7.3 ms against 6.9 ms for KV-outer alone).
  int min_dense_blocks = 1;
  // Each list's entries in ascending token order (see the numbering above); costs a sort.
  bool sorted_lists = false;

  static constexpr int kMaxWidth = 64;        // slot masks are one uint64 per (g, t)
  static constexpr int kRowsPerUnit = 256;    // rows per work unit: amortises the K/V load and the dK/dV atomics
  static constexpr int kMaskWords = 4;        // token masks of a dense block: B <= 128 bits
  static constexpr int kMaxBlockSize = 32 * kMaskWords;
  // The tile planner sorts (block, token, slot) keys of 32 bits: 6 bits of slot, 7 of token.
  static constexpr int kSortKeyBlockShift = 13;
  static constexpr std::int64_t kMaxSplitBlocks = std::int64_t{1} << (32 - kSortKeyBlockShift);

  // constexpr so device code can call them too (built with --expt-relaxed-constexpr).
  // Upper bound of the global blocks (== query tiles) of any packed batch of these shapes.
  constexpr std::int64_t max_blocks() const {
    const std::int64_t keys = key_tokens > 0 ? key_tokens : tokens;
    return (keys + block_size - 1) / block_size + num_seqs;
  }
  constexpr std::int64_t num_lists() const { return static_cast<std::int64_t>(heads_kv) * max_blocks(); }
  constexpr std::int64_t max_pairs() const { return static_cast<std::int64_t>(heads_kv) * tokens * width; }
  // sum_s ceil(rows_s / R) <= sum_s rows_s / R + num_lists, with sum_s rows_s <= max_pairs * G.
  constexpr std::int64_t max_units() const {
    return (max_pairs() * group + kRowsPerUnit - 1) / kRowsPerUnit + num_lists();
  }
  // Dense blocks one tile can hold: every one has >= dense_threshold of the tile's B * width
  // entries.
  constexpr std::int64_t dense_capacity() const {
    return dense_threshold > 0 ? (static_cast<std::int64_t>(block_size) * width + dense_threshold - 1) / dense_threshold
                               : 0;
  }
};

// The per-list tables of one set of pairs: the sparse pairs (the forward's KV-outer kernel) or
// every kept pair (the backward). Without the split both sets are the same arrays.
struct SlcPairTables {
  std::int32_t* count;         // [num_lists]     the set's pairs of each list: entries pair_offsets[s] ..
  std::int32_t* unit_offsets;  // [num_lists + 1] exclusive scan of ceil(count * G / R)
  std::int32_t* unit_list;     // [max_units]     list s of each unit (entries past the total unused)
  std::uint64_t* slot_mask;    // [heads_kv, N]   bit k: entry k of the row is a pair of the set
};

// Device pointers into the workspace. All int32 unless said otherwise.
struct SlcPlan {
  SlcPlanShape shape;
  std::int32_t* block_offsets;  // [num_seqs + 1]
  // What the kernels read of a pass's pairs: one of the tables below, set by slc_plan_forward_view
  // or slc_plan_backward_view (null in the plan slc_plan_layout returns: pass a view to a kernel).
  std::int32_t* pair_count;
  std::int32_t* unit_offsets;
  std::int32_t* unit_list;
  std::uint64_t* slot_mask;
  SlcPairTables sparse;         // each list's sparse pairs (its first sparse.count entries)
  SlcPairTables kept;           // all of each list's pairs; == sparse without the split
  std::int32_t* pair_offsets;   // [num_lists + 1]      exclusive scan of kept.count (last = total)
  std::int32_t* pair_rank;      // [heads_kv, N, width] rank of the entry in its list's sparse or dense part
                                //                      (dense_slots says which), -1 if ignored
  std::int32_t* pair_token;     // [max_pairs]          global token of each CSR entry
  std::uint8_t* pair_slot;      // [max_pairs]          slot k (< width) of each CSR entry
  std::int32_t* fill_token;     // [max_pairs]          where the fill writes: pair_token, or the sort's keys
                                //                      (with the split a dense pair's token | 2^token_bits)
  std::uint8_t* fill_slot;      // [max_pairs]          likewise for pair_slot
  std::int32_t* dense_count;    // [num_lists]          dense blocks of each (kv head, tile); split only
  std::int32_t* dense_block;    // [num_lists, dense_capacity] local block index j, ascending
  std::uint32_t* dense_tokens;  // [num_lists, dense_capacity, kMaskWords] tokens of the tile that chose it
  std::uint64_t* dense_slots;   // [heads_kv, N]        bit k: entry k of the row went dense
  void* scan_temp;              // CUB scan scratch
  std::size_t scan_temp_bytes;
  void* sort_temp;              // CUB segmented sort scratch (sorted_lists)
  std::size_t sort_temp_bytes;
};

// Bytes of workspace the plan needs (aligned sub-buffers), from shapes alone.
std::size_t slc_plan_workspace_bytes(const SlcPlanShape& shape);
// Carves the plan's buffers out of `workspace` (at least slc_plan_workspace_bytes bytes, 256-byte
// aligned).
SlcPlan slc_plan_layout(const SlcPlanShape& shape, void* workspace);

// The plan as a pass's kernels read it: the forward's KV-outer and merge kernels see each list's
// sparse pairs and the sparse slots, the backward's kernels every kept pair and slot. Either takes
// the laid-out plan or any view of it.
inline SlcPlan slc_plan_view(const SlcPlan& plan, const SlcPairTables& tables) {
  SlcPlan view = plan;
  view.pair_count = tables.count;
  view.unit_offsets = tables.unit_offsets;
  view.unit_list = tables.unit_list;
  view.slot_mask = tables.slot_mask;
  return view;
}
inline SlcPlan slc_plan_forward_view(const SlcPlan& plan) { return slc_plan_view(plan, plan.sparse); }
inline SlcPlan slc_plan_backward_view(const SlcPlan& plan) { return slc_plan_view(plan, plan.kept); }

}  // namespace fsa::cuda
