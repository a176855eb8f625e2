// Host side of the masked flash-attention kernels: params, workspace layout and dispatch (flash.hpp).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/common/launch_checks.hpp"
#include "common/workspace_carver.hpp"
#include "cuda/backend.hpp"
#include "kernels/flash/flash.hpp"

namespace fsa::cuda {

template <class Element, int kDqk, int kDv>
Status launch_flash_forward(const FlashParams& p, cudaStream_t stream);  // instantiations/flash_fwd_*.cu
template <class Element, int kDqk, int kDv>
Status launch_flash_backward(const FlashParams& p, cudaStream_t stream);  // instantiations/flash_bwd_*.cu

namespace flash {

FlashParams make_params(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& cu_seqlens,
                        const TensorView& key_base, const TensorView& o, const TensorView& lse, float scale) {
  FlashParams p{};
  p.arch = common::kernel_arch();
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
  p.key_base = key_base.ptr<const std::int32_t>();
  p.key_base_stride = key_base.stride(0);
  p.num_seqs = static_cast<int>(cu_seqlens.size(0) - 1);
  p.tokens = q.size(0);
  p.key_rows = k.size(0);
  p.heads_q = static_cast<int>(q.size(1));
  p.heads_kv = static_cast<int>(k.size(1));
  p.group = p.heads_q / p.heads_kv;
  p.scale = scale;
  return p;
}

FlashParams make_prefixed_params(const TensorView& q, const PrefixedKeyRows& keys, const TensorView& cu_seqlens,
                                 const TensorView& o, const TensorView& lse, float scale) {
  FlashParams p = make_params(q, keys.k, keys.v, cu_seqlens, keys.key_base, o, lse, scale);
  p.prefix = {keys.key_prefix.ptr<const std::int32_t>(), keys.key_prefix.stride(0)};
  return p;
}

void set_gradients(FlashParams& p, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                   const TensorView& dv) {
  p.d_o = d_o.data;
  p.do_token_stride = d_o.stride(0);
  p.do_head_stride = d_o.stride(1);
  p.dq = dq.data;
  p.dq_token_stride = dq.stride(0);
  p.dq_head_stride = dq.stride(1);
  p.dk = dk.data;
  p.dk_row_stride = dk.stride(0);
  p.dk_head_stride = dk.stride(1);
  p.dv = dv.data;
  p.dv_row_stride = dv.stride(0);
  p.dv_head_stride = dv.stride(1);
}

Status forward(const char* op, const FlashParams& p, DType dtype, std::int64_t dqk, std::int64_t dv,
               cudaStream_t stream) {
  return common::dispatch_attention(op, dtype, dqk, dv, [&]<class Element, int kDqk, int kDv>() {
    return launch_flash_forward<Element, kDqk, kDv>(p, stream);
  });
}

namespace {

// The backward's fp32 workspace (flash_params.hpp): delta [Hq, N], then the dq, dk and dv
// accumulators. Sizes (no base) or carves.
void backward_layout(detail::WorkspaceCarver& c, std::int64_t tokens, std::int64_t heads_q, std::int64_t key_rows,
                     std::int64_t heads_kv, std::int64_t dqk, std::int64_t dv, FlashParams* p) {
  p->delta = c.take<float>(tokens * heads_q);
  p->dq_accum = c.take<float>(tokens * heads_q * dqk);
  p->dk_accum = c.take<float>(key_rows * heads_kv * dqk);
  p->dv_accum = c.take<float>(key_rows * heads_kv * dv);
}

}  // namespace

Status backward(const char* op, FlashParams p, DType dtype, std::int64_t dqk, std::int64_t dv, cudaStream_t stream,
                const Workspace& workspace) {
  detail::WorkspaceCarver carve(workspace.data);
  backward_layout(carve, p.tokens, p.heads_q, p.key_rows, p.heads_kv, dqk, dv, &p);
  return common::dispatch_attention(op, dtype, dqk, dv, [&]<class Element, int kDqk, int kDv>() {
    return launch_flash_backward<Element, kDqk, kDv>(p, stream);
  });
}

}  // namespace flash

std::size_t flash_backward_workspace_bytes(const TensorView& q, const TensorView& k, const TensorView& v) {
  detail::WorkspaceCarver sizing;
  FlashParams unused{};
  flash::backward_layout(sizing, q.size(0), q.size(1), k.size(0), k.size(1), q.size(2), v.size(2), &unused);
  return sizing.bytes();
}

}  // namespace fsa::cuda
