// Backward of selected attention in the FSA (KV-outer) loop order, over the forward's plan.
//
// 1. delta: delta[h, t] = rowsum(o * d_o) in fp32, one warp per (token, head).
// 2. kv_outer: one CTA per (work unit, key tile of kKeyTile keys of the unit's block). It loads the
//    tile's K and V once, then for each chunk of kRowChunk gathered rows (tokens x heads of the group)
//    recomputes S = Q K^T and dP = dO V^T on tensor cores (WMMA), P = exp(scale * S - lse) under the
//    causal and sequence-end masks and dS = P * (dP - delta). dV += P^T dO and dK += dS^T Q stay in
//    WMMA accumulators (registers) across the unit's chunks and are added to the fp32 dk/dv
//    accumulators at the end (by atomics: several units share a block); dQ = scale * dS K goes to
//    the fp32 dq accumulator by atomics after each chunk (a row meets up to `width` blocks).
// 3. convert: the fp32 accumulators -> dq, dk, dv in the input dtype, strided like q, k, v.
// Rows whose lse is not finite (empty key set) get zero gradients, as in the reference.
#pragma once

#include <mma.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "cuda/runtime.hpp"
#include "kernels/slc_attn/slc_common.cuh"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda::slc {

// Every tile size of the KV-outer backward kernel and its shared-memory layout.
template <class Element, int kDqk_, int kDv_>
struct BwdTraits {
  static constexpr int kDqk = kDqk_;
  static constexpr int kDv = kDv_;
  static_assert(kDqk % 16 == 0 && kDv % 16 == 0, "head dims must be multiples of 16 for WMMA");

  // Keys per CTA. A block of B = 128 keys takes two CTAs (gridDim.y) that gather the same rows: 128
  // keys per CTA would double the dK/dV accumulator registers and the P/dS tiles.
  static constexpr int kKeyTile = 64;
  // Rows gathered per step; a unit (kRowsPerUnit rows) takes several steps.
  static constexpr int kRowChunk = 64;
  static constexpr int kKeyFrags = kKeyTile / 16;
  static constexpr int kRowFrags = kRowChunk / 16;
  static constexpr int kDqkFrags = kDqk / 16;
  static constexpr int kDvFrags = kDv / 16;

  // The 16-wide column tiles of [dK | dV] are spread over the warps, kColsPerWarp each; a warp keeps
  // the kKeyFrags accumulators of each of its columns (8 fp32 registers per accumulator). The warp
  // count follows from it: 8 warps for 64/64 and 128/128, 10 for 192/128, 16 for 256/256, so every
  // warp holds at most 8 accumulators (64 registers).
  static constexpr int kGradCols = kDqkFrags + kDvFrags;
  static constexpr int kColsPerWarp = kGradCols >= 16 ? 2 : 1;
  static constexpr int kWarps = kGradCols / kColsPerWarp;
  static constexpr int kThreads = kWarps * 32;
  static_assert(kGradCols % kColsPerWarp == 0, "the [dK | dV] column tiles must split evenly over the warps");
  // Unrolling of the S and dP k-loops. At 16 warps (512 threads, 128 registers each) there is no
  // room for fragments loaded ahead (sm80 spilled), and the warps themselves hide the latency.
  static constexpr int kScoreUnroll = kWarps >= 16 ? 1 : 2;
  static_assert(kThreads <= 1024 && kRowChunk <= kThreads, "one thread per gathered row fills the row tables");
  static_assert(kKeyTile % 16 == 0 && kRowChunk % 16 == 0, "WMMA tiles are 16 x 16");

  // Leading dimensions (elements) of the shared tiles; see kPadHalf in slc_common.cuh.
  static constexpr int kLdK = kDqk + kPadHalf;  // K and Q rows
  static constexpr int kLdV = kDv + kPadHalf;   // V and dO rows
  static constexpr int kLdP = kKeyTile + kPadHalf;  // P and dS rows
  static constexpr int kStageFloats = 2 * 16 * 16;  // per warp: the S and dP tiles of one fragment

  static constexpr std::size_t kKOffset = 0;
  static constexpr std::size_t kVOffset = kKOffset + align_up(sizeof(Element) * kKeyTile * kLdK);
  static constexpr std::size_t kQOffset = kVOffset + align_up(sizeof(Element) * kKeyTile * kLdV);
  static constexpr std::size_t kDoOffset = kQOffset + align_up(sizeof(Element) * kRowChunk * kLdK);
  static constexpr std::size_t kPOffset = kDoOffset + align_up(sizeof(Element) * kRowChunk * kLdV);
  static constexpr std::size_t kDsOffset = kPOffset + align_up(sizeof(Element) * kRowChunk * kLdP);
  static constexpr std::size_t kStageOffset = kDsOffset + align_up(sizeof(Element) * kRowChunk * kLdP);
  // Row tables: q, dO and dq offsets (int64), local token, lse * log2(e) and delta.
  static constexpr std::size_t kRowsOffset = kStageOffset + align_up(sizeof(float) * kWarps * kStageFloats);
  static constexpr std::size_t kSmemBytes =
      kRowsOffset + align_up(kRowChunk * (3 * sizeof(long long) + sizeof(int) + 2 * sizeof(float)));

  // sm90: 227 KB per CTA (opt-in), 228 KB per SM with 1 KB reserved per CTA. Two CTAs per SM where
  // the shared memory allows it (64/64, 128/128), which caps registers at 128 per thread. Older
  // GPUs (at most 164 KB per SM) cannot hold two such CTAs, so they get no register cap.
  static constexpr std::size_t kSm90MaxSmemPerCta = 227 * 1024;
  static constexpr std::size_t kSm90SmemPerSm = 228 * 1024;
  static_assert(kSmemBytes <= kSm90MaxSmemPerCta, "the backward tiles must fit the sm90 shared memory");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  static constexpr int kMinBlocks = 1;
#else
  static constexpr int kMinBlocks = 2 * (kSmemBytes + 1024) <= kSm90SmemPerSm ? 2 : 1;
#endif
};

constexpr float kBwdLog2e = 1.4426950408889634f;  // P = exp2(S * scale * log2(e) - lse * log2(e))

// Issues cp.async copies of kRows rows of kDim elements (16-byte vectors: the launcher checks the
// alignment; the caller waits with cp_async_wait_all before its next barrier) into shared rows of leading dimension `ld`: row r comes from base + row_offset(r), and is zero-filled
// where row_offset(r) < 0 (padding rows must be zeros, not stale data: they meet zero probabilities
// in the MMAs, and 0 * NaN would poison the sums).
template <class Element, int kDim, int kRows, int kThreads, class RowOffset>
__device__ __forceinline__ void bwd_gather_rows(Element* dst, int ld, const Element* base, RowOffset row_offset) {
  constexpr int kVectors = kDim * static_cast<int>(sizeof(Element)) / 16;
  // Each thread keeps one vector column and steps over rows, so successive iterations differ by
  // constant offsets: no per-iteration addresses stay live next to the dK/dV accumulators.
  constexpr int kRowStep = kThreads / kVectors;
  static_assert(kRowStep > 0, "a row must fit in one pass of the CTA");
  if (threadIdx.x >= kRowStep * kVectors) return;
  const int vec = threadIdx.x % kVectors;
  for (int row = threadIdx.x / kVectors; row < kRows; row += kRowStep) {
    const long long offset = row_offset(row);
    uint4* to = reinterpret_cast<uint4*>(dst + row * ld) + vec;
    if (offset >= 0) {
      cp_async_16(to, reinterpret_cast<const uint4*>(base + offset) + vec);
    } else {
      *to = make_uint4(0, 0, 0, 0);
    }
  }
}

constexpr int kBwdRowThreads = 256;  // delta and convert kernels

// One warp per (token, head) row: delta = rowsum(o * d_o) in fp32.
template <class Element, int kDv>
__global__ void __launch_bounds__(kBwdRowThreads) slc_bwd_delta_kernel(const __grid_constant__ SlcBackwardParams p) {
  const long long n = p.plan.shape.tokens;
  const int hq = p.in.heads_q, lane = threadIdx.x % 32;
  const long long rows = n * hq;
  const long long warps = static_cast<long long>(gridDim.x) * (kBwdRowThreads / 32);
  for (long long row = (static_cast<long long>(blockIdx.x) * kBwdRowThreads + threadIdx.x) / 32; row < rows;
       row += warps) {
    const long long t = row / hq;
    const int h = static_cast<int>(row % hq);
    const auto* o = static_cast<const Element*>(p.o) + t * p.o_token_stride + h * p.o_head_stride;
    const auto* d_o = static_cast<const Element*>(p.d_o) + t * p.do_token_stride + h * p.do_head_stride;
    float sum = 0.0f;
    for (int d = lane; d < kDv; d += 32) sum += Convert<Element>::to_float(o[d]) * Convert<Element>::to_float(d_o[d]);
#pragma unroll
    for (int mask = 16; mask > 0; mask /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, mask);
    if (lane == 0) p.delta[h * n + t] = sum;
  }
}

template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(BwdTraits<Element, kDqk, kDv>::kThreads, BwdTraits<Element, kDqk, kDv>::kMinBlocks)
    slc_bwd_kv_outer_kernel(const __grid_constant__ SlcBackwardParams p) {
  using namespace nvcuda;
  using T = BwdTraits<Element, kDqk, kDv>;
  using Cvt = Convert<Element>;
  using Accumulator = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  extern __shared__ __align__(128) unsigned char smem[];

  UnitWork w;
  if (!find_unit(p.plan, p.in.cu_seqlens, p.in.cu_stride, blockIdx.x, &w)) return;
  const int B = p.plan.shape.block_size, G = p.plan.shape.group;
  const int key_first = static_cast<int>(blockIdx.y) * T::kKeyTile;  // first key of the tile in its block
  const int key_count = min(T::kKeyTile, w.keys - key_first);
  if (key_count <= 0) return;  // second tile of a block cut short by the sequence end
  const int key_frags = (key_count + 15) / 16;
  const long long key_begin = static_cast<long long>(w.block) * B + key_first;  // local position of key 0

  auto* k_s = reinterpret_cast<Element*>(smem + T::kKOffset);
  auto* v_s = reinterpret_cast<Element*>(smem + T::kVOffset);
  auto* q_s = reinterpret_cast<Element*>(smem + T::kQOffset);
  auto* do_s = reinterpret_cast<Element*>(smem + T::kDoOffset);
  auto* p_s = reinterpret_cast<Element*>(smem + T::kPOffset);
  auto* ds_s = reinterpret_cast<Element*>(smem + T::kDsOffset);
  auto* row_q_offset = reinterpret_cast<long long*>(smem + T::kRowsOffset);
  long long* row_do_offset = row_q_offset + T::kRowChunk;
  long long* row_dq_offset = row_do_offset + T::kRowChunk;  // -1: padding or inactive row
  auto* row_t_local = reinterpret_cast<int*>(row_dq_offset + T::kRowChunk);  // -1 masks every key
  auto* row_lse_log2 = reinterpret_cast<float*>(row_t_local + T::kRowChunk);
  float* row_delta = row_lse_log2 + T::kRowChunk;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* stage = reinterpret_cast<float*>(smem + T::kStageOffset) + warp * T::kStageFloats;

  // The tile's keys and values, once for all rows of the unit.
  const auto* k = static_cast<const Element*>(p.in.k) + (w.seq_start + key_begin) * p.in.k_token_stride +
                  w.kv_head * p.in.k_head_stride;
  const auto* v = static_cast<const Element*>(p.in.v) + (w.seq_start + key_begin) * p.in.v_token_stride +
                  w.kv_head * p.in.v_head_stride;
  bwd_gather_rows<Element, kDqk, T::kKeyTile, T::kThreads>(
      k_s, T::kLdK, k, [&](int r) { return r < key_count ? r * p.in.k_token_stride : -1LL; });
  bwd_gather_rows<Element, kDv, T::kKeyTile, T::kThreads>(
      v_s, T::kLdV, v, [&](int r) { return r < key_count ? r * p.in.v_token_stride : -1LL; });
  cp_async_wait_all();

  const auto* q = static_cast<const Element*>(p.in.q);
  const auto* d_o = static_cast<const Element*>(p.d_o);
  const float scale = p.in.scale, scale_log2 = p.in.scale * kBwdLog2e;
  const long long n = p.plan.shape.tokens;

  // dK and dV of this warp's [dK | dV] columns: acc[c][f] is rows 16f.. of column tile warp + c * kWarps.
  Accumulator acc[T::kColsPerWarp][T::kKeyFrags];
#pragma unroll
  for (int c = 0; c < T::kColsPerWarp; ++c)
#pragma unroll
    for (int f = 0; f < T::kKeyFrags; ++f) wmma::fill_fragment(acc[c][f], 0.0f);

  for (int chunk = w.row_begin; chunk < w.row_end; chunk += T::kRowChunk) {
    const int rows = min(T::kRowChunk, w.row_end - chunk);
    const int row_frags = (rows + 15) / 16;
    __syncthreads();  // the previous chunk is done with the row tables, Q, dO, P and dS

    if (threadIdx.x < T::kRowChunk) {
      const int r = threadIdx.x;
      long long q_offset = -1, do_offset = -1, dq_offset = -1;
      int t_local = -1;
      float lse_log2 = 0.0f, delta = 0.0f;
      if (r < rows) {
        const int row = chunk + r;
        const long long token = p.plan.pair_token[w.pair_base + row / G];
        const int head = w.kv_head * G + row % G;
        const float lse = p.lse[head * p.lse_head_stride + token * p.lse_token_stride];
        if (isfinite(lse)) {
          q_offset = token * p.in.q_token_stride + head * p.in.q_head_stride;
          do_offset = token * p.do_token_stride + head * p.do_head_stride;
          dq_offset = (token * p.in.heads_q + head) * kDqk;
          t_local = static_cast<int>(token - w.seq_start);
          lse_log2 = lse * kBwdLog2e;
          delta = p.delta[head * n + token];
        }
      }
      row_q_offset[r] = q_offset;
      row_do_offset[r] = do_offset;
      row_dq_offset[r] = dq_offset;
      row_t_local[r] = t_local;
      row_lse_log2[r] = lse_log2;
      row_delta[r] = delta;
    }
    __syncthreads();
    bwd_gather_rows<Element, kDqk, T::kRowChunk, T::kThreads>(q_s, T::kLdK, q,
                                                              [&](int r) { return row_q_offset[r]; });
    bwd_gather_rows<Element, kDv, T::kRowChunk, T::kThreads>(do_s, T::kLdV, d_o,
                                                             [&](int r) { return row_do_offset[r]; });
    cp_async_wait_all();
    __syncthreads();

    // P and dS, one 16 x 16 (rows x keys) fragment per warp at a time. Fragments past the chunk's
    // rows or the tile's keys are never read below, so they are skipped.
    for (int tile = warp; tile < T::kRowFrags * T::kKeyFrags; tile += T::kWarps) {
      const int rf = tile / T::kKeyFrags, kf = tile % T::kKeyFrags;
      if (rf >= row_frags || kf >= key_frags) continue;
      Accumulator s, dp;
      wmma::fill_fragment(s, 0.0f);
      wmma::fill_fragment(dp, 0.0f);
#pragma unroll T::kScoreUnroll
      for (int d = 0; d < kDqk; d += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, Element, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, Element, wmma::col_major> k_t;  // K^T
        wmma::load_matrix_sync(a, q_s + rf * 16 * T::kLdK + d, T::kLdK);
        wmma::load_matrix_sync(k_t, k_s + kf * 16 * T::kLdK + d, T::kLdK);
        wmma::mma_sync(s, a, k_t, s);
      }
#pragma unroll T::kScoreUnroll
      for (int d = 0; d < kDv; d += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, Element, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, Element, wmma::col_major> v_t;  // V^T
        wmma::load_matrix_sync(a, do_s + rf * 16 * T::kLdV + d, T::kLdV);
        wmma::load_matrix_sync(v_t, v_s + kf * 16 * T::kLdV + d, T::kLdV);
        wmma::mma_sync(dp, a, v_t, dp);
      }
      wmma::store_matrix_sync(stage, s, 16, wmma::mem_row_major);
      wmma::store_matrix_sync(stage + 256, dp, 16, wmma::mem_row_major);
      __syncwarp();
      const int c = kf * 16 + lane % 16;
#pragma unroll
      for (int tile_row = lane / 16; tile_row < 16; tile_row += 2) {  // a half-warp per row
        const int idx = tile_row * 16 + lane % 16, r = rf * 16 + tile_row;
        float prob = 0.0f, ds = 0.0f;
        if (c < key_count && key_begin + c <= row_t_local[r]) {
          prob = exp2f(fmaf(stage[idx], scale_log2, -row_lse_log2[r]));
          ds = prob * (stage[256 + idx] - row_delta[r]);
        }
        p_s[r * T::kLdP + c] = Cvt::from_float(prob);
        ds_s[r * T::kLdP + c] = Cvt::from_float(ds);
      }
      __syncwarp();  // the stage is rewritten by the next fragment
    }
    __syncthreads();

    // dK += dS^T Q and dV += P^T dO for this warp's columns; dS^T and P^T are col-major views of
    // the row-major dS and P tiles.
#pragma unroll
    for (int c = 0; c < T::kColsPerWarp; ++c) {
      const int col = warp + c * T::kWarps;
      const bool is_dk = col < T::kDqkFrags;
      const Element* a_src = is_dk ? ds_s : p_s;
      const Element* b_src = is_dk ? q_s + col * 16 : do_s + (col - T::kDqkFrags) * 16;
      const int ld_b = is_dk ? T::kLdK : T::kLdV;
      for (int rf = 0; rf < row_frags; ++rf) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, Element, wmma::row_major> b;
        wmma::load_matrix_sync(b, b_src + rf * 16 * ld_b, ld_b);
#pragma unroll
        for (int f = 0; f < T::kKeyFrags; ++f) {
          if (f < key_frags) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, Element, wmma::col_major> a_t;
            wmma::load_matrix_sync(a_t, a_src + rf * 16 * T::kLdP + f * 16, T::kLdP);
            wmma::mma_sync(acc[c][f], a_t, b, acc[c][f]);
          }
        }
      }
    }

    // dQ = scale * dS K, added to the fp32 accumulator of each row.
    for (int tile = warp; tile < T::kRowFrags * T::kDqkFrags; tile += T::kWarps) {
      const int rf = tile / T::kDqkFrags, df = tile % T::kDqkFrags;
      if (rf >= row_frags) break;  // tiles are ordered by row fragment
      Accumulator dq;
      wmma::fill_fragment(dq, 0.0f);
      for (int f = 0; f < key_frags; ++f) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, Element, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, Element, wmma::row_major> b;
        wmma::load_matrix_sync(a, ds_s + rf * 16 * T::kLdP + f * 16, T::kLdP);
        wmma::load_matrix_sync(b, k_s + f * 16 * T::kLdK + df * 16, T::kLdK);
        wmma::mma_sync(dq, a, b, dq);
      }
      wmma::store_matrix_sync(stage, dq, 16, wmma::mem_row_major);
      __syncwarp();
#pragma unroll 4
      for (int tile_row = lane / 16; tile_row < 16; tile_row += 2) {  // a half-warp per row: 64 contiguous bytes
        const long long offset = row_dq_offset[rf * 16 + tile_row];
        if (offset >= 0) atomicAdd(p.dq_accum + offset + df * 16 + lane % 16, scale * stage[tile_row * 16 + lane % 16]);
      }
      __syncwarp();
    }
  }

  // The tile's dK (times scale) and dV into the fp32 accumulators of its keys.
  const int hkv = p.plan.shape.heads_kv;
#pragma unroll
  for (int c = 0; c < T::kColsPerWarp; ++c) {
    const int col = warp + c * T::kWarps;
    const bool is_dk = col < T::kDqkFrags;
    float* dst = is_dk ? p.dk_accum + col * 16 : p.dv_accum + (col - T::kDqkFrags) * 16;
    const int dim = is_dk ? kDqk : kDv;
    const float factor = is_dk ? scale : 1.0f;
#pragma unroll
    for (int f = 0; f < T::kKeyFrags; ++f) {
      if (f >= key_frags) continue;
      wmma::store_matrix_sync(stage, acc[c][f], 16, wmma::mem_row_major);
      __syncwarp();
#pragma unroll 4
      for (int tile_row = lane / 16; tile_row < 16; tile_row += 2) {
        const int key = f * 16 + tile_row;
        if (key < key_count) {
          const long long kv_row = (w.seq_start + key_begin + key) * hkv + w.kv_head;
          atomicAdd(dst + kv_row * dim + lane % 16, factor * stage[tile_row * 16 + lane % 16]);
        }
      }
      __syncwarp();
    }
  }
}

// Rows [tokens * heads, kDim] of a contiguous fp32 accumulator into a strided output, 4 elements
// per step (the accumulators are 16-byte aligned; the outputs may have any strides).
template <class Element, int kDim>
__device__ __forceinline__ void bwd_convert_rows(const float* src, Element* dst, long long rows, int heads,
                                                 std::int64_t token_stride, std::int64_t head_stride) {
  constexpr int kQuads = kDim / 4;
  const long long quads = rows * kQuads;
  const long long threads = static_cast<long long>(gridDim.x) * kBwdRowThreads;
  for (long long idx = static_cast<long long>(blockIdx.x) * kBwdRowThreads + threadIdx.x; idx < quads;
       idx += threads) {
    const long long row = idx / kQuads;
    const int d = static_cast<int>(idx % kQuads) * 4;
    const long long t = row / heads;
    const int h = static_cast<int>(row - t * heads);
    const float4 value = reinterpret_cast<const float4*>(src)[idx];
    Element* out = dst + t * token_stride + h * head_stride + d;
    out[0] = Convert<Element>::from_float(value.x);
    out[1] = Convert<Element>::from_float(value.y);
    out[2] = Convert<Element>::from_float(value.z);
    out[3] = Convert<Element>::from_float(value.w);
  }
}

// The fp32 accumulators into the outputs: blockIdx.y picks dq, dk or dv.
template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(kBwdRowThreads) slc_bwd_convert_kernel(const __grid_constant__ SlcBackwardParams p) {
  const long long n = p.plan.shape.tokens;
  const int hq = p.in.heads_q, hkv = p.plan.shape.heads_kv;
  if (blockIdx.y == 0)
    bwd_convert_rows<Element, kDqk>(p.dq_accum, static_cast<Element*>(p.dq), n * hq, hq, p.dq_token_stride,
                                    p.dq_head_stride);
  else if (blockIdx.y == 1)
    bwd_convert_rows<Element, kDqk>(p.dk_accum, static_cast<Element*>(p.dk), n * hkv, hkv, p.dk_token_stride,
                                    p.dk_head_stride);
  else
    bwd_convert_rows<Element, kDv>(p.dv_accum, static_cast<Element*>(p.dv), n * hkv, hkv, p.dv_token_stride,
                                   p.dv_head_stride);
}

// Grid-stride kernels need no more CTAs than this to fill any current GPU.
constexpr long long kBwdMaxRowCtas = 1 << 16;

inline unsigned bwd_row_ctas(long long threads) {
  return static_cast<unsigned>(std::min(kBwdMaxRowCtas, (threads + kBwdRowThreads - 1) / kBwdRowThreads));
}

// The KV-outer kernel moves rows as 16-byte vectors.
template <class Element>
Status check_bwd_rows_aligned(const char* name, const void* data, std::int64_t token_stride, std::int64_t head_stride) {
  constexpr std::int64_t kVector = 16 / sizeof(Element);
  if (reinterpret_cast<std::uintptr_t>(data) % 16 != 0 || token_stride % kVector != 0 || head_stride % kVector != 0)
    return FSA_ERROR(StatusCode::kNotImplemented, std::string(name) +
                                                      ": the CUDA selected attention backward needs 16-byte aligned "
                                                      "rows (data pointer and token/head strides)");
  return Status::ok();
}

}  // namespace fsa::cuda::slc

namespace fsa::cuda {

template <class Element, int kDqk, int kDv>
Status launch_slc_backward(const SlcBackwardParams& p, cudaStream_t stream) {
  using Traits = slc::BwdTraits<Element, kDqk, kDv>;
  const SlcPlanShape& shape = p.plan.shape;
  const int B = shape.block_size;
  if (B != 32 && B != 64 && B != 128)
    return FSA_INVALID("block_size: expected 32, 64 or 128, got " + std::to_string(B));
  const long long n = shape.tokens, hq = p.in.heads_q, hkv = shape.heads_kv;
  if (n == 0 || hq == 0) return Status::ok();
  FSA_RETURN_IF_ERROR(slc::check_bwd_rows_aligned<Element>("q", p.in.q, p.in.q_token_stride, p.in.q_head_stride));
  FSA_RETURN_IF_ERROR(slc::check_bwd_rows_aligned<Element>("k", p.in.k, p.in.k_token_stride, p.in.k_head_stride));
  FSA_RETURN_IF_ERROR(slc::check_bwd_rows_aligned<Element>("v", p.in.v, p.in.v_token_stride, p.in.v_head_stride));
  FSA_RETURN_IF_ERROR(slc::check_bwd_rows_aligned<Element>("d_o", p.d_o, p.do_token_stride, p.do_head_stride));
  for (const float* accum : {p.dq_accum, p.dk_accum, p.dv_accum})
    if (reinterpret_cast<std::uintptr_t>(accum) % 16 != 0)
      return FSA_ERROR(StatusCode::kInternal, "slc_attn_backward: the fp32 gradient accumulators must be 16-byte aligned");

  int device = 0, smem_limit = 0;
  FSA_CUDA_CHECK(cudaGetDevice(&device));
  FSA_CUDA_CHECK(cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  constexpr std::size_t kSmem = Traits::kSmemBytes;
  if (kSmem > static_cast<std::size_t>(smem_limit))
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "slc_attn_backward: head dims " + std::to_string(kDqk) + "/" + std::to_string(kDv) +
                         " with block size " + std::to_string(B) + " need " + std::to_string(kSmem) +
                         " bytes of shared memory per CTA, the device offers " + std::to_string(smem_limit));
  auto* kv_outer = slc::slc_bwd_kv_outer_kernel<Element, kDqk, kDv>;
  FSA_CUDA_CHECK(cudaFuncSetAttribute(kv_outer, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem)));
  // Lets two CTAs share an SM where kMinBlocks promises it.
  FSA_CUDA_CHECK(
      cudaFuncSetAttribute(kv_outer, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  const long long units = shape.max_units();
  if (units > INT_MAX)
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "slc_attn_backward: " + std::to_string(units) + " work units exceed the grid limit");

  FSA_CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, static_cast<std::size_t>(n * hq * kDqk) * sizeof(float), stream));
  FSA_CUDA_CHECK(cudaMemsetAsync(p.dk_accum, 0, static_cast<std::size_t>(n * hkv * kDqk) * sizeof(float), stream));
  FSA_CUDA_CHECK(cudaMemsetAsync(p.dv_accum, 0, static_cast<std::size_t>(n * hkv * kDv) * sizeof(float), stream));

  slc::slc_bwd_delta_kernel<Element, kDv><<<slc::bwd_row_ctas(n * hq * 32), slc::kBwdRowThreads, 0, stream>>>(p);
  FSA_CHECK_LAUNCH("slc_bwd_delta_kernel", stream);

  if (units > 0) {
    const dim3 grid(static_cast<unsigned>(units), static_cast<unsigned>((B + Traits::kKeyTile - 1) / Traits::kKeyTile));
    kv_outer<<<grid, Traits::kThreads, kSmem, stream>>>(p);
    FSA_CHECK_LAUNCH("slc_bwd_kv_outer_kernel", stream);
  }

  const long long largest_quads = n * std::max(hq * kDqk, hkv * std::max(kDqk, kDv)) / 4;
  slc::slc_bwd_convert_kernel<Element, kDqk, kDv>
      <<<dim3(slc::bwd_row_ctas(largest_quads), 3), slc::kBwdRowThreads, 0, stream>>>(p);
  FSA_CHECK_LAUNCH("slc_bwd_convert_kernel", stream);
  return Status::ok();
}

}  // namespace fsa::cuda
