// Random inputs of the whole NSA layer, shared by the CPU and GPU layer tests.
#pragma once

#include <cmath>
#include <vector>

#include "test_util.hpp"

namespace fsa::test {

struct LayerCase {
  std::vector<std::int64_t> seqlens;
  int hq = 4, hkv = 2, dqk = 8, dv = 6;
  DType dtype = DType::kFloat64;
  NsaConfig config;
};

// Small hyperparameters so that a few hundred tokens exercise every rule: several compressed
// tokens, several selection blocks with a real top-k choice, and a window shorter than a sequence.
inline NsaConfig small_config() {
  NsaConfig c;
  c.cmp_len = 8;
  c.cmp_stride = 4;
  c.block_size = 32;
  c.topk = 3;
  c.init_blocks = 1;
  c.local_blocks = 1;
  c.window = 16;
  return c;
}

struct LayerTensors {
  HostTensor cu, q, k, v, w_k, pe_k, w_v, gates;

  LayerTensors(const LayerCase& lc, std::mt19937_64& rng) {
    std::int64_t n = 0;
    for (std::int64_t s : lc.seqlens) n += s;
    const std::int64_t l = lc.config.cmp_len;
    cu = make_cu_seqlens(lc.seqlens);
    q = HostTensor(lc.dtype, {n, lc.hq, lc.dqk});
    k = HostTensor(lc.dtype, {n, lc.hkv, lc.dqk});
    v = HostTensor(lc.dtype, {n, lc.hkv, lc.dv});
    q.fill_normal(rng);
    k.fill_normal(rng);
    v.fill_normal(rng);
    if (lc.config.compression == CompressionKind::kLinear) {
      w_k = HostTensor(lc.dtype, {lc.hkv, l * lc.dqk, lc.dqk});
      w_v = HostTensor(lc.dtype, {lc.hkv, l * lc.dv, lc.dv});
      w_k.fill_normal(rng, 1.0 / std::sqrt(static_cast<double>(l * lc.dqk)));
      w_v.fill_normal(rng, 1.0 / std::sqrt(static_cast<double>(l * lc.dv)));
    }
    pe_k = HostTensor(lc.dtype, {lc.hkv, l, lc.dqk});
    pe_k.fill_normal(rng, 0.5);
    gates = lc.config.gate_mode == GateMode::kPerHead ? HostTensor(lc.dtype, {n, lc.hq, 3})
                                                      : HostTensor(lc.dtype, {n, 3});
    gates.fill_uniform(rng, 0.05, 0.95);
  }

  // The same values in another dtype (rounded to it): the fp32 reference of a bf16 run.
  LayerTensors converted(DType dtype) const {
    LayerTensors out = *this;
    for (HostTensor* t : {&out.q, &out.k, &out.v, &out.w_k, &out.pe_k, &out.w_v, &out.gates}) {
      if (t->sizes().empty()) continue;
      HostTensor copy(dtype, t->sizes());
      copy.from_double(t->to_double());
      *t = copy;
    }
    return out;
  }

  NsaLayerInputs inputs() const {
    NsaLayerInputs in;
    in.q = q.view();
    in.k = k.view();
    in.v = v.view();
    in.cu_seqlens = cu.view();
    in.w_k = w_k.numel() > 0 && !w_k.sizes().empty() ? w_k.view() : TensorView{};
    in.pe_k = pe_k.view();
    in.w_v = w_v.numel() > 0 && !w_v.sizes().empty() ? w_v.view() : TensorView{};
    in.gates = gates.view();
    return in;
  }
};

// The layer written out as a sequence of public ops, in the order of docs/semantics.md section 2,
// every intermediate in the case's dtype.
struct LayerComposition {
  HostTensor cu_cmp, q_rot, k_rot, k_cmp_rot, v_cmp;
  HostTensor o_cmp, lse_cmp, topk, o_slc, lse_slc, o_swa, lse_swa, o;
};

inline LayerComposition compose_layer(const LayerCase& lc, const LayerTensors& t) {
  const NsaConfig& c = lc.config;
  const std::int64_t n = t.q.sizes()[0], ncmp = max_compressed_tokens(n, c);
  const DType dt = lc.dtype;
  LayerComposition r;
  r.cu_cmp = make_cu_cmp(c, t.cu);
  HostTensor k_cmp(dt, {ncmp, lc.hkv, lc.dqk});
  r.v_cmp = HostTensor(dt, {ncmp, lc.hkv, lc.dv});
  const NsaLayerInputs in = t.inputs();
  FSA_EXPECT_OK(compress_forward(c, t.k.view(), t.cu.view(), r.cu_cmp.view(), in.w_k, t.pe_k.view(), k_cmp.view()));
  FSA_EXPECT_OK(compress_forward(c, t.v.view(), t.cu.view(), r.cu_cmp.view(), in.w_v, TensorView{}, r.v_cmp.view()));
  r.q_rot = t.q;
  r.k_rot = t.k;
  r.k_cmp_rot = k_cmp;
  if (c.rope.enabled) {
    FSA_EXPECT_OK(rope_forward(c.rope, t.q.view(), t.cu.view(), 1, r.q_rot.view()));
    FSA_EXPECT_OK(rope_forward(c.rope, t.k.view(), t.cu.view(), 1, r.k_rot.view()));
    FSA_EXPECT_OK(rope_forward(c.rope, k_cmp.view(), r.cu_cmp.view(), c.cmp_stride, r.k_cmp_rot.view()));
  }
  for (HostTensor* out : {&r.o_cmp, &r.o_slc, &r.o_swa, &r.o}) *out = HostTensor(dt, {n, lc.hq, lc.dv});
  for (HostTensor* lse : {&r.lse_cmp, &r.lse_slc, &r.lse_swa}) *lse = HostTensor(DType::kFloat32, {lc.hq, n});
  r.topk = HostTensor(DType::kInt32, {lc.hkv, n, c.topk});
  FSA_EXPECT_OK(cmp_attn_forward(c, r.q_rot.view(), r.k_cmp_rot.view(), r.v_cmp.view(), t.cu.view(),
                                 r.cu_cmp.view(), r.o_cmp.view(), r.lse_cmp.view()));
  FSA_EXPECT_OK(select_blocks(c, r.q_rot.view(), r.k_cmp_rot.view(), r.lse_cmp.view(), t.cu.view(), r.cu_cmp.view(),
                              r.topk.view()));
  FSA_EXPECT_OK(slc_attn_forward(c, r.q_rot.view(), r.k_rot.view(), t.v.view(), r.topk.view(), t.cu.view(),
                                 r.o_slc.view(), r.lse_slc.view()));
  FSA_EXPECT_OK(swa_forward(c, r.q_rot.view(), r.k_rot.view(), t.v.view(), t.cu.view(), r.o_swa.view(),
                            r.lse_swa.view()));
  FSA_EXPECT_OK(combine_forward(c, t.gates.view(), r.o_cmp.view(), r.o_slc.view(), r.o_swa.view(), r.o.view()));
  return r;
}

}  // namespace fsa::test
