// Comparison helpers of the GPU tests: the error metrics of docs/semantics.md section 10 with
// diagnostics that locate a failure (max error and where, first non-finite element), and the
// tie-aware comparison of top-k rows (selection and inference).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <iterator>
#include <set>
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

inline std::string topk_row_text(const std::vector<std::int32_t>& row) {
  std::string s;
  for (auto v : row) s += std::to_string(v) + " ";
  return s;
}

// How a GPU top-k row compares with the reference's.
enum class TopkRow { kEqual, kNearTies, kWrong };

// A top-k row (width K) of a token in block bq against the reference's: well formed (min(K, bq + 1)
// ascending blocks in [0, bq], then -1), every forced block present (the first `init_blocks` and
// the last `local_blocks` up to bq), and where the two sets differ, only near-ties: blocks whose
// fp64 scores (`scores`, computed only then) are within `rel_tol` of each other. A failure is
// reported with `where`.
inline TopkRow compare_topk_row(const std::vector<std::int32_t>& got, const std::vector<std::int32_t>& want,
                                std::int64_t bq, int init_blocks, int local_blocks, double rel_tol,
                                const std::function<std::vector<double>()>& scores, const std::string& where) {
  const auto k = static_cast<std::int64_t>(got.size());
  const std::int64_t valid = std::min<std::int64_t>(k, bq + 1);
  for (std::int64_t i = 0; i < k; ++i) {
    const bool ok = i < valid ? (got[i] >= 0 && got[i] <= bq && (i == 0 || got[i] > got[i - 1])) : got[i] == -1;
    if (!ok) {
      ADD_FAILURE() << where << ": malformed row at entry " << i << ": got " << topk_row_text(got) << "; want "
                    << topk_row_text(want);
      return TopkRow::kWrong;
    }
  }
  const std::set<std::int32_t> got_set(got.begin(), got.begin() + valid);
  for (std::int64_t j = 0; j <= bq; ++j)
    if ((j < init_blocks || j > bq - local_blocks) && !got_set.count(static_cast<std::int32_t>(j))) {
      ADD_FAILURE() << where << ": forced block " << j << " missing: got " << topk_row_text(got);
      return TopkRow::kWrong;
    }
  if (got == want) return TopkRow::kEqual;
  const std::set<std::int32_t> want_set(want.begin(), want.begin() + valid);
  std::vector<std::int32_t> only_got, only_want;
  std::set_difference(got_set.begin(), got_set.end(), want_set.begin(), want_set.end(), std::back_inserter(only_got));
  std::set_difference(want_set.begin(), want_set.end(), got_set.begin(), got_set.end(), std::back_inserter(only_want));
  const std::vector<double> fp64 = scores();
  for (auto a : only_got)
    for (auto w : only_want) {
      const double sa = fp64[static_cast<std::size_t>(a)], sw = fp64[static_cast<std::size_t>(w)];
      if (std::fabs(sa - sw) > rel_tol * std::max(std::fabs(sa), std::fabs(sw))) {
        ADD_FAILURE() << where << ": GPU chose block " << a << " (fp64 score " << sa << "), reference block " << w
                      << " (fp64 score " << sw << "), not a near-tie. got " << topk_row_text(got) << "; want "
                      << topk_row_text(want);
        return TopkRow::kWrong;
      }
    }
  return TopkRow::kNearTies;
}

inline double bf16_or_fp16_tolerance(DType dtype) { return dtype == DType::kBFloat16 ? 1e-2 : 5e-3; }

}  // namespace fsa::test
