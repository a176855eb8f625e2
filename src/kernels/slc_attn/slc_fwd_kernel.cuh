// Forward of selected attention in the FSA (KV-outer) loop order.
//
// 1. kv_outer: one CTA per work unit (up to kRowsPerUnit rows of one (kv head, key block) list).
//    It loads the block's K and V once into shared memory, then for each chunk of 64 gathered query
//    rows (tokens x heads of the group) computes S = Q K^T with mma.sync (16 rows per warp, scores in
//    registers), the softmax of each row over the block's keys (causal and sequence-end masks) in
//    registers, O = P V, and writes the row's normalized partial output and natural-log lse into
//    the pair's slot.
// 2. merge: one warp per (token, head) combines the row's partials by log-sum-exp into o and lse;
//    a row without pairs gets o = 0 and lse = -inf. With the dense/sparse split, the tile kernel
//    (slc_tile_kernel.cuh) first writes each row's dense part there, and the merge adds it in.
// Every row is computed independently of the others in its chunk, so results do not depend on the
// (atomic, run-dependent) order of the lists.
#pragma once

#include "cuda/runtime.hpp"
#include "kernels/common/dispatch_table.hpp"
#include "kernels/common/mma_sm80.cuh"
#include "kernels/common/warp_tile_mma.cuh"
#include "kernels/slc_attn/slc_common.cuh"
#include "kernels/slc_attn/slc_params.hpp"
#include "kernels/slc_attn/slc_qo_sm90_kernel.cuh"
#include "kernels/slc_attn/slc_tile_kernel.cuh"

namespace fsa::cuda::slc {

constexpr int kFwdThreads = 128;  // 4 warps x 16 rows = one chunk of 64 rows
constexpr int kFwdChunkRows = 64;

// Shared memory of the KV-outer kernel: the block's K and V, two chunks of gathered query rows
// and the unit's row table. Scores, probabilities and outputs stay in registers (mma.sync
// fragments): ~71 KB for D = 128, B = 64, three CTAs (12 warps) per SM.
template <class Element, int kDqk, int kDv, int kB>
struct FwdSmem {
  static_assert(kDqk % 16 == 0 && kDv % 16 == 0 && kB % 16 == 0, "tiles of 16 for mma.m16n8k16");
  static constexpr int kLdQk = kDqk + kPadHalf;
  static constexpr int kLdV = kDv + kPadHalf;
  static constexpr std::size_t kKOffset = 0;
  static constexpr std::size_t kVOffset = kKOffset + align_up(sizeof(Element) * kB * kLdQk);
  static constexpr std::size_t kQOffset = kVOffset + align_up(sizeof(Element) * kB * kLdV);
  // Two buffers of gathered query rows: the next chunk's rows load while this chunk computes.
  static constexpr std::size_t kQBytes = align_up(sizeof(Element) * kFwdChunkRows * kLdQk);
  // The unit's row table, read from the plan once at the start (a chunk's copies then depend on
  // no global load): per row its global token (-1 past the unit's rows), query head and slot.
  static constexpr int kTableRows = SlcPlanShape::kRowsPerUnit;
  static_assert(kTableRows % kFwdChunkRows == 0, "a unit is whole chunks");
  static constexpr std::size_t kRowsOffset = kQOffset + 2 * kQBytes;
  static constexpr std::size_t kBytes = kRowsOffset + align_up(sizeof(int) * 3 * kTableRows);
};

template <class Element, int kDqk, int kDv, int kB>
__global__ void __launch_bounds__(kFwdThreads) slc_fwd_kv_outer_kernel(const __grid_constant__ SlcForwardParams p) {
  using Smem = FwdSmem<Element, kDqk, kDv, kB>;
  constexpr int kKeyTiles = kB / 8, kOutTiles = kDv / 8;
  constexpr int kOutPasses = kB / 2 + kDv / 2 > 160 ? 2 : 1;  // score + output floats per thread
  constexpr int kPassTiles = kOutTiles / kOutPasses;
  static_assert(kPassTiles % 2 == 0, "output tiles go in pairs (one ldmatrix.x4)");
  // Fully unrolled, Dqk = 192/256 kept too many K fragments live and spilled.
  constexpr int kQkUnroll = kDqk > 128 ? 2 : kDqk / 16;
  extern __shared__ __align__(128) unsigned char smem[];
  UnitWork w;
  if (!find_unit<true>(p.plan, p.in, blockIdx.x, &w)) return;
  const int G = p.plan.shape.group, width = p.plan.shape.width;
  auto* k_s = reinterpret_cast<Element*>(smem + Smem::kKOffset);
  auto* v_s = reinterpret_cast<Element*>(smem + Smem::kVOffset);

  // The block's keys and values (rows at a constant stride), once for all rows of the unit.
  issue_strided_rows<Element, kDqk, kFwdThreads>(
      k_s, Smem::kLdQk, kB, w.keys,
      block_rows<Element>(p.in, w, kB, p.in.k, p.in.k_token_stride, p.in.k_head_stride, p.in.pages.k),
      p.in.k_token_stride);
  issue_strided_rows<Element, kDv, kFwdThreads>(
      v_s, Smem::kLdV, kB, w.keys,
      block_rows<Element>(p.in, w, kB, p.in.v, p.in.v_token_stride, p.in.v_head_stride, p.in.pages.v),
      p.in.v_token_stride);
  cp_async_commit();

  // The unit's rows r = row_begin + i: entry r / G of the list, head g * G + r % G.
  int* row_token = reinterpret_cast<int*>(smem + Smem::kRowsOffset);
  int* row_head = row_token + Smem::kTableRows;
  int* row_slot = row_head + Smem::kTableRows;
  for (int i = threadIdx.x; i < Smem::kTableRows; i += kFwdThreads) {
    const int r = w.row_begin + i;
    int token = -1, slot = 0;
    if (r < w.row_end) {
      const int entry = w.pair_base + r / G;
      token = p.plan.pair_token[entry];
      slot = p.plan.pair_slot[entry];
    }
    row_token[i] = token;
    row_head[i] = w.kv_head * G + r % G;
    row_slot[i] = slot;
  }
  __syncthreads();

  // Issues chunk c's query rows (table rows c * 64 ..) into buffer `buffer` as one cp.async
  // group; padding rows are zero-filled.
  const auto* q = static_cast<const Element*>(p.in.q);
  auto stage_chunk = [&](int c, int buffer) {
    constexpr int kVectors = kDqk * static_cast<int>(sizeof(Element)) / 16;
    auto* dst = reinterpret_cast<Element*>(smem + Smem::kQOffset + buffer * Smem::kQBytes);
    for (int idx = threadIdx.x; idx < kFwdChunkRows * kVectors; idx += kFwdThreads) {
      const int row = idx / kVectors, vec = idx % kVectors;
      const int i = c * kFwdChunkRows + row;
      const long long token = row_token[i];
      uint4* to = reinterpret_cast<uint4*>(dst + row * Smem::kLdQk) + vec;
      if (token >= 0) {
        cp_async_16(to, reinterpret_cast<const uint4*>(q + token * p.in.q_token_stride +
                                                       row_head[i] * p.in.q_head_stride) + vec);
      } else {
        *to = make_uint4(0, 0, 0, 0);
      }
    }
    cp_async_commit();
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, pair = lane % 4;
  const long long first_key = static_cast<long long>(w.block) * kB;
  const int unit_rows = w.row_end - w.row_begin;  // >= 1
  stage_chunk(0, 0);
  for (int c = 0, buffer = 0; c * kFwdChunkRows < unit_rows; ++c, buffer ^= 1) {
    // The next chunk's rows go to the other buffer, free since the end of the previous iteration.
    if ((c + 1) * kFwdChunkRows < unit_rows) stage_chunk(c + 1, buffer ^ 1);
    else cp_async_commit();  // an empty group keeps "all but the newest" meaning this chunk
    cp_async_wait<1>();      // K, V and this chunk's query rows
    __syncthreads();
    const auto* q_s = reinterpret_cast<const Element*>(smem + Smem::kQOffset + buffer * Smem::kQBytes);
    const int* chunk_token = row_token + c * kFwdChunkRows;
    const int* chunk_head = row_head + c * kFwdChunkRows;
    const int* chunk_slot = row_slot + c * kFwdChunkRows;

    // S = Q K^T for this warp's 16 rows and all kB keys, in registers.
    const int row0 = warp * 16;
    float s[kKeyTiles][4];
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll kQkUnroll
    for (int k0 = 0; k0 < kDqk; k0 += 16) {
      std::uint32_t a[4];
      mma::ldmatrix_x4(a, q_s + (row0 + lane % 16) * Smem::kLdQk + k0 + (lane / 16) * 8);
#pragma unroll
      for (int j = 0; j < kKeyTiles; j += 2) {
        std::uint32_t b[4];
        mma::ldmatrix_x4(b, k_s + (j * 8 + lane % 8 + (lane / 16) * 8) * Smem::kLdQk + k0 + ((lane / 8) % 2) * 8);
        mma::mma_16816<Element>(s[j], a, b[0], b[1]);
        mma::mma_16816<Element>(s[j + 1], a, b[2], b[3]);
      }
    }

    // Softmax of rows group (c0, c1) and group + 8 (c2, c3) over the block's keys; the four threads
    // of a quad share a row.
    // Position of each row's token in its sequence (-1 for padding: masks every key).
    int t_local[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int token = chunk_token[row0 + group + 8 * h];
      t_local[h] = token >= 0 ? static_cast<int>(token - w.seq_start) : -1;
    }
    float row_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = j * 8 + pair * 2 + (e & 1);
        const bool valid = col < w.keys && first_key + col <= t_local[e / 2];
        s[j][e] = valid ? s[j][e] * p.in.scale : -INFINITY;
        row_max[e / 2] = fmaxf(row_max[e / 2], s[j][e]);
      }
    float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_max[h] = fmaxf(row_max[h], __shfl_xor_sync(0xffffffffu, row_max[h], 1));
      row_max[h] = fmaxf(row_max[h], __shfl_xor_sync(0xffffffffu, row_max[h], 2));
    }
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = s[j][e] == -INFINITY ? 0.0f : __expf(s[j][e] - row_max[e / 2]);
        row_sum[e / 2] += s[j][e];
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 1);
      row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 2);
    }
    const float inv_sum[2] = {row_sum[0] > 0.0f ? 1.0f / row_sum[0] : 0.0f,
                              row_sum[1] > 0.0f ? 1.0f / row_sum[1] : 0.0f};

    // O = P V with the normalised P taken straight from the score fragments: the accumulator of
    // key tiles 2kk and 2kk + 1 is exactly the A fragment of keys 16kk .. 16kk + 15. Output columns
    // go in kOutPasses passes when scores and outputs together would not fit in registers
    // (Dv = 256 with B = 128 spilled 100 bytes in one pass).
    auto* o_part = static_cast<Element*>(p.part.o);
    long long slot_row[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + group + 8 * h;
      slot_row[h] = chunk_token[row] < 0
                        ? -1
                        : (static_cast<long long>(chunk_token[row]) * p.in.heads_q + chunk_head[row]) * width +
                              chunk_slot[row];
    }
#pragma unroll
    for (int pass = 0; pass < kOutPasses; ++pass) {
      float o[kPassTiles][4];
#pragma unroll
      for (int n = 0; n < kPassTiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
      common::warp_pv_mma<Element, kB, kPassTiles * 8>(o, s, v_s, Smem::kLdV, pass * kPassTiles * 8, inv_sum[0],
                                                       inv_sum[1]);
      // The normalised partial into the pair's slot.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (slot_row[h] < 0) continue;
        Element* dst = o_part + slot_row[h] * kDv + pass * kPassTiles * 8 + pair * 2;
#pragma unroll
        for (int n = 0; n < kPassTiles; ++n)
          *reinterpret_cast<std::uint32_t*>(dst + n * 8) = mma::pack2<Element>(o[n][2 * h], o[n][2 * h + 1]);
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h)
      if (slot_row[h] >= 0 && pair == 0)
        p.part.lse[slot_row[h]] = row_sum[h] > 0.0f ? row_max[h] + logf(row_sum[h]) : -INFINITY;
    __syncthreads();  // every warp is done with this buffer before the next iteration restages it
  }
}

// One warp per (token, head): log-sum-exp merge of the row's partials into o and lse; a row
// without pairs gets o = 0 and lse = -inf. With kWithDense (the split), a row whose token sent
// entries to the tile kernel (dense_slots != 0) finds its dense part in o and lse, merged in as
// one more partial; such a row without sparse pairs is left as it is.
// Each lane owns kDv / 32 contiguous columns (8 or 16-byte vectors); the lse of the row's slots
// are loaded at once, one lane per slot.
template <class Element, int kDv, bool kWithDense>
__global__ void __launch_bounds__(kFwdThreads) slc_fwd_merge_kernel(const __grid_constant__ SlcForwardParams p) {
  constexpr int kPerLane = kDv / 32;
  const long long row = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const long long n = p.plan.shape.tokens;
  const int hq = p.in.heads_q, width = p.plan.shape.width, G = p.plan.shape.group;
  if (row >= n * hq) return;
  const long long t = row / hq;
  const int h = static_cast<int>(row % hq);
  const std::uint64_t mask = p.plan.slot_mask[(h / G) * n + t];
  auto* o = static_cast<Element*>(p.o) + t * p.o_token_stride + h * p.o_head_stride + lane * kPerLane;
  float* lse_out = p.lse + h * p.lse_head_stride + t * p.lse_token_stride;
  float acc[kPerLane] = {};
  float base_lse = -INFINITY;
  // A row the tile kernel wrote whole (dense part, no sparse pairs) is left as it is. Its lanes
  // still run the (empty) merge and skip only the stores: an early return here, before the
  // shuffles, made ptxas call its generic shuffle routine (a stack frame and a spill) at Dv = 256.
  bool leave_as_is = false;
  if constexpr (kWithDense) {
    // Tokens outside the batch have no dense_slots entry (the tile plan covers the batch only).
    const bool in_batch = t >= p.in.cu_seqlens[0] && t < p.in.cu_seqlens[p.plan.shape.num_seqs * p.in.cu_stride];
    const bool has_dense = in_batch && p.plan.dense_slots[(h / G) * n + t] != 0;
    leave_as_is = has_dense && mask == 0;
    if (has_dense && !leave_as_is) {
      base_lse = *lse_out;
      if (base_lse != -INFINITY) load_vector<Element, kPerLane>(o, acc);
    }
  }
  const float* lse_part = p.part.lse + row * width;
  const float part0 = (mask >> lane) & 1u ? lse_part[lane] : -INFINITY;
  const float part1 = lane + 32 < width && ((mask >> (lane + 32)) & 1u) ? lse_part[lane + 32] : -INFINITY;
  float row_max = fmaxf(base_lse, fmaxf(part0, part1));
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, offset));
  float total = 0.0f;
  if (row_max != -INFINITY) {
    const float w0 = part0 == -INFINITY ? 0.0f : __expf(part0 - row_max);
    const float w1 = part1 == -INFINITY ? 0.0f : __expf(part1 - row_max);
    total = w0 + w1;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
    const float base_weight = base_lse == -INFINITY ? 0.0f : __expf(base_lse - row_max);
    total += base_weight;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) acc[c] *= base_weight;
    const auto* o_part = static_cast<const Element*>(p.part.o) + row * width * kDv + lane * kPerLane;
    for (std::uint64_t m = mask; m != 0; m &= m - 1) {
      const int slot = __ffsll(static_cast<long long>(m)) - 1;
      const float weight = __shfl_sync(0xffffffffu, slot < 32 ? w0 : w1, slot % 32);
      float values[kPerLane];
      load_vector<Element, kPerLane>(o_part + slot * kDv, values);
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) acc[c] += weight * values[c];
    }
  }
  if (leave_as_is) return;
  const float inv_total = total > 0.0f ? 1.0f / total : 0.0f;
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) acc[c] *= inv_total;
  store_vector<Element, kPerLane>(o, acc);
  if (lane == 0) *lse_out = total > 0.0f ? row_max + logf(total) : -INFINITY;
}

template <class Element, int kDqk, int kDv, int kB>
Status launch_kv_outer(const SlcForwardParams& p, cudaStream_t stream) {
  constexpr std::size_t kSmem = FwdSmem<Element, kDqk, kDv, kB>::kBytes;
  int device = 0, smem_limit = 0;
  FSA_CUDA_CHECK(cudaGetDevice(&device));
  FSA_CUDA_CHECK(cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (kSmem > static_cast<std::size_t>(smem_limit))
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "slc_attn_forward: head dims " + std::to_string(kDqk) + "/" + std::to_string(kDv) +
                         " with block size " + std::to_string(kB) + " need " + std::to_string(kSmem) +
                         " bytes of shared memory, the device offers " + std::to_string(smem_limit));
  auto* kernel = slc_fwd_kv_outer_kernel<Element, kDqk, kDv, kB>;
  FSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem)));
  kernel<<<static_cast<unsigned>(p.plan.shape.max_units()), kFwdThreads, kSmem, stream>>>(p);
  FSA_CHECK_LAUNCH("slc_fwd_kv_outer_kernel", stream);
  return Status::ok();
}

// The kernels of one path, with the block size as a template argument (score fragments are sized
// at compile time):
//   kKvOuter:    KV-outer partials for every pair, then the merge kernel;
//   kSplit:      KV-outer partials for the sparse pairs, the tile kernel (dense blocks, into o and
//                lse), then the merge kernel with o and lse as one more partial;
//   kQueryOuter: no plan and no partials: the Hopper query-outer kernel where it serves the shape,
//                else the tile kernel in query-outer mode.
template <class Element, int kDqk, int kDv, int kB>
Status launch_path(const SlcForwardParams& p, cudaStream_t stream) {
  if (p.path == SlcKernelPath::kQueryOuter) {
    if constexpr (qo_sm90_supported(kB, kDqk, kDv)) {
      if (p.arch == common::KernelArch::kSm90a)
        return launch_qo_sm90<Element, kDqk, kQoSm90Tokens>(p, stream);
    }
    return launch_tile<Element, kDqk, kDv, kB, true>(p, stream);
  }
  if (p.plan.shape.max_units() > 0) FSA_RETURN_IF_ERROR((launch_kv_outer<Element, kDqk, kDv, kB>(p, stream)));
  const bool split = p.path == SlcKernelPath::kSplit;
  if (split) FSA_RETURN_IF_ERROR((launch_tile<Element, kDqk, kDv, kB, false>(p, stream)));
  const long long rows = p.plan.shape.tokens * p.in.heads_q;
  if (rows > 0) {
    const auto ctas = static_cast<unsigned>((rows * 32 + kFwdThreads - 1) / kFwdThreads);
    if (split) {
      slc_fwd_merge_kernel<Element, kDv, true><<<ctas, kFwdThreads, 0, stream>>>(p);
    } else {
      slc_fwd_merge_kernel<Element, kDv, false><<<ctas, kFwdThreads, 0, stream>>>(p);
    }
    FSA_CHECK_LAUNCH("slc_fwd_merge_kernel", stream);
  }
  return Status::ok();
}

template <class Element, int kDqk, int kDv>
Status launch_slc_forward(const SlcForwardParams& p, cudaStream_t stream) {
  return common::dispatch_block_size("slc_attn_forward", p.plan.shape.block_size,
                                     [&]<int kB>() { return launch_path<Element, kDqk, kDv, kB>(p, stream); });
}

}  // namespace fsa::cuda::slc
