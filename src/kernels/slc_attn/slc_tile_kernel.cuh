// Tile kernel of selected attention: flash attention of a set of query rows over a list of key
// blocks with a token mask per block.
// One body serves two plans (docs/kernels/slc_attn.md, "Pipeline"):
//  - split (kQueryOuter = false): one CTA per (kv head, query tile gb, chunk of rows). The list is
//    the tile's dense blocks (plan.dense_block, ascending), the rows are tokens x G heads of the
//    tile's B tokens; rows whose token did not pick a block are masked for it. It writes each row's
//    dense part to o and lse (tiles without dense blocks write nothing); the merge kernel then adds
//    the row's sparse partials (a warp per row keeps more loads in flight than this kernel's
//    epilogue could).
//  - query-outer (kQueryOuter = true): one CTA per (kv head, token, chunk of rows), the NSA order.
//    The list is the token's valid, de-duplicated topk row; the rows are its G heads, padded to 16.
//    No plan and no partials.
// Warps split the rows (kWarpsM x 16) and the keys of each block (kWarpsN slices), each with its
// own online softmax state; the epilogue combines the slices. K and V go through one shared
// buffer each, the next block's K loading during the softmax and its V during the next S = QK^T
// (cp.async groups, as in FlashAttention-2). Results depend only on the list order, which is fixed
// by the plan or the topk row, so they are reproducible bit for bit.
#pragma once

#include "cuda/runtime.hpp"
#include "kernels/common/mma_sm80.cuh"
#include "kernels/slc_attn/slc_common.cuh"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda::slc {

template <class Element, int kDqk, int kDv, int kB, int kWarpsM, int kWarpsN>
struct TileShape {
  static_assert(kB % (16 * kWarpsN) == 0, "each warp's key slice is whole mma k-steps");
  static_assert(kDqk % 16 == 0 && kDv % 32 == 0, "tiles of 16 for the mma, 32 columns per epilogue lane step");
  static constexpr int kWarps = kWarpsM * kWarpsN;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = 16 * kWarpsM;       // query rows of one CTA
  static constexpr int kSliceKeys = kB / kWarpsN;  // keys of each block one warp handles
  static constexpr int kLdQk = kDqk + kPadHalf;
  static constexpr int kLdV = kDv + kPadHalf;
  static constexpr std::size_t kQOffset = 0;
  static constexpr std::size_t kKOffset = kQOffset + align_up(sizeof(Element) * kRows * kLdQk);
  static constexpr std::size_t kVOffset = kKOffset + align_up(sizeof(Element) * kB * kLdQk);
  static constexpr std::size_t kLoopBytes = kVOffset + align_up(sizeof(Element) * kB * kLdV);
  // Epilogue, in the same space: each warp's unnormalised output rows [16][kLdState] and the rows'
  // running max (log2 domain) and sum, fp32.
  static constexpr int kLdState = kDv + 4;
  static constexpr std::size_t kStateBytes = sizeof(float) * kWarps * 16 * (kLdState + 2);
  static constexpr std::size_t kBytes = kLoopBytes > kStateBytes ? kLoopBytes : kStateBytes;
};

// The two plans' geometries: split tiles use 4 warps of rows (64 rows share each K/V load); the
// query-outer CTA has 16 rows and splits each block's keys over up to 4 warps.
template <int kB, int kDv, bool kQueryOuter>
struct TileWarps {
  static constexpr int kM = kQueryOuter ? 1 : 4;
  // Dv = 256 with B = 128 in one slice would hold 128 output and 64 score floats per thread.
  static constexpr int kN = kQueryOuter ? (kB / 16 < 4 ? kB / 16 : 4) : (kB == 128 && kDv == 256 ? 2 : 1);
  // Split tiles at Dv = 64 (64/64 heads) fit 128 registers per thread without spilling: 4 CTAs
  // (16 warps) per SM. At D = 128 that bound spilled (measured with ptxas): 3 CTAs per SM.
  static constexpr int kMinBlocks = !kQueryOuter && kB <= 64 && kDv <= 64 ? 4 : 1;
};

template <class Element, int kDqk, int kDv, int kB, bool kQueryOuter>
__global__ void __launch_bounds__(TileShape<Element, kDqk, kDv, kB, TileWarps<kB, kDv, kQueryOuter>::kM,
                                            TileWarps<kB, kDv, kQueryOuter>::kN>::kThreads,
                                  TileWarps<kB, kDv, kQueryOuter>::kMinBlocks)
    slc_tile_kernel(const __grid_constant__ SlcForwardParams p) {
  constexpr int kWarpsM = TileWarps<kB, kDv, kQueryOuter>::kM, kWarpsN = TileWarps<kB, kDv, kQueryOuter>::kN;
  using Shape = TileShape<Element, kDqk, kDv, kB, kWarpsM, kWarpsN>;
  constexpr int kThreads = Shape::kThreads, kRows = Shape::kRows, kSliceKeys = Shape::kSliceKeys;
  constexpr int kKeyTiles = kSliceKeys / 8, kOutTiles = kDv / 8;
  constexpr int kQkUnroll = kDqk > 128 ? 2 : kDqk / 16;  // full unrolling spilled at Dqk = 192/256
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  static_assert(!kQueryOuter || kThreads >= SlcPlanShape::kMaxWidth, "query-outer: one thread per topk entry");
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ const Element* q_sources[kRows];
  __shared__ int row_t_local[kRows];                 // position of the row's token in its sequence, -1: padding
  __shared__ int row_token[kRows];                   // index of the row's token in the tile
  __shared__ int blocks_s[SlcPlanShape::kMaxWidth];  // query-outer: the token's blocks
  __shared__ int ballots[2];

  const SlcPlanShape& shape = p.plan.shape;
  const int G = shape.group, width = shape.width;
  const long long n_tokens = shape.tokens;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int num_seqs = shape.num_seqs;

  // ---- The work item: kv head, tokens [t0, t0 + tile_tokens) of one sequence, a chunk of rows.
  int kv_head = 0, chunk = 0, tile_tokens = 1, list_len = 0;
  int own_block = 0;  // the key block holding the tile's tokens: the only one that needs a causal mask
  long long t0 = 0, seq_start = 0;
  int seq_len = 0;
  const std::int32_t* dense_block = nullptr;
  const std::uint32_t* dense_tokens = nullptr;
  if constexpr (kQueryOuter) {
    const int chunks = (G + kRows - 1) / kRows;
    const long long head_token = blockIdx.x / chunks;
    chunk = static_cast<int>(blockIdx.x % chunks);
    kv_head = static_cast<int>(head_token / n_tokens);
    t0 = head_token - static_cast<long long>(kv_head) * n_tokens;
    const long long batch_begin = p.in.cu_seqlens[0], batch_end = p.in.cu_seqlens[num_seqs * p.in.cu_stride];
    if (t0 < batch_begin || t0 >= batch_end) {  // a token outside the batch attends to nothing
      for (int r = threadIdx.x; r < kRows; r += kThreads) {
        const int i = chunk * kRows + r;
        if (i >= G) continue;
        const int head = kv_head * G + i;
        auto* o = static_cast<Element*>(p.o) + t0 * p.o_token_stride + head * p.o_head_stride;
        for (int d = 0; d < kDv; ++d) o[d] = Convert<Element>::from_float(0.0f);
        p.lse[head * p.lse_head_stride + t0 * p.lse_token_stride] = -INFINITY;
      }
      return;
    }
    const int b = upper_index(p.in.cu_seqlens, p.in.cu_stride, num_seqs, t0);
    seq_start = p.in.cu_seqlens[b * p.in.cu_stride];
    seq_len = static_cast<int>(p.in.cu_seqlens[(b + 1) * p.in.cu_stride] - seq_start);
    own_block = static_cast<int>(t0 - seq_start) / kB;
    // The row's valid first occurrences, compacted in row order with the ballots of warps 0 and 1.
    std::int32_t j = -1;
    bool keep = false;
    unsigned ballot = 0;
    if (threadIdx.x < 64) {  // whole warps: kThreads >= 64
      const int k = threadIdx.x;
      if (k < width) {
        const std::int32_t* row = p.in.topk + kv_head * p.in.topk_head_stride + t0 * p.in.topk_token_stride;
        j = counted_entry(row, k, own_block);
        keep = j >= 0;
      }
      ballot = __ballot_sync(0xffffffffu, keep);
      if (lane == 0) ballots[warp] = __popc(ballot);
    }
    __syncthreads();
    if (keep) blocks_s[(warp == 1 ? ballots[0] : 0) + __popc(ballot & ((1u << lane) - 1u))] = j;
    list_len = ballots[0] + ballots[1];
  } else {
    const int chunks = (kB * G + kRows - 1) / kRows;
    const long long s = blockIdx.x / chunks;
    chunk = static_cast<int>(blockIdx.x % chunks);
    const long long max_blocks = shape.max_blocks();
    kv_head = static_cast<int>(s / max_blocks);
    const int gb = static_cast<int>(s - kv_head * max_blocks);
    if (gb >= p.plan.block_offsets[num_seqs]) return;  // a tile past the batch
    const int b = upper_index(p.plan.block_offsets, 1, num_seqs, gb);
    own_block = gb - p.plan.block_offsets[b];
    seq_start = p.in.cu_seqlens[b * p.in.cu_stride];
    seq_len = static_cast<int>(p.in.cu_seqlens[(b + 1) * p.in.cu_stride] - seq_start);
    t0 = seq_start + static_cast<long long>(own_block) * kB;
    tile_tokens = min(kB, seq_len - own_block * kB);
    if (chunk * kRows >= tile_tokens * G) return;  // the tile has fewer rows than this chunk
    list_len = p.plan.dense_count[s];
    // A tile without dense blocks has nothing to add: its rows' dense_slots are 0, which tells the
    // merge kernel to take o and lse from the partials alone.
    if (list_len == 0) return;
    dense_block = p.plan.dense_block + s * shape.dense_capacity();
    dense_tokens = p.plan.dense_tokens + s * shape.dense_capacity() * SlcPlanShape::kMaskWords;
  }

  // ---- Rows: tile row r = chunk * kRows + i is head r % G of the tile's token r / G.
  const auto* q = static_cast<const Element*>(p.in.q);
  for (int i = threadIdx.x; i < kRows; i += kThreads) {
    const int r = chunk * kRows + i;
    const long long token = t0 + r / G;
    // Split tiles cut by a query chunk boundary: the rows of the other chunk's tokens are padding
    // here (their chunk computes and writes them).
    const bool valid = r < tile_tokens * G && (kQueryOuter || (token >= 0 && token < p.plan.shape.tokens));
    const int head = kv_head * G + r % G;
    q_sources[i] = valid ? q + token * p.in.q_token_stride + head * p.in.q_head_stride : nullptr;
    row_t_local[i] = valid ? static_cast<int>(token - seq_start) : -1;
    row_token[i] = r / G;
  }
  __syncthreads();  // also publishes the query-outer block list
  auto* q_s = reinterpret_cast<Element*>(smem + Shape::kQOffset);
  auto* k_s = reinterpret_cast<Element*>(smem + Shape::kKOffset);
  auto* v_s = reinterpret_cast<Element*>(smem + Shape::kVOffset);
  const auto* k_global = static_cast<const Element*>(p.in.k) + kv_head * p.in.k_head_stride;
  const auto* v_global = static_cast<const Element*>(p.in.v) + kv_head * p.in.v_head_stride;
  auto block_at = [&](int it) { return kQueryOuter ? blocks_s[it] : dense_block[it]; };
  // The token-mask words of this thread's two rows for list entry `it` (split mode).
  auto mask_words_at = [&](int it, int u0, int u1, std::uint32_t (&w)[2]) {
    const std::uint32_t* entry = dense_tokens + static_cast<long long>(it) * SlcPlanShape::kMaskWords;
    w[0] = entry[u0 / 32];
    w[1] = entry[u1 / 32];
  };
  auto issue_k = [&](int j) {
    const long long key0 = seq_start + static_cast<long long>(j) * kB;
    issue_strided_rows<Element, kDqk, kThreads>(k_s, Shape::kLdQk, kB, min(kB, seq_len - j * kB),
                                                k_global + key0 * p.in.k_token_stride, p.in.k_token_stride);
  };
  auto issue_v = [&](int j) {
    const long long key0 = seq_start + static_cast<long long>(j) * kB;
    issue_strided_rows<Element, kDv, kThreads>(v_s, Shape::kLdV, kB, min(kB, seq_len - j * kB),
                                               v_global + key0 * p.in.v_token_stride, p.in.v_token_stride);
  };
  // Groups in flight: {Q, K0}, {V0}; then each iteration closes one K and one V group (possibly
  // empty), so "all but the newest group done" always means the one the next step needs.
  if (list_len > 0) {  // query-outer: a token without valid blocks only writes o = 0, lse = -inf
    issue_rows<Element, kDqk>(q_s, Shape::kLdQk, kRows, q_sources);
    issue_k(block_at(0));
  }
  cp_async_commit();
  if (list_len > 0) issue_v(block_at(0));
  cp_async_commit();

  const int wm = warp / kWarpsN, wn = warp % kWarpsN;
  const int group = lane / 4, pair = lane % 4;
  const int row0 = wm * 16;
  const int slice0 = wn * kSliceKeys;  // first key of this warp's slice within a block
  const int my_t_local[2] = {row_t_local[row0 + group], row_t_local[row0 + group + 8]};
  const int my_token[2] = {row_token[row0 + group], row_token[row0 + group + 8]};
  const float scale_log2 = p.in.scale * kLog2e;
  float o_acc[kOutTiles][4];
#pragma unroll
  for (int n = 0; n < kOutTiles; ++n) o_acc[n][0] = o_acc[n][1] = o_acc[n][2] = o_acc[n][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY};  // log2 domain
  float row_sum[2] = {0.0f, 0.0f};            // this thread's columns only; summed over the quad at the end

  // Split mode reads its list from global memory: the next entry is loaded one iteration ahead so
  // that its latency hides behind a block's math instead of stalling every iteration.
  const int my_u[2] = {my_token[0] & (SlcPlanShape::kMaxBlockSize - 1), my_token[1] & (SlcPlanShape::kMaxBlockSize - 1)};
  int next_block = 0;
  std::uint32_t next_words[2] = {0u, 0u};
  if (list_len > 0) {
    next_block = block_at(0);
    if constexpr (!kQueryOuter) mask_words_at(0, my_u[0], my_u[1], next_words);
  }
  for (int it = 0; it < list_len; ++it) {
    const int j = next_block;
    const std::uint32_t words[2] = {next_words[0], next_words[1]};
    if (it + 1 < list_len) {
      next_block = block_at(it + 1);
      if constexpr (!kQueryOuter) mask_words_at(it + 1, my_u[0], my_u[1], next_words);
    }
    bool selected[2] = {my_t_local[0] >= 0, my_t_local[1] >= 0};
    if constexpr (!kQueryOuter) {
#pragma unroll
      for (int h = 0; h < 2; ++h) selected[h] = selected[h] && ((words[h] >> (my_u[h] % 32)) & 1u) != 0;
    }
    // A warp none of whose rows picked the block skips its math (not the barriers).
    const bool active = __any_sync(0xffffffffu, selected[0] || selected[1]);
    cp_async_wait<1>();  // Q and this block's K
    __syncthreads();

    float s[kKeyTiles][4];
#pragma unroll
    for (int t = 0; t < kKeyTiles; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
    if (active) {
#pragma unroll kQkUnroll
      for (int k0 = 0; k0 < kDqk; k0 += 16) {
        std::uint32_t a[4];
        mma::ldmatrix_x4(a, q_s + (row0 + lane % 16) * Shape::kLdQk + k0 + (lane / 16) * 8);
#pragma unroll
        for (int t = 0; t < kKeyTiles; t += 2) {
          std::uint32_t b[4];
          mma::ldmatrix_x4(b, k_s + (slice0 + t * 8 + lane % 8 + (lane / 16) * 8) * Shape::kLdQk + k0 +
                                  ((lane / 8) % 2) * 8);
          mma::mma_16816<Element>(s[t], a, b[0], b[1]);
          mma::mma_16816<Element>(s[t + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with K
    if (it + 1 < list_len) issue_k(next_block);
    cp_async_commit();

    if (active) {
      // Online softmax over this warp's slice, in the log2 domain with the scale folded into one
      // FFMA per score. Masked scores are -inf: a row that did not pick the block (all of its
      // scores), and on the tile's own block keys in the future or past the sequence's end.
      const bool diagonal = j == own_block;
      const int keys = min(kB, seq_len - j * kB);
      const int first_key = j * kB;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float row_mask = selected[h] ? 0.0f : -INFINITY;
        float block_max = -INFINITY;
#pragma unroll
        for (int t = 0; t < kKeyTiles; ++t)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[t][2 * h + e];
            x += row_mask;
            if (diagonal) {
              const int col = slice0 + t * 8 + pair * 2 + e;
              if (col >= keys || first_key + col > my_t_local[h]) x = -INFINITY;
            }
            block_max = fmaxf(block_max, x);
          }
        block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 1));
        block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 2));
        const float new_max = fmaxf(row_max[h], block_max * scale_log2);
        // new_max = -inf: nothing seen yet; the offset 0 keeps exp2(-inf) = 0 (not NaN).
        const float offset = new_max == -INFINITY ? 0.0f : new_max;
        const float alpha = exp2f(row_max[h] - offset);
        row_max[h] = new_max;
        float sum = 0.0f;
#pragma unroll
        for (int t = 0; t < kKeyTiles; ++t)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[t][2 * h + e];
            x = exp2f(fmaf(x, scale_log2, -offset));
            sum += x;
          }
        row_sum[h] = row_sum[h] * alpha + sum;
#pragma unroll
        for (int n = 0; n < kOutTiles; ++n) {
          o_acc[n][2 * h] *= alpha;
          o_acc[n][2 * h + 1] *= alpha;
        }
      }
    }
    cp_async_wait<1>();  // this block's V
    __syncthreads();
    if (active) {
      // O += P V: the accumulators of key tiles 2kk, 2kk + 1 are the A fragment of keys 16kk..+15.
#pragma unroll
      for (int kk = 0; kk < kSliceKeys / 16; ++kk) {
        const std::uint32_t a[4] = {mma::pack2<Element>(s[2 * kk][0], s[2 * kk][1]),
                                    mma::pack2<Element>(s[2 * kk][2], s[2 * kk][3]),
                                    mma::pack2<Element>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    mma::pack2<Element>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int n = 0; n < kOutTiles; n += 2) {
          std::uint32_t b[4];
          mma::ldmatrix_x4_trans(
              b, v_s + (slice0 + kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * Shape::kLdV + n * 8 + (lane / 16) * 8);
          mma::mma_16816<Element>(o_acc[n], a, b[0], b[1]);
          mma::mma_16816<Element>(o_acc[n + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with V
    if (it + 1 < list_len) issue_v(next_block);
    cp_async_commit();
  }

  // ---- Epilogue: each warp's state to shared memory, then one warp per row combines the key
  // slices and the row's sparse partials and writes o and lse.
  cp_async_wait<0>();
  __syncthreads();
  auto* o_state = reinterpret_cast<float*>(smem);
  float* max_state = o_state + Shape::kWarps * 16 * Shape::kLdState;
  float* sum_state = max_state + Shape::kWarps * 16;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 1);
    row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 2);
    const int state_row = warp * 16 + group + 8 * h;
#pragma unroll
    for (int n = 0; n < kOutTiles; ++n) {
      o_state[state_row * Shape::kLdState + n * 8 + pair * 2] = o_acc[n][2 * h];
      o_state[state_row * Shape::kLdState + n * 8 + pair * 2 + 1] = o_acc[n][2 * h + 1];
    }
    if (pair == 0) {
      max_state[state_row] = row_max[h];
      sum_state[state_row] = row_sum[h];
    }
  }
  __syncthreads();

  // Each lane owns kPerLane contiguous columns, so outputs move in 8-16 byte vectors.
  constexpr int kPerLane = kDv / 32;
  for (int i = warp; i < kRows; i += Shape::kWarps) {
    const int t_local = row_t_local[i];
    if (t_local < 0) continue;
    const int r = chunk * kRows + i;
    const long long token = seq_start + t_local;
    const int head = kv_head * G + r % G;
    const int col0 = lane * kPerLane;
    // The dense part: the kWarpsN slices of row i (warps (i / 16) * kWarpsN + wn).
    const int first_state = (i / 16) * kWarpsN * 16 + i % 16;
    float dense_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarpsN; ++w) dense_max = fmaxf(dense_max, max_state[first_state + w * 16]);
    float acc[kPerLane] = {};
    float dense_sum = 0.0f;
    if (dense_max != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarpsN; ++w) {
        const float weight = exp2f(max_state[first_state + w * 16] - dense_max);
        dense_sum += weight * sum_state[first_state + w * 16];
        const float* state = o_state + (first_state + w * 16) * Shape::kLdState + col0;
#pragma unroll
        for (int c = 0; c < kPerLane; ++c) acc[c] += weight * state[c];
      }
    }
    // Natural-log lse of the dense part; acc becomes its normalised output.
    const float lse = dense_sum > 0.0f ? (dense_max + log2f(dense_sum)) * kLn2 : -INFINITY;
    if (dense_sum > 0.0f) {
      const float inv = 1.0f / dense_sum;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) acc[c] *= inv;
    }
    store_vector<Element, kPerLane>(static_cast<Element*>(p.o) + token * p.o_token_stride + head * p.o_head_stride + col0,
                                    acc);
    if (lane == 0) p.lse[head * p.lse_head_stride + token * p.lse_token_stride] = lse;
  }
}

// Launches the tile kernel: split tiles (every (kv head, tile) of the plan, each in chunks of
// 64 rows) or query-outer (every (kv head, token), in chunks of 16 heads).
template <class Element, int kDqk, int kDv, int kB, bool kQueryOuter>
Status launch_tile(const SlcForwardParams& p, cudaStream_t stream) {
  using Warps = TileWarps<kB, kDv, kQueryOuter>;
  using Shape = TileShape<Element, kDqk, kDv, kB, Warps::kM, Warps::kN>;
  const SlcPlanShape& shape = p.plan.shape;
  const long long rows_per_item = kQueryOuter ? shape.group : static_cast<long long>(kB) * shape.group;
  const long long items = kQueryOuter ? shape.heads_kv * shape.tokens : shape.num_lists();
  const long long ctas = items * ((rows_per_item + Shape::kRows - 1) / Shape::kRows);
  if (ctas == 0) return Status::ok();
  if (ctas > INT32_MAX)
    return FSA_ERROR(StatusCode::kNotImplemented, "slc_attn_forward: " + std::to_string(ctas) +
                                                      " CTAs of the tile kernel exceed the grid limit");
  int device = 0, smem_limit = 0;
  FSA_CUDA_CHECK(cudaGetDevice(&device));
  FSA_CUDA_CHECK(cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (Shape::kBytes > static_cast<std::size_t>(smem_limit))
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "slc_attn_forward: the tile kernel for head dims " + std::to_string(kDqk) + "/" +
                         std::to_string(kDv) + " and block size " + std::to_string(kB) + " needs " +
                         std::to_string(Shape::kBytes) + " bytes of shared memory, the device offers " +
                         std::to_string(smem_limit));
  auto* kernel = slc_tile_kernel<Element, kDqk, kDv, kB, kQueryOuter>;
  FSA_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Shape::kBytes)));
  kernel<<<static_cast<unsigned>(ctas), Shape::kThreads, Shape::kBytes, stream>>>(p);
  FSA_CHECK_LAUNCH("slc_tile_kernel", stream);
  return Status::ok();
}

}  // namespace fsa::cuda::slc
