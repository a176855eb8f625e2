// Query-outer (NSA-order) selected attention on Hopper (sm90a), for key blocks of 64 and
// Dqk = Dv in {64, 128}: one warpgroup per (token, kv head, 16 query heads) walks the token's
// selected blocks, computing the transposed products so that the 64 keys of a block are the wgmma's
// M and the 16 heads its N:
//   S^T = K Q^T        (A = the block's K, 64 x D, and B = the 16 Q rows, both K-major in shared memory)
//   O^T += V^T P^T     (A = V read MN-major, the transpose wgmma does for 16-bit types; B = P, 16 x 64,
//                       written to shared memory by the softmax)
// Why: the token's G = 16 heads are 16 MMA rows, a quarter of a wgmma's M = 64. Transposed, a block
// is exactly one M tile, a head a column, and the whole block's product is kD / 16 + kD / 16
// instructions a warpgroup with operands that never pass through the register file. The mma.sync
// query-outer kernel (slc_tile_kernel, which other GPUs, block sizes and head dims still run) split
// each block's keys over warps and paid a softmax per 16 keys in ldmatrix- and issue-bound loops
// (docs/kernels/slc_attn.md, "Pipeline" 5).
// The softmax runs down the columns: warp w holds keys 16w..16w+15 of every head, so a head's block
// maximum is a shuffle reduction plus one exchange through shared memory per block; each lane keeps
// partial row sums of its own keys, added across the warpgroup once at the end. K / V blocks are
// copied with cp.async into kStages stages (all 128 threads), the next one issued while this one
// computes. Three barriers a block: copies landed (and the previous block done), block maxima, P.
#pragma once

#include <cstdint>

#include "cuda/runtime.hpp"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"
#include "kernels/common/wgmma_sm90.cuh"
#include "kernels/slc_attn/slc_common.cuh"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda::slc {

template <int kD_, int kStages_>
struct QoSm90Traits {
  static constexpr int kD = kD_;
  static constexpr int kStages = kStages_;
  static constexpr int kKeys = 64;   // one key block: the wgmma's M
  static constexpr int kHeads = 16;  // query heads of one CTA: the wgmma's N
  static constexpr int kThreads = 128;
  static_assert(kD % wgmma::kPanelCols == 0, "whole 64-column panels");
  static constexpr std::size_t kQBytes = std::size_t{2} * kHeads * kD;
  static constexpr std::size_t kKvBytes = std::size_t{2} * kKeys * kD;  // K or V of one block
  static constexpr std::size_t kPBytes = std::size_t{2} * kHeads * kKeys;
  static constexpr std::size_t kKOffset = kQBytes;  // multiples of 1024: every tile starts a swizzle period
  static constexpr std::size_t kVOffset = kKOffset + kStages * kKvBytes;
  static constexpr std::size_t kPOffset = kVOffset + kStages * kKvBytes;
  static constexpr std::size_t kSmemBytes = kPOffset + kPBytes + 1024;  // + the alignment done by hand
  static constexpr std::uint32_t kGroupBytes = 8 * wgmma::kPanelRowBytes;    // 8-row groups (SBO)
  static constexpr std::uint32_t kPanelBytes = kKeys * wgmma::kPanelRowBytes;  // one 64-column panel of K / V
  // CTAs a SM the shared memory allows (the registers allow more: ~40 a thread).
  static constexpr int kMinBlocks = kSmemBytes <= 75 * 1024 ? 3 : 2;
};

template <class Element, int kD, int kStages>
__global__ void __launch_bounds__(128, QoSm90Traits<kD, kStages>::kMinBlocks)
    slc_qo_sm90_kernel(const __grid_constant__ SlcForwardParams p) {
#if FSA_HAS_WGMMA
  using T = QoSm90Traits<kD, kStages>;
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ int blocks_s[SlcPlanShape::kMaxWidth];
  __shared__ int ballots[2];
  __shared__ float exchange[4][T::kHeads];  // per warp and head: the block maximum, at the end the row sum
  unsigned char* smem = wgmma::swizzle_aligned(smem_raw);
  auto* q_s = reinterpret_cast<Element*>(smem);
  auto* k_s = reinterpret_cast<Element*>(smem + T::kKOffset);
  auto* v_s = reinterpret_cast<Element*>(smem + T::kVOffset);
  auto* p_s = smem + T::kPOffset;

  const SlcPlanShape& shape = p.plan.shape;
  const int G = shape.group, width = shape.width, num_seqs = shape.num_seqs;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
  const int chunks = (G + T::kHeads - 1) / T::kHeads;
  const long long item = blockIdx.x / chunks;
  const int chunk = static_cast<int>(blockIdx.x % chunks);
  const int kv_head = static_cast<int>(item / shape.tokens);
  const long long t0 = item - static_cast<long long>(kv_head) * shape.tokens;
  const int heads = min(T::kHeads, G - chunk * T::kHeads);  // columns past it are padding
  const int head0 = kv_head * G + chunk * T::kHeads;

  auto* o = static_cast<Element*>(p.o) + t0 * p.o_token_stride + head0 * p.o_head_stride;
  float* lse = p.lse + t0 * p.lse_token_stride + head0 * p.lse_head_stride;
  // o = 0 and lse = -inf for a row that attends to nothing.
  auto write_empty = [&]() {
    for (int i = threadIdx.x; i < heads * kD; i += T::kThreads)
      o[(i / kD) * p.o_head_stride + i % kD] = Convert<Element>::from_float(0.0f);
    if (threadIdx.x < heads) lse[threadIdx.x * p.lse_head_stride] = -INFINITY;
  };
  const long long batch_begin = p.in.cu_seqlens[0], batch_end = p.in.cu_seqlens[num_seqs * p.in.cu_stride];
  if (t0 < batch_begin || t0 >= batch_end) {  // a token outside the batch
    write_empty();
    return;
  }
  const int b = upper_index(p.in.cu_seqlens, p.in.cu_stride, num_seqs, t0);
  const long long seq_start = p.in.cu_seqlens[b * p.in.cu_stride];
  const int seq_len = static_cast<int>(p.in.cu_seqlens[(b + 1) * p.in.cu_stride] - seq_start);
  const int t_local = static_cast<int>(t0 - seq_start);
  const int own_block = t_local / T::kKeys;

  // The row's valid first occurrences (in [0, own_block]), compacted in row order by two ballots.
  {
    std::int32_t j = -1;
    bool keep = false;
    unsigned ballot = 0;
    if (threadIdx.x < 64) {
      const int k = threadIdx.x;
      if (k < width) {
        const std::int32_t* row = p.in.topk + kv_head * p.in.topk_head_stride + t0 * p.in.topk_token_stride;
        j = row[k];
        keep = j >= 0 && j <= own_block;
        for (int earlier = 0; keep && earlier < k; ++earlier) keep = row[earlier] != j;
      }
      ballot = __ballot_sync(0xffffffffu, keep);
      if (lane == 0) ballots[warp] = __popc(ballot);
    }
    __syncthreads();
    if (keep) blocks_s[(warp == 1 ? ballots[0] : 0) + __popc(ballot & ((1u << lane) - 1u))] = j;
  }
  const int list_len = ballots[0] + ballots[1];
  if (list_len == 0) {
    write_empty();
    return;
  }
  __syncthreads();  // blocks_s

  const auto* q = static_cast<const Element*>(p.in.q) + t0 * p.in.q_token_stride;
  wgmma::copy_tile_swizzled_async<T::kHeads, kD, T::kThreads>(q_s, [&](int r) -> const Element* {
    return r < heads ? q + (head0 + r) * p.in.q_head_stride : nullptr;
  });
  const auto* k_global = static_cast<const Element*>(p.in.k) + kv_head * p.in.k_head_stride;
  const auto* v_global = static_cast<const Element*>(p.in.v) + kv_head * p.in.v_head_stride;
  auto issue_block = [&](int it) {
    const int j = blocks_s[it], stage = it % kStages;
    const long long key0 = seq_start + static_cast<long long>(j) * T::kKeys;
    const int valid = min(T::kKeys, seq_len - j * T::kKeys);  // rows past the sequence read as zeros
    wgmma::copy_rows_swizzled_async<T::kKeys, kD, T::kThreads>(k_s + stage * (T::kKvBytes / 2),
                                                              k_global + key0 * p.in.k_token_stride,
                                                              p.in.k_token_stride, valid);
    wgmma::copy_rows_swizzled_async<T::kKeys, kD, T::kThreads>(v_s + stage * (T::kKvBytes / 2),
                                                              v_global + key0 * p.in.v_token_stride,
                                                              p.in.v_token_stride, valid);
  };
  // Groups: {Q, block 0}, then blocks 1 .. kStages - 2, one group each (possibly empty).
  issue_block(0);
  common::cp_async_commit();
#pragma unroll
  for (int it = 1; it + 1 < kStages; ++it) {
    if (it < list_len) issue_block(it);
    common::cp_async_commit();
  }

  const float scale_log2 = p.in.scale * kLog2e;
  // This lane's four heads (columns) of S^T and O^T: 8 * (i / 2) + 2 * pair + i % 2.
  auto head_of = [&](int i) { return 8 * (i / 2) + 2 * pair + i % 2; };
  float row_max[4], row_sum[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0.0f;
  }
  float acc[kD / 64][2][4];  // O^T: d = 64 m + 16 warp + group (+ 8), heads as above
#pragma unroll
  for (int m = 0; m < kD / 64; ++m) common::zero_acc<16>(acc[m]);

  const std::uint64_t q_desc = wgmma::descriptor(q_s, 0, T::kGroupBytes);
  const std::uint64_t k_desc0 = wgmma::descriptor(k_s, 0, T::kGroupBytes);
  const std::uint64_t v_desc0 = wgmma::descriptor(v_s, T::kPanelBytes, T::kGroupBytes);
  const std::uint64_t p_desc = wgmma::descriptor(p_s, 0, T::kGroupBytes);
  auto qk_step_bytes = [](int rows, int kk) {
    return static_cast<std::uint32_t>((kk / 4) * rows * wgmma::kPanelRowBytes + (kk % 4) * 32);
  };

  for (int it = 0; it < list_len; ++it) {
    const int stage = it % kStages, j = blocks_s[it];
    common::cp_async_wait<kStages - 2>();  // block it has landed for this thread's copies
    wgmma::fence_async_shared();
    __syncthreads();  // ... for every thread's; every warp is done with block it - 1 (its stage, P)
    if (it + kStages - 1 < list_len) issue_block(it + kStages - 1);
    common::cp_async_commit();

    // S^T = K Q^T: keys 16 warp + group (+ 8) of the block, this lane's heads.
    float s[2][4];
    const std::uint64_t k_desc = wgmma::advance(k_desc0, stage * static_cast<std::uint32_t>(T::kKvBytes));
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk)
      wgmma::mma_ss<Element, 16, 0, 0>(s, wgmma::advance(k_desc, qk_step_bytes(T::kKeys, kk)),
                                       wgmma::advance(q_desc, qk_step_bytes(T::kHeads, kk)), kk > 0);
    wgmma::commit_group();
    wgmma::wait_group<0>();
    wgmma::fence_operands<16>(s);

    // Causal mask on the token's own block (the only block with keys after it or past the end).
    if (j == own_block) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = j * T::kKeys + 16 * warp + group + 8 * (e / 2);
        if (key > t_local) s[0][e] = s[1][e] = -INFINITY;
      }
    }
    // Block maximum of each head: this lane's two keys, the warp's 16 (shuffles over the groups),
    // then the four warps' through shared memory.
    float block_max[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float m = fmaxf(s[i / 2][i % 2], s[i / 2][2 + i % 2]);
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 4));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 8));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 16));
      block_max[i] = m;
    }
    if (group == 0) {
#pragma unroll
      for (int i = 0; i < 4; ++i) exchange[warp][head_of(i)] = block_max[i];
    }
    __syncthreads();
    float alpha[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = head_of(i);
      const float m = fmaxf(fmaxf(exchange[0][h], exchange[1][h]), fmaxf(exchange[2][h], exchange[3][h]));
      // Every block has a visible key for every head (the own block its first), so m is finite.
      const float new_max = fmaxf(row_max[i], m * scale_log2);
      alpha[i] = exp2f(row_max[i] - new_max);
      row_max[i] = new_max;
      const float p0 = exp2f(fmaf(s[i / 2][i % 2], scale_log2, -new_max));
      const float p1 = exp2f(fmaf(s[i / 2][2 + i % 2], scale_log2, -new_max));
      s[i / 2][i % 2] = p0;
      s[i / 2][2 + i % 2] = p1;
      row_sum[i] = row_sum[i] * alpha[i] + p0 + p1;
    }
#pragma unroll
    for (int m = 0; m < kD / 64; ++m)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc[m][i / 2][i % 2] *= alpha[i];
        acc[m][i / 2][2 + i % 2] *= alpha[i];
      }
    // P (16 heads x 64 keys, K-major B of O^T += V^T P^T) into its swizzled tile.
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int key = 16 * warp + group + 8 * r;
        *reinterpret_cast<Element*>(p_s + wgmma::swizzled_offset(T::kHeads, head_of(i), key & ~7) + (key % 8) * 2) =
            Convert<Element>::from_float(s[i / 2][2 * r + i % 2]);
      }
    wgmma::fence_async_shared();
    __syncthreads();

    // O^T += V^T P^T: m tile m is V's panel m (64 of the d columns); k steps of 16 keys.
    const std::uint64_t v_desc = wgmma::advance(v_desc0, stage * static_cast<std::uint32_t>(T::kKvBytes));
#pragma unroll
    for (int m = 0; m < kD / 64; ++m) wgmma::fence_operands<16>(acc[m]);
    wgmma::fence();
#pragma unroll
    for (int m = 0; m < kD / 64; ++m)
#pragma unroll
      for (int kk = 0; kk < T::kKeys / 16; ++kk)
        wgmma::mma_ss<Element, 16, 0, 1>(acc[m], wgmma::advance(v_desc, m * T::kPanelBytes + kk * 16 * wgmma::kPanelRowBytes),
                                         wgmma::advance(p_desc, kk * 32), 1);
    wgmma::commit_group();
    wgmma::wait_group<0>();
#pragma unroll
    for (int m = 0; m < kD / 64; ++m) wgmma::fence_operands<16>(acc[m]);
  }
  common::cp_async_wait<0>();

  // Row sums: this lane's keys, then the warp's, then the warpgroup's.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 4);
    row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 8);
    row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 16);
  }
  __syncthreads();  // every warp is done with the last block's maxima and stages
  if (group == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) exchange[warp][head_of(i)] = row_sum[i];
  }
  // O^T / sum, staged as O [16 heads][kD] (fp32) in the K stages so that rows leave in 16-byte vectors.
  auto* o_stage = reinterpret_cast<float*>(k_s);
  constexpr int kLdO = kD + 4;
  static_assert(sizeof(float) * T::kHeads * kLdO <= kStages * T::kKvBytes, "O fits the K stages");
  __syncthreads();
  float inv[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int h = head_of(i);
    const float sum = exchange[0][h] + exchange[1][h] + exchange[2][h] + exchange[3][h];
    inv[i] = 1.0f / sum;  // sum >= 1: the maximum's key contributes exp2(0)
    // Natural-log lse from the log2-domain maximum.
    if (warp == 0 && group == 0 && h < heads) lse[h * p.lse_head_stride] = row_max[i] * kLn2 + logf(sum);
  }
#pragma unroll
  for (int m = 0; m < kD / 64; ++m)
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        o_stage[head_of(i) * kLdO + 64 * m + 16 * warp + group + 8 * r] = acc[m][i / 2][2 * r + i % 2] * inv[i];
  __syncthreads();
  constexpr int kVec = 8;  // elements a thread stores at once (16 bytes)
  for (int idx = threadIdx.x; idx < heads * (kD / kVec); idx += T::kThreads) {
    const int h = idx / (kD / kVec), c = (idx % (kD / kVec)) * kVec;
    float values[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) values[e] = o_stage[h * kLdO + c + e];
    store_vector<Element, kVec>(o + h * p.o_head_stride + c, values);
  }
#else
  __trap();  // launched only where the sm_90a image is the one loaded (common::kernel_arch)
#endif
}

// Launches the kernel over every (kv head, token, 16 heads); its shared memory set once per process.
template <class Element, int kD, int kStages>
Status launch_qo_sm90(const SlcForwardParams& p, cudaStream_t stream) {
  using T = QoSm90Traits<kD, kStages>;
  const SlcPlanShape& shape = p.plan.shape;
  const long long ctas = static_cast<long long>(shape.heads_kv) * shape.tokens *
                         ((shape.group + T::kHeads - 1) / T::kHeads);
  if (ctas == 0) return Status::ok();
  if (ctas > INT32_MAX)
    return FSA_ERROR(StatusCode::kNotImplemented, "slc_attn_forward: " + std::to_string(ctas) +
                                                      " CTAs of the query-outer kernel exceed the grid limit");
  auto* kernel = slc_qo_sm90_kernel<Element, kD, kStages>;
  FSA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(T::kSmemBytes)));
  kernel<<<static_cast<unsigned>(ctas), T::kThreads, T::kSmemBytes, stream>>>(p);
  FSA_CHECK_LAUNCH("slc_qo_sm90_kernel", stream);
  return Status::ok();
}

}  // namespace fsa::cuda::slc
