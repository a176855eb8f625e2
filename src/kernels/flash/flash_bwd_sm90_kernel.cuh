// Main kernel of the masked flash-attention backward on Hopper (sm90a), for Dqk = Dv in {64, 128}:
// the work split, delta, accumulators and finish of flash_bwd_kernel.cuh, with warpgroup MMAs.
//
// One CTA per (tile of 128 keys, kv head g, block of query rows): two warpgroups, warpgroup w owns
// keys 64w..64w+63 of the tile and keeps their dK and dV in registers (fp32, wgmma accumulators).
// K, V, and two stages of Q / dO chunks (64 rows) sit in 128-byte-swizzled shared memory
// (wgmma_sm90.cuh). Per chunk, each warpgroup:
//   S^T = K_w Q^T and dP^T = V_w dO^T (both operands in shared memory, m64 keys x n64 rows),
//   P^T = exp2(scale S^T - lse) under the rows' key intervals, dS^T = P^T (dP^T - delta),
//   dV += P^T dO and dK += dS^T Q with P^T / dS^T from registers (the accumulator of S^T is, per
//   warp, the mma.sync C layout, whose C -> A conversion gives the A operand of keys x rows) and
//   dO / Q as transposed B operands, dS^T -> shared memory,
//   dQ = scale dS K after a barrier (A = dS^T read transposed from shared memory): at D = 128 each
//   warpgroup takes 64 of the columns over all 128 keys, at D = 64 all columns over its own keys;
//   dQ is added to the fp32 accumulator with 16-byte atomics, as in the mma.sync kernel.
// At the end each warpgroup adds its dK (times scale) / dV to the accumulators.
#pragma once

#include <cstdint>

#include "kernels/common/fragment_atomic.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"
#include "kernels/common/wgmma_sm90.cuh"
#include "kernels/flash/flash_bwd_block.cuh"
#include "kernels/flash/flash_bwd_chunk.cuh"
#include "kernels/flash/flash_bwd_sm90_scores.cuh"
#include "kernels/flash/flash_mask.cuh"
#include "kernels/flash/flash_params.hpp"
#include "kernels/flash/flash_softmax.cuh"
#include "kernels/flash/flash_tiles.cuh"

namespace fsa::cuda::flash {

template <class Element, int kDqk_, int kDv_>
struct BwdSm90Traits {
  static constexpr int kDqk = kDqk_;
  static constexpr int kDv = kDv_;
  static constexpr bool kSupported = kDqk == kDv && (kDqk == 64 || kDqk == 128);
  static constexpr int kKeys = 128;     // two warpgroups of 64 keys
  static constexpr int kRowChunk = 64;  // query rows per step (the n of S^T)
  static constexpr int kThreads = 256;
  // dQ = dS K per warpgroup: 64 columns over all keys (D = 128), or all 64 columns over its keys.
  static constexpr bool kDqSplitColumns = kDqk >= 128;
  static constexpr int kDqCols = 64;
  static constexpr int kDqKeys = kDqSplitColumns ? kKeys : kKeys / 2;
  static constexpr std::size_t kKOffset = 0;
  static constexpr std::size_t kVOffset = kKOffset + std::size_t{2} * kKeys * kDqk;
  static constexpr std::size_t kQOffset = kVOffset + std::size_t{2} * kKeys * kDv;
  static constexpr std::size_t kQStageBytes = std::size_t{2} * kRowChunk * kDqk;
  static constexpr std::size_t kDoOffset = kQOffset + 2 * kQStageBytes;
  static constexpr std::size_t kDoStageBytes = std::size_t{2} * kRowChunk * kDv;
  static constexpr std::size_t kDsOffset = kDoOffset + 2 * kDoStageBytes;  // dS^T [key][row], one panel
  static constexpr std::size_t kSmemBytes = kDsOffset + std::size_t{2} * kKeys * kRowChunk + 1024;
  static constexpr std::uint32_t kGroupBytes = 8 * wgmma::kPanelRowBytes;
};

template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(256, 1) flash_bwd_sm90_kernel(const __grid_constant__ FlashParams p) {
#if FSA_HAS_WGMMA
  using T = BwdSm90Traits<Element, kDqk, kDv>;
  static_assert(T::kSupported, "Dqk = Dv in {64, 128}");
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ __align__(16) BwdRowTable<T::kRowChunk> tab[2];
  unsigned char* smem = wgmma::swizzle_aligned(smem_raw);

  const int g = blockIdx.y, G = p.group;
  const BwdBlock work = backward_block<T::kKeys>(p);
  if (!work.valid) return;
  const long long seq_start = work.seq_start, key_start = work.key_start;
  const long long row_first = work.row_first, row_end = work.row_end;
  const int key0 = work.key0, keys = work.keys;  // the tile: local keys [key0, key0 + keys)
  const long long token_base = seq_start + row_first / G;
  const int first_in_group = static_cast<int>(row_first % G);
  const int block_rows = static_cast<int>(row_end - row_first);
  const int chunks = (block_rows + T::kRowChunk - 1) / T::kRowChunk;
  const int rotation = chunk_rotation(p, work, T::kRowChunk, chunks);

  auto* k_s = reinterpret_cast<Element*>(smem + T::kKOffset);
  auto* v_s = reinterpret_cast<Element*>(smem + T::kVOffset);
  auto* ds_s = smem + T::kDsOffset;
  const auto* k = static_cast<const Element*>(p.k) + (key_start + key0) * p.k_row_stride + g * p.k_head_stride;
  const auto* v = static_cast<const Element*>(p.v) + (key_start + key0) * p.v_row_stride + g * p.v_head_stride;
  wgmma::copy_rows_swizzled_async<T::kKeys, kDqk, T::kThreads>(k_s, k, p.k_row_stride, keys);
  wgmma::copy_rows_swizzled_async<T::kKeys, kDv, T::kThreads>(v_s, v, p.v_row_stride, keys);

  // Chunk c into stage `stage`: 4 threads per row, one division for the row's token and head.
  const auto* q = static_cast<const Element*>(p.q);
  const auto* d_o = static_cast<const Element*>(p.d_o);
  // Chunk c into stage `stage`, in two steps so that the global loads of the row table (lse, delta)
  // do not stall the warp at the top of a chunk: load_chunk issues the Q / dO copies and those
  // loads, store_row_table (called once the chunk's products are under way) writes the table entry
  // and returns whether the row sees every key of the tile (a chunk whose rows all do skips the
  // mask: __syncthreads_and at the next chunk's top barrier).
  struct PendingRow {
    long long token;
    int head;
    bool valid;
    float lse, delta;
  };
  constexpr int kThreadsPerRow = T::kThreads / T::kRowChunk;
  const int load_row = threadIdx.x / kThreadsPerRow, load_part = threadIdx.x % kThreadsPerRow;
  auto load_chunk = [&](int c, int stage) {
    const int walked = c + rotation;  // chunk_rotation
    const int x = (walked < chunks ? walked : walked - chunks) * T::kRowChunk + load_row;
    const int y = first_in_group + x;
    PendingRow row{token_base + y / G, g * G + y % G, x < block_rows, 0.0f, 0.0f};
    const Element* q_row = q + row.token * p.q_token_stride + row.head * p.q_head_stride;
    const Element* do_row = d_o + row.token * p.do_token_stride + row.head * p.do_head_stride;
    if (load_part == 0 && row.valid) {
      row.lse = p.lse[row.head * p.lse_head_stride + row.token * p.lse_token_stride];
      row.delta = p.delta[row.head * p.tokens + row.token];
    }
    unsigned char* q_dst = smem + T::kQOffset + stage * T::kQStageBytes;
    unsigned char* do_dst = smem + T::kDoOffset + stage * T::kDoStageBytes;
#pragma unroll
    for (int i = 0; i < kDqk / 8 / kThreadsPerRow; ++i) {
      const int col = (load_part + i * kThreadsPerRow) * 8;
      void* to = q_dst + wgmma::swizzled_offset(T::kRowChunk, load_row, col);
      if (row.valid) common::cp_async_16(to, q_row + col);
      else *reinterpret_cast<uint4*>(to) = make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int i = 0; i < kDv / 8 / kThreadsPerRow; ++i) {
      const int col = (load_part + i * kThreadsPerRow) * 8;
      void* to = do_dst + wgmma::swizzled_offset(T::kRowChunk, load_row, col);
      if (row.valid) common::cp_async_16(to, do_row + col);
      else *reinterpret_cast<uint4*>(to) = make_uint4(0, 0, 0, 0);
    }
    return row;
  };
  auto store_row_table = [&](int stage, const PendingRow& row) -> bool {
    if (load_part != 0) return true;
    int lo = 0, hi = 0;
    float lse = 0.0f, delta = 0.0f;
    long long dq = -1;
    if (row.valid && isfinite(row.lse)) {
      const KeyInterval interval = key_interval(p, row.token - seq_start);
      lo = interval.lo;
      hi = interval.hi;
      lse = row.lse * kLog2e;
      delta = row.delta;
      dq = (row.token * p.heads_q + row.head) * kDqk;
    }
    tab[stage].set(load_row, lo, hi, lse, delta, dq);
    return lo <= key0 && hi >= key0 + keys;  // rows that see nothing have lo = hi = 0 < key0 + keys
  };
  bool row_covers = store_row_table(0, load_chunk(0, 0));
  common::cp_async_commit();  // K, V and chunk 0

  // The warpgroup index through a shuffle: visibly warp-uniform, so that the descriptors derived
  // from it stay in uniform registers (no register-to-uniform moves before every wgmma).
  const int warpgroup = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int group = lane / 4;
  const int key_row0 = warpgroup * 64 + warp * 16;  // this warp's first key of the tile
  const float scale_log2 = p.scale * kLog2e;
  float dk[kDqk / 8][4], dv[kDv / 8][4];
  common::zero_acc<kDqk>(dk);
  common::zero_acc<kDv>(dv);

  // Descriptors. K-major operands (k step kk: panel kk / 4, 32 bytes per step within it): K_w and
  // V_w (A of S^T, dP^T), Q and dO (B of S^T, dP^T). Transposed operands ([k][mn] storage, k step =
  // 16 rows of 128 bytes): dO and Q as B of dV / dK (n panels 64 rows apart), dS^T as A of dQ, K as
  // B of dQ (n panels 128 rows apart).
  const std::uint64_t kw_desc = wgmma::descriptor(k_s + warpgroup * 64 * wgmma::kPanelCols, 0, T::kGroupBytes);
  const std::uint64_t vw_desc = wgmma::descriptor(v_s + warpgroup * 64 * wgmma::kPanelCols, 0, T::kGroupBytes);
  const std::uint64_t q_desc0 = wgmma::descriptor(smem + T::kQOffset, 0, T::kGroupBytes);
  const std::uint64_t do_desc0 = wgmma::descriptor(smem + T::kDoOffset, 0, T::kGroupBytes);
  const std::uint64_t q_tdesc0 =
      wgmma::descriptor(smem + T::kQOffset, T::kRowChunk * wgmma::kPanelRowBytes, T::kGroupBytes);
  const std::uint64_t do_tdesc0 =
      wgmma::descriptor(smem + T::kDoOffset, T::kRowChunk * wgmma::kPanelRowBytes, T::kGroupBytes);
  // dQ: A = dS rows x keys [dq_key0, dq_key0 + kDqKeys), B = K of those keys, columns [dq_col0, +64).
  const int dq_key0 = T::kDqSplitColumns ? 0 : warpgroup * 64;
  const int dq_col0 = T::kDqSplitColumns ? warpgroup * 64 : 0;
  const std::uint64_t ds_desc = wgmma::descriptor(ds_s + dq_key0 * wgmma::kPanelRowBytes, 0, T::kGroupBytes);
  const std::uint64_t kt_desc = wgmma::descriptor(
      k_s + (dq_col0 / wgmma::kPanelCols) * T::kKeys * wgmma::kPanelCols + dq_key0 * wgmma::kPanelCols, 0,
      T::kGroupBytes);
  auto kstep = [](int rows, int kk) {
    return static_cast<std::uint32_t>((kk / 4) * rows * wgmma::kPanelRowBytes + (kk % 4) * 32);
  };
  constexpr std::uint32_t kRowStep16 = 16 * wgmma::kPanelRowBytes;

  for (int c = 0; c < chunks; ++c) {
    const int stage = c & 1;
    common::cp_async_wait<0>();  // chunk c has landed for this thread's copies
    wgmma::fence_async_shared();
    // ... for every thread's; every warpgroup is done with chunk c - 1 and dS; chunk c's table is
    // complete, and whether all its rows see the whole tile.
    const bool chunk_covers = __syncthreads_and(row_covers);

    // S^T = K_w Q^T and dP^T = V_w dO^T.
    float st[T::kRowChunk / 8][4], dpt[T::kRowChunk / 8][4];
    const std::uint64_t q_desc = wgmma::advance(q_desc0, stage * static_cast<std::uint32_t>(T::kQStageBytes));
    const std::uint64_t do_desc = wgmma::advance(do_desc0, stage * static_cast<std::uint32_t>(T::kDoStageBytes));
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kDqk / 16; ++kk)
      wgmma::mma_ss<Element, T::kRowChunk, 0>(st, wgmma::advance(kw_desc, kstep(T::kKeys, kk)),
                                              wgmma::advance(q_desc, kstep(T::kRowChunk, kk)), kk > 0);
#pragma unroll
    for (int kk = 0; kk < kDv / 16; ++kk)
      wgmma::mma_ss<Element, T::kRowChunk, 0>(dpt, wgmma::advance(vw_desc, kstep(T::kKeys, kk)),
                                              wgmma::advance(do_desc, kstep(T::kRowChunk, kk)), kk > 0);
    wgmma::commit_group();
    // The next chunk's copies into the other stage (free: chunk c - 1's products are complete),
    // issued while the tensor cores run these products: their address arithmetic is off the path.
    PendingRow next{};
    if (c + 1 < chunks) next = load_chunk(c + 1, stage ^ 1);
    common::cp_async_commit();
    wgmma::wait_group<0>();
    wgmma::fence_operands<T::kRowChunk>(st);
    wgmma::fence_operands<T::kRowChunk>(dpt);

    // P^T and dS^T (dS^T also to shared memory for dQ).
    const BwdRowTable<T::kRowChunk>& rows = tab[stage];
    const int first_key = key0 + key_row0 + group, ds_key = key_row0 + group;  // this thread's, for the scores
    if (chunk_covers)
      bwd_scores_sm90<false, T::kKeys, Element>(st, dpt, rows, first_key, ds_key, scale_log2, ds_s);
    else
      bwd_scores_sm90<true, T::kKeys, Element>(st, dpt, rows, first_key, ds_key, scale_log2, ds_s);
    std::uint32_t pa[T::kRowChunk / 16][4], da[T::kRowChunk / 16][4];
    bwd_operands_sm90<Element, T::kRowChunk>(pa, da, st, dpt);

    // dV += P^T dO, dK += dS^T Q.
    const std::uint64_t do_tdesc = wgmma::advance(do_tdesc0, stage * static_cast<std::uint32_t>(T::kDoStageBytes));
    const std::uint64_t q_tdesc = wgmma::advance(q_tdesc0, stage * static_cast<std::uint32_t>(T::kQStageBytes));
    wgmma::fence_operands<kDv>(dv);
    wgmma::fence_operands<kDqk>(dk);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < T::kRowChunk / 16; ++kk)
      wgmma::mma_rs<Element, kDv, 1>(dv, pa[kk], wgmma::advance(do_tdesc, kk * kRowStep16), 1);
#pragma unroll
    for (int kk = 0; kk < T::kRowChunk / 16; ++kk)
      wgmma::mma_rs<Element, kDqk, 1>(dk, da[kk], wgmma::advance(q_tdesc, kk * kRowStep16), 1);
    wgmma::commit_group();
    if (c + 1 < chunks) row_covers = store_row_table(stage ^ 1, next);

    wgmma::fence_async_shared();  // dS^T stores before the dQ wgmma reads them ...
    __syncthreads();              // ... from both warpgroups

    // dQ (64 rows x 64 columns of this warpgroup) = dS K.
    float dq[T::kDqCols / 8][4];
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < T::kDqKeys / 16; ++kk)
      wgmma::mma_ss<Element, T::kDqCols, 1, 1>(dq, wgmma::advance(ds_desc, kk * kRowStep16),
                                               wgmma::advance(kt_desc, kk * kRowStep16), kk > 0);
    wgmma::commit_group();
    wgmma::wait_group<0>();
    wgmma::fence_operands<kDv>(dv);
    wgmma::fence_operands<kDqk>(dk);
    wgmma::fence_operands<T::kDqCols>(dq);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const long long offset = rows.dq[warp * 16 + group + 8 * h];
      const bool active = offset >= 0;
      common::atomic_add_fragment_row<T::kDqCols>(p.dq_accum + (active ? offset + dq_col0 : 0), dq, h, p.scale,
                                                  active);
    }
  }

  // This warpgroup's dK (times scale) and dV into the accumulators (row = key row x Hkv + g).
  const long long first_row = (key_start + key0) * p.heads_kv + g;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int key = key_row0 + group + 8 * h;
    const bool active = key < keys;
    const long long row = first_row + (active ? key : 0) * p.heads_kv;
    common::atomic_add_fragment_row<kDqk>(p.dk_accum + row * kDqk, dk, h, p.scale, active);
    common::atomic_add_fragment_row<kDv>(p.dv_accum + row * kDv, dv, h, 1.0f, active);
  }
#else
  __trap();  // launched only where the sm_90a image is the one loaded
#endif
}

}  // namespace fsa::cuda::flash
