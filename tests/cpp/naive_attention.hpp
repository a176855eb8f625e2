// An independent fp64 oracle for the three attention branches: dense softmax attention under an
// explicit boolean mask, forward and analytic backward, written without any of the library's code
// so that a shared mistake cannot hide. Plus the comparison helpers the attention tests share.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace fsa::test {

// Whether local query t of sequence b, in kv group g, attends local key row p of that sequence.
using AttentionMask = std::function<bool(int b, std::int64_t t, int g, std::int64_t p)>;

struct NaiveAttentionShape {
  std::vector<std::int64_t> q_cu;   // query row offsets, nseq+1 entries
  std::vector<std::int64_t> kv_cu;  // key/value row offsets, nseq+1 entries
  int hq = 1, hkv = 1, dqk = 1, dv = 1;
  double scale = 1.0;

  // Heads, dims and the default scale 1/sqrt(Dqk); the caller sets the row offsets.
  static NaiveAttentionShape with_heads(int hq, int hkv, int dqk, int dv) {
    NaiveAttentionShape s;
    s.hq = hq;
    s.hkv = hkv;
    s.dqk = dqk;
    s.dv = dv;
    s.scale = 1.0 / std::sqrt(static_cast<double>(dqk));
    return s;
  }

  int num_seqs() const { return static_cast<int>(q_cu.size()) - 1; }
  std::int64_t q_rows() const { return q_cu.back(); }
  std::int64_t kv_rows() const { return kv_cu.back(); }
};

struct NaiveForward {
  std::vector<double> o;    // [Nq, Hq, Dv]
  std::vector<double> lse;  // [Hq, Nq], natural log, -inf for an empty key set
};

struct NaiveGrads {
  std::vector<double> dq, dk, dv;
};

inline std::vector<std::int64_t> offsets_of(const HostTensor& cu) {
  std::vector<std::int64_t> out;
  for (double x : cu.to_double()) out.push_back(static_cast<std::int64_t>(x));
  return out;
}

namespace naive_detail {

// The attended keys of one (query row, head) and their softmax probabilities.
struct RowSoftmax {
  std::vector<std::int64_t> keys;  // global kv rows
  std::vector<double> probs;
  double lse = -std::numeric_limits<double>::infinity();
};

inline RowSoftmax row_softmax(const NaiveAttentionShape& s, const std::vector<double>& q, const std::vector<double>& k,
                              const AttentionMask& mask, int b, std::int64_t t, int h) {
  const int group = h / (s.hq / s.hkv);
  const std::int64_t q_row = s.q_cu[static_cast<std::size_t>(b)] + t;
  const std::int64_t kv_begin = s.kv_cu[static_cast<std::size_t>(b)];
  const std::int64_t kv_len = s.kv_cu[static_cast<std::size_t>(b) + 1] - kv_begin;
  RowSoftmax r;
  std::vector<double> logits;
  for (std::int64_t p = 0; p < kv_len; ++p) {
    if (!mask(b, t, group, p)) continue;
    double dot = 0;
    for (int d = 0; d < s.dqk; ++d)
      dot += q[static_cast<std::size_t>((q_row * s.hq + h) * s.dqk + d)] *
             k[static_cast<std::size_t>(((kv_begin + p) * s.hkv + group) * s.dqk + d)];
    r.keys.push_back(kv_begin + p);
    logits.push_back(s.scale * dot);
  }
  if (logits.empty()) return r;
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (double x : logits) sum += std::exp(x - max_logit);
  r.lse = max_logit + std::log(sum);
  for (double x : logits) r.probs.push_back(std::exp(x - r.lse));
  return r;
}

}  // namespace naive_detail

inline NaiveForward naive_attention_forward(const NaiveAttentionShape& s, const std::vector<double>& q,
                                            const std::vector<double>& k, const std::vector<double>& v,
                                            const AttentionMask& mask) {
  const std::int64_t n = s.q_rows();
  NaiveForward out;
  out.o.assign(static_cast<std::size_t>(n * s.hq * s.dv), 0.0);
  out.lse.assign(static_cast<std::size_t>(n * s.hq), -std::numeric_limits<double>::infinity());
  const int group_size = s.hq / s.hkv;
  for (int b = 0; b < s.num_seqs(); ++b) {
    const std::int64_t q0 = s.q_cu[static_cast<std::size_t>(b)];
    for (std::int64_t t = 0; t < s.q_cu[static_cast<std::size_t>(b) + 1] - q0; ++t)
      for (int h = 0; h < s.hq; ++h) {
        const auto r = naive_detail::row_softmax(s, q, k, mask, b, t, h);
        out.lse[static_cast<std::size_t>(h * n + q0 + t)] = r.lse;
        for (std::size_t j = 0; j < r.keys.size(); ++j)
          for (int e = 0; e < s.dv; ++e)
            out.o[static_cast<std::size_t>(((q0 + t) * s.hq + h) * s.dv + e)] +=
                r.probs[j] * v[static_cast<std::size_t>((r.keys[j] * s.hkv + h / group_size) * s.dv + e)];
      }
  }
  return out;
}

// Gradients of sum(o * d_o), derived directly from the probabilities (no saved o or lse).
inline NaiveGrads naive_attention_backward(const NaiveAttentionShape& s, const std::vector<double>& q,
                                           const std::vector<double>& k, const std::vector<double>& v,
                                           const std::vector<double>& d_o, const AttentionMask& mask) {
  NaiveGrads g;
  g.dq.assign(q.size(), 0.0);
  g.dk.assign(k.size(), 0.0);
  g.dv.assign(v.size(), 0.0);
  const int group_size = s.hq / s.hkv;
  for (int b = 0; b < s.num_seqs(); ++b) {
    const std::int64_t q0 = s.q_cu[static_cast<std::size_t>(b)];
    for (std::int64_t t = 0; t < s.q_cu[static_cast<std::size_t>(b) + 1] - q0; ++t)
      for (int h = 0; h < s.hq; ++h) {
        const auto r = naive_detail::row_softmax(s, q, k, mask, b, t, h);
        const int group = h / group_size;
        const std::int64_t q_row = (q0 + t) * s.hq + h;
        std::vector<double> d_prob(r.keys.size());
        double delta = 0;
        for (std::size_t j = 0; j < r.keys.size(); ++j) {
          double x = 0;
          for (int e = 0; e < s.dv; ++e)
            x += d_o[static_cast<std::size_t>(q_row * s.dv + e)] *
                 v[static_cast<std::size_t>((r.keys[j] * s.hkv + group) * s.dv + e)];
          d_prob[j] = x;
          delta += r.probs[j] * x;
        }
        for (std::size_t j = 0; j < r.keys.size(); ++j) {
          const std::int64_t kv_row = r.keys[j] * s.hkv + group;
          const double d_logit = r.probs[j] * (d_prob[j] - delta) * s.scale;
          for (int d = 0; d < s.dqk; ++d) {
            g.dq[static_cast<std::size_t>(q_row * s.dqk + d)] += d_logit * k[static_cast<std::size_t>(kv_row * s.dqk + d)];
            g.dk[static_cast<std::size_t>(kv_row * s.dqk + d)] += d_logit * q[static_cast<std::size_t>(q_row * s.dqk + d)];
          }
          for (int e = 0; e < s.dv; ++e)
            g.dv[static_cast<std::size_t>(kv_row * s.dv + e)] +=
                r.probs[j] * d_o[static_cast<std::size_t>(q_row * s.dv + e)];
        }
      }
  }
  return g;
}

// ---- Comparison helpers ------------------------------------------------------------------------

// Relative Frobenius tolerance of an output of `dtype` against fp64 on the same rounded inputs
// (docs/semantics.md section 10; fp32 tightened since the CPU reference computes in fp32 or
// better).
inline double tolerance_for(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16: return 1e-2;
    case DType::kFloat16: return 5e-3;
    case DType::kFloat32: return 1e-5;
    default: return 1e-12;
  }
}

inline HostTensor random_tensor(DType dtype, std::vector<std::int64_t> sizes, std::mt19937_64& rng,
                                double stddev = 1.0) {
  HostTensor t(dtype, std::move(sizes));
  t.fill_normal(rng, stddev);
  return t;
}

inline HostTensor poisoned_tensor(DType dtype, std::vector<std::int64_t> sizes) {
  HostTensor t(dtype, std::move(sizes));
  t.poison();
  return t;
}

inline void expect_close(const std::vector<double>& actual, const std::vector<double>& expected, double tol,
                         const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  EXPECT_TRUE(all_finite(actual)) << what << ": NaN/Inf or an unwritten (poisoned) element";
  const double err = rel_frobenius(actual, expected);
  EXPECT_LE(err, tol) << what << ": relative Frobenius error " << err;
}

// lse may hold -inf (empty key sets): those positions must match exactly, the rest must be close.
inline void expect_lse_close(const std::vector<double>& actual, const std::vector<double>& expected, double tol,
                             const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  std::vector<double> finite_actual, finite_expected;
  int mismatches = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    if (std::isinf(expected[i]) && expected[i] < 0) {
      if (!(std::isinf(actual[i]) && actual[i] < 0) && ++mismatches <= 5)
        ADD_FAILURE() << what << "[" << i << "]: expected -inf (empty key set), got " << actual[i];
      continue;
    }
    if (!std::isfinite(actual[i]) && ++mismatches <= 5)
      ADD_FAILURE() << what << "[" << i << "]: expected the finite " << expected[i] << ", got " << actual[i];
    finite_actual.push_back(actual[i]);
    finite_expected.push_back(expected[i]);
  }
  EXPECT_EQ(mismatches, 0) << what;
  if (!finite_expected.empty() && all_finite(finite_actual)) {
    const double err = rel_frobenius(finite_actual, finite_expected);
    EXPECT_LE(err, tol) << what << ": relative Frobenius error " << err;
  }
}

}  // namespace fsa::test
