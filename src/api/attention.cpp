// Compressed, selected and sliding-window attention: validation, workspace queries, the
// selected-attention plan and the route to a backend.
#include "fsa/ops.hpp"
#include "reference/ops.hpp"
#include "route.hpp"
#include "validate.hpp"

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

// Each op's full check, shared by the op and its workspace query.
Status check_cmp_backward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                          const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                          const TensorView& o, const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                          const TensorView& dk_cmp, const TensorView& dv_cmp) {
  AttnDims dims;
  FSA_RETURN_IF_ERROR(check_attention(config, {"q", q}, {"k_cmp", k_cmp}, {"v_cmp", v_cmp}, true, cu_seqlens,
                                      {"o", o}, {"lse", lse}, &dims));
  FSA_RETURN_IF_ERROR(detail::check_cu_cmp({"cu_cmp", cu_cmp}, cu_seqlens, config, k_cmp.size(0)));
  return check_attention_grads({"q", q}, {"k_cmp", k_cmp}, {"v_cmp", v_cmp}, {"o", o}, {"d_o", d_o}, {"dq", dq},
                               {"dk_cmp", dk_cmp}, {"dv_cmp", dv_cmp});
}

Status check_swa_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse,
                          const TensorView& d_o, const TensorView& dq, const TensorView& dk, const TensorView& dv) {
  AttnDims dims;
  FSA_RETURN_IF_ERROR(
      check_attention(config, {"q", q}, {"k", k}, {"v", v}, false, cu_seqlens, {"o", o}, {"lse", lse}, &dims));
  return check_attention_grads({"q", q}, {"k", k}, {"v", v}, {"o", o}, {"d_o", d_o}, {"dq", dq}, {"dk", dk},
                               {"dv", dv});
}

// q, k, v, topk_idx, cu_seqlens and the options of selected attention (no outputs).
Status check_slc_inputs(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& topk_idx, const TensorView& cu_seqlens, const SlcOptions& options) {
  FSA_RETURN_IF_ERROR(config.validate());
  AttnDims dims;
  FSA_RETURN_IF_ERROR(detail::check_qkv({"q", q}, {"k", k}, {"v", v}, q.ndim == 3 ? q.size(0) : 0, &dims));
  const Arg cu{"cu_seqlens", cu_seqlens};
  FSA_RETURN_IF_ERROR(detail::check_same_device(cu, {"q", q}));
  FSA_RETURN_IF_ERROR(detail::check_cu_seqlens(cu, dims.tokens, "N (q.size(0))"));
  FSA_RETURN_IF_ERROR(check_topk(topk_idx, dims, {"q", q}));
  return check_slc_options(options);
}

cuda::SlcProblem slc_problem(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                             const TensorView& topk_idx, const TensorView& cu_seqlens) {
  return cuda::SlcProblem::of(config, q, k, v, topk_idx, cu_seqlens);
}

// slc_plan_bytes of arguments already validated (the public query validates them first).
std::size_t plan_bytes(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& topk_idx, const TensorView& cu_seqlens, const SlcOptions& options) {
  return detail::on_gpu_bytes(q, [&] {
    return FSA_CUDA_QUERY(cuda::slc_plan_bytes(slc_problem(config, q, k, v, topk_idx, cu_seqlens), options));
  });
}

// A plan argument: undefined, or uint8 [>= slc_plan_bytes] on the tensors' device.
Status check_plan(const TensorView& plan, const Arg& q, std::size_t bytes) {
  if (!plan.defined()) return Status::ok();
  const Arg p{"plan", plan};
  FSA_RETURN_IF_ERROR(detail::check_dtype(p, DType::kUInt8));
  FSA_RETURN_IF_ERROR(detail::check_same_device(p, q));
  FSA_RETURN_IF_ERROR(detail::check_tensor(p, {{Dim::kAnyDim, "bytes"}}));
  if (plan.size(0) < static_cast<std::int64_t>(bytes))
    return FSA_INVALID("plan: expected at least slc_plan_bytes() = " + std::to_string(bytes) + " bytes, got " +
                       std::to_string(plan.size(0)));
  if (reinterpret_cast<std::uintptr_t>(plan.data) % kWorkspaceAlignment != 0)
    return FSA_INVALID("plan: expected a " + std::to_string(kWorkspaceAlignment) + "-byte aligned pointer");
  return Status::ok();
}

Status check_slc_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                         const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                         const TensorView& lse, const SlcOptions& options, const TensorView& plan) {
  AttnDims dims;
  FSA_RETURN_IF_ERROR(
      check_attention(config, {"q", q}, {"k", k}, {"v", v}, false, cu_seqlens, {"o", o}, {"lse", lse}, &dims));
  FSA_RETURN_IF_ERROR(check_topk(topk_idx, dims, {"q", q}));
  FSA_RETURN_IF_ERROR(check_slc_options(options));
  return check_plan(plan, {"q", q}, plan_bytes(config, q, k, v, topk_idx, cu_seqlens, options));
}

Status check_slc_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                          const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                          const TensorView& dv, const SlcOptions& options, const TensorView& plan) {
  FSA_RETURN_IF_ERROR(check_slc_forward(config, q, k, v, topk_idx, cu_seqlens, o, lse, options, plan));
  return check_attention_grads({"q", q}, {"k", k}, {"v", v}, {"o", o}, {"d_o", d_o}, {"dq", dq}, {"dk", dk},
                               {"dv", dv});
}

}  // namespace

// ---- Compressed attention ----------------------------------------------------------------------

Status cmp_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                        const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                        const TensorView& o, const TensorView& lse) {
  constexpr const char* kOp = "cmp_attn_forward";
  AttnDims dims;
  FSA_RETURN_IF_ERROR(check_attention(config, {"q", q}, {"k_cmp", k_cmp}, {"v_cmp", v_cmp}, true, cu_seqlens,
                                      {"o", o}, {"lse", lse}, &dims));
  FSA_RETURN_IF_ERROR(detail::check_cu_cmp({"cu_cmp", cu_cmp}, cu_seqlens, config, k_cmp.size(0)));
  FSA_RETURN_IF_ERROR(detail::check_no_overlap(
      {{"o", o}, {"lse", lse}},
      {{"q", q}, {"k_cmp", k_cmp}, {"v_cmp", v_cmp}, {"cu_seqlens", cu_seqlens}, {"cu_cmp", cu_cmp}}));
  return detail::route(
      kOp, q.device, [&] { ref::cmp_attn_forward(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse); },
      [&] {
        return FSA_CUDA_BACKEND(kOp, q.device, cuda::cmp_attn_forward(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse));
      });
}

std::size_t cmp_attn_backward_workspace_bytes(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                                              const TensorView& v_cmp, const TensorView& cu_seqlens,
                                              const TensorView& cu_cmp, const TensorView& o, const TensorView& lse,
                                              const TensorView& d_o, const TensorView& dq,
                                              const TensorView& dk_cmp, const TensorView& dv_cmp) {
  return detail::query_bytes(
      check_cmp_backward(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse, d_o, dq, dk_cmp, dv_cmp), q.device,
      [&] { return FSA_CUDA_QUERY(cuda::flash_backward_workspace_bytes(q, k_cmp, v_cmp)); });
}

Status cmp_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                         const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                         const TensorView& o, const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                         const TensorView& dk_cmp, const TensorView& dv_cmp, const Workspace& workspace) {
  constexpr const char* kOp = "cmp_attn_backward";
  FSA_RETURN_IF_ERROR(check_cmp_backward(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse, d_o, dq, dk_cmp, dv_cmp));
  FSA_RETURN_IF_ERROR(detail::check_no_overlap(
      {{"dq", dq}, {"dk_cmp", dk_cmp}, {"dv_cmp", dv_cmp}},
      {{"q", q}, {"k_cmp", k_cmp}, {"v_cmp", v_cmp}, {"cu_seqlens", cu_seqlens}, {"cu_cmp", cu_cmp}, {"o", o},
       {"lse", lse}, {"d_o", d_o}},
      workspace));
  const std::size_t needed =
      detail::on_gpu_bytes(q, [&] { return FSA_CUDA_QUERY(cuda::flash_backward_workspace_bytes(q, k_cmp, v_cmp)); });
  return detail::route(
      kOp, q.device,
      [&] { ref::cmp_attn_backward(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse, d_o, dq, dk_cmp, dv_cmp); },
      workspace, needed, [&](const Workspace& ws) {
        return FSA_CUDA_BACKEND(kOp, q.device, cuda::cmp_attn_backward(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o,
                                                                       lse, d_o, dq, dk_cmp, dv_cmp, ws));
      });
}

// ---- Selected attention ------------------------------------------------------------------------

std::size_t slc_plan_bytes(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                           const TensorView& topk_idx, const TensorView& cu_seqlens, const SlcOptions& options) {
  if (!check_slc_inputs(config, q, k, v, topk_idx, cu_seqlens, options).is_ok()) return 0;
  return plan_bytes(config, q, k, v, topk_idx, cu_seqlens, options);
}

Status slc_plan_build(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& plan,
                      const SlcOptions& options) {
  constexpr const char* kOp = "slc_plan_build";
  FSA_RETURN_IF_ERROR(check_slc_inputs(config, q, k, v, topk_idx, cu_seqlens, options));
  const std::size_t bytes = plan_bytes(config, q, k, v, topk_idx, cu_seqlens, options);
  if (!plan.defined() && bytes > 0) return FSA_INVALID("plan: expected a uint8 tensor of slc_plan_bytes() bytes");
  FSA_RETURN_IF_ERROR(check_plan(plan, {"q", q}, bytes));
  FSA_RETURN_IF_ERROR(detail::check_no_overlap(
      {{"plan", plan}}, {{"q", q}, {"k", k}, {"v", v}, {"topk_idx", topk_idx}, {"cu_seqlens", cu_seqlens}}));
  return detail::route(
      kOp, q.device, [] {},  // the CPU reference needs no plan
      [&] {
        return FSA_CUDA_BACKEND(kOp, q.device,
                                cuda::slc_plan_build(config, q, k, v, topk_idx, cu_seqlens, plan, options));
      });
}

std::size_t slc_attn_forward_workspace_bytes(const NsaConfig& config, const TensorView& q, const TensorView& k,
                                             const TensorView& v, const TensorView& topk_idx,
                                             const TensorView& cu_seqlens, const TensorView& o,
                                             const TensorView& lse, const SlcOptions& options,
                                             const TensorView& plan) {
  return detail::query_bytes(
      check_slc_forward(config, q, k, v, topk_idx, cu_seqlens, o, lse, options, plan), q.device, [&] {
        return FSA_CUDA_QUERY(cuda::slc_forward_workspace_bytes(slc_problem(config, q, k, v, topk_idx, cu_seqlens),
                                                                options, plan.defined()));
      });
}

Status slc_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                        const TensorView& lse, const SlcOptions& options, const TensorView& plan,
                        const Workspace& workspace) {
  constexpr const char* kOp = "slc_attn_forward";
  FSA_RETURN_IF_ERROR(check_slc_forward(config, q, k, v, topk_idx, cu_seqlens, o, lse, options, plan));
  FSA_RETURN_IF_ERROR(detail::check_no_overlap(
      {{"o", o}, {"lse", lse}},
      {{"q", q}, {"k", k}, {"v", v}, {"topk_idx", topk_idx}, {"cu_seqlens", cu_seqlens}, {"plan", plan}},
      workspace));
  const std::size_t needed = detail::on_gpu_bytes(q, [&] {
    return FSA_CUDA_QUERY(cuda::slc_forward_workspace_bytes(slc_problem(config, q, k, v, topk_idx, cu_seqlens),
                                                            options, plan.defined()));
  });
  return detail::route(
      kOp, q.device, [&] { ref::slc_attn_forward(config, q, k, v, topk_idx, cu_seqlens, o, lse); }, workspace,
      needed, [&](const Workspace& ws) {
        return FSA_CUDA_BACKEND(
            kOp, q.device, cuda::slc_attn_forward(config, q, k, v, topk_idx, cu_seqlens, o, lse, options, plan, ws));
      });
}

std::size_t slc_attn_backward_workspace_bytes(const NsaConfig& config, const TensorView& q, const TensorView& k,
                                              const TensorView& v, const TensorView& topk_idx,
                                              const TensorView& cu_seqlens, const TensorView& o,
                                              const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                                              const TensorView& dk, const TensorView& dv,
                                              const SlcOptions& options, const TensorView& plan) {
  return detail::query_bytes(
      check_slc_backward(config, q, k, v, topk_idx, cu_seqlens, o, lse, d_o, dq, dk, dv, options, plan), q.device,
      [&] {
        return FSA_CUDA_QUERY(cuda::slc_backward_workspace_bytes(slc_problem(config, q, k, v, topk_idx, cu_seqlens),
                                                                 options, plan.defined()));
      });
}

Status slc_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                         const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                         const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                         const TensorView& dk, const TensorView& dv, const SlcOptions& options,
                         const TensorView& plan, const Workspace& workspace) {
  constexpr const char* kOp = "slc_attn_backward";
  FSA_RETURN_IF_ERROR(check_slc_backward(config, q, k, v, topk_idx, cu_seqlens, o, lse, d_o, dq, dk, dv, options, plan));
  FSA_RETURN_IF_ERROR(detail::check_no_overlap(
      {{"dq", dq}, {"dk", dk}, {"dv", dv}},
      {{"q", q}, {"k", k}, {"v", v}, {"topk_idx", topk_idx}, {"cu_seqlens", cu_seqlens}, {"o", o}, {"lse", lse},
       {"d_o", d_o}, {"plan", plan}},
      workspace));
  const std::size_t needed = detail::on_gpu_bytes(q, [&] {
    return FSA_CUDA_QUERY(cuda::slc_backward_workspace_bytes(slc_problem(config, q, k, v, topk_idx, cu_seqlens),
                                                             options, plan.defined()));
  });
  return detail::route(
      kOp, q.device, [&] { ref::slc_attn_backward(config, q, k, v, topk_idx, cu_seqlens, o, lse, d_o, dq, dk, dv); },
      workspace, needed, [&](const Workspace& ws) {
        return FSA_CUDA_BACKEND(kOp, q.device,
                                cuda::slc_attn_backward(config, q, k, v, topk_idx, cu_seqlens, o, lse, d_o, dq, dk,
                                                        dv, options, plan, ws));
      });
}

// ---- Sliding-window attention ------------------------------------------------------------------

Status swa_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                   const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse) {
  constexpr const char* kOp = "swa_forward";
  AttnDims dims;
  FSA_RETURN_IF_ERROR(
      check_attention(config, {"q", q}, {"k", k}, {"v", v}, false, cu_seqlens, {"o", o}, {"lse", lse}, &dims));
  FSA_RETURN_IF_ERROR(detail::check_no_overlap({{"o", o}, {"lse", lse}},
                                               {{"q", q}, {"k", k}, {"v", v}, {"cu_seqlens", cu_seqlens}}));
  return detail::route(
      kOp, q.device, [&] { ref::swa_forward(config, q, k, v, cu_seqlens, o, lse); },
      [&] { return FSA_CUDA_BACKEND(kOp, q.device, cuda::swa_forward(config, q, k, v, cu_seqlens, o, lse)); });
}

std::size_t swa_backward_workspace_bytes(const NsaConfig& config, const TensorView& q, const TensorView& k,
                                         const TensorView& v, const TensorView& cu_seqlens, const TensorView& o,
                                         const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                                         const TensorView& dk, const TensorView& dv) {
  return detail::query_bytes(check_swa_backward(config, q, k, v, cu_seqlens, o, lse, d_o, dq, dk, dv), q.device,
                             [&] { return FSA_CUDA_QUERY(cuda::flash_backward_workspace_bytes(q, k, v)); });
}

Status swa_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse, const TensorView& d_o,
                    const TensorView& dq, const TensorView& dk, const TensorView& dv, const Workspace& workspace) {
  constexpr const char* kOp = "swa_backward";
  FSA_RETURN_IF_ERROR(check_swa_backward(config, q, k, v, cu_seqlens, o, lse, d_o, dq, dk, dv));
  FSA_RETURN_IF_ERROR(detail::check_no_overlap(
      {{"dq", dq}, {"dk", dk}, {"dv", dv}},
      {{"q", q}, {"k", k}, {"v", v}, {"cu_seqlens", cu_seqlens}, {"o", o}, {"lse", lse}, {"d_o", d_o}}, workspace));
  const std::size_t needed =
      detail::on_gpu_bytes(q, [&] { return FSA_CUDA_QUERY(cuda::flash_backward_workspace_bytes(q, k, v)); });
  return detail::route(
      kOp, q.device, [&] { ref::swa_backward(config, q, k, v, cu_seqlens, o, lse, d_o, dq, dk, dv); }, workspace,
      needed, [&](const Workspace& ws) {
        return FSA_CUDA_BACKEND(kOp, q.device, cuda::swa_backward(config, q, k, v, cu_seqlens, o, lse, d_o, dq, dk, dv, ws));
      });
}

}  // namespace fsa
