// compress_forward / compress_backward: validation, workspace queries and the route to a backend.
#include "fsa/ops.hpp"
#include "reference/ops.hpp"
#include "route.hpp"
#include "validate.hpp"

namespace fsa {

using detail::Arg;
using detail::Dim;

namespace {

Status check_compressed(const Arg& arg, const TensorView& x, std::int64_t dim_out) {
  FSA_RETURN_IF_ERROR(detail::check_same_dtype(arg, {"x", x}));
  FSA_RETURN_IF_ERROR(detail::check_same_device(arg, {"x", x}));
  return detail::check_tensor(arg, {{Dim::kAnyDim, "Ncmp"}, {x.size(1), "H"}, {dim_out, "Dout"}});
}

// Checks x, cu_seqlens, weight, pos_emb, the compressed tensor (y or dy) and then cu_cmp against
// the compressed tensor's rows.
Status check_compress_inputs(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                             const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                             const Arg& compressed) {
  FSA_RETURN_IF_ERROR(config.validate());
  const Arg xa{"x", x};
  FSA_RETURN_IF_ERROR(detail::check_float_dtype(xa));
  FSA_RETURN_IF_ERROR(detail::check_tensor(xa, {{Dim::kAnyDim, "N"}, {Dim::kAnyDim, "H"}, {Dim::kAnyDim, "D"}}));
  const std::int64_t heads = x.size(1), dim = x.size(2);
  const Arg cu{"cu_seqlens", cu_seqlens};
  FSA_RETURN_IF_ERROR(detail::check_same_device(cu, xa));
  FSA_RETURN_IF_ERROR(detail::check_cu_seqlens(cu, x.size(0), "N (x.size(0))"));
  const Arg w{"weight", weight};
  std::int64_t dim_out = dim;
  if (config.compression == CompressionKind::kLinear) {
    FSA_RETURN_IF_ERROR(detail::check_same_dtype(w, xa));
    FSA_RETURN_IF_ERROR(detail::check_same_device(w, xa));
    FSA_RETURN_IF_ERROR(detail::check_tensor(
        w, {{heads, "H"}, {config.cmp_len * dim, "l*D"}, {Dim::kAnyDim, "Dout"}}));
    dim_out = weight.size(2);
  } else if (weight.defined()) {
    return FSA_INVALID("weight: expected none for CompressionKind::kMean, got a tensor " + weight.shape_string());
  }
  if (pos_emb.defined()) {
    const Arg pe{"pos_emb", pos_emb};
    FSA_RETURN_IF_ERROR(detail::check_same_dtype(pe, xa));
    FSA_RETURN_IF_ERROR(detail::check_same_device(pe, xa));
    FSA_RETURN_IF_ERROR(detail::check_tensor(pe, {{heads, "H"}, {config.cmp_len, "l"}, {dim, "D"}}));
  }
  FSA_RETURN_IF_ERROR(check_compressed(compressed, x, dim_out));
  return detail::check_cu_cmp({"cu_cmp", cu_cmp}, cu_seqlens, config, compressed.view.size(0));
}

Status check_compress_backward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                               const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                               const TensorView& dy, const TensorView& dx, const TensorView& d_weight,
                               const TensorView& d_pos_emb) {
  FSA_RETURN_IF_ERROR(check_compress_inputs(config, x, cu_seqlens, cu_cmp, weight, pos_emb, {"dy", dy}));
  FSA_RETURN_IF_ERROR(detail::check_like({"dx", dx}, {"x", x}));
  if (d_weight.defined()) {
    if (!weight.defined()) return FSA_INVALID("d_weight: expected none when weight is none (kMean)");
    FSA_RETURN_IF_ERROR(detail::check_like({"d_weight", d_weight}, {"weight", weight}));
  }
  if (d_pos_emb.defined()) {
    if (!pos_emb.defined()) return FSA_INVALID("d_pos_emb: expected none when pos_emb is none");
    FSA_RETURN_IF_ERROR(detail::check_like({"d_pos_emb", d_pos_emb}, {"pos_emb", pos_emb}));
  }
  return Status::ok();
}

}  // namespace

std::size_t compress_forward_workspace_bytes(const NsaConfig& config, const TensorView& x,
                                             const TensorView& cu_seqlens, const TensorView& cu_cmp,
                                             const TensorView& weight, const TensorView& pos_emb,
                                             const TensorView& y) {
  return detail::query_bytes(check_compress_inputs(config, x, cu_seqlens, cu_cmp, weight, pos_emb, {"y", y}),
                             x.device,
                             [&] { return FSA_CUDA_QUERY(cuda::compress_forward_workspace_bytes(config, x, weight, y)); });
}

std::size_t compress_backward_workspace_bytes(const NsaConfig& config, const TensorView& x,
                                              const TensorView& cu_seqlens, const TensorView& cu_cmp,
                                              const TensorView& weight, const TensorView& pos_emb,
                                              const TensorView& dy, const TensorView& dx,
                                              const TensorView& d_weight, const TensorView& d_pos_emb) {
  return detail::query_bytes(
      check_compress_backward(config, x, cu_seqlens, cu_cmp, weight, pos_emb, dy, dx, d_weight, d_pos_emb), x.device,
      [&] { return FSA_CUDA_QUERY(cuda::compress_backward_workspace_bytes(config, x, dy, d_weight)); });
}

Status compress_forward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                        const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                        const TensorView& y, const Workspace& workspace) {
  constexpr const char* kOp = "compress_forward";
  FSA_RETURN_IF_ERROR(check_compress_inputs(config, x, cu_seqlens, cu_cmp, weight, pos_emb, {"y", y}));
  FSA_RETURN_IF_ERROR(detail::check_no_overlap(
      {{"y", y}},
      {{"x", x}, {"cu_seqlens", cu_seqlens}, {"cu_cmp", cu_cmp}, {"weight", weight}, {"pos_emb", pos_emb}},
      workspace));
  const std::size_t needed =
      detail::on_gpu_bytes(x, [&] { return FSA_CUDA_QUERY(cuda::compress_forward_workspace_bytes(config, x, weight, y)); });
  return detail::route(
      kOp, x.device, [&] { ref::compress_forward(config, x, cu_seqlens, cu_cmp, weight, pos_emb, y); }, workspace,
      needed, [&](const Workspace& ws) {
        return FSA_CUDA_BACKEND(kOp, x.device, cuda::compress_forward(config, x, cu_seqlens, cu_cmp, weight, pos_emb, y, ws));
      });
}

Status compress_backward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                         const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                         const TensorView& dy, const TensorView& dx, const TensorView& d_weight,
                         const TensorView& d_pos_emb, const Workspace& workspace) {
  constexpr const char* kOp = "compress_backward";
  FSA_RETURN_IF_ERROR(
      check_compress_backward(config, x, cu_seqlens, cu_cmp, weight, pos_emb, dy, dx, d_weight, d_pos_emb));
  FSA_RETURN_IF_ERROR(detail::check_no_overlap(
      {{"dx", dx}, {"d_weight", d_weight}, {"d_pos_emb", d_pos_emb}},
      {{"x", x}, {"cu_seqlens", cu_seqlens}, {"cu_cmp", cu_cmp}, {"weight", weight}, {"pos_emb", pos_emb}, {"dy", dy}},
      workspace));
  const std::size_t needed = detail::on_gpu_bytes(
      x, [&] { return FSA_CUDA_QUERY(cuda::compress_backward_workspace_bytes(config, x, dy, d_weight)); });
  return detail::route(
      kOp, x.device,
      [&] { ref::compress_backward(config, x, cu_seqlens, cu_cmp, weight, pos_emb, dy, dx, d_weight, d_pos_emb); },
      workspace, needed, [&](const Workspace& ws) {
        return FSA_CUDA_BACKEND(kOp, x.device, cuda::compress_backward(config, x, cu_seqlens, cu_cmp, weight, pos_emb,
                                                                       dy, dx, d_weight, d_pos_emb, ws));
      });
}

}  // namespace fsa
