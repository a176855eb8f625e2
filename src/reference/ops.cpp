#include "ops.hpp"

#include <vector>

#include "reference.hpp"
#include "tensor_io.hpp"

namespace fsa::ref {

namespace {

// Runs fn(T{}) with T = double for fp64 tensors, float otherwise.
template <class Fn>
void with_compute_type(DType dtype, Fn&& fn) {
  if (dtype == DType::kFloat64) {
    fn(double{});
  } else {
    fn(float{});
  }
}

Varlen varlen_of(const TensorView& cu) {
  Varlen v;
  v.cu = load_int32(cu);
  return v;
}

HeadDims dims_of(const TensorView& q, const TensorView& k, const TensorView& v) {
  return {static_cast<int>(q.size(1)), static_cast<int>(k.size(1)), static_cast<int>(q.size(2)),
          static_cast<int>(v.size(2))};
}

template <class T>
std::vector<T> zeros_like(const TensorView& view) {
  return std::vector<T>(static_cast<std::size_t>(view.numel()), T(0));
}

// Compressed tensors may hold more rows than cu_cmp uses: the reference works on exactly the used
// rows and leaves the rest untouched.
TensorView first_rows(TensorView view, std::int64_t rows) {
  view.sizes[0] = rows;
  return view;
}

template <class T>
void attention_forward_views(const AttentionProblem& p, const TensorView& q, const TensorView& k,
                             const TensorView& v, const TensorView& o, const TensorView& lse) {
  const auto qh = load<T>(q), kh = load<T>(k), vh = load<T>(v);
  auto oh = zeros_like<T>(o), lh = zeros_like<T>(lse);
  attention_forward(p, qh.data(), kh.data(), vh.data(), oh.data(), lh.data());
  store(oh, o);
  store(lh, lse);
}

template <class T>
void attention_backward_views(const AttentionProblem& p, const TensorView& q, const TensorView& k,
                              const TensorView& v, const TensorView& o, const TensorView& lse, const TensorView& d_o,
                              const TensorView& dq, const TensorView& dk, const TensorView& dv) {
  const auto qh = load<T>(q), kh = load<T>(k), vh = load<T>(v), oh = load<T>(o), lh = load<T>(lse),
             doh = load<T>(d_o);
  auto dqh = zeros_like<T>(dq), dkh = zeros_like<T>(dk), dvh = zeros_like<T>(dv);
  attention_backward(p, qh.data(), kh.data(), vh.data(), oh.data(), lh.data(), doh.data(), dqh.data(), dkh.data(),
                     dvh.data());
  store(dqh, dq);
  store(dkh, dk);
  store(dvh, dv);
}

}  // namespace

void compressed_cu_seqlens(const NsaConfig& config, const TensorView& cu_seqlens, const TensorView& cu_cmp) {
  store_int32(compressed_varlen(varlen_of(cu_seqlens), config).cu, cu_cmp);
}

void compress_forward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                      const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                      const TensorView& y) {
  const Varlen seqs = varlen_of(cu_seqlens), cmp = varlen_of(cu_cmp);
  const int heads = static_cast<int>(x.size(1)), dim = static_cast<int>(x.size(2));
  const int dim_out = static_cast<int>(y.size(2));
  with_compute_type(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto xh = load<T>(x), wh = load<T>(weight), peh = load<T>(pos_emb);
    auto yh = zeros_like<T>(y);  // rows past cu_cmp[nseq] stay zero
    ref::compress_forward<T>(config, seqs, cmp, heads, dim, dim_out, xh.data(), wh.empty() ? nullptr : wh.data(),
                             peh.empty() ? nullptr : peh.data(), yh.data());
    store(yh, y);
  });
}

void compress_backward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                       const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                       const TensorView& dy, const TensorView& dx, const TensorView& d_weight,
                       const TensorView& d_pos_emb) {
  const Varlen seqs = varlen_of(cu_seqlens), cmp = varlen_of(cu_cmp);
  const int heads = static_cast<int>(x.size(1)), dim = static_cast<int>(x.size(2));
  const int dim_out = static_cast<int>(dy.size(2));
  with_compute_type(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto xh = load<T>(x), wh = load<T>(weight), peh = load<T>(pos_emb);
    const auto dyh = load<T>(first_rows(dy, cmp.total()));
    auto dxh = zeros_like<T>(dx), dwh = zeros_like<T>(d_weight), dpeh = zeros_like<T>(d_pos_emb);
    ref::compress_backward<T>(config, seqs, cmp, heads, dim, dim_out, xh.data(), wh.empty() ? nullptr : wh.data(),
                              peh.empty() ? nullptr : peh.data(), dyh.data(), dxh.data(),
                              dwh.empty() ? nullptr : dwh.data(), dpeh.empty() ? nullptr : dpeh.data());
    store(dxh, dx);
    store(dwh, d_weight);
    store(dpeh, d_pos_emb);
  });
}

void rope(const RopeConfig& rope, const TensorView& x, const TensorView& cu, int position_stride,
          const TensorView& y, bool inverse) {
  const Varlen rows = varlen_of(cu);
  with_compute_type(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    auto xh = load<T>(x);
    rope_apply<T>(rope, rows, position_stride, static_cast<int>(x.size(1)), static_cast<int>(x.size(2)), xh.data(),
                  xh.data(), inverse);
    store(xh, y);
  });
}

void cmp_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp, const TensorView& v_cmp,
                      const TensorView& cu_seqlens, const TensorView& cu_cmp, const TensorView& o,
                      const TensorView& lse) {
  const Varlen seqs = varlen_of(cu_seqlens), cmp = varlen_of(cu_cmp);
  const HeadDims dims = dims_of(q, k_cmp, v_cmp);
  const AttentionProblem p = compressed_attention_problem(config, seqs, cmp, dims, config.softmax_scale(dims.dqk));
  with_compute_type(q.dtype, [&](auto tag) {
    attention_forward_views<decltype(tag)>(p, q, first_rows(k_cmp, cmp.total()), first_rows(v_cmp, cmp.total()), o,
                                           lse);
  });
}

void cmp_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                       const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                       const TensorView& o, const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                       const TensorView& dk_cmp, const TensorView& dv_cmp) {
  const Varlen seqs = varlen_of(cu_seqlens), cmp = varlen_of(cu_cmp);
  const HeadDims dims = dims_of(q, k_cmp, v_cmp);
  const AttentionProblem p = compressed_attention_problem(config, seqs, cmp, dims, config.softmax_scale(dims.dqk));
  const std::int64_t rows = cmp.total();
  with_compute_type(q.dtype, [&](auto tag) {
    attention_backward_views<decltype(tag)>(p, q, first_rows(k_cmp, rows), first_rows(v_cmp, rows), o, lse, d_o, dq,
                                            dk_cmp, dv_cmp);
  });
}

void select_blocks(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp, const TensorView& lse_cmp,
                   const TensorView& cu_seqlens, const TensorView& cu_cmp, const TensorView& topk_idx) {
  const Varlen seqs = varlen_of(cu_seqlens), cmp = varlen_of(cu_cmp);
  const HeadDims dims{static_cast<int>(q.size(1)), static_cast<int>(k_cmp.size(1)), static_cast<int>(q.size(2)),
                      static_cast<int>(k_cmp.size(2))};
  std::vector<std::int32_t> topk(static_cast<std::size_t>(topk_idx.numel()));
  with_compute_type(q.dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto qh = load<T>(q), kh = load<T>(first_rows(k_cmp, cmp.total())), lh = load<T>(lse_cmp);
    ref::select_blocks<T>(config, seqs, cmp, dims, config.softmax_scale(dims.dqk), qh.data(), kh.data(), lh.data(),
                          topk.data());
  });
  store_int32(topk, topk_idx);
}

void slc_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                      const TensorView& lse) {
  const Varlen seqs = varlen_of(cu_seqlens);
  const HeadDims dims = dims_of(q, k, v);
  const auto topk = load_int32(topk_idx);
  const AttentionProblem p = selected_attention_problem(config, seqs, dims, config.softmax_scale(dims.dqk),
                                                        topk.data(), static_cast<int>(topk_idx.size(2)));
  with_compute_type(q.dtype, [&](auto tag) { attention_forward_views<decltype(tag)>(p, q, k, v, o, lse); });
}

void slc_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                       const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                       const TensorView& dv) {
  const Varlen seqs = varlen_of(cu_seqlens);
  const HeadDims dims = dims_of(q, k, v);
  const auto topk = load_int32(topk_idx);
  const AttentionProblem p = selected_attention_problem(config, seqs, dims, config.softmax_scale(dims.dqk),
                                                        topk.data(), static_cast<int>(topk_idx.size(2)));
  with_compute_type(q.dtype, [&](auto tag) {
    attention_backward_views<decltype(tag)>(p, q, k, v, o, lse, d_o, dq, dk, dv);
  });
}

void swa_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                 const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse) {
  const Varlen seqs = varlen_of(cu_seqlens);
  const HeadDims dims = dims_of(q, k, v);
  const AttentionProblem p = window_attention_problem(config, seqs, dims, config.softmax_scale(dims.dqk));
  with_compute_type(q.dtype, [&](auto tag) { attention_forward_views<decltype(tag)>(p, q, k, v, o, lse); });
}

void swa_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse, const TensorView& d_o,
                  const TensorView& dq, const TensorView& dk, const TensorView& dv) {
  const Varlen seqs = varlen_of(cu_seqlens);
  const HeadDims dims = dims_of(q, k, v);
  const AttentionProblem p = window_attention_problem(config, seqs, dims, config.softmax_scale(dims.dqk));
  with_compute_type(q.dtype, [&](auto tag) {
    attention_backward_views<decltype(tag)>(p, q, k, v, o, lse, d_o, dq, dk, dv);
  });
}

void combine_forward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                     const TensorView& o_slc, const TensorView& o_swa, const TensorView& o) {
  const bool shared = config.gate_mode == GateMode::kShared;
  with_compute_type(o_cmp.dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto g = load<T>(gates), a = load<T>(o_cmp), b = load<T>(o_slc), c = load<T>(o_swa);
    auto out = zeros_like<T>(o);
    ref::combine_forward<T>(o.size(0), static_cast<int>(o.size(1)), static_cast<int>(o.size(2)), shared, g.data(),
                            a.data(), b.data(), c.data(), out.data());
    store(out, o);
  });
}

void combine_backward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                      const TensorView& o_slc, const TensorView& o_swa, const TensorView& d_o,
                      const TensorView& d_gates, const TensorView& d_o_cmp, const TensorView& d_o_slc,
                      const TensorView& d_o_swa) {
  const bool shared = config.gate_mode == GateMode::kShared;
  with_compute_type(o_cmp.dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto g = load<T>(gates), a = load<T>(o_cmp), b = load<T>(o_slc), c = load<T>(o_swa), dout = load<T>(d_o);
    auto dg = zeros_like<T>(gates), da = zeros_like<T>(o_cmp), db = zeros_like<T>(o_slc), dc = zeros_like<T>(o_swa);
    ref::combine_backward<T>(d_o.size(0), static_cast<int>(d_o.size(1)), static_cast<int>(d_o.size(2)), shared,
                             g.data(), a.data(), b.data(), c.data(), dout.data(), dg.data(), da.data(), db.data(),
                             dc.data());
    store(dg, d_gates);
    store(da, d_o_cmp);
    store(db, d_o_slc);
    store(dc, d_o_swa);
  });
}

}  // namespace fsa::ref
