// Forward of the masked flash attention (flash_params.hpp): compressed attention and sliding-window
// attention.
//
// One CTA per (tile of 64 query rows of one sequence, kv head g). Rows are packed tokens x G heads
// (row r of the sequence: token r / G, head g*G + r % G), so every K/V tile is loaded once for all
// heads of the group. The CTA walks the keys its rows see, [lo(first token), hi(last token)), in
// tiles of 64: S = Q K^T on tensor cores (mma.sync, 16 rows per warp, scores in registers), the
// interval mask per row only on tiles that some row does not fully see, an online softmax in
// registers, O += P V. Rows that see nothing end with o = 0 and lse = -inf. For Dv = 256 the output
// columns are split over two warp groups (each recomputes S) so that scores and outputs fit in
// registers.
//
// Copies are pipelined as in FlashAttention-2 with one buffer each for K and V: V of a tile is
// loaded while S = Q K^T runs, K of the next tile while the softmax and P V run. (A second K/V
// stage would double the K/V shared memory, 87 KB per CTA at D = 128, and halve the CTAs per SM.)
#pragma once

#include <string>

#include "cuda/runtime.hpp"
#include "kernels/common/dispatch_table.hpp"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"
#include "kernels/flash/flash_fwd_rows.cuh"
#include "kernels/flash/flash_mask.cuh"
#include "kernels/flash/flash_fwd_sm90_kernel.cuh"
#include "kernels/flash/flash_fwd_traits.cuh"
#include "kernels/flash/flash_params.hpp"
#include "kernels/flash/flash_softmax.cuh"
#include "kernels/flash/flash_tiles.cuh"

namespace fsa::cuda::flash {

template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(FwdTraits<Element, kDqk, kDv>::kThreads)
    flash_fwd_kernel(const __grid_constant__ FlashParams p) {
  using T = FwdTraits<Element, kDqk, kDv>;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ FwdRowTable<T::kRows> rows;

  const int g = blockIdx.y, G = p.group;
  const FwdTile tile = forward_tile<T::kRows>(p, rows);
  if (!tile.valid) return;
  const long long seq_start = tile.seq_start, key_start = tile.key_start;
  const KeyInterval first = tile.first, last = tile.last;
  const int key_begin = first.lo, key_end = last.hi;
  auto* q_s = reinterpret_cast<Element*>(smem + T::kQOffset);
  auto* k_s = reinterpret_cast<Element*>(smem + T::kKOffset);
  auto* v_s = reinterpret_cast<Element*>(smem + T::kVOffset);
  __syncthreads();
  const auto* q = static_cast<const Element*>(p.q);
  common::copy_tile_async<T::kRows, kDqk, T::kThreads>(q_s, T::kLdQk, [&](int r) -> const Element* {
    return rows.q_offset[r] >= 0 ? q + rows.q_offset[r] : nullptr;
  });
  common::cp_async_commit();

  const auto* k = static_cast<const Element*>(p.k) + key_start * p.k_row_stride + g * p.k_head_stride;
  const auto* v = static_cast<const Element*>(p.v) + key_start * p.v_row_stride + g * p.v_head_stride;
  // Keys past key_end are zero-filled: they meet zero probabilities, and 0 * garbage could be NaN.
  auto load_k = [&](int key0) {
    common::copy_tile_async<T::kKeys, kDqk, T::kThreads>(k_s, T::kLdQk, [&](int r) -> const Element* {
      if (key0 + r >= key_end) return nullptr;
      return k + static_cast<long long>(key0 + r) * p.k_row_stride;
    });
  };
  auto load_v = [&](int key0) {
    common::copy_tile_async<T::kKeys, kDv, T::kThreads>(v_s, T::kLdV, [&](int r) -> const Element* {
      if (key0 + r >= key_end) return nullptr;
      return v + static_cast<long long>(key0 + r) * p.v_row_stride;
    });
  };
  const int num_tiles = key_end > key_begin ? (key_end - key_begin + T::kKeys - 1) / T::kKeys : 0;
  if (num_tiles > 0) load_k(key_begin);
  common::cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
  const int row0 = (warp % 4) * 16, col0 = (warp / 4) * T::kDvPart;
  const int lo[2] = {rows.lo[row0 + group], rows.lo[row0 + group + 8]};
  const int hi[2] = {rows.hi[row0 + group], rows.hi[row0 + group + 8]};
  const float scale_log2 = p.scale * kLog2e;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  float acc[T::kDvPart / 8][4];
  common::zero_acc<T::kDvPart>(acc);

  for (int it = 0; it < num_tiles; ++it) {
    const int key0 = key_begin + it * T::kKeys;
    common::cp_async_wait<0>();  // K of this tile (and Q) have landed
    __syncthreads();             // ... for every thread's copies; every warp is done with the last V
    load_v(key0);
    common::cp_async_commit();

    float s[T::kKeys / 8][4];
    common::zero_acc<T::kKeys>(s);
    common::warp_tile_mma<Element, kDqk, T::kKeys, false, false, T::kQkUnroll>(s, q_s, T::kLdQk, row0, k_s,
                                                                                T::kLdQk, 0);
    __syncthreads();  // every warp is done with K
    if (it + 1 < num_tiles) load_k(key0 + T::kKeys);
    common::cp_async_commit();  // possibly empty: the wait below then still counts one group

    if (key0 >= last.lo && key0 + T::kKeys <= first.hi) {
      online_softmax_tile<false, T::kKeys, T::kDvPart>(s, acc, row_max, row_sum, scale_log2,
                                                       [](int, int) { return true; });
    } else {
      online_softmax_tile<true, T::kKeys, T::kDvPart>(s, acc, row_max, row_sum, scale_log2, [&](int h, int column) {
        const int key = key0 + column;
        return key >= lo[h] && key < hi[h];
      });
    }

    common::cp_async_wait<1>();  // V of this tile has landed; K of the next may be in flight
    __syncthreads();
    // O += P V: the score fragments of key tiles 2kk, 2kk + 1 are the A fragment of keys 16kk..
    common::warp_pv_mma<Element, T::kKeys, T::kDvPart>(acc, s, v_s, T::kLdV, col0);
  }
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
    Element* orow = o + token * p.o_token_stride + head * p.o_head_stride + col0;
#pragma unroll
    for (int n = 0; n < T::kDvPart / 8; ++n)
      *reinterpret_cast<std::uint32_t*>(orow + n * 8 + 2 * pair) =
          mma::pack2<Element>(acc[n][2 * h] * inv_sum, acc[n][2 * h + 1] * inv_sum);
    if (pair == 0 && col0 == 0)
      p.lse[head * p.lse_head_stride + token * p.lse_token_stride] = row_lse(row_max[h], row_sum[h]);
  }
}

}  // namespace fsa::cuda::flash

namespace fsa::cuda {

namespace flash {

// Either forward kernel (Traits: its rows per CTA, threads and shared memory), one CTA per (query
// tile of Traits::kRows rows of one sequence, kv head).
template <class Traits>
Status launch_forward_tiles(void (*kernel)(FlashParams), const char* name, const FlashParams& p,
                            cudaStream_t stream) {
  FSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(Traits::kSmemBytes)));
  const long long tiles = p.tokens * p.group / Traits::kRows + p.num_seqs;
  if (tiles > 0x7fffffffLL)
    return FSA_ERROR(StatusCode::kNotImplemented, "q: " + std::to_string(tiles) + " query tiles of " +
                                                      std::to_string(Traits::kRows) + " rows exceed the grid limit");
  kernel<<<dim3(static_cast<unsigned>(tiles), p.heads_kv), Traits::kThreads, Traits::kSmemBytes, stream>>>(p);
  FSA_CHECK_LAUNCH(name, stream);
  return Status::ok();
}

}  // namespace flash

template <class Element, int kDqk, int kDv>
Status launch_flash_forward(const FlashParams& p, cudaStream_t stream) {
  if (p.tokens == 0 || p.num_seqs == 0) return Status::ok();
  if (p.arch == common::KernelArch::kSm90a)
    return flash::launch_forward_tiles<flash::FwdSm90Traits<Element, kDqk, kDv>>(
        flash::flash_fwd_sm90_kernel<Element, kDqk, kDv>, "flash_fwd_sm90_kernel", p, stream);
  return flash::launch_forward_tiles<flash::FwdTraits<Element, kDqk, kDv>>(
      flash::flash_fwd_kernel<Element, kDqk, kDv>, "flash_fwd_kernel", p, stream);
}

}  // namespace fsa::cuda
