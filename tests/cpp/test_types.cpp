// Public types: dtype conversions, TensorView, Status, NsaConfig validation and the length
// formulas; and the reference's parallel loop.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "reference/parallel.hpp"
#include "test_util.hpp"

namespace fsa::test {
namespace {

float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// bf16 keeps the top 16 bits of an fp32; rounding to nearest even is checked against an exact
// computation in double on random values, including the halfway cases.
TEST(Convert, Bf16RoundsToNearestEven) {
  auto rng = rng_for_test();
  // Below the largest bf16 so that the upper neighbour is finite (overflow is checked below).
  std::uniform_int_distribution<std::uint32_t> bits(0, 0x7f7effffu);
  for (int trial = 0; trial < 100000; ++trial) {
    std::uint32_t u = bits(rng);
    if (trial % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;  // exactly halfway
    const float x = bits_to_float(u);
    const float lo = bits_to_float(u & 0xffff0000u), hi = bits_to_float((u & 0xffff0000u) + 0x10000u);
    const double dlo = static_cast<double>(x) - lo, dhi = static_cast<double>(hi) - x;
    const std::uint16_t lo_bits = static_cast<std::uint16_t>(u >> 16);
    const std::uint16_t expected = dlo < dhi ? lo_bits : dlo > dhi ? lo_bits + 1 : ((lo_bits & 1) ? lo_bits + 1 : lo_bits);
    ASSERT_EQ(float_to_bf16(x), expected) << x;
    ASSERT_EQ(float_to_bf16(-x), expected | 0x8000u);
  }
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(bf16_to_float(float_to_bf16(std::numeric_limits<float>::infinity())), std::numeric_limits<float>::infinity());
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80u) << "rounds up past the largest bf16";
}

// Every one of the 65536 fp16 values round-trips exactly, and random fp32 values round to the
// nearest fp16 (checked by comparing distances to the neighbours, ties to even).
TEST(Convert, HalfRoundTripAndNearest) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float f = half_to_float(static_cast<std::uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_half(f), h) << "half bits " << h;
  }
  auto rng = rng_for_test();
  std::uniform_real_distribution<float> value(-70000.0f, 70000.0f);
  std::uniform_real_distribution<float> small(-1e-4f, 1e-4f);
  for (int trial = 0; trial < 100000; ++trial) {
    const float x = trial % 2 ? value(rng) : small(rng);
    const std::uint16_t h = float_to_half(x);
    const double got = half_to_float(h);
    if (std::isinf(got)) {
      ASSERT_GE(std::fabs(x), 65520.0f);
      continue;
    }
    for (const int step : {-1, 1}) {
      const double neighbour = half_to_float(static_cast<std::uint16_t>(h + step));
      if (std::isnan(neighbour) || std::signbit(neighbour) != std::signbit(got)) continue;
      const double d_got = std::fabs(got - x), d_nb = std::fabs(neighbour - x);
      ASSERT_TRUE(d_got < d_nb || (d_got == d_nb && (h & 1) == 0)) << x << " -> " << got << " not " << neighbour;
    }
  }
}

TEST(TensorView, ContiguousAndStrided) {
  float data[24];
  const TensorView c = TensorView::contiguous(data, DType::kFloat32, {2, 3, 4});
  EXPECT_EQ(c.numel(), 24);
  EXPECT_EQ(c.stride(0), 12);
  EXPECT_EQ(c.stride(1), 4);
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.shape_string(), "[2, 3, 4]");
  const TensorView s = TensorView::strided(data, DType::kFloat32, {3, 2, 4}, {4, 12, 1});
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(TensorView::strided(data, DType::kFloat32, {3, 2}, {1}).ndim, -1) << "mismatched sizes/strides";
  EXPECT_FALSE(TensorView{}.defined());
}

TEST(Status, CarriesCodeMessageAndLocation) {
  const Status ok = Status::ok();
  EXPECT_TRUE(ok.is_ok());
  EXPECT_EQ(ok.to_string(), "ok");
  const Status bad = FSA_INVALID("q: expected bf16");
  EXPECT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.to_string().find("invalid argument: q: expected bf16"), std::string::npos);
  EXPECT_NE(bad.to_string().find("test_types.cpp"), std::string::npos);
}

// The library's errors point into the source tree (src/...), not at the build machine's paths.
TEST(Status, LibraryErrorsCarryPathsRelativeToTheSourceTree) {
  NsaConfig c;
  c.topk = 0;
  const Status s = c.validate();
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(std::string(s.file()).rfind("src/", 0), 0u) << s.file();
}

TEST(Config, DefaultsAreValidAndMatchTheSpec) {
  const NsaConfig c;
  FSA_EXPECT_OK(c.validate());
  EXPECT_EQ(c.cmp_len, 32);
  EXPECT_EQ(c.cmp_stride, 16);
  EXPECT_EQ(c.block_size, 64);
  EXPECT_EQ(c.topk, 16);
  EXPECT_EQ(c.init_blocks, 1);
  EXPECT_EQ(c.local_blocks, 2);
  EXPECT_EQ(c.window, 512);
  EXPECT_FLOAT_EQ(c.softmax_scale(128), 1.0f / std::sqrt(128.0f));
}

TEST(Config, EachViolationNamesItsField) {
  auto with = [](auto mutate) {
    NsaConfig c;
    mutate(c);
    return c.validate();
  };
  expect_invalid(with([](NsaConfig& c) { c.block_size = 48; }), "block_size");
  expect_invalid(with([](NsaConfig& c) { c.block_size = 256; }), "block_size");
  expect_invalid(with([](NsaConfig& c) { c.topk = 2; }), "topk");
  expect_invalid(with([](NsaConfig& c) { c.cmp_stride = 12; }), "cmp_stride");  // 12 does not divide 32
  expect_invalid(with([](NsaConfig& c) { c.cmp_len = 48; c.cmp_stride = 48; }), "cmp_stride");  // s does not divide B
  expect_invalid(with([](NsaConfig& c) { c.cmp_len = 0; }), "cmp_len");
  expect_invalid(with([](NsaConfig& c) { c.window = -1; }), "window");
  expect_invalid(with([](NsaConfig& c) { c.init_blocks = -1; }), "init_blocks");
  expect_invalid(with([](NsaConfig& c) { c.scale = -1.0f; }), "scale");
  expect_invalid(with([](NsaConfig& c) { c.rope.theta = 0.0f; }), "theta");
}

// n_cmp(n) <= n / s for every n, so max_compressed_tokens bounds any packed batch.
TEST(Config, MaxCompressedTokensBoundsEveryBatch) {
  auto rng = rng_for_test();
  for (const auto [l, s] : {std::pair{32, 16}, {16, 16}, {64, 16}, {32, 8}}) {
    NsaConfig c;
    c.cmp_len = l;
    c.cmp_stride = s;
    std::uniform_int_distribution<int> len(0, 400);
    for (int trial = 0; trial < 200; ++trial) {
      std::int64_t total = 0, compressed = 0;
      for (int b = 0; b < 5; ++b) {
        const int n = len(rng);
        total += n;
        compressed += compressed_length(n, c);
      }
      ASSERT_LE(compressed, max_compressed_tokens(total, c));
    }
  }
  NsaConfig c;
  EXPECT_EQ(num_blocks(0, c), 0);
  EXPECT_EQ(num_blocks(64, c), 1);
  EXPECT_EQ(num_blocks(65, c), 2);
}

TEST(Parallel, RunsEveryItemOnceAndPropagatesErrors) {
  std::vector<std::atomic<int>> hits(1000);
  ref::parallel_for(1000, [&](std::int64_t i) { hits[static_cast<std::size_t>(i)]++; });
  for (const auto& h : hits) ASSERT_EQ(h.load(), 1);
  EXPECT_THROW(ref::parallel_for(100, [](std::int64_t i) {
                 if (i == 42) throw std::runtime_error("boom");
               }),
               std::runtime_error);
}

// FSA_NUM_THREADS: a positive integer up to 1024 is taken; anything else is an error naming the
// variable from fsa::cpu_threads (for a program to refuse it), while the reference's loops fall
// back to every core rather than to a wrong count ("4x" is not 4, "-1" is not 1).
TEST(Parallel, NumThreadsFromTheEnvironment) {
  const char* saved = std::getenv("FSA_NUM_THREADS");
  const std::string previous = saved ? saved : "";
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int threads = 0;
  ::unsetenv("FSA_NUM_THREADS");
  EXPECT_TRUE(cpu_threads(&threads).is_ok());
  EXPECT_EQ(threads, cores);
  for (const auto& [value, want] : std::vector<std::pair<const char*, int>>{{"1", 1}, {"3", 3}, {"1024", 1024}}) {
    ::setenv("FSA_NUM_THREADS", value, 1);
    EXPECT_TRUE(cpu_threads(&threads).is_ok()) << value;
    EXPECT_EQ(threads, want) << value;
    EXPECT_EQ(ref::num_threads(), want) << value;
  }
  for (const char* value : {"abc", "0", "-1", "+4", "4x", " 4", "1025", "99999999999999999999999"}) {
    ::setenv("FSA_NUM_THREADS", value, 1);
    const Status s = cpu_threads(&threads);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << value;
    EXPECT_NE(s.message().find("FSA_NUM_THREADS"), std::string::npos) << s.message();
    EXPECT_EQ(threads, cores) << value;
    EXPECT_EQ(ref::num_threads(), cores) << value;
  }
  if (saved) {
    ::setenv("FSA_NUM_THREADS", previous.c_str(), 1);
  } else {
    ::unsetenv("FSA_NUM_THREADS");
  }
}

}  // namespace
}  // namespace fsa::test
