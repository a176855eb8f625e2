// Compressed attention (docs/semantics.md section 3) through the public API, against the naive fp64
// oracle.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "naive_attention.hpp"
#include "test_util.hpp"

namespace fsa::test {
namespace {

// The visibility rule written out once, independently of the library: compressed token i covers
// raw positions [i*s, i*s + l - 1] and is visible to query t once that whole window is at or before t.
bool cmp_visible(const NsaConfig& config, std::int64_t t, std::int64_t i) {
  return i * config.cmp_stride + config.cmp_len - 1 <= t;
}

std::int64_t cmp_count(const NsaConfig& config, std::int64_t n) {
  return n >= config.cmp_len ? (n - config.cmp_len) / config.cmp_stride + 1 : 0;
}

struct CmpProblem {
  NsaConfig config;
  DType dtype = DType::kFloat32;
  int hq = 1, hkv = 1, dqk = 1, dv = 1;
  std::vector<std::int64_t> lengths;
  std::int64_t tokens = 0, cmp_rows = 0;  // cmp_rows: rows of k_cmp / v_cmp, may exceed cu_cmp[nseq]
  HostTensor cu, cu_cmp, q, k_cmp, v_cmp;

  NaiveAttentionShape naive_shape() const {
    NaiveAttentionShape s = NaiveAttentionShape::with_heads(hq, hkv, dqk, dv);
    s.q_cu = {0};
    s.kv_cu = {0};
    for (std::int64_t n : lengths) {
      s.q_cu.push_back(s.q_cu.back() + n);
      s.kv_cu.push_back(s.kv_cu.back() + cmp_count(config, n));
    }
    return s;
  }

  AttentionMask mask() const {
    const NsaConfig c = config;
    return [c](int, std::int64_t t, int, std::int64_t i) { return cmp_visible(c, t, i); };
  }

  // The compressed inputs restricted to the rows cu_cmp uses (the oracle never sees the rest).
  std::vector<double> used_rows(const HostTensor& x, int dim) const {
    std::vector<double> all = x.to_double();
    all.resize(static_cast<std::size_t>(naive_shape().kv_rows() * hkv * dim));
    return all;
  }
};

CmpProblem make_problem(const NsaConfig& config, DType dtype, std::vector<std::int64_t> lengths, int hq, int hkv,
                        int dqk, int dv, std::mt19937_64& rng, std::int64_t extra_cmp_rows = 0) {
  CmpProblem p;
  p.config = config;
  p.dtype = dtype;
  p.hq = hq;
  p.hkv = hkv;
  p.dqk = dqk;
  p.dv = dv;
  p.lengths = std::move(lengths);
  p.cu = make_cu_seqlens(p.lengths);
  p.cu_cmp = make_cu_cmp(config, p.cu);
  p.tokens = p.naive_shape().q_rows();
  p.cmp_rows = p.naive_shape().kv_rows() + extra_cmp_rows;
  p.q = random_tensor(dtype, {p.tokens, hq, dqk}, rng);
  p.k_cmp = random_tensor(dtype, {p.cmp_rows, hkv, dqk}, rng);
  p.v_cmp = random_tensor(dtype, {p.cmp_rows, hkv, dv}, rng);
  return p;
}

struct Forward {
  HostTensor o, lse;
};

Forward run_forward(const CmpProblem& p) {
  Forward f{poisoned_tensor(p.dtype, {p.tokens, p.hq, p.dv}), poisoned_tensor(DType::kFloat32, {p.hq, p.tokens})};
  FSA_EXPECT_OK(cmp_attn_forward(p.config, p.q.view(), p.k_cmp.view(), p.v_cmp.view(), p.cu.view(), p.cu_cmp.view(),
                                 f.o.view(), f.lse.view()));
  return f;
}

struct Backward {
  HostTensor dq, dk_cmp, dv_cmp;
};

Backward run_backward(const CmpProblem& p, const Forward& f, const HostTensor& d_o) {
  Backward g{poisoned_tensor(p.dtype, {p.tokens, p.hq, p.dqk}), poisoned_tensor(p.dtype, {p.cmp_rows, p.hkv, p.dqk}),
             poisoned_tensor(p.dtype, {p.cmp_rows, p.hkv, p.dv})};
  FSA_EXPECT_OK(cmp_attn_backward(p.config, p.q.view(), p.k_cmp.view(), p.v_cmp.view(), p.cu.view(), p.cu_cmp.view(),
                                  f.o.view(), f.lse.view(), d_o.view(), g.dq.view(), g.dk_cmp.view(),
                                  g.dv_cmp.view()));
  return g;
}

NsaConfig config_with(int cmp_len, int cmp_stride, int block_size) {
  NsaConfig c;
  c.cmp_len = cmp_len;
  c.cmp_stride = cmp_stride;
  c.block_size = block_size;
  return c;
}

TEST(CmpAttn, SpecVisibilityExamples) {
  auto rng = rng_for_test();
  const NsaConfig config;  // l = 32, s = 16
  // The 200-token sequence follows a shorter one, so local positions differ from global rows.
  const std::int64_t first = 37, n = 200, visible_max = 11;
  CmpProblem p = make_problem(config, DType::kFloat64, {first, n}, 2, 1, 16, visible_max, rng);
  // One-hot values: o[t, h, e] is the probability given to compressed token e of the sequence, so
  // the positive entries of o name exactly the tokens the query attended.
  const std::int64_t first_cmp = cmp_count(config, first);
  for (std::int64_t r = 0; r < p.cmp_rows; ++r) {
    const std::int64_t local_token = r < first_cmp ? r : r - first_cmp;
    for (int e = 0; e < p.dv; ++e) p.v_cmp.set(r * p.dv + e, e == local_token ? 1.0 : 0.0);
  }
  const Forward f = run_forward(p);

  auto attended = [&](std::int64_t t, int h) {
    std::vector<std::int64_t> tokens;
    for (int e = 0; e < p.dv; ++e) {
      const double x = f.o.get(((first + t) * p.hq + h) * p.dv + e);
      EXPECT_FALSE(std::isnan(x)) << "t=" << t;
      if (x != 0.0) tokens.push_back(e);
    }
    return tokens;
  };
  auto lse_at = [&](std::int64_t t, int h) { return f.lse.get(h * p.tokens + first + t); };
  for (int h = 0; h < p.hq; ++h) {
    EXPECT_TRUE(attended(30, h).empty());
    EXPECT_TRUE(std::isinf(lse_at(30, h)) && lse_at(30, h) < 0) << lse_at(30, h);
    EXPECT_EQ(attended(31, h), (std::vector<std::int64_t>{0}));
    EXPECT_EQ(attended(46, h), (std::vector<std::int64_t>{0}));
    EXPECT_EQ(attended(47, h), (std::vector<std::int64_t>{0, 1}));
    EXPECT_EQ(attended(191, h), (std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
    // Every other position follows the same rule, and a one-hot o of a visible row sums to 1.
    for (std::int64_t t = 0; t < n; ++t) {
      std::vector<std::int64_t> expected;
      for (std::int64_t i = 0; i < visible_max; ++i)
        if (cmp_visible(config, t, i)) expected.push_back(i);
      ASSERT_EQ(attended(t, h), expected) << "t=" << t;
      if (!expected.empty()) {
        double total = 0;
        for (int e = 0; e < p.dv; ++e) total += f.o.get(((first + t) * p.hq + h) * p.dv + e);
        EXPECT_NEAR(total, 1.0, 1e-12) << "t=" << t;
        EXPECT_TRUE(std::isfinite(lse_at(t, h))) << "t=" << t;
      }
    }
  }
}

TEST(CmpAttn, ForwardMatchesNaiveAcrossDtypesGroupsAndConfigs) {
  auto rng = rng_for_test();
  // Shorter than l, exactly l, l+s-1, empty, longer, l-1, l+s; per config.
  const std::vector<NsaConfig> configs = {config_with(32, 16, 64), config_with(16, 16, 32), config_with(64, 32, 64)};
  for (const NsaConfig& config : configs) {
    const std::int64_t l = config.cmp_len, s = config.cmp_stride;
    const std::vector<std::int64_t> lengths = {5, l, l + s - 1, 0, 150, l - 1, l + s, 230};
    for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16})
      for (int group : {1, 2, 3, 4}) {
        SCOPED_TRACE("l=" + std::to_string(l) + " s=" + std::to_string(s) + " dtype=" + dtype_name(dtype) +
                     " G=" + std::to_string(group));
        const int hkv = 2;
        CmpProblem p = make_problem(config, dtype, lengths, group * hkv, hkv, 24, 16, rng);
        const Forward f = run_forward(p);
        const NaiveForward want = naive_attention_forward(p.naive_shape(), p.q.to_double(), p.k_cmp.to_double(),
                                                          p.v_cmp.to_double(), p.mask());
        expect_close(f.o.to_double(), want.o, tolerance_for(dtype), "o");
        expect_lse_close(f.lse.to_double(), want.lse, tolerance_for(dtype), "lse");
      }
  }
}

TEST(CmpAttn, QueriesThatSeeNothingGetZeroOutputAndGradients) {
  auto rng = rng_for_test();
  const NsaConfig config;
  // No sequence reaches l, so nothing is visible anywhere; the compressed tensors still have rows
  // (sized from N, as a caller would), which must be neither read nor left unwritten.
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    CmpProblem p = make_problem(config, dtype, {1, 31, 0, 20}, 4, 2, 16, 8, rng,
                                max_compressed_tokens(52, config));
    p.k_cmp.poison();
    p.v_cmp.poison();
    const Forward f = run_forward(p);
    for (double x : f.o.to_double()) ASSERT_EQ(x, 0.0);
    for (double x : f.lse.to_double()) ASSERT_TRUE(std::isinf(x) && x < 0) << x;
    const HostTensor d_o = random_tensor(dtype, {p.tokens, p.hq, p.dv}, rng);
    const Backward g = run_backward(p, f, d_o);
    for (double x : g.dq.to_double()) ASSERT_EQ(x, 0.0);
    for (double x : g.dk_cmp.to_double()) ASSERT_EQ(x, 0.0);
    for (double x : g.dv_cmp.to_double()) ASSERT_EQ(x, 0.0);
  }
}

TEST(CmpAttn, RowsPastCuCmpAreNotReadAndGetZeroGradients) {
  auto rng = rng_for_test();
  const NsaConfig config;
  const std::vector<std::int64_t> lengths = {70, 33, 129};
  const std::int64_t extra = max_compressed_tokens(70 + 33 + 129, config) - (3 + 1 + 7);
  ASSERT_GT(extra, 0);
  CmpProblem p = make_problem(config, DType::kFloat32, lengths, 2, 1, 16, 16, rng, extra);
  const std::int64_t used = p.naive_shape().kv_rows();
  for (std::int64_t i = used * p.hkv * p.dqk; i < p.k_cmp.numel(); ++i) p.k_cmp.set(i, std::numeric_limits<double>::quiet_NaN());
  for (std::int64_t i = used * p.hkv * p.dv; i < p.v_cmp.numel(); ++i) p.v_cmp.set(i, std::numeric_limits<double>::quiet_NaN());
  const Forward f = run_forward(p);
  const NaiveForward want = naive_attention_forward(p.naive_shape(), p.q.to_double(), p.used_rows(p.k_cmp, p.dqk),
                                                    p.used_rows(p.v_cmp, p.dv), p.mask());
  expect_close(f.o.to_double(), want.o, 1e-5, "o");
  expect_lse_close(f.lse.to_double(), want.lse, 1e-5, "lse");

  const HostTensor d_o = random_tensor(p.dtype, {p.tokens, p.hq, p.dv}, rng);
  const Backward g = run_backward(p, f, d_o);
  EXPECT_TRUE(all_finite(g.dq.to_double()));
  for (std::int64_t i = used * p.hkv * p.dqk; i < g.dk_cmp.numel(); ++i) ASSERT_EQ(g.dk_cmp.get(i), 0.0) << i;
  for (std::int64_t i = used * p.hkv * p.dv; i < g.dv_cmp.numel(); ++i) ASSERT_EQ(g.dv_cmp.get(i), 0.0) << i;
  const NaiveGrads want_g = naive_attention_backward(p.naive_shape(), p.q.to_double(), p.used_rows(p.k_cmp, p.dqk),
                                                     p.used_rows(p.v_cmp, p.dv), d_o.to_double(), p.mask());
  expect_close(g.dq.to_double(), want_g.dq, 1e-5, "dq");
  expect_close(p.used_rows(g.dk_cmp, p.dqk), want_g.dk, 1e-5, "dk_cmp");
  expect_close(p.used_rows(g.dv_cmp, p.dv), want_g.dv, 1e-5, "dv_cmp");
}

TEST(CmpAttn, BackwardMatchesFiniteDifferences) {
  auto rng = rng_for_test();
  // A small config so that short sequences already have several compressed tokens.
  const NsaConfig config = config_with(8, 4, 32);
  for (const auto& [hq, hkv] : {std::pair{3, 1}, std::pair{4, 2}}) {
    SCOPED_TRACE("Hq=" + std::to_string(hq) + " Hkv=" + std::to_string(hkv));
    // Lengths: nothing visible, exactly l, several windows.
    CmpProblem p = make_problem(config, DType::kFloat64, {7, 8, 19}, hq, hkv, 5, 3, rng);
    const HostTensor w = random_tensor(DType::kFloat64, {p.tokens, p.hq, p.dv}, rng);
    auto loss = [&] { return weighted_sum(run_forward(p).o, w); };
    const std::vector<double> fd_q = finite_difference(p.q, loss);
    const std::vector<double> fd_k = finite_difference(p.k_cmp, loss);
    const std::vector<double> fd_v = finite_difference(p.v_cmp, loss);

    const Forward f = run_forward(p);
    const Backward g = run_backward(p, f, w);
    expect_close(g.dq.to_double(), fd_q, 1e-6, "dq");
    expect_close(g.dk_cmp.to_double(), fd_k, 1e-6, "dk_cmp");
    expect_close(g.dv_cmp.to_double(), fd_v, 1e-6, "dv_cmp");
    // Query rows before position l-1 of each sequence see nothing: their dq is exactly zero.
    std::int64_t row0 = 0;
    for (std::int64_t n : p.lengths) {
      for (std::int64_t t = 0; t < std::min<std::int64_t>(n, config.cmp_len - 1); ++t)
        for (int i = 0; i < p.hq * p.dqk; ++i) EXPECT_EQ(g.dq.get((row0 + t) * p.hq * p.dqk + i), 0.0);
      row0 += n;
    }
  }
}

TEST(CmpAttn, BackwardMatchesNaiveOnLargerBatches) {
  auto rng = rng_for_test();
  const NsaConfig config;
  for (DType dtype : {DType::kFloat64, DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    SCOPED_TRACE(dtype_name(dtype));
    CmpProblem p = make_problem(config, dtype, {40, 200, 10, 47, 96}, 6, 2, 24, 16, rng);
    const Forward f = run_forward(p);
    const HostTensor d_o = random_tensor(dtype, {p.tokens, p.hq, p.dv}, rng);
    const Backward g = run_backward(p, f, d_o);
    const NaiveGrads want = naive_attention_backward(p.naive_shape(), p.q.to_double(), p.k_cmp.to_double(),
                                                     p.v_cmp.to_double(), d_o.to_double(), p.mask());
    const double tol = dtype == DType::kFloat64 ? 1e-6 : tolerance_for(dtype);
    expect_close(g.dq.to_double(), want.dq, tol, "dq");
    expect_close(g.dk_cmp.to_double(), want.dk, tol, "dk_cmp");
    expect_close(g.dv_cmp.to_double(), want.dv, tol, "dv_cmp");
  }
}

}  // namespace
}  // namespace fsa::test
