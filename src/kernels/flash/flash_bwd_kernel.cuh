// Backward of the masked flash attention (flash_params.hpp), KV-outer with the rows of every key
// tile split over several CTAs (flash_split.hpp).
//
// 1. delta = rowsum(o * d_o) (flash_bwd_rows.cuh); the fp32 dq / dk / dv accumulators are zeroed.
// 2. Main kernel: one CTA per (tile of kKeys keys of one sequence, kv head g, block of query rows).
//    The tile's K and V stay in shared memory; the CTA walks its block of rows in chunks (rows
//    packed tokens x G heads, Q and dO of the next chunk prefetched with cp.async while the
//    current one is computed). Key group kg (16 keys) has two warps:
//      P warp:  S^T = K Q^T, P^T = exp(scale S^T - lse) under the key intervals, P^T -> shared
//               memory (fp32, in fragment order), then dV += P^T dO;
//      dS warp: dP^T = V dO^T, then dS^T = P^T (dP^T - delta) with P^T from shared memory, dS ->
//               shared memory (input dtype), dK += dS^T Q.
//    Both warps of a group do two of the four products of a chunk, so neither waits for the other
//    and S is computed once. Then all warps compute dQ = scale dS K for the chunk and add it to the
//    dq accumulator with 16-byte fp32 atomics (common/fragment_atomic.cuh). At the end the CTA
//    adds its dK (times scale) / dV partial to the dk / dv accumulators the same way.
//    Rows with a non-finite lse (they see nothing) and padding rows contribute nothing.
// 3. finish: accumulators -> dq / dk / dv in the input dtype (key rows past key_base[nseq] were
//    never added to: zeros).
//
// Registers: at head dims <= 128 a CTA takes 128 keys with 16 warps (512 threads, at most 128
// registers each: dK or dV of 16 keys is kD / 2 floats per thread, and the chunk's 32 rows 16 more);
// larger head dims take 64 keys with 8 warps (up to 255 registers). The wider tile halves the dq
// atomics, which are rows x Dqk per key tile: 8.9 GB of fp32 reductions at S64-G4 with 128 keys.
#pragma once

#include <string>

#include "cuda/runtime.hpp"
#include "kernels/common/convert.cuh"
#include "kernels/common/fragment_atomic.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"
#include "kernels/flash/flash_bwd_rows.cuh"
#include "kernels/flash/flash_mask.cuh"
#include "kernels/flash/flash_params.hpp"
#include "kernels/flash/flash_softmax.cuh"
#include "kernels/flash/flash_tiles.cuh"
#include "kernels/flash/flash_split.hpp"

namespace fsa::cuda::flash {

template <class Element, int kDqk_, int kDv_>
struct BwdTraits {
  static constexpr int kDqk = kDqk_;
  static constexpr int kDv = kDv_;
  static_assert(kDqk % 16 == 0 && kDv % 16 == 0, "head dims in steps of 16 for mma.m16n8k16");
  static constexpr int kMaxD = kDqk > kDv ? kDqk : kDv;
  static constexpr int kKeys = kMaxD <= 128 ? 128 : 64;
  static constexpr int kKeyGroups = kKeys / 16;
  static constexpr int kWarps = 2 * kKeyGroups;  // a P warp and a dS warp per key group
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowChunk = kMaxD <= 64 ? 64 : 32;
  static constexpr int kChunkTiles = kRowChunk / 8;  // 8-column C tiles of a warp's 16 keys x chunk
  // Q / dO copies of a chunk: kThreadsPerRow threads per row, 16-byte vectors.
  static constexpr int kThreadsPerRow = kThreads / kRowChunk;
  static_assert(kThreads % kRowChunk == 0 && (kDqk / 8) % kThreadsPerRow == 0 && (kDv / 8) % kThreadsPerRow == 0,
                "whole vectors per thread");
  // dQ = dS K of a chunk: warps split rows (16 each) and then columns.
  static constexpr int kDqRowGroups = kRowChunk / 16;
  static_assert(kWarps % kDqRowGroups == 0, "dq rows split evenly");
  static constexpr int kDqColParts = kWarps / kDqRowGroups;
  static constexpr int kDqCols = kDqk / kDqColParts;
  static_assert(kDqCols % 16 == 0 && kDqCols * kDqColParts == kDqk, "dq column tiles go in pairs");
  // k steps of S^T = K Q^T and dP^T = V dO^T unrolled together: 4 at most, or the 128-register
  // kernel at D = 128 spills (the compiler hoists the fragments of all 8 steps).
  static constexpr int kQkUnroll = kDqk > 128 ? 2 : 4;
  static constexpr int kVUnroll = kDv > 128 ? 2 : 4;
  static constexpr int kLdQk = kDqk + common::kPadHalf;
  static constexpr int kLdV = kDv + common::kPadHalf;
  static constexpr int kLdDs = kKeys + common::kPadHalf;
  static constexpr std::size_t kQStageBytes = common::align_up(sizeof(Element) * kRowChunk * kLdQk);
  static constexpr std::size_t kDoStageBytes = common::align_up(sizeof(Element) * kRowChunk * kLdV);
  static constexpr std::size_t kKOffset = 0;
  static constexpr std::size_t kVOffset = kKOffset + common::align_up(sizeof(Element) * kKeys * kLdQk);
  static constexpr std::size_t kQOffset = kVOffset + common::align_up(sizeof(Element) * kKeys * kLdV);
  static constexpr std::size_t kDoOffset = kQOffset + 2 * kQStageBytes;
  static constexpr std::size_t kPOffset = kDoOffset + 2 * kDoStageBytes;
  static constexpr std::size_t kDsOffset = kPOffset + common::align_up(sizeof(float) * kKeys * kRowChunk);
  static constexpr std::size_t kSmemBytes = kDsOffset + common::align_up(sizeof(Element) * kRowChunk * kLdDs);
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of one CTA on sm_90");
};

// What a CTA of the main kernel knows about its rows and keys.
struct CtaRows {
  long long token_base;  // global token of the block's first row
  long long seq_start;   // global token of the sequence's first token
  long long key_row;     // key row of the tile's first key
  int first_in_group;    // head of the block's first row within its group
  int block_rows, chunks, keys;
};

template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(BwdTraits<Element, kDqk, kDv>::kThreads, 1)
    flash_bwd_kernel(const __grid_constant__ FlashParams p) {
  using T = BwdTraits<Element, kDqk, kDv>;
  extern __shared__ __align__(128) unsigned char smem[];
  // Per row of a chunk, two stages: its key interval [lo, hi), lse * log2(e) and delta. lo = hi = 0
  // for padding rows and rows whose lse is not finite.
  __shared__ __align__(16) int tab_lo[2][T::kRowChunk];
  __shared__ __align__(16) int tab_hi[2][T::kRowChunk];
  __shared__ __align__(16) float tab_lse[2][T::kRowChunk];
  __shared__ __align__(16) float tab_delta[2][T::kRowChunk];
  __shared__ long long tab_dq[2][T::kRowChunk];  // the row's offset in dq_accum

  const int g = blockIdx.y, G = p.group;
  const SeqTile tile = find_seq_tile(p.key_base, p.key_base_stride, p.num_seqs, 1, T::kKeys, blockIdx.x);
  if (!tile.valid) return;
  const long long seq_start = p.cu_seqlens[tile.seq * p.cu_stride];
  const long long seq_len = p.cu_seqlens[(tile.seq + 1) * p.cu_stride] - seq_start;
  const long long key_start = p.key_base[tile.seq * p.key_base_stride];
  const long long key_count = p.key_base[(tile.seq + 1) * p.key_base_stride] - key_start;
  const int key0 = static_cast<int>(tile.first);  // local index of the tile's first key
  const int keys = static_cast<int>(min(static_cast<long long>(T::kKeys), key_count - key0));
  // This CTA's rows: those of the tokens that see a key of the tile, within block z.
  const TokenRange tokens = tokens_seeing(p, key0, key0 + keys - 1, seq_len);
  const long long rows_begin = tokens.first * G, rows_end = tokens.end * G;
  const long long block = p.split_relative ? rows_begin / p.split_rows + blockIdx.z : blockIdx.z;
  const long long row_first = max(rows_begin, block * p.split_rows);
  const long long row_end = min(rows_end, (block + 1) * p.split_rows);
  if (row_first >= row_end) return;
  // Rows are addressed by their offset x from row_first (x < split_rows < 2^31): row_first + x is
  // global token token_base + (first_in_group + x) / G, head g*G + (first_in_group + x) % G
  // (32-bit divisions: 64-bit ones cost registers this kernel does not have). The loop reads these
  // and the epilogue's values from shared memory (published by its first barrier), not registers:
  // the kernel is at its 128-register cap.
  __shared__ CtaRows cta_shared;
  CtaRows cta;
  cta.token_base = seq_start + row_first / G;
  cta.seq_start = seq_start;
  cta.key_row = key_start + key0;
  cta.first_in_group = static_cast<int>(row_first % G);
  cta.block_rows = static_cast<int>(row_end - row_first);
  cta.chunks = (cta.block_rows + T::kRowChunk - 1) / T::kRowChunk;
  cta.keys = keys;
  if (threadIdx.x == 0) cta_shared = cta;

  auto* k_s = reinterpret_cast<Element*>(smem + T::kKOffset);
  auto* v_s = reinterpret_cast<Element*>(smem + T::kVOffset);
  auto* ds_s = reinterpret_cast<Element*>(smem + T::kDsOffset);

  const auto* k = static_cast<const Element*>(p.k) + (key_start + key0) * p.k_row_stride + g * p.k_head_stride;
  const auto* v = static_cast<const Element*>(p.v) + (key_start + key0) * p.v_row_stride + g * p.v_head_stride;
  common::copy_tile_async<T::kKeys, kDqk, T::kThreads>(
      k_s, T::kLdQk, [&](int r) -> const Element* { return r < keys ? k + r * p.k_row_stride : nullptr; });
  common::copy_tile_async<T::kKeys, kDv, T::kThreads>(
      v_s, T::kLdV, [&](int r) -> const Element* { return r < keys ? v + r * p.v_row_stride : nullptr; });

  // Chunk c into stage `stage`: thread i takes row i / kThreadsPerRow of the chunk, with one
  // division for its Q and dO vectors and, on the row's first thread, its row table entry.
  const auto* q = static_cast<const Element*>(p.q);
  const auto* d_o = static_cast<const Element*>(p.d_o);
  auto load_chunk = [&](int c, int stage, const CtaRows& rows) {
    const int r = threadIdx.x / T::kThreadsPerRow, part = threadIdx.x % T::kThreadsPerRow;
    const int x = c * T::kRowChunk + r;
    const int y = rows.first_in_group + x;
    const long long token = rows.token_base + y / G;
    const int head = g * G + y % G;
    const bool valid = x < rows.block_rows;
    auto* q_dst = reinterpret_cast<Element*>(smem + T::kQOffset + stage * T::kQStageBytes) + r * T::kLdQk;
    auto* do_dst = reinterpret_cast<Element*>(smem + T::kDoOffset + stage * T::kDoStageBytes) + r * T::kLdV;
    const Element* q_src = q + token * p.q_token_stride + head * p.q_head_stride;
    const Element* do_src = d_o + token * p.do_token_stride + head * p.do_head_stride;
#pragma unroll
    for (int i = 0; i < kDqk / 8 / T::kThreadsPerRow; ++i) {
      const int vec = (part + i * T::kThreadsPerRow) * 8;
      if (valid) common::cp_async_16(q_dst + vec, q_src + vec);
      else *reinterpret_cast<uint4*>(q_dst + vec) = make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int i = 0; i < kDv / 8 / T::kThreadsPerRow; ++i) {
      const int vec = (part + i * T::kThreadsPerRow) * 8;
      if (valid) common::cp_async_16(do_dst + vec, do_src + vec);
      else *reinterpret_cast<uint4*>(do_dst + vec) = make_uint4(0, 0, 0, 0);
    }
    if (part == 0) {
      int lo = 0, hi = 0;
      float lse = 0.0f, delta = 0.0f;
      if (valid) {
        const float row_lse_value = p.lse[head * p.lse_head_stride + token * p.lse_token_stride];
        if (isfinite(row_lse_value)) {
          const KeyInterval interval = key_interval(p, token - rows.seq_start);
          lo = interval.lo;
          hi = interval.hi;
          lse = row_lse_value * kLog2e;
          delta = p.delta[head * p.tokens + token];
        }
      }
      tab_lo[stage][r] = lo;
      tab_hi[stage][r] = hi;
      tab_lse[stage][r] = lse;
      tab_delta[stage][r] = delta;
      tab_dq[stage][r] = (token * p.heads_q + head) * kDqk;
    }
  };
  load_chunk(0, 0, cta);
  common::cp_async_commit();  // K, V and chunk 0

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
  const int key_row0 = (warp % T::kKeyGroups) * 16;  // this warp's keys in the tile
  const bool ds_warp = warp >= T::kKeyGroups;
  // P^T of the warp's key group in fragment order: tile j of lane l at [j * 32 + l], conflict-free.
  float4* p_frag = reinterpret_cast<float4*>(smem + T::kPOffset) + (warp % T::kKeyGroups) * T::kChunkTiles * 32 + lane;
  const int dq_row0 = (warp % T::kDqRowGroups) * 16, dq_col0 = (warp / T::kDqRowGroups) * T::kDqCols;
  const float scale_log2 = p.scale * kLog2e;

  float acc[T::kMaxD / 8][4];  // dV (P warps, kDv columns) or dK (dS warps, kDqk columns)
  common::zero_acc<T::kMaxD>(acc);

  for (int c = 0;; ++c) {  // cta.chunks >= 1
    const int stage = c & 1;
    common::cp_async_wait<0>();  // chunk c has landed ...
    __syncthreads();             // ... for every thread's copies; every warp is done with chunk c - 1
    const bool more = c + 1 < cta_shared.chunks;
    if (more) load_chunk(c + 1, stage ^ 1, cta_shared);
    common::cp_async_commit();
    const auto* q_c = reinterpret_cast<const Element*>(smem + T::kQOffset + stage * T::kQStageBytes);
    const auto* do_c = reinterpret_cast<const Element*>(smem + T::kDoOffset + stage * T::kDoStageBytes);

    // This warp's 16 keys x the chunk's rows: C element e of tile j is key key_row0 + group +
    // 8 * (e / 2), row j * 8 + 2 * pair + (e & 1).
    float st[T::kChunkTiles][4];
    common::zero_acc<T::kRowChunk>(st);
    if (!ds_warp) {
      common::warp_tile_mma<Element, kDqk, T::kRowChunk, false, false, T::kQkUnroll>(st, k_s, T::kLdQk, key_row0, q_c,
                                                                                      T::kLdQk, 0);
#pragma unroll
      for (int j = 0; j < T::kChunkTiles; ++j) {
        const int r = j * 8 + 2 * pair;  // rows r (e = 0, 2) and r + 1 (e = 1, 3)
        const int2 lo = *reinterpret_cast<const int2*>(&tab_lo[stage][r]);
        const int2 hi = *reinterpret_cast<const int2*>(&tab_hi[stage][r]);
        const float2 lse = *reinterpret_cast<const float2*>(&tab_lse[stage][r]);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + key_row0 + group + 8 * (e / 2);
          const bool second = (e & 1) != 0;
          const bool visible = key >= (second ? lo.y : lo.x) && key < (second ? hi.y : hi.x);
          st[j][e] = visible ? exp2f(st[j][e] * scale_log2 - (second ? lse.y : lse.x)) : 0.0f;
        }
        p_frag[j * 32] = make_float4(st[j][0], st[j][1], st[j][2], st[j][3]);
      }
    } else {
      common::warp_tile_mma<Element, kDv, T::kRowChunk, false, false, T::kVUnroll>(st, v_s, T::kLdV, key_row0, do_c,
                                                                                    T::kLdV, 0);
    }
    __syncthreads();  // P^T of every key group is in shared memory

    if (!ds_warp) {
      // dV += P^T dO.
#pragma unroll
      for (int kk = 0; kk < T::kRowChunk / 16; ++kk) {
        std::uint32_t a[4];
        common::c_to_a<Element>(a, st[2 * kk], st[2 * kk + 1]);
#pragma unroll
        for (int n = 0; n < kDv / 8; n += 2) {
          std::uint32_t b[4];
          mma::ldmatrix_x4_trans(b, do_c + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * T::kLdV + n * 8 +
                                        (lane / 16) * 8);
          mma::mma_16816<Element>(acc[n], a, b[0], b[1]);
          mma::mma_16816<Element>(acc[n + 1], a, b[2], b[3]);
        }
      }
    } else {
      // dS^T = P^T (dP^T - delta) into shared memory as dS [row][key]; dK += dS^T Q.
#pragma unroll
      for (int j = 0; j < T::kChunkTiles; ++j) {
        const int r = j * 8 + 2 * pair;
        const float4 pt = p_frag[j * 32];
        const float2 delta = *reinterpret_cast<const float2*>(&tab_delta[stage][r]);
        st[j][0] = pt.x * (st[j][0] - delta.x);
        st[j][1] = pt.y * (st[j][1] - delta.y);
        st[j][2] = pt.z * (st[j][2] - delta.x);
        st[j][3] = pt.w * (st[j][3] - delta.y);
#pragma unroll
        for (int e = 0; e < 4; ++e)
          ds_s[(r + (e & 1)) * T::kLdDs + key_row0 + group + 8 * (e / 2)] =
              common::Convert<Element>::from_float(st[j][e]);
      }
#pragma unroll
      for (int kk = 0; kk < T::kRowChunk / 16; ++kk) {
        std::uint32_t a[4];
        common::c_to_a<Element>(a, st[2 * kk], st[2 * kk + 1]);
#pragma unroll
        for (int n = 0; n < kDqk / 8; n += 2) {
          std::uint32_t b[4];
          mma::ldmatrix_x4_trans(b, q_c + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * T::kLdQk + n * 8 +
                                        (lane / 16) * 8);
          mma::mma_16816<Element>(acc[n], a, b[0], b[1]);
          mma::mma_16816<Element>(acc[n + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // dS complete

    // dQ += scale * dS K for the chunk: this warp's 16 rows x kDqCols columns.
    {
      float dq[T::kDqCols / 8][4];
      common::zero_acc<T::kDqCols>(dq);
      common::warp_tile_mma<Element, T::kKeys, T::kDqCols, false, true>(dq, ds_s, T::kLdDs, dq_row0, k_s, T::kLdQk,
                                                                        dq_col0);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = dq_row0 + group + 8 * h;
        const bool active = tab_lo[stage][r] < tab_hi[stage][r];
        float* dst = p.dq_accum + (active ? tab_dq[stage][r] + dq_col0 : 0);
        common::atomic_add_fragment_row<T::kDqCols>(dst, dq, h, p.scale, active);
      }
    }
    if (!more) break;
  }

  // This warp's dK (times scale) or dV partial into the accumulators (row = key row x Hkv + g).
  const long long first_row = cta_shared.key_row * p.heads_kv + blockIdx.y;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int key = key_row0 + group + 8 * h;
    const bool active = key < cta_shared.keys;
    const long long row = first_row + (active ? key : 0) * p.heads_kv;
    if (ds_warp)
      common::atomic_add_fragment_row<kDqk>(p.dk_accum + row * kDqk, acc, h, p.scale, active);
    else
      common::atomic_add_fragment_row<kDv>(p.dv_accum + row * kDv, acc, h, 1.0f, active);
  }
}

}  // namespace fsa::cuda::flash

namespace fsa::cuda {

// Zeroes the accumulators of p (fp32 workspace, shapes in flash_params.hpp), then runs delta, the
// main kernel and finish on `stream`.
template <class Element, int kDqk, int kDv>
Status launch_flash_backward(const FlashParams& params, cudaStream_t stream) {
  using T = flash::BwdTraits<Element, kDqk, kDv>;
  FlashParams p = params;
  const long long n = p.tokens, hq = p.heads_q;
  const std::size_t dq_floats = static_cast<std::size_t>(n * hq * kDqk);
  const std::size_t dk_floats = static_cast<std::size_t>(p.key_rows * p.heads_kv * kDqk);
  const std::size_t dv_floats = static_cast<std::size_t>(p.key_rows * p.heads_kv * kDv);
  if (dq_floats > 0) FSA_CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, dq_floats * sizeof(float), stream));
  if (dk_floats > 0) FSA_CUDA_CHECK(cudaMemsetAsync(p.dk_accum, 0, dk_floats * sizeof(float), stream));
  if (dv_floats > 0) FSA_CUDA_CHECK(cudaMemsetAsync(p.dv_accum, 0, dv_floats * sizeof(float), stream));
  if (n > 0 && hq > 0) {
    flash::flash_bwd_delta_kernel<Element, kDv><<<flash::row_ctas(n * hq * 32), flash::kRowThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("flash_bwd_delta_kernel", stream);
  }
  if (n > 0 && p.num_seqs > 0 && p.key_rows > 0 && p.heads_kv > 0) {
    const flash::BackwardSplit split = flash::plan_backward_split(p, T::kKeys, T::kRowChunk);
    p.split_rows = split.rows;
    p.split_relative = split.relative ? 1 : 0;
    const long long tiles = p.key_rows / T::kKeys + p.num_seqs;
    if (tiles > 0x7fffffffLL || split.blocks > 65535)
      return FSA_ERROR(StatusCode::kNotImplemented, "k: " + std::to_string(tiles) + " key tiles x " +
                                                        std::to_string(split.blocks) +
                                                        " row blocks exceed the grid limits");
    auto* kernel = flash::flash_bwd_kernel<Element, kDqk, kDv>;
    FSA_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(T::kSmemBytes)));
    kernel<<<dim3(static_cast<unsigned>(tiles), p.heads_kv, static_cast<unsigned>(split.blocks)), T::kThreads,
             T::kSmemBytes, stream>>>(p);
    FSA_CHECK_LAUNCH("flash_bwd_kernel", stream);
  }
  const long long largest =
      std::max<long long>(n * hq * kDqk, p.key_rows * p.heads_kv * std::max(kDqk, kDv)) / 4;
  if (largest > 0) {
    flash::flash_bwd_finish_kernel<Element, kDqk, kDv><<<dim3(flash::row_ctas(largest), 3), flash::kRowThreads, 0,
                                                         stream>>>(p);
    FSA_CHECK_LAUNCH("flash_bwd_finish_kernel", stream);
  }
  return Status::ok();
}

}  // namespace fsa::cuda
