// The core of the KV-outer attention backward, shared by the masked flash attention
// (flash_bwd_kernel.cuh) and selected attention (slc_attn/slc_bwd_kernel.cuh): a CTA holds a tile of
// kKeys keys (K and V in shared memory) and walks query rows in chunks of kRowChunk, Q and dO of the
// next chunk copied while the current one is computed. The kernels differ only in where a chunk's
// rows come from (consecutive rows of a sequence, or rows gathered from a block's token list), which
// keys each row sees, and where dQ and the dK / dV partials go; this file is the rest.
//
// Key group kg (16 keys) has two warps:
//   P warp:  S^T = K Q^T, P^T = exp(scale S^T - lse) under the rows' key intervals, P^T -> shared
//            memory (fp32, in fragment order), then dV += P^T dO;
//   dS warp: dP^T = V dO^T, then dS^T = P^T (dP^T - delta) with P^T from shared memory, dS ->
//            shared memory (input dtype), dK += dS^T Q.
// Both warps of a group do two of the four products of a chunk, so neither waits for the other and S
// is computed once. Then all warps compute dQ = scale dS K for the chunk and add it (16-byte fp32
// atomics) or store it in the input dtype (rows with one writer) from the mma fragments
// (common/fragment_atomic.cuh).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/common/convert.cuh"
#include "kernels/common/fragment_atomic.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"

namespace fsa::cuda::flash {

// kKeys_ = 0: the flash kernels' choice. At head dims <= 128 a CTA takes 128 keys with 16 warps
// (512 threads, at most 128 registers each: dK or dV of 16 keys is kD / 2 floats per thread, and the
// chunk's 32 rows 16 more); larger head dims take 64 keys with 8 warps (up to 255 registers). The
// wider tile halves the dq atomics, which are rows x Dqk per key tile. Selected attention takes 64
// keys (one block of B = 64) and chunks of 32 rows at every head dim. kRowChunk_ = 0: 64 rows at
// head dims <= 64, else 32.
template <class Element, int kDqk_, int kDv_, int kKeys_ = 0, int kRowChunk_ = 0>
struct BwdTraits {
  static constexpr int kDqk = kDqk_;
  static constexpr int kDv = kDv_;
  static_assert(kDqk % 16 == 0 && kDv % 16 == 0, "head dims in steps of 16 for mma.m16n8k16");
  static constexpr int kMaxD = kDqk > kDv ? kDqk : kDv;
  static constexpr int kKeys = kKeys_ > 0 ? kKeys_ : (kMaxD <= 128 ? 128 : 64);
  static_assert(kKeys == 64 || (kKeys == 128 && kMaxD <= 128), "128 keys need head dims <= 128 (registers)");
  static constexpr int kKeyGroups = kKeys / 16;
  static constexpr int kWarps = 2 * kKeyGroups;  // a P warp and a dS warp per key group
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowChunk = kRowChunk_ > 0 ? kRowChunk_ : (kMaxD <= 64 ? 64 : 32);
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

// Where a chunk's dQ rows go: added to fp32 rows by atomics, or stored as Element rows (one writer).
enum class DqSink { kAtomicFloat, kStoreElement };

// What the chunk needs of each of its rows, in shared memory, one table per copy stage: the row's
// key interval [lo, hi) (keys numbered like the kernel's key0), lse * log2(e), delta, and its dQ
// destination (an offset from the kernel's dq base; -1: nothing to write). Rows that see nothing
// (padding rows, rows whose lse is not finite) have lo = hi = 0: their P, dS and dQ are zeros.
template <int kRows>
struct BwdRowTable {
  int lo[kRows];
  int hi[kRows];
  float lse[kRows];
  float delta[kRows];
  long long dq[kRows];
  __device__ __forceinline__ void set(int r, int lo_r, int hi_r, float lse_r, float delta_r, long long dq_r) {
    lo[r] = lo_r;
    hi[r] = hi_r;
    lse[r] = lse_r;
    delta[r] = delta_r;
    dq[r] = dq_r;
  }
};

// Thread `part` of the kThreadsPerRow threads of chunk row r copies its share of the row's Q and
// dO vectors into stage `stage` (zeros where the row is not valid).
template <class T, class Element>
__device__ __forceinline__ void bwd_copy_row(unsigned char* smem, int stage, int r, int part, bool valid,
                                             const Element* q_src, const Element* do_src) {
  auto* q_dst = reinterpret_cast<Element*>(smem + T::kQOffset + stage * T::kQStageBytes) + r * T::kLdQk;
  auto* do_dst = reinterpret_cast<Element*>(smem + T::kDoOffset + stage * T::kDoStageBytes) + r * T::kLdV;
#pragma unroll
  for (int i = 0; i < T::kDqk / 8 / T::kThreadsPerRow; ++i) {
    const int vec = (part + i * T::kThreadsPerRow) * 8;
    if (valid) common::cp_async_16(q_dst + vec, q_src + vec);
    else *reinterpret_cast<uint4*>(q_dst + vec) = make_uint4(0, 0, 0, 0);
  }
#pragma unroll
  for (int i = 0; i < T::kDv / 8 / T::kThreadsPerRow; ++i) {
    const int vec = (part + i * T::kThreadsPerRow) * 8;
    if (valid) common::cp_async_16(do_dst + vec, do_src + vec);
    else *reinterpret_cast<uint4*>(do_dst + vec) = make_uint4(0, 0, 0, 0);
  }
}

// acc (16 keys x kN) += C^T B: the A operand is this warp's C fragments of 16 keys x kRows rows
// (P^T or dS^T in registers), B the chunk's rows [kRows][kN] in shared memory (dO or Q).
template <class Element, int kRows, int kN, int kChunkTiles, int kAccTiles>
__device__ __forceinline__ void bwd_mma_rows(float (&acc)[kAccTiles][4], const float (&c)[kChunkTiles][4],
                                             const Element* b, int ldb, int lane) {
#pragma unroll
  for (int kk = 0; kk < kRows / 16; ++kk) {
    std::uint32_t a[4];
    common::c_to_a<Element>(a, c[2 * kk], c[2 * kk + 1]);
#pragma unroll
    for (int n = 0; n < kN / 8; n += 2) {
      std::uint32_t bf[4];
      mma::ldmatrix_x4_trans(bf, b + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * ldb + n * 8 + (lane / 16) * 8);
      mma::mma_16816<Element>(acc[n], a, bf[0], bf[1]);
      mma::mma_16816<Element>(acc[n + 1], a, bf[2], bf[3]);
    }
  }
}

// This warp's keys in the tile and its role.
template <class T>
__device__ __forceinline__ int bwd_key_row0() {
  return (threadIdx.x / 32 % T::kKeyGroups) * 16;
}
template <class T>
__device__ __forceinline__ bool bwd_is_ds_warp() {
  return threadIdx.x / 32 >= T::kKeyGroups;
}

// The chunk in stage `stage` (landed and published by a barrier): accumulates this warp's dV (P
// warps, kDv columns) or dK (dS warps, kDqk columns, not yet scaled) into acc and writes the chunk's
// scale * dQ rows to dq_base + tab.dq[r] (float or Element elements, by kSink). key0 numbers the tile's first key in the rows' intervals. Two
// barriers inside; the caller's next barrier must come before the next chunk overwrites P or dS.
template <class T, class Element, DqSink kSink = DqSink::kAtomicFloat>
__device__ __forceinline__ void bwd_chunk(float (&acc)[T::kMaxD / 8][4], unsigned char* smem, int stage,
                                          const BwdRowTable<T::kRowChunk>& tab, int key0, float scale_log2,
                                          float scale, void* dq_base) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
  const int key_row0 = bwd_key_row0<T>();
  const bool ds_warp = bwd_is_ds_warp<T>();
  const auto* k_s = reinterpret_cast<const Element*>(smem + T::kKOffset);
  const auto* v_s = reinterpret_cast<const Element*>(smem + T::kVOffset);
  auto* ds_s = reinterpret_cast<Element*>(smem + T::kDsOffset);
  const auto* q_c = reinterpret_cast<const Element*>(smem + T::kQOffset + stage * T::kQStageBytes);
  const auto* do_c = reinterpret_cast<const Element*>(smem + T::kDoOffset + stage * T::kDoStageBytes);
  // P^T of the warp's key group in fragment order: tile j of lane l at [j * 32 + l], conflict-free.
  float4* p_frag = reinterpret_cast<float4*>(smem + T::kPOffset) + (warp % T::kKeyGroups) * T::kChunkTiles * 32 + lane;

  // This warp's 16 keys x the chunk's rows: C element e of tile j is key key_row0 + group +
  // 8 * (e / 2), row j * 8 + 2 * pair + (e & 1).
  float st[T::kChunkTiles][4];
  common::zero_acc<T::kRowChunk>(st);
  if (!ds_warp) {
    common::warp_tile_mma<Element, T::kDqk, T::kRowChunk, false, false, T::kQkUnroll>(st, k_s, T::kLdQk, key_row0,
                                                                                       q_c, T::kLdQk, 0);
#pragma unroll
    for (int j = 0; j < T::kChunkTiles; ++j) {
      const int r = j * 8 + 2 * pair;  // rows r (e = 0, 2) and r + 1 (e = 1, 3)
      const int2 lo = *reinterpret_cast<const int2*>(&tab.lo[r]);
      const int2 hi = *reinterpret_cast<const int2*>(&tab.hi[r]);
      const float2 lse = *reinterpret_cast<const float2*>(&tab.lse[r]);
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
    common::warp_tile_mma<Element, T::kDv, T::kRowChunk, false, false, T::kVUnroll>(st, v_s, T::kLdV, key_row0, do_c,
                                                                                     T::kLdV, 0);
  }
  __syncthreads();  // P^T of every key group is in shared memory

  if (!ds_warp) {
    bwd_mma_rows<Element, T::kRowChunk, T::kDv>(acc, st, do_c, T::kLdV, lane);  // dV += P^T dO
  } else {
    // dS^T = P^T (dP^T - delta) into shared memory as dS [row][key]; dK += dS^T Q.
#pragma unroll
    for (int j = 0; j < T::kChunkTiles; ++j) {
      const int r = j * 8 + 2 * pair;
      const float4 pt = p_frag[j * 32];
      const float2 delta = *reinterpret_cast<const float2*>(&tab.delta[r]);
      st[j][0] = pt.x * (st[j][0] - delta.x);
      st[j][1] = pt.y * (st[j][1] - delta.y);
      st[j][2] = pt.z * (st[j][2] - delta.x);
      st[j][3] = pt.w * (st[j][3] - delta.y);
#pragma unroll
      for (int e = 0; e < 4; ++e)
        ds_s[(r + (e & 1)) * T::kLdDs + key_row0 + group + 8 * (e / 2)] =
            common::Convert<Element>::from_float(st[j][e]);
    }
    bwd_mma_rows<Element, T::kRowChunk, T::kDqk>(acc, st, q_c, T::kLdQk, lane);  // dK += dS^T Q
  }
  __syncthreads();  // dS complete

  // dQ = scale * dS K for the chunk: this warp's 16 rows x kDqCols columns.
  const int dq_row0 = (warp % T::kDqRowGroups) * 16, dq_col0 = (warp / T::kDqRowGroups) * T::kDqCols;
  float dq[T::kDqCols / 8][4];
  common::zero_acc<T::kDqCols>(dq);
  common::warp_tile_mma<Element, T::kKeys, T::kDqCols, false, true>(dq, ds_s, T::kLdDs, dq_row0, k_s, T::kLdQk,
                                                                    dq_col0);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const long long offset = tab.dq[dq_row0 + group + 8 * h];
    const bool active = offset >= 0;
    const long long at = active ? offset + dq_col0 : 0;
    if constexpr (kSink == DqSink::kAtomicFloat)
      common::atomic_add_fragment_row<T::kDqCols>(static_cast<float*>(dq_base) + at, dq, h, scale, active);
    else
      common::store_fragment_row_as<Element, T::kDqCols>(static_cast<Element*>(dq_base) + at, dq, h, scale, active);
  }
}

}  // namespace fsa::cuda::flash
