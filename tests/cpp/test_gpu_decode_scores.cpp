// The fused selection's scoring kernel (kernels/decode/decode_block_scores.cu) launched directly on
// synthetic block partials, for contexts the cache tests cannot reach on the CPU reference: a range
// of 3126 blocks (a token at position 200,000) is summed over its key quarters in two staged chunks,
// and ranges of every length keep their best candidates. Each list is checked against the scores
// of the same partials in fp64: its scores agree, it is ordered best first, it holds the range's
// best min(capacity, candidates) non-forced blocks (tie-aware at fp32 rounding), and it is padded.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.hpp"
#include "kernels/decode/decode.hpp"
#include "kernels/decode/decode_tiling.hpp"
#include "kernels/select/select_tiling.hpp"

namespace fsa::test {
namespace {

using namespace fsa::cuda::decode;
namespace sel = fsa::cuda::sel;

// A device copy of a host vector, freed with the test.
template <class T>
struct DeviceVector {
  T* data = nullptr;
  std::size_t size = 0;
  explicit DeviceVector(const std::vector<T>& host) : size(host.size()) {
    EXPECT_EQ(cudaMalloc(&data, std::max<std::size_t>(size, 1) * sizeof(T)), cudaSuccess);
    if (size > 0) EXPECT_EQ(cudaMemcpy(data, host.data(), size * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceVector() { cudaFree(data); }
  DeviceVector(const DeviceVector&) = delete;
  DeviceVector& operator=(const DeviceVector&) = delete;
  std::vector<T> download() const {
    std::vector<T> host(size);
    EXPECT_EQ(cudaMemcpy(host.data(), data, size * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }
};

struct ScoreCase {
  std::vector<std::int32_t> cached;  // one new token per sequence at this position
  int heads_kv, group, heads_used, ranges;
};

void check_scores(const ScoreCase& c, std::uint64_t salt) {
  SCOPED_TRACE("heads_used " + std::to_string(c.heads_used) + ", ranges " + std::to_string(c.ranges));
  const int l = 32, s = 16, B = 64, K = 16, I = 1, L = 2;
  const int nseq = static_cast<int>(c.cached.size()), tokens = nseq, hq = c.heads_kv * c.group;
  const long long max_position = *std::max_element(c.cached.begin(), c.cached.end());
  const long long quarters = 4 * ((compressed_count(max_position + 1, l, s) + kKeys - 1) / kKeys);
  const int QB = quarter_block_count(l, s, B);
  std::mt19937_64 rng = rng_for_test(salt);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);

  // Partials as the attention leaves them: fp16 block sums (a fifth of them 0) relative to each
  // (row, quarter) maximum, at most the row's lse.
  std::vector<std::uint16_t> values(static_cast<std::size_t>(tokens) * hq * quarters * QB);
  std::vector<float> quarter_max(static_cast<std::size_t>(tokens) * hq * quarters);
  std::vector<float> lse(static_cast<std::size_t>(hq) * tokens);  // [Hq, N]
  for (auto& v : values) v = unit(rng) < 0.2f ? 0 : __half_as_ushort(__float2half_rn(4.0f * unit(rng)));
  for (auto& m : quarter_max) m = -6.0f * unit(rng);
  for (auto& x : lse) x = 2.0f * unit(rng);

  std::vector<std::int32_t> cu(nseq + 1), slots(nseq, -1);
  for (int b = 0; b <= nseq; ++b) cu[b] = b;
  DeviceVector<std::int32_t> cu_d(cu), cached_d(c.cached), slots_d(slots);
  DeviceVector<std::uint16_t> values_d(values);
  DeviceVector<float> quarter_max_d(quarter_max), lse_d(lse);
  const std::vector<Candidate> poison(static_cast<std::size_t>(c.heads_kv) * tokens * c.ranges * K, Candidate{NAN, -7});
  DeviceVector<Candidate> candidates_d(poison);

  SelectParams p{};
  p.batch = {cu_d.data, 1, cached_d.data, 1, slots_d.data, 1, nseq, tokens};
  p.nsa = {l, s, B, K, I, L, 512, hq, c.heads_kv, c.group, c.heads_used, 0.1f};
  p.lse = lse_d.data;
  p.lse_head_stride = tokens;
  p.lse_token_stride = 1;
  p.partials = {values_d.data, quarter_max_d.data, quarters, QB};
  p.candidates = candidates_d.data;
  p.ranges = c.ranges;
  p.range_capacity = kScoreFloats;
  ASSERT_TRUE(launch_block_scores(p, nullptr).is_ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<Candidate> got = candidates_d.download();

  long long checked_blocks = 0;
  for (int g = 0; g < c.heads_kv; ++g)
    for (int t = 0; t < tokens; ++t) {
      const long long position = c.cached[t];
      const int bq = static_cast<int>(position / B);
      const long long visible = visible_count(position, l, s);
      // Block j's score in fp64: the quarters holding its visible keys, the selecting heads.
      auto score_of = [&](long long j) {
        const long long key_lo = first_key_of_block(j, l, s, B), key_hi = std::min(end_key_of_block(j, s, B), visible);
        double score = 0.0;
        if (key_lo >= key_hi) return score;
        for (long long u = key_lo / kQuarterKeys; u <= std::min((key_hi - 1) / kQuarterKeys, quarters - 1); ++u)
          for (int h = 0; h < c.heads_used; ++h) {
            const long long at = (static_cast<long long>(t) * hq + g * c.group + h) * quarters + u;
            const double value = __half2float(__ushort_as_half(values[at * QB + (j - quarter_first_block(u, s, B))]));
            score += value * std::exp2(static_cast<double>(quarter_max[at]) -
                                       static_cast<double>(lse[(g * c.group + h) * tokens + t]) * M_LOG2E);
          }
        return score;
      };
      const int capacity = sel::chosen_capacity(bq, K, I, L);
      for (int r = 0; r < c.ranges; ++r) {
        SCOPED_TRACE("kv head " + std::to_string(g) + ", token " + std::to_string(t) + ", range " + std::to_string(r));
        const BlockRange range = block_range(bq + 1, c.ranges, kScoreFloats, r);
        std::vector<std::pair<double, long long>> want;  // the range's candidates
        for (long long j = range.first; j < range.end; ++j)
          if (sel::is_candidate(static_cast<int>(j), bq, I, L)) want.push_back({score_of(j), j});
        checked_blocks += range.end - range.first;
        const int kept = std::min(capacity, static_cast<int>(want.size()));
        const Candidate* list = &got[((static_cast<std::size_t>(g) * tokens + t) * c.ranges + r) * K];
        std::vector<bool> taken(want.size(), false);
        double lowest_kept = INFINITY;
        for (int e = 0; e < kept; ++e) {
          const long long j = list[e].block;
          ASSERT_TRUE(j >= range.first && j < range.end && sel::is_candidate(static_cast<int>(j), bq, I, L))
              << "entry " << e << ": block " << j;
          const std::size_t w = std::find_if(want.begin(), want.end(), [&](const auto& x) { return x.second == j; }) -
                                want.begin();
          ASSERT_FALSE(taken[w]) << "block " << j << " kept twice";
          taken[w] = true;
          EXPECT_NEAR(list[e].score, want[w].first, 1e-5 * std::max(1.0, want[w].first)) << "block " << j;
          if (e > 0)
            EXPECT_TRUE(list[e - 1].score > list[e].score || (list[e - 1].score == list[e].score && list[e - 1].block < j))
                << "entries " << e - 1 << ", " << e << " out of order";
          lowest_kept = std::min(lowest_kept, want[w].first);
        }
        for (std::size_t w = 0; w < want.size(); ++w)
          if (!taken[w])
            EXPECT_LE(want[w].first, lowest_kept + 1e-5 * std::max(1.0, lowest_kept))
                << "block " << want[w].second << " outranks a kept one";
        for (int e = kept; e < K; ++e) EXPECT_EQ(list[e].block, -1) << "entry " << e << " past the kept ones";
        if (::testing::Test::HasFailure()) return;
      }
    }
  EXPECT_GT(checked_blocks, 3126);
}

// Positions 200,000 (3126 blocks: one range reads 782 key quarters, two staged chunks), 70,001 and
// short ones (a range before the first compressed key sees none); the group's four heads or its
// first; one range, and ranges that cut the tokens' blocks unevenly.
TEST_F(Gpu, DecodeBlockScoresOverLongRanges) {
  std::uint64_t salt = 0;
  for (const int heads_used : {4, 1})
    for (const int ranges : {1, 3, 16})
      check_scores({{200000, 70001, 4100, 40, 130}, 2, 4, heads_used, ranges}, ++salt);
}

}  // namespace
}  // namespace fsa::test
