// Parameters of the compression kernels (forward and backward), shared by host and device
// (trivially copyable, passed as a __grid_constant__ argument). Strides are in elements; the last
// dim of every tensor is contiguous.
#pragma once

#include <cstdint>

namespace fsa::cuda {

struct CompressParams {
  const void* x;  // [N, H, D]
  std::int64_t x_row_stride, x_head_stride;
  const void* weight;  // [H, l*D, Dout] (linear), null for mean
  std::int64_t w_head_stride, w_row_stride;
  const void* pos_emb;  // [H, l, D] or null
  std::int64_t pe_head_stride, pe_row_stride;
  void* y;  // forward output [Ncmp, H, Dout]
  std::int64_t y_row_stride, y_head_stride;
  const void* dy;  // backward input [Ncmp, H, Dout]
  std::int64_t dy_row_stride, dy_head_stride;
  void* dx;  // [N, H, D]
  std::int64_t dx_row_stride, dx_head_stride;
  void* d_weight;  // like weight, or null
  std::int64_t dw_head_stride, dw_row_stride;
  void* d_pos_emb;  // like pos_emb, or null
  std::int64_t dpe_head_stride, dpe_row_stride;

  const std::int32_t* cu_seqlens;  // [num_seqs + 1]
  std::int64_t cu_stride;
  const std::int32_t* cu_cmp;  // [num_seqs + 1]
  std::int64_t cu_cmp_stride;
  int num_seqs;
  std::int64_t tokens;    // N
  std::int64_t cmp_rows;  // Ncmp: rows of y / dy (>= cu_cmp[num_seqs])
  int heads, dim, dim_out;
  int cmp_len, cmp_stride;  // l, s

  // fp32 workspace [H, Dout]: forward, the positional embedding's share of every compressed token
  // (PE through W, or the mean of PE); backward, the sum of dy over all compressed tokens.
  float* head_vector;
};

}  // namespace fsa::cuda
