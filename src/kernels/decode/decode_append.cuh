// Device pieces of the append (AppendParams) shared by decode_append.cu (staging, appends) and
// decode_compress.cu (a decode step's compression and append in one kernel): where a compression
// window's pre-RoPE rows are, the RoPE of a row, and the append of a new token's heads.
//
// RoPE as the rope kernel (kernels/rope): fp32 angles position * w_i with the frequencies the host
// computed by the reference's function, accurate sincosf, one rounding to the element type.
#pragma once

#include <cstdint>

#include "kernels/common/convert.cuh"
#include "kernels/common/dependent_launch.cuh"
#include "kernels/decode/decode_paged.cuh"
#include "kernels/decode/decode_tiling.hpp"

namespace fsa::cuda::decode {

// The windows sequence b's chunk completes (staged_windows): its first new compressed token, their
// count, and the window rows from n_cmp(P) s to the chunk's end.
__device__ __forceinline__ StagedWindows staged_windows_of(const AppendParams& p, int b) {
  const SeqInfo seq = seq_info(p.batch, b);
  return staged_windows(seq.cached, seq.new_tokens, p.nsa.cmp_len, p.nsa.cmp_stride);
}

// Window position `position` of sequence b (seq: its lengths, P = seq.cached), head h: where its
// pre-RoPE key (tensor 0) or its value (tensor 1) is, or null for a zero row. Positions before P
// come from the key tail (a slot outside the tail reads zeros) and the value pages (a page the
// table does not hold reads zeros), the rest from the chunk (input row seq.row0 + position - P).
// A window of the new compressed tokens n_cmp(P) .. needs no cached position older than the
// tail's last l (n_cmp(P) s > P - l).
template <class Element>
__device__ __forceinline__ const Element* window_row(const AppendParams& p, int b, const SeqInfo& seq,
                                                     long long position, int h, int tensor) {
  if (position >= seq.cached) {
    const long long input_row = seq.row0 + (position - seq.cached);
    return tensor == 0 ? static_cast<const Element*>(p.k) + input_row * p.k_row_stride + h * p.k_head_stride
                       : static_cast<const Element*>(p.v) + input_row * p.v_row_stride + h * p.v_head_stride;
  }
  if (tensor == 1) return pool_row<const Element>(p.v_pages, locate(p.block_table, p.v_pages, b, position), h);
  const long long slot = p.batch.slots[b * p.batch.slot_stride];
  if (slot < 0 || slot >= p.num_slots) return nullptr;
  return static_cast<const Element*>(p.k_tail) + slot * p.tail_slot_stride +
         (position % p.tail_rows) * p.tail_row_stride + h * p.tail_head_stride;
}

// (cos, sin) of `position` x frequency i for every pair i, into the CTA's `angles`: one sincosf per
// pair, shared by every head rotated at that position (the accurate sincosf takes its slow argument
// reduction at long positions; per head and pair it was most of a decode step's append time).
// Every thread of the CTA (kThreads) calls it (it synchronises); nothing without RoPE.
template <int kThreads>
__device__ __forceinline__ void rope_angles(const AppendParams& p, long long position, float2* angles) {
  if (!p.rope) return;
  for (int i = threadIdx.x; i < p.dim_qk / 2; i += kThreads) {
    float sin_a, cos_a;
    sincosf(static_cast<float>(position) * p.frequency[i], &sin_a, &cos_a);
    angles[i] = make_float2(cos_a, sin_a);
  }
  __syncthreads();
}

// dst = src rotated by `angles` (rope_angles of the position; heads x Dqk), or copied without
// RoPE; by the CTA's kThreads threads.
template <int kThreads, class Element>
__device__ __forceinline__ void rotate_heads(const AppendParams& p, const float2* angles, int heads, const Element* src,
                                             std::int64_t src_head_stride, Element* dst,
                                             std::int64_t dst_head_stride) {
  using Cvt = common::Convert<Element>;
  const int pairs = p.dim_qk / 2;
  for (int idx = threadIdx.x; idx < heads * pairs; idx += kThreads) {
    const int h = idx / pairs, i = idx % pairs;
    const Element* x = src + h * src_head_stride;
    Element* y = dst + h * dst_head_stride;
    if (!p.rope) {
      y[i] = x[i];
      y[i + pairs] = x[i + pairs];
      continue;
    }
    const float cos_a = angles[i].x, sin_a = angles[i].y;
    const float a = Cvt::to_float(x[i]), c = Cvt::to_float(x[i + pairs]);
    y[i] = Cvt::from_float(a * cos_a - c * sin_a);
    y[i + pairs] = Cvt::from_float(c * cos_a + a * sin_a);
  }
}

// Copies `count` 16-byte vectors from src (null: zeros) to dst, by the CTA's threads starting at
// `first`. Rows are whole vectors (the head dims are multiples of 8 elements).
__device__ __forceinline__ void copy_vectors(uint4* dst, const uint4* src, int count, int first, int step) {
  for (int i = first; i < count; i += step) dst[i] = src != nullptr ? src[i] : make_uint4(0, 0, 0, 0);
}

// The append of new token `row` (packed), heads slice `slice` of `slices` (a decode step has a
// handful of tokens: one CTA per token walked its 68 heads in turns of dependent loads, 26 us at
// 16 x 128K, G 16), by the CTA's kThreads threads: the units are the q heads, then the kv heads. A
// q head is rotated into q_rot; a kv head's k is rotated into the key pages, its v copied into the
// value pages, and its pre-RoPE k copied into the tail when the position is among the sequence's
// last tail_rows (a chunk longer than the ring keeps only its last positions there). angles:
// kMaxPairs of the CTA's shared memory. `awaited`: the kernel waited for the grids before it
// already; else this waits after the lookups and angles, which read caller inputs only, before the
// writes (q_rot, pages, the key ring, which the compression of the windows reads).
template <int kThreads, class Element>
__device__ __forceinline__ void append_token_heads(const AppendParams& p, long long row, int slice, int slices,
                                                   float2* angles, bool awaited) {
  const int hq = p.nsa.heads_q, hkv = p.nsa.heads_kv;
  const int per_cta = (hq + hkv + slices - 1) / slices;
  const int unit_lo = slice * per_cta, unit_hi = min(hq + hkv, unit_lo + per_cta);
  if (unit_lo >= unit_hi) return;
  const int b = seq_of_row(p.batch.cu_seqlens, p.batch.cu_stride, p.batch.num_seqs, row);
  if (b < 0) return;
  const SeqInfo seq = seq_info(p.batch, b);
  const long long position = seq.cached + (row - seq.row0);
  rope_angles<kThreads>(p, position, angles);
  if (!awaited) common::await_prior_grids();
  const int q_lo = unit_lo, q_hi = min(unit_hi, hq);
  if (q_hi > q_lo) {
    const auto* q = static_cast<const Element*>(p.q) + row * p.q_row_stride + q_lo * p.q_head_stride;
    rotate_heads<kThreads, Element>(p, angles, q_hi - q_lo, q, p.q_head_stride,
                                    static_cast<Element*>(p.q_rot) + (row * hq + q_lo) * p.dim_qk, p.dim_qk);
  }
  const int kv_lo = max(unit_lo, hq) - hq, kv_hi = unit_hi - hq;
  if (kv_hi <= kv_lo) return;
  const auto* k = static_cast<const Element*>(p.k) + row * p.k_row_stride;
  const auto* v = static_cast<const Element*>(p.v) + row * p.v_row_stride;
  const PageRow at = locate(p.block_table, p.k_pages, b, position);
  if (at.page >= 0) {
    rotate_heads<kThreads, Element>(p, angles, kv_hi - kv_lo, k + kv_lo * p.k_head_stride, p.k_head_stride,
                                    pool_row<Element>(p.k_pages, at, kv_lo), p.k_pages.head_stride);
    for (int h = kv_lo; h < kv_hi; ++h)
      copy_vectors(reinterpret_cast<uint4*>(pool_row<Element>(p.v_pages, at, h)),
                   reinterpret_cast<const uint4*>(v + h * p.v_head_stride), p.dim_v / 8, threadIdx.x, kThreads);
  }
  const long long slot = p.batch.slots[b * p.batch.slot_stride];
  if (position >= seq.cached + seq.new_tokens - p.tail_rows && slot >= 0 && slot < p.num_slots) {
    auto* tail =
        static_cast<Element*>(p.k_tail) + slot * p.tail_slot_stride + (position % p.tail_rows) * p.tail_row_stride;
    for (int h = kv_lo; h < kv_hi; ++h)
      copy_vectors(reinterpret_cast<uint4*>(tail + h * p.tail_head_stride),
                   reinterpret_cast<const uint4*>(k + h * p.k_head_stride), p.dim_qk / 8, threadIdx.x, kThreads);
  }
}

}  // namespace fsa::cuda::decode
