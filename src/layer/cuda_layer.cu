// GPU path of nsa_forward / nsa_backward (docs/semantics.md sections 1-7 in the order of
// include/fsa/layer.hpp). Arguments were validated once by src/api/layer.cpp; the steps call the
// CUDA backend (cuda/backend.hpp) directly, with scratch carved from the caller's workspace.
//
// Saved for the backward (the `saved` buffer, GPU layout): cu_cmp, the rotated compressed keys and
// the compressed values, each branch's output and LSE, topk_idx and the selected-attention plan
// (built once by the forward, reused by the backward). Recomputed instead: the rotated q and k (one
// elementwise pass each, cheaper than keeping N*(Hq+Hkv)*Dqk more elements).
//
// Workspace: the layer's own tensors (rotated q, k; in the backward the per-branch gradients),
// then one region that the steps, which run one after the other on the stream, share: its size is
// the largest step's *_workspace_bytes.
//
// Backward: combine^T, then each branch's attention backward w.r.t. the rotated q, k; the three
// dq and the two dk/dv are summed in the input dtype (add_into), rotated back (RoPE^T), and the
// compressed keys' and values' gradients go through the compression backward into dk, dv and the
// parameters' gradients.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>

#include "common/workspace_carver.hpp"
#include "cuda/backend.hpp"
#include "cuda/runtime.hpp"
#include "kernels/common/launch_checks.hpp"

namespace fsa::cuda {

namespace {

using detail::WorkspaceCarver;

struct Dims {
  std::int64_t n, ncmp;
  int nseq, hq, hkv, dqk, dv, topk;
  DType dtype;
};

Dims dims_of(const NsaConfig& c, const NsaLayerShape& s) {
  return {s.tokens, max_compressed_tokens(s.tokens, c), s.num_seqs, s.heads_q, s.heads_kv, s.head_dim_qk,
          s.head_dim_v, c.topk, s.dtype};
}

// Everything the backward reads from the forward.
struct SavedLayout {
  TensorView cu_cmp, k_cmp, v_cmp, o_cmp, lse_cmp, o_slc, lse_slc, o_swa, lse_swa, topk, plan;

  SavedLayout(WorkspaceCarver& c, const Dims& d, std::size_t plan_bytes) {
    cu_cmp = c.take_tensor(DType::kInt32, {d.nseq + 1});
    k_cmp = c.take_tensor(d.dtype, {d.ncmp, d.hkv, d.dqk});
    v_cmp = c.take_tensor(d.dtype, {d.ncmp, d.hkv, d.dv});
    o_cmp = c.take_tensor(d.dtype, {d.n, d.hq, d.dv});
    o_slc = c.take_tensor(d.dtype, {d.n, d.hq, d.dv});
    o_swa = c.take_tensor(d.dtype, {d.n, d.hq, d.dv});
    lse_cmp = c.take_tensor(DType::kFloat32, {d.hq, d.n});
    lse_slc = c.take_tensor(DType::kFloat32, {d.hq, d.n});
    lse_swa = c.take_tensor(DType::kFloat32, {d.hq, d.n});
    topk = c.take_tensor(DType::kInt32, {d.hkv, d.n, d.topk});
    plan = c.take_tensor(DType::kUInt8, {static_cast<std::int64_t>(plan_bytes)});
  }
};

// q and k at their positions: rotated copies in `ws`, or the inputs themselves without RoPE.
struct Rotated {
  TensorView q, k;
};

Rotated rotated_layout(const NsaConfig& c, const Dims& d, const NsaLayerInputs& in, WorkspaceCarver& ws) {
  if (!c.rope.enabled) return {in.q, in.k};
  return {ws.take_tensor(d.dtype, {d.n, d.hq, d.dqk}), ws.take_tensor(d.dtype, {d.n, d.hkv, d.dqk})};
}

Status rotate(const NsaConfig& c, const NsaLayerInputs& in, const Rotated& r) {
  if (!c.rope.enabled) return Status::ok();
  FSA_RETURN_IF_ERROR(cuda::rope(c.rope, in.q, in.cu_seqlens, 1, r.q, false));
  return cuda::rope(c.rope, in.k, in.cu_seqlens, 1, r.k, false);
}

// Tensors shaped like the layer's (null data): what the steps' workspace queries read.
struct StepShapes {
  TensorView q, k, v, k_cmp, v_cmp, w_k, w_v;

  StepShapes(const Dims& d, const NsaConfig& c, Device device) {
    q = TensorView::contiguous(nullptr, d.dtype, {d.n, d.hq, d.dqk}, device);
    k = TensorView::contiguous(nullptr, d.dtype, {d.n, d.hkv, d.dqk}, device);
    v = TensorView::contiguous(nullptr, d.dtype, {d.n, d.hkv, d.dv}, device);
    k_cmp = TensorView::contiguous(nullptr, d.dtype, {d.ncmp, d.hkv, d.dqk}, device);
    v_cmp = TensorView::contiguous(nullptr, d.dtype, {d.ncmp, d.hkv, d.dv}, device);
    if (c.compression == CompressionKind::kLinear) {
      const std::int64_t l = c.cmp_len;
      w_k = TensorView::contiguous(nullptr, d.dtype, {d.hkv, l * d.dqk, d.dqk}, device);
      w_v = TensorView::contiguous(nullptr, d.dtype, {d.hkv, l * d.dv, d.dv}, device);
    }
  }
};

// The selected-attention problem of the layer (topk_idx is [Hkv, N, topk]).
SlcProblem slc_problem(const NsaConfig& c, const Dims& d, Device device) {
  const StepShapes t(d, c, device);
  const TensorView topk = TensorView::contiguous(nullptr, DType::kInt32, {d.hkv, d.n, d.topk}, device);
  const TensorView cu = TensorView::contiguous(nullptr, DType::kInt32, {d.nseq + 1}, device);
  return SlcProblem::of(c, t.q, t.k, t.v, topk, cu);
}

// The largest scratch of the forward's steps (they run one after the other on the stream); the
// plan lives in the saved buffer (or, for inference, next to it).
std::size_t forward_step_bytes(const NsaConfig& c, const Dims& d, const SlcProblem& p, const NsaLayerOptions& o,
                               Device device) {
  const StepShapes t(d, c, device);
  return std::max({compress_forward_workspace_bytes(c, t.k, t.w_k, t.k_cmp),
                   compress_forward_workspace_bytes(c, t.v, t.w_v, t.v_cmp),
                   slc_forward_workspace_bytes(p, o.selected, /*plan_given=*/true)});
}

std::size_t backward_step_bytes(const NsaConfig& c, const Dims& d, const SlcProblem& p, const NsaLayerOptions& o,
                                Device device) {
  const StepShapes t(d, c, device);
  return std::max({flash_backward_workspace_bytes(t.q, t.k, t.v),
                   slc_backward_workspace_bytes(p, o.selected, /*plan_given=*/true),
                   flash_backward_workspace_bytes(t.q, t.k_cmp, t.v_cmp),
                   compress_backward_workspace_bytes(c, t.k, t.k_cmp, t.w_k),
                   compress_backward_workspace_bytes(c, t.v, t.v_cmp, t.w_v)});
}

// The forward's workspace: rotated q, k; the saved tensors when the caller keeps none; the steps'.
struct ForwardWorkspace {
  Rotated rot;
  std::optional<SavedLayout> saved;
  Workspace steps;

  ForwardWorkspace(WorkspaceCarver& ws, const NsaConfig& c, const Dims& d, const NsaLayerInputs& in,
                   const SlcProblem& p, const NsaLayerOptions& o, bool with_saved)
      : rot(rotated_layout(c, d, in, ws)) {
    if (!with_saved) saved.emplace(ws, d, slc_plan_bytes(p, o.selected));
    steps = ws.take_workspace(forward_step_bytes(c, d, p, o, in.q.device));
  }
};

// The backward's workspace: rotated q, k, the per-branch gradients and sums, the steps'.
struct BackwardWorkspace {
  Rotated rot;
  TensorView d_cmp, d_slc, d_swa;  // d_o of each branch
  TensorView dq, dq_part, dk, dk_part, dv, dv_part, dk_cmp, dv_cmp;
  Workspace steps;

  BackwardWorkspace(WorkspaceCarver& ws, const NsaConfig& c, const Dims& d, const NsaLayerInputs& in,
                    const SlcProblem& p, const NsaLayerOptions& o)
      : rot(rotated_layout(c, d, in, ws)) {
    d_cmp = ws.take_tensor(d.dtype, {d.n, d.hq, d.dv});
    d_slc = ws.take_tensor(d.dtype, {d.n, d.hq, d.dv});
    d_swa = ws.take_tensor(d.dtype, {d.n, d.hq, d.dv});
    dq = ws.take_tensor(d.dtype, {d.n, d.hq, d.dqk});
    dq_part = ws.take_tensor(d.dtype, {d.n, d.hq, d.dqk});
    dk = ws.take_tensor(d.dtype, {d.n, d.hkv, d.dqk});
    dk_part = ws.take_tensor(d.dtype, {d.n, d.hkv, d.dqk});
    dv = ws.take_tensor(d.dtype, {d.n, d.hkv, d.dv});
    dv_part = ws.take_tensor(d.dtype, {d.n, d.hkv, d.dv});
    dk_cmp = ws.take_tensor(d.dtype, {d.ncmp, d.hkv, d.dqk});
    dv_cmp = ws.take_tensor(d.dtype, {d.ncmp, d.hkv, d.dv});
    steps = ws.take_workspace(backward_step_bytes(c, d, p, o, in.q.device));
  }
};

// Where a gradient is summed: straight into the caller's tensor when no RoPE^T pass follows the
// sum, else into scratch (also when the caller did not ask for it: the others still need the sum).
TensorView sum_target(const TensorView& caller, const TensorView& scratch, bool rotated_after) {
  return caller.defined() && !rotated_after ? caller : scratch;
}

}  // namespace

std::size_t nsa_saved_bytes(const NsaConfig& config, const NsaLayerShape& shape, const NsaLayerOptions& options) {
  const Dims d = dims_of(config, shape);
  WorkspaceCarver sizing;
  SavedLayout(sizing, d, slc_plan_bytes(slc_problem(config, d, shape.device), options.selected));
  return sizing.bytes();
}

std::size_t nsa_forward_workspace_bytes(const NsaConfig& config, const NsaLayerShape& shape, bool with_saved,
                                        const NsaLayerOptions& options) {
  const Dims d = dims_of(config, shape);
  NsaLayerInputs none;
  WorkspaceCarver sizing;
  ForwardWorkspace(sizing, config, d, none, slc_problem(config, d, shape.device), options, with_saved);
  return sizing.bytes();
}

std::size_t nsa_backward_workspace_bytes(const NsaConfig& config, const NsaLayerShape& shape,
                                         const NsaLayerOptions& options) {
  const Dims d = dims_of(config, shape);
  NsaLayerInputs none;
  WorkspaceCarver sizing;
  BackwardWorkspace(sizing, config, d, none, slc_problem(config, d, shape.device), options);
  return sizing.bytes();
}

Status nsa_forward(const NsaConfig& c, const NsaLayerInputs& in, const TensorView& o, const TensorView& saved,
                   const NsaLayerOptions& options, const Workspace& workspace) {
  // The kernels move rows as 16-byte vectors: the caller's tensors are named here, not as the
  // branch ops' arguments.
  FSA_RETURN_IF_ERROR(common::check_rows_aligned("nsa_forward", {{"q", in.q}, {"k", in.k}, {"v", in.v}, {"o", o}}));
  const DeviceGuard guard(in.q.device.index);
  const Dims d = dims_of(c, NsaLayerShape::of(in));
  const SlcProblem problem = slc_problem(c, d, in.q.device);
  const SlcOptions& slc = options.selected;
  WorkspaceCarver carve(workspace.data, in.q.device);
  const ForwardWorkspace w(carve, c, d, in, problem, options, saved.defined());
  WorkspaceCarver saved_carve(saved.data, in.q.device);
  const SavedLayout s = w.saved ? *w.saved : SavedLayout(saved_carve, d, slc_plan_bytes(problem, slc));
  const Rotated& rot = w.rot;
  const TensorView& cu = in.cu_seqlens;

  FSA_RETURN_IF_ERROR(cuda::compressed_cu_seqlens(c, cu, s.cu_cmp));
  FSA_RETURN_IF_ERROR(cuda::compress_forward(c, in.k, cu, s.cu_cmp, in.w_k, in.pe_k, s.k_cmp, w.steps));
  FSA_RETURN_IF_ERROR(cuda::compress_forward(c, in.v, cu, s.cu_cmp, in.w_v, TensorView{}, s.v_cmp, w.steps));
  FSA_RETURN_IF_ERROR(rotate(c, in, rot));
  if (c.rope.enabled) FSA_RETURN_IF_ERROR(cuda::rope(c.rope, s.k_cmp, s.cu_cmp, c.cmp_stride, s.k_cmp, false));
  FSA_RETURN_IF_ERROR(cuda::cmp_attn_forward(c, rot.q, s.k_cmp, s.v_cmp, cu, s.cu_cmp, s.o_cmp, s.lse_cmp));
  FSA_RETURN_IF_ERROR(cuda::select_blocks(c, rot.q, s.k_cmp, s.lse_cmp, cu, s.cu_cmp, s.topk));
  // The plan is built here once; the backward reads it from `saved`.
  FSA_RETURN_IF_ERROR(cuda::slc_plan_build(c, rot.q, rot.k, in.v, s.topk, cu, s.plan, slc));
  FSA_RETURN_IF_ERROR(cuda::slc_attn_forward(c, rot.q, rot.k, in.v, s.topk, cu, s.o_slc, s.lse_slc, slc, s.plan, w.steps));
  FSA_RETURN_IF_ERROR(cuda::swa_forward(c, rot.q, rot.k, in.v, cu, s.o_swa, s.lse_swa));
  return cuda::combine_forward(c, in.gates, s.o_cmp, s.o_slc, s.o_swa, o);
}

Status nsa_backward(const NsaConfig& c, const NsaLayerInputs& in, const TensorView& saved, const TensorView& d_o,
                    const NsaLayerGrads& g, const NsaLayerOptions& options, const Workspace& workspace) {
  FSA_RETURN_IF_ERROR(common::check_rows_aligned(
      "nsa_backward", {{"q", in.q}, {"k", in.k}, {"v", in.v}, {"d_o", d_o}, {"dq", g.dq}, {"dk", g.dk}, {"dv", g.dv}}));
  const DeviceGuard guard(in.q.device.index);
  const Dims d = dims_of(c, NsaLayerShape::of(in));
  const SlcProblem problem = slc_problem(c, d, in.q.device);
  const SlcOptions& slc = options.selected;
  WorkspaceCarver saved_carve(saved.data, in.q.device);
  const SavedLayout s(saved_carve, d, slc_plan_bytes(problem, slc));
  WorkspaceCarver carve(workspace.data, in.q.device);
  const BackwardWorkspace x(carve, c, d, in, problem, options);
  const TensorView& cu = in.cu_seqlens;

  FSA_RETURN_IF_ERROR(rotate(c, in, x.rot));
  FSA_RETURN_IF_ERROR(
      cuda::combine_backward(c, in.gates, s.o_cmp, s.o_slc, s.o_swa, d_o, g.d_gates, x.d_cmp, x.d_slc, x.d_swa));
  // Branch gradients w.r.t. the rotated q and k: the window's into dq/dk/dv, the others added.
  const bool rotated = c.rope.enabled;
  const TensorView dq = sum_target(g.dq, x.dq, rotated), dk = sum_target(g.dk, x.dk, rotated);
  const TensorView dv = sum_target(g.dv, x.dv, false);
  FSA_RETURN_IF_ERROR(cuda::swa_backward(c, x.rot.q, x.rot.k, in.v, cu, s.o_swa, s.lse_swa, x.d_swa, dq, dk, dv, x.steps));
  FSA_RETURN_IF_ERROR(cuda::slc_attn_backward(c, x.rot.q, x.rot.k, in.v, s.topk, cu, s.o_slc, s.lse_slc, x.d_slc,
                                        x.dq_part, x.dk_part, x.dv_part, slc, s.plan, x.steps));
  FSA_RETURN_IF_ERROR(cuda::add_into(dq, x.dq_part));
  FSA_RETURN_IF_ERROR(cuda::add_into(dk, x.dk_part));
  FSA_RETURN_IF_ERROR(cuda::add_into(dv, x.dv_part));
  FSA_RETURN_IF_ERROR(cuda::cmp_attn_backward(c, x.rot.q, s.k_cmp, s.v_cmp, cu, s.cu_cmp, s.o_cmp, s.lse_cmp, x.d_cmp,
                                        x.dq_part, x.dk_cmp, x.dv_cmp, x.steps));
  FSA_RETURN_IF_ERROR(cuda::add_into(dq, x.dq_part));
  if (rotated && g.dq.defined()) FSA_RETURN_IF_ERROR(cuda::rope(c.rope, dq, cu, 1, g.dq, true));

  // Keys: RoPE^T of the attention part, plus the compression backward of the compressed keys'
  // gradient (itself rotated back at the windows' start positions).
  if (rotated) FSA_RETURN_IF_ERROR(cuda::rope(c.rope, x.dk_cmp, s.cu_cmp, c.cmp_stride, x.dk_cmp, true));
  FSA_RETURN_IF_ERROR(
      cuda::compress_backward(c, in.k, cu, s.cu_cmp, in.w_k, in.pe_k, x.dk_cmp, x.dk_part, g.dw_k, g.dpe_k, x.steps));
  if (g.dk.defined()) {
    if (rotated) FSA_RETURN_IF_ERROR(cuda::rope(c.rope, dk, cu, 1, g.dk, true));
    FSA_RETURN_IF_ERROR(cuda::add_into(g.dk, x.dk_part));
  }
  FSA_RETURN_IF_ERROR(cuda::compress_backward(c, in.v, cu, s.cu_cmp, in.w_v, TensorView{}, x.dv_cmp, x.dv_part, g.dw_v,
                                        TensorView{}, x.steps));
  if (g.dv.defined()) FSA_RETURN_IF_ERROR(cuda::add_into(g.dv, x.dv_part));
  return Status::ok();
}

}  // namespace fsa::cuda
