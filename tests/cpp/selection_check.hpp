// Checks of a selection row (docs/semantics.md section 4) shared by the selection and inference tests.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "fsa/config.hpp"

namespace fsa::test {

inline bool is_forced(const NsaConfig& config, std::int64_t j, std::int64_t query_block) {
  return j < config.init_blocks || j > query_block - config.local_blocks;
}

// Whether `row` is a correct selection for fp64 `scores` up to a relative `tolerance`: every
// non-forced block it took scores at least as high as every one it left, within the tolerance.
inline bool is_selection_within(const NsaConfig& config, std::int64_t t, const std::vector<double>& scores,
                                const std::vector<std::int32_t>& row, double tolerance) {
  const std::int64_t bq = t / config.block_size;
  double lowest_taken = std::numeric_limits<double>::infinity(), highest_left = -1, largest = 0;
  for (std::int32_t j = 0; j <= bq; ++j) {
    largest = std::max(largest, scores[static_cast<std::size_t>(j)]);
    if (is_forced(config, j, bq)) continue;
    const double score = scores[static_cast<std::size_t>(j)];
    if (std::find(row.begin(), row.end(), j) != row.end()) {
      lowest_taken = std::min(lowest_taken, score);
    } else {
      highest_left = std::max(highest_left, score);
    }
  }
  return lowest_taken >= highest_left - tolerance * largest;
}

// Properties every row must have whatever the scores: min(K, bq+1) valid entries, ascending,
// unique, within 0..bq, every forced block present, -1 padding.
inline void check_row_invariants(const NsaConfig& config, std::int64_t t, const std::vector<std::int32_t>& row) {
  const std::int64_t bq = t / config.block_size;
  const std::int64_t valid = std::min<std::int64_t>(config.topk, bq + 1);
  for (std::int64_t c = 0; c < config.topk; ++c) {
    const std::int32_t v = row[static_cast<std::size_t>(c)];
    if (c < valid) {
      ASSERT_GE(v, 0) << "t=" << t << " column " << c;
      ASSERT_LE(v, bq) << "t=" << t << " column " << c;
      if (c > 0) {
        ASSERT_GT(v, row[static_cast<std::size_t>(c - 1)]) << "t=" << t << " not ascending/unique";
      }
    } else {
      ASSERT_EQ(v, -1) << "t=" << t << " column " << c << " should be padding";
    }
  }
  for (std::int64_t j = 0; j <= bq; ++j) {
    if (is_forced(config, j, bq)) {
      ASSERT_NE(std::find(row.begin(), row.begin() + valid, j), row.begin() + valid)
          << "t=" << t << " forced block " << j << " missing";
    }
  }
}

}  // namespace fsa::test
