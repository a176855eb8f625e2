// Query-outer (NSA-order) selected attention on Hopper (sm90a), for key blocks of 64 and
// Dqk = Dv in {64, 128}: one warpgroup per (kv head, kTokens consecutive tokens, 16 query heads)
// walks the union of the tokens' selected blocks, computing the transposed products so that the 64
// keys of a block are the wgmma's M and the tokens' heads its N = 16 x kTokens columns:
//   S^T = K Q^T        (A = the block's K, 64 x D, and B = the Q rows, both K-major in shared memory)
//   O^T += V^T P^T     (A = V read MN-major, the transpose wgmma does for 16-bit types; B = P,
//                       columns x 64, written to shared memory by the softmax)
// Why: a token's G = 16 heads are 16 MMA rows, a quarter of a wgmma's M = 64. Transposed, a block
// is exactly one M tile, a head a column, and the whole block's product is D / 16 + D / 16
// instructions a warpgroup with operands that never pass through the register file. A block that
// several of the CTA's tokens selected is loaded from L2 once for all of them (the columns of a
// token that did not select it are skipped: P = 0 there, its softmax state untouched), so
// neighbouring tokens that share blocks cost less than one load a (token, block) pair. The
// mma.sync query-outer kernel (slc_tile_kernel, which other GPUs, block sizes and head dims still
// run) split each block's keys over warps and paid a softmax per 16 keys in ldmatrix- and
// issue-bound loops (docs/kernels/slc_attn.md, "Pipeline" 5).
// The softmax runs down the columns: warp w holds keys 16w..16w+15 of every column, so a column's
// block maximum is a shuffle reduction plus one exchange through shared memory per block; each lane
// keeps partial row sums of its own keys, added across the warpgroup once at the end. K / V blocks
// are copied with cp.async by all 128 threads into one K and one V buffer, the next block's K
// issued once every warp's S^T is done and its V once O^T is, so that three CTAs fit a SM (four
// barriers a block: K landed, block maxima, P and V landed, V free). Two K / V stages, which fitted
// two CTAs a SM, measured slower (docs/kernels/slc_attn.md, "Pipeline" 5).
#pragma once

#include <climits>
#include <cstdint>

#include "cuda/runtime.hpp"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"
#include "kernels/common/wgmma_sm90.cuh"
#include "kernels/flash/flash_softmax.cuh"
#include "kernels/slc_attn/slc_common.cuh"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda::slc {

template <int kD_, int kTokens_>
struct QoSm90Traits {
  static constexpr int kD = kD_;
  static constexpr int kTokens = kTokens_;
  static constexpr int kKeys = 64;                   // one key block: the wgmma's M
  static constexpr int kHeads = 16;                  // query heads of one token in a CTA
  static constexpr int kCols = kHeads * kTokens;     // the wgmma's N: column c is head c % 16 of token c / 16
  static constexpr int kMaxEntries = kTokens * SlcPlanShape::kMaxWidth;  // the union's bound
  static constexpr int kThreads = 128;
  static_assert(kD % wgmma::kPanelCols == 0, "whole 64-column panels");
  static_assert(kTokens == 1 || kTokens == 2 || kTokens == 4, "wgmma widths 16, 32 and 64");
  static constexpr std::size_t kQBytes = std::size_t{2} * kCols * kD;
  static constexpr std::size_t kKvBytes = std::size_t{2} * kKeys * kD;  // K or V of one block
  static constexpr std::size_t kPBytes = std::size_t{2} * kCols * kKeys;
  static constexpr std::size_t kKOffset = kQBytes;  // multiples of 1024: every tile starts a swizzle period
  static constexpr std::size_t kVOffset = kKOffset + kKvBytes;  // one K and one V buffer
  static constexpr std::size_t kPOffset = kVOffset + kKvBytes;
  static constexpr std::size_t kSmemBytes = kPOffset + kPBytes + 1024;  // + the alignment done by hand
  static constexpr std::uint32_t kGroupBytes = 8 * wgmma::kPanelRowBytes;    // 8-row groups (SBO)
  static constexpr std::uint32_t kPanelBytes = kKeys * wgmma::kPanelRowBytes;  // one 64-column panel of K / V
  // CTAs a SM the shared memory allows (the registers allow more).
  static constexpr int kMinBlocks = kSmemBytes <= 75 * 1024 ? 3 : 2;
};

template <class Element, int kD, int kTokens>
__global__ void __launch_bounds__(128, QoSm90Traits<kD, kTokens>::kMinBlocks)
    slc_qo_sm90_kernel(const __grid_constant__ SlcForwardParams p) {
#if FSA_HAS_WGMMA
  using T = QoSm90Traits<kD, kTokens>;
  constexpr int kCols = T::kCols;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  // The union of the tokens' valid selected blocks: first key row (of the call's k / v rows),
  // rows inside the sequence, and which tokens selected it (bit per token).
  __shared__ long long entry_row[T::kMaxEntries];
  __shared__ int entry_rows[T::kMaxEntries];
  __shared__ int entry_tokens[T::kMaxEntries];
  // Per (token, topk slot): its block's first key row, or kNoBlock (rows can be negative: the keys
  // before a query chunk).
  constexpr long long kNoBlock = LLONG_MIN;
  __shared__ long long candidate[T::kMaxEntries];
  __shared__ long long slot_seq_start[kTokens];
  __shared__ int slot_seq_len[kTokens];
  __shared__ bool leads[T::kMaxEntries];
  __shared__ float exchange[4][kCols];  // per warp and column: the block maximum, at the end the row sum
  unsigned char* smem = wgmma::swizzle_aligned(smem_raw);
  auto* q_s = reinterpret_cast<Element*>(smem);
  auto* k_s = reinterpret_cast<Element*>(smem + T::kKOffset);
  auto* v_s = reinterpret_cast<Element*>(smem + T::kVOffset);
  auto* p_s = smem + T::kPOffset;

  const SlcPlanShape& shape = p.plan.shape;
  const int G = shape.group, width = shape.width, num_seqs = shape.num_seqs;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
  const int chunks = (G + T::kHeads - 1) / T::kHeads;
  const long long tiles = (shape.tokens + kTokens - 1) / kTokens;
  const long long item = blockIdx.x / chunks;
  const int chunk = static_cast<int>(blockIdx.x % chunks);
  const int kv_head = static_cast<int>(item / tiles);
  const long long t0 = (item - static_cast<long long>(kv_head) * tiles) * kTokens;  // the first token
  const int tokens = static_cast<int>(min(static_cast<long long>(kTokens), shape.tokens - t0));
  const int heads = min(T::kHeads, G - chunk * T::kHeads);  // columns of a token past it are padding
  const int head0 = kv_head * G + chunk * T::kHeads;

  // Each token's sequence (a token outside the batch has none: length 0, so it selects nothing and
  // gets o = 0, lse = -inf).
  const long long batch_begin = p.in.cu_seqlens[0], batch_end = p.in.cu_seqlens[num_seqs * p.in.cu_stride];
  if (threadIdx.x < kTokens) {
    const long long t = t0 + threadIdx.x;
    long long start = t;
    int len = 0;
    if (threadIdx.x < tokens && t >= batch_begin && t < batch_end) {
      const int b = upper_index(p.in.cu_seqlens, p.in.cu_stride, num_seqs, t);
      start = p.in.cu_seqlens[b * p.in.cu_stride];
      len = static_cast<int>(p.in.cu_seqlens[(b + 1) * p.in.cu_stride] - start);
    }
    slot_seq_start[threadIdx.x] = start;
    slot_seq_len[threadIdx.x] = len;
  }
  __syncthreads();
  // Candidates: a token's valid first occurrences (in [0, its own block]) as first key rows.
  const int candidates = kTokens * width;
  for (int i = threadIdx.x; i < candidates; i += T::kThreads) {
    const int token = i / width, k = i % width;
    long long row0 = kNoBlock;
    if (token < tokens && slot_seq_len[token] > 0) {
      const int own_block = static_cast<int>(t0 + token - slot_seq_start[token]) / T::kKeys;
      const std::int32_t* row = p.in.topk + kv_head * p.in.topk_head_stride + (t0 + token) * p.in.topk_token_stride;
      // counted_entry() written out: with the call, ptxas serialises this kernel's wgmma at D = 128
      // (C7511: docs/kernels/slc_attn.md), as it does after other small changes here.
      const std::int32_t j = row[k];
      bool keep = j >= 0 && j <= own_block;
      for (int earlier = 0; keep && earlier < k; ++earlier) keep = row[earlier] != j;
      if (keep) row0 = slot_seq_start[token] + static_cast<long long>(j) * T::kKeys;
    }
    candidate[i] = row0;
  }
  __syncthreads();
  // The union in ascending key order: candidate i leads its block when no earlier candidate has
  // it, and its place is the number of leaders with smaller rows. Each token then meets its blocks
  // in ascending order, whatever tokens share its CTA: a query chunk's results equal the whole
  // call's bit for bit.
  for (int i = threadIdx.x; i < candidates; i += T::kThreads) {
    const long long row0 = candidate[i];
    bool lead = row0 != kNoBlock;
    for (int earlier = 0; lead && earlier < i; ++earlier) lead = candidate[earlier] != row0;
    leads[i] = lead;
  }
  __syncthreads();
  int count = 0;
  for (int i = 0; i < candidates; ++i) count += leads[i];  // the same in every thread (shared reads)
  for (int i = threadIdx.x; i < candidates; i += T::kThreads) {
    if (!leads[i]) continue;
    const long long row0 = candidate[i];
    int place = 0, mask = 0;
    for (int other = 0; other < candidates; ++other) {
      place += leads[other] && candidate[other] < row0;
      if (candidate[other] == row0) mask |= 1 << (other / width);
    }
    const int token = i / width;
    entry_row[place] = row0;
    entry_rows[place] = static_cast<int>(min(static_cast<long long>(T::kKeys),
                                             slot_seq_start[token] + slot_seq_len[token] - row0));
    entry_tokens[place] = mask;
  }
  __syncthreads();

  const auto* q = static_cast<const Element*>(p.in.q);
  wgmma::copy_tile_swizzled_async<kCols, kD, T::kThreads>(q_s, [&](int c) -> const Element* {
    const int token = c / T::kHeads, h = c % T::kHeads;
    return token < tokens && h < heads ? q + (t0 + token) * p.in.q_token_stride + (head0 + h) * p.in.q_head_stride
                                       : nullptr;
  });
  const auto* k_global = static_cast<const Element*>(p.in.k) + kv_head * p.in.k_head_stride;
  const auto* v_global = static_cast<const Element*>(p.in.v) + kv_head * p.in.v_head_stride;
  // One K and one V buffer: K(e + 1) issued once every warp's S^T(e) is done and V(e + 1) once
  // O^T(e) is, so that three CTAs fit a SM at four tokens.
  auto issue_k = [&](int e) {
    wgmma::copy_rows_swizzled_async<T::kKeys, kD, T::kThreads>(
        k_s, k_global + entry_row[e] * p.in.k_token_stride, p.in.k_token_stride, entry_rows[e]);
  };
  auto issue_v = [&](int e) {
    wgmma::copy_rows_swizzled_async<T::kKeys, kD, T::kThreads>(
        v_s, v_global + entry_row[e] * p.in.v_token_stride, p.in.v_token_stride, entry_rows[e]);
  };
  // Groups: {Q, K 0}, {V 0}; then per block {K e + 1} after its scores, {V e + 1} after O^T.
  if (count > 0) issue_k(0);
  common::cp_async_commit();
  if (count > 0) issue_v(0);
  common::cp_async_commit();

  const float scale_log2 = p.in.scale * common::kLog2e;
  // This lane's columns of S^T and O^T: column i is 8 * (i / 2) + 2 * pair + i % 2, of token i / 4.
  constexpr int kLaneCols = kCols / 4;
  auto col_of = [&](int i) { return 8 * (i / 2) + 2 * pair + i % 2; };
  float row_max[kLaneCols], row_sum[kLaneCols];
#pragma unroll
  for (int i = 0; i < kLaneCols; ++i) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0.0f;
  }
  float acc[kD / 64][kCols / 8][4];  // O^T: d = 64 m + 16 warp + group (+ 8), columns as above
#pragma unroll
  for (int m = 0; m < kD / 64; ++m) common::zero_acc<kCols>(acc[m]);

  const std::uint64_t q_desc = wgmma::descriptor(q_s, 0, T::kGroupBytes);
  const std::uint64_t k_desc = wgmma::descriptor(k_s, 0, T::kGroupBytes);
  const std::uint64_t v_desc = wgmma::descriptor(v_s, T::kPanelBytes, T::kGroupBytes);
  const std::uint64_t p_desc = wgmma::descriptor(p_s, 0, T::kGroupBytes);
  auto qk_step_bytes = [](int rows, int kk) {
    return static_cast<std::uint32_t>((kk / 4) * rows * wgmma::kPanelRowBytes + (kk % 4) * 32);
  };

  // One block for the columns of tokens [kFirst, kFirst + kCount): wgmma N = 16 kCount over their
  // rows of the Q and P tiles (16-row slices of a swizzled tile start on 1024-byte boundaries, so
  // a slice is a tile of its own with the whole tile's panel stride) and their accumulators.
  // `selected_by`: which of them selected the block (the others' columns get P = 0 and keep their
  // softmax state).
  int e = 0;  // the block in flight (the next copies' index; not a parameter: see C7511 in slc_attn.md)
  auto block_step = [&]<int kFirst, int kCount>(long long key0, int selected_by) {
    constexpr int kN = 16 * kCount;
    constexpr std::uint32_t kSlice = kFirst * T::kHeads * wgmma::kPanelRowBytes;
    // S^T = K Q^T: keys 16 warp + group (+ 8) of the block, this lane's columns.
    float s[kN / 8][4];
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk)
      wgmma::mma_ss<Element, kN, 0, 0>(s, wgmma::advance(k_desc, qk_step_bytes(T::kKeys, kk)),
                                       wgmma::advance(q_desc, kSlice + qk_step_bytes(kCols, kk)), kk > 0);
    wgmma::commit_group();
    wgmma::wait_group<0>();
    wgmma::fence_operands<kN>(s);

    // Per token that selected the block: the causal mask (keys after the token: its own block
    // only) and each column's block maximum over this lane's two keys and the warp's 16 (shuffles
    // over the groups); then the four warps' through shared memory. Lane column i of the slice is
    // lane column 4 kFirst + i of the CTA.
#pragma unroll
    for (int token = 0; token < kCount; ++token) {
      if (!(selected_by >> (kFirst + token) & 1)) continue;
      const long long t = t0 + kFirst + token;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const long long key = key0 + 16 * warp + group + 8 * r;
        if (key > t) {
#pragma unroll
          for (int i = 4 * token; i < 4 * token + 4; ++i) s[i / 2][2 * r + i % 2] = -INFINITY;
        }
      }
#pragma unroll
      for (int i = 4 * token; i < 4 * token + 4; ++i) {
        float m = fmaxf(s[i / 2][i % 2], s[i / 2][2 + i % 2]);
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 4));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 8));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 16));
        if (group == 0) exchange[warp][col_of(4 * kFirst + i)] = m;
      }
    }
    __syncthreads();  // every warp is done with K(e)
    if (e + 1 < count) issue_k(e + 1);
    common::cp_async_commit();
#pragma unroll
    for (int token = 0; token < kCount; ++token) {
      if (!(selected_by >> (kFirst + token) & 1)) {
#pragma unroll
        for (int i = 4 * token; i < 4 * token + 4; ++i) s[i / 2][i % 2] = s[i / 2][2 + i % 2] = 0.0f;
        continue;
      }
#pragma unroll
      for (int i = 4 * token; i < 4 * token + 4; ++i) {
        const int g = 4 * kFirst + i, c = col_of(g);
        const float m = fmaxf(fmaxf(exchange[0][c], exchange[1][c]), fmaxf(exchange[2][c], exchange[3][c]));
        // A block the token selected has a visible key for each of its columns (the own block its
        // first), so m is finite.
        const float new_max = fmaxf(row_max[g], m * scale_log2);
        const float alpha = exp2f(row_max[g] - new_max);
        row_max[g] = new_max;
        const float p0 = exp2f(fmaf(s[i / 2][i % 2], scale_log2, -new_max));
        const float p1 = exp2f(fmaf(s[i / 2][2 + i % 2], scale_log2, -new_max));
        s[i / 2][i % 2] = p0;
        s[i / 2][2 + i % 2] = p1;
        row_sum[g] = row_sum[g] * alpha + p0 + p1;
#pragma unroll
        for (int m = 0; m < kD / 64; ++m) {
          acc[m][g / 2][g % 2] *= alpha;
          acc[m][g / 2][2 + g % 2] *= alpha;
        }
      }
    }
    // P (the slice's columns x 64 keys, the K-major B of O^T += V^T P^T) into its rows of the P tile.
#pragma unroll
    for (int i = 0; i < kN / 4; ++i)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int key = 16 * warp + group + 8 * r;
        *reinterpret_cast<Element*>(p_s + wgmma::swizzled_offset(kCols, col_of(4 * kFirst + i), key & ~7) +
                                    (key % 8) * 2) = Convert<Element>::from_float(s[i / 2][2 * r + i % 2]);
      }
    common::cp_async_wait<1>();  // V(e) has landed; K(e + 1) may be in flight
    wgmma::fence_async_shared();
    __syncthreads();

    // O^T += V^T P^T: m tile m is V's panel m (64 of the d columns); k steps of 16 keys.
    using Slice = float[kN / 8][4];
#pragma unroll
    for (int m = 0; m < kD / 64; ++m) wgmma::fence_operands<kN>(*reinterpret_cast<Slice*>(&acc[m][2 * kFirst]));
    wgmma::fence();
#pragma unroll
    for (int m = 0; m < kD / 64; ++m)
#pragma unroll
      for (int kk = 0; kk < T::kKeys / 16; ++kk)
        wgmma::mma_ss<Element, kN, 0, 1>(*reinterpret_cast<Slice*>(&acc[m][2 * kFirst]),
                                         wgmma::advance(v_desc, m * T::kPanelBytes + kk * 16 * wgmma::kPanelRowBytes),
                                         wgmma::advance(p_desc, kSlice + kk * 32), 1);
    wgmma::commit_group();
    wgmma::wait_group<0>();
#pragma unroll
    for (int m = 0; m < kD / 64; ++m) wgmma::fence_operands<kN>(*reinterpret_cast<Slice*>(&acc[m][2 * kFirst]));
  };

  for (e = 0; e < count; ++e) {
    common::cp_async_wait<1>();  // K(e) has landed for this thread's copies (V(e) may not have)
    wgmma::fence_async_shared();
    __syncthreads();  // ... for every thread's
    const long long key0 = entry_row[e];
    const int selected_by = entry_tokens[e];
    // A block only one token selected (most of them, with random selections) runs on that token's
    // 16 columns alone: the whole width would multiply the MMA work by kTokens.
    auto finish = [&]() {
      __syncthreads();  // every warp is done with V(e)
      if (e + 1 < count) issue_v(e + 1);
      common::cp_async_commit();
    };
    if constexpr (kTokens > 1) {
      if ((selected_by & (selected_by - 1)) == 0) {
        const int token = __ffs(selected_by) - 1;
        if (token == 0) block_step.template operator()<0, 1>(key0, selected_by);
        if (token == 1) block_step.template operator()<1, 1>(key0, selected_by);
        if constexpr (kTokens > 2) {
          if (token == 2) block_step.template operator()<2, 1>(key0, selected_by);
          if (token == 3) block_step.template operator()<3, 1>(key0, selected_by);
        }
        finish();
        continue;
      }
    }
    block_step.template operator()<0, kTokens>(key0, selected_by);
    finish();
  }
  common::cp_async_wait<0>();

  // Row sums: this lane's keys, then the warp's, then the warpgroup's.
#pragma unroll
  for (int i = 0; i < kLaneCols; ++i) {
    row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 4);
    row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 8);
    row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 16);
  }
  __syncthreads();  // every warp is done with the last block's maxima and stages
  if (group == 0) {
#pragma unroll
    for (int i = 0; i < kLaneCols; ++i) exchange[warp][col_of(i)] = row_sum[i];
  }
  // O^T / sum, staged as O [columns][kD] (fp32) over the Q, K, V and P tiles (every wgmma is done),
  // so that rows leave in 16-byte vectors.
  auto* o_stage = reinterpret_cast<float*>(smem);
  constexpr int kLdO = kD + 4;
  static_assert(sizeof(float) * kCols * kLdO <= T::kPOffset + T::kPBytes, "O fits the operand tiles");
  __syncthreads();
  float inv[kLaneCols];
#pragma unroll
  for (int i = 0; i < kLaneCols; ++i) {
    const int c = col_of(i), token = c / T::kHeads, h = c % T::kHeads;
    const float sum = exchange[0][c] + exchange[1][c] + exchange[2][c] + exchange[3][c];
    // sum = 0: the token selected no valid block (or is outside the batch): o = 0, lse = -inf.
    inv[i] = sum > 0.0f ? 1.0f / sum : 0.0f;
    if (warp == 0 && group == 0 && token < tokens && h < heads)
      p.lse[(head0 + h) * p.lse_head_stride + (t0 + token) * p.lse_token_stride] =
          flash::row_lse(row_max[i], sum);
  }
#pragma unroll
  for (int m = 0; m < kD / 64; ++m)
#pragma unroll
    for (int i = 0; i < kLaneCols; ++i)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        o_stage[col_of(i) * kLdO + 64 * m + 16 * warp + group + 8 * r] = acc[m][i / 2][2 * r + i % 2] * inv[i];
  __syncthreads();
  constexpr int kVec = 8;  // elements a thread stores at once (16 bytes)
  auto* o = static_cast<Element*>(p.o);
  for (int idx = threadIdx.x; idx < kCols * (kD / kVec); idx += T::kThreads) {
    const int c = idx / (kD / kVec), col = (idx % (kD / kVec)) * kVec;
    const int token = c / T::kHeads, h = c % T::kHeads;
    if (token >= tokens || h >= heads) continue;
    float values[kVec];
#pragma unroll
    for (int x = 0; x < kVec; ++x) values[x] = o_stage[c * kLdO + col + x];
    store_vector<Element, kVec>(o + (t0 + token) * p.o_token_stride + (head0 + h) * p.o_head_stride + col, values);
  }
#else
  __trap();  // launched only where the sm_90a image is the one loaded (common::kernel_arch)
#endif
}

// Launches the kernel over every (kv head, kTokens tokens, 16 heads); its shared memory set at each
// launch (cheap; graph capture keeps it).
template <class Element, int kD, int kTokens>
Status launch_qo_sm90(const SlcForwardParams& p, cudaStream_t stream) {
  using T = QoSm90Traits<kD, kTokens>;
  const SlcPlanShape& shape = p.plan.shape;
  const long long ctas = static_cast<long long>(shape.heads_kv) * ((shape.tokens + kTokens - 1) / kTokens) *
                         ((shape.group + T::kHeads - 1) / T::kHeads);
  if (ctas == 0) return Status::ok();
  if (ctas > INT32_MAX)
    return FSA_ERROR(StatusCode::kNotImplemented, "slc_attn_forward: " + std::to_string(ctas) +
                                                      " CTAs of the query-outer kernel exceed the grid limit");
  auto* kernel = slc_qo_sm90_kernel<Element, kD, kTokens>;
  FSA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(T::kSmemBytes)));
  kernel<<<static_cast<unsigned>(ctas), T::kThreads, T::kSmemBytes, stream>>>(p);
  FSA_CHECK_LAUNCH("slc_qo_sm90_kernel", stream);
  return Status::ok();
}

}  // namespace fsa::cuda::slc
