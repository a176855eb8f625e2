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

  // Split K (compress_k_splits). Linear forward: CTA split z of k_splits sums its share of the
  // l*D products into y_partial [k_splits, Ncmp, H, Dout] (fp32), which a reduction kernel adds
  // in split order (+ head_vector) into y. dW: the same over the compressed rows, into
  // y_partial [k_splits, H, l*D, Dout]. k_splits = 1 writes y / d_weight directly.
  int k_splits;
  float* y_partial;
  // [kColumnSumSplits, H, Dout] fp32: the row-split partials of head_vector.
  float* sum_partial;
};

// head_vector is a sum over many rows (PE through W: l*D rows; dy: every compressed row). One CTA
// per (32 columns, head) walking them all was latency-bound (~0.1-0.2 ms at l*D = 4096 or 4096
// compressed rows, most of the compression forward's time at S64); kColumnSumSplits CTAs per
// (32 columns, head) each sum a contiguous share into sum_partial, added in split order after.
constexpr int kColumnSumSplits = 16;

// How many CTAs split the K reduction of each 64 x kN output tile of the linear forward (K = l*D)
// and of dW (K = the compressed rows). The tiles alone are few (forward: Ncmp / 64 x Dout / kN x H,
// dW: l*D / 64 x Dout / kN x H; 256 of either at S64, Hkv = 4), and each walked its 64 K chunks
// serially, latency-bound in two CTA waves. Splitting aims at kTargetCtas CTAs with at least
// kMinChunks chunks each; the fp32 partials are at most kTargetCtas 64 x kN tiles (32 MB).
// `override_splits` > 0 (FSA_COMPRESS_K_SPLITS, for tests) forces a count, capped at the chunks.
constexpr int compress_k_splits(std::int64_t tiles, std::int64_t k_chunks, int override_splits = 0) {
  constexpr std::int64_t kTargetCtas = 1024;
  constexpr std::int64_t kMinChunks = 4;
  const std::int64_t chunks = k_chunks > 1 ? k_chunks : 1;
  if (override_splits > 0) return static_cast<int>(override_splits < chunks ? override_splits : chunks);
  if (tiles <= 0 || tiles >= kTargetCtas) return 1;
  const std::int64_t wanted = (kTargetCtas + tiles - 1) / tiles;
  const std::int64_t most = chunks / kMinChunks > 1 ? chunks / kMinChunks : 1;
  return static_cast<int>(wanted < most ? wanted : most);
}
// Output columns per GEMM tile (kN): 128 where the width allows, else 64.
constexpr int compress_tile_n(int width) { return width % 128 == 0 ? 128 : 64; }

}  // namespace fsa::cuda
