// Forward of selected attention in the FSA (KV-outer) loop order.
//
// 1. kv_outer: one CTA per work unit (up to kRowsPerUnit rows of one (kv head, key block) list).
//    It loads the block's K and V once into shared memory, then for each chunk of 64 gathered query
//    rows (tokens x heads of the group) computes S = Q K^T on tensor cores (WMMA), the softmax of
//    each row over the block's keys (causal and sequence-end masks), O = P V, and writes the row's
//    normalized partial output and natural-log lse into the pair's slot.
// 2. merge: one warp per (token, head) combines the row's partials by log-sum-exp into o and lse;
//    a row without pairs gets o = 0 and lse = -inf.
// Every row is computed independently of the others in its chunk, so results do not depend on the
// (atomic, run-dependent) order of the lists.
#pragma once

#include <mma.h>

#include "cuda/runtime.hpp"
#include "kernels/slc_attn/slc_common.cuh"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda::slc {

constexpr int kFwdThreads = 128;  // 4 warps x 16 rows = one chunk of 64 rows
constexpr int kFwdChunkRows = 64;

template <class Element, int kDqk, int kDv>
struct FwdSmem {
  static_assert(kDqk % 16 == 0 && kDv % 16 == 0, "head dims must be multiples of 16 for WMMA");
  static constexpr int kLdQk = kDqk + kPadHalf;
  static constexpr int kLdV = kDv + kPadHalf;
  int block_size;
  __host__ __device__ int ld_s() const { return block_size + kPadFloat; }
  __host__ __device__ int ld_p() const { return block_size + kPadHalf; }
  __host__ __device__ std::size_t k_offset() const { return 0; }
  __host__ __device__ std::size_t v_offset() const {
    return k_offset() + align_up(sizeof(Element) * block_size * kLdQk);
  }
  __host__ __device__ std::size_t q_offset() const { return v_offset() + align_up(sizeof(Element) * block_size * kLdV); }
  __host__ __device__ std::size_t s_offset() const {
    return q_offset() + align_up(sizeof(Element) * kFwdChunkRows * kLdQk);
  }
  __host__ __device__ std::size_t p_offset() const { return s_offset() + align_up(sizeof(float) * kFwdChunkRows * ld_s()); }
  __host__ __device__ std::size_t staging_offset() const {
    return p_offset() + align_up(sizeof(Element) * kFwdChunkRows * ld_p());
  }
  __host__ __device__ std::size_t rows_offset() const {
    return staging_offset() + align_up(sizeof(float) * (kFwdThreads / 32) * 256);
  }
  __host__ __device__ std::size_t bytes() const { return rows_offset() + align_up(sizeof(int) * 4 * kFwdChunkRows); }
};

// Copies `count` rows of `dim` elements (16-byte vectors) from global rows into shared rows of
// leading dimension `ld` with cp.async; rows whose source is null are zero-filled. The caller waits
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

template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(kFwdThreads) slc_fwd_kv_outer_kernel(const __grid_constant__ SlcForwardParams p) {
  using namespace nvcuda;
  using Smem = FwdSmem<Element, kDqk, kDv>;
  extern __shared__ __align__(128) unsigned char smem[];
  UnitWork w;
  if (!find_unit(p.plan, p.in.cu_seqlens, p.in.cu_stride, blockIdx.x, &w)) return;
  const int B = p.plan.shape.block_size, G = p.plan.shape.group, width = p.plan.shape.width;
  const Smem layout{B};
  auto* k_s = reinterpret_cast<Element*>(smem + layout.k_offset());
  auto* v_s = reinterpret_cast<Element*>(smem + layout.v_offset());
  auto* q_s = reinterpret_cast<Element*>(smem + layout.q_offset());
  auto* s_s = reinterpret_cast<float*>(smem + layout.s_offset());
  auto* p_s = reinterpret_cast<Element*>(smem + layout.p_offset());
  auto* staging = reinterpret_cast<float*>(smem + layout.staging_offset());
  auto* row_token = reinterpret_cast<int*>(smem + layout.rows_offset());  // global token, -1 = padding
  int* row_head = row_token + kFwdChunkRows;
  int* row_slot = row_head + kFwdChunkRows;
  __shared__ const Element* sources[2 * 128];  // K rows then V rows; later the chunk's Q rows

  // The block's keys and values, once for all rows of the unit.
  const auto* k = static_cast<const Element*>(p.in.k);
  const auto* v = static_cast<const Element*>(p.in.v);
  const long long key0 = w.seq_start + static_cast<long long>(w.block) * B;
  for (int c = threadIdx.x; c < B; c += blockDim.x) {
    sources[c] = c < w.keys ? k + (key0 + c) * p.in.k_token_stride + w.kv_head * p.in.k_head_stride : nullptr;
    sources[B + c] = c < w.keys ? v + (key0 + c) * p.in.v_token_stride + w.kv_head * p.in.v_head_stride : nullptr;
  }
  __syncthreads();
  issue_rows<Element, kDqk>(k_s, Smem::kLdQk, B, sources);
  issue_rows<Element, kDv>(v_s, Smem::kLdV, B, sources + B);
  cp_async_wait_all();

  const auto* q = static_cast<const Element*>(p.in.q);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int chunk = w.row_begin; chunk < w.row_end; chunk += kFwdChunkRows) {
    __syncthreads();  // previous chunk done with q_s, sources and the row tables
    if (threadIdx.x < kFwdChunkRows) {
      const int r = chunk + threadIdx.x;
      int token = -1, head = 0, slot = 0;
      if (r < w.row_end) {
        const int entry = w.pair_base + r / G;
        token = p.plan.pair_token[entry];
        slot = p.plan.pair_slot[entry];
        head = w.kv_head * G + r % G;
      }
      row_token[threadIdx.x] = token;
      row_head[threadIdx.x] = head;
      row_slot[threadIdx.x] = slot;
      sources[threadIdx.x] = token >= 0 ? q + token * p.in.q_token_stride + head * p.in.q_head_stride : nullptr;
    }
    __syncthreads();
    issue_rows<Element, kDqk>(q_s, Smem::kLdQk, kFwdChunkRows, sources);
    cp_async_wait_all();
    __syncthreads();

    // From here on each warp works on its own 16 rows; K and V are only read.
    const int row0 = warp * 16;
    for (int n0 = 0; n0 < B; n0 += 16) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int k0 = 0; k0 < kDqk; k0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, Element, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, Element, wmma::col_major> bt;  // K^T
        wmma::load_matrix_sync(a, q_s + row0 * Smem::kLdQk + k0, Smem::kLdQk);
        wmma::load_matrix_sync(bt, k_s + n0 * Smem::kLdQk + k0, Smem::kLdQk);
        wmma::mma_sync(acc, a, bt, acc);
      }
      wmma::store_matrix_sync(s_s + row0 * layout.ld_s() + n0, acc, layout.ld_s(), wmma::mem_row_major);
    }
    __syncwarp();

    // Softmax over the block's keys: two lanes per row, each taking every other column.
    const int row = row0 + lane / 2, half = lane % 2;
    const int token = row_token[row];
    const long long t_local = token - w.seq_start;
    const long long first_key = static_cast<long long>(w.block) * B;
    float row_max = -INFINITY;
    for (int c = half; c < B; c += 2)
      if (c < w.keys && first_key + c <= t_local) row_max = fmaxf(row_max, p.in.scale * s_s[row * layout.ld_s() + c]);
    row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
    float row_sum = 0.0f;
    for (int c = half; c < B; c += 2) {
      const bool valid = c < w.keys && first_key + c <= t_local;
      const float e = valid ? __expf(p.in.scale * s_s[row * layout.ld_s() + c] - row_max) : 0.0f;
      s_s[row * layout.ld_s() + c] = e;
      row_sum += e;
    }
    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
    const float inv_sum = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;
    for (int c = half; c < B; c += 2)
      p_s[row * layout.ld_p() + c] = Convert<Element>::from_float(s_s[row * layout.ld_s() + c] * inv_sum);
    __syncwarp();

    // O = P V, one 16x16 output tile at a time, written straight to the pair's slot.
    float* tile = staging + warp * 256;
    auto* o_part = static_cast<Element*>(p.part.o);
    for (int n0 = 0; n0 < kDv; n0 += 16) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int k0 = 0; k0 < B; k0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, Element, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, Element, wmma::row_major> bv;
        wmma::load_matrix_sync(a, p_s + row0 * layout.ld_p() + k0, layout.ld_p());
        wmma::load_matrix_sync(bv, v_s + k0 * Smem::kLdV + n0, Smem::kLdV);
        wmma::mma_sync(acc, a, bv, acc);
      }
      wmma::store_matrix_sync(tile, acc, 16, wmma::mem_row_major);
      __syncwarp();
      const int r = lane / 2, col0 = (lane % 2) * 8;
      const int out_token = row_token[row0 + r];
      if (out_token >= 0) {
        const long long slot_row =
            (static_cast<long long>(out_token) * p.in.heads_q + row_head[row0 + r]) * width + row_slot[row0 + r];
        // Eight consecutive outputs as one 16-byte store (the partial buffer is 16-byte aligned and
        // Dv is a multiple of 16).
        union {
          uint4 vector;
          Element elements[8];
        } packed;
#pragma unroll
        for (int e = 0; e < 8; ++e) packed.elements[e] = Convert<Element>::from_float(tile[r * 16 + col0 + e]);
        *reinterpret_cast<uint4*>(o_part + slot_row * kDv + n0 + col0) = packed.vector;
      }
      __syncwarp();
    }
    if (half == 0 && token >= 0) {
      const long long slot_row = (static_cast<long long>(token) * p.in.heads_q + row_head[row]) * width + row_slot[row];
      p.part.lse[slot_row] = row_sum > 0.0f ? row_max + logf(row_sum) : -INFINITY;
    }
  }
}

// One warp per (token, head): log-sum-exp merge of the row's partials.
template <class Element, int kDv>
__global__ void __launch_bounds__(kFwdThreads) slc_fwd_merge_kernel(const __grid_constant__ SlcForwardParams p) {
  const long long row = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const long long n = p.plan.shape.tokens;
  const int hq = p.in.heads_q, width = p.plan.shape.width, G = p.plan.shape.group;
  if (row >= n * hq) return;
  const long long t = row / hq;
  const int h = static_cast<int>(row % hq);
  const std::uint64_t mask = p.plan.slot_mask[(h / G) * n + t];
  const float* lse_part = p.part.lse + row * width;
  float row_max = -INFINITY;
  for (std::uint64_t m = mask; m != 0; m &= m - 1) row_max = fmaxf(row_max, lse_part[__ffsll(static_cast<long long>(m)) - 1]);
  constexpr int kPerLane = (kDv + 31) / 32;
  float acc[kPerLane] = {};
  float total = 0.0f;
  if (row_max != -INFINITY) {
    const auto* o_part = static_cast<const Element*>(p.part.o) + row * width * kDv;
    for (std::uint64_t m = mask; m != 0; m &= m - 1) {
      const int slot = __ffsll(static_cast<long long>(m)) - 1;
      const float weight = __expf(lse_part[slot] - row_max);
      total += weight;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int d = lane + 32 * i;
        if (d < kDv) acc[i] += weight * Convert<Element>::to_float(o_part[slot * kDv + d]);
      }
    }
  }
  auto* o = static_cast<Element*>(p.o) + t * p.o_token_stride + h * p.o_head_stride;
  const float inv_total = total > 0.0f ? 1.0f / total : 0.0f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < kDv) o[d] = Convert<Element>::from_float(acc[i] * inv_total);
  }
  if (lane == 0) p.lse[h * p.lse_head_stride + t * p.lse_token_stride] = total > 0.0f ? row_max + logf(total) : -INFINITY;
}

template <class Element, int kDqk, int kDv>
Status launch_slc_forward(const SlcForwardParams& p, cudaStream_t stream) {
  const FwdSmem<Element, kDqk, kDv> layout{p.plan.shape.block_size};
  const std::size_t smem = layout.bytes();
  int device = 0, smem_limit = 0;
  FSA_CUDA_CHECK(cudaGetDevice(&device));
  FSA_CUDA_CHECK(cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (smem > static_cast<std::size_t>(smem_limit))
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "slc_attn_forward: head dims " + std::to_string(kDqk) + "/" + std::to_string(kDv) +
                         " with block size " + std::to_string(p.plan.shape.block_size) + " need " +
                         std::to_string(smem) + " bytes of shared memory, the device offers " +
                         std::to_string(smem_limit));
  auto* kv_outer = slc_fwd_kv_outer_kernel<Element, kDqk, kDv>;
  FSA_CUDA_CHECK(cudaFuncSetAttribute(kv_outer, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const long long units = p.plan.shape.max_units();
  if (units > 0) {
    kv_outer<<<static_cast<unsigned>(units), kFwdThreads, smem, stream>>>(p);
    FSA_CHECK_LAUNCH("slc_fwd_kv_outer_kernel", stream);
  }
  const long long rows = p.plan.shape.tokens * p.in.heads_q;
  if (rows > 0) {
    const long long ctas = (rows * 32 + kFwdThreads - 1) / kFwdThreads;
    slc_fwd_merge_kernel<Element, kDv><<<static_cast<unsigned>(ctas), kFwdThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("slc_fwd_merge_kernel", stream);
  }
  return Status::ok();
}

}  // namespace fsa::cuda::slc
