// Softmax attention over per-query key ranges: the one attention kernel of the reference, shared by
// the compressed, selected and sliding-window branches (they differ only in their key sets).
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "parallel.hpp"
#include "reference.hpp"
#include "vec.hpp"

namespace fsa::ref {

namespace {

// Query tokens per forward work item: small enough to balance threads over one long sequence.
constexpr std::int64_t kTokensPerItem = 64;

std::int64_t count_keys(const std::vector<KeyRange>& ranges) {
  std::int64_t n = 0;
  for (const KeyRange& r : ranges) n += r.end - r.begin;
  return n;
}

}  // namespace

template <class T>
void attention_forward(const AttentionProblem& p, const T* q, const T* k, const T* v, T* o, T* lse) {
  const HeadDims d = p.dims;
  const int G = d.group();
  const std::int64_t N = p.q_seqs->total();
  // Work items: (sequence, kv head, chunk of tokens).
  std::vector<std::array<std::int64_t, 3>> items;
  for (int b = 0; b < p.q_seqs->num_seqs(); ++b)
    for (int g = 0; g < d.hkv; ++g)
      for (std::int64_t t0 = 0; t0 < p.q_seqs->length(b); t0 += kTokensPerItem) items.push_back({b, g, t0});

  parallel_for(static_cast<std::int64_t>(items.size()), [&](std::int64_t item) {
    const int b = static_cast<int>(items[item][0]);
    const int g = static_cast<int>(items[item][1]);
    const std::int64_t t_end = std::min(p.q_seqs->length(b), items[item][2] + kTokensPerItem);
    const std::int64_t q0 = p.q_seqs->start(b), k0 = p.kv_seqs->start(b);
    std::vector<KeyRange> ranges;
    std::vector<T> scores;
    std::vector<T> acc(static_cast<std::size_t>(d.dv));
    for (std::int64_t t = items[item][2]; t < t_end; ++t) {
      ranges.clear();
      p.keys(b, t, g, ranges);
      scores.resize(static_cast<std::size_t>(count_keys(ranges)));
      for (int h = g * G; h < (g + 1) * G; ++h) {
        const T* qrow = q + ((q0 + t) * d.hq + h) * d.dqk;
        T* orow = o + ((q0 + t) * d.hq + h) * d.dv;
        T* lse_out = lse + static_cast<std::int64_t>(h) * N + q0 + t;
        if (scores.empty()) {
          std::fill(orow, orow + d.dv, T(0));
          *lse_out = -std::numeric_limits<T>::infinity();
          continue;
        }
        std::size_t i = 0;
        T max_score = -std::numeric_limits<T>::infinity();
        for (const KeyRange& r : ranges)
          for (std::int64_t key = r.begin; key < r.end; ++key, ++i) {
            scores[i] = static_cast<T>(p.scale) * dot(qrow, k + ((k0 + key) * d.hkv + g) * d.dqk, d.dqk);
            max_score = std::max(max_score, scores[i]);
          }
        std::fill(acc.begin(), acc.end(), T(0));
        T sum = 0;
        i = 0;
        for (const KeyRange& r : ranges)
          for (std::int64_t key = r.begin; key < r.end; ++key, ++i) {
            const T w = std::exp(scores[i] - max_score);
            sum += w;
            axpy(w, v + ((k0 + key) * d.hkv + g) * d.dv, acc.data(), d.dv);
          }
        for (int e = 0; e < d.dv; ++e) orow[e] = acc[static_cast<std::size_t>(e)] / sum;
        *lse_out = max_score + std::log(sum);
      }
    }
  });
}

template <class T>
void attention_backward(const AttentionProblem& p, const T* q, const T* k, const T* v, const T* o, const T* lse,
                        const T* d_o, T* dq, T* dk, T* dv) {
  const HeadDims d = p.dims;
  const int G = d.group();
  const std::int64_t N = p.q_seqs->total();
  std::fill(dq, dq + N * d.hq * d.dqk, T(0));
  std::fill(dk, dk + p.kv_seqs->total() * d.hkv * d.dqk, T(0));
  std::fill(dv, dv + p.kv_seqs->total() * d.hkv * d.dv, T(0));
  const T scale = static_cast<T>(p.scale);
  // Work items: (sequence, kv head). Each owns the dk/dv rows of its kv head in its sequence and the
  // dq rows of its G query heads, so no two items write the same element.
  const int items_per_seq = d.hkv;
  parallel_for(static_cast<std::int64_t>(p.q_seqs->num_seqs()) * items_per_seq, [&](std::int64_t item) {
    const int b = static_cast<int>(item / items_per_seq);
    const int g = static_cast<int>(item % items_per_seq);
    const std::int64_t q0 = p.q_seqs->start(b), k0 = p.kv_seqs->start(b);
    std::vector<KeyRange> ranges;
    for (std::int64_t t = 0; t < p.q_seqs->length(b); ++t) {
      ranges.clear();
      p.keys(b, t, g, ranges);
      if (ranges.empty()) continue;
      for (int h = g * G; h < (g + 1) * G; ++h) {
        const T row_lse = lse[static_cast<std::int64_t>(h) * N + q0 + t];
        if (!std::isfinite(row_lse)) continue;  // empty key set: o = 0, gradients 0
        const std::int64_t row = (q0 + t) * d.hq + h;
        const T* qrow = q + row * d.dqk;
        const T* dorow = d_o + row * d.dv;
        const T delta = dot(o + row * d.dv, dorow, d.dv);
        T* dqrow = dq + row * d.dqk;
        for (const KeyRange& r : ranges)
          for (std::int64_t key = r.begin; key < r.end; ++key) {
            const std::int64_t kv_row = (k0 + key) * d.hkv + g;
            const T prob = std::exp(scale * dot(qrow, k + kv_row * d.dqk, d.dqk) - row_lse);
            const T ds = prob * (dot(dorow, v + kv_row * d.dv, d.dv) - delta);
            axpy(scale * ds, k + kv_row * d.dqk, dqrow, d.dqk);
            axpy(scale * ds, qrow, dk + kv_row * d.dqk, d.dqk);
            axpy(prob, dorow, dv + kv_row * d.dv, d.dv);
          }
      }
    }
  });
}

template void attention_forward<float>(const AttentionProblem&, const float*, const float*, const float*, float*,
                                       float*);
template void attention_forward<double>(const AttentionProblem&, const double*, const double*, const double*,
                                        double*, double*);
template void attention_backward<float>(const AttentionProblem&, const float*, const float*, const float*,
                                        const float*, const float*, const float*, float*, float*, float*);
template void attention_backward<double>(const AttentionProblem&, const double*, const double*, const double*,
                                         const double*, const double*, const double*, double*, double*, double*);

// ---- Key sets ----------------------------------------------------------------------------------

AttentionProblem compressed_attention_problem(const NsaConfig& config, const Varlen& seqs, const Varlen& cmp,
                                              HeadDims dims, double scale) {
  return compressed_attention_problem(config, RowPositions::starting(seqs), cmp, dims, scale);
}

AttentionProblem compressed_attention_problem(const NsaConfig& config, const RowPositions& queries, const Varlen& cmp,
                                              HeadDims dims, double scale) {
  AttentionProblem p;
  p.q_seqs = queries.rows;
  p.kv_seqs = &cmp;
  p.dims = dims;
  p.scale = scale;
  const std::int64_t l = config.cmp_len, s = config.cmp_stride;
  // Compressed token i covers [i*s, i*s + l - 1]; the query at position t sees it iff i*s + l - 1 <= t.
  p.keys = [l, s, queries](int b, std::int64_t row, int, std::vector<KeyRange>& ranges) {
    const std::int64_t t = queries.position(b, row);
    if (t >= l - 1) ranges.push_back({0, (t - l + 1) / s + 1});
  };
  return p;
}

std::vector<std::int32_t> sanitize_blocks(const std::int32_t* row, int width, std::int64_t t, std::int64_t n,
                                          int block_size) {
  const std::int64_t last = std::min(t / block_size, (n + block_size - 1) / block_size - 1);
  std::vector<std::int32_t> blocks;
  for (int i = 0; i < width; ++i)
    if (row[i] >= 0 && row[i] <= last) blocks.push_back(row[i]);
  std::sort(blocks.begin(), blocks.end());
  blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  return blocks;
}

AttentionProblem selected_attention_problem(const NsaConfig& config, const Varlen& seqs, HeadDims dims, double scale,
                                            const std::int32_t* topk, int width) {
  return selected_attention_problem(config, RowPositions::starting(seqs), seqs, dims, scale, topk, width);
}

AttentionProblem selected_attention_problem(const NsaConfig& config, const RowPositions& queries, const Varlen& seqs,
                                            HeadDims dims, double scale, const std::int32_t* topk, int width) {
  AttentionProblem p;
  p.q_seqs = queries.rows;
  p.kv_seqs = &seqs;
  p.dims = dims;
  p.scale = scale;
  const std::int64_t B = config.block_size;
  const std::int64_t N = queries.rows->total();
  p.keys = [B, N, topk, width, &seqs, queries](int b, std::int64_t q_row, int g, std::vector<KeyRange>& ranges) {
    const std::int64_t n = seqs.length(b), t = queries.position(b, q_row);
    const std::int32_t* row = topk + (static_cast<std::int64_t>(g) * N + queries.rows->start(b) + q_row) * width;
    for (std::int32_t j : sanitize_blocks(row, width, t, n, static_cast<int>(B)))
      ranges.push_back({j * B, std::min({(j + 1) * B, n, t + 1})});
  };
  return p;
}

AttentionProblem window_attention_problem(const NsaConfig& config, const Varlen& seqs, HeadDims dims, double scale) {
  return window_attention_problem(config, RowPositions::starting(seqs), seqs, dims, scale);
}

AttentionProblem window_attention_problem(const NsaConfig& config, const RowPositions& queries, const Varlen& seqs,
                                          HeadDims dims, double scale) {
  AttentionProblem p;
  p.q_seqs = queries.rows;
  p.kv_seqs = &seqs;
  p.dims = dims;
  p.scale = scale;
  const std::int64_t w = config.window;
  p.keys = [w, queries](int b, std::int64_t row, int, std::vector<KeyRange>& ranges) {
    const std::int64_t t = queries.position(b, row);
    ranges.push_back({std::max<std::int64_t>(0, t - w), t + 1});
  };
  return p;
}

Varlen compressed_varlen(const Varlen& seqs, const NsaConfig& config) {
  Varlen cmp;
  cmp.cu.assign(seqs.cu.size(), 0);
  for (int b = 0; b < seqs.num_seqs(); ++b)
    cmp.cu[static_cast<std::size_t>(b) + 1] =
        cmp.cu[static_cast<std::size_t>(b)] + static_cast<std::int32_t>(compressed_length(seqs.length(b), config));
  return cmp;
}

}  // namespace fsa::ref
