// Host side of compression on the GPU: checks the GPU path's limits, fills the params, lays out
// the small fp32 workspace (the caller's) and turns the runtime dtype into the template argument
// (the one place it happens for this op).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "common/env_value.hpp"
#include "common/workspace_carver.hpp"
#include "cuda/runtime.hpp"
#include "kernels/common/launch_checks.hpp"
#include "cuda/backend.hpp"
#include "kernels/compress/compress_params.hpp"

namespace fsa::cuda {

template <class Element>
Status launch_compress_forward(const CompressParams& p, cudaStream_t stream);  // instantiations/compress_fwd_*.cu
template <class Element>
Status launch_compress_backward(const CompressParams& p, cudaStream_t stream);  // instantiations/compress_bwd_*.cu

namespace {

Status not_supported(const std::string& message) { return FSA_ERROR(StatusCode::kNotImplemented, message); }

// compress_k_splits for `tiles` output tiles over `k_chunks` K chunks; FSA_COMPRESS_K_SPLITS forces a
// count (tests: both epilogues, uneven splits).
int k_splits(std::int64_t tiles, std::int64_t k_chunks) {
  const long long forced = fsa::detail::env_value_or(fsa::detail::env_compress_k_splits, 0);  // 0: the model's
  return compress_k_splits(tiles, k_chunks, static_cast<int>(forced));
}

// The fp32 workspace of both directions: head_vector [H, Dout], its kColumnSumSplits row-share
// partials, then (k_splits > 1) k_splits planes of `plane` partial floats. Sizes (no base) or
// carves.
void workspace_layout(detail::WorkspaceCarver& c, CompressParams& p, std::int64_t plane) {
  const std::int64_t vector = static_cast<std::int64_t>(p.heads) * p.dim_out;
  p.head_vector = c.take<float>(vector);
  p.sum_partial = c.take<float>(vector * kColumnSumSplits);
  p.y_partial = p.k_splits > 1 ? c.take<float>(p.k_splits * plane) : nullptr;
}

Status check_gpu_limits(const char* op, const NsaConfig& config, const TensorView& x, const TensorView& weight,
                        std::int64_t dim_out) {
  FSA_RETURN_IF_ERROR(common::check_dtype(op, "x", x.dtype));
  if (config.compression == CompressionKind::kLinear) {
    if (x.size(2) % 64 != 0)
      return not_supported("x: the CUDA linear compression needs a head dim D that is a multiple of 64, got " +
                           std::to_string(x.size(2)));
    if (dim_out % 64 != 0)
      return not_supported("weight: the CUDA linear compression needs Dout (weight.size(2)) a multiple of 64, got " +
                           std::to_string(dim_out));
  }
  (void)weight;
  return Status::ok();
}

CompressParams params_of(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                         const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                         std::int64_t cmp_rows, std::int64_t dim_out) {
  CompressParams p{};
  p.x = x.data;
  p.x_row_stride = x.stride(0);
  p.x_head_stride = x.stride(1);
  if (weight.defined()) {
    p.weight = weight.data;
    p.w_head_stride = weight.stride(0);
    p.w_row_stride = weight.stride(1);
  }
  if (pos_emb.defined()) {
    p.pos_emb = pos_emb.data;
    p.pe_head_stride = pos_emb.stride(0);
    p.pe_row_stride = pos_emb.stride(1);
  }
  p.cu_seqlens = cu_seqlens.ptr<const std::int32_t>();
  p.cu_stride = cu_seqlens.stride(0);
  p.cu_cmp = cu_cmp.ptr<const std::int32_t>();
  p.cu_cmp_stride = cu_cmp.stride(0);
  p.num_seqs = static_cast<int>(cu_seqlens.size(0) - 1);
  p.tokens = x.size(0);
  p.cmp_rows = cmp_rows;
  p.heads = static_cast<int>(x.size(1));
  p.dim = static_cast<int>(x.size(2));
  p.dim_out = static_cast<int>(dim_out);
  p.cmp_len = config.cmp_len;
  p.cmp_stride = config.cmp_stride;
  p.k_splits = 1;
  return p;
}

}  // namespace

namespace {

// The forward's params without the output pointer: split K of y = X W (output tiles over
// compressed rows, K = l*D); `plane` = y_partial floats per split.
CompressParams forward_params(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                              const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                              const TensorView& y, std::int64_t* plane) {
  CompressParams p = params_of(config, x, cu_seqlens, cu_cmp, weight, pos_emb, y.size(0), y.size(2));
  if (weight.defined())
    p.k_splits = k_splits((p.cmp_rows + 63) / 64 * (p.dim_out / compress_tile_n(p.dim_out)) * p.heads,
                          p.cmp_len * p.dim / 64);
  *plane = p.cmp_rows * p.heads * p.dim_out;
  return p;
}

// The backward's: split K of dW = X^T dy (output tiles over the rows of W, K = the compressed rows);
// `plane` = dW floats.
CompressParams backward_params(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                               const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                               const TensorView& dy, const TensorView& d_weight, std::int64_t* plane) {
  CompressParams p = params_of(config, x, cu_seqlens, cu_cmp, weight, pos_emb, dy.size(0), dy.size(2));
  if (d_weight.defined())
    p.k_splits = k_splits(static_cast<std::int64_t>(p.cmp_len) * p.dim / 64 * (p.dim_out / compress_tile_n(p.dim_out)) *
                              p.heads,
                          (p.cmp_rows + 63) / 64);
  *plane = static_cast<std::int64_t>(p.heads) * p.cmp_len * p.dim * p.dim_out;
  return p;
}

// Zeroes a [H, rows, cols] gradient whose rows are contiguous (strides may pad rows and heads):
// with no tokens the backward has nothing to sum, and dW = 0 (not the caller's stale memory).
Status zero_parameter_grad(const TensorView& t, cudaStream_t stream) {
  if (!t.defined() || t.numel() == 0) return Status::ok();
  const std::size_t bytes = dtype_size(t.dtype);
  for (std::int64_t h = 0; h < t.size(0); ++h) {
    void* head = static_cast<char*>(t.data) + static_cast<std::size_t>(h * t.stride(0)) * bytes;
    FSA_CUDA_CHECK(cudaMemset2DAsync(head, static_cast<std::size_t>(t.stride(1)) * bytes, 0,
                                     static_cast<std::size_t>(t.size(2)) * bytes, static_cast<std::size_t>(t.size(1)),
                                     stream));
  }
  return Status::ok();
}

}  // namespace

std::size_t compress_forward_workspace_bytes(const NsaConfig& config, const TensorView& x, const TensorView& weight,
                                             const TensorView& y) {
  std::int64_t plane = 0;
  CompressParams p = forward_params(config, x, TensorView{}, TensorView{}, weight, TensorView{}, y, &plane);
  detail::WorkspaceCarver sizing;
  workspace_layout(sizing, p, plane);
  return sizing.bytes();
}

std::size_t compress_backward_workspace_bytes(const NsaConfig& config, const TensorView& x, const TensorView& dy,
                                              const TensorView& d_weight) {
  std::int64_t plane = 0;
  CompressParams p =
      backward_params(config, x, TensorView{}, TensorView{}, TensorView{}, TensorView{}, dy, d_weight, &plane);
  detail::WorkspaceCarver sizing;
  workspace_layout(sizing, p, plane);
  return sizing.bytes();
}

Status compress_forward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                        const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                        const TensorView& y, const Workspace& workspace) {
  FSA_RETURN_IF_ERROR(check_gpu_limits("compress_forward", config, x, weight, y.size(2)));
  if (weight.defined()) {
    FSA_RETURN_IF_ERROR(common::check_rows_aligned("compress_forward", {{"x", x}, {"weight", weight}, {"y", y}}));
  }
  if (cu_seqlens.size(0) <= 1 && y.size(0) == 0) return Status::ok();
  const DeviceGuard guard(x.device.index);
  cudaStream_t stream = current_stream();
  std::int64_t plane = 0;
  CompressParams p = forward_params(config, x, cu_seqlens, cu_cmp, weight, pos_emb, y, &plane);
  p.y = y.data;
  p.y_row_stride = y.stride(0);
  p.y_head_stride = y.stride(1);
  detail::WorkspaceCarver carve(workspace.data);
  workspace_layout(carve, p, plane);
  if (!pos_emb.defined()) p.head_vector = nullptr;  // no PE: no bias
  return common::dispatch_dtype("compress_forward", "x", x.dtype,
                                [&]<class Element>() { return launch_compress_forward<Element>(p, stream); });
}

Status compress_backward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                         const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                         const TensorView& dy, const TensorView& dx, const TensorView& d_weight,
                         const TensorView& d_pos_emb, const Workspace& workspace) {
  FSA_RETURN_IF_ERROR(check_gpu_limits("compress_backward", config, x, weight, dy.size(2)));
  if (weight.defined()) {
    FSA_RETURN_IF_ERROR(common::check_rows_aligned(
        "compress_backward", {{"x", x}, {"weight", weight}, {"dy", dy}, {"dx", dx}, {"d_weight", d_weight}}));
  }
  const DeviceGuard guard(x.device.index);
  cudaStream_t stream = current_stream();
  if (x.size(0) == 0) {
    FSA_RETURN_IF_ERROR(zero_parameter_grad(d_weight, stream));
    return zero_parameter_grad(d_pos_emb, stream);
  }
  std::int64_t plane = 0;
  CompressParams p = backward_params(config, x, cu_seqlens, cu_cmp, weight, pos_emb, dy, d_weight, &plane);
  p.dy = dy.data;
  p.dy_row_stride = dy.stride(0);
  p.dy_head_stride = dy.stride(1);
  p.dx = dx.data;
  p.dx_row_stride = dx.stride(0);
  p.dx_head_stride = dx.stride(1);
  if (d_weight.defined()) {
    p.d_weight = d_weight.data;
    p.dw_head_stride = d_weight.stride(0);
    p.dw_row_stride = d_weight.stride(1);
  }
  if (d_pos_emb.defined()) {
    p.d_pos_emb = d_pos_emb.data;
    p.dpe_head_stride = d_pos_emb.stride(0);
    p.dpe_row_stride = d_pos_emb.stride(1);
  }
  detail::WorkspaceCarver carve(workspace.data);
  workspace_layout(carve, p, plane);
  return common::dispatch_dtype("compress_backward", "x", x.dtype,
                                [&]<class Element>() { return launch_compress_backward<Element>(p, stream); });
}

}  // namespace fsa::cuda
