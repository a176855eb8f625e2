// GPU path of nsa_forward / nsa_backward (spec sections 1-7 in the order of include/fsa/layer.hpp).
//
// Saved for the backward (the `saved` buffer, GPU layout): cu_cmp, the rotated compressed keys and
// the compressed values, each branch's output and LSE, and topk_idx. Recomputed instead: the
// rotated q and k (one elementwise pass each, cheaper than keeping N*(Hq+Hkv)*Dqk more elements)
// and the selected attention's plan (rebuilt from topk_idx by its backward).
//
// Backward: combine^T, then each branch's attention backward w.r.t. the rotated q, k; the three
// dq and the two dk/dv are summed in the input dtype (add_into), rotated back (RoPE^T), and the
// compressed keys' and values' gradients go through the compression backward into dk, dv and the
// parameters' gradients.
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "cuda/runtime.hpp"
#include "fsa/ops.hpp"
#include "kernels/combine/combine.hpp"
#include "kernels/common/launch_checks.hpp"
#include "kernels/common/stream_workspace.hpp"
#include "layer/cuda_layer.hpp"

// The branches run through the public entry points (fsa::*, which validate their arguments);
// add_into is the only kernel called directly.

namespace fsa::cuda {

namespace {

// Hands out 256-byte aligned tensors from one byte buffer. With no buffer it only counts bytes, so
// the same code sizes a buffer (from shapes alone) and then lays it out.
class Carver {
 public:
  Carver(unsigned char* base, Device device) : base_(base), device_(device) {}
  TensorView take(DType dtype, std::initializer_list<std::int64_t> sizes) {
    std::int64_t count = 1;
    for (const std::int64_t s : sizes) count *= s;
    void* data = base_ != nullptr ? base_ + offset_ : nullptr;
    offset_ += common::align256(static_cast<std::size_t>(count) * dtype_size(dtype));
    return TensorView::contiguous(data, dtype, sizes, device_);
  }
  std::size_t bytes() const { return offset_; }

 private:
  unsigned char* base_;
  Device device_;
  std::size_t offset_ = 0;
};

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
  TensorView cu_cmp, k_cmp, v_cmp, o_cmp, lse_cmp, o_slc, lse_slc, o_swa, lse_swa, topk;
  std::size_t bytes = 0;

  SavedLayout(const Dims& d, unsigned char* base, Device device) {
    Carver c(base, device);
    cu_cmp = c.take(DType::kInt32, {d.nseq + 1});
    k_cmp = c.take(d.dtype, {d.ncmp, d.hkv, d.dqk});
    v_cmp = c.take(d.dtype, {d.ncmp, d.hkv, d.dv});
    o_cmp = c.take(d.dtype, {d.n, d.hq, d.dv});
    o_slc = c.take(d.dtype, {d.n, d.hq, d.dv});
    o_swa = c.take(d.dtype, {d.n, d.hq, d.dv});
    lse_cmp = c.take(DType::kFloat32, {d.hq, d.n});
    lse_slc = c.take(DType::kFloat32, {d.hq, d.n});
    lse_swa = c.take(DType::kFloat32, {d.hq, d.n});
    topk = c.take(DType::kInt32, {d.hkv, d.n, d.topk});
    bytes = c.bytes();
  }
};

// q and k at their positions: rotated copies in `ws`, or the inputs themselves without RoPE.
struct Rotated {
  TensorView q, k;
};

Rotated rotated_layout(const NsaConfig& c, const Dims& d, const NsaLayerInputs& in, Carver& ws) {
  if (!c.rope.enabled) return {in.q, in.k};
  return {ws.take(d.dtype, {d.n, d.hq, d.dqk}), ws.take(d.dtype, {d.n, d.hkv, d.dqk})};
}

Status rotate(const NsaConfig& c, const NsaLayerInputs& in, const Rotated& r) {
  if (!c.rope.enabled) return Status::ok();
  FSA_RETURN_IF_ERROR(fsa::rope_forward(c.rope, in.q, in.cu_seqlens, 1, r.q));
  return fsa::rope_forward(c.rope, in.k, in.cu_seqlens, 1, r.k);
}

// The backward's scratch tensors.
struct BackwardScratch {
  Rotated rot;
  TensorView d_cmp, d_slc, d_swa;  // d_o of each branch
  TensorView dq, dq_part, dk, dk_part, dv, dv_part, dk_cmp, dv_cmp;

  BackwardScratch(const NsaConfig& c, const Dims& d, const NsaLayerInputs& in, Carver& ws)
      : rot(rotated_layout(c, d, in, ws)) {
    d_cmp = ws.take(d.dtype, {d.n, d.hq, d.dv});
    d_slc = ws.take(d.dtype, {d.n, d.hq, d.dv});
    d_swa = ws.take(d.dtype, {d.n, d.hq, d.dv});
    dq = ws.take(d.dtype, {d.n, d.hq, d.dqk});
    dq_part = ws.take(d.dtype, {d.n, d.hq, d.dqk});
    dk = ws.take(d.dtype, {d.n, d.hkv, d.dqk});
    dk_part = ws.take(d.dtype, {d.n, d.hkv, d.dqk});
    dv = ws.take(d.dtype, {d.n, d.hkv, d.dv});
    dv_part = ws.take(d.dtype, {d.n, d.hkv, d.dv});
    dk_cmp = ws.take(d.dtype, {d.ncmp, d.hkv, d.dqk});
    dv_cmp = ws.take(d.dtype, {d.ncmp, d.hkv, d.dv});
  }
};

// Where a gradient is summed: straight into the caller's tensor when no RoPE^T pass follows the
// sum, else into scratch (also when the caller did not ask for it: the others still need the sum).
TensorView sum_target(const TensorView& caller, const TensorView& scratch, bool rotated_after) {
  return caller.defined() && !rotated_after ? caller : scratch;
}

}  // namespace

std::size_t nsa_saved_bytes(const NsaConfig& config, const NsaLayerShape& shape) {
  return SavedLayout(dims_of(config, shape), nullptr, shape.device).bytes;
}

Status nsa_forward(const NsaConfig& c, const NsaLayerInputs& in, const TensorView& o, const TensorView& saved) {
  // The kernels move rows as 16-byte vectors: the caller's tensors are named here, not as the
  // branch ops' arguments.
  FSA_RETURN_IF_ERROR(common::check_rows_aligned("nsa_forward", {{"q", in.q}, {"k", in.k}, {"v", in.v}, {"o", o}}));
  const DeviceGuard guard(in.q.device.index);
  cudaStream_t stream = current_stream();
  const Dims d = dims_of(c, NsaLayerShape::of(in));
  // Without `saved` (inference) the saved tensors live in the workspace instead.
  Carver sizing(nullptr, in.q.device);
  const std::size_t saved_bytes = SavedLayout(d, nullptr, in.q.device).bytes;
  rotated_layout(c, d, in, sizing);
  common::StreamWorkspace ws(sizing.bytes() + (saved.defined() ? 0 : saved_bytes), stream);
  FSA_RETURN_IF_ERROR(ws.status());
  Carver carve(ws.bytes(), in.q.device);
  const Rotated rot = rotated_layout(c, d, in, carve);
  const SavedLayout s(d, saved.defined() ? saved.ptr<unsigned char>() : ws.bytes() + carve.bytes(), in.q.device);

  FSA_RETURN_IF_ERROR(fsa::compressed_cu_seqlens(c, in.cu_seqlens, s.cu_cmp));
  FSA_RETURN_IF_ERROR(fsa::compress_forward(c, in.k, in.cu_seqlens, s.cu_cmp, in.w_k, in.pe_k, s.k_cmp));
  FSA_RETURN_IF_ERROR(fsa::compress_forward(c, in.v, in.cu_seqlens, s.cu_cmp, in.w_v, TensorView{}, s.v_cmp));
  FSA_RETURN_IF_ERROR(rotate(c, in, rot));
  if (c.rope.enabled) FSA_RETURN_IF_ERROR(fsa::rope_forward(c.rope, s.k_cmp, s.cu_cmp, c.cmp_stride, s.k_cmp));
  FSA_RETURN_IF_ERROR(
      fsa::cmp_attn_forward(c, rot.q, s.k_cmp, s.v_cmp, in.cu_seqlens, s.cu_cmp, s.o_cmp, s.lse_cmp));
  FSA_RETURN_IF_ERROR(fsa::select_blocks(c, rot.q, s.k_cmp, s.lse_cmp, in.cu_seqlens, s.cu_cmp, s.topk));
  FSA_RETURN_IF_ERROR(fsa::slc_attn_forward(c, rot.q, rot.k, in.v, s.topk, in.cu_seqlens, s.o_slc, s.lse_slc));
  FSA_RETURN_IF_ERROR(fsa::swa_forward(c, rot.q, rot.k, in.v, in.cu_seqlens, s.o_swa, s.lse_swa));
  return fsa::combine_forward(c, in.gates, s.o_cmp, s.o_slc, s.o_swa, o);
}

Status nsa_backward(const NsaConfig& c, const NsaLayerInputs& in, const TensorView& saved, const TensorView& d_o,
                    const NsaLayerGrads& g) {
  FSA_RETURN_IF_ERROR(common::check_rows_aligned(
      "nsa_backward", {{"q", in.q}, {"k", in.k}, {"v", in.v}, {"d_o", d_o}, {"dq", g.dq}, {"dk", g.dk}, {"dv", g.dv}}));
  const DeviceGuard guard(in.q.device.index);
  cudaStream_t stream = current_stream();
  const Dims d = dims_of(c, NsaLayerShape::of(in));
  const SavedLayout s(d, saved.ptr<unsigned char>(), in.q.device);
  Carver sizing(nullptr, in.q.device);
  BackwardScratch{c, d, in, sizing};
  common::StreamWorkspace ws(sizing.bytes(), stream);
  FSA_RETURN_IF_ERROR(ws.status());
  Carver carve(ws.bytes(), in.q.device);
  const BackwardScratch x(c, d, in, carve);
  const TensorView& cu = in.cu_seqlens;

  FSA_RETURN_IF_ERROR(rotate(c, in, x.rot));
  FSA_RETURN_IF_ERROR(
      fsa::combine_backward(c, in.gates, s.o_cmp, s.o_slc, s.o_swa, d_o, g.d_gates, x.d_cmp, x.d_slc, x.d_swa));
  // Branch gradients w.r.t. the rotated q and k: the window's into dq/dk/dv, the others added.
  const bool rope = c.rope.enabled;
  const TensorView dq = sum_target(g.dq, x.dq, rope), dk = sum_target(g.dk, x.dk, rope);
  const TensorView dv = sum_target(g.dv, x.dv, false);
  FSA_RETURN_IF_ERROR(fsa::swa_backward(c, x.rot.q, x.rot.k, in.v, cu, s.o_swa, s.lse_swa, x.d_swa, dq, dk, dv));
  FSA_RETURN_IF_ERROR(fsa::slc_attn_backward(c, x.rot.q, x.rot.k, in.v, s.topk, cu, s.o_slc, s.lse_slc, x.d_slc,
                                             x.dq_part, x.dk_part, x.dv_part));
  FSA_RETURN_IF_ERROR(add_into(dq, x.dq_part));
  FSA_RETURN_IF_ERROR(add_into(dk, x.dk_part));
  FSA_RETURN_IF_ERROR(add_into(dv, x.dv_part));
  FSA_RETURN_IF_ERROR(fsa::cmp_attn_backward(c, x.rot.q, s.k_cmp, s.v_cmp, cu, s.cu_cmp, s.o_cmp, s.lse_cmp, x.d_cmp,
                                             x.dq_part, x.dk_cmp, x.dv_cmp));
  FSA_RETURN_IF_ERROR(add_into(dq, x.dq_part));
  if (rope && g.dq.defined()) FSA_RETURN_IF_ERROR(fsa::rope_backward(c.rope, dq, cu, 1, g.dq));

  // Keys: RoPE^T of the attention part, plus the compression backward of the compressed keys'
  // gradient (itself rotated back at the windows' start positions).
  if (rope) FSA_RETURN_IF_ERROR(fsa::rope_backward(c.rope, x.dk_cmp, s.cu_cmp, c.cmp_stride, x.dk_cmp));
  FSA_RETURN_IF_ERROR(fsa::compress_backward(c, in.k, cu, s.cu_cmp, in.w_k, in.pe_k, x.dk_cmp, x.dk_part, g.dw_k,
                                             g.dpe_k));
  if (g.dk.defined()) {
    if (rope) FSA_RETURN_IF_ERROR(fsa::rope_backward(c.rope, dk, cu, 1, g.dk));
    FSA_RETURN_IF_ERROR(add_into(g.dk, x.dk_part));
  }
  FSA_RETURN_IF_ERROR(
      fsa::compress_backward(c, in.v, cu, s.cu_cmp, in.w_v, TensorView{}, x.dv_cmp, x.dv_part, g.dw_v, TensorView{}));
  if (g.dv.defined()) FSA_RETURN_IF_ERROR(add_into(g.dv, x.dv_part));
  return Status::ok();
}

}  // namespace fsa::cuda
