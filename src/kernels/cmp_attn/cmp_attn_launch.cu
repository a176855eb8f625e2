// Host side of compressed attention on the GPU: checks the GPU path's limits, fills the params,
// sizes the backward's workspace from shapes alone (stream-ordered allocation: no host
// synchronisation, graph capturable) and turns the runtime dtype and head dims into template
// arguments through common::dispatch_attention.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>
#include <utility>

#include "cuda/runtime.hpp"
#include "kernels/cmp_attn/cmp_attn.hpp"
#include "kernels/cmp_attn/cmp_attn_params.hpp"
#include "kernels/common/launch_checks.hpp"
#include "kernels/common/stream_workspace.hpp"

namespace fsa::cuda {

template <class Element, int kDqk, int kDv>
Status launch_cmp_attn_forward(const CmpAttnParams& p, cudaStream_t stream);  // instantiations/cmp_fwd_*.cu
template <class Element, int kDqk, int kDv>
Status launch_cmp_attn_backward(const CmpAttnParams& p, cudaStream_t stream);  // instantiations/cmp_bwd_*.cu

namespace {

CmpAttnParams params_of(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& cu_seqlens, const TensorView& cu_cmp, const TensorView& o,
                        const TensorView& lse) {
  CmpAttnParams p{};
  p.q = q.data;
  p.q_token_stride = q.stride(0);
  p.q_head_stride = q.stride(1);
  p.k = k.data;
  p.k_row_stride = k.stride(0);
  p.k_head_stride = k.stride(1);
  p.v = v.data;
  p.v_row_stride = v.stride(0);
  p.v_head_stride = v.stride(1);
  p.o = o.data;
  p.o_token_stride = o.stride(0);
  p.o_head_stride = o.stride(1);
  p.lse = lse.ptr<float>();
  p.lse_head_stride = lse.stride(0);
  p.lse_token_stride = lse.stride(1);
  p.cu_seqlens = cu_seqlens.ptr<const std::int32_t>();
  p.cu_stride = cu_seqlens.stride(0);
  p.cu_cmp = cu_cmp.ptr<const std::int32_t>();
  p.cu_cmp_stride = cu_cmp.stride(0);
  p.num_seqs = static_cast<int>(cu_seqlens.size(0) - 1);
  p.tokens = q.size(0);
  p.cmp_rows = k.size(0);
  p.heads_q = static_cast<int>(q.size(1));
  p.heads_kv = static_cast<int>(k.size(1));
  p.group = p.heads_q / p.heads_kv;
  p.cmp_len = config.cmp_len;
  p.cmp_stride = config.cmp_stride;
  p.scale = config.softmax_scale(static_cast<int>(q.size(2)));
  return p;
}

}  // namespace

Status cmp_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                        const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                        const TensorView& o, const TensorView& lse) {
  constexpr const char* kOp = "cmp_attn_forward";
  for (const auto& [name, t] : {std::pair<const char*, const TensorView&>{"q", q}, {"k_cmp", k_cmp},
                                {"v_cmp", v_cmp}, {"o", o}})
    FSA_RETURN_IF_ERROR(common::check_rows_aligned(kOp, name, t));
  const DeviceGuard guard(q.device.index);
  cudaStream_t stream = current_stream();
  const CmpAttnParams p = params_of(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse);
  return common::dispatch_attention(kOp, q.dtype, q.size(2), v_cmp.size(2), [&]<class Element, int kDqk, int kDv>() {
    return launch_cmp_attn_forward<Element, kDqk, kDv>(p, stream);
  });
}

Status cmp_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                         const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                         const TensorView& o, const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                         const TensorView& dk_cmp, const TensorView& dv_cmp) {
  constexpr const char* kOp = "cmp_attn_backward";
  for (const auto& [name, t] : {std::pair<const char*, const TensorView&>{"q", q}, {"k_cmp", k_cmp},
                                {"v_cmp", v_cmp}, {"d_o", d_o}, {"dk_cmp", dk_cmp}, {"dv_cmp", dv_cmp}})
    FSA_RETURN_IF_ERROR(common::check_rows_aligned(kOp, name, t));
  const DeviceGuard guard(q.device.index);
  cudaStream_t stream = current_stream();
  CmpAttnParams p = params_of(config, q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse);
  p.d_o = d_o.data;
  p.do_token_stride = d_o.stride(0);
  p.do_head_stride = d_o.stride(1);
  p.dq = dq.data;
  p.dq_token_stride = dq.stride(0);
  p.dq_head_stride = dq.stride(1);
  p.dk = dk_cmp.data;
  p.dk_row_stride = dk_cmp.stride(0);
  p.dk_head_stride = dk_cmp.stride(1);
  p.dv = dv_cmp.data;
  p.dv_row_stride = dv_cmp.stride(0);
  p.dv_head_stride = dv_cmp.stride(1);
  const std::size_t delta_bytes = common::align256(static_cast<std::size_t>(p.tokens * p.heads_q) * sizeof(float));
  const std::size_t dq_bytes = common::align256(static_cast<std::size_t>(p.tokens * p.heads_q * q.size(2)) * sizeof(float));
  common::StreamWorkspace ws(delta_bytes + dq_bytes, stream);
  FSA_RETURN_IF_ERROR(ws.status());
  p.delta = reinterpret_cast<float*>(ws.bytes());
  p.dq_accum = reinterpret_cast<float*>(ws.bytes() + delta_bytes);
  return common::dispatch_attention(kOp, q.dtype, q.size(2), v_cmp.size(2), [&]<class Element, int kDqk, int kDv>() {
    return launch_cmp_attn_backward<Element, kDqk, kDv>(p, stream);
  });
}

}  // namespace fsa::cuda
