// The selected-attention plan on the GPU: workspace layout and the builder. Six steps on one
// stream, no host synchronisation:
//   1. block_offsets: one CTA scans nblk(n_b) over the sequences (nseq is small).
//   2. the list counters = 0 (one memset: with the split, sparse.count follows kept.count).
//   2b. with the dense/sparse split, tile plan: one CTA per (kv head, query tile) sorts the tile's
//      valid (block, token, slot) entries, so each block's tokens form a run; runs of at least
//      dense_threshold tokens become the tile's dense blocks (in ascending order, by a block scan,
//      so the plan is deterministic; none when there are fewer than min_dense_blocks) and their
//      entries are marked in dense_slots.
//   3. count: one thread per (kv head, token) walks its topk row, keeps the valid first occurrences
//      and takes a rank in each pair's list with an atomic (aggregated over the warp, since whole
//      query tiles select the same forced blocks and would otherwise queue on one counter). With
//      the split a list's sparse and dense pairs rank separately (sparse.count, and kept.count
//      until step 4 adds the two), so each part's ranks start at 0.
//   4. sizes, then pair_offsets and the unit offsets of each table: device-wide exclusive scans
//      (CUB; three with the split, two without); then unit_list, the list of each work unit, in
//      each table (one warp per list).
//   5. fill: one thread per topk entry writes its pair into the CSR at the list's offset + rank,
//      past the list's sparse pairs for a dense one.
//   6. with sorted_lists: a segmented radix sort (CUB, one CTA per list, no host synchronisation)
//      puts each list's entries in ascending token order. With the split the fill marks a dense
//      pair's key with a bit above every token, so that the sort puts the list's dense part after
//      its sparse part, each ascending, and a last kernel clears the bit. (The sort's CTAs cost
//      even for short segments: sorting each part as its own segment, twice the segments, took
//      1.44 ms against 1.22 for the whole split plan at S64-G4, random selections, on H100; 0.02
//      of it was the count kernel's since-fixed registers.)
//
// Cost of the two views. Without the split none: the same buffers and kernels as before them.
// With it the plan counts, fills (and sorts) the dense pairs too, which the forward-only split plan
// before the views left out, and holds a second count, unit table and slot mask (kept.slot_mask,
// 8 bytes per (kv head, token); sparse.count, sparse.unit_offsets and sparse.unit_list, 4 bytes per
// list and per unit). Measured on H100 at S64-G4 (N = 64K, Hkv = 4, G = 4, width 16, B = 64,
// threshold 16; median of 30 builds, ms), before the views -> with them:
//   no split, random / local selections:            0.31 / 0.17 -> 0.31 / 0.17, 40.2 MB both
//   split, random (the 3 forced blocks dense, 19%):  0.475 -> 0.56;  local (all dense): 0.354 -> 0.42
//   split, workspace:                                47.5 -> 50.0 MB (89.5 -> 91.9 MB sorted)
//   split and sorted_lists, random / local:          0.90 / 0.39 -> 1.22 / 1.06
// Built once per layer, the plan replaces the forward's split plan and the backward's own plan
// without the split: random 0.475 + 0.31 -> 0.56 ms, local 0.354 + 0.17 -> 0.42; with the
// deterministic backward's sort, random 0.475 + 0.85 -> 1.22, local 0.354 + 0.70 -> 1.06.
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <string>

#include "common/workspace_carver.hpp"
#include "cuda/runtime.hpp"
#include "kernels/slc_attn/slc_common.cuh"
#include "kernels/slc_attn/slc_plan.hpp"
#include "kernels/slc_attn/slc_plan_build.hpp"

namespace fsa::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr unsigned kFullWarp = 0xffffffffu;
// The element-wise kernels loop over their items with a grid stride, so any cap is correct; this
// one is far above what fills an H100 and only bounds gridDim for huge shapes.
constexpr std::int64_t kMaxGrid = std::int64_t{1} << 20;

static_assert(kThreads % kWarpSize == 0, "the count kernel works in whole warps");
static_assert(SlcPlanShape::kMaxWidth <= 64, "slot masks are one uint64 per row");
static_assert(SlcPlanShape::kMaxWidth <= 256, "slots are stored as uint8");


// Items of the two scans: the lists plus one trailing item that reads as 0, so that the exclusive
// scan leaves the total in the last entry.
std::int64_t scan_items(const SlcPlanShape& shape) { return shape.num_lists() + 1; }

// CUB's scratch for an in-place exclusive sum of int32 over `items` items. CUB sizes it by the
// iterator and count types too, so every call goes through here or run_scan, with the same types.
cudaError_t scan_temp_bytes(std::int64_t items, std::size_t& bytes) {
  bytes = 0;
  std::int32_t* const no_data = nullptr;
  return cub::DeviceScan::ExclusiveSum(nullptr, bytes, no_data, no_data, items);
}

cudaError_t run_scan(const SlcPlan& plan, std::int32_t* data, std::int64_t items, cudaStream_t stream) {
  std::size_t bytes = plan.scan_temp_bytes;
  return cub::DeviceScan::ExclusiveSum(plan.scan_temp, bytes, data, data, items, stream);
}

// The sort of sorted_lists: keys are tokens (< 2^token_bits), with the split plus the dense bit
// 2^token_bits, sorted as uint32 (the bit may be bit 31); values are slots. CUB sizes its scratch
// by the types too, so every call goes through these two with the same types.
int token_bits(const SlcPlanShape& shape) {
  int bits = 1;
  while (bits < 31 && (std::int64_t{1} << bits) < shape.tokens) ++bits;
  return bits;
}

int sort_key_bits(const SlcPlanShape& shape) { return token_bits(shape) + (shape.dense_threshold > 0 ? 1 : 0); }

// The key bit of a dense pair in the sort (0 when there is no sort of split lists).
std::uint32_t dense_key_bit(const SlcPlanShape& shape) {
  return shape.sorted_lists && shape.dense_threshold > 0 ? std::uint32_t{1} << token_bits(shape) : 0u;
}

cudaError_t sort_temp_bytes(const SlcPlanShape& shape, std::size_t& bytes) {
  bytes = 0;
  const std::uint32_t* const no_keys = nullptr;
  const std::uint8_t* const no_values = nullptr;
  const std::int32_t* const no_offsets = nullptr;
  return cub::DeviceSegmentedRadixSort::SortPairs(
      nullptr, bytes, no_keys, static_cast<std::uint32_t*>(nullptr), no_values, static_cast<std::uint8_t*>(nullptr),
      static_cast<int>(shape.max_pairs()), static_cast<int>(shape.num_lists()), no_offsets, no_offsets, 0,
      sort_key_bits(shape));
}

cudaError_t run_sort(const SlcPlan& plan, cudaStream_t stream) {
  std::size_t bytes = plan.sort_temp_bytes;
  const SlcPlanShape& shape = plan.shape;
  // Tokens are below 2^31: the same values as uint32.
  return cub::DeviceSegmentedRadixSort::SortPairs(
      plan.sort_temp, bytes, reinterpret_cast<const std::uint32_t*>(plan.fill_token),
      reinterpret_cast<std::uint32_t*>(plan.pair_token), static_cast<const std::uint8_t*>(plan.fill_slot),
      plan.pair_slot, static_cast<int>(shape.max_pairs()), static_cast<int>(shape.num_lists()),
      static_cast<const std::int32_t*>(plan.pair_offsets), static_cast<const std::int32_t*>(plan.pair_offsets) + 1, 0,
      sort_key_bits(shape), stream);
}

// Byte offsets of the plan's buffers inside the workspace, every one 256-byte aligned but
// sparse_count, which follows kept_count in one buffer (one memset zeroes both). Without the split
// the sparse table is the kept one.
struct PlanLayout {
  std::size_t block_offsets, kept_count, sparse_count, pair_offsets, kept_unit_offsets, sparse_unit_offsets,
      kept_unit_list, sparse_unit_list, pair_rank, pair_token, pair_slot, fill_token, fill_slot, kept_slot_mask,
      sparse_slot_mask, dense_count, dense_block, dense_tokens, dense_slots, scan_temp, scan_temp_bytes,
      sort_temp, sort_temp_bytes, total;
};

// Bytes of the list counters: kept.count, then sparse.count with the split.
std::size_t counter_bytes(const SlcPlanShape& shape) {
  return static_cast<std::size_t>(shape.num_lists()) * (shape.dense_threshold > 0 ? 2 : 1) * sizeof(std::int32_t);
}

PlanLayout plan_layout(const SlcPlanShape& shape) {
  const auto lists = static_cast<std::size_t>(shape.num_lists());
  const auto pairs = static_cast<std::size_t>(shape.max_pairs());
  const auto rows = static_cast<std::size_t>(shape.heads_kv) * static_cast<std::size_t>(shape.tokens);
  PlanLayout l{};
  detail::WorkspaceCarver sizing;  // the one carving rule; an offset is its byte count so far
  auto take = [&sizing](std::size_t bytes) {
    const std::size_t at = sizing.bytes();
    sizing.take_bytes(bytes);
    return at;
  };
  const bool split = shape.dense_threshold > 0;
  const std::size_t unit_offsets_bytes = (lists + 1) * sizeof(std::int32_t);
  const std::size_t unit_list_bytes = static_cast<std::size_t>(shape.max_units()) * sizeof(std::int32_t);
  l.block_offsets = take((static_cast<std::size_t>(shape.num_seqs) + 1) * sizeof(std::int32_t));
  l.kept_count = take(counter_bytes(shape));
  l.sparse_count = split ? l.kept_count + lists * sizeof(std::int32_t) : l.kept_count;
  l.pair_offsets = take((lists + 1) * sizeof(std::int32_t));
  l.kept_unit_offsets = take(unit_offsets_bytes);
  l.sparse_unit_offsets = split ? take(unit_offsets_bytes) : l.kept_unit_offsets;
  l.kept_unit_list = take(unit_list_bytes);
  l.sparse_unit_list = split ? take(unit_list_bytes) : l.kept_unit_list;
  l.pair_rank = take(pairs * sizeof(std::int32_t));
  l.pair_token = take(pairs * sizeof(std::int32_t));
  l.pair_slot = take(pairs * sizeof(std::uint8_t));
  l.fill_token = shape.sorted_lists ? take(pairs * sizeof(std::int32_t)) : l.pair_token;
  l.fill_slot = shape.sorted_lists ? take(pairs * sizeof(std::uint8_t)) : l.pair_slot;
  l.kept_slot_mask = take(rows * sizeof(std::uint64_t));
  l.sparse_slot_mask = split ? take(rows * sizeof(std::uint64_t)) : l.kept_slot_mask;
  const auto dense = split ? lists * static_cast<std::size_t>(shape.dense_capacity()) : 0;
  l.dense_count = take(split ? lists * sizeof(std::int32_t) : 0);
  l.dense_block = take(dense * sizeof(std::int32_t));
  l.dense_tokens = take(dense * SlcPlanShape::kMaskWords * sizeof(std::uint32_t));
  l.dense_slots = take(split ? rows * sizeof(std::uint64_t) : 0);
  // A failed query (no usable device) leaves 0 bytes; build_slc_plan repeats the query and
  // reports the error then, where a Status can carry it. Clearing it here keeps a later launch
  // check from blaming an unrelated kernel.
  if (scan_temp_bytes(scan_items(shape), l.scan_temp_bytes) != cudaSuccess) {
    cudaGetLastError();
    l.scan_temp_bytes = 0;
  }
  l.scan_temp = take(l.scan_temp_bytes);
  if (shape.sorted_lists && sort_temp_bytes(shape, l.sort_temp_bytes) != cudaSuccess) {
    cudaGetLastError();
    l.sort_temp_bytes = 0;
  }
  l.sort_temp = take(l.sort_temp_bytes);
  l.total = sizing.bytes();
  return l;
}

struct PlanBuildParams {
  SlcPlan plan;
  SlcPlanInputs in;
  std::uint32_t dense_key_bit;  // dense_key_bit(plan.shape)
};

__device__ __forceinline__ std::int32_t cu_at(const SlcPlanInputs& in, std::int64_t b) {
  return in.cu_seqlens[b * in.cu_stride];
}

// P_b, the keys of sequence b before its queries (SlcKeyPrefix; 0 without one).
__device__ __forceinline__ std::int32_t prefix_at(const SlcPlanInputs& in, std::int64_t b) {
  return in.prefix.key_prefix != nullptr ? in.prefix.key_prefix[b * in.prefix.stride] : 0;
}

// The sequence b of global token t: the last b with cu[b] <= t, which skips the empty sequences
// that start at t. Needs cu[0] <= t < cu[num_seqs].
__device__ __forceinline__ int sequence_of(const SlcPlanInputs& in, int num_seqs, std::int64_t t) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = lo + (hi - lo + 1) / 2;
    if (cu_at(in, mid) <= t) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Whether entry value j already occurs among the earlier entries of the row. An earlier entry equal
// to j is valid too (validity depends on the value alone), so it is kept or a duplicate of an
// earlier kept entry: comparing with the earlier kept entries (bit mask) is enough.
__device__ __forceinline__ bool among_earlier_pairs(const std::int32_t* topk_row, std::uint64_t earlier_pairs,
                                                    std::int32_t j) {
  for (; earlier_pairs != 0; earlier_pairs &= earlier_pairs - 1) {
    if (topk_row[__ffsll(static_cast<long long>(earlier_pairs)) - 1] == j) return true;
  }
  return false;
}

// One CTA: block_offsets[b] = sum_{b' < b} nblk(n_b'), scanned in chunks of the CTA width with a
// running carry between them.
__global__ void __launch_bounds__(kThreads) slc_block_offsets_kernel(const __grid_constant__ PlanBuildParams p) {
  using Scan = cub::BlockScan<std::int32_t, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ std::int32_t carry;
  const int num_seqs = p.plan.shape.num_seqs;
  const int block_size = p.plan.shape.block_size;
  if (threadIdx.x == 0) {
    carry = 0;
    p.plan.block_offsets[0] = 0;
  }
  __syncthreads();
  for (int base = 0; base < num_seqs; base += kThreads) {
    const int b = base + static_cast<int>(threadIdx.x);
    std::int32_t blocks = 0;
    if (b < num_seqs) {
      // The sequence's keys: its queries and the keys before them (SlcKeyPrefix).
      const std::int32_t n = cu_at(p.in, b + 1) - cu_at(p.in, b) + prefix_at(p.in, b);
      blocks = n / block_size + (n % block_size != 0 ? 1 : 0);  // ceil without overflow near INT32_MAX
    }
    std::int32_t inclusive = 0, chunk_total = 0;
    Scan(scan_storage).InclusiveSum(blocks, inclusive, chunk_total);
    if (b < num_seqs) p.plan.block_offsets[b + 1] = carry + inclusive;
    __syncthreads();  // every thread has read `carry` (and the scan storage) before it changes
    if (threadIdx.x == 0) carry += chunk_total;
    __syncthreads();
  }
}

// One thread per row (g, t) of topk. The loops are warp-uniform (whole warps step through the rows
// and the row width together) so that lanes meet at __match_any_sync: lanes whose entry k falls
// in the same list (and, with the split, the same part of it) take consecutive ranks from one
// atomicAdd of their leader. kSplit: shape.dense_threshold > 0. The kernel waits on atomics and
// dependent loads, so it wants every warp slot: without the split it fits 32 registers (8 CTAs per
// SM, no spill); one kernel for both cases took 43, and the plan without the split took 0.08 ms
// more at S64-G4 with random selections on H100. With the split (37 registers, 6 CTAs) a 32-register
// cap spilled 16 bytes.
template <bool kSplit>
__global__ void __launch_bounds__(kThreads, kSplit ? 6 : 8)
    slc_count_pairs_kernel(const __grid_constant__ PlanBuildParams p) {
  const SlcPlanShape& shape = p.plan.shape;
  const std::int64_t tokens = shape.tokens;
  const std::int64_t rows = static_cast<std::int64_t>(shape.heads_kv) * tokens;
  const std::int64_t max_blocks = shape.max_blocks();
  const std::int64_t lists = shape.num_lists();
  const int width = shape.width;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const unsigned lanes_below = (1u << lane) - 1u;
  const std::int32_t first_token = cu_at(p.in, 0);
  const std::int32_t end_token = cu_at(p.in, shape.num_seqs);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kThreads;
  for (std::int64_t warp_row = static_cast<std::int64_t>(blockIdx.x) * kThreads + (threadIdx.x - lane);
       warp_row < rows; warp_row += stride) {
    const std::int64_t row = warp_row + lane;
    const bool in_grid = row < rows;
    const std::int64_t g = in_grid ? row / tokens : 0;
    const std::int64_t t = in_grid ? row - g * tokens : 0;
    // The largest valid block of the row is the query's own block (its position / B); it is also
    // < nblk(n) because the position is below the sequence's n keys. -1 marks rows with no valid
    // entry: past the grid, or tokens outside the batch's sequences.
    std::int64_t last_block = -1;
    std::int64_t list_base = 0;
    std::uint64_t dense = 0;  // entries the tile plan sent to the tile kernel
    if (in_grid && t >= first_token && t < end_token) {
      const int b = sequence_of(p.in, shape.num_seqs, t);
      last_block = (t - cu_at(p.in, b) + prefix_at(p.in, b)) / shape.block_size;
      list_base = g * max_blocks + p.plan.block_offsets[b];
      if constexpr (kSplit) dense = p.plan.dense_slots[row];
    }
    const std::int32_t* topk_row = p.in.topk + g * p.in.topk_head_stride + t * p.in.topk_token_stride;
    std::uint64_t kept = 0;    // first occurrences of valid blocks, dense or not: the pairs
    std::uint64_t sparse = 0;  // the pairs that the forward's KV-outer kernel runs
    std::int32_t largest_kept = -1;  // a valid value above every earlier kept one cannot be a duplicate
    for (int k = 0; k < width; ++k) {
      std::int32_t j = -1;
      bool is_kept = false, is_dense = false;
      if (last_block >= 0) {
        j = topk_row[k];
        is_kept = j >= 0 && j <= last_block && (j > largest_kept || !among_earlier_pairs(topk_row, kept, j));
        if (is_kept) {
          kept |= std::uint64_t{1} << k;
          largest_kept = max(largest_kept, j);
        }
        is_dense = is_kept && ((dense >> k) & 1u) != 0;
      }
      // The counter of the pair's part of its list: sparse.count[list], or kept.count[list] for a
      // dense pair (its part's size until slc_list_sizes_kernel). Lanes match on the counter's
      // index, list or num_lists + list; check_shape keeps num_lists (<= max_units), and with the
      // split 2 * num_lists, within int32, so the 32-bit match suffices.
      const std::int64_t list = list_base + j;
      const int counter = is_kept ? static_cast<int>(is_dense ? lists + list : list) : -1;
      const unsigned peers = __match_any_sync(kFullWarp, counter);
      const int leader = __ffs(static_cast<int>(peers)) - 1;
      int base = 0;
      if (is_kept && lane == leader)
        base = atomicAdd((is_dense ? p.plan.kept.count : p.plan.sparse.count) + list, __popc(peers));
      base = __shfl_sync(kFullWarp, base, leader);
      if (in_grid) p.plan.pair_rank[row * width + k] = is_kept ? base + __popc(peers & lanes_below) : -1;
      if (is_kept && !is_dense) sparse |= std::uint64_t{1} << k;
    }
    if (in_grid) {
      p.plan.sparse.slot_mask[row] = sparse;
      if constexpr (kSplit) p.plan.kept.slot_mask[row] = kept;  // else the same array, and kept == sparse
    }
  }
}

// One CTA per (kv head g, query tile gb): the dense/sparse split of the tile's pairs. Each entry
// (token u, slot k) of the tile's topk rows that is a first occurrence of a valid block j becomes
// the key j << 13 | u << 6 | k; after a block radix sort the tokens of each block form a run, in
// token order. Runs of at least dense_threshold tokens are the tile's dense blocks.
template <int kItems>
__global__ void __launch_bounds__(kThreads) slc_tile_plan_kernel(const __grid_constant__ PlanBuildParams p) {
  constexpr int kEntries = kThreads * kItems;
  constexpr std::uint32_t kNoKey = 0xffffffffu;
  constexpr int kShift = SlcPlanShape::kSortKeyBlockShift;
  using Sort = cub::BlockRadixSort<std::uint32_t, kThreads, kItems>;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ union {
    typename Sort::TempStorage sort;
    std::uint32_t keys[kEntries];
  } shared;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ unsigned dense_slot_words[SlcPlanShape::kMaxBlockSize][2];

  const SlcPlanShape& shape = p.plan.shape;
  const std::int64_t max_blocks = shape.max_blocks();
  const std::int64_t s = blockIdx.x;
  const std::int64_t g = s / max_blocks;
  const int gb = static_cast<int>(s - g * max_blocks);
  const int B = shape.block_size, width = shape.width;
  if (gb >= p.plan.block_offsets[shape.num_seqs]) {  // a tile past the batch: no dense blocks
    if (threadIdx.x == 0) p.plan.dense_count[s] = 0;
    return;
  }
  int b = 0, hi = shape.num_seqs - 1;  // the tile's sequence: the last one whose first block is <= gb
  while (b < hi) {
    const int mid = b + (hi - b + 1) / 2;
    if (p.plan.block_offsets[mid] <= gb) b = mid; else hi = mid - 1;
  }
  const int jt = gb - p.plan.block_offsets[b];  // the tile's own block: the largest valid entry
  const std::int64_t t0 = cu_at(p.in, b) + static_cast<std::int64_t>(jt) * B;
  const int tokens = min(B, static_cast<int>(cu_at(p.in, b + 1) - t0));
  for (int i = threadIdx.x; i < SlcPlanShape::kMaxBlockSize * 2; i += kThreads) (&dense_slot_words[0][0])[i] = 0;

  std::uint32_t keys[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int e = static_cast<int>(threadIdx.x) * kItems + i;
    const int u = e / width, k = e - u * width;
    keys[i] = kNoKey;
    // Only the chunk's own tokens (rows [0, shape.tokens)): a tile that a query chunk boundary cuts
    // is planned in each chunk for that chunk's tokens.
    if (u < tokens && t0 + u >= 0 && t0 + u < shape.tokens) {
      const std::int32_t* row = p.in.topk + g * p.in.topk_head_stride + (t0 + u) * p.in.topk_token_stride;
      const std::int32_t j = slc::counted_entry(row, k, jt);
      if (j >= 0)
        keys[i] = static_cast<std::uint32_t>(j) << kShift | static_cast<std::uint32_t>(u) << 6 |
                  static_cast<std::uint32_t>(k);
    }
  }
  // Sort on the bits that can differ; kNoKey's low bits still compare above every valid key.
  const int block_bits = 32 - __clz(jt);
  Sort(shared.sort).Sort(keys, 0, min(32, kShift + block_bits + 1));
  __syncthreads();  // the sort's storage becomes the array of sorted keys
#pragma unroll
  for (int i = 0; i < kItems; ++i) shared.keys[threadIdx.x * kItems + i] = keys[i];
  __syncthreads();

  // A run starts where the block changes; its length is at most the tile's tokens (one entry per
  // token and block after de-duplication).
  auto run_length = [&](int start) {
    int end = start + 1;
    const std::uint32_t block = shared.keys[start] >> kShift;
    while (end < kEntries && shared.keys[end] != kNoKey && (shared.keys[end] >> kShift) == block) ++end;
    return end - start;
  };
  auto is_dense_head = [&](int e) {
    const std::uint32_t key = shared.keys[e];
    if (key == kNoKey) return false;
    if (e > 0 && (shared.keys[e - 1] >> kShift) == (key >> kShift)) return false;
    return run_length(e) >= shape.dense_threshold;
  };
  int mine = 0;
#pragma unroll
  for (int i = 0; i < kItems; ++i) mine += is_dense_head(static_cast<int>(threadIdx.x) * kItems + i) ? 1 : 0;
  int index = 0, total = 0;
  Scan(scan_storage).ExclusiveSum(mine, index, total);
  if (total < shape.min_dense_blocks) total = 0;  // too few to pay for the tile kernel: all sparse
  const std::int64_t capacity = shape.dense_capacity();
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int e = static_cast<int>(threadIdx.x) * kItems + i;
    if (total == 0 || !is_dense_head(e)) continue;
    const int length = run_length(e);
    std::uint32_t mask[SlcPlanShape::kMaskWords] = {};
    for (int r = e; r < e + length; ++r) {
      const std::uint32_t u = (shared.keys[r] >> 6) & 127u, k = shared.keys[r] & 63u;
#pragma unroll
      for (int w = 0; w < SlcPlanShape::kMaskWords; ++w)
        mask[w] |= u / 32 == static_cast<unsigned>(w) ? 1u << (u % 32) : 0u;
      atomicOr(&dense_slot_words[u][k / 32], 1u << (k % 32));
    }
    const std::int64_t at = s * capacity + index++;
    p.plan.dense_block[at] = static_cast<std::int32_t>(shared.keys[e] >> kShift);
#pragma unroll
    for (int w = 0; w < SlcPlanShape::kMaskWords; ++w) p.plan.dense_tokens[at * SlcPlanShape::kMaskWords + w] = mask[w];
  }
  __syncthreads();
  if (threadIdx.x == 0) p.plan.dense_count[s] = total;
  for (int u = threadIdx.x; u < tokens; u += kThreads)
    if (t0 + u >= 0 && t0 + u < shape.tokens)
      p.plan.dense_slots[g * shape.tokens + t0 + u] =
        static_cast<std::uint64_t>(dense_slot_words[u][1]) << 32 | dense_slot_words[u][0];
}

// The tile plan with enough sort items per thread for a tile's block_size * width entries.
Status launch_tile_plan(const PlanBuildParams& p, cudaStream_t stream) {
  const std::int64_t entries = static_cast<std::int64_t>(p.plan.shape.block_size) * p.plan.shape.width;
  const auto grid = static_cast<unsigned>(p.plan.shape.num_lists());
  if (grid == 0) return Status::ok();
  if (entries <= kThreads) slc_tile_plan_kernel<1><<<grid, kThreads, 0, stream>>>(p);
  else if (entries <= 2 * kThreads) slc_tile_plan_kernel<2><<<grid, kThreads, 0, stream>>>(p);
  else if (entries <= 4 * kThreads) slc_tile_plan_kernel<4><<<grid, kThreads, 0, stream>>>(p);
  else if (entries <= 8 * kThreads) slc_tile_plan_kernel<8><<<grid, kThreads, 0, stream>>>(p);
  else if (entries <= 16 * kThreads) slc_tile_plan_kernel<16><<<grid, kThreads, 0, stream>>>(p);
  else slc_tile_plan_kernel<32><<<grid, kThreads, 0, stream>>>(p);
  FSA_CHECK_LAUNCH("slc_tile_plan_kernel", stream);
  return Status::ok();
}

// Item s < num_lists gets the sizes of list s (pairs, and work units of each table), the trailing
// item 0; the in-place scans that follow turn them into offsets with the totals at the end. With
// the split the count left the list's dense pairs in kept.count, which becomes all its pairs here.
__global__ void __launch_bounds__(kThreads) slc_list_sizes_kernel(const __grid_constant__ PlanBuildParams p) {
  const std::int64_t lists = p.plan.shape.num_lists();
  const std::int64_t group = p.plan.shape.group;
  const bool split = p.plan.shape.dense_threshold > 0;
  constexpr std::int64_t kRows = SlcPlanShape::kRowsPerUnit;
  auto units = [&](std::int32_t count) { return static_cast<std::int32_t>((count * group + kRows - 1) / kRows); };
  for (std::int64_t s = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; s <= lists;
       s += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    std::int32_t sparse = 0, kept = 0;
    if (s < lists) {
      sparse = p.plan.sparse.count[s];
      kept = split ? sparse + p.plan.kept.count[s] : sparse;
      if (split) p.plan.kept.count[s] = kept;
    }
    p.plan.pair_offsets[s] = kept;
    p.plan.kept.unit_offsets[s] = units(kept);
    if (split) p.plan.sparse.unit_offsets[s] = units(sparse);
  }
}

// unit_list[u] = s for the units u of list s in one table (the lanes of a warp).
__device__ __forceinline__ void write_unit_list(const SlcPairTables& table, std::int64_t s, int lane) {
  const std::int32_t end = table.unit_offsets[s + 1];
  for (std::int32_t u = table.unit_offsets[s] + lane; u < end; u += kWarpSize)
    table.unit_list[u] = static_cast<std::int32_t>(s);
}

// One warp per list s: its units in each table.
__global__ void __launch_bounds__(kThreads) slc_unit_lists_kernel(const __grid_constant__ PlanBuildParams p) {
  const std::int64_t lists = p.plan.shape.num_lists();
  const bool split = p.plan.shape.dense_threshold > 0;  // else the sparse table is the kept one
  const int lane = threadIdx.x % kWarpSize;
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * (kThreads / kWarpSize);
  for (std::int64_t s = (static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x) / kWarpSize; s < lists;
       s += warps) {
    write_unit_list(p.plan.kept, s, lane);
    if (split) write_unit_list(p.plan.sparse, s, lane);
  }
}

// One thread per topk entry (g, t, k): a pair goes to its list's slice of the CSR at its rank, a
// dense one after the list's sparse pairs (its token marked with dense_key_bit for the sort).
__global__ void __launch_bounds__(kThreads) slc_fill_pairs_kernel(const __grid_constant__ PlanBuildParams p) {
  const SlcPlanShape& shape = p.plan.shape;
  const std::int64_t tokens = shape.tokens;
  const std::int64_t width = shape.width;
  const std::int64_t entries = static_cast<std::int64_t>(shape.heads_kv) * tokens * width;
  const std::int64_t max_blocks = shape.max_blocks();
  const bool split = shape.dense_threshold > 0;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < entries;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const std::int32_t rank = p.plan.pair_rank[i];  // [g, t, k] contiguous: i = (g * N + t) * width + k
    if (rank < 0) continue;
    const std::int64_t row = i / width;
    const std::int64_t k = i - row * width;
    const std::int64_t g = row / tokens;
    const std::int64_t t = row - g * tokens;
    const std::int32_t j = p.in.topk[g * p.in.topk_head_stride + t * p.in.topk_token_stride + k];
    const int b = sequence_of(p.in, shape.num_seqs, t);  // a pair's token lies inside the batch
    const std::int64_t list = g * max_blocks + p.plan.block_offsets[b] + j;
    std::int64_t entry = static_cast<std::int64_t>(p.plan.pair_offsets[list]) + rank;
    std::uint32_t key = static_cast<std::uint32_t>(t);
    if (split && ((p.plan.dense_slots[row] >> k) & 1u) != 0) {
      entry += p.plan.sparse.count[list];
      key |= p.dense_key_bit;
    }
    p.plan.fill_token[entry] = static_cast<std::int32_t>(key);
    p.plan.fill_slot[entry] = static_cast<std::uint8_t>(k);
  }
}

// After the sort of split lists: clears dense_key_bit from the pairs' tokens.
__global__ void __launch_bounds__(kThreads) slc_clear_key_bit_kernel(const __grid_constant__ PlanBuildParams p) {
  const std::int32_t pairs = p.plan.pair_offsets[p.plan.shape.num_lists()];
  const auto keep = static_cast<std::int32_t>(~p.dense_key_bit);
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < pairs;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads)
    p.plan.pair_token[i] &= keep;
}

unsigned grid_for(std::int64_t items) {
  return static_cast<unsigned>(std::clamp<std::int64_t>((items + kThreads - 1) / kThreads, 1, kMaxGrid));
}

Status check_shape(const SlcPlanShape& s) {
  if (s.tokens < 0 || s.tokens > INT32_MAX)
    return FSA_INVALID("tokens: expected 0 <= N <= INT32_MAX (pair_token is int32), got " + std::to_string(s.tokens));
  if (s.num_seqs < 0) return FSA_INVALID("num_seqs: expected >= 0, got " + std::to_string(s.num_seqs));
  if (s.heads_kv < 0) return FSA_INVALID("heads_kv: expected >= 0, got " + std::to_string(s.heads_kv));
  if (s.group < 1) return FSA_INVALID("group: expected >= 1, got " + std::to_string(s.group));
  if (s.block_size < 1) return FSA_INVALID("block_size: expected >= 1, got " + std::to_string(s.block_size));
  if (s.width < 0 || s.width > SlcPlanShape::kMaxWidth)
    return FSA_INVALID("width: expected 0.." + std::to_string(SlcPlanShape::kMaxWidth) + " topk entries per row, got " +
                       std::to_string(s.width));
  // Offsets are int32, and only bounds from shapes can be checked without reading the device.
  if (s.dense_threshold < 0)
    return FSA_INVALID("dense_threshold: expected >= 0, got " + std::to_string(s.dense_threshold));
  if (s.min_dense_blocks < 1)
    return FSA_INVALID("min_dense_blocks: expected >= 1, got " + std::to_string(s.min_dense_blocks));
  if (s.dense_threshold > 0 &&
      (s.block_size > SlcPlanShape::kMaxBlockSize || s.max_blocks() > SlcPlanShape::kMaxSplitBlocks))
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "dense_threshold: the dense/sparse split supports block sizes up to " +
                         std::to_string(SlcPlanShape::kMaxBlockSize) + " and up to " +
                         std::to_string(SlcPlanShape::kMaxSplitBlocks) + " blocks");
  if (s.max_pairs() > INT32_MAX || s.max_units() > INT32_MAX)
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "topk_idx: heads_kv * N * width = " + std::to_string(s.max_pairs()) +
                         " pairs (or their work units) exceed the int32 offsets of the selected-attention plan");
  // The split counts each list's two parts apart.
  if (s.dense_threshold > 0 && 2 * s.num_lists() > INT32_MAX)
    return FSA_ERROR(StatusCode::kNotImplemented, "dense_threshold: the dense/sparse split supports up to " +
                                                      std::to_string(INT32_MAX / 2) + " (kv head, block) lists, got " +
                                                      std::to_string(s.num_lists()));
  return Status::ok();
}

}  // namespace

std::size_t slc_plan_workspace_bytes(const SlcPlanShape& shape) { return plan_layout(shape).total; }

SlcPlan slc_plan_layout(const SlcPlanShape& shape, void* workspace) {
  const PlanLayout l = plan_layout(shape);
  auto* base = static_cast<unsigned char*>(workspace);
  SlcPlan plan{};
  plan.shape = shape;
  plan.block_offsets = reinterpret_cast<std::int32_t*>(base + l.block_offsets);
  plan.kept.count = reinterpret_cast<std::int32_t*>(base + l.kept_count);
  plan.kept.unit_offsets = reinterpret_cast<std::int32_t*>(base + l.kept_unit_offsets);
  plan.kept.unit_list = reinterpret_cast<std::int32_t*>(base + l.kept_unit_list);
  plan.kept.slot_mask = reinterpret_cast<std::uint64_t*>(base + l.kept_slot_mask);
  plan.sparse.count = reinterpret_cast<std::int32_t*>(base + l.sparse_count);
  plan.sparse.unit_offsets = reinterpret_cast<std::int32_t*>(base + l.sparse_unit_offsets);
  plan.sparse.unit_list = reinterpret_cast<std::int32_t*>(base + l.sparse_unit_list);
  plan.sparse.slot_mask = reinterpret_cast<std::uint64_t*>(base + l.sparse_slot_mask);
  plan.pair_offsets = reinterpret_cast<std::int32_t*>(base + l.pair_offsets);
  plan.pair_rank = reinterpret_cast<std::int32_t*>(base + l.pair_rank);
  plan.pair_token = reinterpret_cast<std::int32_t*>(base + l.pair_token);
  plan.pair_slot = base + l.pair_slot;
  plan.fill_token = reinterpret_cast<std::int32_t*>(base + l.fill_token);
  plan.fill_slot = base + l.fill_slot;
  plan.dense_count = reinterpret_cast<std::int32_t*>(base + l.dense_count);
  plan.dense_block = reinterpret_cast<std::int32_t*>(base + l.dense_block);
  plan.dense_tokens = reinterpret_cast<std::uint32_t*>(base + l.dense_tokens);
  plan.dense_slots = reinterpret_cast<std::uint64_t*>(base + l.dense_slots);
  plan.scan_temp = base + l.scan_temp;
  plan.scan_temp_bytes = l.scan_temp_bytes;
  plan.sort_temp = base + l.sort_temp;
  plan.sort_temp_bytes = l.sort_temp_bytes;
  return plan;
}

Status build_slc_plan(const SlcPlan& plan, const SlcPlanInputs& in, cudaStream_t stream) {
  const SlcPlanShape& shape = plan.shape;
  FSA_RETURN_IF_ERROR(check_shape(shape));
  const std::int64_t items = scan_items(shape);
  std::size_t needed = 0;
  FSA_CUDA_CHECK(scan_temp_bytes(items, needed));
  if (plan.scan_temp_bytes < needed)
    return FSA_ERROR(StatusCode::kInternal, "plan.scan_temp: " + std::to_string(plan.scan_temp_bytes) +
                                                " bytes, the scan needs " + std::to_string(needed) +
                                                " (workspace sized on another device?)");
  if (shape.sorted_lists) {
    FSA_CUDA_CHECK(sort_temp_bytes(shape, needed));
    if (plan.sort_temp_bytes < needed)
      return FSA_ERROR(StatusCode::kInternal, "plan.sort_temp: " + std::to_string(plan.sort_temp_bytes) +
                                                  " bytes, the sort needs " + std::to_string(needed));
  }

  const PlanBuildParams p{plan, in, dense_key_bit(shape)};
  const std::int64_t rows = static_cast<std::int64_t>(shape.heads_kv) * shape.tokens;
  const std::int64_t entries = shape.max_pairs();

  slc_block_offsets_kernel<<<1, kThreads, 0, stream>>>(p);
  FSA_CHECK_LAUNCH("slc_block_offsets_kernel", stream);
  if (shape.num_lists() > 0) FSA_CUDA_CHECK(cudaMemsetAsync(plan.kept.count, 0, counter_bytes(shape), stream));
  if (shape.dense_threshold > 0) FSA_RETURN_IF_ERROR(launch_tile_plan(p, stream));
  if (rows > 0) {
    if (shape.dense_threshold > 0) slc_count_pairs_kernel<true><<<grid_for(rows), kThreads, 0, stream>>>(p);
    else slc_count_pairs_kernel<false><<<grid_for(rows), kThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("slc_count_pairs_kernel", stream);
  }
  slc_list_sizes_kernel<<<grid_for(items), kThreads, 0, stream>>>(p);
  FSA_CHECK_LAUNCH("slc_list_sizes_kernel", stream);
  // The scans share the scratch, one after the other on the stream.
  FSA_CUDA_CHECK(run_scan(plan, plan.pair_offsets, items, stream));
  FSA_CUDA_CHECK(run_scan(plan, plan.kept.unit_offsets, items, stream));
  if (shape.dense_threshold > 0) FSA_CUDA_CHECK(run_scan(plan, plan.sparse.unit_offsets, items, stream));
  if (shape.num_lists() > 0) {
    slc_unit_lists_kernel<<<grid_for(shape.num_lists() * kWarpSize), kThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("slc_unit_lists_kernel", stream);
  }
  if (entries > 0) {
    slc_fill_pairs_kernel<<<grid_for(entries), kThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("slc_fill_pairs_kernel", stream);
    if (shape.sorted_lists && shape.num_lists() > 0) {
      FSA_CUDA_CHECK(run_sort(plan, stream));
      if (p.dense_key_bit != 0) {
        slc_clear_key_bit_kernel<<<grid_for(entries), kThreads, 0, stream>>>(p);
        FSA_CHECK_LAUNCH("slc_clear_key_bit_kernel", stream);
      }
    }
  }
  return Status::ok();
}

}  // namespace fsa::cuda
