// Selected attention (docs/semantics.md section 5) through the public API, against the naive fp64
// oracle under the union-of-selected-blocks mask.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "naive_attention.hpp"
#include "test_util.hpp"

namespace fsa::test {
namespace {

constexpr std::int32_t kInt32Max = std::numeric_limits<std::int32_t>::max();
constexpr std::int32_t kInt32Min = std::numeric_limits<std::int32_t>::min();

struct SlcProblem {
  NsaConfig config;
  DType dtype = DType::kFloat32;
  int hq = 1, hkv = 1, dqk = 1, dv = 1, width = 1;
  std::vector<std::int64_t> lengths, starts;
  std::int64_t tokens = 0;
  HostTensor cu, q, k, v, topk;  // topk int32 [Hkv, N, width]

  NaiveAttentionShape naive_shape() const {
    NaiveAttentionShape s = NaiveAttentionShape::with_heads(hq, hkv, dqk, dv);
    s.q_cu = offsets_of(cu);
    s.kv_cu = s.q_cu;
    return s;
  }

  // Key p is attended iff p <= t and the block holding p is listed in the query's row: a listed
  // block that is negative, in the future or past the sequence can never hold such a p, so this
  // is the rule of docs/semantics.md section 5 without restating its list of ignored entries.
  AttentionMask mask() const {
    std::vector<std::int32_t> rows;
    for (double x : topk.to_double()) rows.push_back(static_cast<std::int32_t>(x));
    const std::int64_t block = config.block_size, n = tokens, w = width;
    const std::vector<std::int64_t> row0 = starts;
    return [rows, block, n, w, row0](int b, std::int64_t t, int g, std::int64_t p) {
      if (p > t) return false;
      const std::int32_t* row = rows.data() + (g * n + row0[static_cast<std::size_t>(b)] + t) * w;
      return std::find(row, row + w, static_cast<std::int32_t>(p / block)) != row + w;
    };
  }

  void set_entry(int g, std::int64_t global_row, int j, std::int32_t value) {
    topk.set((g * tokens + global_row) * width + j, value);
  }
  std::int32_t entry(int g, std::int64_t global_row, int j) const {
    return static_cast<std::int32_t>(topk.get((g * tokens + global_row) * width + j));
  }
};

// A row entry a producer might write: mostly valid blocks of [0, bq(t)], and also -1, duplicates,
// future blocks, blocks past the sequence and extreme values, at any position of the row.
std::int32_t random_entry(std::mt19937_64& rng, std::int64_t t, std::int64_t n, std::int64_t block,
                          const std::vector<std::int32_t>& row_so_far) {
  const std::int64_t bq = t / block, nblk = (n + block - 1) / block;
  auto uniform = [&](std::int64_t lo, std::int64_t hi) {
    return static_cast<std::int32_t>(std::uniform_int_distribution<std::int64_t>(lo, hi)(rng));
  };
  const int kind = uniform(0, 19);
  if (kind < 10) return uniform(0, bq);
  if (kind < 12) return -1;
  if (kind < 14 && !row_so_far.empty()) return row_so_far[static_cast<std::size_t>(uniform(0, row_so_far.size() - 1))];
  if (kind < 16 && bq + 1 < nblk) return uniform(bq + 1, nblk - 1);
  if (kind < 17) return uniform(nblk, nblk + 3);
  if (kind < 18) return kInt32Max;
  if (kind < 19) return kInt32Min;
  return uniform(-1000, -2);
}

void fill_random_topk(SlcProblem& p, std::mt19937_64& rng) {
  for (int g = 0; g < p.hkv; ++g)
    for (std::size_t b = 0; b < p.lengths.size(); ++b)
      for (std::int64_t t = 0; t < p.lengths[b]; ++t) {
        std::vector<std::int32_t> row;
        for (int j = 0; j < p.width; ++j) {
          row.push_back(random_entry(rng, t, p.lengths[b], p.config.block_size, row));
          p.set_entry(g, p.starts[b] + t, j, row.back());
        }
      }
}

SlcProblem make_problem(const NsaConfig& config, DType dtype, std::vector<std::int64_t> lengths, int hq, int hkv,
                        int dqk, int dv, int width, std::mt19937_64& rng) {
  SlcProblem p;
  p.config = config;
  p.dtype = dtype;
  p.hq = hq;
  p.hkv = hkv;
  p.dqk = dqk;
  p.dv = dv;
  p.width = width;
  p.lengths = std::move(lengths);
  for (std::int64_t n : p.lengths) {
    p.starts.push_back(p.tokens);
    p.tokens += n;
  }
  p.cu = make_cu_seqlens(p.lengths);
  p.q = random_tensor(dtype, {p.tokens, hq, dqk}, rng);
  p.k = random_tensor(dtype, {p.tokens, hkv, dqk}, rng);
  p.v = random_tensor(dtype, {p.tokens, hkv, dv}, rng);
  p.topk = HostTensor(DType::kInt32, {hkv, p.tokens, width});
  fill_random_topk(p, rng);
  return p;
}

NsaConfig config_with_block(int block_size) {
  NsaConfig c;
  c.block_size = block_size;
  return c;
}

struct Forward {
  HostTensor o, lse;
};

Forward run_forward(const SlcProblem& p) {
  Forward f{poisoned_tensor(p.dtype, {p.tokens, p.hq, p.dv}), poisoned_tensor(DType::kFloat32, {p.hq, p.tokens})};
  FSA_EXPECT_OK(slc_attn_forward(p.config, p.q.view(), p.k.view(), p.v.view(), p.topk.view(), p.cu.view(),
                                 f.o.view(), f.lse.view()));
  return f;
}

struct Backward {
  HostTensor dq, dk, dv;
};

Backward run_backward(const SlcProblem& p, const Forward& f, const HostTensor& d_o) {
  Backward g{poisoned_tensor(p.dtype, {p.tokens, p.hq, p.dqk}), poisoned_tensor(p.dtype, {p.tokens, p.hkv, p.dqk}),
             poisoned_tensor(p.dtype, {p.tokens, p.hkv, p.dv})};
  FSA_EXPECT_OK(slc_attn_backward(p.config, p.q.view(), p.k.view(), p.v.view(), p.topk.view(), p.cu.view(),
                                  f.o.view(), f.lse.view(), d_o.view(), g.dq.view(), g.dk.view(), g.dv.view()));
  return g;
}

void expect_forward_matches_naive(const SlcProblem& p, double tol) {
  const Forward f = run_forward(p);
  const NaiveForward want =
      naive_attention_forward(p.naive_shape(), p.q.to_double(), p.k.to_double(), p.v.to_double(), p.mask());
  expect_close(f.o.to_double(), want.o, tol, "o");
  expect_lse_close(f.lse.to_double(), want.lse, tol, "lse");
}

void expect_backward_matches_naive(const SlcProblem& p, double tol, std::mt19937_64& rng) {
  const Forward f = run_forward(p);
  const HostTensor d_o = random_tensor(p.dtype, {p.tokens, p.hq, p.dv}, rng);
  const Backward g = run_backward(p, f, d_o);
  const NaiveGrads want = naive_attention_backward(p.naive_shape(), p.q.to_double(), p.k.to_double(),
                                                   p.v.to_double(), d_o.to_double(), p.mask());
  expect_close(g.dq.to_double(), want.dq, tol, "dq");
  expect_close(g.dk.to_double(), want.dk, tol, "dk");
  expect_close(g.dv.to_double(), want.dv, tol, "dv");
}

// Rows of the fp64 backward go through the fp32 lse of the forward, which bounds its accuracy.
constexpr double kFp64GradTol = 1e-6;

TEST(SlcAttn, ForwardMatchesUnionMaskAcrossBlockSizesAndDtypes) {
  auto rng = rng_for_test();
  for (int block : {32, 64, 128}) {
    // Ragged last blocks, an empty sequence, sequences inside one block.
    const std::vector<std::int64_t> lengths = {1, block - 1, block, 0, block + 1, 2 * block + 5, 3 * block - 7, 7};
    for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
      SCOPED_TRACE("B=" + std::to_string(block) + " dtype=" + dtype_name(dtype));
      // Width 5 differs from config.topk = 16: any width is accepted.
      const SlcProblem p = make_problem(config_with_block(block), dtype, lengths, 4, 2, 24, 16, 5, rng);
      expect_forward_matches_naive(p, tolerance_for(dtype));
    }
  }
}

TEST(SlcAttn, EveryLengthUpToTwoBlocksInOnePackedBatch) {
  auto rng = rng_for_test();
  const int block = 32;
  std::vector<std::int64_t> lengths = {1, 2, 3, 6, 7, 11};
  for (std::int64_t n = 1; n <= 2 * block; ++n) lengths.push_back(n);
  const SlcProblem p = make_problem(config_with_block(block), DType::kFloat32, lengths, 2, 1, 16, 16, 3, rng);
  expect_forward_matches_naive(p, 1e-5);
  expect_backward_matches_naive(p, 1e-5, rng);
}

TEST(SlcAttn, GroupSizes) {
  auto rng = rng_for_test();
  for (int group : {1, 2, 3, 4, 8, 16}) {
    const int hkv = group <= 4 ? 2 : 1;
    SCOPED_TRACE("G=" + std::to_string(group) + " Hkv=" + std::to_string(hkv));
    const SlcProblem p =
        make_problem(config_with_block(32), DType::kFloat32, {100, 37, 64}, group * hkv, hkv, 16, 8, 4, rng);
    expect_forward_matches_naive(p, 1e-5);
    expect_backward_matches_naive(p, 1e-5, rng);
  }
}

// A clean producer's selections: up to 3 distinct valid blocks per row, ascending, -1 padded.
SlcProblem make_clean_problem(std::mt19937_64& rng) {
  const NsaConfig config = config_with_block(32);
  SlcProblem clean = make_problem(config, DType::kFloat32, {150, 40, 97}, 4, 2, 16, 16, 4, rng);
  for (int g = 0; g < clean.hkv; ++g)
    for (std::size_t b = 0; b < clean.lengths.size(); ++b)
      for (std::int64_t t = 0; t < clean.lengths[b]; ++t) {
        std::vector<std::int32_t> blocks;
        for (std::int32_t j = 0; j <= t / config.block_size; ++j) blocks.push_back(j);
        std::shuffle(blocks.begin(), blocks.end(), rng);
        blocks.resize(std::min<std::size_t>(blocks.size(), 3));
        std::sort(blocks.begin(), blocks.end());
        blocks.resize(static_cast<std::size_t>(clean.width), -1);
        for (int j = 0; j < clean.width; ++j) clean.set_entry(g, clean.starts[b] + t, j, blocks[j]);
      }
  return clean;
}

// Rewrites every row of `clean` with `rewrite(valid entries of the row, t, n)` into a row of
// `width` entries (-1 padded) and expects forward and backward to be unchanged.
void expect_rewritten_rows_give_the_same_result(
    const SlcProblem& clean, int width,
    const std::function<std::vector<std::int32_t>(std::vector<std::int32_t>, std::int64_t, std::int64_t)>& rewrite,
    std::mt19937_64& rng) {
  SlcProblem changed = clean;
  changed.width = width;
  changed.topk = HostTensor(DType::kInt32, {clean.hkv, clean.tokens, width});
  for (int g = 0; g < clean.hkv; ++g)
    for (std::size_t b = 0; b < clean.lengths.size(); ++b)
      for (std::int64_t t = 0; t < clean.lengths[b]; ++t) {
        const std::int64_t row = clean.starts[b] + t;
        std::vector<std::int32_t> valid;
        for (int j = 0; j < clean.width; ++j)
          if (clean.entry(g, row, j) >= 0) valid.push_back(clean.entry(g, row, j));
        std::vector<std::int32_t> entries = rewrite(valid, t, clean.lengths[b]);
        ASSERT_LE(entries.size(), static_cast<std::size_t>(width));
        entries.resize(static_cast<std::size_t>(width), -1);
        for (int j = 0; j < width; ++j) changed.set_entry(g, row, j, entries[static_cast<std::size_t>(j)]);
      }
  const Forward want = run_forward(clean), got = run_forward(changed);
  expect_close(got.o.to_double(), want.o.to_double(), 1e-6, "o");
  expect_lse_close(got.lse.to_double(), want.lse.to_double(), 1e-6, "lse");
  expect_forward_matches_naive(changed, 1e-5);

  const HostTensor d_o = random_tensor(DType::kFloat32, {clean.tokens, clean.hq, clean.dv}, rng);
  const Backward want_g = run_backward(clean, want, d_o), got_g = run_backward(changed, got, d_o);
  expect_close(got_g.dq.to_double(), want_g.dq.to_double(), 1e-6, "dq");
  expect_close(got_g.dk.to_double(), want_g.dk.to_double(), 1e-6, "dk");
  expect_close(got_g.dv.to_double(), want_g.dv.to_double(), 1e-6, "dv");
}

// The path option only chooses GPU kernels: the CPU reference accepts every path and gives the
// same result, and a malformed option is an error naming it.
TEST(SlcAttn, PathOptionsAreValidatedAndDoNotChangeTheCpuResult) {
  auto rng = rng_for_test();
  const SlcProblem p = make_problem(config_with_block(32), DType::kFloat32, {90, 33}, 4, 2, 16, 16, 4, rng);
  const Forward base = run_forward(p);
  for (const SlcPath path : {SlcPath::kKvOuter, SlcPath::kSplit, SlcPath::kQueryOuter}) {
    Forward f{poisoned_tensor(p.dtype, {p.tokens, p.hq, p.dv}), poisoned_tensor(DType::kFloat32, {p.hq, p.tokens})};
    FSA_EXPECT_OK(slc_attn_forward(p.config, p.q.view(), p.k.view(), p.v.view(), p.topk.view(), p.cu.view(),
                                   f.o.view(), f.lse.view(), SlcOptions{path, 3}));
    EXPECT_EQ(f.o.to_double(), base.o.to_double());
  }
  Forward f{poisoned_tensor(p.dtype, {p.tokens, p.hq, p.dv}), poisoned_tensor(DType::kFloat32, {p.hq, p.tokens})};
  const Status negative = slc_attn_forward(p.config, p.q.view(), p.k.view(), p.v.view(), p.topk.view(), p.cu.view(),
                                           f.o.view(), f.lse.view(), SlcOptions{SlcPath::kSplit, -1});
  EXPECT_EQ(negative.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(negative.message().rfind("options.dense_threshold", 0), 0u) << negative.to_string();
  const Status unknown = slc_attn_forward(p.config, p.q.view(), p.k.view(), p.v.view(), p.topk.view(), p.cu.view(),
                                          f.o.view(), f.lse.view(), SlcOptions{static_cast<SlcPath>(42), 0});
  EXPECT_EQ(unknown.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(unknown.message().rfind("options.path", 0), 0u) << unknown.to_string();
}

TEST(SlcAttn, OrderWithinARowDoesNotMatter) {
  auto rng = rng_for_test();
  const SlcProblem clean = make_clean_problem(rng);
  // Descending order, with the -1 padding first.
  expect_rewritten_rows_give_the_same_result(
      clean, clean.width,
      [&](std::vector<std::int32_t> row, std::int64_t, std::int64_t) {
        std::sort(row.rbegin(), row.rend());
        row.insert(row.begin(), static_cast<std::size_t>(clean.width) - row.size(), -1);
        return row;
      },
      rng);
}

TEST(SlcAttn, DuplicatesCountOnce) {
  auto rng = rng_for_test();
  const SlcProblem clean = make_clean_problem(rng);
  expect_rewritten_rows_give_the_same_result(
      clean, clean.width + 3,
      [](std::vector<std::int32_t> row, std::int64_t, std::int64_t) {
        const std::vector<std::int32_t> once = row;
        row.push_back(once.front());  // every clean row selects at least one block
        row.push_back(once.back());
        row.push_back(once.front());
        return row;
      },
      rng);
}

TEST(SlcAttn, NegativeFutureAndOutOfRangeEntriesAreIgnoredAnywhere) {
  auto rng = rng_for_test();
  const SlcProblem clean = make_clean_problem(rng);
  const std::int64_t block = clean.config.block_size;
  expect_rewritten_rows_give_the_same_result(
      clean, clean.width + 7,
      [&](std::vector<std::int32_t> row, std::int64_t t, std::int64_t n) {
        const std::int64_t bq = t / block, nblk = (n + block - 1) / block;
        // The next block when it exists (a future one), else the first past the sequence.
        row.push_back(static_cast<std::int32_t>(std::min(bq + 1, nblk)));
        row.push_back(static_cast<std::int32_t>(nblk));
        row.push_back(static_cast<std::int32_t>(nblk + 5));
        for (std::int32_t junk : {std::int32_t{-1}, std::int32_t{-2}, kInt32Max, kInt32Min}) row.push_back(junk);
        std::shuffle(row.begin(), row.end(), rng);  // -1 and friends land at any position
        return row;
      },
      rng);
}

TEST(SlcAttn, EmptySelectionGivesZeroOutputMinusInfLseAndZeroGradients) {
  auto rng = rng_for_test();
  const NsaConfig config = config_with_block(32);
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    SCOPED_TRACE(dtype_name(dtype));
    SlcProblem p = make_problem(config, dtype, {70, 20, 45}, 4, 2, 16, 16, 4, rng);
    // The second sequence selects nothing at all (all -1, or only ignored entries); in the others
    // every third row is all -1 and the rest keep their random entries.
    std::vector<bool> empty_row(static_cast<std::size_t>(p.tokens), false);
    for (int g = 0; g < p.hkv; ++g)
      for (std::int64_t r = 0; r < p.tokens; ++r) {
        const bool second = r >= p.starts[1] && r < p.starts[2];
        if (!second && r % 3 != 0) continue;
        empty_row[static_cast<std::size_t>(r)] = true;
        for (int j = 0; j < p.width; ++j)
          p.set_entry(g, r, j, second && j == 1 ? kInt32Max : (second && j == 2 ? 5 : -1));
      }
    const Forward f = run_forward(p);
    const HostTensor d_o = random_tensor(dtype, {p.tokens, p.hq, p.dv}, rng);
    const Backward g = run_backward(p, f, d_o);
    EXPECT_TRUE(all_finite(f.o.to_double()));
    EXPECT_TRUE(all_finite(g.dq.to_double()));
    EXPECT_TRUE(all_finite(g.dk.to_double()));
    EXPECT_TRUE(all_finite(g.dv.to_double()));
    for (std::int64_t r = 0; r < p.tokens; ++r) {
      if (!empty_row[static_cast<std::size_t>(r)]) continue;
      for (int h = 0; h < p.hq; ++h) {
        const double lse = f.lse.get(h * p.tokens + r);
        EXPECT_TRUE(std::isinf(lse) && lse < 0) << "row " << r << " lse " << lse;
        for (int e = 0; e < p.dv; ++e) ASSERT_EQ(f.o.get((r * p.hq + h) * p.dv + e), 0.0) << "row " << r;
        for (int d = 0; d < p.dqk; ++d) ASSERT_EQ(g.dq.get((r * p.hq + h) * p.dqk + d), 0.0) << "row " << r;
      }
    }
    // Nobody attends the keys of the second sequence, so their gradients vanish.
    for (std::int64_t r = p.starts[1]; r < p.starts[2]; ++r) {
      for (int i = 0; i < p.hkv * p.dqk; ++i) ASSERT_EQ(g.dk.get(r * p.hkv * p.dqk + i), 0.0) << "row " << r;
      for (int i = 0; i < p.hkv * p.dv; ++i) ASSERT_EQ(g.dv.get(r * p.hkv * p.dv + i), 0.0) << "row " << r;
    }
    expect_forward_matches_naive(p, tolerance_for(dtype));
  }
}

TEST(SlcAttn, LargeLogitSpreadWithinASequenceStaysFiniteAndAccurate) {
  auto rng = rng_for_test();
  const NsaConfig config = config_with_block(64);
  for (DType dtype : {DType::kFloat64, DType::kFloat32}) {
    SCOPED_TRACE(dtype_name(dtype));
    SlcProblem p = make_problem(config, dtype, {300, 90}, 2, 1, 32, 16, 4, rng);
    // Every third query is scaled up 300 times: its logits reach hundreds while its neighbours'
    // stay near 1, far beyond what one softmax stabiliser per sequence survives in fp32 (~87).
    for (std::int64_t r = 0; r < p.tokens; r += 3)
      for (int i = 0; i < p.hq * p.dqk; ++i) p.q.set(r * p.hq * p.dqk + i, 300.0 * p.q.get(r * p.hq * p.dqk + i));
    const Forward f = run_forward(p);
    const NaiveForward want =
        naive_attention_forward(p.naive_shape(), p.q.to_double(), p.k.to_double(), p.v.to_double(), p.mask());
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (std::int64_t r = 0; r < p.lengths[0]; ++r) {
      const double lse = want.lse[static_cast<std::size_t>(r)];
      if (!std::isfinite(lse)) continue;
      lo = std::min(lo, lse);
      hi = std::max(hi, lse);
    }
    ASSERT_GT(hi - lo, 200.0) << "the inputs must spread the logits of one sequence by more than 200";
    // fp32 logits of magnitude ~300 carry absolute errors ~1e-5 (measured o error 3e-6).
    const double tol = dtype == DType::kFloat64 ? 1e-6 : 1e-4;
    expect_close(f.o.to_double(), want.o, tol, "o");
    expect_lse_close(f.lse.to_double(), want.lse, tol, "lse");

    const HostTensor d_o = random_tensor(dtype, {p.tokens, p.hq, p.dv}, rng);
    const Backward g = run_backward(p, f, d_o);
    const NaiveGrads want_g = naive_attention_backward(p.naive_shape(), p.q.to_double(), p.k.to_double(),
                                                       p.v.to_double(), d_o.to_double(), p.mask());
    // The backward rebuilds probabilities as exp(logit - lse) from the fp32 lse: with logits of
    // ~300 its rounding (~2e-5 absolute) becomes a relative error of that size.
    const double grad_tol = dtype == DType::kFloat64 ? 1e-4 : 1e-3;
    expect_close(g.dq.to_double(), want_g.dq, grad_tol, "dq");
    expect_close(g.dk.to_double(), want_g.dk, grad_tol, "dk");
    expect_close(g.dv.to_double(), want_g.dv, grad_tol, "dv");
  }
}

TEST(SlcAttn, BackwardMatchesFiniteDifferences) {
  auto rng = rng_for_test();
  const NsaConfig config = config_with_block(32);
  for (const auto& [hq, hkv] : {std::pair{2, 1}, std::pair{3, 3}}) {
    SCOPED_TRACE("Hq=" + std::to_string(hq) + " Hkv=" + std::to_string(hkv));
    // A sequence inside one block and one with a ragged second block.
    SlcProblem p = make_problem(config, DType::kFloat64, {5, 45}, hq, hkv, 4, 3, 3, rng);
    const HostTensor w = random_tensor(DType::kFloat64, {p.tokens, p.hq, p.dv}, rng);
    auto loss = [&] { return weighted_sum(run_forward(p).o, w); };
    const std::vector<double> fd_q = finite_difference(p.q, loss);
    const std::vector<double> fd_k = finite_difference(p.k, loss);
    const std::vector<double> fd_v = finite_difference(p.v, loss);
    const Forward f = run_forward(p);
    const Backward g = run_backward(p, f, w);
    expect_close(g.dq.to_double(), fd_q, kFp64GradTol, "dq");
    expect_close(g.dk.to_double(), fd_k, kFp64GradTol, "dk");
    expect_close(g.dv.to_double(), fd_v, kFp64GradTol, "dv");
  }
}

TEST(SlcAttn, BackwardMatchesNaiveAcrossDtypes) {
  auto rng = rng_for_test();
  const NsaConfig config = config_with_block(64);
  for (DType dtype : {DType::kFloat64, DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const SlcProblem p = make_problem(config, dtype, {200, 64, 129, 3}, 6, 2, 24, 16, 6, rng);
    expect_backward_matches_naive(p, dtype == DType::kFloat64 ? kFp64GradTol : tolerance_for(dtype), rng);
  }
}

}  // namespace
}  // namespace fsa::test
