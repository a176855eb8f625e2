// Parameters of the compressed-attention kernels (forward and backward), shared by host and
// device (trivially copyable, passed as a __grid_constant__ argument). Strides are in elements.
#pragma once

#include <cstdint>

namespace fsa::cuda {

struct CmpAttnParams {
  const void* q;  // [N, Hq, Dqk]
  std::int64_t q_token_stride, q_head_stride;
  const void* k;  // compressed keys [Ncmp, Hkv, Dqk]
  std::int64_t k_row_stride, k_head_stride;
  const void* v;  // compressed values [Ncmp, Hkv, Dv]
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
  float* delta;     // workspace [Hq, N]: rowsum(o * d_o) in fp32
  float* dq_accum;  // workspace [N, Hq, Dqk] fp32, zeroed before the backward kernel

  const std::int32_t* cu_seqlens;
  std::int64_t cu_stride;
  const std::int32_t* cu_cmp;
  std::int64_t cu_cmp_stride;
  int num_seqs;
  std::int64_t tokens;    // N
  std::int64_t cmp_rows;  // Ncmp (>= cu_cmp[num_seqs])
  int heads_q, heads_kv, group;
  int cmp_len, cmp_stride;  // l, s
  float scale;
};

}  // namespace fsa::cuda
