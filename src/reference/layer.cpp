#include "layer.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "reference.hpp"
#include "tensor_io.hpp"

namespace fsa::ref {

namespace {

// Where each saved tensor lives in the byte buffer. Offsets in bytes, sizes in elements.
struct SavedLayout {
  struct Slot {
    std::size_t offset = 0, count = 0;
  };
  Slot k_cmp, v_cmp, o_cmp, lse_cmp, o_slc, lse_slc, o_swa, lse_swa, topk, cu_cmp;
  std::size_t bytes = 0;

  SavedLayout(const NsaConfig& c, const NsaLayerShape& s) {
    const std::size_t elem = s.dtype == DType::kFloat64 ? 8 : 4;
    const std::size_t n = static_cast<std::size_t>(s.tokens), ncmp = static_cast<std::size_t>(max_compressed_tokens(s.tokens, c));
    const std::size_t hq = static_cast<std::size_t>(s.heads_q), hkv = static_cast<std::size_t>(s.heads_kv);
    const std::size_t dqk = static_cast<std::size_t>(s.head_dim_qk), dv = static_cast<std::size_t>(s.head_dim_v);
    auto place = [this](Slot& slot, std::size_t count, std::size_t size) {
      slot = {bytes, count};
      bytes += (count * size + 7) / 8 * 8;
    };
    place(k_cmp, ncmp * hkv * dqk, elem);
    place(v_cmp, ncmp * hkv * dv, elem);
    place(o_cmp, n * hq * dv, elem);
    place(lse_cmp, hq * n, elem);
    place(o_slc, n * hq * dv, elem);
    place(lse_slc, hq * n, elem);
    place(o_swa, n * hq * dv, elem);
    place(lse_swa, hq * n, elem);
    place(topk, hkv * n * static_cast<std::size_t>(c.topk), 4);
    place(cu_cmp, static_cast<std::size_t>(s.num_seqs) + 1, 4);
  }
};

template <class V>
void save(unsigned char* base, const SavedLayout::Slot& slot, const std::vector<V>& values) {
  std::memcpy(base + slot.offset, values.data(), std::min(slot.count, values.size()) * sizeof(V));
}

template <class V>
std::vector<V> restore(const unsigned char* base, const SavedLayout::Slot& slot, std::size_t count) {
  std::vector<V> values(count);
  std::memcpy(values.data(), base + slot.offset, count * sizeof(V));
  return values;
}

// Everything the forward computes, in the compute type.
template <class T>
struct Activations {
  Varlen seqs, cmp;
  HeadDims dims;
  std::vector<T> q_rot, k_rot, k_cmp, v_cmp;  // k_cmp is rotated when RoPE is on
  BranchOutputs<T> branches;
};

template <class T>
std::vector<T> rotated(const NsaConfig& c, const std::vector<T>& x, const Varlen& rows, int stride, int heads,
                       int dim) {
  std::vector<T> y = x;
  if (c.rope.enabled) rope_apply<T>(c.rope, rows, stride, heads, dim, x.data(), y.data(), false);
  return y;
}

template <class T>
void unrotate(const NsaConfig& c, std::vector<T>& dx, const Varlen& rows, int stride, int heads, int dim) {
  if (c.rope.enabled) rope_apply<T>(c.rope, rows, stride, heads, dim, dx.data(), dx.data(), true);
}

template <class T>
void forward_typed(const NsaConfig& c, const NsaLayerInputs& in, const TensorView& o_view, const TensorView& saved) {
  Activations<T> a;
  a.seqs.cu = load_int32(in.cu_seqlens);
  a.cmp = compressed_varlen(a.seqs, c);
  const NsaLayerShape shape = NsaLayerShape::of(in);
  a.dims = {shape.heads_q, shape.heads_kv, shape.head_dim_qk, shape.head_dim_v};
  const std::size_t n = static_cast<std::size_t>(shape.tokens), ncmp = static_cast<std::size_t>(a.cmp.total());
  const auto q = load<T>(in.q), k = load<T>(in.k), v = load<T>(in.v);
  const auto w_k = load<T>(in.w_k), pe_k = load<T>(in.pe_k), w_v = load<T>(in.w_v), gates = load<T>(in.gates);
  const int hq = a.dims.hq, hkv = a.dims.hkv, dqk = a.dims.dqk, dv = a.dims.dv;

  // 1. Compress the pre-RoPE keys and values.
  std::vector<T> k_cmp(ncmp * hkv * dqk);
  a.v_cmp.assign(ncmp * hkv * dv, T(0));
  compress_forward<T>(c, a.seqs, a.cmp, hkv, dqk, dqk, k.data(), w_k.empty() ? nullptr : w_k.data(),
                      pe_k.empty() ? nullptr : pe_k.data(), k_cmp.data());
  compress_forward<T>(c, a.seqs, a.cmp, hkv, dv, dv, v.data(), w_v.empty() ? nullptr : w_v.data(), nullptr,
                      a.v_cmp.data());
  // 2. Rotate q, k at their positions and compressed keys at the start of their windows.
  a.q_rot = rotated(c, q, a.seqs, 1, hq, dqk);
  a.k_rot = rotated(c, k, a.seqs, 1, hkv, dqk);
  a.k_cmp = rotated(c, k_cmp, a.cmp, c.cmp_stride, hkv, dqk);
  // 3. The three branches.
  a.branches = branches_forward<T>(c, RowPositions::starting(a.seqs), a.seqs, a.cmp, a.dims, a.q_rot.data(),
                                   a.k_rot.data(), v.data(), a.k_cmp.data(), a.v_cmp.data());
  const BranchOutputs<T>& br = a.branches;
  // 4. Gates.
  std::vector<T> o(n * hq * dv);
  combine_forward<T>(shape.tokens, hq, dv, c.gate_mode == GateMode::kShared, gates.data(), br.o_cmp.data(),
                     br.o_slc.data(), br.o_swa.data(), o.data());
  store(o, o_view);

  if (!saved.defined()) return;
  const SavedLayout layout(c, shape);
  auto* base = saved.ptr<unsigned char>();
  std::memset(base, 0, layout.bytes);
  save(base, layout.k_cmp, a.k_cmp);
  save(base, layout.v_cmp, a.v_cmp);
  save(base, layout.o_cmp, br.o_cmp);
  save(base, layout.lse_cmp, br.lse_cmp);
  save(base, layout.o_slc, br.o_slc);
  save(base, layout.lse_slc, br.lse_slc);
  save(base, layout.o_swa, br.o_swa);
  save(base, layout.lse_swa, br.lse_swa);
  save(base, layout.topk, br.topk);
  save(base, layout.cu_cmp, a.cmp.cu);
}

template <class V>
void add_into(std::vector<V>& acc, const std::vector<V>& x) {
  for (std::size_t i = 0; i < acc.size(); ++i) acc[i] += x[i];
}

template <class T>
void backward_typed(const NsaConfig& c, const NsaLayerInputs& in, const TensorView& saved, const TensorView& d_o_view,
                    const NsaLayerGrads& grads) {
  const NsaLayerShape shape = NsaLayerShape::of(in);
  const SavedLayout layout(c, shape);
  const auto* base = saved.ptr<const unsigned char>();
  Varlen seqs, cmp;
  seqs.cu = load_int32(in.cu_seqlens);
  cmp.cu = restore<std::int32_t>(base, layout.cu_cmp, seqs.cu.size());
  const HeadDims dims{shape.heads_q, shape.heads_kv, shape.head_dim_qk, shape.head_dim_v};
  const int hq = dims.hq, hkv = dims.hkv, dqk = dims.dqk, dv = dims.dv;
  const double scale = c.softmax_scale(dqk);
  const std::size_t n = static_cast<std::size_t>(shape.tokens), ncmp = static_cast<std::size_t>(cmp.total());
  const auto q = load<T>(in.q), k = load<T>(in.k), v = load<T>(in.v), d_o = load<T>(d_o_view);
  const auto w_k = load<T>(in.w_k), pe_k = load<T>(in.pe_k), w_v = load<T>(in.w_v), gates = load<T>(in.gates);
  const auto k_cmp = restore<T>(base, layout.k_cmp, ncmp * hkv * dqk);
  const auto v_cmp = restore<T>(base, layout.v_cmp, ncmp * hkv * dv);
  const auto o_cmp = restore<T>(base, layout.o_cmp, n * hq * dv), lse_cmp = restore<T>(base, layout.lse_cmp, n * hq);
  const auto o_slc = restore<T>(base, layout.o_slc, n * hq * dv), lse_slc = restore<T>(base, layout.lse_slc, n * hq);
  const auto o_swa = restore<T>(base, layout.o_swa, n * hq * dv), lse_swa = restore<T>(base, layout.lse_swa, n * hq);
  const auto topk = restore<std::int32_t>(base, layout.topk, static_cast<std::size_t>(hkv) * n * c.topk);
  const auto q_rot = rotated(c, q, seqs, 1, hq, dqk);
  const auto k_rot = rotated(c, k, seqs, 1, hkv, dqk);

  // Gates, then each branch's attention backward (gradients w.r.t. rotated q, k), then RoPE^T and
  // the compression backward.
  std::vector<T> d_gates(gates.size()), d_cmp(n * hq * dv), d_slc(n * hq * dv), d_swa(n * hq * dv);
  combine_backward<T>(shape.tokens, hq, dv, c.gate_mode == GateMode::kShared, gates.data(), o_cmp.data(),
                      o_slc.data(), o_swa.data(), d_o.data(), d_gates.data(), d_cmp.data(), d_slc.data(),
                      d_swa.data());
  std::vector<T> dq(q.size()), dk(k.size()), dv_(v.size()), dq2(q.size()), dk2(k.size()), dv2(v.size());
  attention_backward<T>(window_attention_problem(c, seqs, dims, scale), q_rot.data(), k_rot.data(), v.data(),
                        o_swa.data(), lse_swa.data(), d_swa.data(), dq.data(), dk.data(), dv_.data());
  attention_backward<T>(selected_attention_problem(c, seqs, dims, scale, topk.data(), c.topk), q_rot.data(),
                        k_rot.data(), v.data(), o_slc.data(), lse_slc.data(), d_slc.data(), dq2.data(), dk2.data(),
                        dv2.data());
  add_into(dq, dq2);
  add_into(dk, dk2);
  add_into(dv_, dv2);
  std::vector<T> dk_cmp(k_cmp.size()), dv_cmp(v_cmp.size());
  attention_backward<T>(compressed_attention_problem(c, seqs, cmp, dims, scale), q_rot.data(), k_cmp.data(),
                        v_cmp.data(), o_cmp.data(), lse_cmp.data(), d_cmp.data(), dq2.data(), dk_cmp.data(),
                        dv_cmp.data());
  add_into(dq, dq2);
  unrotate(c, dq, seqs, 1, hq, dqk);
  unrotate(c, dk, seqs, 1, hkv, dqk);
  unrotate(c, dk_cmp, cmp, c.cmp_stride, hkv, dqk);

  std::vector<T> d_w_k(w_k.size()), d_pe_k(pe_k.size()), d_w_v(w_v.size());
  compress_backward<T>(c, seqs, cmp, hkv, dqk, dqk, k.data(), w_k.empty() ? nullptr : w_k.data(),
                       pe_k.empty() ? nullptr : pe_k.data(), dk_cmp.data(), dk2.data(),
                       d_w_k.empty() ? nullptr : d_w_k.data(), d_pe_k.empty() ? nullptr : d_pe_k.data());
  add_into(dk, dk2);
  compress_backward<T>(c, seqs, cmp, hkv, dv, dv, v.data(), w_v.empty() ? nullptr : w_v.data(), nullptr,
                       dv_cmp.data(), dv2.data(), d_w_v.empty() ? nullptr : d_w_v.data(), nullptr);
  add_into(dv_, dv2);

  store(dq, grads.dq);
  store(dk, grads.dk);
  store(dv_, grads.dv);
  store(d_w_k, grads.dw_k);
  store(d_pe_k, grads.dpe_k);
  store(d_w_v, grads.dw_v);
  store(d_gates, grads.d_gates);
}

}  // namespace

template <class T>
BranchOutputs<T> branches_forward(const NsaConfig& config, const RowPositions& queries, const Varlen& seqs,
                                  const Varlen& cmp, HeadDims dims, const T* q_rot, const T* k_rot, const T* v,
                                  const T* k_cmp, const T* v_cmp) {
  const double scale = config.softmax_scale(dims.dqk);
  const std::size_t n = static_cast<std::size_t>(queries.rows->total());
  const std::size_t outputs = n * dims.hq * dims.dv, lse = n * dims.hq;
  BranchOutputs<T> br{std::vector<T>(outputs), std::vector<T>(lse), std::vector<T>(outputs),
                      std::vector<T>(lse),     std::vector<T>(outputs), std::vector<T>(lse),
                      std::vector<std::int32_t>(n * dims.hkv * static_cast<std::size_t>(config.topk))};
  attention_forward<T>(compressed_attention_problem(config, queries, cmp, dims, scale), q_rot, k_cmp, v_cmp,
                       br.o_cmp.data(), br.lse_cmp.data());
  select_blocks<T>(config, queries, cmp, dims, scale, q_rot, k_cmp, br.lse_cmp.data(), br.topk.data());
  attention_forward<T>(selected_attention_problem(config, queries, seqs, dims, scale, br.topk.data(), config.topk),
                       q_rot, k_rot, v, br.o_slc.data(), br.lse_slc.data());
  attention_forward<T>(window_attention_problem(config, queries, seqs, dims, scale), q_rot, k_rot, v,
                       br.o_swa.data(), br.lse_swa.data());
  return br;
}

template BranchOutputs<float> branches_forward<float>(const NsaConfig&, const RowPositions&, const Varlen&,
                                                      const Varlen&, HeadDims, const float*, const float*,
                                                      const float*, const float*, const float*);
template BranchOutputs<double> branches_forward<double>(const NsaConfig&, const RowPositions&, const Varlen&,
                                                        const Varlen&, HeadDims, const double*, const double*,
                                                        const double*, const double*, const double*);

std::size_t nsa_saved_bytes(const NsaConfig& config, const NsaLayerShape& shape) {
  return SavedLayout(config, shape).bytes;
}

void nsa_forward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& o, const TensorView& saved) {
  if (inputs.q.dtype == DType::kFloat64) {
    forward_typed<double>(config, inputs, o, saved);
  } else {
    forward_typed<float>(config, inputs, o, saved);
  }
}

void nsa_backward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& saved,
                  const TensorView& d_o, const NsaLayerGrads& grads) {
  if (inputs.q.dtype == DType::kFloat64) {
    backward_typed<double>(config, inputs, saved, d_o, grads);
  } else {
    backward_typed<float>(config, inputs, saved, d_o, grads);
  }
}

}  // namespace fsa::ref
