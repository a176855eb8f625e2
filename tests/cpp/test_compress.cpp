// Compression (docs/semantics.md section 1): lengths, forward against an fp64 loop, gradients
// against finite differences.
#include <cmath>
#include <cstdint>
#include <vector>

#include "test_util.hpp"

namespace fsa::test {
namespace {

std::vector<std::int64_t> cu_of(const HostTensor& cu) {
  std::vector<std::int64_t> out;
  for (double v : cu.to_double()) out.push_back(static_cast<std::int64_t>(v));
  return out;
}

// y[i, g, e] of every compressed token, straight from the formulas of docs/semantics.md section 1.
// `weight` empty means mean compression, `pos_emb` empty means none.
std::vector<double> naive_compress(const NsaConfig& config, const std::vector<std::int64_t>& cu,
                                   const std::vector<std::int64_t>& cu_cmp, int heads, int dim, int dim_out,
                                   const std::vector<double>& x, const std::vector<double>& weight,
                                   const std::vector<double>& pos_emb) {
  const int l = config.cmp_len, s = config.cmp_stride;
  std::vector<double> y(static_cast<std::size_t>(cu_cmp.back() * heads * dim_out), 0.0);
  for (std::size_t b = 0; b + 1 < cu.size(); ++b)
    for (std::int64_t i = 0; i < cu_cmp[b + 1] - cu_cmp[b]; ++i)
      for (int g = 0; g < heads; ++g)
        for (int e = 0; e < dim_out; ++e) {
          double acc = 0;
          for (int j = 0; j < l; ++j)
            for (int d = 0; d < dim; ++d) {
              if (weight.empty() && d != e) continue;
              const std::int64_t row = cu[b] + i * s + j;
              double value = x[static_cast<std::size_t>((row * heads + g) * dim + d)];
              if (!pos_emb.empty()) value += pos_emb[static_cast<std::size_t>((g * l + j) * dim + d)];
              const double factor =
                  weight.empty() ? 1.0 / l
                                 : weight[static_cast<std::size_t>(((static_cast<std::int64_t>(g) * l + j) * dim + d) *
                                                                       dim_out +
                                                                   e)];
              acc += value * factor;
            }
          y[static_cast<std::size_t>(((cu_cmp[b] + i) * heads + g) * dim_out + e)] = acc;
        }
  return y;
}

TEST(CompressedLength, MatchesSpecTable) {
  const NsaConfig config;  // l = 32, s = 16
  const std::vector<std::int64_t> n = {0, 1, 31, 32, 47, 48, 200};
  const std::vector<std::int64_t> expected = {0, 0, 0, 1, 1, 2, 11};
  for (std::size_t i = 0; i < n.size(); ++i) EXPECT_EQ(compressed_length(n[i], config), expected[i]) << "n=" << n[i];
}

TEST(CompressedCuSeqlens, MatchesSpecExample) {
  const NsaConfig config;
  const HostTensor cu = make_cu_seqlens({200, 20, 48});
  HostTensor cu_cmp(DType::kInt32, {4});
  cu_cmp.poison();
  FSA_ASSERT_OK(compressed_cu_seqlens(config, cu.view(), cu_cmp.view()));
  EXPECT_EQ(cu_of(cu_cmp), (std::vector<std::int64_t>{0, 11, 11, 13}));
}

struct ForwardCase {
  DType dtype;
  CompressionKind kind;
  bool with_pos_emb;
  int cmp_len = 32, cmp_stride = 16;
};

// Runs compress_forward on a packed batch with sequences shorter than l, exactly l, l+s-1, longer
// and empty, and compares with naive_compress on the same rounded inputs.
void check_forward(const ForwardCase& c, double tolerance) {
  NsaConfig config;
  config.cmp_len = c.cmp_len;
  config.cmp_stride = c.cmp_stride;
  config.compression = c.kind;
  const int l = c.cmp_len, s = c.cmp_stride;
  const int heads = 2, dim = 16;
  const int dim_out = c.kind == CompressionKind::kLinear ? 24 : dim;
  const std::vector<std::int64_t> lengths = {l - 1, l, 0, l + s - 1, 200, 5};
  std::int64_t total = 0;
  for (std::int64_t n : lengths) total += n;

  auto rng = rng_for_test(static_cast<std::uint64_t>(c.dtype) * 4 + static_cast<std::uint64_t>(c.kind));
  const HostTensor cu = make_cu_seqlens(lengths);
  const HostTensor cu_cmp = make_cu_cmp(config, cu);
  HostTensor x(c.dtype, {total, heads, dim});
  x.fill_normal(rng);
  HostTensor weight, pos_emb;
  if (c.kind == CompressionKind::kLinear) {
    weight = HostTensor(c.dtype, {heads, static_cast<std::int64_t>(l) * dim, dim_out});
    weight.fill_normal(rng, 1.0 / std::sqrt(l * dim));
  }
  if (c.with_pos_emb) {
    pos_emb = HostTensor(c.dtype, {heads, l, dim});
    pos_emb.fill_normal(rng, 0.5);
  }
  const std::int64_t rows = max_compressed_tokens(total, config);
  HostTensor y(c.dtype, {rows, heads, dim_out});
  y.poison();
  FSA_ASSERT_OK(compress_forward(config, x.view(), cu.view(), cu_cmp.view(),
                                 c.kind == CompressionKind::kLinear ? weight.view() : TensorView{},
                                 c.with_pos_emb ? pos_emb.view() : TensorView{}, y.view()));

  const auto cmp = cu_of(cu_cmp);
  ASSERT_LT(cmp.back(), rows) << "the test needs spare rows to check they are zeroed";
  const std::vector<double> expected =
      naive_compress(config, cu_of(cu), cmp, heads, dim, dim_out, x.to_double(),
                     c.kind == CompressionKind::kLinear ? weight.to_double() : std::vector<double>{},
                     c.with_pos_emb ? pos_emb.to_double() : std::vector<double>{});
  std::vector<double> got = y.to_double();
  ASSERT_TRUE(all_finite(got)) << "an output element was not written";
  const std::vector<double> spare(got.begin() + static_cast<std::ptrdiff_t>(expected.size()), got.end());
  EXPECT_EQ(max_abs_diff(spare, std::vector<double>(spare.size(), 0.0)), 0.0) << "rows past cu_cmp[nseq]";
  got.resize(expected.size());
  EXPECT_LE(rel_frobenius(got, expected), tolerance);
}

TEST(CompressForward, LinearFp32) { check_forward({DType::kFloat32, CompressionKind::kLinear, false}, 1e-5); }
TEST(CompressForward, LinearPosEmbFp32) { check_forward({DType::kFloat32, CompressionKind::kLinear, true}, 1e-5); }
TEST(CompressForward, MeanFp32) { check_forward({DType::kFloat32, CompressionKind::kMean, false}, 1e-5); }
TEST(CompressForward, MeanPosEmbFp32) { check_forward({DType::kFloat32, CompressionKind::kMean, true}, 1e-5); }
TEST(CompressForward, LinearBf16) { check_forward({DType::kBFloat16, CompressionKind::kLinear, false}, 1e-2); }
TEST(CompressForward, LinearPosEmbBf16) { check_forward({DType::kBFloat16, CompressionKind::kLinear, true}, 1e-2); }
TEST(CompressForward, MeanPosEmbBf16) { check_forward({DType::kBFloat16, CompressionKind::kMean, true}, 1e-2); }
TEST(CompressForward, LinearPosEmbOtherWindow) {
  check_forward({DType::kFloat32, CompressionKind::kLinear, true, 16, 8}, 1e-5);
}

struct GradientCase {
  CompressionKind kind;
  bool with_pos_emb;
  int cmp_len = 8, cmp_stride = 4;
};

// Every gradient of compress_backward against central finite differences of
// loss = sum(w * compress_forward(...)), all in fp64.
void check_gradients(const GradientCase& c) {
  NsaConfig config;
  config.cmp_len = c.cmp_len;
  config.cmp_stride = c.cmp_stride;
  config.compression = c.kind;
  const bool linear = c.kind == CompressionKind::kLinear;
  const int l = c.cmp_len, s = c.cmp_stride;
  const int heads = 2, dim = 4;
  const int dim_out = linear ? 3 : dim;
  // Shorter than l, exactly l, windows overlapping at several offsets, and raw tail rows that no
  // window covers.
  const std::vector<std::int64_t> lengths = {2 * l + s + 1, l, l - 1, l + 3 * s - 1};
  std::int64_t total = 0;
  for (std::int64_t n : lengths) total += n;

  auto rng = rng_for_test(static_cast<std::uint64_t>(c.kind) * 2 + (c.with_pos_emb ? 1 : 0));
  const HostTensor cu = make_cu_seqlens(lengths);
  const HostTensor cu_cmp = make_cu_cmp(config, cu);
  const std::int64_t rows = max_compressed_tokens(total, config);
  HostTensor x(DType::kFloat64, {total, heads, dim});
  x.fill_normal(rng);
  HostTensor weight, pos_emb;
  if (linear) {
    weight = HostTensor(DType::kFloat64, {heads, static_cast<std::int64_t>(l) * dim, dim_out});
    weight.fill_normal(rng);
  }
  if (c.with_pos_emb) {
    pos_emb = HostTensor(DType::kFloat64, {heads, l, dim});
    pos_emb.fill_normal(rng);
  }
  const TensorView weight_view = linear ? weight.view() : TensorView{};
  const TensorView pos_emb_view = c.with_pos_emb ? pos_emb.view() : TensorView{};

  HostTensor w(DType::kFloat64, {rows, heads, dim_out});
  w.fill_normal(rng);
  HostTensor y(DType::kFloat64, {rows, heads, dim_out});
  const auto loss = [&] {
    const Status status = compress_forward(config, x.view(), cu.view(), cu_cmp.view(), weight_view, pos_emb_view,
                                           y.view());
    EXPECT_TRUE(status.is_ok()) << status.to_string();
    return weighted_sum(y, w);
  };

  // Rows of dy past cu_cmp[nseq] must never be read: poison them.
  HostTensor dy = w;
  const std::int64_t used = static_cast<std::int64_t>(cu_of(cu_cmp).back());
  for (std::int64_t i = used * heads * dim_out; i < dy.numel(); ++i) dy.set(i, std::nan(""));
  HostTensor dx(DType::kFloat64, x.sizes()), d_weight, d_pos_emb;
  dx.poison();
  if (linear) {
    d_weight = HostTensor(DType::kFloat64, weight.sizes());
    d_weight.poison();
  }
  if (c.with_pos_emb) {
    d_pos_emb = HostTensor(DType::kFloat64, pos_emb.sizes());
    d_pos_emb.poison();
  }
  FSA_ASSERT_OK(compress_backward(config, x.view(), cu.view(), cu_cmp.view(), weight_view, pos_emb_view, dy.view(),
                                  dx.view(), linear ? d_weight.view() : TensorView{},
                                  c.with_pos_emb ? d_pos_emb.view() : TensorView{}));

  const double tolerance = 1e-6;
  const std::vector<double> fd_x = finite_difference(x, loss);
  EXPECT_LE(rel_frobenius(dx.to_double(), fd_x), tolerance) << "dx";
  if (linear) {
    const std::vector<double> fd_w = finite_difference(weight, loss);
    EXPECT_LE(rel_frobenius(d_weight.to_double(), fd_w), tolerance) << "d_weight";
  }
  if (c.with_pos_emb) {
    const std::vector<double> fd_pe = finite_difference(pos_emb, loss);
    EXPECT_LE(rel_frobenius(d_pos_emb.to_double(), fd_pe), tolerance) << "d_pos_emb";
  }
}

TEST(CompressBackward, LinearMatchesFiniteDifferences) { check_gradients({CompressionKind::kLinear, false}); }
TEST(CompressBackward, LinearPosEmbMatchesFiniteDifferences) { check_gradients({CompressionKind::kLinear, true}); }
TEST(CompressBackward, MeanMatchesFiniteDifferences) { check_gradients({CompressionKind::kMean, false}); }
TEST(CompressBackward, MeanPosEmbMatchesFiniteDifferences) { check_gradients({CompressionKind::kMean, true}); }
TEST(CompressBackward, OtherWindowMatchesFiniteDifferences) {
  check_gradients({CompressionKind::kLinear, true, 16, 8});
}
TEST(CompressBackward, StrideEqualToWindowMatchesFiniteDifferences) {
  check_gradients({CompressionKind::kLinear, true, 8, 8});
}

// d_weight and d_pos_emb may be skipped; dx must not change when they are.
TEST(CompressBackward, OptionalGradientsMayBeSkipped) {
  NsaConfig config;
  config.cmp_len = 8;
  config.cmp_stride = 4;
  const int heads = 2, dim = 4, dim_out = 5;
  auto rng = rng_for_test();
  const HostTensor cu = make_cu_seqlens({19, 9});
  const HostTensor cu_cmp = make_cu_cmp(config, cu);
  HostTensor x(DType::kFloat32, {28, heads, dim}), weight(DType::kFloat32, {heads, 8 * dim, dim_out}),
      pos_emb(DType::kFloat32, {heads, 8, dim}), dy(DType::kFloat32, {7, heads, dim_out});
  x.fill_normal(rng);
  weight.fill_normal(rng);
  pos_emb.fill_normal(rng);
  dy.fill_normal(rng);
  HostTensor dx_all(DType::kFloat32, x.sizes()), dx_only(DType::kFloat32, x.sizes());
  HostTensor d_weight(DType::kFloat32, weight.sizes()), d_pos_emb(DType::kFloat32, pos_emb.sizes());
  dx_only.poison();
  FSA_ASSERT_OK(compress_backward(config, x.view(), cu.view(), cu_cmp.view(), weight.view(), pos_emb.view(),
                                  dy.view(), dx_all.view(), d_weight.view(), d_pos_emb.view()));
  FSA_ASSERT_OK(compress_backward(config, x.view(), cu.view(), cu_cmp.view(), weight.view(), pos_emb.view(),
                                  dy.view(), dx_only.view(), TensorView{}, TensorView{}));
  EXPECT_EQ(max_abs_diff(dx_only.to_double(), dx_all.to_double()), 0.0);
}

}  // namespace
}  // namespace fsa::test
