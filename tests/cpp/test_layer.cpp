// The whole layer (nsa_forward / nsa_backward) against the composition of the individual ops and
// against finite differences, in fp64 on the CPU reference.
#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "layer_case.hpp"

namespace fsa::test {
namespace {

HostTensor run_forward(const LayerCase& lc, const LayerTensors& t, HostTensor* saved = nullptr) {
  const NsaLayerInputs in = t.inputs();
  HostTensor o(lc.dtype, {t.q.sizes()[0], lc.hq, lc.dv});
  o.poison();
  if (saved != nullptr) {
    *saved = HostTensor(DType::kUInt8, {static_cast<std::int64_t>(nsa_saved_bytes(lc.config, NsaLayerShape::of(in)))});
    saved->poison();
  }
  const Status s = nsa_forward(lc.config, in, o.view(), saved ? saved->view() : TensorView{});
  EXPECT_TRUE(s.is_ok()) << s.to_string();
  return o;
}

HostTensor run_composition(const LayerCase& lc, const LayerTensors& t) { return compose_layer(lc, t).o; }

LayerCase default_case() {
  LayerCase lc;
  lc.seqlens = {130, 0, 1, 75, 9};
  lc.config = small_config();
  return lc;
}

TEST(Layer, ForwardEqualsTheCompositionOfOps) {
  auto rng = rng_for_test();
  for (const bool rope : {true, false}) {
    for (const GateMode gates : {GateMode::kPerHead, GateMode::kShared}) {
      LayerCase lc = default_case();
      lc.config.rope.enabled = rope;
      lc.config.rope.theta = 500.0f;  // fast rotation so that short sequences see real angles
      lc.config.gate_mode = gates;
      const LayerTensors t(lc, rng);
      const auto layer = run_forward(lc, t).to_double();
      const auto composed = run_composition(lc, t).to_double();
      EXPECT_TRUE(all_finite(layer));
      EXPECT_LT(rel_frobenius(layer, composed), 1e-12) << "rope " << rope;
    }
  }
}

TEST(Layer, MeanCompressionAndLlama3Rope) {
  auto rng = rng_for_test();
  LayerCase lc = default_case();
  lc.config.compression = CompressionKind::kMean;
  lc.config.rope.llama3_scaling = true;
  lc.config.rope.llama3_original_max_position = 64;
  const LayerTensors t(lc, rng);
  const auto layer = run_forward(lc, t).to_double();
  EXPECT_TRUE(all_finite(layer));
  EXPECT_LT(rel_frobenius(layer, run_composition(lc, t).to_double()), 1e-12);
}

// Every gradient of the layer against central finite differences on a random subset of elements
// (all of them would take minutes; the subset is fresh for every run).
void check_layer_gradients(const LayerCase& lc, std::mt19937_64& rng) {
  LayerTensors t(lc, rng);
  HostTensor saved;
  const HostTensor o = run_forward(lc, t, &saved);
  HostTensor w(DType::kFloat64, o.sizes());
  w.fill_normal(rng);
  NsaLayerGrads g;
  std::map<std::string, HostTensor> grads;
  std::map<std::string, HostTensor*> inputs = {{"q", &t.q},         {"k", &t.k},       {"v", &t.v},
                                               {"pe_k", &t.pe_k},   {"gates", &t.gates}};
  if (lc.config.compression == CompressionKind::kLinear) {
    inputs["w_k"] = &t.w_k;
    inputs["w_v"] = &t.w_v;
  }
  for (auto& [name, input] : inputs) {
    grads[name] = HostTensor(DType::kFloat64, input->sizes());
    grads[name].poison();
  }
  g.dq = grads["q"].view();
  g.dk = grads["k"].view();
  g.dv = grads["v"].view();
  g.dpe_k = grads["pe_k"].view();
  g.d_gates = grads["gates"].view();
  if (inputs.count("w_k")) {
    g.dw_k = grads["w_k"].view();
    g.dw_v = grads["w_v"].view();
  }
  FSA_ASSERT_OK(nsa_backward(lc.config, t.inputs(), saved.view(), w.view(), g));

  const auto loss = [&] { return weighted_sum(run_forward(lc, t), w); };
  for (auto& [name, input] : inputs) {
    const auto analytic = grads[name].to_double();
    ASSERT_TRUE(all_finite(analytic)) << name;
    std::uniform_int_distribution<std::int64_t> pick(0, input->numel() - 1);
    double worst = 0, scale = 1e-3;
    for (double a : analytic) scale = std::max(scale, std::fabs(a));
    for (int trial = 0; trial < 40; ++trial) {
      const std::int64_t i = pick(rng);
      const double x0 = input->get(i), eps = 1e-5;
      input->set(i, x0 + eps);
      const double up = loss();
      input->set(i, x0 - eps);
      const double down = loss();
      input->set(i, x0);
      worst = std::max(worst, std::fabs((up - down) / (2 * eps) - analytic[static_cast<std::size_t>(i)]));
    }
    EXPECT_LT(worst / scale, 1e-5) << "gradient of " << name << ": worst error " << worst << " (scale " << scale << ")";
  }
}

TEST(Layer, GradientsMatchFiniteDifferences) {
  auto rng = rng_for_test();
  LayerCase lc = default_case();
  lc.config.rope.theta = 500.0f;
  check_layer_gradients(lc, rng);
}

TEST(Layer, GradientsMatchFiniteDifferencesMeanSharedGatesG1) {
  auto rng = rng_for_test();
  LayerCase lc = default_case();
  lc.hq = 2;
  lc.hkv = 2;
  lc.dqk = 6;
  lc.dv = 6;
  lc.config.compression = CompressionKind::kMean;
  lc.config.gate_mode = GateMode::kShared;
  check_layer_gradients(lc, rng);
}

// bf16 and fp16 inputs: the layer computes in fp32 and must stay within the tolerance (docs/semantics.md section 10) of the
// fp64 layer on the same rounded inputs.
TEST(Layer, HalfPrecisionInputsMatchFp64) {
  for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    auto rng = rng_for_test(static_cast<std::uint64_t>(dtype));
    LayerCase lc = default_case();
    lc.seqlens = {200, 64, 3};
    lc.dtype = dtype;
    const LayerTensors t(lc, rng);
    LayerCase lc64 = lc;
    lc64.dtype = DType::kFloat64;
    LayerTensors t64(lc64, rng);
    for (auto [src, dst] : {std::pair{&t.q, &t64.q}, {&t.k, &t64.k}, {&t.v, &t64.v}, {&t.w_k, &t64.w_k},
                            {&t.w_v, &t64.w_v}, {&t.pe_k, &t64.pe_k}, {&t.gates, &t64.gates}})
      dst->from_double(src->to_double());
    const auto ours = run_forward(lc, t).to_double();
    const auto exact = run_forward(lc64, t64).to_double();
    EXPECT_TRUE(all_finite(ours));
    EXPECT_LT(rel_frobenius(ours, exact), dtype == DType::kBFloat16 ? 1e-2 : 5e-3) << dtype_name(dtype);
  }
}

// Logits spread by hundreds between tokens of one sequence: every branch keeps a per-row
// stabiliser, so nothing overflows.
TEST(Layer, ExtremeLogitSpreadStaysFinite) {
  auto rng = rng_for_test();
  LayerCase lc = default_case();
  lc.dtype = DType::kFloat32;
  LayerTensors t(lc, rng);
  for (std::int64_t i = 0; i < t.q.numel(); ++i) t.q.set(i, t.q.get(i) * (i % 7 == 0 ? 300.0 : 1.0));
  HostTensor saved;
  const HostTensor o = run_forward(lc, t, &saved);
  EXPECT_TRUE(all_finite(o.to_double()));
  HostTensor d_o(lc.dtype, o.sizes()), dq(lc.dtype, t.q.sizes()), dk(lc.dtype, t.k.sizes()), dv(lc.dtype, t.v.sizes());
  d_o.fill_normal(rng);
  NsaLayerGrads g;
  g.dq = dq.view();
  g.dk = dk.view();
  g.dv = dv.view();
  FSA_ASSERT_OK(nsa_backward(lc.config, t.inputs(), saved.view(), d_o.view(), g));
  EXPECT_TRUE(all_finite(dq.to_double()));
  EXPECT_TRUE(all_finite(dk.to_double()));
  EXPECT_TRUE(all_finite(dv.to_double()));
}

TEST(Layer, RejectsBadArguments) {
  auto rng = rng_for_test();
  LayerCase lc = default_case();
  const LayerTensors t(lc, rng);
  NsaLayerInputs in = t.inputs();
  HostTensor o(lc.dtype, {t.q.sizes()[0], lc.hq, lc.dv});
  HostTensor small_saved(DType::kUInt8, {16});
  expect_invalid(nsa_forward(lc.config, in, o.view(), small_saved.view()), "saved");
  NsaLayerInputs no_w = in;
  no_w.w_k = TensorView{};
  expect_invalid(nsa_forward(lc.config, no_w, o.view(), TensorView{}), "w_k");
  HostTensor bad_gates(lc.dtype, {t.q.sizes()[0], lc.hq, 2});
  NsaLayerInputs gates = in;
  gates.gates = bad_gates.view();
  expect_invalid(nsa_forward(lc.config, gates, o.view(), TensorView{}), "gates");
  HostTensor bad_o(lc.dtype, {t.q.sizes()[0], lc.hq, lc.dv + 1});
  expect_invalid(nsa_forward(lc.config, in, bad_o.view(), TensorView{}), "o");
  NsaConfig bad = lc.config;
  bad.topk = 1;  // < I + L
  expect_invalid(nsa_forward(bad, in, o.view(), TensorView{}), "topk");
  // An output on an input's memory: the layer would overwrite q while reading it.
  TensorView o_on_q = o.view();
  o_on_q.data = in.q.data;
  expect_invalid(nsa_forward(lc.config, in, o_on_q, TensorView{}), "o");
  HostTensor dq(lc.dtype, t.q.sizes()), d_o(lc.dtype, {t.q.sizes()[0], lc.hq, lc.dv});
  const std::size_t saved_bytes = nsa_saved_bytes(lc.config, NsaLayerShape::of(in));
  HostTensor saved(DType::kUInt8, {static_cast<std::int64_t>(saved_bytes)});
  FSA_EXPECT_OK(nsa_forward(lc.config, in, o.view(), saved.view()));
  NsaLayerGrads grads;
  grads.dq = dq.view();
  grads.dq.data = d_o.view().data;  // dq written over d_o, which the backward reads
  expect_invalid(nsa_backward(lc.config, in, saved.view(), d_o.view(), grads), "dq");
}

}  // namespace
}  // namespace fsa::test
