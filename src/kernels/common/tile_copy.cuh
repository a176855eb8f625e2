// Global -> shared tile copies with cp.async (sm80+): 16-byte vectors, rows padded in shared
// memory, rows without a source zero-filled (padding rows must hold zeros, not stale data: they
// meet zero probabilities or zero weights in the MMAs, and 0 * NaN would poison the sums).
#pragma once

#include <cuda_pipeline_primitives.h>

#include <cstddef>
#include <cstdint>

namespace fsa::cuda::common {

// Shared rows are padded by 8 16-bit elements (16 bytes) so that consecutive rows start in
// different banks; ldmatrix needs 16-byte aligned rows, which this padding keeps.
constexpr int kPadHalf = 8;

__host__ __device__ constexpr std::size_t align_up(std::size_t bytes, std::size_t to = 128) {
  return (bytes + to - 1) / to * to;
}

__device__ __forceinline__ void cp_async_16(void* shared_dst, const void* global_src) {
  __pipeline_memcpy_async(shared_dst, global_src, 16);
}
// A 4-byte scalar (a row's lse or delta) copied with the same groups as the rows it belongs to.
__device__ __forceinline__ void cp_async_4(void* shared_dst, const void* global_src) {
  __pipeline_memcpy_async(shared_dst, global_src, 4);
}
__device__ __forceinline__ void cp_async_commit() { __pipeline_commit(); }
// Waits until at most `kPending` of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  __pipeline_wait_prior(kPending);
}

// Issues the copies of a [kRows x kCols] tile of 16-bit elements into shared rows of leading
// dimension `ld`: row r comes from source(r) (a pointer to its first element), zero-filled where
// source(r) is null. All threads of the CTA (kThreads) take part; the caller commits, waits and
// synchronises before reading.
template <int kRows, int kCols, int kThreads, class Element, class Source>
__device__ __forceinline__ void copy_tile_async(Element* dst, int ld, Source source) {
  static_assert(sizeof(Element) == 2, "16-bit elements");
  constexpr int kVectors = kCols * 2 / 16;
  static_assert(kCols % 8 == 0, "rows are whole 16-byte vectors");
  for (int idx = threadIdx.x; idx < kRows * kVectors; idx += kThreads) {
    const int row = idx / kVectors, vec = idx % kVectors;
    const Element* src = source(row);
    uint4* to = reinterpret_cast<uint4*>(dst + row * ld) + vec;
    if (src != nullptr) {
      cp_async_16(to, reinterpret_cast<const uint4*>(src) + vec);
    } else {
      *to = make_uint4(0, 0, 0, 0);
    }
  }
}

// Last index i in [0, count) with values[i * stride] <= key, for a non-decreasing array whose
// first value is <= key: the sequence of a packed row (the last of several equal offsets is the
// non-empty sequence that holds the row).
__device__ __forceinline__ int last_at_or_below(const std::int32_t* values, std::int64_t stride, int count,
                                                long long key) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (values[mid * stride] <= key) lo = mid; else hi = mid - 1;
  }
  return lo;
}

}  // namespace fsa::cuda::common
