// Device pieces of the append (AppendParams) shared by decode_append.cu (staging, appends) and
// decode_compress.cu (a decode step's compression and append in one kernel): where a compression
// window's pre-RoPE rows are, and the RoPE of a row.
//
// RoPE as the rope kernel (kernels/rope): fp32 angles position * w_i with the frequencies the host
// computed by the reference's function, accurate sincosf, one rounding to the element type.
#pragma once

#include <cstdint>

#include "kernels/common/convert.cuh"
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

}  // namespace fsa::cuda::decode
