// Block selection (docs/semantics.md section 4): the worked example, overlap weights, row
// invariants, an independent brute-force selection and the tie rule.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "reference/reference.hpp"
#include "selection_check.hpp"
#include "test_util.hpp"

namespace fsa::test {
namespace {

// Random q, k_cmp, v_cmp, the lse of compressed attention on them, and the selection.
struct Selection {
  NsaConfig config;
  std::vector<std::int64_t> lengths;
  std::vector<std::int64_t> cu, cu_cmp;
  int hq = 0, hkv = 0, dim = 0;
  HostTensor q, k_cmp, lse, topk;

  std::int64_t total() const { return cu.back(); }
  int group() const { return hq / hkv; }
  std::vector<std::int32_t> row(int g, std::int64_t global_t) const {
    std::vector<std::int32_t> out(static_cast<std::size_t>(config.topk));
    for (int c = 0; c < config.topk; ++c)
      out[static_cast<std::size_t>(c)] =
          static_cast<std::int32_t>(topk.get((g * total() + global_t) * config.topk + c));
    return out;
  }
};

std::vector<std::int64_t> cu_of(const HostTensor& cu) {
  std::vector<std::int64_t> out;
  for (double v : cu.to_double()) out.push_back(static_cast<std::int64_t>(v));
  return out;
}

// `identical_keys` gives every compressed token of a kv head the same key, so that all visible
// tokens get equal probabilities and whole blocks tie exactly.
Selection run_selection(const NsaConfig& config, const std::vector<std::int64_t>& lengths, int hq, int hkv, int dim,
                        DType dtype, std::mt19937_64& rng, bool identical_keys = false) {
  Selection s;
  s.config = config;
  s.lengths = lengths;
  s.hq = hq;
  s.hkv = hkv;
  s.dim = dim;
  const HostTensor cu = make_cu_seqlens(lengths);
  const HostTensor cu_cmp = make_cu_cmp(config, cu);
  s.cu = cu_of(cu);
  s.cu_cmp = cu_of(cu_cmp);
  const std::int64_t n = s.total();
  const std::int64_t rows = max_compressed_tokens(n, config);
  s.q = HostTensor(dtype, {n, hq, dim});
  s.q.fill_normal(rng);
  s.k_cmp = HostTensor(dtype, {rows, hkv, dim});
  s.k_cmp.fill_normal(rng);
  if (identical_keys)
    for (std::int64_t i = 1; i < rows; ++i)
      for (std::int64_t e = 0; e < hkv * dim; ++e) s.k_cmp.set(i * hkv * dim + e, s.k_cmp.get(e));
  // Rows past cu_cmp[nseq] must never be read.
  for (std::int64_t i = s.cu_cmp.back() * hkv * dim; i < s.k_cmp.numel(); ++i)
    s.k_cmp.set(i, std::numeric_limits<double>::quiet_NaN());
  HostTensor v_cmp(dtype, {rows, hkv, dim}), o(dtype, {n, hq, dim});
  v_cmp.fill_normal(rng);
  s.lse = HostTensor(DType::kFloat32, {hq, n});
  const Status attn = cmp_attn_forward(config, s.q.view(), s.k_cmp.view(), v_cmp.view(), cu.view(), cu_cmp.view(),
                                       o.view(), s.lse.view());
  EXPECT_TRUE(attn.is_ok()) << attn.to_string();
  s.topk = HostTensor(DType::kInt32, {hkv, n, config.topk});
  s.topk.poison();
  const Status sel =
      select_blocks(config, s.q.view(), s.k_cmp.view(), s.lse.view(), cu.view(), cu_cmp.view(), s.topk.view());
  EXPECT_TRUE(sel.is_ok()) << sel.to_string();
  return s;
}

// fp64 block scores of local query t of sequence b in kv group g, written independently of the
// library: every raw position p of token i's window gives block p / B a share 1/s of Pg[i].
std::vector<double> brute_force_scores(const Selection& s, int b, std::int64_t t, int g) {
  const NsaConfig& c = s.config;
  const std::int64_t bq = t / c.block_size;
  std::vector<double> scores(static_cast<std::size_t>(bq + 1), 0.0);
  const double scale = c.softmax_scale(s.dim);
  const std::int64_t global_t = s.cu[static_cast<std::size_t>(b)] + t;
  const int heads_used = c.aggregation == ScoreAggregation::kFirstHead ? 1 : s.group();
  const std::int64_t n_cmp = s.cu_cmp[static_cast<std::size_t>(b) + 1] - s.cu_cmp[static_cast<std::size_t>(b)];
  for (std::int64_t i = 0; i < n_cmp; ++i) {
    if (i * c.cmp_stride + c.cmp_len - 1 > t) break;
    double pg = 0;
    for (int h = g * s.group(); h < g * s.group() + heads_used; ++h) {
      double logit = 0;
      const std::int64_t k_row = s.cu_cmp[static_cast<std::size_t>(b)] + i;
      for (int d = 0; d < s.dim; ++d)
        logit += s.q.get((global_t * s.hq + h) * s.dim + d) * s.k_cmp.get((k_row * s.hkv + g) * s.dim + d);
      pg += std::exp(scale * logit - s.lse.get(h * s.total() + global_t));
    }
    for (std::int64_t p = i * c.cmp_stride; p < i * c.cmp_stride + c.cmp_len; ++p)
      scores[static_cast<std::size_t>(p / c.block_size)] += pg / c.cmp_stride;
  }
  return scores;
}

// The selection section 4 defines for these scores: forced blocks, then the best others by
// (score descending, index ascending).
std::vector<std::int32_t> brute_force_row(const NsaConfig& config, std::int64_t t, const std::vector<double>& scores) {
  const std::int64_t bq = t / config.block_size;
  std::vector<std::int32_t> chosen, others;
  for (std::int32_t j = 0; j <= bq; ++j) (is_forced(config, j, bq) ? chosen : others).push_back(j);
  std::sort(others.begin(), others.end(), [&](std::int32_t a, std::int32_t b) {
    const double sa = scores[static_cast<std::size_t>(a)], sb = scores[static_cast<std::size_t>(b)];
    return sa > sb || (sa == sb && a < b);
  });
  const std::int64_t valid = std::min<std::int64_t>(config.topk, bq + 1);
  for (std::size_t r = 0; static_cast<std::int64_t>(chosen.size()) < valid; ++r) chosen.push_back(others[r]);
  std::sort(chosen.begin(), chosen.end());
  chosen.resize(static_cast<std::size_t>(config.topk), -1);
  return chosen;
}

std::string describe(const std::vector<std::int32_t>& row) {
  std::string out = "[";
  for (std::size_t i = 0; i < row.size(); ++i) out += (i ? "," : "") + std::to_string(row[i]);
  return out + "]";
}

// ---- The worked example of docs/semantics.md section 4 ------------------------------------------

void check_worked_example(DType dtype) {
  auto rng = rng_for_test(static_cast<std::uint64_t>(dtype));
  const NsaConfig config;  // K = 16, I = 1, L = 2, B = 64, l = 32, s = 16
  const Selection s = run_selection(config, {200}, 4, 2, 32, dtype, rng);
  for (int g = 0; g < 2; ++g)
    for (std::int64_t t = 0; t < 200; ++t) {
      std::vector<std::int32_t> expected(16, -1);
      for (std::int32_t j = 0; j <= t / 64; ++j) expected[static_cast<std::size_t>(j)] = j;
      ASSERT_EQ(s.row(g, t), expected) << "g=" << g << " t=" << t;
    }
}

TEST(SelectBlocks, WorkedExampleFp32) { check_worked_example(DType::kFloat32); }
TEST(SelectBlocks, WorkedExampleBf16) { check_worked_example(DType::kBFloat16); }

// ---- Overlap weights through the typed reference ---------------------------------------------------

// For l = 32, s = 16, B = 64, block j collects tokens i = 4j-1 .. 4j+3 with weights 1,2,2,2,1
// (docs/semantics.md section 4). Every query row of a 200-token sequence is checked, so each
// token's weights are pinned by the rows where it is the last visible one.
void check_overlap_weights(ScoreAggregation aggregation) {
  NsaConfig config;
  config.aggregation = aggregation;
  auto rng = rng_for_test(static_cast<std::uint64_t>(aggregation));
  std::normal_distribution<double> normal;
  ref::Varlen seqs;
  seqs.cu = {0, 200};
  const ref::Varlen cmp = ref::compressed_varlen(seqs, config);
  ASSERT_EQ(cmp.total(), 11);
  const ref::HeadDims dims{6, 2, 8, 8};
  const double scale = 0.4;
  std::vector<double> q(static_cast<std::size_t>(200 * dims.hq * dims.dqk)),
      k(static_cast<std::size_t>(11 * dims.hkv * dims.dqk)), lse(static_cast<std::size_t>(dims.hq * 200));
  for (double& v : q) v = normal(rng);
  for (double& v : k) v = normal(rng);
  for (double& v : lse) v = 1.0 + 0.5 * normal(rng);
  const double table[5] = {1, 2, 2, 2, 1};
  const int heads_used = aggregation == ScoreAggregation::kFirstHead ? 1 : dims.group();
  for (int g = 0; g < dims.hkv; ++g)
    for (std::int64_t t = 0; t < 200; ++t) {
      const std::vector<double> got =
          ref::block_scores<double>(config, seqs, cmp, dims, scale, q.data(), k.data(), lse.data(), 0, t, g);
      ASSERT_EQ(got.size(), static_cast<std::size_t>(t / 64 + 1));
      const std::int64_t visible = t >= 31 ? (t - 31) / 16 + 1 : 0;
      std::vector<double> pg(static_cast<std::size_t>(visible), 0.0);
      for (std::int64_t i = 0; i < visible; ++i)
        for (int h = g * dims.group(); h < g * dims.group() + heads_used; ++h) {
          double logit = 0;
          for (int d = 0; d < dims.dqk; ++d)
            logit += q[static_cast<std::size_t>((t * dims.hq + h) * dims.dqk + d)] *
                     k[static_cast<std::size_t>((i * dims.hkv + g) * dims.dqk + d)];
          pg[static_cast<std::size_t>(i)] += std::exp(scale * logit - lse[static_cast<std::size_t>(h * 200 + t)]);
        }
      for (std::int64_t j = 0; j <= t / 64; ++j) {
        double expected = 0;
        for (std::int64_t i = 4 * j - 1; i <= 4 * j + 3; ++i)
          if (i >= 0 && i < visible) expected += table[i - (4 * j - 1)] * pg[static_cast<std::size_t>(i)];
        ASSERT_NEAR(got[static_cast<std::size_t>(j)], expected, 1e-12 * (1 + std::fabs(expected)))
            << "g=" << g << " t=" << t << " block " << j;
      }
    }
}

TEST(BlockScores, OverlapWeightsGroupSum) { check_overlap_weights(ScoreAggregation::kGroupSum); }
TEST(BlockScores, OverlapWeightsFirstHead) { check_overlap_weights(ScoreAggregation::kFirstHead); }

// ---- Against an independent brute force ----------------------------------------------------------

NsaConfig selection_config(int l, int s, int block, int k, int init, int local) {
  NsaConfig c;
  c.cmp_len = l;
  c.cmp_stride = s;
  c.block_size = block;
  c.topk = k;
  c.init_blocks = init;
  c.local_blocks = local;
  return c;
}

void check_against_brute_force(DType dtype) {
  // Small K so that the top-k discriminates; l > B and B > l; nothing visible over several blocks
  // (l = 128 with B = 32); no init blocks.
  const std::vector<NsaConfig> configs = {
      selection_config(32, 16, 64, 4, 1, 1), selection_config(32, 16, 32, 5, 1, 2),
      selection_config(64, 16, 32, 4, 2, 1), selection_config(32, 8, 128, 3, 0, 1),
      selection_config(128, 32, 32, 3, 1, 1),
  };
  const std::vector<std::int64_t> lengths = {300, 0, 31, 64, 129, 7, 450};
  auto rng = rng_for_test(static_cast<std::uint64_t>(dtype));
  std::int64_t rows = 0, near_ties = 0;
  for (std::size_t ci = 0; ci < configs.size(); ++ci)
    for (int group : {1, 3, 4})
      for (ScoreAggregation aggregation : {ScoreAggregation::kGroupSum, ScoreAggregation::kFirstHead}) {
        NsaConfig config = configs[ci];
        config.aggregation = aggregation;
        SCOPED_TRACE("config " + std::to_string(ci) + " G=" + std::to_string(group) +
                     (aggregation == ScoreAggregation::kGroupSum ? " group-sum" : " first-head"));
        const int hkv = 2;
        const Selection s = run_selection(config, lengths, hkv * group, hkv, 16, dtype, rng);
        for (int b = 0; b < static_cast<int>(lengths.size()); ++b)
          for (int g = 0; g < hkv; ++g)
            for (std::int64_t t = 0; t < lengths[static_cast<std::size_t>(b)]; ++t) {
              const std::vector<std::int32_t> got = s.row(g, s.cu[static_cast<std::size_t>(b)] + t);
              ASSERT_NO_FATAL_FAILURE(check_row_invariants(config, t, got));
              const std::vector<double> scores = brute_force_scores(s, b, t, g);
              const std::vector<std::int32_t> expected = brute_force_row(config, t, scores);
              ++rows;
              if (got == expected) continue;
              // fp32 scores may order two blocks whose fp64 scores differ by rounding either way.
              ++near_ties;
              ASSERT_TRUE(is_selection_within(config, t, scores, got, 1e-5))
                  << "b=" << b << " g=" << g << " t=" << t << " got " << describe(got) << " expected "
                  << describe(expected);
            }
      }
  EXPECT_LE(near_ties * 200, rows) << near_ties << " of " << rows << " rows decided by near-ties";
}

TEST(SelectBlocks, MatchesBruteForceFp32) { check_against_brute_force(DType::kFloat32); }
TEST(SelectBlocks, MatchesBruteForceBf16) { check_against_brute_force(DType::kBFloat16); }

// ---- Ties --------------------------------------------------------------------------------------------

// With one key for all compressed tokens every visible token has the same probability, so every
// fully visible block ties exactly with the others: the lowest indices must win.
void check_ties(DType dtype) {
  auto rng = rng_for_test(static_cast<std::uint64_t>(dtype));
  for (int group : {1, 2}) {
    const NsaConfig config = selection_config(32, 16, 64, 4, 1, 1);
    const Selection s = run_selection(config, {512}, 2 * group, 2, 16, dtype, rng, /*identical_keys=*/true);
    for (int g = 0; g < 2; ++g) {
      // t = 511: candidates 0..7, forced {0, 7}; blocks 1..6 tie.
      EXPECT_EQ(s.row(g, 511), (std::vector<std::int32_t>{0, 1, 2, 7})) << "G=" << group;
      // t = 300: candidates 0..4, forced {0, 4}; blocks 1..3 tie.
      EXPECT_EQ(s.row(g, 300), (std::vector<std::int32_t>{0, 1, 2, 4})) << "G=" << group;
      for (std::int64_t t = 0; t < 512; ++t)
        ASSERT_EQ(s.row(g, t), brute_force_row(config, t, brute_force_scores(s, 0, t, g))) << "t=" << t;
    }
  }
  // Nothing visible while there are more candidates than K: all scores are 0, lowest indices win.
  const NsaConfig blind = selection_config(128, 32, 32, 3, 1, 1);
  const Selection s = run_selection(blind, {160}, 2, 1, 16, dtype, rng);
  EXPECT_EQ(s.row(0, 100), (std::vector<std::int32_t>{0, 1, 3}));
  EXPECT_EQ(s.row(0, 126), (std::vector<std::int32_t>{0, 1, 3}));
}

TEST(SelectBlocks, TiesGoToLowerIndexFp32) { check_ties(DType::kFloat32); }
TEST(SelectBlocks, TiesGoToLowerIndexBf16) { check_ties(DType::kBFloat16); }

// choose_blocks on hand-made scores: forced blocks are kept even when they score lowest.
TEST(ChooseBlocks, ForcedBlocksKeptAndBestOthersTaken) {
  const NsaConfig config = selection_config(32, 16, 64, 5, 1, 2);
  const std::vector<double> scores = {0.0, 5.0, 1.0, 7.0, 3.0, 3.0, 9.0, 0.1, 0.2};
  std::vector<std::int32_t> row(5, 0x7f7f7f7f);
  ref::choose_blocks<double>(config, 8, scores, row.data());
  EXPECT_EQ(row, (std::vector<std::int32_t>{0, 3, 6, 7, 8}));
  const std::vector<double> tied = {1.0, 2.0, 2.0, 2.0, 2.0, 0.5};
  ref::choose_blocks<double>(config, 5, tied, row.data());
  EXPECT_EQ(row, (std::vector<std::int32_t>{0, 1, 2, 4, 5}));
  const std::vector<double> short_row = {0.3, 0.1};
  ref::choose_blocks<double>(config, 1, short_row, row.data());
  EXPECT_EQ(row, (std::vector<std::int32_t>{0, 1, -1, -1, -1}));
}

}  // namespace
}  // namespace fsa::test
