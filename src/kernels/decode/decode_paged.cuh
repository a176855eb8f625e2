// Device-side addressing of the paged cache and of the batch: where token p of sequence b lives in
// a pool (common/paged_pool.cuh: every table entry bounds-checked), gathered copies of its rows,
// and what a sequence's lengths are.
#pragma once

#include <cstdint>

#include "kernels/common/mma_sm80.cuh"
#include "kernels/common/paged_pool.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/decode/decode_params.hpp"

namespace fsa::cuda::decode {

using common::locate;
using common::PageRow;
using common::pool_row;

// A tile of kRows gathered rows (K or V of a key tile, kCols columns) into shared rows of leading
// dimension `ld`: row r from src[r] (resolved once per tile), zero-filled where src[r] is null by a
// cp.async of source size 0, which reads nothing (its address, null plus the vector's offset, is
// never dereferenced, as in CUTLASS's zero-fill copies), by the kThreads threads numbered `thread`
// (the CTA's, or one warp's lanes). Each thread keeps one 16-byte column of the rows it copies: a
// pointer load, a null test and the copy per vector, no index arithmetic or branch, the loop
// unrolled (a select of a valid stand-in address per vector cost four moves more), every pointer
// loaded before the first copy: ptxas puts three no-op shared loads between a shared load and a
// following cp.async, so a pointer load before each copy cost three more instructions a vector and
// a shared-memory round trip in series with each copy. Other shapes (a
// row of Dqk = 192 over a warp) index each vector. (Rows without a page read from one shared zero
// row in device memory instead measured 10-40% slower decode steps on an H100: every CTA's padding
// rows, such as the selected branch's block past the cache's end, then hit the same L2 lines.)
template <int kRows, int kCols, int kThreads, class Element>
__device__ __forceinline__ void copy_rows_async(Element* dst, int ld, const Element* const* src,
                                                int thread = static_cast<int>(threadIdx.x)) {
  constexpr int kVectors = kCols / 8;
  auto copy = [&](const Element* from, int vec, std::uint32_t to) {
    const std::uint64_t address = reinterpret_cast<std::uint64_t>(from) + static_cast<std::uint64_t>(vec) * 16;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(to), "l"(address),
                 "r"(from != nullptr ? 16 : 0)
                 : "memory");
  };
  if constexpr (kThreads % kVectors == 0 && kRows % (kThreads / kVectors) == 0) {
    constexpr int kRowStep = kThreads / kVectors;
    const int vec = thread % kVectors, row0 = thread / kVectors;
    const std::uint32_t to = mma::shared_address(dst + row0 * ld + vec * 8);
    const Element* from[kRows / kRowStep];
#pragma unroll
    for (int i = 0; i < kRows / kRowStep; ++i) from[i] = src[row0 + i * kRowStep];
#pragma unroll
    for (int i = 0; i < kRows / kRowStep; ++i) copy(from[i], vec, to + i * kRowStep * ld * 2);
  } else {
    for (int idx = thread; idx < kRows * kVectors; idx += kThreads) {
      const int row = idx / kVectors, vec = idx % kVectors;
      copy(src[row], vec, mma::shared_address(dst + row * ld + vec * 8));
    }
  }
}

// Sequence b of the batch: its first row in the packed chunk, its new tokens and its cached tokens
// (a negative cache length, a caller error, counts as 0).
struct SeqInfo {
  long long row0, new_tokens, cached;
};

__device__ __forceinline__ SeqInfo seq_info(const BatchInfo& batch, int b) {
  const long long row0 = batch.cu_seqlens[b * batch.cu_stride];
  const long long end = batch.cu_seqlens[(b + 1) * batch.cu_stride];
  const long long cached = batch.cache_seqlens[b * batch.cache_stride];
  return {row0, end > row0 ? end - row0 : 0, cached > 0 ? cached : 0};
}

// The sequence holding packed row `row`, or -1 for a row past the last sequence.
__device__ __forceinline__ int seq_of_row(const std::int32_t* offsets, std::int64_t stride, int num_seqs,
                                          long long row) {
  if (num_seqs <= 0 || row >= offsets[num_seqs * stride]) return -1;
  return common::last_at_or_below(offsets, stride, num_seqs, row);
}

}  // namespace fsa::cuda::decode
