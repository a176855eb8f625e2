// Main kernel of the selected-attention backward on Hopper (sm90a), for Dqk = Dv in {64, 128}: the
// runs, row tables and gradient sinks of slc_bwd_kernel.cuh with a warpgroup-MMA chunk core. The
// mma.sync kernel was bound by instruction issue and latency (ldmatrix feeding HMMA, three
// barriers per 32-row chunk; docs/kernels/slc_attn.md); wgmma reads its operands from shared
// memory itself and takes 64-row chunks.
//
// One CTA per (run, 64-key tile) with two warpgroups that share K and V and take alternate 64-row
// chunks of the run (WG w: chunks w, w + 2, ...), each on its own copy stages, row tables and dS
// buffer, synchronised only within itself (named barriers 1 and 2): while one waits on its MMAs or
// copies, the other computes. Per chunk a warpgroup computes
//   S^T = K Q^T and dP^T = V dO^T (64 keys x 64 rows, operands in shared memory),
//   P^T = exp2(scale S^T - lse) under the rows' key limits, dS^T = P^T (dP^T - delta),
//   dV += P^T dO and dK += dS^T Q (P^T, dS^T from registers: the accumulator layout of S^T is, per
//   warp, the mma.sync C layout, whose C -> A conversion gives the A operand of keys x rows),
//   dQ = scale dS K (dS^T through shared memory, read transposed) into the rows' dQ sink.
// dK and dV stay in registers (fp32 wgmma accumulators) over the run; at its end the warpgroups
// exchange halves through shared memory (WG 0 sums and writes dV, WG 1 dK), so each key row gets
// one write of one two-term sum (the deterministic mode's partials stay bitwise reproducible).
// Tiles sit in 128-byte-swizzled shared memory (wgmma_sm90.cuh): K, V, 2 x 2 stages of Q / dO,
// 2 dS^T buffers = 176 KB at D = 128, one CTA (8 warps, up to 255 registers) per SM.
#pragma once

#include <cstdint>

#include "kernels/common/fragment_atomic.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/wgmma_sm90.cuh"
#include "kernels/flash/flash_bwd_chunk.cuh"
#include "kernels/flash/flash_bwd_sm90_scores.cuh"
#include "kernels/slc_attn/slc_bwd_run.cuh"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda::slc {

template <int kDqk, int kDv>
struct SlcBwdSm90Traits {
  static constexpr bool kSupported = kDqk == kDv && (kDqk == 64 || kDqk == 128);
  static constexpr int kD = kDqk;
  static constexpr int kKeys = 64;
  static constexpr int kRowChunk = 64;
  static constexpr int kGroups = 2;          // warpgroups
  // Copy stages per warpgroup: chunk i + 1 is copied while chunk i computes, into the stage chunk
  // i - 1 used (the loop's wait for all copies at its top relies on that one-chunk distance).
  static constexpr int kStages = 2;
  static constexpr int kThreads = 128 * kGroups;
  static constexpr int kThreadsPerRow = 128 / kRowChunk;  // a warpgroup's gathered copies: 2 threads per row
  // Every tile is 64 rows (keys or chunk rows) x kD 16-bit elements: kD / 64 panels of 8 KB.
  static constexpr std::size_t kTileBytes = std::size_t{2} * 64 * kD;
  static constexpr std::size_t kKOffset = 0;
  static constexpr std::size_t kVOffset = kKOffset + kTileBytes;
  // Stage s of warpgroup w: Q at kStageOffset + (w * kStages + s) * kStageBytes, dO kTileBytes after.
  static constexpr std::size_t kStageOffset = kVOffset + kTileBytes;
  static constexpr std::size_t kStageBytes = 2 * kTileBytes;
  static constexpr std::size_t kDsOffset = kStageOffset + kGroups * kStages * kStageBytes;  // dS^T [key][row]
  static constexpr std::size_t kDsBytes = std::size_t{2} * kKeys * kRowChunk;
  static constexpr std::size_t kSmemBytes = kDsOffset + kGroups * kDsBytes + 1024;
  // The end's exchange of fp32 dK / dV (64 x kD) reuses a warpgroup's stages.
  static_assert(kStages * kStageBytes >= std::size_t{4} * kKeys * kD, "exchange fits a warpgroup's stages");
  static constexpr std::uint32_t kGroupBytes = 8 * wgmma::kPanelRowBytes;       // SBO: 8-row groups
  static constexpr std::uint32_t kPanelBytes = 64 * wgmma::kPanelRowBytes;      // LBO: 64-column panels
  static constexpr std::uint32_t kRowStep16 = 16 * wgmma::kPanelRowBytes;       // k step of a [k][mn] operand
};

// Barriers of one warpgroup (128 threads; id 0 is __syncthreads): plain, and with an AND of a predicate.
__device__ __forceinline__ void warpgroup_sync(int id) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ bool warpgroup_sync_and(int id, bool predicate) {
  int all;
  asm volatile(
      "{\n.reg .pred p, q;\nsetp.ne.b32 p, %1, 0;\nbar.red.and.pred q, %2, 128, p;\nselp.s32 %0, 1, 0, q;\n}\n"
      : "=r"(all)
      : "r"(static_cast<int>(predicate)), "r"(id)
      : "memory");
  return all != 0;
}

template <class Element, int kDqk, int kDv, bool kDeterministic, bool kDqSlots>
__global__ void __launch_bounds__(SlcBwdSm90Traits<kDqk, kDv>::kThreads, 1)
    slc_bwd_sm90_kernel(const __grid_constant__ SlcBackwardParams p) {
#if FSA_HAS_WGMMA
  using T = SlcBwdSm90Traits<kDqk, kDv>;
  static_assert(T::kSupported, "Dqk = Dv in {64, 128}");
  constexpr int kD = T::kD;
  constexpr int kEntries = kSlcBwdRunEntries<kDeterministic>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ __align__(16) flash::BwdRowTable<T::kRowChunk> tab[T::kGroups][T::kStages];
  __shared__ RunTable<kEntries> table;
  __shared__ float raw_lse[T::kGroups][T::kStages][T::kRowChunk], raw_delta[T::kGroups][T::kStages][T::kRowChunk];
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

  // This warpgroup (its role read through a shuffle, so that the compiler knows it is warp-uniform
  // and does not serialise the wgmma of the branches) and its chunks: local chunk i is the run's
  // chunk 2i + wg, in stage i % kStages.
  const int wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);
  const int wg_thread = threadIdx.x % 128;
  const int barrier_id = 1 + wg;
  const int local_chunks = (run.chunks - wg + T::kGroups - 1) / T::kGroups;
  auto q_stage = [&](int i) { return smem + T::kStageOffset + (wg * T::kStages + i % T::kStages) * T::kStageBytes; };
  unsigned char* ds_s = smem + T::kDsOffset + wg * T::kDsBytes;

  // Local chunk i into its stage: thread t of the warpgroup copies half of row t / 2's Q and dO
  // vectors; the row's first thread also its lse and delta.
  const auto* q = static_cast<const Element*>(p.in.q);
  const auto* d_o = static_cast<const Element*>(p.d_o);
  const int load_row = wg_thread / T::kThreadsPerRow, load_part = wg_thread % T::kThreadsPerRow;
  auto chunk_row = [&](int i) { return run.row_begin + (i * T::kGroups + wg) * T::kRowChunk + load_row; };
  auto load_chunk = [&](int i) {
    const RunRow row = run_row(run, table, G, chunk_row(i));
    const Element* q_row = q + row.token * p.in.q_token_stride + row.head * p.in.q_head_stride;
    const Element* do_row = d_o + row.token * p.do_token_stride + row.head * p.do_head_stride;
    unsigned char* q_dst = q_stage(i);
    unsigned char* do_dst = q_dst + T::kTileBytes;
#pragma unroll
    for (int v = 0; v < kD / 8 / T::kThreadsPerRow; ++v) {
      const int col = (load_part + v * T::kThreadsPerRow) * 8;
      const int at = wgmma::swizzled_offset(T::kRowChunk, load_row, col);
      if (row.valid) {
        common::cp_async_16(q_dst + at, q_row + col);
        common::cp_async_16(do_dst + at, do_row + col);
      } else {
        *reinterpret_cast<uint4*>(q_dst + at) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(do_dst + at) = make_uint4(0, 0, 0, 0);
      }
    }
    const int stage = i % T::kStages;
    if (load_part == 0 && row.valid)
      copy_row_stats(p, row, &raw_lse[wg][stage][load_row], &raw_delta[wg][stage][load_row]);
  };
  // Local chunk i's row table entry, on the row's first thread once its copies have landed;
  // returns whether the row sees every key of the tile (a chunk whose rows all do skips the mask).
  auto set_row = [&](int i) -> bool {
    if (load_part != 0) return true;
    const int stage = i % T::kStages;
    const RunRow row = run_row(run, table, G, chunk_row(i));
    const RowEntry e = row_entry<kDqk, kDqSlots>(p, run, table, row, raw_lse[wg][stage][load_row],
                                                 raw_delta[wg][stage][load_row]);
    tab[wg][stage].set(load_row, 0, e.hi, e.lse, e.delta, e.dq);
    // Tiles of fewer than 64 keys always mask: past the block's end K is zero, not -inf.
    return e.hi >= key0 + T::kKeys;
  };
  if (local_chunks > 0) load_chunk(0);
  common::cp_async_commit();
  common::cp_async_wait<0>();  // K, V (copied by both warpgroups) and the first chunks
  __syncthreads();

  const int warp = wg_thread / 32, lane = threadIdx.x % 32;
  const int group = lane / 4;
  const int key_row0 = warp * 16;  // this warp's first key of the tile (and first dQ row of a chunk)
  const float scale_log2 = p.in.scale * kBwdLog2e;
  float dk[kD / 8][4], dv[kD / 8][4];  // dK not yet scaled
  common::zero_acc<kD>(dk);
  common::zero_acc<kD>(dv);

  // Descriptors (wgmma_sm90.cuh). K-major: K, V (A of S^T, dP^T), Q, dO (B of S^T, dP^T); a k step
  // kk is panel kk / 4, 32 bytes per step within it. Transposed ([k][mn]): dO, Q as B of dV, dK and
  // K as B of dQ (k step 16 rows, panels kPanelBytes apart), dS^T as A of dQ.
  const std::uint64_t k_desc = wgmma::descriptor(k_s, 0, T::kGroupBytes);
  const std::uint64_t v_desc = wgmma::descriptor(v_s, 0, T::kGroupBytes);
  const std::uint64_t kt_desc = wgmma::descriptor(k_s, T::kPanelBytes, T::kGroupBytes);
  const std::uint64_t ds_desc = wgmma::descriptor(ds_s, 0, T::kGroupBytes);
  auto kstep = [](int kk) { return static_cast<std::uint32_t>((kk / 4) * T::kPanelBytes + (kk % 4) * 32); };

  for (int i = 0; i < local_chunks; ++i) {
    const int stage = i % T::kStages;
    common::cp_async_wait<0>();  // this thread's copies of chunk i
    const bool row_covers = set_row(i);
    wgmma::fence_async_shared();
    // Chunk i and its table are complete; the warpgroup is done with chunk i - 1 (whose stage chunk
    // i + 1 now overwrites) and with dS^T.
    const bool chunk_covers = warpgroup_sync_and(barrier_id, row_covers);

    unsigned char* q_s = q_stage(i);
    unsigned char* do_s = q_s + T::kTileBytes;
    const flash::BwdRowTable<T::kRowChunk>& rows = tab[wg][stage];

    // S^T = K Q^T and dP^T = V dO^T: 64 keys x 64 rows.
    float st[T::kRowChunk / 8][4], dpt[T::kRowChunk / 8][4];
    {
      const std::uint64_t q_desc = wgmma::descriptor(q_s, 0, T::kGroupBytes);
      const std::uint64_t do_desc = wgmma::descriptor(do_s, 0, T::kGroupBytes);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk)
        wgmma::mma_ss<Element, T::kRowChunk, 0>(st, wgmma::advance(k_desc, kstep(kk)),
                                                wgmma::advance(q_desc, kstep(kk)), kk > 0);
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk)
        wgmma::mma_ss<Element, T::kRowChunk, 0>(dpt, wgmma::advance(v_desc, kstep(kk)),
                                                wgmma::advance(do_desc, kstep(kk)), kk > 0);
      wgmma::commit_group();
      // The next chunk's gathers, issued while the tensor cores run these products.
      if (i + 1 < local_chunks) load_chunk(i + 1);
      common::cp_async_commit();
      wgmma::wait_group<0>();
      wgmma::fence_operands<T::kRowChunk>(st);
      wgmma::fence_operands<T::kRowChunk>(dpt);
    }

    // P^T and dS^T (dS^T also to shared memory for dQ); the rows' key intervals start at 0.
    const int first_key = key0 + key_row0 + group, ds_key = key_row0 + group;  // this thread's, for the scores
    if (chunk_covers)
      flash::bwd_scores_sm90<false, T::kKeys, Element>(st, dpt, rows, first_key, ds_key, scale_log2, ds_s);
    else
      flash::bwd_scores_sm90<true, T::kKeys, Element>(st, dpt, rows, first_key, ds_key, scale_log2, ds_s);

    // dV += P^T dO, dK += dS^T Q.
    {
      std::uint32_t pa[T::kRowChunk / 16][4], da[T::kRowChunk / 16][4];
      flash::bwd_operands_sm90<Element, T::kRowChunk>(pa, da, st, dpt);
      const std::uint64_t do_tdesc = wgmma::descriptor(do_s, T::kPanelBytes, T::kGroupBytes);
      const std::uint64_t q_tdesc = wgmma::descriptor(q_s, T::kPanelBytes, T::kGroupBytes);
      wgmma::fence_operands<kD>(dv);
      wgmma::fence_operands<kD>(dk);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < T::kRowChunk / 16; ++kk)
        wgmma::mma_rs<Element, kD, 1>(dv, pa[kk], wgmma::advance(do_tdesc, kk * T::kRowStep16), 1);
#pragma unroll
      for (int kk = 0; kk < T::kRowChunk / 16; ++kk)
        wgmma::mma_rs<Element, kD, 1>(dk, da[kk], wgmma::advance(q_tdesc, kk * T::kRowStep16), 1);
      wgmma::commit_group();
    }
    wgmma::fence_async_shared();  // dS^T stores before the dQ wgmma reads them ...
    warpgroup_sync(barrier_id);   // ... from every warp of the warpgroup
    // dV and dK first: their A fragments then free the registers dQ takes.
    wgmma::wait_group<0>();
    wgmma::fence_operands<kD>(dv);
    wgmma::fence_operands<kD>(dk);

    // dQ (64 rows x kD) = dS K.
    float dq[kD / 8][4];
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < T::kKeys / 16; ++kk)
      wgmma::mma_ss<Element, kD, 1, 1>(dq, wgmma::advance(ds_desc, kk * T::kRowStep16),
                                       wgmma::advance(kt_desc, kk * T::kRowStep16), kk > 0);
    wgmma::commit_group();
    wgmma::wait_group<0>();
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

  // The exchange: WG 0 hands its dK to WG 1, WG 1 its dV to WG 0, through the sender's own stages
  // (idle now; the other warpgroup may still be computing on its stages). Fragment order, one
  // float4 per (register quad, thread): conflict-free. Each branch names its arrays (selecting
  // them at run time would put them in local memory).
  auto send = [&](const float (&acc)[kD / 8][4]) {
    float4* out = reinterpret_cast<float4*>(smem + T::kStageOffset + wg * T::kStages * T::kStageBytes);
#pragma unroll
    for (int n = 0; n < kD / 8; ++n) out[n * 128 + wg_thread] = make_float4(acc[n][0], acc[n][1], acc[n][2], acc[n][3]);
  };
  if (wg == 0) send(dk);
  else send(dv);
  __syncthreads();
  // Adds the other warpgroup's partial (one addition of two values, the same bits whichever
  // warpgroup does it: the deterministic mode stays reproducible) and writes the sum times `scale`:
  // atomics into the accumulator (row = key token x Hkv + g), or stores into the run's kv_part rows
  // [B][Dqk | Dv] at column `part_column`.
  auto finish = [&](float (&acc)[kD / 8][4], float* accum, int part_column, float scale) {
    const float4* in = reinterpret_cast<const float4*>(smem + T::kStageOffset + (1 - wg) * T::kStages * T::kStageBytes);
#pragma unroll
    for (int n = 0; n < kD / 8; ++n) {
      const float4 other = in[n * 128 + wg_thread];
      acc[n][0] += other.x;
      acc[n][1] += other.y;
      acc[n][2] += other.z;
      acc[n][3] += other.w;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int key = key_row0 + group + 8 * h;
      const bool active = key < run.keys;
      if constexpr (kDeterministic) {
        const long long first = static_cast<long long>(blockIdx.x) * p.plan.shape.block_size + blockIdx.y * T::kKeys;
        common::store_fragment_row<kD>(p.kv_part + (first + (active ? key : 0)) * (kDqk + kDv) + part_column, acc, h,
                                       scale, active);
      } else {
        const long long kv_row = (key_token + (active ? key : 0)) * p.plan.shape.heads_kv + run.kv_head;
        common::atomic_add_fragment_row<kD>(accum + kv_row * kD, acc, h, scale, active);
      }
    }
  };
  if (wg == 0) finish(dv, p.dv_accum, kDqk, 1.0f);
  else finish(dk, p.dk_accum, 0, p.in.scale);
#else
  __trap();  // launched only where the sm_90a image is the one loaded (common::kernel_arch)
#endif
}

}  // namespace fsa::cuda::slc
