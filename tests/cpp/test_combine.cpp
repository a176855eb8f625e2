// Gated combination of the three branches (docs/semantics.md section 7) through the public API.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "naive_attention.hpp"
#include "test_util.hpp"

namespace fsa::test {
namespace {

struct CombineProblem {
  NsaConfig config;
  DType dtype = DType::kFloat32;
  std::int64_t tokens = 0;
  int hq = 1, dv = 1;
  HostTensor gates, o_cmp, o_slc, o_swa;

  bool shared() const { return config.gate_mode == GateMode::kShared; }
  std::int64_t gate_index(std::int64_t t, int h, int branch) const {
    return (shared() ? t : t * hq + h) * 3 + branch;
  }
  const HostTensor& branch(int b) const { return b == 0 ? o_cmp : (b == 1 ? o_slc : o_swa); }
  HostTensor& branch(int b) { return b == 0 ? o_cmp : (b == 1 ? o_slc : o_swa); }
};

CombineProblem make_problem(GateMode mode, DType dtype, std::int64_t tokens, int hq, int dv, std::mt19937_64& rng) {
  CombineProblem p;
  p.config.gate_mode = mode;
  p.dtype = dtype;
  p.tokens = tokens;
  p.hq = hq;
  p.dv = dv;
  p.gates = mode == GateMode::kShared ? HostTensor(dtype, {tokens, 3}) : HostTensor(dtype, {tokens, hq, 3});
  p.gates.fill_uniform(rng, 0.05, 0.95);  // the range of the layer's sigmoid gates
  p.o_cmp = random_tensor(dtype, {tokens, hq, dv}, rng);
  p.o_slc = random_tensor(dtype, {tokens, hq, dv}, rng);
  p.o_swa = random_tensor(dtype, {tokens, hq, dv}, rng);
  return p;
}

// o[t,h,:] = sum_b g_b[t,h] * o_b[t,h,:], in fp64 on the inputs as stored.
std::vector<double> naive_combine(const CombineProblem& p) {
  std::vector<double> o(static_cast<std::size_t>(p.tokens * p.hq * p.dv), 0.0);
  for (std::int64_t t = 0; t < p.tokens; ++t)
    for (int h = 0; h < p.hq; ++h)
      for (int e = 0; e < p.dv; ++e) {
        const std::int64_t i = (t * p.hq + h) * p.dv + e;
        for (int b = 0; b < 3; ++b) o[static_cast<std::size_t>(i)] += p.gates.get(p.gate_index(t, h, b)) * p.branch(b).get(i);
      }
  return o;
}

struct NaiveCombineGrads {
  std::vector<double> d_gates, d_branch[3];
};

// d o_b = g_b * do; d g_b = sum over the row (and, for shared gates, over heads) of o_b * do.
NaiveCombineGrads naive_combine_backward(const CombineProblem& p, const HostTensor& d_o) {
  NaiveCombineGrads g;
  g.d_gates.assign(static_cast<std::size_t>(p.gates.numel()), 0.0);
  for (auto& d : g.d_branch) d.assign(static_cast<std::size_t>(p.o_cmp.numel()), 0.0);
  for (std::int64_t t = 0; t < p.tokens; ++t)
    for (int h = 0; h < p.hq; ++h)
      for (int b = 0; b < 3; ++b)
        for (int e = 0; e < p.dv; ++e) {
          const std::int64_t i = (t * p.hq + h) * p.dv + e;
          const auto gi = static_cast<std::size_t>(p.gate_index(t, h, b));
          g.d_gates[gi] += p.branch(b).get(i) * d_o.get(i);
          g.d_branch[b][static_cast<std::size_t>(i)] = p.gates.get(p.gate_index(t, h, b)) * d_o.get(i);
        }
  return g;
}

struct CombineGrads {
  HostTensor d_gates, d_branch[3];
};

CombineGrads poisoned_grads(const CombineProblem& p) {
  CombineGrads g;
  g.d_gates = HostTensor(p.dtype, p.gates.sizes());
  g.d_gates.poison();
  for (auto& d : g.d_branch) d = poisoned_tensor(p.dtype, {p.tokens, p.hq, p.dv});
  return g;
}

HostTensor run_forward(const CombineProblem& p) {
  HostTensor o = poisoned_tensor(p.dtype, {p.tokens, p.hq, p.dv});
  FSA_EXPECT_OK(combine_forward(p.config, p.gates.view(), p.o_cmp.view(), p.o_slc.view(), p.o_swa.view(), o.view()));
  return o;
}

const char* mode_name(GateMode mode) { return mode == GateMode::kShared ? "shared" : "per-head"; }

TEST(Combine, ForwardMatchesNaiveFormula) {
  auto rng = rng_for_test();
  for (GateMode mode : {GateMode::kPerHead, GateMode::kShared})
    for (DType dtype : {DType::kFloat64, DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
      SCOPED_TRACE(std::string(mode_name(mode)) + " " + dtype_name(dtype));
      const CombineProblem p = make_problem(mode, dtype, 300, 5, 24, rng);
      expect_close(run_forward(p).to_double(), naive_combine(p), tolerance_for(dtype), "o");
    }
}

TEST(Combine, SharedGatesEqualPerHeadGatesRepeatedOverHeads) {
  auto rng = rng_for_test();
  const CombineProblem shared = make_problem(GateMode::kShared, DType::kFloat32, 40, 4, 8, rng);
  CombineProblem per_head = shared;
  per_head.config.gate_mode = GateMode::kPerHead;
  per_head.gates = HostTensor(DType::kFloat32, {40, 4, 3});
  for (std::int64_t t = 0; t < 40; ++t)
    for (int h = 0; h < 4; ++h)
      for (int b = 0; b < 3; ++b) per_head.gates.set((t * 4 + h) * 3 + b, shared.gates.get(t * 3 + b));
  EXPECT_EQ(run_forward(shared).to_double(), run_forward(per_head).to_double());
}

TEST(Combine, BackwardMatchesFiniteDifferences) {
  auto rng = rng_for_test();
  for (GateMode mode : {GateMode::kPerHead, GateMode::kShared}) {
    SCOPED_TRACE(mode_name(mode));
    CombineProblem p = make_problem(mode, DType::kFloat64, 4, 3, 5, rng);
    const HostTensor w = random_tensor(DType::kFloat64, {p.tokens, p.hq, p.dv}, rng);
    auto loss = [&] { return weighted_sum(run_forward(p), w); };
    const std::vector<double> fd_gates = finite_difference(p.gates, loss);
    std::vector<double> fd_branch[3];
    for (int b = 0; b < 3; ++b) fd_branch[b] = finite_difference(p.branch(b), loss);

    CombineGrads g = poisoned_grads(p);
    FSA_ASSERT_OK(combine_backward(p.config, p.gates.view(), p.o_cmp.view(), p.o_slc.view(), p.o_swa.view(), w.view(),
                                   g.d_gates.view(), g.d_branch[0].view(), g.d_branch[1].view(),
                                   g.d_branch[2].view()));
    expect_close(g.d_gates.to_double(), fd_gates, 1e-8, "d_gates");
    for (int b = 0; b < 3; ++b) expect_close(g.d_branch[b].to_double(), fd_branch[b], 1e-8, "d_branch " + std::to_string(b));
  }
}

TEST(Combine, BackwardMatchesNaiveAcrossDtypes) {
  auto rng = rng_for_test();
  for (GateMode mode : {GateMode::kPerHead, GateMode::kShared})
    for (DType dtype : {DType::kFloat64, DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
      SCOPED_TRACE(std::string(mode_name(mode)) + " " + dtype_name(dtype));
      const CombineProblem p = make_problem(mode, dtype, 300, 6, 32, rng);
      const HostTensor d_o = random_tensor(dtype, {p.tokens, p.hq, p.dv}, rng);
      CombineGrads g = poisoned_grads(p);
      FSA_ASSERT_OK(combine_backward(p.config, p.gates.view(), p.o_cmp.view(), p.o_slc.view(), p.o_swa.view(),
                                     d_o.view(), g.d_gates.view(), g.d_branch[0].view(), g.d_branch[1].view(),
                                     g.d_branch[2].view()));
      const NaiveCombineGrads want = naive_combine_backward(p, d_o);
      expect_close(g.d_gates.to_double(), want.d_gates, tolerance_for(dtype), "d_gates");
      for (int b = 0; b < 3; ++b)
        expect_close(g.d_branch[b].to_double(), want.d_branch[b], tolerance_for(dtype), "d_branch " + std::to_string(b));
    }
}

TEST(Combine, UndefinedGradientOutputsAreSkipped) {
  auto rng = rng_for_test();
  for (GateMode mode : {GateMode::kPerHead, GateMode::kShared}) {
    SCOPED_TRACE(mode_name(mode));
    const CombineProblem p = make_problem(mode, DType::kFloat32, 70, 3, 16, rng);
    const HostTensor d_o = random_tensor(DType::kFloat32, {p.tokens, p.hq, p.dv}, rng);
    const NaiveCombineGrads want = naive_combine_backward(p, d_o);
    // Every subset of the four gradients; the requested ones must still be right and complete.
    for (int requested = 0; requested < 16; ++requested) {
      SCOPED_TRACE("requested mask " + std::to_string(requested));
      CombineGrads g = poisoned_grads(p);
      auto view_if = [&](int bit, const HostTensor& t) { return (requested >> bit) & 1 ? t.view() : TensorView{}; };
      FSA_ASSERT_OK(combine_backward(p.config, p.gates.view(), p.o_cmp.view(), p.o_slc.view(), p.o_swa.view(),
                                     d_o.view(), view_if(0, g.d_gates), view_if(1, g.d_branch[0]),
                                     view_if(2, g.d_branch[1]), view_if(3, g.d_branch[2])));
      if (requested & 1) expect_close(g.d_gates.to_double(), want.d_gates, 1e-5, "d_gates");
      for (int b = 0; b < 3; ++b)
        if ((requested >> (b + 1)) & 1)
          expect_close(g.d_branch[b].to_double(), want.d_branch[b], 1e-5, "d_branch " + std::to_string(b));
    }
  }
}

TEST(Combine, StridedViewsReadAndWriteOnlyTheirElements) {
  auto rng = rng_for_test();
  const CombineProblem p = make_problem(GateMode::kPerHead, DType::kFloat32, 33, 4, 8, rng);
  // o_slc and o live in the first half of rows twice as wide; gates are token-major with padding.
  const std::int64_t n = p.tokens, hq = p.hq, dv = p.dv;
  HostTensor wide_slc(DType::kFloat32, {n, hq, 2 * dv}), wide_o(DType::kFloat32, {n, hq, 2 * dv});
  HostTensor padded_gates(DType::kFloat32, {n, hq + 1, 3});
  wide_slc.fill_normal(rng);
  wide_o.poison();
  padded_gates.fill_uniform(rng, 0.05, 0.95);
  CombineProblem dense = p;
  for (std::int64_t i = 0; i < n * hq * dv; ++i) wide_slc.set(i / dv * 2 * dv + i % dv, p.o_slc.get(i));
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t j = 0; j < hq * 3; ++j) dense.gates.set(t * hq * 3 + j, padded_gates.get(t * (hq + 1) * 3 + j));
  for (std::int64_t t = 0; t < n; ++t)
    for (int b = 0; b < 3; ++b) padded_gates.set(t * (hq + 1) * 3 + hq * 3 + b, std::nan(""));  // never read

  const TensorView slc = TensorView::strided(wide_slc.view().data, DType::kFloat32, {n, hq, dv},
                                             {hq * 2 * dv, 2 * dv, 1});
  const TensorView out = TensorView::strided(wide_o.view().data, DType::kFloat32, {n, hq, dv}, {hq * 2 * dv, 2 * dv, 1});
  const TensorView gates = TensorView::strided(padded_gates.view().data, DType::kFloat32, {n, hq, 3},
                                               {(hq + 1) * 3, 3, 1});
  FSA_ASSERT_OK(combine_forward(p.config, gates, p.o_cmp.view(), slc, p.o_swa.view(), out));
  const std::vector<double> want = naive_combine(dense);
  for (std::int64_t i = 0; i < n * hq * 2 * dv; ++i) {
    const double got = wide_o.get(i);
    if (i % (2 * dv) < dv) {
      EXPECT_NEAR(got, want[static_cast<std::size_t>(i / (2 * dv) * dv + i % dv)], 1e-5) << i;
    } else {
      EXPECT_TRUE(std::isnan(got)) << "element " << i << " outside the view was written";
    }
  }
}

}  // namespace
}  // namespace fsa::test
