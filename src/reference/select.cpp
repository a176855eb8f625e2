// Block selection (docs/semantics.md section 4): score the selection blocks of each query from its
// compressed attention probabilities, keep the forced blocks and the best-scoring others.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "parallel.hpp"
#include "reference.hpp"
#include "vec.hpp"

namespace fsa::ref {

namespace {

// Query tokens per work item: small enough to balance threads over one long sequence.
constexpr std::int64_t kTokensPerItem = 64;

// Scores of blocks 0..bq(t) of query row q_row of sequence b, at position t, in kv group g. `probs`
// is scratch.
template <class T>
void row_block_scores(const NsaConfig& config, const RowPositions& queries, const Varlen& cmp, HeadDims dims,
                      double scale, const T* q, const T* k_cmp, const T* lse_cmp, int b, std::int64_t q_row, int g,
                      std::vector<T>& probs, std::vector<T>& scores) {
  const std::int64_t l = config.cmp_len, s = config.cmp_stride, block = config.block_size;
  const std::int64_t t = queries.position(b, q_row);
  scores.assign(static_cast<std::size_t>(t / block + 1), T(0));
  const std::int64_t visible = t >= l - 1 ? (t - l + 1) / s + 1 : 0;
  if (visible == 0) return;
  probs.assign(static_cast<std::size_t>(visible), T(0));
  const int G = dims.group();
  const int heads_used = config.aggregation == ScoreAggregation::kFirstHead ? 1 : G;
  const std::int64_t N = queries.rows->total();
  const std::int64_t row = queries.rows->start(b) + q_row;
  const T scale_t = static_cast<T>(scale);
  for (int h = g * G; h < g * G + heads_used; ++h) {
    const T* qrow = q + (row * dims.hq + h) * dims.dqk;
    const T row_lse = lse_cmp[static_cast<std::int64_t>(h) * N + row];
    for (std::int64_t i = 0; i < visible; ++i)
      probs[static_cast<std::size_t>(i)] +=
          std::exp(scale_t * dot(qrow, k_cmp + ((cmp.start(b) + i) * dims.hkv + g) * dims.dqk, dims.dqk) - row_lse);
  }
  // Token i covers raw positions [i*s, i*s + l) and gives each block it overlaps a share
  // proportional to the overlap, in units of s. Visible tokens end at or before t, so every block
  // they touch is a candidate.
  for (std::int64_t i = 0; i < visible; ++i) {
    const std::int64_t begin = i * s, end = i * s + l;
    const T prob = probs[static_cast<std::size_t>(i)];
    for (std::int64_t j = begin / block; j * block < end; ++j) {
      const std::int64_t overlap = std::min(end, (j + 1) * block) - std::max(begin, j * block);
      scores[static_cast<std::size_t>(j)] += static_cast<T>(overlap) / static_cast<T>(s) * prob;
    }
  }
}

}  // namespace

template <class T>
std::vector<T> block_scores(const NsaConfig& config, const Varlen& seqs, const Varlen& cmp, HeadDims dims,
                            double scale, const T* q, const T* k_cmp, const T* lse_cmp, int b, std::int64_t t, int g) {
  std::vector<T> probs, scores;
  row_block_scores(config, RowPositions::starting(seqs), cmp, dims, scale, q, k_cmp, lse_cmp, b, t, g, probs, scores);
  return scores;
}

template <class T>
void choose_blocks(const NsaConfig& config, std::int64_t query_block, const std::vector<T>& scores,
                   std::int32_t* out_row) {
  const std::int64_t candidates = query_block + 1;
  const std::int64_t valid = std::min<std::int64_t>(config.topk, candidates);
  std::vector<char> chosen(static_cast<std::size_t>(candidates), 0);
  std::vector<std::int64_t> others;
  std::int64_t forced = 0;
  for (std::int64_t j = 0; j < candidates; ++j) {
    if (j < config.init_blocks || j > query_block - config.local_blocks) {
      chosen[static_cast<std::size_t>(j)] = 1;
      ++forced;
    } else {
      others.push_back(j);
    }
  }
  // |F| <= min(I + L, bq + 1) <= min(K, bq + 1) because K >= I + L, so `remaining` is never negative.
  const std::int64_t remaining = valid - forced;
  // A NaN score ranks lowest, so that a poisoned input still gives a strict weak order.
  const auto key = [&](std::int64_t j) {
    const T v = scores[static_cast<std::size_t>(j)];
    return std::isnan(v) ? -std::numeric_limits<T>::infinity() : v;
  };
  std::partial_sort(others.begin(), others.begin() + remaining, others.end(), [&](std::int64_t a, std::int64_t c) {
    const T ka = key(a), kc = key(c);
    return ka > kc || (ka == kc && a < c);
  });
  for (auto it = others.begin(); it != others.begin() + remaining; ++it) chosen[static_cast<std::size_t>(*it)] = 1;
  int out = 0;
  for (std::int64_t j = 0; j < candidates; ++j)
    if (chosen[static_cast<std::size_t>(j)]) out_row[out++] = static_cast<std::int32_t>(j);
  std::fill(out_row + out, out_row + config.topk, -1);
}

template <class T>
void select_blocks(const NsaConfig& config, const Varlen& seqs, const Varlen& cmp, HeadDims dims, double scale,
                   const T* q, const T* k_cmp, const T* lse_cmp, std::int32_t* topk) {
  select_blocks(config, RowPositions::starting(seqs), cmp, dims, scale, q, k_cmp, lse_cmp, topk);
}

template <class T>
void select_blocks(const NsaConfig& config, const RowPositions& queries, const Varlen& cmp, HeadDims dims,
                   double scale, const T* q, const T* k_cmp, const T* lse_cmp, std::int32_t* topk) {
  const Varlen& rows = *queries.rows;
  const std::int64_t N = rows.total();
  const std::int64_t K = config.topk;
  // Work items: (sequence, kv head, chunk of tokens); each owns its rows of topk.
  std::vector<std::array<std::int64_t, 3>> items;
  for (int b = 0; b < rows.num_seqs(); ++b)
    for (int g = 0; g < dims.hkv; ++g)
      for (std::int64_t t0 = 0; t0 < rows.length(b); t0 += kTokensPerItem) items.push_back({b, g, t0});

  parallel_for(static_cast<std::int64_t>(items.size()), [&](std::int64_t item) {
    const int b = static_cast<int>(items[item][0]);
    const int g = static_cast<int>(items[item][1]);
    const std::int64_t r_end = std::min(rows.length(b), items[item][2] + kTokensPerItem);
    std::vector<T> probs, scores;
    for (std::int64_t r = items[item][2]; r < r_end; ++r) {
      row_block_scores(config, queries, cmp, dims, scale, q, k_cmp, lse_cmp, b, r, g, probs, scores);
      choose_blocks(config, queries.position(b, r) / config.block_size, scores, topk + (g * N + rows.start(b) + r) * K);
    }
  });
}

template std::vector<float> block_scores<float>(const NsaConfig&, const Varlen&, const Varlen&, HeadDims, double,
                                                const float*, const float*, const float*, int, std::int64_t, int);
template std::vector<double> block_scores<double>(const NsaConfig&, const Varlen&, const Varlen&, HeadDims, double,
                                                  const double*, const double*, const double*, int, std::int64_t,
                                                  int);
template void choose_blocks<float>(const NsaConfig&, std::int64_t, const std::vector<float>&, std::int32_t*);
template void choose_blocks<double>(const NsaConfig&, std::int64_t, const std::vector<double>&, std::int32_t*);
template void select_blocks<float>(const NsaConfig&, const Varlen&, const Varlen&, HeadDims, double, const float*,
                                   const float*, const float*, std::int32_t*);
template void select_blocks<double>(const NsaConfig&, const Varlen&, const Varlen&, HeadDims, double,
                                    const double*, const double*, const double*, std::int32_t*);
template void select_blocks<float>(const NsaConfig&, const RowPositions&, const Varlen&, HeadDims, double,
                                   const float*, const float*, const float*, std::int32_t*);
template void select_blocks<double>(const NsaConfig&, const RowPositions&, const Varlen&, HeadDims, double,
                                    const double*, const double*, const double*, std::int32_t*);

}  // namespace fsa::ref
