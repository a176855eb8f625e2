// Main kernel of the selected-attention backward on Hopper (sm90a), for Dqk = Dv in {64, 128}: the
// runs, row tables and gradient sinks of slc_bwd_kernel.cuh with a warpgroup-MMA chunk core. The
// mma.sync kernel was bound by instruction issue and latency (ldmatrix feeding HMMA, three
// barriers per 32-row chunk; docs/kernels/slc_attn.md); wgmma reads its operands from shared
// memory itself and takes 64-row chunks.
//
// One CTA per (run, 64-key tile), two warpgroups with one role each over the same 64 keys:
//   WG 0 (dV, dQ): S^T = K Q^T, P^T = exp2(scale S^T - lse) under the rows' key limits,
//                  dV += P^T dO (P^T from registers), then, once WG 1 published dS^T,
//                  dQ = scale dS K (64 rows x D) added to the rows' dQ sink;
//   WG 1 (dK):     S^T = K Q^T and dP^T = V dO^T, P^T, dS^T = P^T (dP^T - delta) -> shared memory
//                  (published by a named barrier), dK += dS^T Q (dS^T from registers).
// Each does three of the chunk's six m64 x n64 x k128 products (S is computed twice: cheaper than a
// shared-memory exchange of P and a second wait), so neither idles while the other works, and WG 0's
// dQ overlaps WG 1's dK. dK and dV stay in registers (fp32 wgmma accumulators) over the run.
// K, V and three stages of gathered Q / dO chunks sit in 128-byte-swizzled shared memory
// (wgmma_sm90.cuh): two chunks are in flight while one is computed, which the random gathers need
// at one CTA (8 warps, up to 255 registers) per SM.
#pragma once

#include <cstdint>

#include "kernels/common/fast_exp.cuh"
#include "kernels/common/fragment_atomic.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"
#include "kernels/common/wgmma_sm90.cuh"
#include "kernels/flash/flash_bwd_chunk.cuh"
#include "kernels/slc_attn/slc_bwd_run.cuh"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda::slc {

template <int kDqk, int kDv>
struct SlcBwdSm90Traits {
  static constexpr bool kSupported = kDqk == kDv && (kDqk == 64 || kDqk == 128);
  static constexpr int kD = kDqk;
  static constexpr int kKeys = 64;
  static constexpr int kRowChunk = 64;
  static constexpr int kStages = 3;
  static constexpr int kThreads = 256;
  static constexpr int kThreadsPerRow = kThreads / kRowChunk;  // gathered copies: 4 threads per row
  // Every tile is 64 rows (keys or chunk rows) x kD 16-bit elements: kD / 64 panels of 8 KB.
  static constexpr std::size_t kTileBytes = std::size_t{2} * 64 * kD;
  static constexpr std::size_t kKOffset = 0;
  static constexpr std::size_t kVOffset = kKOffset + kTileBytes;
  static constexpr std::size_t kQOffset = kVOffset + kTileBytes;
  static constexpr std::size_t kDoOffset = kQOffset + kStages * kTileBytes;
  static constexpr std::size_t kDsOffset = kDoOffset + kStages * kTileBytes;  // dS^T [key][row], one panel
  static constexpr std::size_t kSmemBytes = kDsOffset + std::size_t{2} * kKeys * kRowChunk + 1024;
  static constexpr std::uint32_t kGroupBytes = 8 * wgmma::kPanelRowBytes;       // SBO: 8-row groups
  static constexpr std::uint32_t kPanelBytes = 64 * wgmma::kPanelRowBytes;      // LBO: 64-column panels
  static constexpr std::uint32_t kRowStep16 = 16 * wgmma::kPanelRowBytes;       // k step of a [k][mn] operand
};

// Named barrier 1 (0 is __syncthreads): WG 1 arrives once dS^T is in shared memory, WG 0 waits.
constexpr int kDsReadyBarrier = 1;
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

template <class Element, int kDqk, int kDv, bool kDeterministic, bool kDqSlots>
__global__ void __launch_bounds__(256, 1) slc_bwd_sm90_kernel(const __grid_constant__ SlcBackwardParams p) {
#if FSA_HAS_WGMMA
  using T = SlcBwdSm90Traits<kDqk, kDv>;
  static_assert(T::kSupported, "Dqk = Dv in {64, 128}");
  constexpr int kD = T::kD;
  constexpr int kEntries = kSlcBwdRunEntries<kDeterministic>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ __align__(16) flash::BwdRowTable<T::kRowChunk> tab[T::kStages];
  __shared__ RunTable<kEntries> table;
  __shared__ float raw_lse[T::kStages][T::kRowChunk], raw_delta[T::kStages][T::kRowChunk];
  unsigned char* smem = wgmma::swizzle_aligned(smem_raw);

  RunRows run;
  int key0;
  if (!begin_run<T::kKeys>(p, T::kRowChunk, run, key0, table)) return;
  const int G = p.plan.shape.group;
  const long long key_token = run.seq_start + key0;
  auto* k_s = reinterpret_cast<Element*>(smem + T::kKOffset);
  auto* v_s = reinterpret_cast<Element*>(smem + T::kVOffset);
  wgmma::copy_rows_swizzled_async<T::kKeys, kD, T::kThreads>(
      k_s, static_cast<const Element*>(p.in.k) + key_token * p.in.k_token_stride + run.kv_head * p.in.k_head_stride,
      p.in.k_token_stride, run.keys);
  wgmma::copy_rows_swizzled_async<T::kKeys, kD, T::kThreads>(
      v_s, static_cast<const Element*>(p.in.v) + key_token * p.in.v_token_stride + run.kv_head * p.in.v_head_stride,
      p.in.v_token_stride, run.keys);
  __syncthreads();  // the run table

  // Chunk c into stage `stage`: thread i copies a quarter of row i / 4's Q and dO vectors; the
  // row's first thread also its lse and delta.
  const auto* q = static_cast<const Element*>(p.in.q);
  const auto* d_o = static_cast<const Element*>(p.d_o);
  const int load_row = threadIdx.x / T::kThreadsPerRow, load_part = threadIdx.x % T::kThreadsPerRow;
  auto load_chunk = [&](int c, int stage) {
    const RunRow row = run_row(run, table, G, run.row_begin + c * T::kRowChunk + load_row);
    const Element* q_row = q + row.token * p.in.q_token_stride + row.head * p.in.q_head_stride;
    const Element* do_row = d_o + row.token * p.do_token_stride + row.head * p.do_head_stride;
    unsigned char* q_dst = smem + T::kQOffset + stage * T::kTileBytes;
    unsigned char* do_dst = smem + T::kDoOffset + stage * T::kTileBytes;
#pragma unroll
    for (int i = 0; i < kD / 8 / T::kThreadsPerRow; ++i) {
      const int col = (load_part + i * T::kThreadsPerRow) * 8;
      const int at = wgmma::swizzled_offset(T::kRowChunk, load_row, col);
      if (row.valid) {
        common::cp_async_16(q_dst + at, q_row + col);
        common::cp_async_16(do_dst + at, do_row + col);
      } else {
        *reinterpret_cast<uint4*>(q_dst + at) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(do_dst + at) = make_uint4(0, 0, 0, 0);
      }
    }
    if (load_part == 0 && row.valid) copy_row_stats(p, row, &raw_lse[stage][load_row], &raw_delta[stage][load_row]);
  };
  // Chunk c's row table entry, on the row's first thread once its copies have landed; returns
  // whether the row sees every key of the tile (a chunk whose rows all do skips the mask).
  auto set_row = [&](int c, int stage) -> bool {
    if (load_part != 0) return true;
    const RunRow row = run_row(run, table, G, run.row_begin + c * T::kRowChunk + load_row);
    const RowEntry e =
        row_entry<kDqk, kDqSlots>(p, run, table, row, raw_lse[stage][load_row], raw_delta[stage][load_row]);
    tab[stage].set(load_row, 0, e.hi, e.lse, e.delta, e.dq);
    // Tiles of fewer than 64 keys always mask: past the block's end K is zero, not -inf.
    return e.hi >= key0 + T::kKeys;
  };
  load_chunk(0, 0);
  common::cp_async_commit();  // K, V and chunk 0
  if (run.chunks > 1) load_chunk(1, 1);
  common::cp_async_commit();  // chunk 1 (or nothing: every iteration waits for all but one group)

  // Warpgroup 1: dS and dK; warpgroup 0: dV and dQ. Read through a shuffle so that the compiler
  // knows the role is warp-uniform (else it serialises the wgmma of the role branches).
  const bool ds_group = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0) != 0;
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int group = lane / 4, pair = lane % 4;
  const int key_row0 = warp * 16;  // this warp's first key of the tile (and first dQ row of a chunk)
  const float scale_log2 = p.in.scale * kBwdLog2e;
  float acc[kD / 8][4];  // dV (WG 0) or dK (WG 1, not yet scaled)
  common::zero_acc<kD>(acc);

  // Descriptors (wgmma_sm90.cuh). K-major: K, V (A of S^T, dP^T), Q, dO (B of S^T, dP^T); a k step
  // kk is panel kk / 4, 32 bytes per step within it. Transposed ([k][mn]): dO, Q as B of dV, dK and
  // K as B of dQ (k step 16 rows, panels kPanelBytes apart), dS^T as A of dQ.
  const std::uint64_t k_desc = wgmma::descriptor(k_s, 0, T::kGroupBytes);
  const std::uint64_t v_desc = wgmma::descriptor(v_s, 0, T::kGroupBytes);
  const std::uint64_t q_desc0 = wgmma::descriptor(smem + T::kQOffset, 0, T::kGroupBytes);
  const std::uint64_t do_desc0 = wgmma::descriptor(smem + T::kDoOffset, 0, T::kGroupBytes);
  const std::uint64_t q_tdesc0 = wgmma::descriptor(smem + T::kQOffset, T::kPanelBytes, T::kGroupBytes);
  const std::uint64_t do_tdesc0 = wgmma::descriptor(smem + T::kDoOffset, T::kPanelBytes, T::kGroupBytes);
  const std::uint64_t kt_desc = wgmma::descriptor(k_s, T::kPanelBytes, T::kGroupBytes);
  const std::uint64_t ds_desc = wgmma::descriptor(smem + T::kDsOffset, 0, T::kGroupBytes);
  auto kstep = [](int kk) { return static_cast<std::uint32_t>((kk / 4) * T::kPanelBytes + (kk % 4) * 32); };

  for (int c = 0; c < run.chunks; ++c) {
    const int stage = c % T::kStages;
    common::cp_async_wait<1>();  // this thread's copies of chunk c (chunk c + 1 may be in flight)
    const bool row_covers = set_row(c, stage);
    wgmma::fence_async_shared();
    // Chunk c and its table are complete; both warpgroups are done with chunk c - 1 (its stage is
    // the one chunk c + 2 now overwrites) and with dS^T.
    const bool chunk_covers = __syncthreads_and(row_covers);
    if (c + 2 < run.chunks) load_chunk(c + 2, (c + 2) % T::kStages);
    common::cp_async_commit();

    const std::uint32_t stage_bytes = stage * static_cast<std::uint32_t>(T::kTileBytes);
    const std::uint64_t q_desc = wgmma::advance(q_desc0, stage_bytes);
    const std::uint64_t do_desc = wgmma::advance(do_desc0, stage_bytes);
    const flash::BwdRowTable<T::kRowChunk>& rows = tab[stage];

    // S^T (both warpgroups) and dP^T (WG 1): 64 keys x 64 rows.
    float st[T::kRowChunk / 8][4], dpt[T::kRowChunk / 8][4];
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk)
      wgmma::mma_ss<Element, T::kRowChunk, 0>(st, wgmma::advance(k_desc, kstep(kk)),
                                              wgmma::advance(q_desc, kstep(kk)), kk > 0);
    if (ds_group) {
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk)
        wgmma::mma_ss<Element, T::kRowChunk, 0>(dpt, wgmma::advance(v_desc, kstep(kk)),
                                                wgmma::advance(do_desc, kstep(kk)), kk > 0);
    }
    wgmma::commit_group();
    wgmma::wait_group<0>();
    wgmma::fence_operands<T::kRowChunk>(st);
    if (ds_group) wgmma::fence_operands<T::kRowChunk>(dpt);

    // P^T (and dS^T on WG 1); element e of tile j: key key_row0 + group + 8 (e / 2), row
    // 8j + 2 pair + (e & 1).
    auto scores = [&]<bool kMasked>() {
#pragma unroll
      for (int j = 0; j < T::kRowChunk / 8; ++j) {
        const int r = j * 8 + 2 * pair;
        const float2 lse = *reinterpret_cast<const float2*>(&rows.lse[r]);
        int2 hi{};
        if constexpr (kMasked) hi = *reinterpret_cast<const int2*>(&rows.hi[r]);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool second = (e & 1) != 0;
          float pt = common::fast_exp2(fmaf(st[j][e], scale_log2, -(second ? lse.y : lse.x)));
          if constexpr (kMasked) pt = key0 + key_row0 + group + 8 * (e / 2) < (second ? hi.y : hi.x) ? pt : 0.0f;
          st[j][e] = pt;
        }
        if (ds_group) {
          const float2 delta = *reinterpret_cast<const float2*>(&rows.delta[r]);
#pragma unroll
          for (int e = 0; e < 4; ++e) dpt[j][e] = st[j][e] * (dpt[j][e] - ((e & 1) != 0 ? delta.y : delta.x));
          // dS^T to shared memory as [key][row] (rows r, r + 1 share a 4-byte word).
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int key = key_row0 + group + 8 * h;
            *reinterpret_cast<std::uint32_t*>(smem + T::kDsOffset + wgmma::swizzled_offset(T::kKeys, key, j * 8) +
                                              4 * pair) = mma::pack2<Element>(dpt[j][2 * h], dpt[j][2 * h + 1]);
          }
        }
      }
    };
    if (chunk_covers) scores.template operator()<false>();
    else scores.template operator()<true>();

    if (ds_group) {
      wgmma::fence_async_shared();  // dS^T stores before WG 0's dQ wgmma reads them
      named_barrier_arrive(kDsReadyBarrier, T::kThreads);
      // dK += dS^T Q.
      std::uint32_t da[T::kRowChunk / 16][4];
#pragma unroll
      for (int kk = 0; kk < T::kRowChunk / 16; ++kk) common::c_to_a<Element>(da[kk], dpt[2 * kk], dpt[2 * kk + 1]);
      const std::uint64_t q_tdesc = wgmma::advance(q_tdesc0, stage_bytes);
      wgmma::fence_operands<kD>(acc);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < T::kRowChunk / 16; ++kk)
        wgmma::mma_rs<Element, kD, 1>(acc, da[kk], wgmma::advance(q_tdesc, kk * T::kRowStep16), 1);
      wgmma::commit_group();
      wgmma::wait_group<0>();
      wgmma::fence_operands<kD>(acc);
    } else {
      // dV += P^T dO.
      std::uint32_t pa[T::kRowChunk / 16][4];
#pragma unroll
      for (int kk = 0; kk < T::kRowChunk / 16; ++kk) common::c_to_a<Element>(pa[kk], st[2 * kk], st[2 * kk + 1]);
      const std::uint64_t do_tdesc = wgmma::advance(do_tdesc0, stage_bytes);
      wgmma::fence_operands<kD>(acc);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < T::kRowChunk / 16; ++kk)
        wgmma::mma_rs<Element, kD, 1>(acc, pa[kk], wgmma::advance(do_tdesc, kk * T::kRowStep16), 1);
      wgmma::commit_group();
      // dQ (64 rows x kD) = dS K once WG 1 has published dS^T; it runs behind dV.
      named_barrier_sync(kDsReadyBarrier, T::kThreads);
      float dq[kD / 8][4];
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < T::kKeys / 16; ++kk)
        wgmma::mma_ss<Element, kD, 1, 1>(dq, wgmma::advance(ds_desc, kk * T::kRowStep16),
                                         wgmma::advance(kt_desc, kk * T::kRowStep16), kk > 0);
      wgmma::commit_group();
      wgmma::wait_group<0>();
      wgmma::fence_operands<kD>(acc);
      wgmma::fence_operands<kD>(dq);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const long long offset = rows.dq[key_row0 + group + 8 * h];
        const bool active = offset >= 0;
        if constexpr (kDqSlots)
          common::store_fragment_row_as<Element, kD>(static_cast<Element*>(p.dq_part) + (active ? offset : 0), dq, h,
                                                     p.in.scale, active);
        else
          common::atomic_add_fragment_row<kD>(p.dq_accum + (active ? offset : 0), dq, h, p.in.scale, active);
      }
    }
  }

  // This warpgroup's dK (times scale) or dV: atomics into the accumulators (row = key token x Hkv
  // + g), or stores into the run's kv_part rows [B][Dqk | Dv].
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int key = key_row0 + group + 8 * h;
    const bool active = key < run.keys;
    if constexpr (kDeterministic) {
      const long long first = static_cast<long long>(blockIdx.x) * p.plan.shape.block_size + blockIdx.y * T::kKeys;
      float* row = p.kv_part + (first + (active ? key : 0)) * (kDqk + kDv);
      if (ds_group) common::store_fragment_row<kD>(row, acc, h, p.in.scale, active);
      else common::store_fragment_row<kD>(row + kDqk, acc, h, 1.0f, active);
    } else {
      const long long kv_row = (key_token + (active ? key : 0)) * p.plan.shape.heads_kv + run.kv_head;
      if (ds_group) common::atomic_add_fragment_row<kD>(p.dk_accum + kv_row * kDqk, acc, h, p.in.scale, active);
      else common::atomic_add_fragment_row<kD>(p.dv_accum + kv_row * kDv, acc, h, 1.0f, active);
    }
  }
#else
  __trap();  // launched only where the sm_90a image is the one loaded (runs_sm90_image)
#endif
}

}  // namespace fsa::cuda::slc
