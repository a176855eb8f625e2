// Block selection of the new tokens over the paged compressed keys, pass 2 of the
// compressed branch: the compressed attention (pass 1, decode_attn_kernel.cuh + merge) gave each
// row its lse; here the probabilities are recomputed tile by tile, summed over the group's heads,
// spread over the selection blocks with the overlap weights into block scores held in shared
// memory, and each token's best candidates kept. No score leaves the chip.
//
// One CTA per (tile of whole tokens of one sequence, kv head g, range of blocks). A tile holds
// tile_tokens tokens, its rows tokens x G heads in chunks of 64 (one chunk up to G = 64). The
// sequence's blocks (up to the tile's last token's) are cut in `ranges` equal ranges of at most
// range_capacity blocks (kScoreFloats / tile_tokens scores fit in shared memory); the CTA of range
// r reads the compressed keys whose windows meet its blocks, scores them and keeps, per token, the
// top min(K, ...) candidates of its range (the non-forced blocks of the token's candidate set, by
// score, ties to the lower block). The global top-K of a token lies in the union of its ranges'
// top-K lists, so decode_topk.cu merging them is exact. More ranges than shared memory needs are
// used when the tiles are few (a decode step of a few sequences), for parallelism.
//
// Sums are in the reference's order: a token's probability of key i is the sum over its heads in
// ascending head order, and a block's score adds w(i, j) * p in ascending i (fmul then fadd, no
// contraction), so scores differ from the reference only through the probabilities' rounding.
#pragma once

#include <cstdint>

#include "cuda/runtime.hpp"
#include "kernels/common/dependent_launch.cuh"
#include "kernels/common/fast_exp.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"
#include "kernels/decode/decode.hpp"
#include "kernels/decode/decode_candidates.cuh"
#include "kernels/decode/decode_paged.cuh"
#include "kernels/decode/decode_params.hpp"
#include "kernels/decode/decode_tiling.hpp"
#include "kernels/flash/flash_tiles.cuh"

namespace fsa::cuda::decode {

constexpr int kSelectThreads = 128;  // 4 warps x 16 rows of a 64-row chunk

template <class Element, int kDqk>
__global__ void __launch_bounds__(kSelectThreads) decode_select_kernel(const __grid_constant__ SelectParams p) {
  common::await_prior_grids();  // before any global access: launched by launch_dependent
  constexpr int kLd = kDqk + kPad;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ const Element* key_rows[kKeys];  // the tile's compressed key rows (null: zeros)

  const BatchInfo& batch = p.batch;
  const int g = blockIdx.y, range = blockIdx.z, G = p.nsa.group;
  const int l = p.nsa.cmp_len, s = p.nsa.cmp_stride, B = p.nsa.block_size, K = p.nsa.topk;
  const int I = p.nsa.init_blocks, L = p.nsa.local_blocks;
  const flash::SeqTile tile =
      flash::find_seq_tile(batch.cu_seqlens, batch.cu_stride, batch.num_seqs, 1, p.tile_tokens, blockIdx.x);
  if (!tile.valid) return;
  const int b = tile.seq;
  const SeqInfo seq = seq_info(batch, b);
  const long long t0 = tile.first;  // the tile's first token, local to the sequence
  const int tokens = static_cast<int>(min(static_cast<long long>(p.tile_tokens), seq.new_tokens - t0));
  const long long pos_last = seq.cached + t0 + tokens - 1;

  // This range's blocks [j0, j1) of the tile's blocks [0, bq(last token)].
  const BlockRange blocks = block_range(pos_last / B + 1, p.ranges, p.range_capacity, range);
  const long long j0 = blocks.first, j1 = blocks.end;
  const int range_blocks = static_cast<int>(j1 - j0);
  // The compressed keys that meet them: [key_lo, key_hi), within those visible to the last token.
  const long long visible_last = visible_count(pos_last, l, s);
  const long long key_lo = j1 > j0 ? first_key_of_block(j0, l, s, B) : 0;
  const long long key_hi = j1 > j0 ? min(end_key_of_block(j1 - 1, s, B), visible_last) : 0;

  const int rows = p.row_chunks * kRows;
  const SelectSmem layout(kDqk, p.row_chunks, p.tile_tokens, p.range_capacity);
  auto* q_s = reinterpret_cast<Element*>(smem + layout.q);
  auto* k_s = reinterpret_cast<Element*>(smem + layout.k);
  auto* prob_s = reinterpret_cast<float*>(smem + layout.prob);
  auto* token_prob_s = reinterpret_cast<float*>(smem + layout.token_prob);
  auto* score_s = reinterpret_cast<float*>(smem + layout.scores);
  auto* bias_s = reinterpret_cast<float*>(smem + layout.row_bias);
  auto* visible_s = reinterpret_cast<int*>(smem + layout.row_visible);
  auto* q_offset_s = reinterpret_cast<long long*>(smem + layout.q_offset);

  // Rows tt * G + h: token tt of the tile, head g*G + h; only the heads that select take part.
  for (int r = threadIdx.x; r < rows; r += kSelectThreads) {
    const int tt = r / G, h = r % G;
    const bool valid = tt < tokens && h < p.nsa.heads_used;
    const long long token = seq.row0 + t0 + tt;
    const int head = g * G + h;
    q_offset_s[r] = valid ? token * p.q_token_stride + head * p.q_head_stride : -1;
    const float lse = valid ? p.lse[head * p.lse_head_stride + token * p.lse_token_stride] : 0.0f;
    bias_s[r] = lse * common::kLog2e;
    visible_s[r] = valid ? static_cast<int>(visible_count(seq.cached + t0 + tt, l, s)) : 0;
  }
  for (int i = threadIdx.x; i < tokens * range_blocks; i += kSelectThreads) score_s[i] = 0.0f;
  __syncthreads();
  const auto* q = static_cast<const Element*>(p.q);
  for (int chunk = 0; chunk < p.row_chunks; ++chunk)
    common::copy_tile_async<kRows, kDqk, kSelectThreads>(
        q_s + chunk * kRows * kLd, kLd, [&](int r) -> const Element* {
          const long long offset = q_offset_s[chunk * kRows + r];
          return offset >= 0 ? q + offset : nullptr;
        });
  common::cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
  const float scale_log2 = p.nsa.scale * common::kLog2e;
  for (long long k0 = key_lo; k0 < key_hi; k0 += kKeys) {
    __syncthreads();  // the previous tile's K~, probabilities and key rows are no longer read
    if (threadIdx.x < kKeys) {
      const long long i = k0 + threadIdx.x;
      const PageRow at = i < key_hi ? locate(p.cmp_block_table, p.k_cmp_pages, b, i) : PageRow{-1, 0};
      key_rows[threadIdx.x] = pool_row<const Element>(p.k_cmp_pages, at, g);  // once per row, not per vector
    }
    for (int i = threadIdx.x; i < tokens * kLdProb; i += kSelectThreads) token_prob_s[i] = 0.0f;
    __syncthreads();
    copy_rows_async<kKeys, kDqk, kSelectThreads>(k_s, kLd, key_rows);
    common::cp_async_commit();
    common::cp_async_wait<0>();
    __syncthreads();

    for (int chunk = 0; chunk < p.row_chunks; ++chunk) {
      // Probabilities of this warp's 16 rows of the chunk: p = 2^(s * scale * log2 e - lse * log2 e)
      // for keys the row's token sees (and that meet the range), else 0.
      float sc[kKeys / 8][4];
      common::zero_acc<kKeys>(sc);
      common::warp_tile_mma<Element, kDqk, kKeys, false, false, 2>(sc, q_s + chunk * kRows * kLd, kLd, warp * 16,
                                                                   k_s, kLd, 0);
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = warp * 16 + group + 8 * (e / 2), column = n * 8 + 2 * pair + (e & 1);
          const long long i = k0 + column;
          const int rr = chunk * kRows + r;
          const bool seen = i < visible_s[rr] && i < key_hi;
          // REVIEW: fast_exp2 (ex2.approx, flushes denormals) where the reference uses exp: a block
          // whose keys all have probabilities below ~1e-38 scores exactly 0 here and a denormal on
          // the CPU, which can reorder near-zero candidates (only a tie-aware compare accepts it).
          prob_s[r * kLdProb + column] = seen ? common::fast_exp2(fmaf(sc[n][e], scale_log2, -bias_s[rr])) : 0.0f;
        }
      __syncthreads();
      // Per token, the sum over its heads of this chunk, in ascending head order.
      for (int idx = threadIdx.x; idx < tokens * kKeys; idx += kSelectThreads) {
        const int tt = idx / kKeys, column = idx % kKeys;
        const int first = max(tt * G, chunk * kRows), end = min(tt * G + p.nsa.heads_used, (chunk + 1) * kRows);
        float sum = token_prob_s[tt * kLdProb + column];
        for (int rr = first; rr < end; ++rr) sum += prob_s[(rr - chunk * kRows) * kLdProb + column];
        token_prob_s[tt * kLdProb + column] = sum;
      }
      __syncthreads();  // prob_s is rewritten by the next chunk
    }

    // Block scores: each (token, block) of the range that this key tile touches, one owner thread.
    const long long tile_end = min(k0 + kKeys, key_hi);
    const long long jt_lo = max(j0, k0 * s / B);
    const long long jt_hi = min(j1 - 1, ((tile_end - 1) * s + l - 1) / B);
    const int touched = jt_hi >= jt_lo ? static_cast<int>(jt_hi - jt_lo + 1) : 0;
    // In units of s relative to the tile's first key (unit_overlap, as the fused route): key k0 + i
    // covers [i, i + l / s), block j covers [block_lo, block_lo + B / s); 32-bit, no division per key.
    const int Ls = l / s, Bs = B / s, keys_in_tile = static_cast<int>(tile_end - k0);
    for (int idx = threadIdx.x; idx < tokens * touched; idx += kSelectThreads) {
      const int tt = idx / touched;
      const long long j = jt_lo + idx % touched;
      const int block_lo = static_cast<int>(j * Bs - k0);
      const int i_begin = max(0, block_lo - Ls + 1), i_end = min(keys_in_tile, block_lo + Bs);
      float score = score_s[tt * range_blocks + (j - j0)];
      for (int i = i_begin; i < i_end; ++i)
        score = __fadd_rn(score, __fmul_rn(static_cast<float>(unit_overlap(i, block_lo, Ls, Bs)),
                                           token_prob_s[tt * kLdProb + i]));
      score_s[tt * range_blocks + (j - j0)] = score;
    }
  }
  common::cp_async_wait<0>();  // the Q copies, when no key tile ran
  __syncthreads();

  // Per token (one warp each): the range's best min(capacity, candidates) non-forced candidates,
  // best first, then empty entries.
  for (int tt = warp; tt < tokens; tt += kSelectThreads / 32) {
    const long long token = seq.row0 + t0 + tt;
    const int bq = static_cast<int>((seq.cached + t0 + tt) / B);
    Candidate* list = p.candidates + ((static_cast<long long>(g) * batch.tokens + token) * p.ranges + range) * K;
    keep_range_candidates(score_s + tt * range_blocks, range_blocks, static_cast<int>(j0), bq, K, I, L, list);
  }
}

// One CTA per (selection tile, kv head, block range).
template <class Element, int kDqk>
Status launch_decode_select(const SelectParams& p, cudaStream_t stream) {
  if (p.batch.tokens == 0 || p.batch.num_seqs == 0) return Status::ok();
  const std::size_t smem = SelectSmem(kDqk, p.row_chunks, p.tile_tokens, p.range_capacity).bytes;
  auto* kernel = decode_select_kernel<Element, kDqk>;
  FSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const long long tiles = p.batch.tokens / p.tile_tokens + p.batch.num_seqs;
  if (tiles > 0x7fffffffLL)
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "q: nsa_prefill: " + std::to_string(tiles) + " selection tiles exceed the grid limit");
  return common::launch_dependent<&decode_select_kernel<Element, kDqk>>(
      "decode_select_kernel", dim3(static_cast<unsigned>(tiles), p.nsa.heads_kv, p.ranges), kSelectThreads, smem,
      stream, p);
}

}  // namespace fsa::cuda::decode
