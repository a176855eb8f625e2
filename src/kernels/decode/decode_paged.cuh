// Device-side addressing of the paged cache and of the batch: where token p of sequence b lives in
// a pool (common/paged_pool.cuh: every table entry bounds-checked), gathered copies of its rows,
// and what a sequence's lengths are.
#pragma once

#include <cstdint>
#include <utility>

#include "kernels/common/mma_sm80.cuh"
#include "kernels/common/paged_pool.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/decode/decode_params.hpp"

namespace fsa::cuda::decode {

using common::locate;
using common::PageRow;
using common::pool_row;

// One 16-byte vector at byte `kOffset` past `address` to shared address `to`, or zeros where
// `valid` is false (source size 0: nothing is read); the offset is an immediate of the
// instruction, so a row's vectors share one address register.
template <int kOffset>
__device__ __forceinline__ void copy_row_vector_async(std::uint32_t to, std::uint64_t address, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1 + %2], 16, %3;\n" ::"r"(to), "l"(address), "n"(kOffset),
               "r"(valid ? 16 : 0)
               : "memory");
}

// A tile of kRows gathered rows (K or V of a key tile, kCols columns) into shared rows of leading
// dimension `ld`: row r from src[r] (resolved once per tile), zero-filled where src[r] is null by a
// cp.async of source size 0, which reads nothing (its address, null plus the vector's offset, is
// never dereferenced, as in CUTLASS's zero-fill copies), by the kThreads threads numbered `thread`
// (the CTA's, or one warp's lanes).
//
// Eight consecutive threads copy 128 contiguous bytes of one row per instruction (kRowLanes: a
// whole 128-byte line, as the earlier layout of 16 threads a row also read), and each thread keeps
// its few rows for all of its columns: one pointer load and one null test per row, then the row's
// vectors at constant offsets from that one address (two a row at D 128). The layout before gave
// each thread one column of every eighth row, so each of its eight vectors a tile cost a pointer
// load, a 64-bit null test and a 64-bit add besides the copy (59 instructions for a warp's K copies
// of a key quarter at D 128 in the sm_90a SASS, 39 now). Every pointer is
// loaded before the first copy: ptxas puts three no-op shared loads between a shared load and a
// following cp.async, so a pointer load before each copy cost three more instructions and a
// shared-memory round trip in series with each copy. Shapes the layout does not divide index
// each vector. (Rows without a page read from one shared zero row in device memory instead measured
// 10-40% slower decode steps on an H100: every CTA's padding rows, such as the selected branch's
// block past the cache's end, then hit the same L2 lines.)
template <int kRows, int kCols, int kThreads, class Element>
__device__ __forceinline__ void copy_rows_async(Element* dst, int ld, const Element* const* src,
                                                int thread = static_cast<int>(threadIdx.x)) {
  constexpr int kVectors = kCols / 8;
  constexpr int kRowLanes = kVectors < 8 ? kVectors : 8;  // threads sharing a row in one instruction
  if constexpr (kVectors % kRowLanes == 0 && kThreads % kRowLanes == 0 && kRows % (kThreads / kRowLanes) == 0) {
    constexpr int kRowStep = kThreads / kRowLanes;       // rows one instruction covers
    constexpr int kRowsEach = kRows / kRowStep;          // rows a thread copies
    constexpr int kVectorsEach = kVectors / kRowLanes;   // vectors a thread copies of each row
    const int vec = thread % kRowLanes, row0 = thread / kRowLanes;
    const std::uint32_t to = mma::shared_address(dst + row0 * ld + vec * 8);
    std::uint64_t from[kRowsEach];  // the thread's first vector of each of its rows
    bool valid[kRowsEach];
#pragma unroll
    for (int i = 0; i < kRowsEach; ++i) {
      const Element* row = src[row0 + i * kRowStep];
      valid[i] = row != nullptr;
      from[i] = reinterpret_cast<std::uint64_t>(row) + vec * 16;
    }
#pragma unroll
    for (int i = 0; i < kRowsEach; ++i) {
      [&]<int... kJ>(std::integer_sequence<int, kJ...>) {
        (copy_row_vector_async<kJ * kRowLanes * 16>(to + (i * kRowStep * ld + kJ * kRowLanes * 8) * 2, from[i],
                                                    valid[i]),
         ...);
      }(std::make_integer_sequence<int, kVectorsEach>{});
    }
  } else {
    for (int idx = thread; idx < kRows * kVectors; idx += kThreads) {
      const int row = idx / kVectors, vec = idx % kVectors;
      copy_row_vector_async<0>(mma::shared_address(dst + row * ld + vec * 8),
                               reinterpret_cast<std::uint64_t>(src[row]) + vec * 16, src[row] != nullptr);
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
