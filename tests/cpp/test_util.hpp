// Test helpers: owning host tensors, random fills, error metrics and finite differences.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

#include "fsa/fsa.hpp"

namespace fsa::test {

// A host tensor that owns its bytes; view() gives the TensorView the API takes.
class HostTensor {
 public:
  HostTensor() = default;
  HostTensor(DType dtype, std::vector<std::int64_t> sizes);

  TensorView view() const;
  DType dtype() const { return dtype_; }
  const std::vector<std::int64_t>& sizes() const { return sizes_; }
  std::int64_t numel() const;

  // Element access through double, whatever the dtype (values are rounded to the dtype on set).
  double get(std::int64_t i) const;
  void set(std::int64_t i, double value);
  std::vector<double> to_double() const;
  void from_double(const std::vector<double>& values);

  void fill_normal(std::mt19937_64& rng, double stddev = 1.0);
  void fill_uniform(std::mt19937_64& rng, double lo, double hi);
  void fill(double value);
  void poison();  // NaN for floating dtypes, 0x7f7f7f7f for int32: catches unwritten outputs

 private:
  DType dtype_ = DType::kFloat32;
  std::vector<std::int64_t> sizes_;
  std::vector<unsigned char> bytes_;
};

HostTensor make_cu_seqlens(const std::vector<std::int64_t>& lengths);
HostTensor make_cu_cmp(const NsaConfig& config, const HostTensor& cu_seqlens);

// A generator seeded from the test's name and a salt, so every test draws different fresh inputs
// but reruns of one test are reproducible.
std::mt19937_64 rng_for_test(std::uint64_t salt = 0);

// ||a - b||_F / max(||b||_F, tiny).
double rel_frobenius(const std::vector<double>& a, const std::vector<double>& b);
double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b);
bool all_finite(const std::vector<double>& v);

// Central finite difference of a scalar loss with respect to every element of `x` (fp64 tensors).
std::vector<double> finite_difference(HostTensor& x, const std::function<double()>& loss, double eps = 1e-6);
// sum_i w_i * y_i: the scalar loss whose gradient w.r.t. y is w.
double weighted_sum(const HostTensor& y, const HostTensor& w);

// Expects a Status to be ok, printing its message otherwise.
#define FSA_EXPECT_OK(expr)                                      \
  do {                                                           \
    const ::fsa::Status s_ = (expr);                             \
    EXPECT_TRUE(s_.is_ok()) << s_.to_string();                   \
  } while (0)
#define FSA_ASSERT_OK(expr)                                      \
  do {                                                           \
    const ::fsa::Status s_ = (expr);                             \
    ASSERT_TRUE(s_.is_ok()) << s_.to_string();                   \
  } while (0)

// Expects an invalid-argument Status whose message contains `needle` (the argument's name).
void expect_invalid(const Status& status, const std::string& needle);

}  // namespace fsa::test
