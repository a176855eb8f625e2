// Host side of sliding-window attention on the GPU: the masked flash-attention kernels
// (kernels/flash/) with query t seeing keys [max(0, t - w), t] of its own sequence (w = config.window;
// w >= the sequence length is dense causal attention), over the rows of k / v or (nsa_prefill's long
// chunks) a chunk's gathered window rows.
#include "cuda/runtime.hpp"
#include "kernels/common/launch_checks.hpp"
#include "kernels/flash/flash.hpp"
#include "cuda/backend.hpp"

namespace fsa::cuda {

namespace {

// p with the window mask of `config`.
FlashParams window_mask(const NsaConfig& config, FlashParams p) {
  p.mask = FlashMask::kWindow;
  p.window = config.window;
  return p;
}

FlashParams params_of(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse) {
  return window_mask(config, flash::make_params(q, k, v, cu_seqlens, cu_seqlens, o, lse,
                                                config.softmax_scale(static_cast<int>(q.size(2)))));
}

}  // namespace

Status swa_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                   const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse) {
  constexpr const char* kOp = "swa_forward";
  FSA_RETURN_IF_ERROR(common::check_rows_aligned(kOp, {{"q", q}, {"k", k}, {"v", v}, {"o", o}}));
  const DeviceGuard guard(q.device.index);
  return flash::forward(kOp, params_of(config, q, k, v, cu_seqlens, o, lse), q.dtype, q.size(2), v.size(2),
                        current_stream());
}

Status swa_prefixed_forward(const NsaConfig& config, const TensorView& q, const PrefixedKeyRows& keys,
                            const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse) {
  constexpr const char* kOp = "swa_forward";
  FSA_RETURN_IF_ERROR(common::check_rows_aligned(kOp, {{"q", q}, {"k", keys.k}, {"v", keys.v}, {"o", o}}));
  const DeviceGuard guard(q.device.index);
  const FlashParams p = window_mask(
      config, flash::make_prefixed_params(q, keys, cu_seqlens, o, lse,
                                          config.softmax_scale(static_cast<int>(q.size(2)))));
  return flash::forward(kOp, p, q.dtype, q.size(2), keys.v.size(2), current_stream());
}

Status swa_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse, const TensorView& d_o,
                    const TensorView& dq, const TensorView& dk, const TensorView& dv, const Workspace& workspace) {
  constexpr const char* kOp = "swa_backward";
  FSA_RETURN_IF_ERROR(common::check_rows_aligned(
      kOp, {{"q", q}, {"k", k}, {"v", v}, {"d_o", d_o}, {"dq", dq}, {"dk", dk}, {"dv", dv}}));
  const DeviceGuard guard(q.device.index);
  FlashParams p = params_of(config, q, k, v, cu_seqlens, o, lse);
  flash::set_gradients(p, d_o, dq, dk, dv);
  return flash::backward(kOp, p, q.dtype, q.size(2), v.size(2), current_stream(), workspace);
}

}  // namespace fsa::cuda
