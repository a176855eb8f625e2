// Fused block selection (docs/semantics.md section 4): compressed-attention probabilities
// recomputed tile by tile, summed over the group's heads, spread over the selection blocks with the
// overlap weights, and a running top-K per token, all on chip. Global memory holds only the inputs
// and topk_idx. No float atomics: every sum has one owner and a fixed order, so topk_idx is bitwise
// reproducible.
//
// One CTA per (tile of tokens of one sequence, kv head g), 8 warps; the row layout and the split
// of the group's heads over warps are select_tiling.hpp's. Per tile of 64 compressed keys visible
// to the CTA's last token (Q resident in shared memory when it fits, else reloaded in chunks; one
// K~ stage, copied with cp.async while phases B and C of the tile run):
//   A. S = Q K~^T on tensor cores for all of the CTA's query rows against the one K~ tile, and
//      p = exp2(S * scale * log2 e - lse * log2 e) (masked by i*s + l - 1 <= t only in the tiles
//      that reach past the first token's visible keys), summed over the token's heads in the
//      registers of the thread that holds its rows (heads 2m, then 2m + 1, m ascending): one
//      float per (part, token, key) in shared memory, the parts added in part order in B;
//   B. the 16 lanes that own a token for the CTA's lifetime continue the scores of the blocks the
//      tile touches, S[j] += w(i, j) * p[i] over the tile's keys in ascending i (the reference's
//      order and weights), from the value carried in the token's ring of open blocks (default
//      geometry B = 4 s, l = 2 s: one block per lane from a float4 of sums and a shuffle); a final
//      candidate that beats the token's K-th best is appended to its buffer of pending offers;
//   C. the owning warp merges a token's buffer into its list, kept sorted (higher score first, then
//      lower block), when the buffer could not take another tile's offers: a few offers one by one
//      (ranks by ballot, one scatter: merge_offers), more by a bitonic network (merge_sorted). The
//      chosen set is the top of a strict total order, whatever order the offers come in.
// After the last tile the blocks no tile closed are offered, then each row is written ascending
// (chosen plus forced blocks, rank = count of smaller values), then -1 padding.
//
// nsa_prefill's long chunks run the same kernel (SelectParams::prefix): the CTA's tokens sit after
// the sequence's cached prefix, the compressed keys gathered out of the cache into rows.
//
// The pieces, one header each: select_seq_tile.cuh (the CTA's tile of tokens),
// select_operand_loads.cuh (Q rows and K~ tiles into shared memory), select_phase_scores.cuh
// (phase A's products and probabilities), select_topk_merge.cuh (phase C's merges); phase B and the
// final rows are in the body below. The launcher is select_launch_impl.cuh.
#pragma once

#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/common/fast_exp.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/wgmma_sm90.cuh"
#include "kernels/select/select_operand_loads.cuh"
#include "kernels/select/select_params.hpp"
#include "kernels/select/select_phase_scores.cuh"
#include "kernels/select/select_seq_tile.cuh"
#include "kernels/select/select_tiling.hpp"
#include "kernels/select/select_topk_merge.cuh"

namespace fsa::cuda::sel {

using common::kLog2e;

// The kernel's body (select_blocks_kernel below). kWgmma (sm_90a, two CTAs per SM): phase A's
// products by wgmma from swizzled Q and K~ tiles.
template <class Element, int kDqk, int kCtasPerSm, bool kWgmma>
__device__ __forceinline__ void select_blocks(const SelectParams& p) {
  // kCtasPerSm == 1: two m-tiles per K~ B fragment (up to ~200 registers); 2: one at a time (128).
  constexpr bool kPairs = kCtasPerSm == 1;
  static_assert(!(kWgmma && kPairs), "the wgmma variant runs one m-tile per warp and round");
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  // The swizzle is a function of the address bits: the wgmma variant's tiles start on 1024 bytes.
  unsigned char* smem = kWgmma ? wgmma::swizzle_aligned(smem_raw) : smem_raw;
  const SelectShape& sh = p.shape;
  const SelectSmem& layout = p.layout;
  auto* q_s = reinterpret_cast<Element*>(smem + layout.q);
  auto* k_s = reinterpret_cast<Element*>(smem + layout.k);
  auto* prob_s = reinterpret_cast<float*>(smem + layout.prob);
  auto* ring_s = reinterpret_cast<float*>(smem + layout.ring);
  auto* top_s = reinterpret_cast<TopEntry*>(smem + layout.top);
  auto* pending_s = reinterpret_cast<TopEntry*>(smem + layout.pending);
  auto* row_offset_s = reinterpret_cast<long long*>(smem + layout.row_offset);
  auto* row_bias_s = reinterpret_cast<float*>(smem + layout.row_bias);
  auto* weight_s = reinterpret_cast<float*>(smem + layout.weight);
  auto* cap_s = reinterpret_cast<int*>(smem + layout.capacity);
  auto* worst_s = reinterpret_cast<TopEntry*>(smem + layout.worst);
  auto* pending_count_s = reinterpret_cast<int*>(smem + layout.pending_count);
  constexpr int kLd = kDqk + kPadHalf;

  const int g = blockIdx.y, K = p.topk_width, R = sh.ring_slots, T = sh.tokens_per_cta;
  const int B = p.block_size, l = p.cmp_len, s = p.cmp_stride, I = p.init_blocks, L = p.local_blocks;
  const SeqTile tile = find_seq_tile(p.cu_seqlens, p.cu_stride, p.num_seqs, T, blockIdx.x);
  if (!tile.valid) return;
  const long long seq_start = p.cu_seqlens[tile.seq * p.cu_stride];
  const long long seq_len = p.cu_seqlens[(tile.seq + 1) * p.cu_stride] - seq_start;
  const long long cmp_start = p.cu_cmp[tile.seq * p.cu_cmp_stride];
  const int tokens = static_cast<int>(min(static_cast<long long>(T), seq_len - tile.first));
  // Positions are below 2^31 (int32 cu_seqlens and cache lengths); s and B are powers of two (B is
  // 32, 64 or 128 and s divides it), so block and key arithmetic is 32-bit shifts.
  const int first_pos = static_cast<int>(common::prefix_of(p.prefix, tile.seq) + tile.first);
  const int s_shift = __ffs(s) - 1, b_shift = __ffs(B) - 1;
  const int windows = l >> s_shift;  // c = l / s
  const int keys_total = visible_count(first_pos + tokens - 1, l, s);
  const int key_tiles = (keys_total + kKeys - 1) / kKeys;
  const int chunks = (sh.rounds + sh.rounds_per_chunk - 1) / sh.rounds_per_chunk;
  const bool q_resident = chunks == 1;
  const int q_rows = sh.rounds_per_chunk * kWarps * 16;  // rows of the Q tile in shared memory

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, grp = lane / 4, pair = lane % 4;
  // The wgmma variant's warpgroup through a shuffle: visibly warp-uniform, so that the Q descriptors
  // derived from it are computed in uniform registers, not moved there before every wgmma.
  const int warpgroup = __shfl_sync(kFullMask, threadIdx.x / 128, 0);
  const int my_group = warp / sh.parts, my_part = warp % sh.parts;
  // Phase A: this thread's S rows `grp` and `grp + 8` belong to tokens tok_lo and tok_hi (equal
  // unless rows are tokens).
  const bool rows_are_tokens = sh.tokens_per_mtile == 16;
  const int tok_lo = my_group * sh.tokens_per_mtile + grp;
  const int tok_hi = rows_are_tokens ? tok_lo + 8 : tok_lo;
  const int visible_lo = tok_lo < tokens ? visible_count(first_pos + tok_lo, l, s) : 0;
  const int visible_hi = tok_hi < tokens ? visible_count(first_pos + tok_hi, l, s) : 0;
  const int visible_first = visible_count(first_pos, l, s);
  const float scale_log2 = p.scale * kLog2e;
  // Where this thread's head sums of rows tok_lo / tok_hi go (key 8n + 2 pair at + 8n).
  const int sum_lo_index = (my_part * T + tok_lo) * kLdProb + 2 * pair;
  const int sum_hi_index = (my_part * T + tok_hi) * kLdProb + 2 * pair;
  // Phases B and C: token t belongs to half-warp t % 16 (lanes 16 (t % 2) + u of warp (t % 16) / 2),
  // the same for every tile; T > 16 tokens take rounds t / 16. The token's 16 lanes sum its blocks
  // of the tile and append the final candidates that beat the list's K-th best (worst_s) to its
  // buffer of pending offers (pending_s, pending_count_s); the warp merges a token's buffer into
  // its list when it could not take another tile's offers.
  const int half = lane / 16, u = lane % 16;
  const int token_rounds = (T + 15) / 16;
  const int pending_limit = sh.pending_slots - sh.max_offers;  // merge above this: room for one more tile
  // The default geometry (B = 4 s, l = 2 s): block j of the tile is keys 4j - 1 .. 4j + 3 relative to
  // it with weights 1, 2, 2, 2, 1, one block per lane (the tile closes 16); else a loop per block.
  const bool fast_blocks = B == 4 * s && l == 2 * s;

  for (int idx = threadIdx.x; idx < T * K; idx += kThreads) top_s[idx] = {-INFINITY, INT_MAX};
  for (int k = threadIdx.x; k < sh.block_keys; k += kThreads) weight_s[k] = static_cast<float>(block_weight(k, l, s, B));
  for (int t = threadIdx.x; t < T; t += kThreads) {
    const int cap = chosen_capacity((first_pos + t) >> b_shift, K, I, L);
    cap_s[t] = cap;
    worst_s[t] = cap > 0 ? TopEntry{-INFINITY, INT_MAX} : TopEntry{INFINITY, -1};  // (+inf, -1): beaten by none
    pending_count_s[t] = 0;
  }
  __syncthreads();  // the per-token tables, read by other threads even when no key tile runs

  const auto* k_head = static_cast<const Element*>(p.k) + g * p.k_head_stride + cmp_start * p.k_row_stride;
  const long long token0 = seq_start + tile.first;  // global row of the CTA's token 0
  if (q_resident) load_q_chunk<Element, kDqk, kWgmma>(p, 0, g, token0, tokens, q_s, row_offset_s, row_bias_s);
  auto load_keys = [&](int key0) { load_k_tile<Element, kDqk, kWgmma>(k_head, p.k_row_stride, key0, keys_total, k_s); };
  if (key_tiles > 0) load_keys(0);
  common::cp_async_commit();

  int ring_base = 0, ring_j_lo = 0;  // block ring_j_lo's ring slot (tile 0: block 0, slot 0)
  for (int kt = 0; kt < key_tiles; ++kt) {
    const int key0 = kt * kKeys;
    common::cp_async_wait<0>();
    if constexpr (kWgmma) wgmma::fence_async_shared();  // the copies and zero fills, before wgmma reads
    __syncthreads();  // K~ tile kt (and Q) landed; phase C of tile kt - 1 is done

    // ---- A: probabilities, summed over the heads of each token ----
    const bool masked = key0 + kKeys > visible_first;
    const int limit_lo = visible_lo - key0, limit_hi = visible_hi - key0;
    // This thread's rows of Q slot `slot`: their lse * log2 e (row_bias_s). The wgmma paths read
    // them before waiting for the products, so that the loads' latency hides under the wait.
    auto bias_of = [&](int slot) { return make_float2(row_bias_s[slot * 16 + grp], row_bias_s[slot * 16 + grp + 8]); };
    // Probabilities of an m-tile with row biases `bias`, in place; the mask only in the tiles that
    // reach past the first token's visible keys.
    auto probs = [&](float (&acc)[kKeys / 8][4], float2 bias) {
      if (masked) {
        to_probs<true>(acc, scale_log2, bias.x, bias.y, limit_lo, limit_hi);
      } else {
        to_probs<false>(acc, scale_log2, bias.x, bias.y, limit_lo, limit_hi);
      }
    };
    // This thread's sums (rows grp, grp + 8) into its part's rows of prob_s: two tokens, or the
    // token's even heads plus its odd heads.
    auto store_sums = [&](const float (&sum)[kKeys / 8][4]) {
      // On sm_80 the two row addresses pass through an opaque move: otherwise the compiler hoists
      // all 2 x 8 column addresses out of the key-tile loop, and at 128 registers (two CTAs per
      // SM) it spilled them (48-56 B); here they are one base and immediate offsets. Not on sm_90a,
      // which did not spill without the move and spills 8 B with it at Dqk = 192.
      int lo_index = sum_lo_index, hi_index = sum_hi_index;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
      asm volatile("mov.b32 %0, %0;" : "+r"(lo_index));
      asm volatile("mov.b32 %0, %0;" : "+r"(hi_index));
#endif
      float* const sum_lo = prob_s + lo_index;
      float* const sum_hi = prob_s + hi_index;
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) {
        if (rows_are_tokens) {
          *reinterpret_cast<float2*>(sum_lo + n * 8) = make_float2(sum[n][0], sum[n][1]);
          *reinterpret_cast<float2*>(sum_hi + n * 8) = make_float2(sum[n][2], sum[n][3]);
        } else {
          *reinterpret_cast<float2*>(sum_lo + n * 8) = make_float2(sum[n][0] + sum[n][2], sum[n][1] + sum[n][3]);
        }
      }
    };
    if (sh.rounds == 1 && q_resident) {  // one m-tile per warp: no running sum
      float acc[kKeys / 8][4];
      if constexpr (kWgmma) qk_wgmma_issue<Element, kDqk>(acc, q_s, q_rows, warpgroup * 64, k_s);  // all 4 warps
      const float2 bias = bias_of(warp);
      if constexpr (kWgmma) {
        wgmma::wait_group<0>();
        wgmma::fence_operands<kKeys>(acc);
      }
      if (my_part < sh.mtiles_per_group) {
        if constexpr (!kWgmma) qk_tiles<Element, kDqk, false>(acc, acc, q_s + warp * 16 * kLd, q_s, k_s);
        probs(acc, bias);
        store_sums(acc);
      }
    } else if (kWgmma && sh.rounds == 2 && q_resident) {
      // Two m-tiles per warp (G = 9..16): both rounds' products issued at once, the first round's
      // probabilities computed while the second's run; acc0 becomes the sum (0 + p0 + p1 = p0 + p1,
      // the general path's value).
      float acc0[kKeys / 8][4], acc1[kKeys / 8][4];
      qk_wgmma_issue<Element, kDqk>(acc0, q_s, q_rows, warpgroup * 64, k_s);
      qk_wgmma_issue<Element, kDqk>(acc1, q_s, q_rows, kWarps * 16 + warpgroup * 64, k_s);
      const float2 bias0 = bias_of(warp), bias1 = bias_of(kWarps + warp);
      wgmma::wait_group<1>();
      wgmma::fence_operands<kKeys>(acc0);
      probs(acc0, bias0);
      wgmma::wait_group<0>();
      wgmma::fence_operands<kKeys>(acc1);
      probs(acc1, bias1);
      if (my_part < sh.active_parts) {
#pragma unroll
        for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc0[n][c] += acc1[n][c];
        store_sums(acc0);
      }
    } else {
      float sum[kKeys / 8][4];
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) sum[n][0] = sum[n][1] = sum[n][2] = sum[n][3] = 0.0f;
      for (int chunk = 0; chunk < chunks; ++chunk) {
        if (!q_resident) {
          __syncthreads();  // the previous chunk's rows and tables are no longer read
          load_q_chunk<Element, kDqk, kWgmma>(p, chunk, g, token0, tokens, q_s, row_offset_s, row_bias_s);
          common::cp_async_commit();
          common::cp_async_wait<0>();
          if constexpr (kWgmma) wgmma::fence_async_shared();
          __syncthreads();
        }
        const int round_begin = chunk * sh.rounds_per_chunk;
        const int round_end = min(sh.rounds, round_begin + sh.rounds_per_chunk);
        for (int round = round_begin; round < round_end; round += kPairs ? 2 : 1) {
          // Later rounds have no m-tile for this warp either. The wgmma variant runs every round in
          // all 4 warps of a group (its padding rows are zero with probability 0: load_q_chunk).
          if (!kWgmma && round * sh.parts + my_part >= sh.mtiles_per_group) break;
          const bool two =
              kPairs && round + 1 < round_end && (round + 1) * sh.parts + my_part < sh.mtiles_per_group;
          const int slot0 = (round - round_begin) * kWarps + warp, slot1 = slot0 + kWarps;
          float acc0[kKeys / 8][4], acc1[kKeys / 8][4];
          if constexpr (kWgmma) {
            qk_wgmma<Element, kDqk>(acc0, q_s, q_rows, (round - round_begin) * kWarps * 16 + warpgroup * 64, k_s);
          } else if (two) {
            qk_tiles<Element, kDqk, kPairs>(acc0, acc1, q_s + slot0 * 16 * kLd, q_s + slot1 * 16 * kLd, k_s);
          } else {
            qk_tiles<Element, kDqk, false>(acc0, acc1, q_s + slot0 * 16 * kLd, q_s, k_s);
          }
          probs(acc0, bias_of(slot0));
#pragma unroll
          for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) sum[n][c] += acc0[n][c];
          if (kPairs && two) {
            probs(acc1, bias_of(slot1));
#pragma unroll
            for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
              for (int c = 0; c < 4; ++c) sum[n][c] += acc1[n][c];
          }
        }
      }
      if (my_part < sh.active_parts) store_sums(sum);
    }
    __syncthreads();  // sums written; every warp is done with the K~ stage
    if (kt + 1 < key_tiles) load_keys(key0 + kKeys);
    common::cp_async_commit();  // lands while phases B and C run

    // ---- B: each token's 16 lanes sum the blocks the tile touches and offer the final ones ----
    const int j_lo = (key0 << s_shift) >> b_shift;                          // tile_first_block
    const int j_hi = (((key0 + kKeys - 1) << s_shift) + l - 1) >> b_shift;  // tile_last_block
    const int j_final = ((key0 + kKeys) << s_shift) >> b_shift;             // tile_final_end
    const int blocks = j_hi - j_lo + 1;  // <= R; the same for every tile unless B does not divide 64 s
    // Ring slot of block j_lo: j_lo mod R, advanced from the previous tile's (a tile's first block
    // moves by at most ceil(64 s / B) < R), so no division per tile.
    ring_base += j_lo - ring_j_lo;
    ring_base -= ring_base >= R ? R : 0;
    ring_j_lo = j_lo;
    auto ring_slot = [&](int jj) {  // jj < blocks <= R: a tile's blocks have distinct slots
      const int slot = ring_base + jj;
      return slot >= R ? slot - R : slot;
    };
    for (int round = 0; round < token_rounds; ++round) {
      const int t = round * 16 + warp * 2 + half;
      const bool token_ok = t < tokens;
      const int bq = (first_pos + t) >> b_shift;
      const float* probs = prob_s + t * kLdProb;
      float* ring = ring_s + t * R;
      const TopEntry worst = token_ok ? worst_s[t] : TopEntry{INFINITY, -1};
      int count = token_ok ? pending_count_s[t] : 0;
      // Appends this round's offers (at most one per lane) to the token's buffer.
      auto append = [&](bool offer, float score, int j) {
        const unsigned offers = (__ballot_sync(kFullMask, offer) >> (16 * half)) & 0xffffu;
        if (offer) pending_s[t * sh.pending_slots + count + __popc(offers & ((1u << u) - 1))] = {score, j};
        count += __popc(offers);
      };
      auto offers_block = [&](float score, int j) {  // a final candidate that beats the K-th best
        return token_ok && j <= bq && is_candidate(j, bq, I, L) &&
               ranks_before(isnan(score) ? -INFINITY : score, j, worst.score, worst.block);
      };
      if (fast_blocks) {
        // Lane u: keys 4u .. 4u + 3 of the tile (the parts' head sums added in part order) close
        // block j_lo + u, whose first key 4u - 1 is lane u - 1's last, or for u = 0 the previous
        // tile's key 63, carried in the ring as block j_lo's partial sum; key 63 starts block
        // j_lo + 16 (= j_hi). In ascending i with the reference's weights: w * p is exact for w = 1
        // and 2, so each fma is the reference's mul then add.
        float4 p4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (token_ok) p4 = *reinterpret_cast<const float4*>(probs + 4 * u);
        for (int part = 1; part < sh.active_parts && token_ok; ++part) {
          const float4 v = *reinterpret_cast<const float4*>(probs + part * T * kLdProb + 4 * u);
          p4.x += v.x;
          p4.y += v.y;
          p4.z += v.z;
          p4.w += v.w;
        }
        const float previous = __shfl_up_sync(kFullMask, p4.w, 1);
        float score = u > 0 ? previous : (key0 > 0 && token_ok ? ring[ring_slot(0)] : 0.0f);
        score = fmaf(2.0f, p4.x, score);
        score = fmaf(2.0f, p4.y, score);
        score = fmaf(2.0f, p4.z, score);
        score = __fadd_rn(score, p4.w);
        if (u == 15 && token_ok) ring[ring_slot(16)] = p4.w;  // 0 + 1 * p[63]
        const int j = j_lo + u;
        const bool offer = offers_block(score, j);
        append(offer, isnan(score) ? -INFINITY : score, j);
      } else {
        // Keys i = i_base + k, k in [0, block_keys), meet block j with weight_s[k] (block_weight);
        // with j = j_lo + jj, i_base - key0 = rel_lo + jj * b. A block whose first key precedes the
        // tile continues the sum carried in the ring (i_base < key0 and key0 > 0).
        const int rel_lo = (j_lo << (b_shift - s_shift)) - key0 - windows + 1;
        for (int jj = u; jj - u < blocks; jj += 16) {  // warp-uniform trip count
          const int j = j_lo + jj;
          float score = 0.0f;
          bool offer = false;
          if (token_ok && jj < blocks && j <= bq) {
            const int rel = rel_lo + (jj << (b_shift - s_shift));
            const int k_begin = max(-rel, 0), k_end = min(sh.block_keys, kKeys - rel);
            score = key0 > 0 && rel < 0 ? ring[ring_slot(jj)] : 0.0f;
            // In ascending i, as the reference: scores[j] += w * prob, the key's probability being
            // the sum of the parts' head sums in part order.
            for (int k = k_begin; k < k_end; ++k) {
              const float* at = probs + rel + k;
              float prob = at[0];
              for (int part = 1; part < sh.active_parts; ++part) prob += at[part * T * kLdProb];
              score = __fadd_rn(score, __fmul_rn(weight_s[k], prob));
            }
            ring[ring_slot(jj)] = score;
            offer = j < j_final && offers_block(score, j);
          }
          append(offer, isnan(score) ? -INFINITY : score, j);
        }
      }
      if (token_ok && u == 0) pending_count_s[t] = count;
    }

    // ---- C: each warp merges the buffers of its tokens that could not take another tile ----
    __syncwarp();  // the buffers and counts written by the warp's lanes are visible to all of them
    for (int t = warp * 2; t < tokens; t += (t % 2 == 0 ? 1 : 15)) {  // t % 16 in {2 warp, 2 warp + 1}
      const int count = pending_count_s[t];
      if (count <= pending_limit) continue;  // warp-uniform
      TopEntry worst;
      merge_pending(top_s + t * K, cap_s[t], worst, pending_s + t * sh.pending_slots, count);
      if (lane == 0) {
        worst_s[t] = worst;
        pending_count_s[t] = 0;
      }
      __syncwarp();
    }
  }
  // The offers still pending, merged before the lists are read by other warps.
  __syncwarp();
  for (int t = warp * 2; t < tokens; t += (t % 2 == 0 ? 1 : 15)) {
    const int count = pending_count_s[t];
    if (count == 0) continue;  // warp-uniform
    TopEntry worst;
    merge_pending(top_s + t * K, cap_s[t], worst, pending_s + t * sh.pending_slots, count);
  }
  common::cp_async_wait<0>();
  __syncthreads();  // the lists' initial values (when no tile ran)

  // Blocks no tile closed: summed up to the last tile (ring) or touched by no visible key (0).
  const int last_key0 = (key_tiles - 1) * kKeys;
  const int j_done = key_tiles > 0 ? tile_final_end(last_key0, s, B) : 0;
  const int j_touched = key_tiles > 0 ? tile_last_block(last_key0, l, s, B) : -1;
  const int last_j_lo = key_tiles > 0 ? tile_first_block(last_key0, s, B) : 0;
  const int last_ring_base = last_j_lo % R;
  auto* out = p.topk + g * p.topk_head_stride;
  for (int t = warp; t < tokens; t += kWarps) {
    const int bq = (first_pos + t) >> b_shift;
    const int cap = cap_s[t];
    TopEntry* list = top_s + t * K;
    if (cap > 0) {
      const float* ring = ring_s + t * R;
      TopEntry worst = list[cap - 1];
      for (int j0 = j_done; j0 <= bq; j0 += 32) {
        const int j = j0 + lane;
        float score = 0.0f;
        if (j <= j_touched) {
          int slot = last_ring_base + (j - last_j_lo);  // j - last_j_lo < R for j <= j_touched
          slot -= slot >= R ? R : 0;
          score = ring[slot];
          if (isnan(score)) score = -INFINITY;
        }
        const bool offered = j <= bq && is_candidate(j, bq, I, L);
        with_width(cap, [&]<bool kWide>() { merge_offers<kWide>(list, cap, worst, offered, score, j); });
      }
    }
    __syncwarp();
    // Chosen plus forced blocks, ascending: each value's rank is the count of smaller ones.
    const int head_end = forced_head(bq, I);
    const int tail_start = forced_tail_start(bq, I, L);
    const int total = min(K, bq + 1);
    std::int32_t* row = out + (token0 + t) * p.topk_token_stride;
    for (int u = lane; u < K; u += 32) {
      if (u >= total) {
        row[u] = -1;
        continue;
      }
      const int f = u - cap;
      const int value = u < cap ? list[u].block : (f < head_end ? f : tail_start + (f - head_end));
      int rank = min(value, head_end) + max(0, min(value, bq + 1) - tail_start);
      for (int c = 0; c < cap; ++c) rank += list[c].block < value ? 1 : 0;
      row[rank] = value;
    }
  }
}

template <class Element, int kDqk, int kCtasPerSm, bool kWgmma>
__global__ void __launch_bounds__(kThreads, kCtasPerSm) select_blocks_kernel(const __grid_constant__ SelectParams p) {
  if constexpr (kWgmma && !FSA_HAS_WGMMA) {
    __trap();  // wgmma is sm_90a only; the launcher picks this variant where that image runs
  } else {
    select_blocks<Element, kDqk, kCtasPerSm, kWgmma>(p);
  }
}

}  // namespace fsa::cuda::sel
