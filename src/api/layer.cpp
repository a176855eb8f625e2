// nsa_forward / nsa_backward: validation of the whole layer's arguments, the workspace queries and
// the route to a backend.
#include <vector>

#include "fsa/layer.hpp"
#include "reference/layer.hpp"
#include "route.hpp"
#include "validate.hpp"

namespace fsa {

using detail::Arg;
using detail::AttnDims;
using detail::Dim;

NsaLayerShape NsaLayerShape::of(const NsaLayerInputs& in) {
  NsaLayerShape s;
  if (in.q.ndim == 3) {
    s.tokens = in.q.size(0);
    s.heads_q = static_cast<int>(in.q.size(1));
    s.head_dim_qk = static_cast<int>(in.q.size(2));
  }
  if (in.k.ndim == 3) s.heads_kv = static_cast<int>(in.k.size(1));
  if (in.v.ndim == 3) s.head_dim_v = static_cast<int>(in.v.size(2));
  if (in.cu_seqlens.ndim == 1) s.num_seqs = static_cast<int>(in.cu_seqlens.size(0) - 1);
  s.dtype = in.q.dtype;
  s.device = in.q.device;
  return s;
}

// The CPU keeps activations in its compute type (fp32/fp64), the GPU in the input dtype: the
// layouts differ, so the buffer's size depends on the device too.
std::size_t nsa_saved_bytes(const NsaConfig& config, const NsaLayerShape& shape, const NsaLayerOptions& options) {
  if (!config.validate().is_ok()) return 0;  // the op itself reports the invalid field
#ifdef FSA_WITH_CUDA
  if (shape.device.kind == DeviceKind::kCUDA) return cuda::nsa_saved_bytes(config, shape, options);
#endif
  (void)options;
  return ref::nsa_saved_bytes(config, shape);
}

std::size_t nsa_forward_workspace_bytes(const NsaConfig& config, const NsaLayerShape& shape, bool with_saved,
                                        const NsaLayerOptions& options) {
  return detail::query_bytes(config.validate(), shape.device, [&] {
    return FSA_CUDA_QUERY(cuda::nsa_forward_workspace_bytes(config, shape, with_saved, options));
  });
}

std::size_t nsa_backward_workspace_bytes(const NsaConfig& config, const NsaLayerShape& shape,
                                         const NsaLayerOptions& options) {
  return detail::query_bytes(config.validate(), shape.device, [&] {
    return FSA_CUDA_QUERY(cuda::nsa_backward_workspace_bytes(config, shape, options));
  });
}

namespace {

Status check_saved(const NsaConfig& config, const NsaLayerInputs& in, const TensorView& saved,
                   const NsaLayerOptions& options) {
  const Arg s{"saved", saved};
  FSA_RETURN_IF_ERROR(detail::check_dtype(s, DType::kUInt8));
  FSA_RETURN_IF_ERROR(detail::check_same_device(s, {"q", in.q}));
  const std::int64_t bytes = static_cast<std::int64_t>(nsa_saved_bytes(config, NsaLayerShape::of(in), options));
  FSA_RETURN_IF_ERROR(detail::check_tensor(s, {{Dim::kAnyDim, "bytes"}}));
  if (saved.size(0) < bytes)
    return FSA_INVALID("saved: expected at least nsa_saved_bytes() = " + std::to_string(bytes) + " bytes, got " +
                       std::to_string(saved.size(0)));
  // The GPU carves the saved tensors (16-byte rows, the plan) from it at 256-byte offsets.
  if (saved.device.kind == DeviceKind::kCUDA && reinterpret_cast<std::uintptr_t>(saved.data) % kWorkspaceAlignment != 0)
    return FSA_INVALID("saved: expected a " + std::to_string(kWorkspaceAlignment) + "-byte aligned pointer");
  return Status::ok();
}

Status check_grad(const char* name, const TensorView& grad, const char* input_name, const TensorView& input) {
  if (!grad.defined()) return Status::ok();
  if (!input.defined()) return FSA_INVALID(std::string(name) + ": expected none, since " + input_name + " is none");
  return detail::check_like({name, grad}, {input_name, input});
}

Status check_options(const NsaLayerOptions& options) {
  const SlcOptions& o = options.selected;
  switch (o.path) {
    case SlcPath::kAuto:
    case SlcPath::kKvOuter:
    case SlcPath::kSplit:
    case SlcPath::kQueryOuter: break;
    default:
      return FSA_INVALID("options.selected.path: unknown SlcPath value " + std::to_string(static_cast<int>(o.path)));
  }
  if (o.dense_threshold < 0)
    return FSA_INVALID("options.selected.dense_threshold: expected >= 0, got " + std::to_string(o.dense_threshold));
  return Status::ok();
}

// The layer's inputs as named arguments, for the overlap check.
std::vector<detail::Arg> layer_args(const NsaLayerInputs& in) {
  return {{"q", in.q},       {"k", in.k},       {"v", in.v},       {"cu_seqlens", in.cu_seqlens},
          {"w_k", in.w_k},   {"pe_k", in.pe_k}, {"w_v", in.w_v},   {"gates", in.gates}};
}

}  // namespace

Status nsa_forward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& o,
                   const TensorView& saved, const NsaLayerOptions& options, const Workspace& workspace) {
  constexpr const char* kOp = "nsa_forward";
  AttnDims dims;
  FSA_RETURN_IF_ERROR(detail::check_layer_inputs(config, inputs, &dims));
  FSA_RETURN_IF_ERROR(check_options(options));
  FSA_RETURN_IF_ERROR(detail::check_layer_output({"o", o}, {"q", inputs.q}, dims));
  if (saved.defined()) FSA_RETURN_IF_ERROR(check_saved(config, inputs, saved, options));
  FSA_RETURN_IF_ERROR(detail::check_no_overlap({{"o", o}, {"saved", saved}}, layer_args(inputs), workspace));
  const NsaLayerShape shape = NsaLayerShape::of(inputs);
  const std::size_t needed = detail::on_gpu_bytes(inputs.q, [&] {
    return FSA_CUDA_QUERY(cuda::nsa_forward_workspace_bytes(config, shape, saved.defined(), options));
  });
  return detail::route(
      kOp, inputs.q.device, [&] { ref::nsa_forward(config, inputs, o, saved); }, workspace, needed,
      [&](const Workspace& ws) {
        return FSA_CUDA_BACKEND(kOp, inputs.q.device, cuda::nsa_forward(config, inputs, o, saved, options, ws));
      });
}

Status nsa_backward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& saved,
                    const TensorView& d_o, const NsaLayerGrads& grads, const NsaLayerOptions& options,
                    const Workspace& workspace) {
  constexpr const char* kOp = "nsa_backward";
  AttnDims dims;
  FSA_RETURN_IF_ERROR(detail::check_layer_inputs(config, inputs, &dims));
  FSA_RETURN_IF_ERROR(check_options(options));
  FSA_RETURN_IF_ERROR(check_saved(config, inputs, saved, options));
  FSA_RETURN_IF_ERROR(detail::check_layer_output({"d_o", d_o}, {"q", inputs.q}, dims));
  FSA_RETURN_IF_ERROR(check_grad("dq", grads.dq, "q", inputs.q));
  FSA_RETURN_IF_ERROR(check_grad("dk", grads.dk, "k", inputs.k));
  FSA_RETURN_IF_ERROR(check_grad("dv", grads.dv, "v", inputs.v));
  FSA_RETURN_IF_ERROR(check_grad("dw_k", grads.dw_k, "w_k", inputs.w_k));
  FSA_RETURN_IF_ERROR(check_grad("dpe_k", grads.dpe_k, "pe_k", inputs.pe_k));
  FSA_RETURN_IF_ERROR(check_grad("dw_v", grads.dw_v, "w_v", inputs.w_v));
  FSA_RETURN_IF_ERROR(check_grad("d_gates", grads.d_gates, "gates", inputs.gates));
  std::vector<detail::Arg> read = layer_args(inputs);
  read.push_back({"saved", saved});
  read.push_back({"d_o", d_o});
  FSA_RETURN_IF_ERROR(detail::check_no_overlap(
      {{"dq", grads.dq}, {"dk", grads.dk}, {"dv", grads.dv}, {"dw_k", grads.dw_k}, {"dpe_k", grads.dpe_k},
       {"dw_v", grads.dw_v}, {"d_gates", grads.d_gates}},
      read, workspace));
  const NsaLayerShape shape = NsaLayerShape::of(inputs);
  const std::size_t needed = detail::on_gpu_bytes(
      inputs.q, [&] { return FSA_CUDA_QUERY(cuda::nsa_backward_workspace_bytes(config, shape, options)); });
  return detail::route(
      kOp, inputs.q.device, [&] { ref::nsa_backward(config, inputs, saved, d_o, grads); }, workspace, needed,
      [&](const Workspace& ws) {
        return FSA_CUDA_BACKEND(kOp, inputs.q.device,
                                cuda::nsa_backward(config, inputs, saved, d_o, grads, options, ws));
      });
}

}  // namespace fsa
