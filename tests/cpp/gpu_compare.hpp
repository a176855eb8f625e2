// Comparison helpers of the GPU tests of compression, compressed attention and selection: the
// error metrics of docs/semantics.md section 10 with diagnostics that locate a failure (max error
// and where, first non-finite element).
#pragma once

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "gpu_test_util.hpp"

namespace fsa::test {

// A host tensor converted to another dtype (the reference runs in fp32 on the GPU's rounded inputs).
inline HostTensor as_dtype(const HostTensor& t, DType dtype) {
  HostTensor out(dtype, t.sizes());
  out.from_double(t.to_double());
  return out;
}

// Where two tensors differ most, and the first element that is not finite, as text.
inline std::string describe_difference(const std::vector<double>& got, const std::vector<double>& want) {
  std::ostringstream out;
  std::size_t worst = 0, first_bad = got.size();
  double worst_diff = -1;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) && first_bad == got.size()) first_bad = i;
    const double diff = std::fabs(got[i] - want[i]);
    if (diff > worst_diff) {
      worst_diff = diff;
      worst = i;
    }
  }
  out << "rel_frobenius=" << rel_frobenius(got, want) << " max_abs_diff=" << worst_diff << " at [" << worst
      << "] (got " << (got.empty() ? 0.0 : got[worst]) << ", want " << (want.empty() ? 0.0 : want[worst]) << ")";
  if (first_bad < got.size()) out << "; first non-finite at [" << first_bad << "] = " << got[first_bad];
  return out.str();
}

// Relative Frobenius error below tol and every element finite.
inline void expect_close(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
                         double tol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const bool finite = all_finite(got);
  const double err = rel_frobenius(got, want);
  EXPECT_TRUE(finite && err < tol) << what << ": tol " << tol << ", " << describe_difference(got, want);
}

// The rows [first_row, rows) of a [rows, ...] tensor are exactly zero.
inline void expect_zero_rows(const std::string& what, const HostTensor& t, std::int64_t first_row) {
  const std::vector<double> v = t.to_double();
  const std::int64_t row_size = t.sizes()[0] > 0 ? t.numel() / t.sizes()[0] : 0;
  for (std::int64_t i = first_row * row_size; i < t.numel(); ++i)
    if (v[static_cast<std::size_t>(i)] != 0.0) {
      ADD_FAILURE() << what << ": spare row " << i / row_size << " should be zero, element " << i << " = "
                    << v[static_cast<std::size_t>(i)];
      return;
    }
}

inline double bf16_or_fp16_tolerance(DType dtype) { return dtype == DType::kBFloat16 ? 1e-2 : 5e-3; }

}  // namespace fsa::test
