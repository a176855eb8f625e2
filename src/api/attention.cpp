// Compressed, selected and sliding-window attention: validation and dispatch.
#include "dispatch.hpp"
#include "fsa/ops.hpp"
#include "reference/ops.hpp"
#include "validate.hpp"
#ifdef FSA_WITH_CUDA
#include "kernels/cmp_attn/cmp_attn.hpp"
#include "kernels/slc_attn/slc_attn.hpp"
#include "kernels/swa/swa.hpp"
#endif

namespace fsa {

using detail::Arg;
using detail::AttnDims;
using detail::Dim;

namespace {

// q/k/v, cu_seqlens and the forward outputs o [N, Hq, Dv] and lse [Hq, N].
Status check_attention(const NsaConfig& config, const Arg& q, const Arg& k, const Arg& v, bool compressed_keys,
                       const TensorView& cu_seqlens, const Arg& o, const Arg& lse, AttnDims* dims) {
  FSA_RETURN_IF_ERROR(config.validate());
  FSA_RETURN_IF_ERROR(detail::check_qkv(q, k, v, compressed_keys ? Dim::kAnyDim : q.view.size(0), dims));
  const Arg cu{"cu_seqlens", cu_seqlens};
  FSA_RETURN_IF_ERROR(detail::check_same_device(cu, q));
  FSA_RETURN_IF_ERROR(detail::check_cu_seqlens(cu, dims->tokens, "N (q.size(0))"));
  FSA_RETURN_IF_ERROR(detail::check_same_dtype(o, q));
  FSA_RETURN_IF_ERROR(detail::check_same_device(o, q));
  FSA_RETURN_IF_ERROR(detail::check_tensor(o, {{dims->tokens, "N"}, {dims->heads_q, "Hq"}, {dims->dim_v, "Dv"}}));
  return detail::check_lse(lse, dims->heads_q, dims->tokens, q);
}

Status check_slc_options(const SlcOptions& options) {
  switch (options.path) {
    case SlcPath::kAuto:
    case SlcPath::kKvOuter:
    case SlcPath::kSplit:
    case SlcPath::kQueryOuter: break;
    default: return FSA_INVALID("options.path: unknown SlcPath value " + std::to_string(static_cast<int>(options.path)));
  }
  if (options.dense_threshold < 0)
    return FSA_INVALID("options.dense_threshold: expected >= 0 (0 = the cost model's), got " +
                       std::to_string(options.dense_threshold));
  return Status::ok();
}

// The backward's extra arguments: d_o like o, and gradients like their inputs.
Status check_attention_grads(const Arg& q, const Arg& k, const Arg& v, const Arg& o, const Arg& d_o, const Arg& dq,
                             const Arg& dk, const Arg& dv) {
  FSA_RETURN_IF_ERROR(detail::check_like(d_o, o));
  FSA_RETURN_IF_ERROR(detail::check_like(dq, q));
  FSA_RETURN_IF_ERROR(detail::check_like(dk, k));
  return detail::check_like(dv, v);
}

Status check_topk(const TensorView& topk_idx, const AttnDims& dims, const Arg& q) {
  const Arg t{"topk_idx", topk_idx};
  FSA_RETURN_IF_ERROR(detail::check_dtype(t, DType::kInt32));
  FSA_RETURN_IF_ERROR(detail::check_same_device(t, q));
  return detail::check_tensor(t, {{dims.heads_kv, "Hkv"}, {dims.tokens, "N"}, {Dim::kAnyDim, "K"}});
}

}  // namespace

Status cmp_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                        const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                        const TensorView& o, const TensorView& lse) {
  AttnDims dims;
  FSA_RETURN_IF_ERROR(check_attention(config, {"q", q}, {"k_cmp", k_cmp}, {"v_cmp", v_cmp}, true, cu_seqlens,
                                      {"o", o}, {"lse", lse}, &dims));
  FSA_RETURN_IF_ERROR(detail::check_cu_cmp({"cu_cmp", cu_cmp}, cu_seqlens, config, k_cmp.size(0)));
  if (!detail::on_cpu(q)) {
#ifdef FSA_WITH_CUDA
    return cuda::cmp_attn_forward(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse);
#else
    return detail::not_implemented_on(q.device, "cmp_attn_forward");
#endif
  }
  return detail::run_reference("cmp_attn_forward",
                               [&] { ref::cmp_attn_forward(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse); });
}

Status cmp_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                         const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                         const TensorView& o, const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                         const TensorView& dk_cmp, const TensorView& dv_cmp) {
  AttnDims dims;
  FSA_RETURN_IF_ERROR(check_attention(config, {"q", q}, {"k_cmp", k_cmp}, {"v_cmp", v_cmp}, true, cu_seqlens,
                                      {"o", o}, {"lse", lse}, &dims));
  FSA_RETURN_IF_ERROR(detail::check_cu_cmp({"cu_cmp", cu_cmp}, cu_seqlens, config, k_cmp.size(0)));
  FSA_RETURN_IF_ERROR(check_attention_grads({"q", q}, {"k_cmp", k_cmp}, {"v_cmp", v_cmp}, {"o", o}, {"d_o", d_o},
                                            {"dq", dq}, {"dk_cmp", dk_cmp}, {"dv_cmp", dv_cmp}));
  if (!detail::on_cpu(q)) {
#ifdef FSA_WITH_CUDA
    return cuda::cmp_attn_backward(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse, d_o, dq, dk_cmp, dv_cmp);
#else
    return detail::not_implemented_on(q.device, "cmp_attn_backward");
#endif
  }
  return detail::run_reference("cmp_attn_backward", [&] {
    ref::cmp_attn_backward(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse, d_o, dq, dk_cmp, dv_cmp);
  });
}

Status slc_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                        const TensorView& lse, const SlcOptions& options) {
  AttnDims dims;
  FSA_RETURN_IF_ERROR(
      check_attention(config, {"q", q}, {"k", k}, {"v", v}, false, cu_seqlens, {"o", o}, {"lse", lse}, &dims));
  FSA_RETURN_IF_ERROR(check_topk(topk_idx, dims, {"q", q}));
  FSA_RETURN_IF_ERROR(check_slc_options(options));
  if (!detail::on_cpu(q)) {
#ifdef FSA_WITH_CUDA
    return cuda::slc_attn_forward(config, q, k, v, topk_idx, cu_seqlens, o, lse, options);
#else
    return detail::not_implemented_on(q.device, "slc_attn_forward");
#endif
  }
  return detail::run_reference("slc_attn_forward",
                               [&] { ref::slc_attn_forward(config, q, k, v, topk_idx, cu_seqlens, o, lse); });
}

Status slc_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                         const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                         const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                         const TensorView& dk, const TensorView& dv, const SlcOptions& options) {
  AttnDims dims;
  FSA_RETURN_IF_ERROR(
      check_attention(config, {"q", q}, {"k", k}, {"v", v}, false, cu_seqlens, {"o", o}, {"lse", lse}, &dims));
  FSA_RETURN_IF_ERROR(check_topk(topk_idx, dims, {"q", q}));
  FSA_RETURN_IF_ERROR(check_attention_grads({"q", q}, {"k", k}, {"v", v}, {"o", o}, {"d_o", d_o}, {"dq", dq},
                                            {"dk", dk}, {"dv", dv}));
  FSA_RETURN_IF_ERROR(check_slc_options(options));
  if (!detail::on_cpu(q)) {
#ifdef FSA_WITH_CUDA
    return cuda::slc_attn_backward(config, q, k, v, topk_idx, cu_seqlens, o, lse, d_o, dq, dk, dv, options);
#else
    return detail::not_implemented_on(q.device, "slc_attn_backward");
#endif
  }
  return detail::run_reference("slc_attn_backward", [&] {
    ref::slc_attn_backward(config, q, k, v, topk_idx, cu_seqlens, o, lse, d_o, dq, dk, dv);
  });
}

Status swa_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                   const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse) {
  AttnDims dims;
  FSA_RETURN_IF_ERROR(
      check_attention(config, {"q", q}, {"k", k}, {"v", v}, false, cu_seqlens, {"o", o}, {"lse", lse}, &dims));
  if (!detail::on_cpu(q)) {
#ifdef FSA_WITH_CUDA
    return cuda::swa_forward(config, q, k, v, cu_seqlens, o, lse);
#else
    return detail::not_implemented_on(q.device, "swa_forward");
#endif
  }
  return detail::run_reference("swa_forward", [&] { ref::swa_forward(config, q, k, v, cu_seqlens, o, lse); });
}

Status swa_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse, const TensorView& d_o,
                    const TensorView& dq, const TensorView& dk, const TensorView& dv) {
  AttnDims dims;
  FSA_RETURN_IF_ERROR(
      check_attention(config, {"q", q}, {"k", k}, {"v", v}, false, cu_seqlens, {"o", o}, {"lse", lse}, &dims));
  FSA_RETURN_IF_ERROR(check_attention_grads({"q", q}, {"k", k}, {"v", v}, {"o", o}, {"d_o", d_o}, {"dq", dq},
                                            {"dk", dk}, {"dv", dv}));
  if (!detail::on_cpu(q)) {
#ifdef FSA_WITH_CUDA
    return cuda::swa_backward(config, q, k, v, cu_seqlens, o, lse, d_o, dq, dk, dv);
#else
    return detail::not_implemented_on(q.device, "swa_backward");
#endif
  }
  return detail::run_reference("swa_backward",
                               [&] { ref::swa_backward(config, q, k, v, cu_seqlens, o, lse, d_o, dq, dk, dv); });
}

}  // namespace fsa
