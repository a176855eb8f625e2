// Sliding-window attention (docs/semantics.md section 6) through the public API, against the naive
// fp64 oracle under the mask p in [max(0, t - w), t].
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "naive_attention.hpp"
#include "test_util.hpp"

namespace fsa::test {
namespace {

struct SwaProblem {
  NsaConfig config;
  DType dtype = DType::kFloat32;
  int hq = 1, hkv = 1, dqk = 1, dv = 1;
  std::vector<std::int64_t> lengths, starts;
  std::int64_t tokens = 0;
  HostTensor cu, q, k, v;

  NaiveAttentionShape naive_shape() const {
    NaiveAttentionShape s = NaiveAttentionShape::with_heads(hq, hkv, dqk, dv);
    s.q_cu = offsets_of(cu);
    s.kv_cu = s.q_cu;
    return s;
  }

  AttentionMask mask() const {
    const std::int64_t w = config.window;
    return [w](int, std::int64_t t, int, std::int64_t p) { return p <= t && p >= t - w; };
  }
};

SwaProblem make_problem(int window, DType dtype, std::vector<std::int64_t> lengths, int hq, int hkv, int dqk, int dv,
                        std::mt19937_64& rng) {
  SwaProblem p;
  p.config.window = window;
  p.dtype = dtype;
  p.hq = hq;
  p.hkv = hkv;
  p.dqk = dqk;
  p.dv = dv;
  p.lengths = std::move(lengths);
  for (std::int64_t n : p.lengths) {
    p.starts.push_back(p.tokens);
    p.tokens += n;
  }
  p.cu = make_cu_seqlens(p.lengths);
  p.q = random_tensor(dtype, {p.tokens, hq, dqk}, rng);
  p.k = random_tensor(dtype, {p.tokens, hkv, dqk}, rng);
  p.v = random_tensor(dtype, {p.tokens, hkv, dv}, rng);
  return p;
}

struct Forward {
  HostTensor o, lse;
};

Forward run_forward(const SwaProblem& p) {
  Forward f{poisoned_tensor(p.dtype, {p.tokens, p.hq, p.dv}), poisoned_tensor(DType::kFloat32, {p.hq, p.tokens})};
  FSA_EXPECT_OK(swa_forward(p.config, p.q.view(), p.k.view(), p.v.view(), p.cu.view(), f.o.view(), f.lse.view()));
  return f;
}

struct Backward {
  HostTensor dq, dk, dv;
};

Backward run_backward(const SwaProblem& p, const Forward& f, const HostTensor& d_o) {
  Backward g{poisoned_tensor(p.dtype, {p.tokens, p.hq, p.dqk}), poisoned_tensor(p.dtype, {p.tokens, p.hkv, p.dqk}),
             poisoned_tensor(p.dtype, {p.tokens, p.hkv, p.dv})};
  FSA_EXPECT_OK(swa_backward(p.config, p.q.view(), p.k.view(), p.v.view(), p.cu.view(), f.o.view(), f.lse.view(),
                             d_o.view(), g.dq.view(), g.dk.view(), g.dv.view()));
  return g;
}

void expect_forward_matches_naive(const SwaProblem& p, double tol) {
  const Forward f = run_forward(p);
  const NaiveForward want =
      naive_attention_forward(p.naive_shape(), p.q.to_double(), p.k.to_double(), p.v.to_double(), p.mask());
  expect_close(f.o.to_double(), want.o, tol, "o");
  expect_lse_close(f.lse.to_double(), want.lse, tol, "lse");
  // Every query sees at least itself.
  EXPECT_TRUE(all_finite(f.lse.to_double()));
}

// The o rows of all heads of one global token.
std::vector<double> token_rows(const HostTensor& o, std::int64_t row, int hq, int dv) {
  std::vector<double> out;
  for (int i = 0; i < hq * dv; ++i) out.push_back(o.get(row * hq * dv + i));
  return out;
}

TEST(Swa, SpecExampleQuery1000Window512SeesKeys488To1000) {
  auto rng = rng_for_test();
  // The long sequence follows a short one, so local positions differ from global rows.
  SwaProblem p = make_problem(512, DType::kFloat32, {50, 1100}, 2, 1, 16, 16, rng);
  const std::int64_t query = p.starts[1] + 1000;
  const std::vector<double> base = token_rows(run_forward(p).o, query, p.hq, p.dv);

  // Replaces key and value of local position `pos` with fresh draws and reports whether the
  // output of query 1000 moved.
  auto output_moves_when_changing = [&](std::int64_t pos) {
    SwaProblem changed = p;
    const std::int64_t row = p.starts[1] + pos;
    std::normal_distribution<double> dist(0.0, 3.0);
    for (int i = 0; i < p.hkv * p.dqk; ++i) changed.k.set(row * p.hkv * p.dqk + i, dist(rng));
    for (int i = 0; i < p.hkv * p.dv; ++i) changed.v.set(row * p.hkv * p.dv + i, 10.0 + dist(rng));
    return token_rows(run_forward(changed).o, query, p.hq, p.dv) != base;
  };
  for (std::int64_t pos : {488, 489, 744, 999, 1000}) EXPECT_TRUE(output_moves_when_changing(pos)) << pos;
  for (std::int64_t pos : {0, 100, 486, 487, 1001, 1002, 1099}) EXPECT_FALSE(output_moves_when_changing(pos)) << pos;
  expect_forward_matches_naive(p, 1e-5);
}

TEST(Swa, ZeroWindowAttendsOnlyItself) {
  auto rng = rng_for_test();
  const SwaProblem p = make_problem(0, DType::kFloat64, {1, 9, 30}, 6, 2, 8, 5, rng);
  const Forward f = run_forward(p);
  const int group = p.hq / p.hkv;
  for (std::int64_t t = 0; t < p.tokens; ++t)
    for (int h = 0; h < p.hq; ++h) {
      double logit = 0;
      for (int d = 0; d < p.dqk; ++d)
        logit += p.q.get((t * p.hq + h) * p.dqk + d) * p.k.get((t * p.hkv + h / group) * p.dqk + d);
      logit /= std::sqrt(static_cast<double>(p.dqk));
      EXPECT_NEAR(f.lse.get(h * p.tokens + t), logit, 1e-6 * (1 + std::fabs(logit))) << "t=" << t;
      for (int e = 0; e < p.dv; ++e)
        EXPECT_NEAR(f.o.get((t * p.hq + h) * p.dv + e), p.v.get((t * p.hkv + h / group) * p.dv + e), 1e-12);
    }
}

TEST(Swa, ForwardMatchesNaiveAcrossWindowsGroupsAndDtypes) {
  auto rng = rng_for_test();
  // An empty sequence, one token, windows shorter and longer than the sequences.
  const std::vector<std::int64_t> lengths = {1, 5, 100, 0, 140, 33};
  for (int window : {1, 7, 64, 512})
    for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16})
      for (int group : {1, 2, 3}) {
        SCOPED_TRACE("w=" + std::to_string(window) + " dtype=" + dtype_name(dtype) + " G=" + std::to_string(group));
        const SwaProblem p = make_problem(window, dtype, lengths, 2 * group, 2, 24, 16, rng);
        expect_forward_matches_naive(p, tolerance_for(dtype));
      }
}

TEST(Swa, BackwardMatchesFiniteDifferences) {
  auto rng = rng_for_test();
  for (int window : {0, 3}) {
    SCOPED_TRACE("w=" + std::to_string(window));
    SwaProblem p = make_problem(window, DType::kFloat64, {2, 9}, 4, 2, 4, 3, rng);
    const HostTensor w = random_tensor(DType::kFloat64, {p.tokens, p.hq, p.dv}, rng);
    auto loss = [&] { return weighted_sum(run_forward(p).o, w); };
    const std::vector<double> fd_q = finite_difference(p.q, loss);
    const std::vector<double> fd_k = finite_difference(p.k, loss);
    const std::vector<double> fd_v = finite_difference(p.v, loss);
    const Forward f = run_forward(p);
    const Backward g = run_backward(p, f, w);
    // The backward's probabilities go through the fp32 lse, which bounds fp64 accuracy near 1e-7.
    expect_close(g.dq.to_double(), fd_q, 1e-6, "dq");
    expect_close(g.dk.to_double(), fd_k, 1e-6, "dk");
    expect_close(g.dv.to_double(), fd_v, 1e-6, "dv");
  }
}

TEST(Swa, BackwardMatchesNaiveAcrossDtypes) {
  auto rng = rng_for_test();
  for (DType dtype : {DType::kFloat64, DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const SwaProblem p = make_problem(40, dtype, {150, 1, 41, 80}, 6, 2, 24, 16, rng);
    const Forward f = run_forward(p);
    const HostTensor d_o = random_tensor(dtype, {p.tokens, p.hq, p.dv}, rng);
    const Backward g = run_backward(p, f, d_o);
    const NaiveGrads want = naive_attention_backward(p.naive_shape(), p.q.to_double(), p.k.to_double(),
                                                     p.v.to_double(), d_o.to_double(), p.mask());
    const double tol = dtype == DType::kFloat64 ? 1e-6 : tolerance_for(dtype);
    expect_close(g.dq.to_double(), want.dq, tol, "dq");
    expect_close(g.dk.to_double(), want.dk, tol, "dk");
    expect_close(g.dv.to_double(), want.dv, tol, "dv");
  }
}

TEST(Swa, StridedViewsOfPackedBuffers) {
  auto rng = rng_for_test();
  const SwaProblem p = make_problem(20, DType::kFloat32, {30, 77}, 4, 2, 8, 8, rng);
  const std::int64_t n = p.tokens, hq = p.hq, hkv = p.hkv, d = p.dqk;
  // q, k, v as slices of one projection output [N, Hq + 2 Hkv, D]; o and the gradients in the
  // first half of rows twice as wide; lse with padded rows. Padding is NaN and must stay so.
  const std::int64_t heads = hq + 2 * hkv;
  HostTensor qkv(DType::kFloat32, {n, heads, d});
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t i = 0; i < d; ++i) {
      for (std::int64_t h = 0; h < hq; ++h) qkv.set((t * heads + h) * d + i, p.q.get((t * hq + h) * d + i));
      for (std::int64_t h = 0; h < hkv; ++h) {
        qkv.set((t * heads + hq + h) * d + i, p.k.get((t * hkv + h) * d + i));
        qkv.set((t * heads + hq + hkv + h) * d + i, p.v.get((t * hkv + h) * d + i));
      }
    }
  auto* base = static_cast<float*>(qkv.view().data);
  const TensorView q = TensorView::strided(base, DType::kFloat32, {n, hq, d}, {heads * d, d, 1});
  const TensorView k = TensorView::strided(base + hq * d, DType::kFloat32, {n, hkv, d}, {heads * d, d, 1});
  const TensorView v = TensorView::strided(base + (hq + hkv) * d, DType::kFloat32, {n, hkv, d}, {heads * d, d, 1});
  auto wide = [&](std::int64_t h) { return poisoned_tensor(DType::kFloat32, {n, h, 2 * d}); };
  auto half_of = [&](const HostTensor& t, std::int64_t h) {
    return TensorView::strided(t.view().data, DType::kFloat32, {n, h, d}, {h * 2 * d, 2 * d, 1});
  };
  HostTensor o = wide(hq), lse = poisoned_tensor(DType::kFloat32, {hq, n + 5}), dq = wide(hq), dk = wide(hkv),
             dv = wide(hkv);
  const TensorView lse_view = TensorView::strided(lse.view().data, DType::kFloat32, {hq, n}, {n + 5, 1});
  FSA_ASSERT_OK(swa_forward(p.config, q, k, v, p.cu.view(), half_of(o, hq), lse_view));
  const HostTensor d_o = random_tensor(DType::kFloat32, {n, hq, d}, rng);
  FSA_ASSERT_OK(swa_backward(p.config, q, k, v, p.cu.view(), half_of(o, hq), lse_view, d_o.view(), half_of(dq, hq),
                             half_of(dk, hkv), half_of(dv, hkv)));

  const Forward want = run_forward(p);
  const Backward want_g = run_backward(p, want, d_o);
  // Compares the strided result with the contiguous one and checks the padding is untouched.
  auto expect_same = [&](const HostTensor& strided, const HostTensor& dense, const char* what) {
    const std::int64_t row = strided.sizes().back(), used = dense.sizes().back();
    for (std::int64_t i = 0; i < strided.numel(); ++i) {
      const double got = strided.get(i);
      if (i % row < used) {
        ASSERT_EQ(got, dense.get(i / row * used + i % row)) << what << " element " << i;
      } else {
        ASSERT_TRUE(std::isnan(got)) << what << ": padding element " << i << " was written";
      }
    }
  };
  expect_same(o, want.o, "o");
  expect_same(lse, want.lse, "lse");
  expect_same(dq, want_g.dq, "dq");
  expect_same(dk, want_g.dk, "dk");
  expect_same(dv, want_g.dv, "dv");
}

}  // namespace
}  // namespace fsa::test
