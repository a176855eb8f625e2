// Host side of compression on the GPU: checks the GPU path's limits, fills the params, allocates
// the small fp32 workspace on the stream and turns the runtime dtype into the template argument
// (the one place it happens for this op).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "cuda/runtime.hpp"
#include "kernels/common/launch_checks.hpp"
#include "kernels/common/stream_workspace.hpp"
#include "kernels/compress/compress.hpp"
#include "kernels/compress/compress_params.hpp"

namespace fsa::cuda {

template <class Element>
Status launch_compress_forward(const CompressParams& p, cudaStream_t stream);  // instantiations/compress_fwd_*.cu
template <class Element>
Status launch_compress_backward(const CompressParams& p, cudaStream_t stream);  // instantiations/compress_bwd_*.cu

namespace {

Status not_supported(const std::string& message) { return FSA_ERROR(StatusCode::kNotImplemented, message); }

std::size_t align256(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

// compress_k_splits for `tiles` output tiles over `k_chunks` K chunks; FSA_COMPRESS_K_SPLITS forces a
// count (tests: both epilogues, uneven splits).
int k_splits(std::int64_t tiles, std::int64_t k_chunks) {
  const char* forced = std::getenv("FSA_COMPRESS_K_SPLITS");
  return compress_k_splits(tiles, k_chunks, forced != nullptr ? std::atoi(forced) : 0);
}

// The fp32 workspace of both directions: head_vector [H, Dout], its kColumnSumSplits row-share
// partials, then (k_splits > 1) k_splits planes of `plane` partial floats.
std::size_t vector_bytes(const CompressParams& p) {
  return align256(static_cast<std::size_t>(p.heads) * p.dim_out * sizeof(float));
}
std::size_t workspace_bytes(const CompressParams& p, std::int64_t plane) {
  const std::size_t partials = p.k_splits > 1 ? static_cast<std::size_t>(p.k_splits * plane) * sizeof(float) : 0;
  return vector_bytes(p) * (1 + kColumnSumSplits) + partials;
}
void carve_workspace(CompressParams& p, unsigned char* base) {
  p.head_vector = reinterpret_cast<float*>(base);
  p.sum_partial = reinterpret_cast<float*>(base + vector_bytes(p));
  p.y_partial = p.k_splits > 1 ? reinterpret_cast<float*>(base + vector_bytes(p) * (1 + kColumnSumSplits)) : nullptr;
}

Status check_gpu_limits(const NsaConfig& config, const TensorView& x, const TensorView& weight,
                        std::int64_t dim_out) {
  if (x.dtype != DType::kBFloat16 && x.dtype != DType::kFloat16)
    return not_supported(std::string("x: the CUDA compression supports bf16 and fp16, got ") + dtype_name(x.dtype));
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

Status compress_forward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                        const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                        const TensorView& y) {
  const std::int64_t dim_out = y.size(2);
  FSA_RETURN_IF_ERROR(check_gpu_limits(config, x, weight, dim_out));
  if (weight.defined()) {
    FSA_RETURN_IF_ERROR(common::check_rows_aligned("compress_forward", {{"x", x}, {"weight", weight}, {"y", y}}));
  }
  if (cu_seqlens.size(0) <= 1 && y.size(0) == 0) return Status::ok();
  const DeviceGuard guard(x.device.index);
  cudaStream_t stream = current_stream();
  CompressParams p = params_of(config, x, cu_seqlens, cu_cmp, weight, pos_emb, y.size(0), dim_out);
  p.y = y.data;
  p.y_row_stride = y.stride(0);
  p.y_head_stride = y.stride(1);
  // Split K of y = X W: output tiles over compressed rows, K = l*D.
  if (weight.defined())
    p.k_splits = k_splits((p.cmp_rows + 63) / 64 * (p.dim_out / compress_tile_n(p.dim_out)) * p.heads,
                          p.cmp_len * p.dim / 64);
  const std::int64_t plane = p.cmp_rows * p.heads * p.dim_out;  // y_partial floats per split
  common::StreamWorkspace ws(workspace_bytes(p, plane), stream);
  FSA_RETURN_IF_ERROR(ws.status());
  carve_workspace(p, ws.bytes());
  if (!pos_emb.defined()) p.head_vector = nullptr;  // no PE: no bias
  return common::dispatch_dtype("compress_forward", "x", x.dtype,
                                [&]<class Element>() { return launch_compress_forward<Element>(p, stream); });
}

Status compress_backward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                         const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                         const TensorView& dy, const TensorView& dx, const TensorView& d_weight,
                         const TensorView& d_pos_emb) {
  const std::int64_t dim_out = dy.size(2);
  FSA_RETURN_IF_ERROR(check_gpu_limits(config, x, weight, dim_out));
  if (weight.defined()) {
    FSA_RETURN_IF_ERROR(common::check_rows_aligned(
        "compress_backward", {{"x", x}, {"weight", weight}, {"dy", dy}, {"dx", dx}, {"d_weight", d_weight}}));
  }
  if (x.size(0) == 0) return Status::ok();
  const DeviceGuard guard(x.device.index);
  cudaStream_t stream = current_stream();
  CompressParams p = params_of(config, x, cu_seqlens, cu_cmp, weight, pos_emb, dy.size(0), dim_out);
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
  // Split K of dW = X^T dy: output tiles over the rows of W, K = the compressed rows.
  if (d_weight.defined())
    p.k_splits = k_splits(static_cast<std::int64_t>(p.cmp_len) * p.dim / 64 * (p.dim_out / compress_tile_n(p.dim_out)) *
                              p.heads,
                          (p.cmp_rows + 63) / 64);
  const std::int64_t plane = static_cast<std::int64_t>(p.heads) * p.cmp_len * p.dim * p.dim_out;  // dW floats
  common::StreamWorkspace ws(workspace_bytes(p, plane), stream);
  FSA_RETURN_IF_ERROR(ws.status());
  carve_workspace(p, ws.bytes());
  return common::dispatch_dtype("compress_backward", "x", x.dtype,
                                [&]<class Element>() { return launch_compress_backward<Element>(p, stream); });
}

}  // namespace fsa::cuda
