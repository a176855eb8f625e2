// Rotary embedding (docs/semantics.md section 2): forward against an fp64 formula, llama3 scaling,
// the backward as inverse and transpose, aliasing, argument checks.
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace fsa::test {
namespace {

// The llama3 rule, written out in fp64 from its definition.
double naive_frequency(const RopeConfig& rope, int pair, int dim) {
  const double w = 1.0 / std::pow(static_cast<double>(rope.theta), 2.0 * pair / dim);
  if (!rope.llama3_scaling) return w;
  const double original = rope.llama3_original_max_position;
  const double low_wavelength = original / rope.llama3_low_freq_factor;
  const double high_wavelength = original / rope.llama3_high_freq_factor;
  const double wavelength = 2 * std::numbers::pi / w;
  if (wavelength < high_wavelength) return w;
  if (wavelength > low_wavelength) return w / rope.llama3_factor;
  const double smooth = (original / wavelength - rope.llama3_low_freq_factor) /
                        (rope.llama3_high_freq_factor - rope.llama3_low_freq_factor);
  return (1 - smooth) * w / rope.llama3_factor + smooth * w;
}

// Rotate-half in fp64 with angles in fp64; positions restart in every sequence.
std::vector<double> naive_rope(const RopeConfig& rope, const std::vector<std::int64_t>& lengths, int stride,
                               int heads, int dim, const std::vector<double>& x) {
  std::vector<double> y(x.size());
  const int half = dim / 2;
  std::int64_t row = 0;
  for (std::int64_t n : lengths)
    for (std::int64_t r = 0; r < n; ++r, ++row)
      for (int h = 0; h < heads; ++h)
        for (int i = 0; i < half; ++i) {
          const double angle = static_cast<double>(r * stride) * naive_frequency(rope, i, dim);
          const std::size_t a = static_cast<std::size_t>((row * heads + h) * dim + i), b = a + half;
          y[a] = x[a] * std::cos(angle) - x[b] * std::sin(angle);
          y[b] = x[b] * std::cos(angle) + x[a] * std::sin(angle);
        }
  return y;
}

std::int64_t sum_of(const std::vector<std::int64_t>& lengths) {
  std::int64_t total = 0;
  for (std::int64_t n : lengths) total += n;
  return total;
}

// Runs rope_forward on random inputs and compares with naive_rope. The reference's angles are fp32
// (docs/semantics.md section 2): at positions below ~400 that costs at most ~2e-5 of each rotated
// pair.
void check_forward(const RopeConfig& rope, DType dtype, const std::vector<std::int64_t>& lengths, int stride,
                   int heads, int dim) {
  auto rng = rng_for_test(static_cast<std::uint64_t>(dim) * 131 + static_cast<std::uint64_t>(stride));
  const std::int64_t total = sum_of(lengths);
  const HostTensor cu = make_cu_seqlens(lengths);
  HostTensor x(dtype, {total, heads, dim}), y(dtype, {total, heads, dim});
  x.fill_normal(rng);
  y.poison();
  FSA_ASSERT_OK(rope_forward(rope, x.view(), cu.view(), stride, y.view()));
  const std::vector<double> got = y.to_double();
  ASSERT_TRUE(all_finite(got));
  const std::vector<double> expected = naive_rope(rope, lengths, stride, heads, dim, x.to_double());
  const double tolerance = dtype == DType::kBFloat16 ? 1e-2 : 2e-5;
  EXPECT_LE(rel_frobenius(got, expected), tolerance);
  EXPECT_LE(max_abs_diff(got, expected), dtype == DType::kBFloat16 ? 5e-2 : 1e-4);
}

TEST(RopeForward, MatchesFormulaFp64) {
  check_forward(RopeConfig{}, DType::kFloat64, {37, 0, 130, 5}, 1, 3, 16);
}

TEST(RopeForward, MatchesFormulaFp32) {
  check_forward(RopeConfig{}, DType::kFloat32, {100, 1, 64}, 1, 2, 64);
}

TEST(RopeForward, MatchesFormulaBf16) {
  check_forward(RopeConfig{}, DType::kBFloat16, {100, 1, 64}, 1, 2, 64);
}

TEST(RopeForward, OtherTheta) {
  RopeConfig rope;
  rope.theta = 500000.0f;
  check_forward(rope, DType::kFloat64, {90, 17}, 1, 2, 32);
}

// Compressed keys: row i of each sequence sits at position i*s.
TEST(RopeForward, CompressedPositionStride) {
  check_forward(RopeConfig{}, DType::kFloat64, {11, 0, 2, 25}, 16, 2, 16);
}

// Positions restart at 0 in every sequence: a batch of two equals each sequence alone.
TEST(RopeForward, PositionsRestartPerSequence) {
  auto rng = rng_for_test();
  const int heads = 2, dim = 8;
  HostTensor x(DType::kFloat32, {40, heads, dim}), batched(DType::kFloat32, {40, heads, dim});
  x.fill_normal(rng);
  FSA_ASSERT_OK(rope_forward(RopeConfig{}, x.view(), make_cu_seqlens({25, 15}).view(), 1, batched.view()));
  HostTensor tail(DType::kFloat32, {15, heads, dim}), tail_rotated(DType::kFloat32, {15, heads, dim});
  const std::int64_t offset = 25 * heads * dim;
  for (std::int64_t i = 0; i < tail.numel(); ++i) tail.set(i, x.get(offset + i));
  FSA_ASSERT_OK(rope_forward(RopeConfig{}, tail.view(), make_cu_seqlens({15}).view(), 1, tail_rotated.view()));
  for (std::int64_t i = 0; i < tail.numel(); ++i) ASSERT_EQ(batched.get(offset + i), tail_rotated.get(i)) << i;
  // Position 0 is the identity.
  for (std::int64_t i = 0; i < heads * dim; ++i) EXPECT_EQ(batched.get(offset + i), x.get(offset + i));
}

// head_dim 64 with theta 500000 puts pairs in all three bands of the llama3 rule (pairs 15..17 in
// the interpolated one), so every branch of the rule is exercised.
TEST(RopeLlama3, FrequenciesAndForwardMatchFormula) {
  RopeConfig rope;
  rope.theta = 500000.0f;
  rope.llama3_scaling = true;
  const int dim = 64;
  // A unit vector on pair i's first coordinate, rotated at position 1, becomes (cos w_i, sin w_i).
  const auto measured_frequency = [&](int i) {
    HostTensor unit(DType::kFloat64, {2, 1, dim}), out(DType::kFloat64, {2, 1, dim});
    unit.fill(0.0);
    unit.set(dim + i, 1.0);
    EXPECT_TRUE(rope_forward(rope, unit.view(), make_cu_seqlens({2}).view(), 1, out.view()).is_ok());
    return std::atan2(out.get(dim + i + dim / 2), out.get(dim + i));
  };
  int kept = 0, slowed = 0, blended = 0;
  for (int i = 0; i < dim / 2; ++i) {
    const double plain = 1.0 / std::pow(500000.0, 2.0 * i / dim);
    const double expected = naive_frequency(rope, i, dim);
    const double got = measured_frequency(i);
    EXPECT_NEAR(got, expected, 1e-6 * expected + 1e-12) << "pair " << i;
    if (expected == plain) ++kept;
    else if (std::fabs(expected - plain / rope.llama3_factor) < 1e-15) ++slowed;
    else ++blended;
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(slowed, 0);
  EXPECT_GT(blended, 0);
  check_forward(rope, DType::kFloat64, {120, 33}, 1, 2, dim);
}

TEST(RopeLlama3, NonDefaultFactors) {
  RopeConfig rope;
  rope.theta = 500000.0f;
  rope.llama3_scaling = true;
  rope.llama3_factor = 16.0f;
  rope.llama3_low_freq_factor = 2.0f;
  rope.llama3_high_freq_factor = 8.0f;
  rope.llama3_original_max_position = 4096;
  check_forward(rope, DType::kFloat64, {70, 3, 50}, 1, 3, 64);
}

TEST(RopeLlama3, ScalingChangesTheResult) {
  auto rng = rng_for_test();
  RopeConfig plain, scaled;
  plain.theta = scaled.theta = 500000.0f;
  scaled.llama3_scaling = true;
  HostTensor x(DType::kFloat32, {200, 1, 64}), a(DType::kFloat32, {200, 1, 64}), b(DType::kFloat32, {200, 1, 64});
  x.fill_normal(rng);
  const HostTensor cu = make_cu_seqlens({200});
  FSA_ASSERT_OK(rope_forward(plain, x.view(), cu.view(), 1, a.view()));
  FSA_ASSERT_OK(rope_forward(scaled, x.view(), cu.view(), 1, b.view()));
  EXPECT_GT(rel_frobenius(b.to_double(), a.to_double()), 1e-3);
}

TEST(RopeBackward, InvertsForward) {
  auto rng = rng_for_test();
  RopeConfig rope;
  rope.llama3_scaling = true;
  const std::vector<std::int64_t> lengths = {77, 0, 150};
  const HostTensor cu = make_cu_seqlens(lengths);
  HostTensor x(DType::kFloat64, {227, 2, 32}), y(DType::kFloat64, {227, 2, 32}), back(DType::kFloat64, {227, 2, 32});
  x.fill_normal(rng);
  back.poison();
  FSA_ASSERT_OK(rope_forward(rope, x.view(), cu.view(), 3, y.view()));
  FSA_ASSERT_OK(rope_backward(rope, y.view(), cu.view(), 3, back.view()));
  EXPECT_GT(rel_frobenius(y.to_double(), x.to_double()), 1e-2);  // it did rotate
  EXPECT_LE(rel_frobenius(back.to_double(), x.to_double()), 1e-6);
}

// <forward(x), u> == <x, backward(u)> for random x, u: the backward is the exact transpose.
TEST(RopeBackward, IsTransposeOfForward) {
  auto rng = rng_for_test();
  const std::vector<std::int64_t> lengths = {45, 130, 9};
  const HostTensor cu = make_cu_seqlens(lengths);
  const std::vector<std::int64_t> shape = {184, 3, 16};
  HostTensor x(DType::kFloat64, shape), u(DType::kFloat64, shape), fx(DType::kFloat64, shape),
      bu(DType::kFloat64, shape);
  x.fill_normal(rng);
  u.fill_normal(rng);
  FSA_ASSERT_OK(rope_forward(RopeConfig{}, x.view(), cu.view(), 1, fx.view()));
  FSA_ASSERT_OK(rope_backward(RopeConfig{}, u.view(), cu.view(), 1, bu.view()));
  const double lhs = weighted_sum(fx, u), rhs = weighted_sum(x, bu);
  EXPECT_NEAR(lhs, rhs, 1e-12 * std::fabs(lhs) + 1e-12);

  // And element by element, through finite differences of loss = <forward(x), u>.
  HostTensor small_x(DType::kFloat64, {6, 1, 4}), small_u(DType::kFloat64, {6, 1, 4}),
      small_y(DType::kFloat64, {6, 1, 4}), grad(DType::kFloat64, {6, 1, 4});
  small_x.fill_normal(rng);
  small_u.fill_normal(rng);
  const HostTensor small_cu = make_cu_seqlens({4, 2});
  const auto loss = [&] {
    EXPECT_TRUE(rope_forward(RopeConfig{}, small_x.view(), small_cu.view(), 1, small_y.view()).is_ok());
    return weighted_sum(small_y, small_u);
  };
  FSA_ASSERT_OK(rope_backward(RopeConfig{}, small_u.view(), small_cu.view(), 1, grad.view()));
  EXPECT_LE(rel_frobenius(grad.to_double(), finite_difference(small_x, loss)), 1e-8);
}

TEST(Rope, InPlaceEqualsOutOfPlace) {
  auto rng = rng_for_test();
  const HostTensor cu = make_cu_seqlens({33, 70});
  for (const bool backward : {false, true}) {
    HostTensor x(DType::kFloat32, {103, 2, 16}), out(DType::kFloat32, {103, 2, 16});
    x.fill_normal(rng);
    const auto run = [&](const TensorView& in, const TensorView& result) {
      return backward ? rope_backward(RopeConfig{}, in, cu.view(), 1, result)
                      : rope_forward(RopeConfig{}, in, cu.view(), 1, result);
    };
    FSA_ASSERT_OK(run(x.view(), out.view()));
    FSA_ASSERT_OK(run(x.view(), x.view()));
    EXPECT_EQ(max_abs_diff(x.to_double(), out.to_double()), 0.0) << (backward ? "backward" : "forward");
  }
}

TEST(Rope, OddHeadDimRejected) {
  const HostTensor cu = make_cu_seqlens({4});
  HostTensor x(DType::kFloat32, {4, 2, 5}), y(DType::kFloat32, {4, 2, 5});
  const Status forward = rope_forward(RopeConfig{}, x.view(), cu.view(), 1, y.view());
  expect_invalid(forward, "x:");
  EXPECT_NE(forward.message().find("even"), std::string::npos) << forward.to_string();
  const Status backward = rope_backward(RopeConfig{}, x.view(), cu.view(), 1, y.view());
  expect_invalid(backward, "dy:");
}

}  // namespace
}  // namespace fsa::test
