// Backward of compressed attention in the KV-outer order (spec section 3).
//
// 1. delta: delta[h, t] = rowsum(o * d_o) in fp32, one warp per (token, head).
// 2. kv_outer: one CTA per (tile of 64 compressed keys of one sequence, kv head g), 8 warps. Warp w
//    owns keys 16 * (w % 4) .. + 15 of the tile; warps 0-3 accumulate dV, warps 4-7 dK, in registers
//    across all query rows that see the tile (tokens from i0*s + l - 1 to the sequence end, x G
//    heads), walked in chunks. Per chunk each warp recomputes S^T = K Q^T for its keys on tensor
//    cores, P^T = exp(scale * S^T - lse) under the visibility rule; dV warps add P^T dO; dK warps
//    compute dP^T = V dO^T, dS^T = P^T (dP^T - delta), add dS^T Q and store dS in shared memory;
//    then all warps compute dQ = scale * dS K for the chunk and add it to the fp32 dq accumulator
//    by atomics (a query row meets every key tile it sees). dK and dV are written once at the end:
//    the CTA owns its keys. Rows whose lse is not finite (they see nothing) contribute nothing.
// 3. finish: dq accumulator -> dq in the input dtype; dk/dv rows past cu_cmp[nseq] set to zero.
#pragma once

#include <algorithm>
#include <string>

#include "cuda/runtime.hpp"
#include "kernels/cmp_attn/cmp_attn_common.cuh"
#include "kernels/cmp_attn/cmp_attn_params.hpp"
#include "kernels/common/convert.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"

namespace fsa::cuda::cmp {

template <class Element, int kDqk_, int kDv_>
struct BwdTraits {
  static constexpr int kDqk = kDqk_;
  static constexpr int kDv = kDv_;
  static_assert(kDqk % 16 == 0 && kDv % 16 == 0, "head dims in steps of 16 for mma.m16n8k16");
  static constexpr int kKeys = 64;  // keys per CTA: 4 key groups of 16
  static constexpr int kWarps = 8;  // 4 dV warps, 4 dK warps
  static constexpr int kThreads = kWarps * 32;
  // Rows per chunk: the dK warps hold dK (Dqk / 2 floats), S^T and dP^T (kRowChunk / 4 floats
  // each); 32 rows keep head dims above 128 within the register file.
  static constexpr int kRowChunk = (kDqk > 128 || kDv > 128) ? 32 : 64;
  static constexpr int kMaxD = kDqk > kDv ? kDqk : kDv;
  // dQ = dS K of a chunk: warps split rows (16 each) and then columns.
  static constexpr int kDqRowGroups = kRowChunk / 16;
  static constexpr int kDqColParts = kWarps / kDqRowGroups;
  static constexpr int kDqCols = kDqk / kDqColParts;
  static_assert(kDqCols % 16 == 0, "dq column tiles go in pairs");
  static constexpr int kQkUnroll = kDqk > 128 ? 2 : kDqk / 16;
  static constexpr int kLdQk = kDqk + common::kPadHalf;
  static constexpr int kLdV = kDv + common::kPadHalf;
  static constexpr int kLdDs = kKeys + common::kPadHalf;
  static constexpr std::size_t kKOffset = 0;
  static constexpr std::size_t kVOffset = kKOffset + common::align_up(sizeof(Element) * kKeys * kLdQk);
  static constexpr std::size_t kQOffset = kVOffset + common::align_up(sizeof(Element) * kKeys * kLdV);
  static constexpr std::size_t kDoOffset = kQOffset + common::align_up(sizeof(Element) * kRowChunk * kLdQk);
  static constexpr std::size_t kDsOffset = kDoOffset + common::align_up(sizeof(Element) * kRowChunk * kLdV);
  static constexpr std::size_t kSmemBytes = kDsOffset + common::align_up(sizeof(Element) * kRowChunk * kLdDs);
};

constexpr int kRowThreads = 256;  // delta and finish kernels

template <class Element, int kDv>
__global__ void __launch_bounds__(kRowThreads) cmp_bwd_delta_kernel(const __grid_constant__ CmpAttnParams p) {
  using Cvt = common::Convert<Element>;
  const long long rows = p.tokens * p.heads_q;
  const long long warps = static_cast<long long>(gridDim.x) * (kRowThreads / 32);
  const int lane = threadIdx.x % 32;
  for (long long row = (static_cast<long long>(blockIdx.x) * kRowThreads + threadIdx.x) / 32; row < rows;
       row += warps) {
    const long long t = row / p.heads_q;
    const int h = static_cast<int>(row % p.heads_q);
    const auto* o = static_cast<const Element*>(p.o) + t * p.o_token_stride + h * p.o_head_stride;
    const auto* d_o = static_cast<const Element*>(p.d_o) + t * p.do_token_stride + h * p.do_head_stride;
    float sum = 0.0f;
    for (int d = lane; d < kDv; d += 32) sum += Cvt::to_float(o[d]) * Cvt::to_float(d_o[d]);
#pragma unroll
    for (int mask = 16; mask > 0; mask /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, mask);
    if (lane == 0) p.delta[h * p.tokens + t] = sum;
  }
}

template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(BwdTraits<Element, kDqk, kDv>::kThreads)
    cmp_bwd_kv_outer_kernel(const __grid_constant__ CmpAttnParams p) {
  using T = BwdTraits<Element, kDqk, kDv>;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ long long row_token[T::kRowChunk];  // global token; -1: padding or a row that sees nothing
  __shared__ int row_head[T::kRowChunk];
  __shared__ int row_visible[T::kRowChunk];
  __shared__ float row_lse[T::kRowChunk];
  __shared__ float row_delta[T::kRowChunk];

  const int g = blockIdx.y, G = p.group;
  const SeqTile tile = find_seq_tile(p.cu_cmp, p.cu_cmp_stride, p.num_seqs, 1, T::kKeys, blockIdx.x);
  if (!tile.valid) return;
  const long long seq_start = p.cu_seqlens[tile.seq * p.cu_stride];
  const long long seq_len = p.cu_seqlens[(tile.seq + 1) * p.cu_stride] - seq_start;
  const long long cmp_start = p.cu_cmp[tile.seq * p.cu_cmp_stride];
  const long long cmp_len = p.cu_cmp[(tile.seq + 1) * p.cu_cmp_stride] - cmp_start;
  const int key0 = static_cast<int>(tile.first);  // local index of the tile's first compressed key
  const int keys = static_cast<int>(min(static_cast<long long>(T::kKeys), cmp_len - key0));
  auto* k_s = reinterpret_cast<Element*>(smem + T::kKOffset);
  auto* v_s = reinterpret_cast<Element*>(smem + T::kVOffset);
  auto* q_s = reinterpret_cast<Element*>(smem + T::kQOffset);
  auto* do_s = reinterpret_cast<Element*>(smem + T::kDoOffset);
  auto* ds_s = reinterpret_cast<Element*>(smem + T::kDsOffset);

  const auto* k = static_cast<const Element*>(p.k) + (cmp_start + key0) * p.k_row_stride + g * p.k_head_stride;
  const auto* v = static_cast<const Element*>(p.v) + (cmp_start + key0) * p.v_row_stride + g * p.v_head_stride;
  common::copy_tile_async<T::kKeys, kDqk, T::kThreads>(
      k_s, T::kLdQk, [&](int r) -> const Element* { return r < keys ? k + r * p.k_row_stride : nullptr; });
  common::copy_tile_async<T::kKeys, kDv, T::kThreads>(
      v_s, T::kLdV, [&](int r) -> const Element* { return r < keys ? v + r * p.v_row_stride : nullptr; });
  common::cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
  const int key_row0 = (warp % 4) * 16;  // this warp's keys in the tile
  const bool is_dk_warp = warp >= 4;
  // The first query that sees the tile's first key; every later token of the sequence sees it too.
  const long long first_token = static_cast<long long>(key0) * p.cmp_stride + p.cmp_len - 1;
  const long long rows = (seq_len - first_token) * G;
  const auto* q = static_cast<const Element*>(p.q);
  const auto* d_o = static_cast<const Element*>(p.d_o);
  const float scale = p.scale;

  float acc[T::kMaxD / 8][4];  // dV (dV warps, kDv columns) or dK (dK warps, kDqk columns)
  common::zero_acc<T::kMaxD>(acc);

  for (long long chunk = 0; chunk < rows; chunk += T::kRowChunk) {
    __syncthreads();  // the previous chunk is done with the row tables, Q, dO and dS
    if (threadIdx.x < T::kRowChunk) {
      const long long row = chunk + threadIdx.x;
      long long token = -1;
      int head = 0, visible = 0;
      float lse = 0.0f, delta = 0.0f;
      if (row < rows) {
        const long long t = first_token + row / G;
        head = g * G + static_cast<int>(row % G);
        const float row_lse_value = p.lse[head * p.lse_head_stride + (seq_start + t) * p.lse_token_stride];
        if (isfinite(row_lse_value)) {
          token = seq_start + t;
          visible = visible_count(t, p.cmp_len, p.cmp_stride);
          lse = row_lse_value;
          delta = p.delta[head * p.tokens + token];
        }
      }
      row_token[threadIdx.x] = token;
      row_head[threadIdx.x] = head;
      row_visible[threadIdx.x] = visible;
      row_lse[threadIdx.x] = lse;
      row_delta[threadIdx.x] = delta;
    }
    __syncthreads();
    common::copy_tile_async<T::kRowChunk, kDqk, T::kThreads>(q_s, T::kLdQk, [&](int r) -> const Element* {
      return row_token[r] >= 0 ? q + row_token[r] * p.q_token_stride + row_head[r] * p.q_head_stride : nullptr;
    });
    common::copy_tile_async<T::kRowChunk, kDv, T::kThreads>(do_s, T::kLdV, [&](int r) -> const Element* {
      return row_token[r] >= 0 ? d_o + row_token[r] * p.do_token_stride + row_head[r] * p.do_head_stride : nullptr;
    });
    common::cp_async_commit();
    common::cp_async_wait<0>();
    __syncthreads();

    // P^T for this warp's 16 keys x the chunk's rows: C element e of tile j is key
    // key_row0 + group + 8 * (e / 2), row j * 8 + 2 * pair + (e & 1).
    float st[T::kRowChunk / 8][4];
    common::zero_acc<T::kRowChunk>(st);
    common::warp_tile_mma<Element, kDqk, T::kRowChunk, false, false, T::kQkUnroll>(st, k_s, T::kLdQk, key_row0, q_s,
                                                                                    T::kLdQk, 0);
#pragma unroll
    for (int j = 0; j < T::kRowChunk / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = j * 8 + 2 * pair + (e & 1);
        const int key = key0 + key_row0 + group + 8 * (e / 2);
        st[j][e] = key < row_visible[r] ? __expf(st[j][e] * scale - row_lse[r]) : 0.0f;
      }

    if (!is_dk_warp) {
      // dV += P^T dO.
#pragma unroll
      for (int kk = 0; kk < T::kRowChunk / 16; ++kk) {
        std::uint32_t a[4];
        common::c_to_a<Element>(a, st[2 * kk], st[2 * kk + 1]);
#pragma unroll
        for (int n = 0; n < kDv / 8; n += 2) {
          std::uint32_t b[4];
          mma::ldmatrix_x4_trans(b, do_s + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * T::kLdV + n * 8 +
                                        (lane / 16) * 8);
          mma::mma_16816<Element>(acc[n], a, b[0], b[1]);
          mma::mma_16816<Element>(acc[n + 1], a, b[2], b[3]);
        }
      }
    } else {
      // dS^T = P^T (V dO^T - delta); dK += dS^T Q; dS into shared memory for dQ.
      float dpt[T::kRowChunk / 8][4];
      common::zero_acc<T::kRowChunk>(dpt);
      common::warp_tile_mma<Element, kDv, T::kRowChunk, false, false, T::kQkUnroll>(dpt, v_s, T::kLdV, key_row0,
                                                                                     do_s, T::kLdV, 0);
#pragma unroll
      for (int j = 0; j < T::kRowChunk / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = j * 8 + 2 * pair + (e & 1);
          const int key = key_row0 + group + 8 * (e / 2);
          st[j][e] = st[j][e] * (dpt[j][e] - row_delta[r]);
          ds_s[r * T::kLdDs + key] = common::Convert<Element>::from_float(st[j][e]);
        }
#pragma unroll
      for (int kk = 0; kk < T::kRowChunk / 16; ++kk) {
        std::uint32_t a[4];
        common::c_to_a<Element>(a, st[2 * kk], st[2 * kk + 1]);
#pragma unroll
        for (int n = 0; n < kDqk / 8; n += 2) {
          std::uint32_t b[4];
          mma::ldmatrix_x4_trans(b, q_s + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * T::kLdQk + n * 8 +
                                        (lane / 16) * 8);
          mma::mma_16816<Element>(acc[n], a, b[0], b[1]);
          mma::mma_16816<Element>(acc[n + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // dS complete

    // dQ = scale * dS K for the chunk.
    {
      const int dq_row0 = (warp % T::kDqRowGroups) * 16, dq_col0 = (warp / T::kDqRowGroups) * T::kDqCols;
      float dq[T::kDqCols / 8][4];
      common::zero_acc<T::kDqCols>(dq);
      common::warp_tile_mma<Element, T::kKeys, T::kDqCols, false, true>(dq, ds_s, T::kLdDs, dq_row0, k_s, T::kLdQk,
                                                                        dq_col0);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = dq_row0 + group + 8 * h;
        if (row_token[r] < 0) continue;
        float* dst = p.dq_accum + (row_token[r] * p.heads_q + row_head[r]) * kDqk + dq_col0 + 2 * pair;
#pragma unroll
        for (int n = 0; n < T::kDqCols / 8; ++n) {
          atomicAdd(dst + n * 8, scale * dq[n][2 * h]);
          atomicAdd(dst + n * 8 + 1, scale * dq[n][2 * h + 1]);
        }
      }
    }
  }
  common::cp_async_wait<0>();  // the K/V copies, when no chunk ran

  // The tile's dK (times scale) or dV.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int key = key_row0 + group + 8 * h;
    if (key >= keys) continue;
    const long long row = cmp_start + key0 + key;
    if (is_dk_warp) {
      Element* dst = static_cast<Element*>(p.dk) + row * p.dk_row_stride + g * p.dk_head_stride + 2 * pair;
#pragma unroll
      for (int n = 0; n < kDqk / 8; ++n)
        *reinterpret_cast<std::uint32_t*>(dst + n * 8) =
            mma::pack2<Element>(scale * acc[n][2 * h], scale * acc[n][2 * h + 1]);
    } else {
      Element* dst = static_cast<Element*>(p.dv) + row * p.dv_row_stride + g * p.dv_head_stride + 2 * pair;
#pragma unroll
      for (int n = 0; n < kDv / 8; ++n)
        *reinterpret_cast<std::uint32_t*>(dst + n * 8) = mma::pack2<Element>(acc[n][2 * h], acc[n][2 * h + 1]);
    }
  }
}

// blockIdx.y = 0: dq from the fp32 accumulator; 1: zero dk rows past cu_cmp[nseq]; 2: same for dv.
template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(kRowThreads) cmp_bwd_finish_kernel(const __grid_constant__ CmpAttnParams p) {
  using Cvt = common::Convert<Element>;
  const long long threads = static_cast<long long>(gridDim.x) * kRowThreads;
  const long long first = static_cast<long long>(blockIdx.x) * kRowThreads + threadIdx.x;
  if (blockIdx.y == 0) {
    const long long count = p.tokens * p.heads_q * kDqk;
    for (long long idx = first; idx < count; idx += threads) {
      const long long row = idx / kDqk;
      const int d = static_cast<int>(idx % kDqk);
      const long long t = row / p.heads_q;
      const int h = static_cast<int>(row % p.heads_q);
      static_cast<Element*>(p.dq)[t * p.dq_token_stride + h * p.dq_head_stride + d] = Cvt::from_float(p.dq_accum[idx]);
    }
    return;
  }
  const bool is_k = blockIdx.y == 1;
  const int dim = is_k ? kDqk : kDv;
  const long long used = p.cu_cmp[p.num_seqs * p.cu_cmp_stride];
  const long long count = (p.cmp_rows - used) * p.heads_kv * dim;
  for (long long idx = first; idx < count; idx += threads) {
    const long long row = used + idx / (p.heads_kv * dim);
    const int h = static_cast<int>(idx / dim % p.heads_kv), d = static_cast<int>(idx % dim);
    if (is_k)
      static_cast<Element*>(p.dk)[row * p.dk_row_stride + h * p.dk_head_stride + d] = Cvt::from_float(0.0f);
    else
      static_cast<Element*>(p.dv)[row * p.dv_row_stride + h * p.dv_head_stride + d] = Cvt::from_float(0.0f);
  }
}

constexpr long long kMaxRowCtas = 1 << 16;

inline unsigned row_ctas(long long threads) {
  return static_cast<unsigned>(std::max(1LL, std::min(kMaxRowCtas, (threads + kRowThreads - 1) / kRowThreads)));
}

}  // namespace fsa::cuda::cmp

namespace fsa::cuda {

template <class Element, int kDqk, int kDv>
Status launch_cmp_attn_backward(const CmpAttnParams& p, cudaStream_t stream) {
  using T = cmp::BwdTraits<Element, kDqk, kDv>;
  const long long n = p.tokens, hq = p.heads_q;
  if (n > 0 && hq > 0) {
    FSA_CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, static_cast<std::size_t>(n * hq * kDqk) * sizeof(float), stream));
    cmp::cmp_bwd_delta_kernel<Element, kDv><<<cmp::row_ctas(n * hq * 32), cmp::kRowThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("cmp_bwd_delta_kernel", stream);
  }
  if (p.num_seqs > 0 && p.cmp_rows > 0) {
    auto* kernel = cmp::cmp_bwd_kv_outer_kernel<Element, kDqk, kDv>;
    FSA_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(T::kSmemBytes)));
    const long long tiles = p.cmp_rows / T::kKeys + p.num_seqs;
    kernel<<<dim3(static_cast<unsigned>(tiles), p.heads_kv), T::kThreads, T::kSmemBytes, stream>>>(p);
    FSA_CHECK_LAUNCH("cmp_bwd_kv_outer_kernel", stream);
  }
  const long long largest =
      std::max<long long>(n * hq * kDqk, static_cast<long long>(p.cmp_rows) * p.heads_kv * std::max(kDqk, kDv));
  if (largest > 0) {
    cmp::cmp_bwd_finish_kernel<Element, kDqk, kDv><<<dim3(cmp::row_ctas(largest), 3), cmp::kRowThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("cmp_bwd_finish_kernel", stream);
  }
  return Status::ok();
}

}  // namespace fsa::cuda
