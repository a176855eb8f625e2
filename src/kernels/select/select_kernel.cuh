// Fused block selection (spec section 4): compressed-attention probabilities recomputed tile by
// tile, summed over the group's heads, spread over the selection blocks with the overlap weights,
// and a running top-K per token, all on chip. Global memory holds only the inputs and topk_idx.
//
// One CTA per (tile of tokens_per_cta tokens of one sequence, kv head g), 4 warps. For each tile of
// 64 compressed keys visible to the CTA's last token:
//   1. S = Q K^T on tensor cores for the query rows (tokens x heads_used, 16 per warp), and
//      p = exp(scale * S - lse) where visible (i*s + l - 1 <= t), summed per token in shared memory;
//   2. each (token, key) adds w(i, j) * p to the scores of the blocks j it overlaps, kept in a
//      per-token ring of the blocks still receiving keys;
//   3. blocks that no later key can reach are final: a warp per token offers them to the token's
//      top-K (a set of (score, block) ordered by score, then lower block first) and frees the slots.
// Forced blocks (the first I, the last L up to bq) are never offered; they join the chosen ones at
// the end, and the union is written ascending by rank, then -1 padding.
#pragma once

#include <climits>
#include <string>

#include "cuda/runtime.hpp"
#include "kernels/cmp_attn/cmp_attn_common.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"
#include "kernels/select/select_params.hpp"

namespace fsa::cuda::sel {

constexpr int kThreads = 128;
constexpr int kRows = 64;  // query rows per S tile: 4 warps x 16
constexpr int kKeys = 64;  // compressed keys per tile
constexpr int kMaxTokens = 64;
constexpr int kMaxTopk = 64;  // two chosen slots per lane (ChosenSlots)

// Dynamic shared memory, laid out from runtime sizes (tokens per CTA, ring slots, K) identically
// on host and device.
template <class Element, int kDqk>
struct SelectSmem {
  static constexpr int kLd = kDqk + common::kPadHalf;
  static constexpr int kLdProb = kKeys + 1;
  std::size_t q_offset = 0, k_offset, prob_offset, ring_offset, score_offset, index_offset, bytes;

  __host__ __device__ SelectSmem(int tokens, int ring_slots, int topk) {
    k_offset = q_offset + common::align_up(sizeof(Element) * kRows * kLd);
    prob_offset = k_offset + common::align_up(sizeof(Element) * kKeys * kLd);
    ring_offset = prob_offset + common::align_up(sizeof(float) * tokens * kLdProb);
    score_offset = ring_offset + common::align_up(sizeof(float) * tokens * ring_slots);
    index_offset = score_offset + common::align_up(sizeof(float) * tokens * topk);
    bytes = index_offset + common::align_up(sizeof(int) * tokens * topk);
  }
};

// The total order of candidates: higher score first, then lower block index.
__device__ __forceinline__ bool ranks_before(float score_a, int block_a, float score_b, int block_b) {
  return score_a > score_b || (score_a == score_b && block_a < block_b);
}

// A token's chosen set lives in registers while its warp offers it blocks: lane c holds slots c
// and c + 32 (K <= 64), and in shared memory between offers (each lane writes back its own slots,
// so no lane ever reads another's without the warp barrier that ends the token).
struct ChosenSlots {
  float score[2];
  int block[2];
};

// The last-ranked entry of a token's chosen set [0, capacity), over the warp. Selects instead of
// branches: branches around the shuffles made ptxas spill (sm_80 and sm_90a, Dqk = 128).
struct Worst {
  float score;
  int block;
  int slot;
};

// The entries must be pairwise distinct in (score, block), or lanes may end on different slots.
__device__ __forceinline__ Worst find_worst(const ChosenSlots& mine, int capacity) {
  const int lane = threadIdx.x % 32;
  Worst w{INFINITY, -1, -1};
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int slot = lane + 32 * i;
    const bool replace = slot < capacity && (w.slot < 0 || ranks_before(w.score, w.block, mine.score[i], mine.block[i]));
    w.score = replace ? mine.score[i] : w.score;
    w.block = replace ? mine.block[i] : w.block;
    w.slot = replace ? slot : w.slot;
  }
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) {
    const Worst other{__shfl_xor_sync(0xffffffffu, w.score, mask), __shfl_xor_sync(0xffffffffu, w.block, mask),
                      __shfl_xor_sync(0xffffffffu, w.slot, mask)};
    const bool replace = w.slot < 0 || (other.slot >= 0 && ranks_before(w.score, w.block, other.score, other.block));
    w.score = replace ? other.score : w.score;
    w.block = replace ? other.block : w.block;
    w.slot = replace ? other.slot : w.slot;
  }
  return w;
}

// Blocks a token chooses beyond the forced ones: min(K, bq + 1) - |F|.
__device__ __forceinline__ int forced_head(int bq, int init_blocks) { return min(init_blocks, bq + 1); }
__device__ __forceinline__ int forced_tail_start(int bq, int init_blocks, int local_blocks) {
  return max(init_blocks, bq - local_blocks + 1);
}
__device__ __forceinline__ int forced_count(int bq, int init_blocks, int local_blocks) {
  return forced_head(bq, init_blocks) + max(0, bq - forced_tail_start(bq, init_blocks, local_blocks) + 1);
}

// Offers blocks [j_begin, j_end) (final: no more keys reach them) to the chosen set of every
// token of the CTA (a warp per token) and frees their ring slots.
__device__ __forceinline__ void finalize_blocks(const SelectParams& p, long long first_token, int tokens, float* ring_s,
                                                float* score_s, int* block_s, int j_begin, int j_end) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, K = p.topk_width, R = p.ring_slots;
  for (int tok = warp; tok < tokens; tok += kThreads / 32) {
    const int bq = static_cast<int>((first_token + tok) / p.block_size);
    const int capacity = min(K, bq + 1) - forced_count(bq, p.init_blocks, p.local_blocks);
    float* scores = score_s + tok * K;
    int* blocks = block_s + tok * K;
    ChosenSlots mine;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int slot = lane + 32 * i;
      mine.score[i] = slot < capacity ? scores[slot] : -INFINITY;
      mine.block[i] = slot < capacity ? blocks[slot] : INT_MAX;
    }
    Worst worst = find_worst(mine, capacity);
    for (int j0 = j_begin; j0 < j_end; j0 += 32) {
      const int j = j0 + lane;
      float score = -INFINITY;
      bool candidate = false;
      if (j < j_end) {
        float* slot = ring_s + tok * R + j % R;
        score = *slot;
        *slot = 0.0f;
        if (isnan(score)) score = -INFINITY;  // a NaN ranks lowest, as in the reference
        candidate = capacity > 0 && j <= bq && j >= p.init_blocks && j <= bq - p.local_blocks;
      }
      unsigned offers = __ballot_sync(0xffffffffu, candidate && ranks_before(score, j, worst.score, worst.block));
      while (offers != 0) {
        const int src = __ffs(offers) - 1;
        offers &= offers - 1;
        const float offer_score = __shfl_sync(0xffffffffu, score, src);
        const int offer_block = __shfl_sync(0xffffffffu, j, src);
        // The offer may no longer beat the worst (it improved meanwhile). Written without a branch
        // around the shuffles: a divergent region here made ptxas spill on sm_90a.
        const bool take = ranks_before(offer_score, offer_block, worst.score, worst.block);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const bool mine_slot = take && worst.slot == lane + 32 * i;
          mine.score[i] = mine_slot ? offer_score : mine.score[i];
          mine.block[i] = mine_slot ? offer_block : mine.block[i];
        }
        worst = find_worst(mine, capacity);
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int slot = lane + 32 * i;
      if (slot < capacity) {
        scores[slot] = mine.score[i];
        blocks[slot] = mine.block[i];
      }
    }
  }
}

template <class Element, int kDqk>
__global__ void __launch_bounds__(kThreads) select_blocks_kernel(const __grid_constant__ SelectParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ long long row_q_offset[kRows];  // -1: padding
  __shared__ int row_token[kRows];           // token of the row in the CTA's tile
  __shared__ float row_lse[kRows];
  __shared__ int row_visible[kRows];
  const SelectSmem<Element, kDqk> layout(p.tokens_per_cta, p.ring_slots, p.topk_width);
  auto* q_s = reinterpret_cast<Element*>(smem + layout.q_offset);
  auto* k_s = reinterpret_cast<Element*>(smem + layout.k_offset);
  auto* prob_s = reinterpret_cast<float*>(smem + layout.prob_offset);
  auto* ring_s = reinterpret_cast<float*>(smem + layout.ring_offset);
  auto* score_s = reinterpret_cast<float*>(smem + layout.score_offset);
  auto* block_s = reinterpret_cast<int*>(smem + layout.index_offset);
  constexpr int kLdProb = SelectSmem<Element, kDqk>::kLdProb;

  const int g = blockIdx.y, G = p.group, used = p.heads_used, K = p.topk_width, R = p.ring_slots;
  const int B = p.block_size, l = p.cmp_len, s = p.cmp_stride;
  const cmp::SeqTile tile = cmp::find_seq_tile(p.cu_seqlens, p.cu_stride, p.num_seqs, 1, p.tokens_per_cta, blockIdx.x);
  if (!tile.valid) return;
  const long long seq_start = p.cu_seqlens[tile.seq * p.cu_stride];
  const long long seq_len = p.cu_seqlens[(tile.seq + 1) * p.cu_stride] - seq_start;
  const long long cmp_start = p.cu_cmp[tile.seq * p.cu_cmp_stride];
  const int tokens = static_cast<int>(min(static_cast<long long>(p.tokens_per_cta), seq_len - tile.first));
  const long long last_t = tile.first + tokens - 1;
  const int keys_total = cmp::visible_count(last_t, l, s);
  const int last_block = static_cast<int>(last_t / B);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;

  // Empty chosen sets and an empty ring. Every empty slot gets its own sentinel block (INT_MAX - idx,
  // above any real block since idx < kMaxTokens * kMaxTopk), so no two entries of a chosen set tie and
  // find_worst's butterfly gives all lanes the same slot. With one shared sentinel each lane kept its
  // own empty slot as the worst and stored the next offer there: that block was chosen twice (equal
  // output ranks, one slot of the row never written) and the block that should have joined was lost.
  for (int idx = threadIdx.x; idx < tokens * K; idx += kThreads) {
    score_s[idx] = -INFINITY;
    block_s[idx] = INT_MAX - idx;
  }
  for (int idx = threadIdx.x; idx < tokens * R; idx += kThreads) ring_s[idx] = 0.0f;

  const int rows = tokens * used;
  const bool single_chunk = rows <= kRows;
  auto load_rows = [&](int chunk) {
    __syncthreads();  // the previous chunk's tables and Q are no longer read
    if (threadIdx.x < kRows) {
      const int r = chunk + threadIdx.x;
      long long offset = -1;
      int tok = 0, visible = 0;
      float lse = 0.0f;
      if (r < rows) {
        tok = r / used;
        const int head = g * G + r % used;
        const long long token = seq_start + tile.first + tok;
        offset = token * p.q_token_stride + head * p.q_head_stride;
        lse = p.lse[head * p.lse_head_stride + token * p.lse_token_stride];
        visible = cmp::visible_count(tile.first + tok, l, s);
      }
      row_q_offset[threadIdx.x] = offset;
      row_token[threadIdx.x] = tok;
      row_lse[threadIdx.x] = lse;
      row_visible[threadIdx.x] = visible;
    }
    __syncthreads();
    const auto* q = static_cast<const Element*>(p.q);
    common::copy_tile_async<kRows, kDqk, kThreads>(q_s, SelectSmem<Element, kDqk>::kLd, [&](int r) -> const Element* {
      return row_q_offset[r] >= 0 ? q + row_q_offset[r] : nullptr;
    });
    common::cp_async_commit();
  };
  if (single_chunk) load_rows(0);

  const auto* k = static_cast<const Element*>(p.k) + g * p.k_head_stride;
  int done = 0;  // blocks below are final
  for (int key0 = 0; key0 < keys_total; key0 += kKeys) {
    __syncthreads();  // the previous tile is done with K and the probability sums
    for (int idx = threadIdx.x; idx < tokens * kLdProb; idx += kThreads) prob_s[idx] = 0.0f;
    common::copy_tile_async<kKeys, kDqk, kThreads>(k_s, SelectSmem<Element, kDqk>::kLd, [&](int r) -> const Element* {
      return key0 + r < keys_total ? k + (cmp_start + key0 + r) * p.k_row_stride : nullptr;
    });
    common::cp_async_commit();
    for (int chunk = 0; chunk < rows; chunk += kRows) {
      if (!single_chunk) load_rows(chunk);
      common::cp_async_wait<0>();
      __syncthreads();
      float sc[kKeys / 8][4];
      common::zero_acc<kKeys>(sc);
      common::warp_tile_mma<Element, kDqk, kKeys, false, false, (kDqk > 128 ? 2 : kDqk / 16)>(
          sc, q_s, SelectSmem<Element, kDqk>::kLd, warp * 16, k_s, SelectSmem<Element, kDqk>::kLd, 0);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = warp * 16 + group + 8 * h;
        if (row_q_offset[r] < 0) continue;
        float* prob_row = prob_s + row_token[r] * kLdProb;
#pragma unroll
        for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int key = j * 8 + 2 * pair + e;
            if (key0 + key < row_visible[r]) atomicAdd(prob_row + key, __expf(sc[j][2 * h + e] * p.scale - row_lse[r]));
          }
      }
      if (!single_chunk) __syncthreads();  // Q is reloaded by the next chunk
    }
    __syncthreads();
    // Spread each (token, key) probability over the blocks its window overlaps.
    for (int idx = threadIdx.x; idx < tokens * kKeys; idx += kThreads) {
      const int tok = idx / kKeys, key = idx % kKeys;
      const int i = key0 + key;
      const float prob = prob_s[tok * kLdProb + key];
      if (i >= keys_total || prob == 0.0f) continue;
      const int begin = i * s, end = i * s + l;
      for (int j = begin / B; j * B < end; ++j) {
        const int overlap = min(end, (j + 1) * B) - max(begin, j * B);
        atomicAdd(ring_s + tok * R + j % R, static_cast<float>(overlap) / static_cast<float>(s) * prob);
      }
    }
    __syncthreads();
    // Block j's last key is (j + 1) * B / s - 1: blocks below (key0 + kKeys) * s / B are final.
    const int final_end = min(last_block + 1, (key0 + kKeys) * s / B);
    finalize_blocks(p, tile.first, tokens, ring_s, score_s, block_s, done, final_end);
    done = final_end;
  }
  common::cp_async_wait<0>();
  __syncthreads();
  finalize_blocks(p, tile.first, tokens, ring_s, score_s, block_s, done, last_block + 1);
  __syncwarp();

  // Chosen plus forced blocks, ascending: each value's rank is the count of smaller ones.
  auto* out = p.topk + g * p.topk_head_stride;
  for (int tok = warp; tok < tokens; tok += kThreads / 32) {
    const long long t = tile.first + tok;
    const int bq = static_cast<int>(t / B);
    const int head_end = forced_head(bq, p.init_blocks);
    const int tail_start = forced_tail_start(bq, p.init_blocks, p.local_blocks);
    const int forced = forced_count(bq, p.init_blocks, p.local_blocks);
    const int total = min(K, bq + 1);
    const int capacity = total - forced;
    const int* blocks = block_s + tok * K;
    int* row = out + (seq_start + t) * p.topk_token_stride;
    for (int u = lane; u < K; u += 32) {
      if (u >= total) {
        row[u] = -1;
        continue;
      }
      const int f = u - capacity;
      const int value = u < capacity ? blocks[u] : (f < head_end ? f : tail_start + (f - head_end));
      int rank = min(value, head_end) + max(0, min(value, bq + 1) - tail_start);
      for (int c = 0; c < capacity; ++c) rank += blocks[c] < value ? 1 : 0;
      row[rank] = value;
    }
  }
}

}  // namespace fsa::cuda::sel

namespace fsa::cuda {

template <class Element, int kDqk>
Status launch_select_blocks(const SelectParams& p, cudaStream_t stream) {
  if (p.tokens == 0 || p.num_seqs == 0 || p.heads_kv == 0) return Status::ok();
  const sel::SelectSmem<Element, kDqk> layout(p.tokens_per_cta, p.ring_slots, p.topk_width);
  auto* kernel = sel::select_blocks_kernel<Element, kDqk>;
  FSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(layout.bytes)));
  const long long tiles = p.tokens / p.tokens_per_cta + p.num_seqs;
  if (tiles > 0x7fffffffLL)
    return FSA_ERROR(StatusCode::kNotImplemented, "select_blocks: " + std::to_string(tiles) + " token tiles exceed the grid limit");
  kernel<<<dim3(static_cast<unsigned>(tiles), p.heads_kv), sel::kThreads, layout.bytes, stream>>>(p);
  FSA_CHECK_LAUNCH("select_blocks_kernel", stream);
  return Status::ok();
}

}  // namespace fsa::cuda
