// Phase A's operands of the fused block selection (select_kernel.cuh): the CTA's query rows (with
// their lse) and a tile of compressed keys, copied into shared memory by cp.async, padded for
// ldmatrix (sm80 products) or swizzled for wgmma (sm_90a products).
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common/fast_exp.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/wgmma_sm90.cuh"
#include "kernels/select/select_params.hpp"
#include "kernels/select/select_tiling.hpp"

namespace fsa::cuda::sel {

using common::kLog2e;

// Query rows of round chunk `chunk` (select_tiling.hpp's layout: slot = local round * kWarps + warp,
// 16 rows per slot): the offset of each row in q (-1: padding, zero-filled) and lse * log2 e (+inf
// for padding, so that its probabilities are exp2(-inf) = 0), then the cp.async copies of the rows.
// The caller commits, waits and synchronises.
template <class Element, int kDqk, bool kSwizzled>
__device__ __forceinline__ void load_q_chunk(const SelectParams& p, int chunk, int g, long long token0, int tokens,
                                             Element* q_s, long long* row_offset_s, float* row_bias_s) {
  const SelectShape& sh = p.shape;
  const int rows = sh.rounds_per_chunk * kWarps * 16;
  for (int row = threadIdx.x; row < rows; row += kThreads) {
    const int slot = row / 16, r = row % 16;
    const int warp = slot % kWarps, round = chunk * sh.rounds_per_chunk + slot / kWarps;
    const int group = warp / sh.parts, part = warp % sh.parts;
    const int m = round * sh.parts + part;
    const bool rows_are_tokens = sh.tokens_per_mtile == 16;
    const int head = rows_are_tokens ? 0 : 2 * m + r / 8;
    const int tok = group * sh.tokens_per_mtile + (rows_are_tokens ? r : r % 8);
    long long offset = -1;
    float bias = INFINITY;
    if (round < sh.rounds && m < sh.mtiles_per_group && head < sh.heads_used && tok < tokens) {
      const long long token = token0 + tok;
      const long long h = static_cast<long long>(g) * p.group + head;
      offset = token * p.q_token_stride + h * p.q_head_stride;
      bias = p.lse[h * p.lse_head_stride + token * p.lse_token_stride] * kLog2e;
    }
    row_offset_s[row] = offset;
    row_bias_s[row] = bias;
  }
  __syncthreads();
  constexpr int kVectors = kDqk / 8;
  constexpr int kLd = kDqk + kPadHalf;
  const auto* q = static_cast<const Element*>(p.q);
  for (int idx = threadIdx.x; idx < rows * kVectors; idx += kThreads) {
    const int row = idx / kVectors, vec = idx % kVectors;
    const long long offset = row_offset_s[row];
    uint4* dst = kSwizzled ? reinterpret_cast<uint4*>(reinterpret_cast<unsigned char*>(q_s) +
                                                      wgmma::swizzled_offset(rows, row, vec * 8))
                           : reinterpret_cast<uint4*>(q_s + row * kLd) + vec;
    if (offset >= 0) {
      common::cp_async_16(dst, reinterpret_cast<const uint4*>(q + offset) + vec);
    } else {
      *dst = make_uint4(0, 0, 0, 0);
    }
  }
}

// Keys [key0, key0 + kKeys) of the head's compressed keys into the K stage; keys past keys_total are
// zero rows (their probabilities are masked). Offsets within the tile in 32 bits (kKeys rows). When
// the row's vectors divide the CTA, each thread copies one column of every kRowsPerPass-th row:
// its offsets are computed once.
template <class Element, int kDqk, bool kSwizzled>
__device__ __forceinline__ void load_k_tile(const Element* k, std::int64_t row_stride, int key0, int keys_total,
                                            Element* dst) {
  constexpr int kVectors = kDqk / 8;
  constexpr int kLd = kDqk + kPadHalf;
  const Element* base = k + static_cast<long long>(key0) * row_stride;
  const int rows = keys_total - key0, stride = static_cast<int>(row_stride);
  if constexpr (kSwizzled && kThreads % kVectors == 0) {
    wgmma::copy_rows_swizzled_async<kKeys, kDqk, kThreads>(dst, base, row_stride, rows);
  } else if constexpr (kSwizzled) {
    wgmma::copy_tile_swizzled_async<kKeys, kDqk, kThreads>(
        dst, [&](int row) { return row < rows ? base + row * stride : nullptr; });
  } else if constexpr (kThreads % kVectors == 0) {
    constexpr int kRowsPerPass = kThreads / kVectors;
    const int row0 = threadIdx.x / kVectors, vec = threadIdx.x % kVectors;
    const Element* from = base + row0 * stride + vec * 8;
    Element* to = dst + row0 * kLd + vec * 8;
#pragma unroll
    for (int i = 0; i < kKeys / kRowsPerPass; ++i) {
      if (row0 + i * kRowsPerPass < rows) {
        common::cp_async_16(to + i * kRowsPerPass * kLd, from + i * kRowsPerPass * stride);
      } else {
        *reinterpret_cast<uint4*>(to + i * kRowsPerPass * kLd) = make_uint4(0, 0, 0, 0);
      }
    }
  } else {
#pragma unroll
    for (int idx = threadIdx.x; idx < kKeys * kVectors; idx += kThreads) {
      const int row = idx / kVectors, vec = idx % kVectors;
      uint4* to = reinterpret_cast<uint4*>(dst + row * kLd) + vec;
      if (row < rows) {
        common::cp_async_16(to, base + row * stride + vec * 8);
      } else {
        *to = make_uint4(0, 0, 0, 0);
      }
    }
  }
}

}  // namespace fsa::cuda::sel
