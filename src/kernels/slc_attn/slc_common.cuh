// Device helpers shared by the selected-attention kernels: element conversion, plan lookups
// and the shared-memory tile geometry of the WMMA (tensor-core) kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline_primitives.h>

#include <cstdint>
#include <type_traits>

#include "kernels/common/convert.cuh"
#include "kernels/common/paged_pool.cuh"
#include "kernels/slc_attn/slc_params.hpp"
#include "kernels/slc_attn/slc_plan.hpp"

namespace fsa::cuda::slc {

using common::Convert;  // fp32 <-> bf16/fp16, shared with the other kernel families

// Last index i in [0, count) with values[i] <= key, for a non-decreasing array whose first value
// is <= key. Used to map a work unit to its list and a global block to its sequence.
__device__ __forceinline__ int upper_index(const std::int32_t* values, std::int64_t stride, int count, long long key) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (values[mid * stride] <= key) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Entry k of a topk row when it counts in the row's set of blocks: in [0, last_block] (the token's
// own block) and the first occurrence of its value in the row; -1 otherwise (negative, future,
// out-of-range or a duplicate: docs/semantics.md section 5).
__device__ __forceinline__ std::int32_t counted_entry(const std::int32_t* row, int k, int last_block) {
  const std::int32_t j = row[k];
  if (j < 0 || j > last_block) return -1;
  for (int earlier = 0; earlier < k; ++earlier)
    if (row[earlier] == j) return -1;
  return j;
}

// P_b: the keys of sequence b before its queries (0 without a prefix).
__device__ __forceinline__ long long key_prefix_of(const SlcKeyPrefix& prefix, int b) {
  return prefix.key_prefix != nullptr ? prefix.key_prefix[b * prefix.stride] : 0;
}

// Where a work unit of a KV-outer kernel works: its list, kv head, key block and rows.
struct UnitWork {
  int list;            // s = g * max_blocks + gb
  int kv_head;         // g
  int seq;             // b
  int block;           // j, local to the sequence
  // cu[b] - P_b: query token t is at position t - seq_start, and (unpaged keys) key position r is
  // row seq_start + r of k / v.
  long long seq_start;
  int seq_len;         // keys of the sequence: P_b + n_b
  int keys;            // valid keys of the block: min(B, seq_len - j*B)
  int row_begin, row_end;  // rows r of the list: entry r / G, head g*G + r % G
  int pair_base;       // pair_offsets[s]
};

// Returns false when the unit index is past the plan's units (the grid is sized by a bound).
// kPrefix: read in.prefix (the forward's; the backward never has keys before its queries and
// skips the load).
template <bool kPrefix>
__device__ __forceinline__ bool find_unit(const SlcPlan& plan, const SlcTensors& in, long long unit, UnitWork* w) {
  const int lists = static_cast<int>(plan.shape.num_lists());
  if (unit >= plan.unit_offsets[lists]) return false;
  const int s = plan.unit_list[unit];
  const int max_blocks = static_cast<int>(plan.shape.max_blocks());
  const int gb = s % max_blocks;
  const int b = upper_index(plan.block_offsets, 1, plan.shape.num_seqs, gb);
  const int B = plan.shape.block_size;
  const long long prefix = kPrefix ? key_prefix_of(in.prefix, b) : 0;
  w->list = s;
  w->kv_head = s / max_blocks;
  w->seq = b;
  w->block = gb - plan.block_offsets[b];
  w->seq_start = in.cu_seqlens[b * in.cu_stride] - prefix;
  w->seq_len = static_cast<int>(in.cu_seqlens[(b + 1) * in.cu_stride] - w->seq_start);
  w->keys = min(B, w->seq_len - w->block * B);
  w->row_begin = static_cast<int>(unit - plan.unit_offsets[s]) * SlcPlanShape::kRowsPerUnit;
  w->row_end = min(w->row_begin + SlcPlanShape::kRowsPerUnit, plan.pair_count[s] * plan.shape.group);
  w->pair_base = plan.pair_offsets[s];
  return true;
}

// The first key (or value) row of the unit's block, at its kv head: row seq_start + j*B of `rows`,
// or with paged keys (`pool`, in.pages.k or .v) row (j*B) % page_size of the page that holds the
// block (a block never crosses a page), null where the table has no valid page for it. Its rows
// follow at token_stride either way.
template <class Element>
__device__ __forceinline__ const Element* block_rows(const SlcTensors& in, const UnitWork& w, int B, const void* rows,
                                                     long long token_stride, long long head_stride,
                                                     const common::PagedPool& pool) {
  const long long first = static_cast<long long>(w.block) * B;
  if (in.pages.table.data == nullptr)
    return static_cast<const Element*>(rows) + w.kv_head * head_stride + (w.seq_start + first) * token_stride;
  return common::pool_row<const Element>(pool, common::locate(in.pages.table, pool, w.seq, first), w.kv_head);
}

// Asynchronous 16-byte global -> shared copies (cp.async, sm80+): a thread issues all its copies
// before any completes, instead of one load round trip per vector, and no register holds the data.
// Each thread calls cp_async_wait_all() after its copies, and the CTA synchronises before reading.
__device__ __forceinline__ void cp_async_16(void* shared_dst, const void* global_src) {
  __pipeline_memcpy_async(shared_dst, global_src, 16);
}
__device__ __forceinline__ void cp_async_wait_all() {
  __pipeline_commit();
  __pipeline_wait_prior(0);
}
// Pipelined use: close the thread's current group of copies (possibly empty, so that every thread
// counts the same groups), and wait until at most `kPending` of the thread's groups are in flight.
__device__ __forceinline__ void cp_async_commit() { __pipeline_commit(); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  __pipeline_wait_prior(kPending);
}

// Issues cp.async copies of `count` rows of `dim` elements (16-byte vectors) from global rows into
// shared rows of leading dimension `ld`; rows whose source is null are zero-filled. The caller waits
// (cp_async_wait_all) and synchronises the CTA before reading.
template <class Element, int kDim>
__device__ __forceinline__ void issue_rows(Element* dst, int ld, int count, const Element* const* sources) {
  constexpr int kVectors = kDim * static_cast<int>(sizeof(Element)) / 16;
  for (int idx = threadIdx.x; idx < count * kVectors; idx += blockDim.x) {
    const int row = idx / kVectors, vec = idx % kVectors;
    const Element* src = sources[row];
    uint4* to = reinterpret_cast<uint4*>(dst + row * ld) + vec;
    if (src != nullptr) {
      cp_async_16(to, reinterpret_cast<const uint4*>(src) + vec);
    } else {
      *to = make_uint4(0, 0, 0, 0);
    }
  }
}

// cp.async copies of rows [0, valid) of a strided global matrix into shared rows of `ld`
// elements; rows [valid, count), or every row for a null src (a block without a page), are
// zero-filled so that masked keys never multiply garbage.
template <class Element, int kDim, int kThreads>
__device__ __forceinline__ void issue_strided_rows(Element* dst, int ld, int count, int valid, const Element* src,
                                                   long long stride) {
  constexpr int kVectors = kDim * static_cast<int>(sizeof(Element)) / 16;
  for (int idx = threadIdx.x; idx < count * kVectors; idx += kThreads) {
    const int row = idx / kVectors, vec = idx % kVectors;
    uint4* to = reinterpret_cast<uint4*>(dst + row * ld) + vec;
    if (row < valid && src != nullptr) {
      cp_async_16(to, reinterpret_cast<const uint4*>(src + row * stride) + vec);
    } else {
      *to = make_uint4(0, 0, 0, 0);
    }
  }
}

// kCount contiguous 16-bit elements (kCount in {2, 4, 8}: one 4, 8 or 16-byte access) to floats
// and back. The pointer must be aligned to the vector.
template <class Element, int kCount>
__device__ __forceinline__ void load_vector(const Element* src, float (&out)[kCount]) {
  static_assert(kCount == 2 || kCount == 4 || kCount == 8, "4, 8 or 16-byte vectors");
  using Vector = std::conditional_t<kCount == 2, unsigned, std::conditional_t<kCount == 4, uint2, uint4>>;
  const Vector raw = *reinterpret_cast<const Vector*>(src);
  const auto* elements = reinterpret_cast<const Element*>(&raw);
#pragma unroll
  for (int c = 0; c < kCount; ++c) out[c] = Convert<Element>::to_float(elements[c]);
}
template <class Element, int kCount>
__device__ __forceinline__ void store_vector(Element* dst, const float (&in)[kCount]) {
  static_assert(kCount == 2 || kCount == 4 || kCount == 8, "4, 8 or 16-byte vectors");
  using Vector = std::conditional_t<kCount == 2, unsigned, std::conditional_t<kCount == 4, uint2, uint4>>;
  Vector raw;
  auto* elements = reinterpret_cast<Element*>(&raw);
#pragma unroll
  for (int c = 0; c < kCount; ++c) elements[c] = Convert<Element>::from_float(in[c]);
  *reinterpret_cast<Vector*>(dst) = raw;
}

// Shared-memory rows are padded by 8 16-bit elements (16 bytes) so that consecutive rows start in
// different banks; WMMA needs leading dimensions that are multiples of 8 16-bit elements and
// 32-byte aligned fragment pointers, and ldmatrix 16-byte aligned rows, which this padding keeps.
constexpr int kPadHalf = 8;

__host__ __device__ constexpr std::size_t align_up(std::size_t bytes, std::size_t to = 128) {
  return (bytes + to - 1) / to * to;
}

}  // namespace fsa::cuda::slc
