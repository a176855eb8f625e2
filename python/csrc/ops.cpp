#include "ops.hpp"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <iomanip>
#include <sstream>
#include <string>

#include "fsa/cache.hpp"
#include "fsa/layer.hpp"
#include "fsa/ops.hpp"
#include "torch_view.hpp"

// Each op describes its inputs before allocating its outputs: an input that cannot be described
// (dtype, device) is then the one the error names, not the output derived from it.

namespace fsa::torch_ext {

namespace {

// Size `d` of `t`, or 0 when t has no such dim. Outputs are shaped from the inputs before the fsa
// API has validated them; a malformed input then gets an empty output and the API's error names
// the input.
std::int64_t size_or_zero(const Tensor& t, std::int64_t d) { return t.dim() > d ? t.size(d) : 0; }

Tensor empty_like_contiguous(const Tensor& t) { return at::empty(t.sizes(), t.options()); }

// at::empty for a buffer whose size comes from the config or a size query rather than from an
// input's shape: a failed allocation is torch's OutOfMemoryError naming `what` (the argument that
// sized it) and the bytes, not the allocator's text alone.
Tensor allocate(at::IntArrayRef sizes, const at::TensorOptions& options, const char* what) {
  try {
    return at::empty(sizes, options);
  } catch (const c10::Error& error) {
    // Only a failed allocation is renamed: torch's GPU allocator raises OutOfMemoryError, its CPU
    // allocator a plain error saying so; anything else leaves as it came.
    const std::string text = error.what_without_backtrace();
    const bool out_of_memory = dynamic_cast<const c10::OutOfMemoryError*>(&error) != nullptr ||
                               text.find("can't allocate memory") != std::string::npos;
    if (!out_of_memory) throw;
    // On the GPU, torch's first line says how much is free and reserved: worth keeping. The CPU
    // allocator's names its own source file instead.
    const std::string detail = options.device().is_cuda() ? " (" + text.substr(0, text.find('\n')) + ")" : "";
    long double bytes = static_cast<long double>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
    for (const std::int64_t size : sizes) bytes *= static_cast<long double>(size);
    std::ostringstream count;  // every digit (the product may exceed int64)
    count << std::fixed << std::setprecision(0) << bytes;
    TORCH_CHECK_WITH(OutOfMemoryError, false, what, ": ", count.str(), " bytes on ", options.device(),
                     " could not be allocated", detail);
  }
}

// A gradient buffer for an optional input: shaped like it, or empty when it is absent.
Tensor grad_for(const OptionalTensor& input, const Tensor& reference) {
  if (input.has_value() && input->defined()) return empty_like_contiguous(*input);
  return at::empty({0}, reference.options());
}

TensorView view_or_none(const Tensor& grad, const OptionalTensor& input, const char* name) {
  return input.has_value() && input->defined() ? to_view(grad, name) : TensorView{};
}

Tensor empty_lse(const Tensor& q) {
  return at::empty({size_or_zero(q, 1), size_or_zero(q, 0)}, q.options().dtype(at::kFloat));
}

// gate_mode follows the rank of the gates: [N, 3] is shared, anything else per head (and the API
// then reports the expected [N, Hq, 3]).
GateMode gate_mode_of(const Tensor& gates) { return gates.dim() == 2 ? GateMode::kShared : GateMode::kPerHead; }

NsaConfig with_gate_mode(NsaConfig config, const Tensor& gates) {
  config.gate_mode = gate_mode_of(gates);
  return config;
}

// The workspace of one call, from torch's allocator: uint8 [bytes] on `like`'s device (on the GPU
// the caching allocator, on the current stream that cuda_registration.cpp set; given back,
// stream-ordered, when the call returns). Never empty on the GPU (at least one byte), so the
// library never falls back to allocating itself: a query that reported too few bytes fails with an
// error naming `workspace` instead. The CPU reference needs none.
class TorchWorkspace {
 public:
  TorchWorkspace(std::size_t bytes, const Tensor& like) {
    if (!like.is_cuda()) return;
    buffer_ = allocate({static_cast<std::int64_t>(std::max<std::size_t>(bytes, 1))}, like.options().dtype(at::kByte),
                       "workspace (the call's scratch; workspace_cap bounds selected attention's)");
    workspace_ = Workspace{buffer_.data_ptr(), static_cast<std::size_t>(buffer_.numel())};
  }
  const Workspace& get() const { return workspace_; }

 private:
  Tensor buffer_;
  Workspace workspace_{};
};

// op(args..., workspace) with a TorchWorkspace of query(args...) bytes: the fsa API's queries take
// their op's own arguments.
template <class Query, class Op, class... Args>
Status run_with_workspace(const Tensor& like, Query query, Op op, const Args&... args) {
  const TorchWorkspace workspace(query(args...), like);
  return op(args..., workspace.get());
}

}  // namespace

Tensor compressed_cu_seqlens(const Tensor& cu_seqlens FSA_PARAMS(FSA_COMPRESSION_ARGS)) {
  const TensorView cu_seqlens_view = to_view(cu_seqlens, "cu_seqlens");
  const NsaConfig config = FSA_SETTINGS(FSA_COMPRESSION_ARGS).config;
  Tensor cu_cmp = empty_like_contiguous(cu_seqlens);
  throw_if_error(fsa::compressed_cu_seqlens(config, cu_seqlens_view, to_view(cu_cmp, "cu_cmp")));
  return cu_cmp;
}

Tensor compress_forward(const Tensor& x, const Tensor& cu_seqlens, const Tensor& cu_cmp, const OptionalTensor& weight,
                        const OptionalTensor& pos_emb FSA_PARAMS(FSA_COMPRESSION_ARGS)) {
  const TensorView x_view = to_view(x, "x");
  const TensorView cu_seqlens_view = to_view(cu_seqlens, "cu_seqlens");
  const TensorView cu_cmp_view = to_view(cu_cmp, "cu_cmp");
  const TensorView weight_view = to_view(weight, "weight");
  const TensorView pos_emb_view = to_view(pos_emb, "pos_emb");
  NsaConfig config = FSA_SETTINGS(FSA_COMPRESSION_ARGS).config;
  const bool linear = weight.has_value() && weight->defined();
  config.compression = linear ? CompressionKind::kLinear : CompressionKind::kMean;
  const std::int64_t out_dim = linear ? size_or_zero(*weight, 2) : size_or_zero(x, 2);
  Tensor y = at::empty({max_compressed_tokens(size_or_zero(x, 0), config), size_or_zero(x, 1), out_dim}, x.options());
  throw_if_error(run_with_workspace(x, fsa::compress_forward_workspace_bytes, fsa::compress_forward, config, x_view,
                                    cu_seqlens_view, cu_cmp_view, weight_view, pos_emb_view, to_view(y, "y")));
  return y;
}

Tensor3 compress_backward(const Tensor& x, const Tensor& cu_seqlens, const Tensor& cu_cmp, const OptionalTensor& weight,
                          const OptionalTensor& pos_emb, const Tensor& dy FSA_PARAMS(FSA_COMPRESSION_ARGS)) {
  const TensorView x_view = to_view(x, "x");
  const TensorView cu_seqlens_view = to_view(cu_seqlens, "cu_seqlens");
  const TensorView cu_cmp_view = to_view(cu_cmp, "cu_cmp");
  const TensorView weight_view = to_view(weight, "weight");
  const TensorView pos_emb_view = to_view(pos_emb, "pos_emb");
  const TensorView dy_view = to_view(dy, "dy");
  NsaConfig config = FSA_SETTINGS(FSA_COMPRESSION_ARGS).config;
  config.compression = weight.has_value() && weight->defined() ? CompressionKind::kLinear : CompressionKind::kMean;
  Tensor dx = empty_like_contiguous(x);
  Tensor d_weight = grad_for(weight, x), d_pos_emb = grad_for(pos_emb, x);
  throw_if_error(run_with_workspace(x, fsa::compress_backward_workspace_bytes, fsa::compress_backward, config, x_view,
                                    cu_seqlens_view, cu_cmp_view, weight_view, pos_emb_view, dy_view,
                                    to_view(dx, "dx"), view_or_none(d_weight, weight, "d_weight"),
                                    view_or_none(d_pos_emb, pos_emb, "d_pos_emb")));
  return {dx, d_weight, d_pos_emb};
}

Tensor rope_forward(const Tensor& x, const Tensor& cu, std::int64_t position_stride FSA_PARAMS(FSA_ROPE_ARGS)) {
  const TensorView x_view = to_view(x, "x");
  const TensorView cu_view = to_view(cu, "cu");
  const RopeConfig rope = FSA_SETTINGS(FSA_ROPE_ARGS).config.rope;
  Tensor y = empty_like_contiguous(x);
  throw_if_error(fsa::rope_forward(rope, x_view, cu_view, static_cast<int>(position_stride), to_view(y, "y")));
  return y;
}

Tensor rope_backward(const Tensor& dy, const Tensor& cu, std::int64_t position_stride FSA_PARAMS(FSA_ROPE_ARGS)) {
  const TensorView dy_view = to_view(dy, "dy");
  const TensorView cu_view = to_view(cu, "cu");
  const RopeConfig rope = FSA_SETTINGS(FSA_ROPE_ARGS).config.rope;
  Tensor dx = empty_like_contiguous(dy);
  throw_if_error(fsa::rope_backward(rope, dy_view, cu_view, static_cast<int>(position_stride), to_view(dx, "dx")));
  return dx;
}

Tensor2 cmp_attn_forward(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const Tensor& cu_seqlens,
                         const Tensor& cu_cmp FSA_PARAMS(FSA_CMP_ATTN_ARGS)) {
  const TensorView q_view = to_view(q, "q");
  const TensorView k_cmp_view = to_view(k_cmp, "k_cmp");
  const TensorView v_cmp_view = to_view(v_cmp, "v_cmp");
  const TensorView cu_seqlens_view = to_view(cu_seqlens, "cu_seqlens");
  const TensorView cu_cmp_view = to_view(cu_cmp, "cu_cmp");
  const NsaConfig config = FSA_SETTINGS(FSA_CMP_ATTN_ARGS).config;
  Tensor o = at::empty({size_or_zero(q, 0), size_or_zero(q, 1), size_or_zero(v_cmp, 2)}, q.options());
  Tensor lse = empty_lse(q);
  throw_if_error(fsa::cmp_attn_forward(config, q_view, k_cmp_view, v_cmp_view, cu_seqlens_view, cu_cmp_view,
                                       to_view(o, "o"), to_view(lse, "lse")));
  return {o, lse};
}

Tensor3 cmp_attn_backward(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const Tensor& cu_seqlens,
                          const Tensor& cu_cmp, const Tensor& o, const Tensor& lse,
                          const Tensor& d_o FSA_PARAMS(FSA_CMP_ATTN_ARGS)) {
  const TensorView q_view = to_view(q, "q");
  const TensorView k_cmp_view = to_view(k_cmp, "k_cmp");
  const TensorView v_cmp_view = to_view(v_cmp, "v_cmp");
  const TensorView cu_seqlens_view = to_view(cu_seqlens, "cu_seqlens");
  const TensorView cu_cmp_view = to_view(cu_cmp, "cu_cmp");
  const TensorView o_view = to_view(o, "o");
  const TensorView lse_view = to_view(lse, "lse");
  const TensorView d_o_view = to_view(d_o, "d_o");
  const NsaConfig config = FSA_SETTINGS(FSA_CMP_ATTN_ARGS).config;
  Tensor dq = empty_like_contiguous(q), dk = empty_like_contiguous(k_cmp), dv = empty_like_contiguous(v_cmp);
  throw_if_error(run_with_workspace(q, fsa::cmp_attn_backward_workspace_bytes, fsa::cmp_attn_backward, config, q_view,
                                    k_cmp_view, v_cmp_view, cu_seqlens_view, cu_cmp_view, o_view, lse_view, d_o_view,
                                    to_view(dq, "dq"), to_view(dk, "dk_cmp"), to_view(dv, "dv_cmp")));
  return {dq, dk, dv};
}

Tensor select_blocks(const Tensor& q, const Tensor& k_cmp, const Tensor& lse_cmp, const Tensor& cu_seqlens,
                     const Tensor& cu_cmp FSA_PARAMS(FSA_SELECT_ARGS)) {
  const TensorView q_view = to_view(q, "q");
  const TensorView k_cmp_view = to_view(k_cmp, "k_cmp");
  const TensorView lse_cmp_view = to_view(lse_cmp, "lse_cmp");
  const TensorView cu_seqlens_view = to_view(cu_seqlens, "cu_seqlens");
  const TensorView cu_cmp_view = to_view(cu_cmp, "cu_cmp");
  const NsaConfig config = FSA_SETTINGS(FSA_SELECT_ARGS).config;
  // A negative K gets an empty output, so that the API's validation names config.topk.
  Tensor topk_idx = allocate({size_or_zero(k_cmp, 1), size_or_zero(q, 0), std::max<std::int64_t>(config.topk, 0)},
                             q.options().dtype(at::kInt), "config.topk (topk_idx [Hkv, N, K])");
  throw_if_error(fsa::select_blocks(config, q_view, k_cmp_view, lse_cmp_view, cu_seqlens_view, cu_cmp_view,
                                    to_view(topk_idx, "topk_idx")));
  return topk_idx;
}

namespace {

// The arguments every selected-attention op starts with.
struct SlcInputs {
  TensorView q, k, v, topk_idx, cu_seqlens;

  SlcInputs(const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& topk_idx_, const Tensor& cu_seqlens_)
      : q(to_view(q_, "q")),
        k(to_view(k_, "k")),
        v(to_view(v_, "v")),
        topk_idx(to_view(topk_idx_, "topk_idx")),
        cu_seqlens(to_view(cu_seqlens_, "cu_seqlens")) {}
};

}  // namespace

Tensor slc_plan(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& topk_idx,
                const Tensor& cu_seqlens FSA_PARAMS(FSA_SLC_ATTN_ARGS)) {
  const SlcInputs in(q, k, v, topk_idx, cu_seqlens);
  const OpSettings settings = FSA_SETTINGS(FSA_SLC_ATTN_ARGS);
  const std::size_t bytes =
      fsa::slc_plan_bytes(settings.config, in.q, in.k, in.v, in.topk_idx, in.cu_seqlens, settings.selected);
  Tensor plan = allocate({static_cast<std::int64_t>(bytes)}, q.options().dtype(at::kByte), "plan");
  throw_if_error(fsa::slc_plan_build(settings.config, in.q, in.k, in.v, in.topk_idx, in.cu_seqlens,
                                     to_view(plan, "plan"), settings.selected));
  return plan;
}

Tensor2 slc_attn_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& topk_idx,
                         const Tensor& cu_seqlens, const OptionalTensor& plan FSA_PARAMS(FSA_SLC_ATTN_ARGS)) {
  const SlcInputs in(q, k, v, topk_idx, cu_seqlens);
  const TensorView plan_view = to_view(plan, "plan");
  const OpSettings settings = FSA_SETTINGS(FSA_SLC_ATTN_ARGS);
  Tensor o = at::empty({size_or_zero(q, 0), size_or_zero(q, 1), size_or_zero(v, 2)}, q.options());
  Tensor lse = empty_lse(q);
  throw_if_error(run_with_workspace(q, fsa::slc_attn_forward_workspace_bytes, fsa::slc_attn_forward, settings.config,
                                    in.q, in.k, in.v, in.topk_idx, in.cu_seqlens, to_view(o, "o"),
                                    to_view(lse, "lse"), settings.selected, plan_view));
  return {o, lse};
}

Tensor3 slc_attn_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& topk_idx,
                          const Tensor& cu_seqlens, const OptionalTensor& plan, const Tensor& o, const Tensor& lse,
                          const Tensor& d_o FSA_PARAMS(FSA_SLC_ATTN_ARGS)) {
  const SlcInputs in(q, k, v, topk_idx, cu_seqlens);
  const TensorView plan_view = to_view(plan, "plan");
  const TensorView o_view = to_view(o, "o");
  const TensorView lse_view = to_view(lse, "lse");
  const TensorView d_o_view = to_view(d_o, "d_o");
  const OpSettings settings = FSA_SETTINGS(FSA_SLC_ATTN_ARGS);
  Tensor dq = empty_like_contiguous(q), dk = empty_like_contiguous(k), dv = empty_like_contiguous(v);
  throw_if_error(run_with_workspace(q, fsa::slc_attn_backward_workspace_bytes, fsa::slc_attn_backward,
                                    settings.config, in.q, in.k, in.v, in.topk_idx, in.cu_seqlens, o_view,
                                    lse_view, d_o_view, to_view(dq, "dq"), to_view(dk, "dk"), to_view(dv, "dv"),
                                    settings.selected, plan_view));
  return {dq, dk, dv};
}

Tensor2 swa_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens
                        FSA_PARAMS(FSA_SWA_ARGS)) {
  const TensorView q_view = to_view(q, "q");
  const TensorView k_view = to_view(k, "k");
  const TensorView v_view = to_view(v, "v");
  const TensorView cu_seqlens_view = to_view(cu_seqlens, "cu_seqlens");
  const NsaConfig config = FSA_SETTINGS(FSA_SWA_ARGS).config;
  Tensor o = at::empty({size_or_zero(q, 0), size_or_zero(q, 1), size_or_zero(v, 2)}, q.options());
  Tensor lse = empty_lse(q);
  throw_if_error(
      fsa::swa_forward(config, q_view, k_view, v_view, cu_seqlens_view, to_view(o, "o"), to_view(lse, "lse")));
  return {o, lse};
}

Tensor3 swa_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens, const Tensor& o,
                     const Tensor& lse, const Tensor& d_o FSA_PARAMS(FSA_SWA_ARGS)) {
  const TensorView q_view = to_view(q, "q");
  const TensorView k_view = to_view(k, "k");
  const TensorView v_view = to_view(v, "v");
  const TensorView cu_seqlens_view = to_view(cu_seqlens, "cu_seqlens");
  const TensorView o_view = to_view(o, "o");
  const TensorView lse_view = to_view(lse, "lse");
  const TensorView d_o_view = to_view(d_o, "d_o");
  const NsaConfig config = FSA_SETTINGS(FSA_SWA_ARGS).config;
  Tensor dq = empty_like_contiguous(q), dk = empty_like_contiguous(k), dv = empty_like_contiguous(v);
  throw_if_error(run_with_workspace(q, fsa::swa_backward_workspace_bytes, fsa::swa_backward, config, q_view, k_view,
                                    v_view, cu_seqlens_view, o_view, lse_view, d_o_view, to_view(dq, "dq"),
                                    to_view(dk, "dk"), to_view(dv, "dv")));
  return {dq, dk, dv};
}

Tensor combine_forward(const Tensor& gates, const Tensor& o_cmp, const Tensor& o_slc, const Tensor& o_swa) {
  const TensorView gates_view = to_view(gates, "gates");
  const TensorView o_cmp_view = to_view(o_cmp, "o_cmp");
  const TensorView o_slc_view = to_view(o_slc, "o_slc");
  const TensorView o_swa_view = to_view(o_swa, "o_swa");
  NsaConfig config;
  config.gate_mode = gate_mode_of(gates);
  Tensor o = empty_like_contiguous(o_cmp);
  throw_if_error(fsa::combine_forward(config, gates_view, o_cmp_view, o_slc_view, o_swa_view, to_view(o, "o")));
  return o;
}

Tensor4 combine_backward(const Tensor& gates, const Tensor& o_cmp, const Tensor& o_slc, const Tensor& o_swa,
                         const Tensor& d_o) {
  const TensorView gates_view = to_view(gates, "gates");
  const TensorView o_cmp_view = to_view(o_cmp, "o_cmp");
  const TensorView o_slc_view = to_view(o_slc, "o_slc");
  const TensorView o_swa_view = to_view(o_swa, "o_swa");
  const TensorView d_o_view = to_view(d_o, "d_o");
  NsaConfig config;
  config.gate_mode = gate_mode_of(gates);
  Tensor d_gates = empty_like_contiguous(gates), d_cmp = empty_like_contiguous(o_cmp),
         d_slc = empty_like_contiguous(o_slc), d_swa = empty_like_contiguous(o_swa);
  throw_if_error(fsa::combine_backward(config, gates_view, o_cmp_view, o_slc_view, o_swa_view, d_o_view,
                                       to_view(d_gates, "d_gates"), to_view(d_cmp, "d_o_cmp"),
                                       to_view(d_slc, "d_o_slc"), to_view(d_swa, "d_o_swa")));
  return {d_gates, d_cmp, d_slc, d_swa};
}

namespace {

NsaLayerInputs layer_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                            const OptionalTensor& w_k, const OptionalTensor& pe_k, const OptionalTensor& w_v,
                            const Tensor& gates) {
  NsaLayerInputs in;
  in.q = to_view(q, "q");
  in.k = to_view(k, "k");
  in.v = to_view(v, "v");
  in.cu_seqlens = to_view(cu_seqlens, "cu_seqlens");
  in.w_k = to_view(w_k, "w_k");
  in.pe_k = to_view(pe_k, "pe_k");
  in.w_v = to_view(w_v, "w_v");
  in.gates = to_view(gates, "gates");
  return in;
}

}  // namespace

Tensor2 nsa_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                    const OptionalTensor& w_k, const OptionalTensor& pe_k, const OptionalTensor& w_v,
                    const Tensor& gates FSA_PARAMS(FSA_LAYER_ARGS)) {
  const OpSettings settings = FSA_SETTINGS(FSA_LAYER_ARGS);
  const NsaConfig config = with_gate_mode(settings.config, gates);
  const NsaLayerOptions options{settings.selected};
  const NsaLayerInputs in = layer_inputs(q, k, v, cu_seqlens, w_k, pe_k, w_v, gates);
  const NsaLayerShape shape = NsaLayerShape::of(in);
  Tensor o = at::empty({size_or_zero(q, 0), size_or_zero(q, 1), size_or_zero(v, 2)}, q.options());
  const auto saved_bytes = static_cast<std::int64_t>(fsa::nsa_saved_bytes(config, shape, options));
  Tensor saved =
      allocate({saved_bytes}, q.options().dtype(at::kByte), "saved (the layer's activations for its backward)");
  const TorchWorkspace workspace(fsa::nsa_forward_workspace_bytes(config, shape, true, options), q);
  throw_if_error(fsa::nsa_forward(config, in, to_view(o, "o"), to_view(saved, "saved"), options, workspace.get()));
  return {o, saved};
}

Tensor7 nsa_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                     const OptionalTensor& w_k, const OptionalTensor& pe_k, const OptionalTensor& w_v,
                     const Tensor& gates, const Tensor& saved, const Tensor& d_o FSA_PARAMS(FSA_LAYER_ARGS)) {
  const TensorView saved_view = to_view(saved, "saved");
  const TensorView d_o_view = to_view(d_o, "d_o");
  const OpSettings settings = FSA_SETTINGS(FSA_LAYER_ARGS);
  const NsaConfig config = with_gate_mode(settings.config, gates);
  const NsaLayerOptions options{settings.selected};
  const NsaLayerInputs in = layer_inputs(q, k, v, cu_seqlens, w_k, pe_k, w_v, gates);
  Tensor dq = empty_like_contiguous(q), dk = empty_like_contiguous(k), dv = empty_like_contiguous(v);
  Tensor dw_k = grad_for(w_k, q), dpe_k = grad_for(pe_k, q), dw_v = grad_for(w_v, q);
  Tensor d_gates = empty_like_contiguous(gates);
  const NsaLayerGrads grads{to_view(dq, "dq"),
                            to_view(dk, "dk"),
                            to_view(dv, "dv"),
                            view_or_none(dw_k, w_k, "dw_k"),
                            view_or_none(dpe_k, pe_k, "dpe_k"),
                            view_or_none(dw_v, w_v, "dw_v"),
                            to_view(d_gates, "d_gates")};
  const TorchWorkspace workspace(fsa::nsa_backward_workspace_bytes(config, NsaLayerShape::of(in), options), q);
  throw_if_error(fsa::nsa_backward(config, in, saved_view, d_o_view, grads, options, workspace.get()));
  return {dq, dk, dv, dw_k, dpe_k, dw_v, d_gates};
}

namespace {

// nsa_prefill or nsa_decode (`call`) on the views of the op's tensors.
using CacheCall = Status (*)(const NsaConfig&, const NsaLayerInputs&, const NsaCache&, const NsaCacheBatch&,
                             const TensorView&, const NsaInferenceBranches&, const Workspace&);
// Its workspace query (0 on the CPU).
using CacheQuery = std::size_t (*)(const NsaConfig&, const fsa::NsaInferenceShape&);

Tensor run_cache_call(CacheCall call, CacheQuery query, const NsaConfig& layer_config,
                      FSA_CACHE_CALL_PARAMS) {
  const NsaConfig config = with_gate_mode(layer_config, gates);
  const NsaLayerInputs in = layer_inputs(q, k, v, cu_seqlens, w_k, pe_k, w_v, gates);
  const NsaCache cache{to_view(k_pages, "k_pages"), to_view(v_pages, "v_pages"), to_view(k_cmp_pages, "k_cmp_pages"),
                       to_view(v_cmp_pages, "v_cmp_pages"), to_view(k_tail, "k_tail")};
  const NsaCacheBatch batch{to_view(block_table, "block_table"), to_view(cmp_block_table, "cmp_block_table"),
                            to_view(cache_seqlens, "cache_seqlens"), to_view(slots, "slots")};
  Tensor o = at::empty({size_or_zero(q, 0), size_or_zero(q, 1), size_or_zero(v, 2)}, q.options());
  const TorchWorkspace workspace(query(config, fsa::NsaInferenceShape::of(in, cache, batch)), q);
  throw_if_error(call(config, in, cache, batch, to_view(o, "o"), NsaInferenceBranches{}, workspace.get()));
  return o;
}

}  // namespace

#define FSA_CACHE_CALL_ARGS_                                                                                      \
  q, k, v, cu_seqlens, w_k, pe_k, w_v, gates, k_pages, v_pages, k_cmp_pages, v_cmp_pages, k_tail, block_table, \
      cmp_block_table, cache_seqlens, slots

Tensor nsa_prefill(FSA_CACHE_CALL_PARAMS FSA_PARAMS(FSA_LAYER_CONFIG_ARGS)) {
  return run_cache_call(&fsa::nsa_prefill, &fsa::nsa_prefill_workspace_bytes,
                        FSA_SETTINGS(FSA_LAYER_CONFIG_ARGS).config,
                        FSA_CACHE_CALL_ARGS_);
}

Tensor nsa_decode(FSA_CACHE_CALL_PARAMS FSA_PARAMS(FSA_LAYER_CONFIG_ARGS)) {
  return run_cache_call(&fsa::nsa_decode, &fsa::nsa_decode_workspace_bytes,
                        FSA_SETTINGS(FSA_LAYER_CONFIG_ARGS).config,
                        FSA_CACHE_CALL_ARGS_);
}

#undef FSA_CACHE_CALL_ARGS_

namespace {

Device fsa_device(const c10::Device& device) {
  return device.is_cuda() ? Device::cuda(device.has_index() ? device.index() : 0) : Device::cpu();
}

NsaLayerShape layer_shape(FSA_SHAPE_PARAMS) {
  NsaLayerShape shape;
  shape.tokens = tokens;
  shape.num_seqs = static_cast<int>(num_seqs);
  shape.heads_q = static_cast<int>(heads_q);
  shape.heads_kv = static_cast<int>(heads_kv);
  shape.head_dim_qk = static_cast<int>(head_dim_qk);
  shape.head_dim_v = static_cast<int>(head_dim_v);
  shape.dtype = to_fsa_dtype(dtype, "dtype");
  // The CPU and GPU lay the saved buffer out differently (see fsa::nsa_saved_bytes).
  shape.device = fsa_device(device);
  return shape;
}

}  // namespace

std::tuple<std::int64_t, std::int64_t, std::int64_t> nsa_layer_bytes(FSA_SHAPE_PARAMS FSA_PARAMS(FSA_LAYER_ARGS)) {
  const NsaLayerShape shape = layer_shape(tokens, num_seqs, heads_q, heads_kv, head_dim_qk, head_dim_v, dtype, device);
  const OpSettings settings = FSA_SETTINGS(FSA_LAYER_ARGS);
  const NsaLayerOptions options{settings.selected};
  return {static_cast<std::int64_t>(fsa::nsa_saved_bytes(settings.config, shape, options)),
          static_cast<std::int64_t>(fsa::nsa_forward_workspace_bytes(settings.config, shape, true, options)),
          static_cast<std::int64_t>(fsa::nsa_backward_workspace_bytes(settings.config, shape, options))};
}

std::int64_t slc_plan_bytes(FSA_SHAPE_PARAMS, std::int64_t topk_width FSA_PARAMS(FSA_SLC_ATTN_ARGS)) {
  const NsaLayerShape s = layer_shape(tokens, num_seqs, heads_q, heads_kv, head_dim_qk, head_dim_v, dtype, device);
  if (s.device.kind == DeviceKind::kCPU) return 0;  // the CPU needs no plan (and would read cu_seqlens' values)
  // Views without data: the query reads sizes only.
  const TensorView q = TensorView::contiguous(nullptr, s.dtype, {s.tokens, s.heads_q, s.head_dim_qk}, s.device);
  const TensorView k = TensorView::contiguous(nullptr, s.dtype, {s.tokens, s.heads_kv, s.head_dim_qk}, s.device);
  const TensorView v = TensorView::contiguous(nullptr, s.dtype, {s.tokens, s.heads_kv, s.head_dim_v}, s.device);
  const TensorView topk_idx =
      TensorView::contiguous(nullptr, DType::kInt32, {s.heads_kv, s.tokens, topk_width}, s.device);
  const TensorView cu_seqlens = TensorView::contiguous(nullptr, DType::kInt32, {s.num_seqs + 1}, s.device);
  const OpSettings settings = FSA_SETTINGS(FSA_SLC_ATTN_ARGS);
  return static_cast<std::int64_t>(
      fsa::slc_plan_bytes(settings.config, q, k, v, topk_idx, cu_seqlens, settings.selected));
}

std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t> nsa_cache_bytes(
    std::int64_t heads_kv, std::int64_t head_dim_qk, std::int64_t head_dim_v, std::int64_t num_pages,
    std::int64_t page_size, std::int64_t num_cmp_pages, std::int64_t cmp_page_size, std::int64_t num_slots,
    at::ScalarType dtype, c10::Device device FSA_PARAMS(FSA_LAYER_CONFIG_ARGS)) {
  const auto narrow = [](std::int64_t value, const char* name) {
    TORCH_CHECK_VALUE(value >= INT32_MIN && value <= INT32_MAX, name, ": ", value, " does not fit in an int");
    return static_cast<int>(value);
  };
  NsaCacheShape shape;
  shape.heads_kv = narrow(heads_kv, "heads_kv");
  shape.head_dim_qk = narrow(head_dim_qk, "head_dim_qk");
  shape.head_dim_v = narrow(head_dim_v, "head_dim_v");
  shape.num_pages = num_pages;
  shape.page_size = narrow(page_size, "page_size");
  shape.num_cmp_pages = num_cmp_pages;
  shape.cmp_page_size = narrow(cmp_page_size, "cmp_page_size");
  shape.num_slots = num_slots;
  shape.dtype = to_fsa_dtype(dtype, "dtype");
  shape.device = fsa_device(device);
  const NsaCacheBytes bytes = fsa::nsa_cache_bytes(FSA_SETTINGS(FSA_LAYER_CONFIG_ARGS).config, shape);
  const auto as_int = [](std::size_t b) { return static_cast<std::int64_t>(b); };
  return {as_int(bytes.k_pages), as_int(bytes.v_pages), as_int(bytes.k_cmp_pages), as_int(bytes.v_cmp_pages),
          as_int(bytes.k_tail)};
}

std::tuple<std::int64_t, std::int64_t, std::int64_t> nsa_cache_pages(std::int64_t tokens, std::int64_t page_size,
                                                                     std::int64_t cmp_page_size
                                                                         FSA_PARAMS(FSA_LAYER_CONFIG_ARGS)) {
  const NsaConfig config = FSA_SETTINGS(FSA_LAYER_CONFIG_ARGS).config;
  NsaCacheShape shape;
  // Out-of-range sizes read as invalid (0 pages), like the C++ queries' other invalid shapes.
  shape.page_size = page_size > 0 && page_size <= INT32_MAX ? static_cast<int>(page_size) : 0;
  shape.cmp_page_size = cmp_page_size > 0 && cmp_page_size <= INT32_MAX ? static_cast<int>(cmp_page_size) : 0;
  return {fsa::nsa_cache_pages(shape, tokens), fsa::nsa_cache_cmp_pages(config, shape, tokens),
          fsa::nsa_cache_tail_rows(config)};
}

}  // namespace fsa::torch_ext
