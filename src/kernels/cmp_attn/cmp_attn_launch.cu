// Host side of compressed attention on the GPU: the masked flash-attention kernels
// (kernels/flash/) with the compressed-key rule i*s + l - 1 <= t over the rows of k_cmp / v_cmp that
// cu_cmp gives each sequence, or (nsa_prefill's long chunks) over a chunk's gathered compressed keys.

#include "cuda/runtime.hpp"
#include "cuda/backend.hpp"
#include "kernels/common/launch_checks.hpp"
#include "kernels/flash/flash.hpp"

namespace fsa::cuda {

namespace {

// p with the compressed-key mask of `config`.
FlashParams compressed_mask(const NsaConfig& config, FlashParams p) {
  p.mask = FlashMask::kCompressed;
  p.cmp_len = config.cmp_len;
  p.cmp_stride = config.cmp_stride;
  return p;
}

FlashParams params_of(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp, const TensorView& v_cmp,
                      const TensorView& cu_seqlens, const TensorView& cu_cmp, const TensorView& o,
                      const TensorView& lse) {
  return compressed_mask(config, flash::make_params(q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse,
                                                    config.softmax_scale(static_cast<int>(q.size(2)))));
}

}  // namespace

Status cmp_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                        const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                        const TensorView& o, const TensorView& lse) {
  constexpr const char* kOp = "cmp_attn_forward";
  FSA_RETURN_IF_ERROR(common::check_rows_aligned(kOp, {{"q", q}, {"k_cmp", k_cmp}, {"v_cmp", v_cmp}, {"o", o}}));
  const DeviceGuard guard(q.device.index);
  return flash::forward(kOp, params_of(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse), q.dtype, q.size(2),
                        v_cmp.size(2), current_stream());
}

Status cmp_attn_prefixed_forward(const NsaConfig& config, const TensorView& q, const PrefixedKeyRows& keys,
                                 const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse) {
  constexpr const char* kOp = "cmp_attn_forward";
  FSA_RETURN_IF_ERROR(common::check_rows_aligned(kOp, {{"q", q}, {"k_cmp", keys.k}, {"v_cmp", keys.v}, {"o", o}}));
  const DeviceGuard guard(q.device.index);
  const FlashParams p = compressed_mask(
      config, flash::make_prefixed_params(q, keys, cu_seqlens, o, lse,
                                          config.softmax_scale(static_cast<int>(q.size(2)))));
  return flash::forward(kOp, p, q.dtype, q.size(2), keys.v.size(2), current_stream());
}

Status cmp_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                         const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                         const TensorView& o, const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                         const TensorView& dk_cmp, const TensorView& dv_cmp, const Workspace& workspace) {
  constexpr const char* kOp = "cmp_attn_backward";
  FSA_RETURN_IF_ERROR(common::check_rows_aligned(kOp, {{"q", q}, {"k_cmp", k_cmp}, {"v_cmp", v_cmp}, {"d_o", d_o},
                                                       {"dq", dq}, {"dk_cmp", dk_cmp}, {"dv_cmp", dv_cmp}}));
  const DeviceGuard guard(q.device.index);
  FlashParams p = params_of(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse);
  flash::set_gradients(p, d_o, dq, dk_cmp, dv_cmp);
  return flash::backward(kOp, p, q.dtype, q.size(2), v_cmp.size(2), current_stream(), workspace);
}

}  // namespace fsa::cuda
