// Forward of the masked flash attention on Hopper (sm90a): the contract of flash_fwd_kernel.cuh
// (rows packed tokens x G heads per kv head, per-row key intervals, o = 0 and lse = -inf for rows
// that see nothing), with warpgroup MMAs instead of mma.sync.
//
// One CTA per (tile of 128 query rows of one sequence, kv head g): two warpgroups of 64 rows each.
// Q, K and V live in 128-byte-swizzled shared memory (wgmma_sm90.cuh), so wgmma reads them without
// ldmatrix: S = Q K^T takes both operands from shared memory (m64 x kKeys per warpgroup, fp32 in
// registers), the online softmax runs on the accumulators (they share the mma.sync C layout, so
// flash_softmax.cuh serves both kernels), and O += P V takes P from registers (the C -> A fragment
// conversion of mma.sync) and V from shared memory as a transposed B. The softmax of one tile
// overlaps the P V product of the previous one (see the loop). K/V tiles are double-buffered and
// copied with cp.async by all threads.
// Why not the mma.sync kernel on Hopper: mma.sync reaches ~200 TFLOP/s there (flash.md), while
// wgmma keeps its operands out of the register file and issues 64 x N x 16 per instruction.
#pragma once

#include <cstdint>

#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"
#include "kernels/common/wgmma_sm90.cuh"
#include "kernels/flash/flash_fwd_rows.cuh"
#include "kernels/flash/flash_mask.cuh"
#include "kernels/flash/flash_params.hpp"
#include "kernels/flash/flash_softmax.cuh"
#include "kernels/flash/flash_tiles.cuh"

namespace fsa::cuda::flash {

template <class Element, int kDqk_, int kDv_>
struct FwdSm90Traits {
  static constexpr int kDqk = kDqk_;
  static constexpr int kDv = kDv_;
  static_assert(kDqk % wgmma::kPanelCols == 0 && kDv % wgmma::kPanelCols == 0, "whole 64-column panels");
  static constexpr int kWarpGroups = 2;
  static constexpr int kRows = 64 * kWarpGroups;  // query rows per CTA
  static constexpr int kThreads = 128 * kWarpGroups;
  // Keys per tile: S (kKeys / 2 floats per thread) and O (kDv / 2) share the register file.
  static constexpr int kKeys = kDv > 128 ? 64 : 128;
  static constexpr int kStages = 2;
  static constexpr std::size_t kQBytes = std::size_t{2} * kRows * kDqk;
  static constexpr std::size_t kKBytes = std::size_t{2} * kKeys * kDqk;
  static constexpr std::size_t kVBytes = std::size_t{2} * kKeys * kDv;
  static constexpr std::size_t kKOffset = kQBytes;
  static constexpr std::size_t kVOffset = kKOffset + kStages * kKBytes;
  // + 1024: the dynamic shared memory is aligned to the swizzle's 1024-byte period by hand.
  static constexpr std::size_t kSmemBytes = kVOffset + kStages * kVBytes + 1024;
  // Descriptor strides (bytes): 8-row groups of every operand, and V's 64-column panels.
  static constexpr std::uint32_t kGroupBytes = 8 * wgmma::kPanelRowBytes;
  static constexpr std::uint32_t kVPanelBytes = kKeys * wgmma::kPanelRowBytes;
};

template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(FwdSm90Traits<Element, kDqk, kDv>::kThreads, 1)
    flash_fwd_sm90_kernel(const __grid_constant__ FlashParams p) {
#if FSA_HAS_WGMMA
  using T = FwdSm90Traits<Element, kDqk, kDv>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ FwdRowTable<T::kRows> rows;
  unsigned char* smem = wgmma::swizzle_aligned(smem_raw);

  const int g = blockIdx.y, G = p.group;
  const FwdTile tile = forward_tile<T::kRows>(p, rows);
  if (!tile.valid) return;
  const long long seq_start = tile.seq_start, key_start = tile.key_start;
  const KeyInterval first = tile.first, last = tile.last;
  const int key_begin = first.lo, key_end = last.hi;
  auto* q_s = reinterpret_cast<Element*>(smem);
  auto* k_s = reinterpret_cast<Element*>(smem + T::kKOffset);
  auto* v_s = reinterpret_cast<Element*>(smem + T::kVOffset);
  __syncthreads();  // the row table (forward_tile)
  const auto* q = static_cast<const Element*>(p.q);
  wgmma::copy_tile_swizzled_async<T::kRows, kDqk, T::kThreads>(q_s, [&](int r) -> const Element* {
    return rows.q_offset[r] >= 0 ? q + rows.q_offset[r] : nullptr;
  });

  const auto* k = static_cast<const Element*>(p.k) + key_start * p.k_row_stride + g * p.k_head_stride;
  const auto* v = static_cast<const Element*>(p.v) + key_start * p.v_row_stride + g * p.v_head_stride;
  // Keys past key_end are zero-filled: they meet zero probabilities, and 0 * garbage could be NaN.
  auto load_rows = [&]<int kCols>(Element* dst, const Element* src, long long stride, int key0) {
    if constexpr ((T::kThreads / (kCols / 8)) % 8 == 0) {
      wgmma::copy_rows_swizzled_async<T::kKeys, kCols, T::kThreads>(dst, src + key0 * stride, stride, key_end - key0);
    } else {  // Dqk = 192: rows of 24 vectors do not divide the threads evenly
      wgmma::copy_tile_swizzled_async<T::kKeys, kCols, T::kThreads>(dst, [&](int r) -> const Element* {
        return key0 + r < key_end ? src + static_cast<long long>(key0 + r) * stride : nullptr;
      });
    }
  };
  auto load_k = [&](int stage, int key0) {
    load_rows.template operator()<kDqk>(k_s + stage * (T::kKBytes / 2), k, p.k_row_stride, key0);
  };
  auto load_v = [&](int stage, int key0) {
    load_rows.template operator()<kDv>(v_s + stage * (T::kVBytes / 2), v, p.v_row_stride, key0);
  };
  const int num_tiles = key_end > key_begin ? (key_end - key_begin + T::kKeys - 1) / T::kKeys : 0;

  const int warpgroup = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int group = lane / 4, pair = lane % 4;
  const int row0 = warpgroup * 64 + warp * 16;  // this warp's first row of the CTA's tile
  const int lo[2] = {rows.lo[row0 + group], rows.lo[row0 + group + 8]};
  const int hi[2] = {rows.hi[row0 + group], rows.hi[row0 + group + 8]};
  const float scale_log2 = p.scale * kLog2e;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  float acc[kDv / 8][4];
  common::zero_acc<kDv>(acc);

  // Q rows of this warpgroup, panel 0; k step kk of 16 columns lies in panel kk / 4 at 32 * (kk % 4).
  const std::uint64_t q_desc = wgmma::descriptor(q_s + warpgroup * 64 * wgmma::kPanelCols, 0, T::kGroupBytes);
  const std::uint64_t k_desc0 = wgmma::descriptor(k_s, 0, T::kGroupBytes);
  const std::uint64_t v_desc0 = wgmma::descriptor(v_s, T::kVPanelBytes, T::kGroupBytes);
  auto qk_step_bytes = [](int rows, int kk) {
    return static_cast<std::uint32_t>((kk / 4) * rows * wgmma::kPanelRowBytes + (kk % 4) * 32);
  };
  // Issues S = Q K^T of the tile in K stage `stage` (the caller commits and waits).
  auto issue_qk = [&](float (&s)[T::kKeys / 8][4], int stage) {
    const std::uint64_t k_desc = wgmma::advance(k_desc0, stage * static_cast<std::uint32_t>(T::kKBytes));
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kDqk / 16; ++kk)
      wgmma::mma_ss<Element, T::kKeys, 0>(s, wgmma::advance(q_desc, qk_step_bytes(T::kRows, kk)),
                                          wgmma::advance(k_desc, qk_step_bytes(T::kKeys, kk)), kk > 0);
  };

  // Softmax of tile j's scores in s (masked where some row does not see the whole tile): P_j in s,
  // and the factor by which the rows' outputs must be rescaled before P_j V_j is added.
  auto softmax = [&](float (&s)[T::kKeys / 8][4], float (&correction)[2], int it) {
    const int key0 = key_begin + it * T::kKeys;
    if (key0 >= last.lo && key0 + T::kKeys <= first.hi) {
      online_softmax_scores<false, T::kKeys>(s, row_max, row_sum, correction, scale_log2,
                                             [](int, int) { return true; });
    } else {
      online_softmax_scores<true, T::kKeys>(s, row_max, row_sum, correction, scale_log2, [&](int h, int column) {
        const int key = key0 + column;
        return key >= lo[h] && key < hi[h];
      });
    }
  };
  // P's fragments of keys 16kk.. as the A operand of O += P V.
  std::uint32_t a[T::kKeys / 16][4];
  auto to_a = [&](const float (&s)[T::kKeys / 8][4]) {
#pragma unroll
    for (int kk = 0; kk < T::kKeys / 16; ++kk) common::c_to_a<Element>(a[kk], s[2 * kk], s[2 * kk + 1]);
  };

  // Pipeline (FlashAttention-3's intra-warpgroup overlap): iteration j issues S_{j+1} = Q K_{j+1}^T
  // and O += P_j V_j back to back, then runs the softmax of S_{j+1} on the CUDA cores while
  // P_j V_j runs on the tensor cores; O is rescaled once P_j V_j is done. Live registers: S (kKeys
  // / 2), O (kDv / 2) and P_j (kKeys / 4). K and V have two stages each: after the barrier at the
  // top of iteration j, K stage j % 2 (S_j is done) and V stage (j + 1) % 2 (PV_{j-1} is done) are
  // free, and receive K_{j+2} and V_{j+1}: every copy has most of an iteration to land.
  float s[T::kKeys / 8][4];
  if (num_tiles > 0) load_k(0, key_begin);
  common::cp_async_commit();  // Q and K_0
  if (num_tiles > 1) load_k(1, key_begin + T::kKeys);
  if (num_tiles > 0) load_v(0, key_begin);
  common::cp_async_commit();  // K_1 and V_0
  if (num_tiles > 0) {
    common::cp_async_wait<1>();
    wgmma::fence_async_shared();
    __syncthreads();
    issue_qk(s, 0);
    wgmma::commit_group();
    wgmma::wait_group<0>();
    wgmma::fence_operands<T::kKeys>(s);
    float correction[2];
    softmax(s, correction, 0);  // O is still 0: nothing to rescale
    to_a(s);
  }

  // kNext (is there a tile j + 1) is a template argument: a wgmma issued under a runtime condition
  // leaves a join where ptxas copies the accumulators, and then it serialises every wgmma (C7515).
  auto step = [&]<bool kNext>(int it) {
    common::cp_async_wait<0>();  // K_{j+1} and V_j have landed for this thread's copies
    wgmma::fence_async_shared();
    __syncthreads();  // ... for every thread's; every warpgroup is done with S_j and PV_{j-1}
    const int key0 = key_begin + it * T::kKeys;
    if constexpr (kNext) {
      issue_qk(s, (it + 1) % 2);
      wgmma::commit_group();
    }
    const std::uint64_t v_desc = wgmma::advance(v_desc0, (it % 2) * static_cast<std::uint32_t>(T::kVBytes));
    wgmma::fence_operands<kDv>(acc);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < T::kKeys / 16; ++kk)
      wgmma::mma_rs<Element, kDv, 1>(acc, a[kk], wgmma::advance(v_desc, kk * 16 * wgmma::kPanelRowBytes), 1);
    wgmma::commit_group();
    // The copies into the free stages (K_{j+2}, V_{j+1}), issued once the products are on the
    // tensor cores: their address arithmetic runs under them.
    if (it + 2 < num_tiles) load_k(it % 2, key0 + 2 * T::kKeys);
    if (it + 1 < num_tiles) load_v((it + 1) % 2, key0 + T::kKeys);
    common::cp_async_commit();  // possibly empty
    if constexpr (kNext) {
      wgmma::wait_group<1>();  // S_{j+1}
      wgmma::fence_operands<T::kKeys>(s);
      float correction[2];
      softmax(s, correction, it + 1);
      wgmma::wait_group<0>();  // P_j V_j
      wgmma::fence_operands<kDv>(acc);
      rescale_rows<kDv>(acc, correction);
      to_a(s);
    } else {
      wgmma::wait_group<0>();
      wgmma::fence_operands<kDv>(acc);
    }
  };
  for (int it = 0; it + 1 < num_tiles; ++it) step.template operator()<true>(it);
  if (num_tiles > 0) step.template operator()<false>(num_tiles - 1);
  common::cp_async_wait<0>();  // the Q copies, when no key tile ran

  auto* o = static_cast<Element*>(p.o);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = row0 + group + 8 * h;
    const long long row = tile.first_row + r;
    if (rows.q_offset[r] < 0) continue;
    const long long token = seq_start + row / G;
    const int head = g * G + static_cast<int>(row % G);
    const float inv_sum = row_sum[h] > 0.0f ? 1.0f / row_sum[h] : 0.0f;
    Element* orow = o + token * p.o_token_stride + head * p.o_head_stride;
#pragma unroll
    for (int n = 0; n < kDv / 8; ++n)
      *reinterpret_cast<std::uint32_t*>(orow + n * 8 + 2 * pair) =
          mma::pack2<Element>(acc[n][2 * h] * inv_sum, acc[n][2 * h + 1] * inv_sum);
    if (pair == 0) p.lse[head * p.lse_head_stride + token * p.lse_token_stride] = row_lse(row_max[h], row_sum[h]);
  }
#else
  __trap();  // launched only where the sm_90a image is the one loaded (common::kernel_arch)
#endif
}

}  // namespace fsa::cuda::flash
