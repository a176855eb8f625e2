// Compression kernels (docs/semantics.md section 1), forward and backward, for bf16/fp16.
//
// Linear (per kv head g, W [l*D, Dout], windows X_i = x rows i*s .. i*s+l-1 flattened to l*D):
//   forward   y_i = X_i W + PE W            tile GEMM over compressed rows, its l*D reduction split
//                                           over CTAs where the tiles are few (fp32 partials
//                                           summed in split order); PE W is one fp32 vector per
//                                           head (head_vector), computed once.
//   dW        = sum_i X_i^T dy_i + PE^T (sum_i dy_i)     tile GEMM reducing over all compressed rows.
//   dPE       = W (sum_i dy_i)              one warp per row of W.
//   dx        raw rows m*s .. m*s+s-1 (a "stride block" m) are covered by windows m-c, c < l/s, at
//             offsets c*s + u, so dx_block_m[u*D + d] = sum_c dy_{m-c} . W[(c*s + u)*D + d, :]:
//             a gather GEMM with M = stride blocks, N = s*D, K = (l/s) * Dout. Every dx element is
//             written exactly once (no atomics, deterministic).
// Mean: elementwise kernels (y = mean of the window (+ mean PE), dx = sum of covering dy / l).
//
// Packed sequences are found by binary search over cu_seqlens / cu_cmp on the device; grids are
// sized from shapes (N, Ncmp, nseq) only. Stride blocks of sequence b take the global indices
// [cu[b]/s + b, cu[b]/s + b + ceil(n_b/s)): disjoint across sequences, and below N/s + nseq.
#pragma once

#include <algorithm>
#include <string>

#include "cuda/runtime.hpp"
#include "kernels/common/convert.cuh"
#include "kernels/compress/compress_gemm.cuh"
#include "kernels/compress/compress_params.hpp"

namespace fsa::cuda::compress {

using common::Convert;

__device__ __forceinline__ int total_compressed(const CompressParams& p) {
  return p.cu_cmp[p.num_seqs * p.cu_cmp_stride];
}

// Global raw row of the first token of compressed row `cr` (< total_compressed).
__device__ __forceinline__ long long window_start(const CompressParams& p, long long cr) {
  const int b = common::last_at_or_below(p.cu_cmp, p.cu_cmp_stride, p.num_seqs, cr);
  return p.cu_seqlens[b * p.cu_stride] + (cr - p.cu_cmp[b * p.cu_cmp_stride]) * p.cmp_stride;
}

// ---- Linear forward ----------------------------------------------------------------------------

// grid (ceil(Ncmp / 64), Dout / kN x k_splits, H). Rows past cu_cmp[nseq] are written as zeros.
// With k_splits > 1 the CTA sums chunks [c0, c0 + count) of the l*D / 64 into its fp32 partial.
template <class Element, int kN>
__global__ void __launch_bounds__(kGemmThreads) compress_fwd_linear_kernel(const __grid_constant__ CompressParams p) {
  using S = GemmSmem<Element, kN, true>;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ long long row_offset[kTileM];  // x offset of the window's first row for head g; -1: none
  const int col_tiles = p.dim_out / kN;
  const int g = blockIdx.z, n0 = static_cast<int>(blockIdx.y % col_tiles) * kN;
  const int split = static_cast<int>(blockIdx.y / col_tiles);
  const int chunks = p.cmp_len * p.dim / kTileK, per_split = (chunks + p.k_splits - 1) / p.k_splits;
  const int c0 = split * per_split, count = max(0, min(chunks, c0 + per_split) - c0);
  const long long m0 = static_cast<long long>(blockIdx.x) * kTileM;
  if (threadIdx.x < kTileM) {
    const long long cr = m0 + threadIdx.x;
    row_offset[threadIdx.x] =
        cr < total_compressed(p) ? window_start(p, cr) * p.x_row_stride + g * p.x_head_stride : -1;
  }
  __syncthreads();
  const auto* x = static_cast<const Element*>(p.x);
  const auto* w = static_cast<const Element*>(p.weight) + g * p.w_head_stride + n0;
  const int dim = p.dim;
  // A tile without a window (its first row is past the batch's compressed rows: the rows ascend)
  // reads no weights and writes zeros. A decode step's fixed-size launch has such tiles only, in
  // every step that completes no window.
  const int chunks_run = row_offset[0] >= 0 ? count : 0;
  auto load_chunk = [&](int chunk, Element* a_tile, Element* b_tile) {
    const int c = c0 + chunk;
    const int j = c * kTileK / dim, d0 = c * kTileK % dim;  // D % 64 == 0: a chunk is in one window row
    common::copy_tile_async<kTileM, kTileK, kGemmThreads>(a_tile, S::kLdA, [&](int r) -> const Element* {
      const long long offset = row_offset[r];
      return offset >= 0 ? x + offset + j * p.x_row_stride + d0 : nullptr;
    });
    common::copy_tile_async<kTileK, kN, kGemmThreads>(
        b_tile, S::kLdB, [&](int r) -> const Element* { return w + (static_cast<long long>(c) * kTileK + r) * p.w_row_stride; });
  };
  float acc[kN / 8][4];
  gemm_mainloop<Element, kN, false, true>(acc, smem, chunks_run, load_chunk);

  const int lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
  if (p.k_splits > 1) {  // the fp32 partial; zero-filled rows (no window) give zeros
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const long long cr = m0 + (threadIdx.x / 32) * 16 + group + 8 * h;
      if (cr >= p.cmp_rows) continue;
      float* prow = p.y_partial + ((split * p.cmp_rows + cr) * p.heads + g) * p.dim_out + n0;
#pragma unroll
      for (int n = 0; n < kN / 8; ++n)
        *reinterpret_cast<float2*>(prow + n * 8 + 2 * pair) = make_float2(acc[n][2 * h], acc[n][2 * h + 1]);
    }
    return;
  }
  const float* bias = p.head_vector != nullptr ? p.head_vector + g * p.dim_out + n0 : nullptr;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = (threadIdx.x / 32) * 16 + group + 8 * h;
    const long long cr = m0 + r;
    if (cr >= p.cmp_rows) continue;
    const bool valid = row_offset[r] >= 0;
    Element* yrow = static_cast<Element*>(p.y) + cr * p.y_row_stride + g * p.y_head_stride + n0;
#pragma unroll
    for (int n = 0; n < kN / 8; ++n) {
      const int col = n * 8 + 2 * pair;
      float v0 = 0.0f, v1 = 0.0f;
      if (valid) {
        v0 = acc[n][2 * h] + (bias != nullptr ? bias[col] : 0.0f);
        v1 = acc[n][2 * h + 1] + (bias != nullptr ? bias[col + 1] : 0.0f);
      }
      *reinterpret_cast<std::uint32_t*>(yrow + col) = mma::pack2<Element>(v0, v1);
    }
  }
}

// Elements e .. e + 3 of the k_splits partial planes of y_partial (`plane` floats apart), added in
// split order.
__device__ __forceinline__ float4 split_sum(const CompressParams& p, long long plane, long long e) {
  float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int split = 0; split < p.k_splits; ++split) {
    const float4 part = *reinterpret_cast<const float4*>(p.y_partial + split * plane + e);
    sum.x += part.x;
    sum.y += part.y;
    sum.z += part.z;
    sum.w += part.w;
  }
  return sum;
}

// Split-K forward: y = sum of the k_splits partials in split order (+ head_vector) for rows with a
// window, zeros for the rest. One thread per 4 consecutive outputs of a row.
template <class Element>
__global__ void __launch_bounds__(256) compress_fwd_reduce_kernel(const __grid_constant__ CompressParams p) {
  const long long row_width = static_cast<long long>(p.heads) * p.dim_out;
  const long long plane = p.cmp_rows * row_width;
  const int total = total_compressed(p);
  for (long long i = static_cast<long long>(blockIdx.x) * 256 + threadIdx.x; i < plane / 4;
       i += static_cast<long long>(gridDim.x) * 256) {
    const long long e = i * 4, cr = e / row_width;
    const int g = static_cast<int>(e % row_width / p.dim_out), col = static_cast<int>(e % p.dim_out);
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (cr < total) {
      sum = split_sum(p, plane, e);
      if (p.head_vector != nullptr) {
        const float* bias = p.head_vector + g * p.dim_out + col;
        sum.x += bias[0];
        sum.y += bias[1];
        sum.z += bias[2];
        sum.w += bias[3];
      }
    }
    Element* y = static_cast<Element*>(p.y) + cr * p.y_row_stride + g * p.y_head_stride + col;
    *reinterpret_cast<uint2*>(y) = make_uint2(mma::pack2<Element>(sum.x, sum.y), mma::pack2<Element>(sum.z, sum.w));
  }
}

// The 32 columns e of blockIdx.x and head g = blockIdx.y: sum over rows r in share blockIdx.z of
// [0, rows) of term(r, e), 8 row groups of 32 threads, into sum_partial[blockIdx.z, g, e].
template <class Term>
__device__ __forceinline__ void column_sum_share(const CompressParams& p, int rows, Term term) {
  __shared__ float partial[8][33];
  const int g = blockIdx.y, e = blockIdx.x * 32 + threadIdx.x % 32, group = threadIdx.x / 32;
  const int per_split = (rows + kColumnSumSplits - 1) / kColumnSumSplits;
  const int r0 = static_cast<int>(blockIdx.z) * per_split, r1 = min(rows, r0 + per_split);
  float sum = 0.0f;
  if (e < p.dim_out)
    for (int r = r0 + group; r < r1; r += 8) sum += term(r, e);
  partial[group][threadIdx.x % 32] = sum;
  __syncthreads();
  if (group == 0 && e < p.dim_out) {
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) total += partial[i][threadIdx.x];
    p.sum_partial[(static_cast<long long>(blockIdx.z) * p.heads + g) * p.dim_out + e] = total;
  }
}

// head_vector[g, e] = sum_r PE[g, r] W[g, r, e] (linear) or mean_j PE[g, j, e] (mean), by row
// shares. grid (ceil(Dout / 32), H, kColumnSumSplits), 256 threads.
template <class Element>
__global__ void __launch_bounds__(256) compress_pe_vector_kernel(const __grid_constant__ CompressParams p) {
  const int g = blockIdx.y;
  const auto* pe = static_cast<const Element*>(p.pos_emb) + g * p.pe_head_stride;
  // Without compressed rows no output adds the vector: zeros, and no weights read (a decode step
  // that completes no window).
  const bool any_rows = total_compressed(p) > 0;
  if (p.weight != nullptr) {
    const auto* w = static_cast<const Element*>(p.weight) + g * p.w_head_stride;
    column_sum_share(p, any_rows ? p.cmp_len * p.dim : 0, [&](int r, int e) {
      return Convert<Element>::to_float(pe[(r / p.dim) * p.pe_row_stride + r % p.dim]) *
             Convert<Element>::to_float(w[static_cast<long long>(r) * p.w_row_stride + e]);
    });
  } else {
    const float inv_l = 1.0f / static_cast<float>(p.cmp_len);
    column_sum_share(p, any_rows ? p.cmp_len : 0,
                     [&](int j, int e) { return Convert<Element>::to_float(pe[j * p.pe_row_stride + e]) * inv_l; });
  }
}

// head_vector[g, e] = the kColumnSumSplits partials in order. One thread per (g, e). (Element only
// gives each instantiation file its own copy, like every kernel here.)
template <class Element>
__global__ void __launch_bounds__(256) compress_sum_partials_kernel(const __grid_constant__ CompressParams p) {
  const int i = blockIdx.x * 256 + threadIdx.x;
  if (i >= p.heads * p.dim_out) return;
  float total = 0.0f;
  for (int z = 0; z < kColumnSumSplits; ++z)
    total += p.sum_partial[static_cast<long long>(z) * p.heads * p.dim_out + i];
  p.head_vector[i] = total;
}

// ---- Mean forward ------------------------------------------------------------------------------

constexpr int kRowThreads = 128;

// One CTA per compressed row (all heads); rows past cu_cmp[nseq] are zeros.
template <class Element>
__global__ void __launch_bounds__(kRowThreads) compress_fwd_mean_kernel(const __grid_constant__ CompressParams p) {
  __shared__ long long first_row;
  const long long cr = blockIdx.x;
  if (threadIdx.x == 0) first_row = cr < total_compressed(p) ? window_start(p, cr) : -1;
  __syncthreads();
  const auto* x = static_cast<const Element*>(p.x);
  const float inv_l = 1.0f / static_cast<float>(p.cmp_len);
  for (int idx = threadIdx.x; idx < p.heads * p.dim; idx += kRowThreads) {
    const int h = idx / p.dim, d = idx % p.dim;
    float sum = 0.0f;
    if (first_row >= 0) {
      for (int j = 0; j < p.cmp_len; ++j)
        sum += Convert<Element>::to_float(x[(first_row + j) * p.x_row_stride + h * p.x_head_stride + d]);
      sum *= inv_l;
      if (p.head_vector != nullptr) sum += p.head_vector[h * p.dim_out + d];
    }
    static_cast<Element*>(p.y)[cr * p.y_row_stride + h * p.y_head_stride + d] = Convert<Element>::from_float(sum);
  }
}

// ---- Backward ------------------------------------------------------------------------------------

// head_vector[g, e] = sum over compressed rows of dy[i, g, e], by row shares. grid (ceil(Dout / 32),
// H, kColumnSumSplits), 256 threads.
template <class Element>
__global__ void __launch_bounds__(256) compress_dy_sum_kernel(const __grid_constant__ CompressParams p) {
  const auto* dy = static_cast<const Element*>(p.dy) + blockIdx.y * p.dy_head_stride;
  column_sum_share(p, total_compressed(p), [&](int i, int e) {
    return Convert<Element>::to_float(dy[static_cast<long long>(i) * p.dy_row_stride + e]);
  });
}

// d_pos_emb[g, j, d] = W[g, j*D + d, :] . dy_sum[g] (linear, one warp per row of W) or
// dy_sum[g, d] / l (mean).
template <class Element>
__global__ void __launch_bounds__(256) compress_d_pos_emb_kernel(const __grid_constant__ CompressParams p) {
  const long long rows = static_cast<long long>(p.heads) * p.cmp_len * p.dim;
  const long long row = (static_cast<long long>(blockIdx.x) * 256 + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int g = static_cast<int>(row / (p.cmp_len * p.dim));
  const int r = static_cast<int>(row % (p.cmp_len * p.dim));
  const float* dy_sum = p.head_vector + g * p.dim_out;
  float value;
  if (p.weight != nullptr) {
    const auto* w = static_cast<const Element*>(p.weight) + g * p.w_head_stride + r * p.w_row_stride;
    float sum = 0.0f;
    for (int e = lane; e < p.dim_out; e += 32) sum += Convert<Element>::to_float(w[e]) * dy_sum[e];
#pragma unroll
    for (int mask = 16; mask > 0; mask /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, mask);
    value = sum;
  } else {
    value = dy_sum[r % p.dim] / static_cast<float>(p.cmp_len);
  }
  if (lane == 0)
    static_cast<Element*>(p.d_pos_emb)[g * p.dpe_head_stride + (r / p.dim) * p.dpe_row_stride + r % p.dim] =
        Convert<Element>::from_float(value);
}

// dW[g, r, e] = sum_i X_i[r] dy_i[e] + PE[g, r] dy_sum[g, e]. grid (l*D / 64, Dout / kN, H); the K
// loop walks every compressed row of the batch.
template <class Element, int kN>
__global__ void __launch_bounds__(kGemmThreads) compress_bwd_weight_kernel(const __grid_constant__ CompressParams p) {
  using S = GemmSmem<Element, kN, true>;
  extern __shared__ __align__(128) unsigned char smem[];
  const int col_tiles = p.dim_out / kN;
  const int g = blockIdx.z, n0 = static_cast<int>(blockIdx.y % col_tiles) * kN, m0 = blockIdx.x * kTileM;
  const int split = static_cast<int>(blockIdx.y / col_tiles);
  const int j = m0 / p.dim, d0 = m0 % p.dim;  // the tile's rows r = j*D + d0 .. +63 (D % 64 == 0)
  const int total = total_compressed(p);
  // K chunks of 64 compressed rows; split z takes its share of them (the split count comes from
  // the shape's bound cmp_rows, the chunks from the batch's total).
  const int chunks = (total + kTileK - 1) / kTileK;
  const int per_split = (chunks + p.k_splits - 1) / p.k_splits;
  const int c0 = split * per_split, count = max(0, min(chunks, c0 + per_split) - c0);
  const auto* x = static_cast<const Element*>(p.x) + g * p.x_head_stride + j * p.x_row_stride + d0;
  const auto* dy = static_cast<const Element*>(p.dy) + g * p.dy_head_stride + n0;
  auto load_chunk = [&](int chunk, Element* a_tile, Element* b_tile) {
    const int c = c0 + chunk;
    // A^T: row k of the tile is compressed row i = 64c + k, columns r (its window's row j).
    common::copy_tile_async<kTileK, kTileM, kGemmThreads>(a_tile, S::kLdA, [&](int k) -> const Element* {
      const long long i = static_cast<long long>(c) * kTileK + k;
      return i < total ? x + window_start(p, i) * p.x_row_stride : nullptr;
    });
    common::copy_tile_async<kTileK, kN, kGemmThreads>(b_tile, S::kLdB, [&](int k) -> const Element* {
      const long long i = static_cast<long long>(c) * kTileK + k;
      return i < total ? dy + i * p.dy_row_stride : nullptr;
    });
  };
  float acc[kN / 8][4];
  gemm_mainloop<Element, kN, true, true>(acc, smem, count, load_chunk);

  const int lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
  if (p.k_splits > 1) {  // the fp32 partial of rows m0.. of W
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = (threadIdx.x / 32) * 16 + group + 8 * h;
      float* prow = p.y_partial + ((static_cast<long long>(split) * p.heads + g) * p.cmp_len * p.dim + m0 + r) *
                                      p.dim_out + n0;
#pragma unroll
      for (int n = 0; n < kN / 8; ++n)
        *reinterpret_cast<float2*>(prow + n * 8 + 2 * pair) = make_float2(acc[n][2 * h], acc[n][2 * h + 1]);
    }
    return;
  }
  const auto* pe = static_cast<const Element*>(p.pos_emb);
  // Without PE the dy sums are not computed (the workspace is uninitialised): never read them.
  const float* dy_sum = pe != nullptr ? p.head_vector + g * p.dim_out + n0 : nullptr;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = (threadIdx.x / 32) * 16 + group + 8 * h;
    const float pe_value =
        pe != nullptr ? Convert<Element>::to_float(pe[g * p.pe_head_stride + j * p.pe_row_stride + d0 + r]) : 0.0f;
    Element* dst = static_cast<Element*>(p.d_weight) + g * p.dw_head_stride + (m0 + r) * p.dw_row_stride + n0;
#pragma unroll
    for (int n = 0; n < kN / 8; ++n) {
      const int col = n * 8 + 2 * pair;
      const float pe0 = dy_sum != nullptr ? pe_value * dy_sum[col] : 0.0f;
      const float pe1 = dy_sum != nullptr ? pe_value * dy_sum[col + 1] : 0.0f;
      *reinterpret_cast<std::uint32_t*>(dst + col) = mma::pack2<Element>(acc[n][2 * h] + pe0, acc[n][2 * h + 1] + pe1);
    }
  }
}

// Split-K dW: d_weight[g, r, :] = the k_splits partials in split order + PE[g, r] * dy_sum[g, :].
// One thread per 4 consecutive columns of a row of W.
// Index math in 32 bits (the launcher checks that dW's quads fit): the 64-bit divisions it replaces
// were calls whose saved registers spilled 8 bytes on sm_80.
template <class Element>
__global__ void __launch_bounds__(256) compress_bwd_weight_reduce_kernel(const __grid_constant__ CompressParams p) {
  const unsigned rows = static_cast<unsigned>(p.cmp_len) * p.dim, quads_per_row = p.dim_out / 4;
  const unsigned quads = static_cast<unsigned>(p.heads) * rows * quads_per_row;
  const long long plane = static_cast<long long>(quads) * 4;
  const auto* pe = static_cast<const Element*>(p.pos_emb);
  for (unsigned i = blockIdx.x * 256 + threadIdx.x; i < quads; i += gridDim.x * 256) {
    const unsigned row = i / quads_per_row;  // row = g * l*D + r
    const int g = static_cast<int>(row / rows), r = static_cast<int>(row % rows);
    const int col = static_cast<int>(i % quads_per_row) * 4;
    const long long e = static_cast<long long>(i) * 4;
    float4 sum = split_sum(p, plane, e);
    if (pe != nullptr) {  // dy_sum (head_vector) exists only with PE
      const float pe_value =
          Convert<Element>::to_float(pe[g * p.pe_head_stride + (r / p.dim) * p.pe_row_stride + r % p.dim]);
      const float* dy_sum = p.head_vector + g * p.dim_out + col;
      sum.x += pe_value * dy_sum[0];
      sum.y += pe_value * dy_sum[1];
      sum.z += pe_value * dy_sum[2];
      sum.w += pe_value * dy_sum[3];
    }
    Element* dst = static_cast<Element*>(p.d_weight) + g * p.dw_head_stride + r * p.dw_row_stride + col;
    *reinterpret_cast<uint2*>(dst) = make_uint2(mma::pack2<Element>(sum.x, sum.y), mma::pack2<Element>(sum.z, sum.w));
  }
}

// Where stride block `gm` (global index, see the file comment) lies: its sequence, its local
// index m, and whether it holds any row.
struct StrideBlock {
  int seq;
  long long m;
  bool valid;
};

__device__ __forceinline__ StrideBlock find_stride_block(const CompressParams& p, long long gm) {
  const int s = p.cmp_stride;
  auto offset = [&](int b) { return static_cast<long long>(p.cu_seqlens[b * p.cu_stride]) / s + b; };
  int lo = 0, hi = p.num_seqs - 1;  // last b with offset(b) <= gm (offsets strictly increase)
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offset(mid) <= gm) lo = mid; else hi = mid - 1;
  }
  const long long m = gm - offset(lo);
  const long long n = p.cu_seqlens[(lo + 1) * p.cu_stride] - p.cu_seqlens[lo * p.cu_stride];
  return {lo, m, m * s < n};
}

// dx of linear compression. grid (ceil((N/s + nseq) / 64), s*D / kN, H).
template <class Element, int kN>
__global__ void __launch_bounds__(kGemmThreads) compress_bwd_input_kernel(const __grid_constant__ CompressParams p) {
  using S = GemmSmem<Element, kN, false>;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ long long row_raw[kTileM];   // global raw row of the block's first token; -1: no block
  __shared__ int row_left[kTileM];        // rows of the sequence from there on
  __shared__ long long row_cmp[kTileM];   // global compressed row of window m (may be past the sequence)
  __shared__ int row_m[kTileM];           // m, local to the sequence
  __shared__ int row_windows[kTileM];     // n_cmp of the sequence
  const int g = blockIdx.z, n0 = blockIdx.y * kN;
  const long long m0 = static_cast<long long>(blockIdx.x) * kTileM;
  if (threadIdx.x < kTileM) {
    const StrideBlock blk = find_stride_block(p, m0 + threadIdx.x);
    long long raw = -1, cmp = 0;
    int left = 0, m = 0, windows = 0;
    if (blk.valid) {
      const long long start = p.cu_seqlens[blk.seq * p.cu_stride];
      const long long n = p.cu_seqlens[(blk.seq + 1) * p.cu_stride] - start;
      const long long cmp_start = p.cu_cmp[blk.seq * p.cu_cmp_stride];
      const long long n_cmp = p.cu_cmp[(blk.seq + 1) * p.cu_cmp_stride] - cmp_start;
      raw = start + blk.m * p.cmp_stride;
      left = static_cast<int>(min(n - blk.m * p.cmp_stride, static_cast<long long>(p.cmp_stride)));
      cmp = cmp_start + blk.m;
      m = static_cast<int>(blk.m);
      windows = static_cast<int>(n_cmp);
    }
    row_raw[threadIdx.x] = raw;
    row_left[threadIdx.x] = left;
    row_cmp[threadIdx.x] = cmp;
    row_m[threadIdx.x] = m;
    row_windows[threadIdx.x] = windows;
  }
  __syncthreads();
  const auto* dy = static_cast<const Element*>(p.dy) + g * p.dy_head_stride;
  const auto* w = static_cast<const Element*>(p.weight) + g * p.w_head_stride;
  const int e_chunks = p.dim_out / kTileK;
  const long long window_rows = static_cast<long long>(p.cmp_stride) * p.dim;  // rows of W per window shift
  auto load_chunk = [&](int c, Element* a_tile, Element* b_tile) {
    const int shift = c / e_chunks, e0 = (c % e_chunks) * kTileK;  // window m - shift
    common::copy_tile_async<kTileM, kTileK, kGemmThreads>(a_tile, S::kLdA, [&](int r) -> const Element* {
      // Window m - shift of the sequence exists iff 0 <= m - shift < n_cmp.
      const bool exists = row_raw[r] >= 0 && shift <= row_m[r] && row_m[r] - shift < row_windows[r];
      return exists ? dy + (row_cmp[r] - shift) * p.dy_row_stride + e0 : nullptr;
    });
    common::copy_tile_async<kN, kTileK, kGemmThreads>(b_tile, S::kLdB, [&](int nn) -> const Element* {
      return w + (shift * window_rows + n0 + nn) * p.w_row_stride + e0;
    });
  };
  float acc[kN / 8][4];
  gemm_mainloop<Element, kN, false, false>(acc, smem, (p.cmp_len / p.cmp_stride) * e_chunks, load_chunk);

  const int lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = (threadIdx.x / 32) * 16 + group + 8 * h;
    if (row_raw[r] < 0) continue;
#pragma unroll
    for (int n = 0; n < kN / 8; ++n) {
      const int col = n0 + n * 8 + 2 * pair;
      const int u = col / p.dim, d = col % p.dim;  // D is even: col and col + 1 share u
      if (u >= row_left[r]) continue;
      Element* dst = static_cast<Element*>(p.dx) + (row_raw[r] + u) * p.dx_row_stride + g * p.dx_head_stride + d;
      *reinterpret_cast<std::uint32_t*>(dst) = mma::pack2<Element>(acc[n][2 * h], acc[n][2 * h + 1]);
    }
  }
}

// dx of mean compression: one CTA per raw row; each element sums the dy of its covering windows / l.
template <class Element>
__global__ void __launch_bounds__(kRowThreads) compress_bwd_mean_kernel(const __grid_constant__ CompressParams p) {
  __shared__ long long first_window_row;
  __shared__ int windows;
  const long long row = blockIdx.x;
  if (threadIdx.x == 0) {
    const int b = common::last_at_or_below(p.cu_seqlens, p.cu_stride, p.num_seqs, row);
    const long long t = row - p.cu_seqlens[b * p.cu_stride];
    const long long cmp_start = p.cu_cmp[b * p.cu_cmp_stride];
    const long long n_cmp = p.cu_cmp[(b + 1) * p.cu_cmp_stride] - cmp_start;
    const int l = p.cmp_len, s = p.cmp_stride;
    const long long first = t >= l ? (t - l + s) / s : 0;  // ceil((t - l + 1) / s)
    const long long last = min(n_cmp - 1, t / s);
    first_window_row = cmp_start + first;
    windows = static_cast<int>(max(0LL, last - first + 1));
  }
  __syncthreads();
  const auto* dy = static_cast<const Element*>(p.dy);
  const float inv_l = 1.0f / static_cast<float>(p.cmp_len);
  for (int idx = threadIdx.x; idx < p.heads * p.dim; idx += kRowThreads) {
    const int h = idx / p.dim, d = idx % p.dim;
    float sum = 0.0f;
    for (int i = 0; i < windows; ++i)
      sum += Convert<Element>::to_float(dy[(first_window_row + i) * p.dy_row_stride + h * p.dy_head_stride + d]);
    static_cast<Element*>(p.dx)[row * p.dx_row_stride + h * p.dx_head_stride + d] =
        Convert<Element>::from_float(sum * inv_l);
  }
}

// ---- Launchers -----------------------------------------------------------------------------------

template <class Kernel>
Status set_dynamic_smem(Kernel kernel, std::size_t bytes) {
  return cuda_status(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
                     "cudaFuncSetAttribute", __FILE__, __LINE__);
}

// 128-column tiles where the width allows, else 64 (compress_tile_n; widths are multiples of 64).
template <class Fn>
Status with_column_tile(int width, Fn&& fn) {
  if (compress_tile_n(width) == 128) return fn.template operator()<128>();
  return fn.template operator()<64>();
}

}  // namespace fsa::cuda::compress

namespace fsa::cuda {

template <class Element>
Status launch_compress_forward(const CompressParams& p, cudaStream_t stream) {
  using namespace compress;
  if (p.cmp_rows == 0) return Status::ok();
  if (p.pos_emb != nullptr) {
    compress_pe_vector_kernel<Element><<<dim3((p.dim_out + 31) / 32, p.heads, kColumnSumSplits), 256, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("compress_pe_vector_kernel", stream);
    compress_sum_partials_kernel<Element><<<(p.heads * p.dim_out + 255) / 256, 256, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("compress_sum_partials_kernel", stream);
  }
  if (p.weight == nullptr) {
    compress_fwd_mean_kernel<Element><<<static_cast<unsigned>(p.cmp_rows), kRowThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("compress_fwd_mean_kernel", stream);
    return Status::ok();
  }
  return with_column_tile(p.dim_out, [&]<int kN>() -> Status {
    auto* kernel = compress_fwd_linear_kernel<Element, kN>;
    constexpr std::size_t kSmem = GemmSmem<Element, kN, true>::kBytes;
    FSA_RETURN_IF_ERROR(set_dynamic_smem(kernel, kSmem));
    const dim3 grid(static_cast<unsigned>((p.cmp_rows + kTileM - 1) / kTileM), p.dim_out / kN * p.k_splits,
                    p.heads);
    kernel<<<grid, kGemmThreads, kSmem, stream>>>(p);
    FSA_CHECK_LAUNCH("compress_fwd_linear_kernel", stream);
    if (p.k_splits > 1) {
      const long long quads = p.cmp_rows * p.heads * p.dim_out / 4;
      const auto ctas = static_cast<unsigned>(std::min<long long>((quads + 255) / 256, 1 << 16));
      compress_fwd_reduce_kernel<Element><<<ctas, 256, 0, stream>>>(p);
      FSA_CHECK_LAUNCH("compress_fwd_reduce_kernel", stream);
    }
    return Status::ok();
  });
}

template <class Element>
Status launch_compress_backward(const CompressParams& p, cudaStream_t stream) {
  using namespace compress;
  if (p.tokens == 0) return Status::ok();
  // dy summed over compressed rows: the PE share of dW and the whole of d_pos_emb.
  if (p.d_pos_emb != nullptr || (p.d_weight != nullptr && p.pos_emb != nullptr)) {
    compress_dy_sum_kernel<Element><<<dim3((p.dim_out + 31) / 32, p.heads, kColumnSumSplits), 256, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("compress_dy_sum_kernel", stream);
    compress_sum_partials_kernel<Element><<<(p.heads * p.dim_out + 255) / 256, 256, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("compress_sum_partials_kernel", stream);
  }
  if (p.d_pos_emb != nullptr) {
    const long long warps = static_cast<long long>(p.heads) * p.cmp_len * p.dim;
    compress_d_pos_emb_kernel<Element><<<static_cast<unsigned>((warps * 32 + 255) / 256), 256, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("compress_d_pos_emb_kernel", stream);
  }
  if (p.weight == nullptr) {
    compress_bwd_mean_kernel<Element><<<static_cast<unsigned>(p.tokens), kRowThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("compress_bwd_mean_kernel", stream);
    return Status::ok();
  }
  if (p.d_weight != nullptr) {
    FSA_RETURN_IF_ERROR(with_column_tile(p.dim_out, [&]<int kN>() -> Status {
      auto* kernel = compress_bwd_weight_kernel<Element, kN>;
      constexpr std::size_t kSmem = GemmSmem<Element, kN, true>::kBytes;
      FSA_RETURN_IF_ERROR(set_dynamic_smem(kernel, kSmem));
      const dim3 grid(static_cast<unsigned>(p.cmp_len * p.dim / kTileM), p.dim_out / kN * p.k_splits, p.heads);
      kernel<<<grid, kGemmThreads, kSmem, stream>>>(p);
      FSA_CHECK_LAUNCH("compress_bwd_weight_kernel", stream);
      if (p.k_splits > 1) {
        const long long quads = static_cast<long long>(p.heads) * p.cmp_len * p.dim * p.dim_out / 4;
        if (quads > 0x7fffffffLL)  // the reduce kernel's 32-bit index math
          return FSA_ERROR(StatusCode::kNotImplemented,
                           "d_weight: compress_backward on CUDA takes at most 2^31 groups of 4 weights, got " +
                               std::to_string(quads));
        const auto ctas = static_cast<unsigned>(std::min<long long>((quads + 255) / 256, 1 << 16));
        compress_bwd_weight_reduce_kernel<Element><<<ctas, 256, 0, stream>>>(p);
        FSA_CHECK_LAUNCH("compress_bwd_weight_reduce_kernel", stream);
      }
      return Status::ok();
    }));
  }
  return with_column_tile(p.cmp_stride * p.dim, [&]<int kN>() -> Status {
    auto* kernel = compress_bwd_input_kernel<Element, kN>;
    constexpr std::size_t kSmem = GemmSmem<Element, kN, false>::kBytes;
    FSA_RETURN_IF_ERROR(set_dynamic_smem(kernel, kSmem));
    const long long blocks = p.tokens / p.cmp_stride + p.num_seqs;
    const dim3 grid(static_cast<unsigned>((blocks + kTileM - 1) / kTileM), p.cmp_stride * p.dim / kN, p.heads);
    kernel<<<grid, kGemmThreads, kSmem, stream>>>(p);
    FSA_CHECK_LAUNCH("compress_bwd_input_kernel", stream);
    return Status::ok();
  });
}

}  // namespace fsa::cuda
