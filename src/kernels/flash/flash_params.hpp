// Parameters of the masked flash-attention kernels (forward and backward) shared by compressed
// attention and sliding-window attention, shared by host and device (trivially copyable, passed
// as a __grid_constant__ argument). Strides are in elements.
//
// Query token t (local index in its sequence) sees the contiguous keys [lo(t), hi(t)) of its
// sequence, whose key rows start at key_base[b]:
//   kCompressed: lo = 0, hi = visible_count(t) (compressed keys i with i*s + l - 1 <= t), key_base =
//                cu_cmp (docs/semantics.md section 3);
//   kWindow:     lo = max(0, t - w), hi = t + 1, key_base = cu_seqlens (docs/semantics.md
//                section 6; w >= the sequence length is dense causal attention).
// The mask kind is a runtime value: one instantiation per (dtype, head dims) serves both.
#pragma once

#include <cstdint>

#include "kernels/common/kernel_arch.hpp"
#include "kernels/common/query_prefix.hpp"

namespace fsa::cuda {

enum class FlashMask : std::int32_t {
  kCompressed = 0,
  kWindow = 1,
};

struct FlashParams {
  const void* q;  // [N, Hq, Dqk]
  std::int64_t q_token_stride, q_head_stride;
  const void* k;  // key rows [key_rows, Hkv, Dqk]
  std::int64_t k_row_stride, k_head_stride;
  const void* v;  // [key_rows, Hkv, Dv]
  std::int64_t v_row_stride, v_head_stride;
  void* o;  // [N, Hq, Dv]: forward output, backward input
  std::int64_t o_token_stride, o_head_stride;
  float* lse;  // [Hq, N] natural log: forward output, backward input
  std::int64_t lse_head_stride, lse_token_stride;

  const void* d_o;  // [N, Hq, Dv]
  std::int64_t do_token_stride, do_head_stride;
  void* dq;  // like q
  std::int64_t dq_token_stride, dq_head_stride;
  void* dk;  // like k
  std::int64_t dk_row_stride, dk_head_stride;
  void* dv;  // like v
  std::int64_t dv_row_stride, dv_head_stride;
  // Backward workspace, fp32, contiguous: the accumulators are zeroed before the main kernel and
  // converted into dq / dk / dv (input dtype) by the finish kernel.
  float* delta;     // [Hq, N]: rowsum(o * d_o)
  float* dq_accum;  // [N, Hq, Dqk]
  float* dk_accum;  // [key_rows, Hkv, Dqk]
  float* dv_accum;  // [key_rows, Hkv, Dv]

  const std::int32_t* cu_seqlens;  // query tokens of each sequence
  std::int64_t cu_stride;
  const std::int32_t* key_base;  // first key row of each sequence (cu_cmp or cu_seqlens)
  std::int64_t key_base_stride;
  int num_seqs;
  std::int64_t tokens;    // N
  std::int64_t key_rows;  // rows of k / v (>= key_base[num_seqs])
  int heads_q, heads_kv, group;
  FlashMask mask;
  int cmp_len, cmp_stride;  // kCompressed: l, s
  std::int64_t window;      // kWindow: w
  float scale;
  // Forward only, nsa_prefill's long chunks: query token t of sequence b at position prefix[b] + t,
  // its key i (a position, or a compressed token index) at row key_base[b] + i of the keys gathered
  // out of the cache (key_base[b] may be negative: a window's rows start at its first key). Null
  // prefix: training.
  common::QueryPrefix prefix;

  // Backward work split, set by the launcher: a CTA takes the query rows of one key tile that lie
  // in one block of `split_rows` consecutive rows of the sequence (rows = tokens x G). Block
  // blockIdx.z starts at the tile's first row when split_relative, else at row z * split_rows of
  // the sequence (so that the CTAs launched together work on the same rows). split_period > 0:
  // the CTA walks its chunks in the order of their index in the sequence modulo split_period
  // (flash_bwd_block.cuh, chunk_rotation).
  std::int64_t split_rows;
  int split_relative;
  int split_period;
  common::KernelArch arch;  // the kernel set (common::kernel_arch), chosen once per op call
};

}  // namespace fsa::cuda
