// Forward of compressed attention: flash attention over the compressed keys with the rule
// i*s + l - 1 <= t (spec section 3).
//
// One CTA per (tile of 64 query rows of one sequence, kv head g). Rows are packed tokens x G heads
// (row r of the sequence: token r / G, head g*G + r % G), so every compressed K/V tile is loaded
// once for all heads of the group. The CTA walks the keys visible to its last token in tiles of 64:
// S = Q K^T on tensor cores (mma.sync, 16 rows per warp, scores in registers), the visibility mask
// per row, an online softmax in registers, O += P V. Rows that see nothing end with o = 0 and
// lse = -inf. For Dv = 256 the output columns are split over two warp groups (each recomputes S)
// so that scores and outputs fit in registers.
#pragma once

#include <string>

#include "cuda/runtime.hpp"
#include "kernels/cmp_attn/cmp_attn_common.cuh"
#include "kernels/cmp_attn/cmp_attn_params.hpp"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"

namespace fsa::cuda::cmp {

template <class Element, int kDqk_, int kDv_>
struct FwdTraits {
  static constexpr int kDqk = kDqk_;
  static constexpr int kDv = kDv_;
  static_assert(kDqk % 16 == 0 && kDv % 16 == 0, "head dims in steps of 16 for mma.m16n8k16");
  static constexpr int kRows = 64;  // query rows per CTA: 4 warps x 16
  static constexpr int kKeys = 64;  // compressed keys per tile
  static constexpr int kColSplit = kDv > 128 ? 2 : 1;
  static constexpr int kDvPart = kDv / kColSplit;  // output columns per warp
  static_assert(kDvPart % 16 == 0, "output tiles go in pairs");
  static constexpr int kThreads = 128 * kColSplit;
  // Fully unrolled, Dqk = 192/256 kept too many K fragments live (as in the selected attention).
  static constexpr int kQkUnroll = kDqk > 128 ? 2 : kDqk / 16;
  static constexpr int kLdQk = kDqk + common::kPadHalf;
  static constexpr int kLdV = kDv + common::kPadHalf;
  static constexpr std::size_t kQOffset = 0;
  static constexpr std::size_t kKOffset = kQOffset + common::align_up(sizeof(Element) * kRows * kLdQk);
  static constexpr std::size_t kVOffset = kKOffset + common::align_up(sizeof(Element) * kKeys * kLdQk);
  static constexpr std::size_t kSmemBytes = kVOffset + common::align_up(sizeof(Element) * kKeys * kLdV);
};

template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(FwdTraits<Element, kDqk, kDv>::kThreads)
    cmp_fwd_kernel(const __grid_constant__ CmpAttnParams p) {
  using T = FwdTraits<Element, kDqk, kDv>;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ long long row_q_offset[T::kRows];  // -1: past the sequence
  __shared__ int row_visible[T::kRows];         // compressed keys the row's token sees
  __shared__ int tile_visible;

  const int g = blockIdx.y, G = p.group;
  const SeqTile tile = find_seq_tile(p.cu_seqlens, p.cu_stride, p.num_seqs, G, T::kRows, blockIdx.x);
  if (!tile.valid) return;
  const long long seq_start = p.cu_seqlens[tile.seq * p.cu_stride];
  const long long seq_len = p.cu_seqlens[(tile.seq + 1) * p.cu_stride] - seq_start;
  const long long cmp_start = p.cu_cmp[tile.seq * p.cu_cmp_stride];
  auto* q_s = reinterpret_cast<Element*>(smem + T::kQOffset);
  auto* k_s = reinterpret_cast<Element*>(smem + T::kKOffset);
  auto* v_s = reinterpret_cast<Element*>(smem + T::kVOffset);

  if (threadIdx.x == 0) tile_visible = 0;
  __syncthreads();
  if (threadIdx.x < T::kRows) {
    const long long row = tile.first + threadIdx.x;
    const long long t = row / G;
    long long offset = -1;
    int visible = 0;
    if (t < seq_len) {
      offset = (seq_start + t) * p.q_token_stride + (g * G + row % G) * p.q_head_stride;
      visible = visible_count(t, p.cmp_len, p.cmp_stride);
      atomicMax(&tile_visible, visible);
    }
    row_q_offset[threadIdx.x] = offset;
    row_visible[threadIdx.x] = visible;
  }
  __syncthreads();
  const auto* q = static_cast<const Element*>(p.q);
  common::copy_tile_async<T::kRows, kDqk, T::kThreads>(q_s, T::kLdQk, [&](int r) -> const Element* {
    return row_q_offset[r] >= 0 ? q + row_q_offset[r] : nullptr;
  });
  common::cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
  const int row0 = (warp % 4) * 16, col0 = (warp / 4) * T::kDvPart;
  const int visible[2] = {row_visible[row0 + group], row_visible[row0 + group + 8]};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  float acc[T::kDvPart / 8][4];
  common::zero_acc<T::kDvPart>(acc);
  const auto* k = static_cast<const Element*>(p.k) + g * p.k_head_stride;
  const auto* v = static_cast<const Element*>(p.v) + g * p.v_head_stride;
  const int keys_total = tile_visible;

  for (int key0 = 0; key0 < keys_total; key0 += T::kKeys) {
    __syncthreads();  // the previous tile's K and V are no longer read
    common::copy_tile_async<T::kKeys, kDqk, T::kThreads>(k_s, T::kLdQk, [&](int r) -> const Element* {
      return key0 + r < keys_total ? k + (cmp_start + key0 + r) * p.k_row_stride : nullptr;
    });
    common::cp_async_commit();
    common::copy_tile_async<T::kKeys, kDv, T::kThreads>(v_s, T::kLdV, [&](int r) -> const Element* {
      return key0 + r < keys_total ? v + (cmp_start + key0 + r) * p.v_row_stride : nullptr;
    });
    common::cp_async_commit();
    common::cp_async_wait<1>();  // Q and K have landed; V may still be in flight
    __syncthreads();

    float s[T::kKeys / 8][4];
    common::zero_acc<T::kKeys>(s);
    common::warp_tile_mma<Element, kDqk, T::kKeys, false, false, T::kQkUnroll>(s, q_s, T::kLdQk, row0, k_s,
                                                                                T::kLdQk, 0);
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < T::kKeys / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + j * 8 + pair * 2 + (e & 1);
        s[j][e] = key < visible[e / 2] ? s[j][e] * p.scale : -INFINITY;
        tile_max[e / 2] = fmaxf(tile_max[e / 2], s[j][e]);
      }
    float correction[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
      const float new_max = fmaxf(row_max[h], tile_max[h]);
      // A row that has seen no key yet keeps max -inf: nothing to rescale (its sums are 0).
      correction[h] = new_max == -INFINITY ? 1.0f : __expf(row_max[h] - new_max);
      row_max[h] = new_max;
    }
    float tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < T::kKeys / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = s[j][e] == -INFINITY ? 0.0f : __expf(s[j][e] - row_max[e / 2]);
        tile_sum[e / 2] += s[j][e];
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tile_sum[h] += __shfl_xor_sync(0xffffffffu, tile_sum[h], 1);
      tile_sum[h] += __shfl_xor_sync(0xffffffffu, tile_sum[h], 2);
      row_sum[h] = row_sum[h] * correction[h] + tile_sum[h];
    }
#pragma unroll
    for (int n = 0; n < T::kDvPart / 8; ++n) {
      acc[n][0] *= correction[0];
      acc[n][1] *= correction[0];
      acc[n][2] *= correction[1];
      acc[n][3] *= correction[1];
    }

    common::cp_async_wait<0>();
    __syncthreads();  // V has landed for every thread's copies
    // O += P V: the score fragments of key tiles 2kk, 2kk + 1 are the A fragment of keys 16kk..
#pragma unroll
    for (int kk = 0; kk < T::kKeys / 16; ++kk) {
      std::uint32_t a[4];
      common::c_to_a<Element>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int n = 0; n < T::kDvPart / 8; n += 2) {
        std::uint32_t b[4];
        mma::ldmatrix_x4_trans(b, v_s + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * T::kLdV + col0 + n * 8 +
                                      (lane / 16) * 8);
        mma::mma_16816<Element>(acc[n], a, b[0], b[1]);
        mma::mma_16816<Element>(acc[n + 1], a, b[2], b[3]);
      }
    }
  }
  common::cp_async_wait<0>();  // the Q copies, when no key tile ran

  auto* o = static_cast<Element*>(p.o);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = row0 + group + 8 * h;
    const long long row = tile.first + r;
    if (row_q_offset[r] < 0) continue;
    const long long token = seq_start + row / G;
    const int head = g * G + static_cast<int>(row % G);
    const float inv_sum = row_sum[h] > 0.0f ? 1.0f / row_sum[h] : 0.0f;
    Element* orow = o + token * p.o_token_stride + head * p.o_head_stride + col0;
#pragma unroll
    for (int n = 0; n < T::kDvPart / 8; ++n)
      *reinterpret_cast<std::uint32_t*>(orow + n * 8 + 2 * pair) =
          mma::pack2<Element>(acc[n][2 * h] * inv_sum, acc[n][2 * h + 1] * inv_sum);
    if (pair == 0 && col0 == 0)
      p.lse[head * p.lse_head_stride + token * p.lse_token_stride] =
          row_sum[h] > 0.0f ? row_max[h] + logf(row_sum[h]) : -INFINITY;
  }
}

}  // namespace fsa::cuda::cmp

namespace fsa::cuda {

template <class Element, int kDqk, int kDv>
Status launch_cmp_attn_forward(const CmpAttnParams& p, cudaStream_t stream) {
  using T = cmp::FwdTraits<Element, kDqk, kDv>;
  if (p.tokens == 0 || p.num_seqs == 0) return Status::ok();
  auto* kernel = cmp::cmp_fwd_kernel<Element, kDqk, kDv>;
  FSA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(T::kSmemBytes)));
  const long long tiles = p.tokens * p.group / T::kRows + p.num_seqs;
  if (tiles > 0x7fffffffLL)
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "cmp_attn_forward: " + std::to_string(tiles) + " query tiles exceed the grid limit");
  kernel<<<dim3(static_cast<unsigned>(tiles), p.heads_kv), T::kThreads, T::kSmemBytes, stream>>>(p);
  FSA_CHECK_LAUNCH("cmp_fwd_kernel", stream);
  return Status::ok();
}

}  // namespace fsa::cuda
