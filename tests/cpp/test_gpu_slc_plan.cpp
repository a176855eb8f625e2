// GPU tests of the selected-attention plan builder (label gpu: they need a CUDA device). The plan
// built on the device is compared with a host computation that follows docs/semantics.md section 5
// literally: block offsets, list offsets, and through each of the two views (slc_plan.hpp) its list
// sizes, work-unit offsets and lists and slot masks exactly; the entries of each list's sparse and
// dense parts as multisets (their order inside a part is not deterministic unless sorted); and
// every pair_rank against the CSR entry it points to. With the dense/sparse split
// (dense_threshold > 0) also each tile's dense blocks, their token masks and the rows' dense slots exactly, the
// forward view without the dense pairs and the backward view with them. Workspaces are poisoned
// first, so unwritten outputs show.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gpu_test_util.hpp"
#include "kernels/slc_attn/slc_plan_build.hpp"

namespace fsa::test {
namespace {

using cuda::SlcPlan;
using cuda::SlcPlanInputs;
using cuda::SlcPlanShape;

constexpr unsigned char kPoisonByte = 0x7f;

using SlcPlanGpu = Gpu;

// Device memory of `count` elements of T, optionally copied from a host vector.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    EXPECT_EQ(cudaMalloc(&data_, std::max<std::size_t>(count, 1) * sizeof(T)), cudaSuccess);
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void upload(const std::vector<T>& host) {
    ASSERT_EQ(host.size(), count_);
    EXPECT_EQ(cudaMemcpy(data_, host.data(), count_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  T* get() const { return data_; }
  std::size_t bytes() const { return count_ * sizeof(T); }

 private:
  T* data_ = nullptr;
  std::size_t count_ = 0;
};

template <class T>
std::vector<T> download(const T* device, std::int64_t count) {
  std::vector<T> host(static_cast<std::size_t>(count));
  if (count > 0) {
    EXPECT_EQ(cudaMemcpy(host.data(), device, host.size() * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  }
  return host;
}

// One plan-builder input: shapes, a strided cu_seqlens and a strided topk_idx.
struct Problem {
  SlcPlanShape shape;
  std::vector<std::int32_t> cu;  // num_seqs + 1 values at stride cu_stride
  std::int64_t cu_stride = 1;
  std::vector<std::int32_t> topk;  // [heads_kv, tokens, width] at head_stride / token_stride
  std::int64_t head_stride = 0, token_stride = 0;

  std::int32_t cu_at(std::int64_t b) const { return cu[static_cast<std::size_t>(b * cu_stride)]; }
  std::int32_t& topk_at(std::int64_t g, std::int64_t t, std::int64_t k) {
    return topk[static_cast<std::size_t>(g * head_stride + t * token_stride + k)];
  }
  std::int32_t topk_at(std::int64_t g, std::int64_t t, std::int64_t k) const {
    return topk[static_cast<std::size_t>(g * head_stride + t * token_stride + k)];
  }
};

// Every topk entry starts as -1. Padding of the strided layouts holds values that change the plan
// if read, so a stride bug shows: 1 between cu values, block 0 past each topk row and head.
// `spare_tokens` rows past cu[num_seqs] get block 0 too and must own no pair.
Problem make_problem(const std::vector<std::int32_t>& lengths, int heads_kv, int group, int width, int block_size,
                     int spare_tokens = 0, int row_padding = 0, std::int64_t cu_stride = 1) {
  Problem p;
  p.cu_stride = cu_stride;
  p.cu.assign(static_cast<std::size_t>((static_cast<std::int64_t>(lengths.size()) + 1) * cu_stride), 1);
  std::int32_t total = 0;
  p.cu[0] = 0;
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    total += lengths[b];
    p.cu[static_cast<std::size_t>((static_cast<std::int64_t>(b) + 1) * cu_stride)] = total;
  }
  p.shape.tokens = total + spare_tokens;
  p.shape.num_seqs = static_cast<int>(lengths.size());
  p.shape.heads_kv = heads_kv;
  p.shape.group = group;
  p.shape.width = width;
  p.shape.block_size = block_size;
  p.token_stride = width + row_padding;
  p.head_stride = p.shape.tokens * p.token_stride + row_padding;
  p.topk.assign(static_cast<std::size_t>(std::max<std::int64_t>(heads_kv * p.head_stride, 1)), 0);
  for (int g = 0; g < heads_kv; ++g) {
    for (std::int64_t t = 0; t < total; ++t) {
      for (int k = 0; k < width; ++k) p.topk_at(g, t, k) = -1;
    }
  }
  return p;
}

int blocks_of(std::int64_t n, int block_size) { return static_cast<int>((n + block_size - 1) / block_size); }

using ListEntries = std::vector<std::pair<std::int32_t, std::int32_t>>;  // (token, slot)

// What one view shows of its pairs: per list their count and work-unit offsets, per row the slots.
struct ExpectedTables {
  std::vector<std::int32_t> count, unit_offsets;
  std::vector<std::uint64_t> slot_mask;
};

// The plan as the attended sets of docs/semantics.md section 5 define it, computed sequence by
// sequence (no search over cu).
struct ExpectedPlan {
  std::vector<std::int32_t> block_offsets, pair_offsets;
  ExpectedTables sparse, kept;  // the forward view's pairs and the backward view's (all)
  // Split only: per (kv head, tile) its dense blocks ascending with their token masks; per row the
  // slots that went dense.
  std::vector<std::vector<std::pair<std::int32_t, std::vector<std::uint32_t>>>> dense;
  std::vector<std::uint64_t> dense_slots;
  std::vector<std::int64_t> list_of_entry;  // [heads_kv, N, width]: list of a pair, -1 for ignored entries
  std::vector<ListEntries> sparse_lists, dense_lists;  // each list's two parts, sorted
};

// Sizes to offsets: an exclusive scan with the total at the end.
std::vector<std::int32_t> exclusive_scan(const std::vector<std::int32_t>& sizes) {
  std::vector<std::int32_t> offsets = {0};
  for (const std::int32_t size : sizes) offsets.push_back(offsets.back() + size);
  return offsets;
}

ExpectedTables tables_of(const std::vector<std::int32_t>& count, std::vector<std::uint64_t> slot_mask, int group) {
  std::vector<std::int32_t> units;
  for (const std::int32_t c : count) {
    const std::int64_t rows = static_cast<std::int64_t>(c) * group;
    units.push_back(static_cast<std::int32_t>((rows + SlcPlanShape::kRowsPerUnit - 1) / SlcPlanShape::kRowsPerUnit));
  }
  return {count, exclusive_scan(units), std::move(slot_mask)};
}

ExpectedPlan expected_plan(const Problem& p) {
  const SlcPlanShape& s = p.shape;
  const int B = s.block_size;
  ExpectedPlan e;
  e.block_offsets.push_back(0);
  for (int b = 0; b < s.num_seqs; ++b)
    e.block_offsets.push_back(e.block_offsets.back() + blocks_of(p.cu_at(b + 1) - p.cu_at(b), B));
  const auto lists = static_cast<std::size_t>(s.num_lists());
  std::vector<std::int32_t> sparse_count(lists, 0), kept_count(lists, 0);
  std::vector<std::uint64_t> sparse_mask(static_cast<std::size_t>(s.heads_kv * s.tokens), 0);
  std::vector<std::uint64_t> kept_mask = sparse_mask;
  e.sparse_lists.resize(lists);
  e.dense_lists.resize(lists);
  e.dense_slots.assign(static_cast<std::size_t>(s.heads_kv * s.tokens), 0);
  e.dense.resize(lists);
  e.list_of_entry.assign(static_cast<std::size_t>(s.max_pairs()), -1);
  auto is_pair = [&](int g, std::int64_t t, int k, std::int64_t bq, std::int64_t nblk) {
    const std::int64_t j = p.topk_at(g, t, k);
    if (j < 0 || j > bq || j >= nblk) return false;
    for (int earlier = 0; earlier < k; ++earlier)
      if (p.topk_at(g, t, earlier) == j) return false;
    return true;
  };
  for (int g = 0; g < s.heads_kv; ++g) {
    for (int b = 0; b < s.num_seqs; ++b) {
      const std::int64_t start = p.cu_at(b), n = p.cu_at(b + 1) - start;
      const std::int64_t nblk = blocks_of(n, B);
      // The split: per query tile (the tokens of one block), blocks picked by >= threshold tokens.
      std::vector<std::vector<std::uint32_t>> tokens_of_block;
      for (std::int64_t tile = 0; s.dense_threshold > 0 && tile < nblk; ++tile) {
        tokens_of_block.assign(static_cast<std::size_t>(tile + 1), std::vector<std::uint32_t>(4, 0u));
        std::vector<int> count(static_cast<std::size_t>(tile + 1), 0);
        for (std::int64_t t = start + tile * B; t < std::min(start + n, start + (tile + 1) * B); ++t)
          for (int k = 0; k < s.width; ++k) {
            if (!is_pair(g, t, k, tile, nblk)) continue;
            const auto j = static_cast<std::size_t>(p.topk_at(g, t, k));
            const auto u = static_cast<std::uint32_t>(t - start - tile * B);
            tokens_of_block[j][u / 32] |= 1u << (u % 32);
            ++count[j];
          }
        const std::int64_t list = g * s.max_blocks() + e.block_offsets[static_cast<std::size_t>(b)] + tile;
        const auto dense_blocks = std::count_if(count.begin(), count.end(), [&](int c) { return c >= s.dense_threshold; });
        if (dense_blocks < s.min_dense_blocks) count.assign(count.size(), 0);  // too few: all sparse
        for (std::size_t j = 0; j < count.size(); ++j)
          if (count[j] >= s.dense_threshold)
            e.dense[static_cast<std::size_t>(list)].emplace_back(static_cast<std::int32_t>(j), tokens_of_block[j]);
        for (std::int64_t t = start + tile * B; t < std::min(start + n, start + (tile + 1) * B); ++t)
          for (int k = 0; k < s.width; ++k)
            if (is_pair(g, t, k, tile, nblk) && count[static_cast<std::size_t>(p.topk_at(g, t, k))] >= s.dense_threshold)
              e.dense_slots[static_cast<std::size_t>(g * s.tokens + t)] |= std::uint64_t{1} << k;
      }
      for (std::int64_t t = start; t < start + n; ++t) {
        const std::int64_t bq = (t - start) / B;
        for (int k = 0; k < s.width; ++k) {
          if (!is_pair(g, t, k, bq, nblk)) continue;
          const auto row = static_cast<std::size_t>(g * s.tokens + t);
          const bool dense = (e.dense_slots[row] >> k) & 1u;
          const std::int64_t j = p.topk_at(g, t, k);
          const auto list =
              static_cast<std::size_t>(g * s.max_blocks() + e.block_offsets[static_cast<std::size_t>(b)] + j);
          e.list_of_entry[row * static_cast<std::size_t>(s.width) + static_cast<std::size_t>(k)] =
              static_cast<std::int64_t>(list);
          kept_mask[row] |= std::uint64_t{1} << k;
          ++kept_count[list];
          if (!dense) {
            sparse_mask[row] |= std::uint64_t{1} << k;
            ++sparse_count[list];
          }
          (dense ? e.dense_lists : e.sparse_lists)[list].emplace_back(static_cast<std::int32_t>(t), k);
        }
      }
    }
  }
  e.pair_offsets = exclusive_scan(kept_count);
  e.sparse = tables_of(sparse_count, std::move(sparse_mask), s.group);
  e.kept = tables_of(kept_count, std::move(kept_mask), s.group);
  for (auto& list : e.sparse_lists) std::sort(list.begin(), list.end());
  for (auto& list : e.dense_lists) std::sort(list.begin(), list.end());
  return e;
}

// What the kernels of one pass read through a view, copied back to the host.
struct HostView {
  std::vector<std::int32_t> pair_count, unit_offsets, unit_list;
  std::vector<std::uint64_t> slot_mask;
};

HostView download_view(const SlcPlan& view) {
  const SlcPlanShape& s = view.shape;
  return {download(view.pair_count, s.num_lists()), download(view.unit_offsets, s.num_lists() + 1),
          download(view.unit_list, s.max_units()), download(view.slot_mask, s.heads_kv * s.tokens)};
}

// The plan's buffers copied back to the host.
struct HostPlan {
  std::vector<std::int32_t> block_offsets, pair_offsets, pair_rank, pair_token, fill_token;
  std::vector<std::uint8_t> pair_slot, fill_slot;
  HostView forward, backward;  // through slc_plan_forward_view and slc_plan_backward_view
  std::vector<std::int32_t> dense_count, dense_block;  // split only
  std::vector<std::uint32_t> dense_tokens;
  std::vector<std::uint64_t> dense_slots;
};

HostPlan download_plan(const SlcPlan& plan) {
  const SlcPlanShape& s = plan.shape;
  HostPlan h;
  h.block_offsets = download(plan.block_offsets, s.num_seqs + 1);
  h.pair_offsets = download(plan.pair_offsets, s.num_lists() + 1);
  h.forward = download_view(cuda::slc_plan_forward_view(plan));
  h.backward = download_view(cuda::slc_plan_backward_view(plan));
  h.pair_rank = download(plan.pair_rank, s.max_pairs());
  h.pair_token = download(plan.pair_token, s.max_pairs());
  h.pair_slot = download(plan.pair_slot, s.max_pairs());
  h.fill_token = download(plan.fill_token, s.max_pairs());
  h.fill_slot = download(plan.fill_slot, s.max_pairs());
  if (s.dense_threshold > 0) {
    h.dense_count = download(plan.dense_count, s.num_lists());
    h.dense_block = download(plan.dense_block, s.num_lists() * s.dense_capacity());
    h.dense_tokens = download(plan.dense_tokens, s.num_lists() * s.dense_capacity() * SlcPlanShape::kMaskWords);
    h.dense_slots = download(plan.dense_slots, s.heads_kv * s.tokens);
  }
  return h;
}

// Compares two arrays, reporting the number of differences and the first one (not the arrays).
template <class T>
void expect_same(const char* name, const std::vector<T>& got, const std::vector<T>& want, const std::string& where) {
  ASSERT_EQ(got.size(), want.size()) << name << " " << where;
  std::size_t differences = 0, first = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i] && differences++ == 0) first = i;
  }
  EXPECT_EQ(differences, 0u) << name << " " << where << ": first difference at " << first << ", got "
                             << static_cast<long long>(got[first]) << ", want " << static_cast<long long>(want[first]);
}

// The first n elements of v.
template <class T>
std::vector<T> prefix(const std::vector<T>& v, std::size_t n) {
  return std::vector<T>(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n));
}

// One view's tables against the expected ones: list sizes, unit offsets, the list of every unit
// below the total (the rest of the buffer is never read) and the slot masks.
void check_view(const char* view, const HostView& got, const ExpectedTables& want, const std::string& where) {
  const std::string at = where + " (" + view + " view)";
  expect_same("pair_count", got.pair_count, want.count, at);
  expect_same("unit_offsets", got.unit_offsets, want.unit_offsets, at);
  std::vector<std::int32_t> unit_list;
  for (std::size_t list = 0; list + 1 < want.unit_offsets.size(); ++list)
    unit_list.insert(unit_list.end(), static_cast<std::size_t>(want.unit_offsets[list + 1] - want.unit_offsets[list]),
                     static_cast<std::int32_t>(list));
  ASSERT_LE(unit_list.size(), got.unit_list.size()) << at << ": more units than max_units";
  expect_same("unit_list", prefix(got.unit_list, unit_list.size()), unit_list, at);
  expect_same("slot_mask", got.slot_mask, want.slot_mask, at);
}

// The CSR entries [begin, end) as (token, slot).
ListEntries entries_of(const HostPlan& got, std::int64_t begin, std::int64_t end) {
  ListEntries entries;
  for (std::int64_t i = begin; i < end; ++i)
    entries.emplace_back(got.pair_token[static_cast<std::size_t>(i)], got.pair_slot[static_cast<std::size_t>(i)]);
  return entries;
}

// Tokens strictly ascending (a token is at most once in a list).
bool ascending(const ListEntries& entries) {
  return std::adjacent_find(entries.begin(), entries.end(),
                            [](const auto& a, const auto& b) { return a.first >= b.first; }) == entries.end();
}

void check_plan(const Problem& p, const HostPlan& got, const std::string& where) {
  const ExpectedPlan e = expected_plan(p);
  const SlcPlanShape& s = p.shape;
  expect_same("block_offsets", got.block_offsets, e.block_offsets, where);
  expect_same("pair_offsets", got.pair_offsets, e.pair_offsets, where);
  check_view("forward", got.forward, e.sparse, where);
  check_view("backward", got.backward, e.kept, where);
  if (s.dense_threshold > 0) {
    // dense_slots of rows outside every sequence are never written (nor read).
    std::vector<std::uint64_t> dense_slots = got.dense_slots;
    for (int g = 0; g < s.heads_kv; ++g)
      for (std::int64_t t = p.cu_at(s.num_seqs); t < s.tokens; ++t)
        dense_slots[static_cast<std::size_t>(g * s.tokens + t)] = 0;
    expect_same("dense_slots", dense_slots, e.dense_slots, where);
    std::size_t bad_tiles = 0;
    for (std::size_t tile = 0; tile < e.dense.size(); ++tile) {
      const auto& want = e.dense[tile];
      bool ok = got.dense_count[tile] == static_cast<std::int32_t>(want.size());
      for (std::size_t i = 0; ok && i < want.size(); ++i) {
        const std::size_t at = tile * static_cast<std::size_t>(s.dense_capacity()) + i;
        ok = got.dense_block[at] == want[i].first;
        for (int w = 0; w < SlcPlanShape::kMaskWords; ++w)
          ok = ok && got.dense_tokens[at * SlcPlanShape::kMaskWords + static_cast<std::size_t>(w)] ==
                         want[i].second[static_cast<std::size_t>(w)];
      }
      if (!ok && bad_tiles++ == 0)
        ADD_FAILURE() << where << ": tile " << tile << " has " << got.dense_count[tile] << " dense blocks, want "
                      << want.size() << " (or other blocks / token masks)";
    }
    EXPECT_EQ(bad_tiles, 0u) << where;
  }
  if (::testing::Test::HasFailure()) return;  // the checks below index with the offsets

  // Each list: its sparse pairs first (the forward view's list), then its dense ones; with
  // sorted_lists each part in ascending token order.
  std::size_t bad_lists = 0, unsorted_lists = 0;
  for (std::size_t list = 0; list < e.sparse_lists.size(); ++list) {
    auto check_part = [&](const char* name, ListEntries part, const ListEntries& want) {
      if (s.sorted_lists && !ascending(part) && unsorted_lists++ == 0)
        ADD_FAILURE() << where << ": list " << list << "'s " << name << " part is not in ascending token order";
      std::sort(part.begin(), part.end());
      if (part != want && bad_lists++ == 0)
        ADD_FAILURE() << where << ": list " << list << "'s " << name << " part holds other (token, slot) entries "
                      << "than expected (" << part.size() << " entries)";
    };
    const std::int64_t begin = e.pair_offsets[list], middle = begin + e.sparse.count[list];
    check_part("sparse", entries_of(got, begin, middle), e.sparse_lists[list]);
    check_part("dense", entries_of(got, middle, e.pair_offsets[list + 1]), e.dense_lists[list]);
  }
  EXPECT_EQ(bad_lists, 0u) << where;
  EXPECT_EQ(unsorted_lists, 0u) << where;

  // Each pair's rank points at its own CSR entry in the fill order, inside its list's sparse or
  // dense part (so the ranks of a part are a permutation); every ignored entry has rank -1. Sorted
  // split lists are filled with sort keys: a dense pair's token plus the power of two 2^b (b >= 1)
  // at or above N.
  int token_bits = 1;
  while (token_bits < 31 && (std::int64_t{1} << token_bits) < s.tokens) ++token_bits;
  const std::int64_t dense_key_bit = s.sorted_lists ? std::int64_t{1} << token_bits : 0;
  std::size_t bad_ranks = 0;
  for (std::int64_t i = 0; i < s.max_pairs(); ++i) {
    const std::int32_t rank = got.pair_rank[static_cast<std::size_t>(i)];
    const std::int64_t list = e.list_of_entry[static_cast<std::size_t>(i)];
    bool ok = rank == -1;
    if (list >= 0) {
      const std::int64_t row = i / s.width, k = i % s.width, t = row % s.tokens;
      const auto l = static_cast<std::size_t>(list);
      const bool dense = s.dense_threshold > 0 && ((e.dense_slots[static_cast<std::size_t>(row)] >> k) & 1u);
      const std::int32_t part_begin = e.pair_offsets[l] + (dense ? e.sparse.count[l] : 0);
      const std::int32_t part_size = dense ? e.kept.count[l] - e.sparse.count[l] : e.sparse.count[l];
      const std::int64_t entry = part_begin + static_cast<std::int64_t>(rank);
      const std::int64_t key = t + (dense ? dense_key_bit : 0);
      ok = rank >= 0 && rank < part_size &&
           static_cast<std::uint32_t>(got.fill_token[static_cast<std::size_t>(entry)]) == key &&
           got.fill_slot[static_cast<std::size_t>(entry)] == k;
    }
    if (!ok && bad_ranks++ == 0)
      ADD_FAILURE() << where << ": pair_rank[" << i << "] = " << rank << " (list " << list << ")";
  }
  EXPECT_EQ(bad_ranks, 0u) << where;
}

// Device copies of a problem's inputs and a poisoned workspace for its plan.
class DevicePlan {
 public:
  explicit DevicePlan(const Problem& p)
      : topk_(p.topk), cu_(p.cu), workspace_(cuda::slc_plan_workspace_bytes(p.shape)) {
    plan_ = cuda::slc_plan_layout(p.shape, workspace_.get());
    inputs_ = SlcPlanInputs{topk_.get(), p.head_stride, p.token_stride, cu_.get(), p.cu_stride};
  }
  const SlcPlan& plan() const { return plan_; }
  const SlcPlanInputs& inputs() const { return inputs_; }
  void upload_topk(const Problem& p) { topk_.upload(p.topk); }
  void poison(cudaStream_t stream) {
    EXPECT_EQ(cudaMemsetAsync(workspace_.get(), kPoisonByte, workspace_.bytes(), stream), cudaSuccess);
  }

 private:
  DeviceBuffer<std::int32_t> topk_, cu_;
  DeviceBuffer<unsigned char> workspace_;
  SlcPlan plan_{};
  SlcPlanInputs inputs_{};
};

void build_and_check(const Problem& p, const std::string& where) {
  DevicePlan d(p);
  d.poison(nullptr);
  FSA_ASSERT_OK(cuda::build_slc_plan(d.plan(), d.inputs(), nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << where;
  check_plan(p, download_plan(d.plan()), where);
}

std::string describe(const Problem& p) {
  const SlcPlanShape& s = p.shape;
  return "threshold=" + std::to_string(s.dense_threshold) + " min_dense=" + std::to_string(s.min_dense_blocks) +
         " N=" + std::to_string(s.tokens) + " nseq=" + std::to_string(s.num_seqs) +
         " Hkv=" + std::to_string(s.heads_kv) +
         " G=" + std::to_string(s.group) + " width=" + std::to_string(s.width) + " B=" + std::to_string(s.block_size);
}

// A row as the selection producer writes it (docs/semantics.md section 4): the forced blocks
// (0, bq - 1, bq) and random others, ascending, then -1 padding.
void fill_selection_row(Problem& p, int g, std::int64_t t, std::int64_t bq, std::mt19937_64& rng) {
  std::vector<std::int32_t> candidates;
  for (std::int64_t j = 1; j + 1 < bq; ++j) candidates.push_back(static_cast<std::int32_t>(j));
  std::shuffle(candidates.begin(), candidates.end(), rng);
  std::vector<std::int32_t> chosen = {0};
  if (bq >= 2) chosen.push_back(static_cast<std::int32_t>(bq - 1));
  if (bq >= 1) chosen.push_back(static_cast<std::int32_t>(bq));
  for (const std::int32_t j : candidates) chosen.push_back(j);
  chosen.resize(std::min<std::size_t>(chosen.size(), static_cast<std::size_t>(p.shape.width)));
  std::sort(chosen.begin(), chosen.end());
  for (int k = 0; k < p.shape.width; ++k)
    p.topk_at(g, t, k) = k < static_cast<int>(chosen.size()) ? chosen[static_cast<std::size_t>(k)] : -1;
}

// Rows from an arbitrary producer: -1 anywhere, valid blocks, duplicates, future blocks, blocks
// past the sequence, INT32_MAX / INT32_MIN and other negatives, all-(-1) rows, and some rows
// in the producer's format.
void fill_random_topk(Problem& p, std::mt19937_64& rng) {
  const SlcPlanShape& s = p.shape;
  std::uniform_int_distribution<int> percent(0, 99);
  for (int g = 0; g < s.heads_kv; ++g) {
    for (int b = 0; b < s.num_seqs; ++b) {
      const std::int64_t start = p.cu_at(b), n = p.cu_at(b + 1) - start;
      const std::int64_t nblk = blocks_of(n, s.block_size);
      for (std::int64_t t = start; t < start + n; ++t) {
        const std::int64_t bq = (t - start) / s.block_size;
        const int row_kind = percent(rng);
        if (row_kind < 5) {
          for (int k = 0; k < s.width; ++k) p.topk_at(g, t, k) = -1;
          continue;
        }
        if (row_kind < 30) {
          fill_selection_row(p, g, t, bq, rng);
          continue;
        }
        auto in = [&rng](std::int64_t lo, std::int64_t hi) {
          return static_cast<std::int32_t>(std::uniform_int_distribution<std::int64_t>(lo, hi)(rng));
        };
        for (int k = 0; k < s.width; ++k) {
          const int kind = percent(rng);
          std::int32_t j = -1;
          if (kind < 20) j = -1;
          else if (kind < 55) j = in(0, bq);
          else if (kind < 70) j = k > 0 ? p.topk_at(g, t, in(0, k - 1)) : in(0, bq);
          else if (kind < 80) j = in(bq + 1, nblk + 1);
          else if (kind < 85) j = INT32_MAX;
          else if (kind < 88) j = INT32_MIN;
          else if (kind < 93) j = in(-1000, -2);
          else j = in(nblk, nblk + 1000);
          p.topk_at(g, t, k) = j;
        }
      }
    }
  }
}

// The plan's buffers are 256-byte aligned (but sparse.count, which follows kept.count in one
// buffer), disjoint, inside the workspace, and nothing else is in it. Without the split the two
// views' tables are the same arrays: the plan costs what it did before the views.
// Rows of a local selection pattern: besides the forced blocks (0, bq - 1, bq), each token of a
// query tile picks each of a few blocks its tile shares with probability 3/4, so that many
// (tile, block) pairs are dense. Ascending, padded with -1; every tenth row ends in a duplicate.
void fill_local_topk(Problem& p, std::mt19937_64& rng) {
  const SlcPlanShape& s = p.shape;
  for (int g = 0; g < s.heads_kv; ++g) {
    for (int b = 0; b < s.num_seqs; ++b) {
      const std::int64_t start = p.cu_at(b), n = p.cu_at(b + 1) - start;
      for (std::int64_t tile = 0; tile < blocks_of(n, s.block_size); ++tile) {
        std::vector<std::int32_t> shared;
        for (std::int32_t j = 0; j <= tile; ++j)
          if (rng() % 3 == 0) shared.push_back(j);
        for (std::int64_t t = start + tile * s.block_size; t < std::min(start + n, start + (tile + 1) * s.block_size);
             ++t) {
          std::vector<std::int32_t> chosen = {0, static_cast<std::int32_t>(tile)};
          if (tile >= 1) chosen.push_back(static_cast<std::int32_t>(tile - 1));
          for (const std::int32_t j : shared)
            if (rng() % 4 != 0) chosen.push_back(j);
          std::sort(chosen.begin(), chosen.end());
          chosen.erase(std::unique(chosen.begin(), chosen.end()), chosen.end());
          chosen.resize(std::min<std::size_t>(chosen.size(), static_cast<std::size_t>(s.width)));
          for (int k = 0; k < s.width; ++k)
            p.topk_at(g, t, k) = k < static_cast<int>(chosen.size()) ? chosen[static_cast<std::size_t>(k)] : -1;
          if (t % 10 == 0 && s.width >= 2) p.topk_at(g, t, s.width - 1) = chosen[0];
        }
      }
    }
  }
}

TEST_F(SlcPlanGpu, LayoutIsAlignedAndDisjoint) {
  for (const auto [threshold, sorted] : {std::pair{0, false}, {0, true}, {16, false}, {16, true}}) {
    SlcPlanShape s;
    s.tokens = 1000;
    s.num_seqs = 7;
    s.heads_kv = 3;
    s.group = 5;
    s.width = 13;
    s.block_size = 64;
    s.dense_threshold = threshold;
    s.sorted_lists = sorted;
    const bool split = threshold > 0;
    const std::string where = "threshold=" + std::to_string(threshold) + " sorted=" + std::to_string(sorted);
    const std::size_t bytes = cuda::slc_plan_workspace_bytes(s);
    DeviceBuffer<unsigned char> workspace(bytes);
    const unsigned char* base = workspace.get();
    const SlcPlan plan = cuda::slc_plan_layout(s, workspace.get());
    EXPECT_GT(plan.scan_temp_bytes, 0u) << where;
    // The fields the kernels read are the views' to set.
    EXPECT_EQ(plan.pair_count, nullptr) << where;
    EXPECT_EQ(plan.unit_offsets, nullptr) << where;
    EXPECT_EQ(plan.unit_list, nullptr) << where;
    EXPECT_EQ(plan.slot_mask, nullptr) << where;
    const auto lists = static_cast<std::size_t>(s.num_lists());
    const auto pairs = static_cast<std::size_t>(s.max_pairs());
    const auto units = static_cast<std::size_t>(s.max_units());
    const auto rows = static_cast<std::size_t>(s.heads_kv * s.tokens);
    const auto dense = lists * static_cast<std::size_t>(s.dense_capacity());
    struct Piece {
      const void* begin;
      std::size_t bytes;
    };
    std::vector<Piece> pieces = {
        {plan.block_offsets, (s.num_seqs + 1) * sizeof(std::int32_t)},
        {plan.kept.count, (split ? 2 : 1) * lists * sizeof(std::int32_t)},
        {plan.pair_offsets, (lists + 1) * sizeof(std::int32_t)},
        {plan.kept.unit_offsets, (lists + 1) * sizeof(std::int32_t)},
        {plan.kept.unit_list, units * sizeof(std::int32_t)},
        {plan.kept.slot_mask, rows * sizeof(std::uint64_t)},
        {plan.pair_rank, pairs * sizeof(std::int32_t)},
        {plan.pair_token, pairs * sizeof(std::int32_t)},
        {plan.pair_slot, pairs},
        {plan.scan_temp, plan.scan_temp_bytes},
    };
    if (split) {
      EXPECT_EQ(plan.sparse.count, plan.kept.count + s.num_lists()) << where;
      pieces.insert(pieces.end(), {{plan.sparse.unit_offsets, (lists + 1) * sizeof(std::int32_t)},
                                   {plan.sparse.unit_list, units * sizeof(std::int32_t)},
                                   {plan.sparse.slot_mask, rows * sizeof(std::uint64_t)},
                                   {plan.dense_count, lists * sizeof(std::int32_t)},
                                   {plan.dense_block, dense * sizeof(std::int32_t)},
                                   {plan.dense_tokens, dense * SlcPlanShape::kMaskWords * sizeof(std::uint32_t)},
                                   {plan.dense_slots, rows * sizeof(std::uint64_t)}});
    } else {
      EXPECT_EQ(plan.sparse.count, plan.kept.count) << where;
      EXPECT_EQ(plan.sparse.unit_offsets, plan.kept.unit_offsets) << where;
      EXPECT_EQ(plan.sparse.unit_list, plan.kept.unit_list) << where;
      EXPECT_EQ(plan.sparse.slot_mask, plan.kept.slot_mask) << where;
    }
    if (sorted) {
      EXPECT_GT(plan.sort_temp_bytes, 0u) << where;
      pieces.insert(pieces.end(), {{plan.fill_token, pairs * sizeof(std::int32_t)},
                                   {plan.fill_slot, pairs},
                                   {plan.sort_temp, plan.sort_temp_bytes}});
    }
    std::sort(pieces.begin(), pieces.end(),
              [](const Piece& a, const Piece& b) { return std::less<const void*>()(a.begin, b.begin); });
    std::size_t used = 0;
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      const auto at = static_cast<std::size_t>(static_cast<const unsigned char*>(pieces[i].begin) - base);
      EXPECT_EQ(at % 256, 0u) << where << ": piece at offset " << at;
      const std::size_t end = at + pieces[i].bytes;
      const std::size_t limit =
          i + 1 < pieces.size()
              ? static_cast<std::size_t>(static_cast<const unsigned char*>(pieces[i + 1].begin) - base)
              : bytes;
      EXPECT_LE(end, limit) << where << ": piece at offset " << at << " overlaps the next or runs past the workspace";
      used += (pieces[i].bytes + 255) / 256 * 256;
    }
    EXPECT_EQ(used, bytes) << where << ": the workspace holds more than the plan's buffers";
  }
}

// Rows checked by hand (B = 64, one sequence of 200 tokens: nblk = 4, max_blocks = 5).
TEST_F(SlcPlanGpu, HandWrittenRows) {
  Problem p = make_problem({200}, 1, 1, 6, 64);
  const std::vector<std::pair<std::int64_t, std::vector<std::int32_t>>> rows = {
      {150, {2, -1, 0, 2, 5, 0}},                 // bq 2: pairs at k 0 and 2; then a dup, a future block, a dup
      {199, {3, INT32_MAX, 1, INT32_MIN, 3, 4}},  // bq 3: pairs at k 0 and 2; block 4 is past nblk
      {10, {0, 0, 0, 0, 0, 0}},                   // the first occurrence only
      {64, {-1, -1, -1, -1, -1, 1}},              // -1 before the only pair
      {63, {1, -1, -1, -1, -1, -1}},              // block 1 is future for the last token of block 0
  };
  for (const auto& [t, values] : rows) {
    for (int k = 0; k < 6; ++k) p.topk_at(0, t, k) = values[static_cast<std::size_t>(k)];
  }
  const ExpectedPlan e = expected_plan(p);
  EXPECT_EQ(e.kept.slot_mask[150], 0b000101u);
  EXPECT_EQ(e.kept.slot_mask[199], 0b000101u);
  EXPECT_EQ(e.kept.slot_mask[10], 0b000001u);
  EXPECT_EQ(e.kept.slot_mask[64], 0b100000u);
  EXPECT_EQ(e.kept.slot_mask[63], 0u);
  EXPECT_EQ(e.pair_offsets, (std::vector<std::int32_t>{0, 2, 4, 5, 6, 6}));
  EXPECT_EQ(e.kept.unit_offsets, (std::vector<std::int32_t>{0, 1, 2, 3, 4, 4}));
  EXPECT_EQ(e.sparse_lists[1], (ListEntries{{64, 5}, {199, 2}}));
  EXPECT_EQ(e.sparse.slot_mask, e.kept.slot_mask);  // no split: the views are the same
  EXPECT_TRUE(e.dense_lists[1].empty());
  build_and_check(p, "hand-written rows");
}

// Packed batches with empty, length-1 and ragged sequences over the block sizes of section 0, group
// sizes and widths, with strided inputs and random rows of every kind.
TEST_F(SlcPlanGpu, RandomRowsMatchHostPlan) {
  auto rng = rng_for_test();
  for (const int block_size : {32, 64, 128}) {
    for (const int group : {1, 3, 16}) {
      for (const int width : {1, 16, 64}) {
        std::vector<std::int32_t> lengths = {0, 1, 2 * block_size + 5, 0, 3 * block_size, 7, 1, block_size - 1,
                                             block_size + 1};
        std::uniform_int_distribution<std::int32_t> length(0, 4 * block_size);
        for (int i = 0; i < 5; ++i) lengths.push_back(length(rng));
        lengths.push_back(0);
        std::shuffle(lengths.begin() + 1, lengths.end() - 1, rng);  // keep a leading and a trailing empty one
        const int heads_kv = std::uniform_int_distribution<int>(1, 3)(rng);
        const int spare_tokens = (block_size + group + width) % 3;
        const int row_padding = width % 2 == 0 ? 3 : 0;
        const std::int64_t cu_stride = group == 3 ? 2 : 1;
        Problem p = make_problem(lengths, heads_kv, group, width, block_size, spare_tokens, row_padding, cu_stride);
        fill_random_topk(p, rng);
        build_and_check(p, describe(p));
        if (HasFailure()) return;
      }
    }
  }
}

// The dense/sparse split over the same kinds of batches: every pair dense (1), thresholds that
// split real tiles, and none dense (above B), for every sort width (block size x row width).
TEST_F(SlcPlanGpu, SplitMatchesHostPlan) {
  auto rng = rng_for_test();
  for (const int block_size : {32, 64, 128}) {
    for (const int width : {1, 5, 16, 64}) {
      for (const auto [threshold, min_dense] :
           {std::pair{1, 1}, {3, 1}, {3, 4}, {block_size / 4, 1}, {block_size / 4, 4}, {block_size + 1, 1}}) {
        std::vector<std::int32_t> lengths = {0, 1, 2 * block_size + 5, 3 * block_size, 7, block_size + 1};
        std::uniform_int_distribution<std::int32_t> length(0, 6 * block_size);
        for (int i = 0; i < 3; ++i) lengths.push_back(length(rng));
        Problem p = make_problem(lengths, 2, 4, width, block_size, /*spare_tokens=*/2, width % 2 == 0 ? 3 : 0);
        p.shape.dense_threshold = threshold;
        p.shape.min_dense_blocks = min_dense;
        fill_random_topk(p, rng);
        build_and_check(p, describe(p));
        if (HasFailure()) return;
      }
    }
  }
}

// More sequences than the block-offset CTA has threads (its carry across chunks), and lists far
// longer than a warp or a work unit: every token selects block 0 and its own block.
TEST_F(SlcPlanGpu, ManySequencesAndLongLists) {
  auto rng = rng_for_test();
  std::vector<std::int32_t> lengths(600);
  std::uniform_int_distribution<std::int32_t> length(0, 300);
  for (auto& l : lengths) l = length(rng);
  Problem many = make_problem(lengths, 2, 16, 16, 64);
  fill_random_topk(many, rng);
  build_and_check(many, "600 sequences: " + describe(many));

  Problem one_long = make_problem({20000}, 2, 16, 16, 32);
  for (int g = 0; g < 2; ++g) {
    for (std::int64_t t = 0; t < 20000; ++t) fill_selection_row(one_long, g, t, t / 32, rng);
  }
  build_and_check(one_long, "one long sequence: " + describe(one_long));
}

// The deterministic backward's plan: the same lists, each in ascending token order (with the
// split each list's sparse part and its dense part), on packed batches with empty sequences and on
// lists far longer than a CTA's sort tile.
TEST_F(SlcPlanGpu, SortedListsMatchHostPlan) {
  auto rng = rng_for_test();
  for (const int block_size : {32, 64, 128}) {
    for (const int width : {1, 16, 64}) {
      for (const int threshold : {0, 3}) {
        Problem p = make_problem({0, 1, 2 * block_size + 5, 0, 3 * block_size, 7, block_size + 1, 0}, 2, 3, width,
                                 block_size, /*spare_tokens=*/1);
        p.shape.sorted_lists = true;
        p.shape.dense_threshold = threshold;
        fill_random_topk(p, rng);
        build_and_check(p, "sorted lists: " + describe(p));
        if (HasFailure()) return;
      }
    }
  }
  for (const int threshold : {0, 16}) {
    Problem one_long = make_problem({20000}, 2, 4, 16, 64);
    one_long.shape.sorted_lists = true;
    one_long.shape.dense_threshold = threshold;
    if (threshold > 0) {
      fill_local_topk(one_long, rng);
    } else {
      for (int g = 0; g < 2; ++g) {
        for (std::int64_t t = 0; t < 20000; ++t) fill_selection_row(one_long, g, t, t / 64, rng);
      }
    }
    build_and_check(one_long, "sorted lists, one long sequence: " + describe(one_long));
  }
}

// One plan serves both passes: the split plan's backward view walks the pairs of the plan without
// the split (the backward's own plan before the views): the same list offsets, list sizes, unit
// tables and slot masks, and each list the same entries; with sorted_lists its two sorted parts
// merge into the no-split plan's sorted list, and a rebuild gives the same CSR bit for bit (every
// sum over a list's rows keeps its order from run to run).
TEST_F(SlcPlanGpu, SplitBackwardViewMatchesNoSplitPlan) {
  auto rng = rng_for_test();
  for (const bool sorted : {false, true}) {
    for (const int block_size : {32, 64, 128}) {
      Problem no_split = make_problem({0, 1, 3 * block_size + 5, 7, 4 * block_size, block_size + 1}, 2, 4, 16,
                                      block_size, /*spare_tokens=*/1, /*row_padding=*/3);
      no_split.shape.sorted_lists = sorted;
      fill_local_topk(no_split, rng);
      Problem split = no_split;
      split.shape.dense_threshold = block_size / 4;
      const std::string where = std::string(sorted ? "sorted, " : "") + describe(split);
      DevicePlan reference(no_split), d(split);
      reference.poison(nullptr);
      d.poison(nullptr);
      FSA_ASSERT_OK(cuda::build_slc_plan(reference.plan(), reference.inputs(), nullptr));
      FSA_ASSERT_OK(cuda::build_slc_plan(d.plan(), d.inputs(), nullptr));
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << where;
      const HostPlan want = download_plan(reference.plan()), got = download_plan(d.plan());
      check_plan(split, got, where);
      if (HasFailure()) return;

      expect_same("pair_offsets", got.pair_offsets, want.pair_offsets, where);
      expect_same("pair_count", got.backward.pair_count, want.backward.pair_count, where);
      expect_same("unit_offsets", got.backward.unit_offsets, want.backward.unit_offsets, where);
      const auto units = static_cast<std::size_t>(want.backward.unit_offsets.back());  // the rest is never read
      expect_same("unit_list", prefix(got.backward.unit_list, units), prefix(want.backward.unit_list, units), where);
      expect_same("slot_mask", got.backward.slot_mask, want.backward.slot_mask, where);
      std::int64_t dense_pairs = 0;
      std::size_t bad_lists = 0;
      for (std::size_t list = 0; list + 1 < want.pair_offsets.size(); ++list) {
        const std::int64_t begin = want.pair_offsets[list], end = want.pair_offsets[list + 1];
        const std::int64_t middle = begin + got.forward.pair_count[list];
        dense_pairs += end - middle;
        ListEntries mine = entries_of(got, begin, end), theirs = entries_of(want, begin, end);
        if (sorted) {
          // The sorted sparse and dense parts merge into the no-split plan's (sorted) list.
          ListEntries merged;
          std::merge(mine.begin(), mine.begin() + (middle - begin), mine.begin() + (middle - begin), mine.end(),
                     std::back_inserter(merged));
          mine = merged;
        } else {
          std::sort(mine.begin(), mine.end());
          std::sort(theirs.begin(), theirs.end());
        }
        if (mine != theirs && bad_lists++ == 0)
          ADD_FAILURE() << where << ": list " << list << " holds other entries than the no-split plan's";
      }
      EXPECT_EQ(bad_lists, 0u) << where;
      EXPECT_GT(dense_pairs, 0) << where << ": no dense pair, the test checks nothing of the split";

      if (sorted) {
        d.poison(nullptr);
        FSA_ASSERT_OK(cuda::build_slc_plan(d.plan(), d.inputs(), nullptr));
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << where;
        const HostPlan again = download_plan(d.plan());
        const auto used = static_cast<std::size_t>(got.pair_offsets.back());
        expect_same("pair_token (rebuilt)", prefix(again.pair_token, used), prefix(got.pair_token, used), where);
        expect_same("pair_slot (rebuilt)", prefix(again.pair_slot, used), prefix(got.pair_slot, used), where);
      }
      if (HasFailure()) return;
    }
  }
}

// Shapes with nothing to do still give consistent offsets (all zero).
TEST_F(SlcPlanGpu, EmptyShapes) {
  build_and_check(make_problem({}, 2, 4, 16, 64), "no sequences");
  build_and_check(make_problem({0, 0, 0}, 2, 4, 16, 64), "only empty sequences");
  build_and_check(make_problem({}, 2, 4, 16, 64, 5), "no sequences, 5 spare tokens");
  Problem no_width = make_problem({70, 3}, 2, 4, 0, 64);
  build_and_check(no_width, "width 0");
}

TEST_F(SlcPlanGpu, RejectsRowsWiderThanTheSlotMask) {
  Problem p = make_problem({10}, 1, 1, SlcPlanShape::kMaxWidth + 1, 64);
  DevicePlan d(p);
  const Status s = cuda::build_slc_plan(d.plan(), d.inputs(), nullptr);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  EXPECT_NE(s.message().find("width"), std::string::npos) << s.to_string();
}

// The builder only enqueues work on its stream, so it can be captured into a CUDA graph; replaying
// the graph after new topk values are uploaded builds the plan of the new values. With the split
// the plan is also sorted, so the graph holds every step (the third scan, the two-part sort).
void capture_and_replay(bool split) {
  auto rng = rng_for_test(split ? 1 : 0);
  Problem p = make_problem({300, 0, 1, 129, 64}, 2, 3, 16, 64);
  if (split) {
    p.shape.dense_threshold = 8;
    p.shape.sorted_lists = true;
  }
  auto fill = [&] {
    if (split) fill_local_topk(p, rng);
    else fill_random_topk(p, rng);
  };
  fill();
  DevicePlan d(p);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  FSA_EXPECT_OK(cuda::build_slc_plan(d.plan(), d.inputs(), stream));
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 2; ++replay) {
    if (replay > 0) {
      fill();
      d.upload_topk(p);
    }
    d.poison(stream);
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    check_plan(p, download_plan(d.plan()), "graph replay " + std::to_string(replay) + ": " + describe(p));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST_F(SlcPlanGpu, GraphCaptureAndReplay) {
  for (const bool split : {false, true}) {
    capture_and_replay(split);
    if (HasFailure()) return;
  }
}

}  // namespace
}  // namespace fsa::test
