// The index arithmetic and the shape-only plan of the GPU inference kernels
// (src/kernels/decode/decode_tiling.hpp), on the host: the block / compressed-key correspondence
// against the overlap weights, the staged windows of a chunk against the compressed counts, the
// tokens an attention tile can touch, the blocks a key tile meets (the fused selection's
// partials), the plan's bounds (partials, candidates, shared-memory capacities) over a grid of
// shapes, and a long chunk's gathered keys against the keys its kernels read. Plain C++: no device
// needed.
#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>
#include <utility>

#include "fsa/cache.hpp"
#include "kernels/common/fast_divisor.hpp"
#include "kernels/decode/decode_tiling.hpp"
#include "test_util.hpp"

namespace fsa::test {
namespace {

using namespace fsa::cuda::decode;

struct Hyper {
  int l, s, B;
};
const Hyper kHypers[] = {{32, 16, 64}, {32, 16, 32}, {32, 16, 128}, {16, 16, 64}, {64, 16, 64}, {32, 32, 64}, {8, 4, 32}};

// The plan's numbers for hyperparameters h, Hq / Hkv heads, K 16 and window w.
NsaNumbers numbers(const Hyper& h, int hq, int hkv, long long window = 512) {
  NsaNumbers nsa{};
  nsa.cmp_len = h.l;
  nsa.cmp_stride = h.s;
  nsa.block_size = h.B;
  nsa.topk = 16;
  nsa.window = window;
  nsa.heads_q = hq;
  nsa.heads_kv = hkv;
  nsa.group = hq / hkv;
  return nsa;
}

TEST(DecodePlan, BlockKeysAreThoseWithOverlap) {
  for (const Hyper& h : kHypers)
    for (long long j = 0; j < 40; ++j) {
      const long long first = first_key_of_block(j, h.l, h.s, h.B), end = end_key_of_block(j, h.s, h.B);
      for (long long i = 0; i < end + 8; ++i)
        EXPECT_EQ(overlap_weight(i, j, h.l, h.s, h.B) > 0, i >= first && i < end)
            << "l=" << h.l << " s=" << h.s << " B=" << h.B << " block " << j << " key " << i;
    }
  // The 32-bit forms in units of s (the scoring kernel's) equal the 64-bit ones, up to blocks near
  // 2^31 / B.
  for (const Hyper& h : kHypers) {
    const int Ls = h.l / h.s, Bs = h.B / h.s;
    const long long top = (1LL << 31) / h.B - 2;
    for (long long j : {0LL, 1LL, 2LL, 3LL, 17LL, 1000LL, 123457LL, top - 1, top}) {
      EXPECT_EQ(first_key_of_block_units(static_cast<int>(j), Ls, Bs), first_key_of_block(j, h.l, h.s, h.B))
          << "l=" << h.l << " s=" << h.s << " B=" << h.B << " block " << j;
      EXPECT_EQ(end_key_of_block_units(static_cast<int>(j), Bs), end_key_of_block(j, h.s, h.B)) << "block " << j;
    }
    for (long long u : {0LL, 1LL, 5LL, 77LL, 99999LL, (1LL << 27) - 1})
      EXPECT_EQ(quarter_first_block_units(static_cast<int>(u), Bs), quarter_first_block(u, h.s, h.B)) << "quarter " << u;
  }
  // Every compressed key spreads l / s over the blocks; at l 32, s 16, B 64 block j collects
  // keys 4j-1 .. 4j+3 with weights 1, 2, 2, 2, 1 (l 32, s 16, B 64).
  for (const Hyper& h : kHypers)
    for (long long i = 0; i < 100; ++i) {
      int total = 0;
      for (long long j = 0; j < 100; ++j) total += overlap_weight(i, j, h.l, h.s, h.B);
      EXPECT_EQ(total, h.l / h.s);
    }
  const int expected[] = {1, 2, 2, 2, 1};
  for (int k = 0; k < 5; ++k) EXPECT_EQ(overlap_weight(4 * 3 - 1 + k, 3, 32, 16, 64), expected[k]);
}

// The fused selection's partials: every block a key quarter's keys meet lies in the quarter's
// [quarter_first_block, + quarter_block_count), some quarter meets that many (the bound is tight),
// each block's keys lie in the quarters the scoring kernel reads ([first_key / kQuarterKeys,
// (end_key - 1) / kQuarterKeys]), and the kernels' 32-bit weights relative to the quarter are the
// overlap weights.
TEST(DecodePlan, KeyQuartersMeetTheirBlocks) {
  for (const Hyper& h : kHypers) {
    const int count = quarter_block_count(h.l, h.s, h.B);
    int most_met = 0;
    for (long long u = 0; u < 4LL * h.B; ++u) {
      const long long first = quarter_first_block(u, h.s, h.B);
      long long lowest = -1, highest = -1;
      for (long long i = u * kQuarterKeys; i < (u + 1) * kQuarterKeys; ++i)
        for (long long j = 0; j < (u + 2) * kQuarterKeys * h.s / h.B + 2; ++j) {
          if (overlap_weight(i, j, h.l, h.s, h.B) == 0) continue;
          EXPECT_GE(j, first) << "l=" << h.l << " s=" << h.s << " B=" << h.B << " quarter " << u << " key " << i;
          EXPECT_LT(j, first + count) << "l=" << h.l << " s=" << h.s << " B=" << h.B << " quarter " << u;
          lowest = lowest < 0 ? j : std::min(lowest, j);
          highest = std::max(highest, j);
          EXPECT_GE(i, first_key_of_block(j, h.l, h.s, h.B));
          EXPECT_LT(i, end_key_of_block(j, h.s, h.B));
        }
      EXPECT_EQ(lowest, first) << "quarter " << u << ": its first block is one it meets";
      most_met = std::max(most_met, static_cast<int>(highest - lowest + 1));
      for (int jj = 0; jj < count; ++jj)
        for (int i = 0; i < kQuarterKeys; ++i)
          EXPECT_EQ(unit_overlap(i, quarter_block_start(static_cast<int>(u), jj, h.B / h.s), h.l / h.s, h.B / h.s),
                    overlap_weight(u * kQuarterKeys + i, first + jj, h.l, h.s, h.B))
              << "l=" << h.l << " s=" << h.s << " B=" << h.B << " quarter " << u << " block " << jj << " key " << i;
      // A quarter starting on a block boundary (Bs divides kQuarterKeys) has every quarter's weights
      // equal: the attention then makes them once (decode_block_partials.cuh, make_fixed_weights).
      if (kQuarterKeys % (h.B / h.s) == 0) EXPECT_EQ(quarter_block_start(static_cast<int>(u), 0, h.B / h.s), 0);
      if (::testing::Test::HasFailure()) return;
    }
    EXPECT_EQ(most_met, count) << "l=" << h.l << " s=" << h.s << " B=" << h.B;
  }
  EXPECT_EQ(quarter_block_count(32, 16, 64), 5);  // the defaults: 16 keys cover 272 positions from a block start
}

// The two-pass selection's form of the weights, relative to any first key k0 of a tile (a range's
// tiles start at its first key, not at multiples of 64): w(k0 + i, j) = unit_overlap(i, j B / s -
// k0), and the keys it visits, [max(0, block_lo - l / s + 1), block_lo + B / s), are the block's.
TEST(DecodePlan, WeightsRelativeToAnyFirstKey) {
  for (const Hyper& h : kHypers)
    for (const long long k0 : {0LL, 1LL, 7LL, 63LL, 64LL, 1000LL, 4097LL})
      for (long long j = 0; j < (k0 + kKeys) * h.s / h.B + 3; ++j) {
        const int Ls = h.l / h.s, Bs = h.B / h.s;
        const int block_lo = static_cast<int>(j * Bs - k0);
        EXPECT_EQ(std::max(0LL, first_key_of_block(j, h.l, h.s, h.B) - k0),
                  static_cast<long long>(std::max(0, block_lo - Ls + 1)));
        EXPECT_EQ(end_key_of_block(j, h.s, h.B) - k0, static_cast<long long>(block_lo + Bs));
        for (int i = 0; i < kKeys; ++i)
          EXPECT_EQ(unit_overlap(i, block_lo, Ls, Bs), overlap_weight(k0 + i, j, h.l, h.s, h.B))
              << "l=" << h.l << " s=" << h.s << " B=" << h.B << " k0 " << k0 << " block " << j << " key " << i;
      }
}

// The ranges of a token's blocks partition [0, num_blocks) in order while ranges x capacity covers
// them, each at most `capacity` long.
TEST(DecodePlan, BlockRangesPartitionTheBlocks) {
  for (long long num_blocks = 1; num_blocks < 300; num_blocks += 7)
    for (const int ranges : {1, 2, 3, 8, 64})
      for (const int capacity : {1, 16, 100, 8192}) {
        if (static_cast<long long>(ranges) * capacity < num_blocks) continue;
        long long next = 0;
        for (int r = 0; r < ranges; ++r) {
          const BlockRange br = block_range(num_blocks, ranges, capacity, r);
          EXPECT_EQ(br.first, next) << num_blocks << " blocks, range " << r << " of " << ranges;
          EXPECT_LE(br.end - br.first, capacity);
          EXPECT_GE(br.end, br.first);
          next = br.end;
        }
        EXPECT_EQ(next, num_blocks) << num_blocks << " blocks in " << ranges << " ranges of <= " << capacity;
      }
}

TEST(DecodePlan, StagedWindowsAreTheNewCompressedTokens) {
  for (const Hyper& h : kHypers)
    for (long long cached = 0; cached < 300; ++cached)
      for (long long c : {0LL, 1LL, 2LL, 7LL, 8LL, 15LL, 16LL, 17LL, 33LL, 100LL}) {
        const StagedWindows w = staged_windows(cached, c, h.l, h.s);
        const long long before = compressed_count(cached, h.l, h.s), after = compressed_count(cached + c, h.l, h.s);
        EXPECT_EQ(w.count, after - before);
        if (w.count == 0) {
          EXPECT_EQ(w.rows, 0);
          continue;
        }
        // The staged positions [first * s, cached + c) form a sequence whose windows are exactly
        // the new ones, the cached positions among them are in the tail, and the rows are bounded.
        EXPECT_EQ(w.first, before);
        EXPECT_EQ(compressed_count(w.rows, h.l, h.s), w.count);
        EXPECT_GT(w.first * h.s, cached - h.l);
        EXPECT_LE(w.rows, c + h.l - 1);
        EXPECT_LE(w.count, c / h.s + 1);
      }
}

TEST(DecodePlan, AttentionTilesTouchAtMostTheirTokens) {
  for (int G = 1; G <= 130; ++G) {
    long long most = 0;
    for (long long r0 = 0; r0 < 3LL * G * kRows; ++r0) most = std::max(most, (r0 + kRows - 1) / G - r0 / G + 1);
    EXPECT_LE(most, attn_tile_tokens(G)) << "G=" << G;
    EXPECT_LE(attn_tile_tokens(G), kRows);  // one bit per token in the union's masks
    const int t = select_tile_tokens(G);
    EXPECT_GE(t, 1);
    EXPECT_LE(t * G, std::max(G, kRows));
  }
}

// The attention's pieces of shared memory do not overlap, and everything lies within `bytes`.
TEST(DecodePlan, AttentionSharedMemoryPiecesDoNotOverlap) {
  constexpr std::size_t rows = kRows;
  for (const auto& [dqk, dv] : {std::pair{64, 64}, {128, 128}, {192, 128}, {256, 256}})
    for (const int words : {1, 64, 4096})
      for (const int capacity : {1, 32, 1024})
        for (const int stages : {1, 2}) {
          const AttnSmem m(dqk, dv, words, capacity, stages);
          const std::string where = "Dqk=" + std::to_string(dqk) + " words=" + std::to_string(words) +
                                    " capacity=" + std::to_string(capacity) + " stages=" + std::to_string(stages);
          EXPECT_GE(m.k - m.q, rows * (dqk + kPad) * 2) << where;
          EXPECT_GE(m.k_stage, static_cast<std::size_t>(kKeys) * (dqk + kPad) * 2) << where;
          EXPECT_GE(m.v_stage, static_cast<std::size_t>(kKeys) * (dv + kPad) * 2) << where;
          EXPECT_GE(m.v - m.k, static_cast<std::size_t>(stages) * m.k_stage) << where;
          EXPECT_GE(m.slots - m.v, static_cast<std::size_t>(stages) * m.v_stage) << where;
          EXPECT_GE(m.sources - m.slots, static_cast<std::size_t>(kAttnLocatedTiles) * kKeys * sizeof(AttnSlot))
              << where;
          EXPECT_GE(m.bitmap - m.sources, static_cast<std::size_t>(kAttnLocatedTiles) * kKeys * 2 * sizeof(void*))
              << where;
          EXPECT_GE(m.blocks - m.bitmap, static_cast<std::size_t>(words) * 4) << where;
          EXPECT_GE(m.token_masks - m.blocks, static_cast<std::size_t>(capacity) * 4) << where;
          for (const std::size_t piece : {m.k, m.v, m.k_stage, m.v_stage, m.slots, m.sources, m.bitmap})
            EXPECT_EQ(piece % 16, 0u) << where;  // cp.async and ldmatrix need 16-byte alignment
          const std::size_t union_end = m.token_masks + static_cast<std::size_t>(capacity) * 8;
          EXPECT_LE(union_end, m.bytes) << where;
          }
}

// Two stages where they fit, else one; the same pieces otherwise. At Dqk = Dv = 256 two stages
// need more than an A100's 163 KB, less than an H100's 227 KB.
TEST(DecodePlan, AttentionStagesFitTheDevice) {
  for (const auto& [dqk, dv] : {std::pair{64, 64}, {128, 128}, {192, 128}, {256, 256}}) {
    const AttnSmem one(dqk, dv, 64, 32, 1), two(dqk, dv, 64, 32, 2);
    EXPECT_EQ(two.bytes - one.bytes, one.k_stage + one.v_stage) << dqk;
    EXPECT_EQ(attn_stages(dqk, dv, 64, 32, two.bytes), 2) << dqk;
    EXPECT_EQ(attn_stages(dqk, dv, 64, 32, two.bytes - 1), 1) << dqk;
  }
  EXPECT_EQ(attn_stages(256, 256, 64, 32, 163 * 1024), 1);
  EXPECT_EQ(attn_stages(256, 256, 64, 32, 227 * 1024), 2);
  EXPECT_EQ(attn_stages(128, 128, 64, 32, 163 * 1024), 2);
}

// The key-quarter kernel runs where four of its CTAs fit a SM: an H100's 228 KB at D 128, not an
// A100's 164 KB nor Dqk 192 (three would fit, as for the kernel of any tile with more registers),
// never above Dv 128; and a decode step's plan on such a device launches it.
TEST(DecodePlan, QuarterKernelWhereFourCtasFit) {
  constexpr std::size_t kH100 = 228 * 1024, kA100 = 164 * 1024;
  EXPECT_EQ(attn_quarter_ctas_per_sm(128, 128, 64, 64, kH100), kQuarterMinCtas);
  EXPECT_EQ(attn_quarter_ctas_per_sm(64, 64, 64, 64, kH100), kQuarterMinCtas);
  EXPECT_EQ(attn_quarter_ctas_per_sm(128, 128, 64, 64, kA100), 0);
  EXPECT_EQ(attn_quarter_ctas_per_sm(192, 128, 64, 64, kH100), 0);
  EXPECT_EQ(attn_quarter_ctas_per_sm(256, 256, 1, 1, SIZE_MAX), 0);
  const AttnSmem quarter(128, 128, 64, 64, 1, kQuarterTileRows), any(128, 128, 64, 64, 1);
  EXPECT_EQ(any.bytes - quarter.bytes, static_cast<std::size_t>(kRows - kQuarterTileRows) * (128 + kPad) * 2);

  const NsaNumbers nsa = numbers(kHypers[0], 64, 4);
  const QuarterDevice h100{132, kH100, 128, 128};
  // 16 sequences x 128K, q_len 1: one wave of 132 x 4 CTAs over 16 x 4 tiles: 8 splits, where the
  // kernel of any tile (132 x 3) takes 6.
  const StepPlan decode = plan_step(nsa, 16, 16, 131072 + 256, 132 * 3, h100);
  EXPECT_TRUE(decode.quarter_launch);
  EXPECT_EQ(decode.splits[0], 8);
  EXPECT_EQ(decode.rows_splits[0], 6);
  EXPECT_FALSE(plan_step(nsa, 16, 16, 131072 + 256, 132 * 3).quarter_launch);  // no device
  // Switched off (FSA_DECODE_QUARTER_KERNEL): the plan without it, bounds included.
  QuarterDevice off = h100;
  off.enabled = false;
  const StepPlan without = plan_step(nsa, 16, 16, 131072 + 256, 132 * 3, off);
  const StepPlan no_device = plan_step(nsa, 16, 16, 131072 + 256, 132 * 3);
  EXPECT_FALSE(without.quarter_launch);
  for (int b = 0; b < kBranches; ++b) {
    EXPECT_EQ(without.splits[b], decode.rows_splits[b]) << b;
    EXPECT_EQ(without.split_tokens[b], no_device.split_tokens[b]) << b;
  }
  EXPECT_FALSE(plan_step(nsa, 16 * 9, 16, 131072 + 256, 132 * 3, h100).quarter_launch);  // not a decode step
  const StepPlan prefill = plan_step(nsa, 16 * 9, 16, 131072 + 256, 132 * 3, h100);
  for (int b = 0; b < kBranches; ++b) EXPECT_EQ(prefill.splits[b], prefill.rows_splits[b]) << b;
}

// FSA_DECODE_ATTN_SPLITS: every branch's splits (both kernels') set to the forced count, at most
// the branch's key tiles, with the partials' bound covering them; 0 leaves the plan's own.
TEST(DecodePlan, ForcedSplits) {
  const NsaNumbers nsa = numbers(kHypers[0], 16, 4);
  const QuarterDevice h100{132, 228 * 1024, 128, 128};
  for (const long long context : {300LL, 32768LL + 64, 131072LL + 256})
    for (const int forced : {1, 3, 7, 64})
      for (const QuarterDevice& device : {QuarterDevice{}, h100}) {
        const StepPlan p = plan_step(nsa, 64, 64, context, 132 * 3, device, forced);
        const long long key_tiles[kBranches] = {
            (compressed_count(p.max_context, nsa.cmp_len, nsa.cmp_stride) + kKeys - 1) / kKeys,
            (std::min<long long>(attn_tile_tokens(nsa.group) * nsa.topk, (p.max_context + nsa.block_size - 1) / nsa.block_size) *
                 nsa.block_size + kKeys - 1) / kKeys,
            (std::min<long long>(nsa.window + attn_tile_tokens(nsa.group), p.max_context) + kKeys - 1) / kKeys};
        for (int b = 0; b < kBranches; ++b) {
          const std::string where = "context " + std::to_string(context) + " forced " + std::to_string(forced) +
                                    " branch " + std::to_string(b) + (device.sms > 0 ? " quarter" : "");
          const long long want = std::clamp<long long>(forced, 1, std::clamp<long long>(key_tiles[b], 1, kMaxSplits));
          EXPECT_EQ(p.splits[b], want) << where;
          EXPECT_EQ(p.rows_splits[b], want) << where;
          if (want > 1) EXPECT_LE(want * 64, p.split_tokens[b]) << where;
        }
      }
  const StepPlan own = plan_step(nsa, 64, 64, 32768 + 64, 132 * 3), unforced = plan_step(nsa, 64, 64, 32768 + 64, 132 * 3, {}, 0);
  for (int b = 0; b < kBranches; ++b) {
    EXPECT_EQ(own.splits[b], unforced.splits[b]);
    EXPECT_EQ(own.split_tokens[b], unforced.split_tokens[b]);
  }
}

TEST(DecodePlan, BoundsHoldOverShapes) {
  for (const Hyper& h : kHypers)
    for (const auto& [hq, hkv] : {std::pair{64, 4}, {16, 4}, {4, 4}, {8, 1}, {3, 1}, {128, 1}})
      for (long long tokens = 1; tokens <= 5000; tokens = tokens * 2 + 1)
        for (int seqs = 1; seqs <= 128; seqs *= 4)
          for (long long context = 1; context <= (1LL << 21); context *= 8) {
            const NsaNumbers nsa = numbers(h, hq, hkv);
            // Planned without a device, and for an H100 with the key-quarter kernel.
            const StepPlan p = plan_step(nsa, tokens, seqs, context);
            const StepPlan pq = plan_step(nsa, tokens, seqs, context, 132 * 3, QuarterDevice{132, 228 * 1024, 128, 128});
            // And with the splits forced (FSA_DECODE_ATTN_SPLITS), with and without that kernel.
            const StepPlan pf = plan_step(nsa, tokens, seqs, context, 132 * 3, {}, 3);
            const StepPlan pqf = plan_step(nsa, tokens, seqs, context, 132 * 3, QuarterDevice{132, 228 * 1024, 128, 128}, 64);
            const std::string where = "l=" + std::to_string(h.l) + " B=" + std::to_string(h.B) +
                                      " G=" + std::to_string(nsa.group) + " N=" + std::to_string(tokens) +
                                      " nseq=" + std::to_string(seqs) + " context=" + std::to_string(context);
            EXPECT_FALSE(p.quarter_launch) << where;
            EXPECT_EQ(pq.quarter_launch,
                      fuses_selection(tokens, seqs) &&
                          attn_quarter_ctas_per_sm(128, 128, pq.union_words, pq.union_capacity, 228 * 1024) > 0)
                << where;
            for (const StepPlan* plan : {&p, &pq, &pf, &pqf})
              for (int b = 0; b < kBranches; ++b) {
                EXPECT_GE(plan->rows_splits[b], 1) << where;
                EXPECT_LE(plan->rows_splits[b], plan->splits[b]) << where;
                EXPECT_LE(plan->splits[b], kMaxSplits) << where;
                if (!plan->quarter_launch) EXPECT_EQ(plan->splits[b], plan->rows_splits[b]) << where;
                if (plan->splits[b] > 1) {
                  EXPECT_LE(plan->splits[b] * tokens, plan->split_tokens[b]) << where << " branch " << b;
                }
              }
            const long long blocks = (p.max_context + h.B - 1) / h.B;
            EXPECT_LE(static_cast<long long>(p.ranges) * tokens, p.range_tokens) << where;
            EXPECT_GE(static_cast<long long>(p.ranges) * p.range_capacity, blocks) << where;
            EXPECT_LE(p.tile_tokens * p.range_capacity, kScoreFloats) << where;
            EXPECT_GE(p.row_chunks * kRows, p.tile_tokens * nsa.group) << where;
            EXPECT_GE(static_cast<long long>(p.union_words) * 32, blocks) << where;
            EXPECT_GE(p.union_capacity, std::min<long long>(attn_tile_tokens(nsa.group) * nsa.topk, blocks)) << where;
            EXPECT_EQ(p.stage_rows, tokens + seqs * (h.l - 1)) << where;
            // The fused selection: the partials hold every row of a fusing call and every key quarter
            // of its context; the scoring ranges cover the blocks within their capacity.
            if (fuses_selection(tokens, seqs)) {
              EXPECT_GE(p.partial_rows, tokens * hq) << where;
              EXPECT_LE(static_cast<long long>(p.score_ranges) * tokens, p.score_range_tokens) << where;
            }
            EXPECT_GE(p.partial_quarters * kQuarterKeys, compressed_count(p.max_context, h.l, h.s)) << where;
            EXPECT_EQ(p.partial_quarters % 4, 0) << where;  // whole key tiles
            EXPECT_EQ(p.quarter_blocks, quarter_block_count(h.l, h.s, h.B)) << where;
            EXPECT_GE(static_cast<long long>(p.score_ranges) * p.score_range_capacity, blocks) << where;
            EXPECT_LE(p.score_range_capacity, kScoreFloats) << where;
            if (::testing::Test::HasFailure()) return;
          }
}

// The scratch bounds only grow with each dimension of the shape (what makes one workspace serve
// every smaller call), and so do the staging and compressed rows.
TEST(DecodePlan, BoundsGrowWithTheShape) {
  for (const auto& [hq, hkv] : {std::pair{64, 4}, {16, 4}, {4, 4}, {8, 1}, {3, 1}, {128, 1}}) {
    const NsaNumbers nsa = numbers(kHypers[0], hq, hkv);
    auto no_smaller = [&](const StepPlan& a, const StepPlan& b, const std::string& where) {
      for (int i = 0; i < kBranches; ++i) EXPECT_LE(a.split_tokens[i], b.split_tokens[i]) << where << " branch " << i;
      EXPECT_LE(a.range_tokens, b.range_tokens) << where;
      EXPECT_LE(a.score_range_tokens, b.score_range_tokens) << where;
      EXPECT_LE(a.partial_rows, b.partial_rows) << where;
      EXPECT_LE(a.partial_quarters, b.partial_quarters) << where;
      EXPECT_LE(a.stage_rows, b.stage_rows) << where;
      EXPECT_LE(a.cmp_rows, b.cmp_rows) << where;
    };
    for (long long tokens = 1; tokens <= 20000; tokens = tokens * 3 / 2 + 1)
      for (int seqs = 1; seqs <= 256; seqs *= 2)
        for (long long context = 1; context <= (1LL << 21); context *= 4) {
          const std::string where = "G=" + std::to_string(nsa.group) + " N=" + std::to_string(tokens) +
                                    " nseq=" + std::to_string(seqs) + " context=" + std::to_string(context);
          for (const QuarterDevice& device : {QuarterDevice{}, QuarterDevice{132, 228 * 1024, 128, 128}}) {
            auto plan = [&](std::int64_t n, int nseq, std::int64_t ctx) {
              return plan_step(nsa, n, nseq, ctx, 132 * 3, device);
            };
            const StepPlan p = plan(tokens, seqs, context);
            no_smaller(p, plan(tokens + 1, seqs, context), where + " (N + 1)");
            no_smaller(p, plan(tokens, seqs + 1, context), where + " (nseq + 1)");
            no_smaller(p, plan(tokens, seqs, context + 1), where + " (context + 1)");
            no_smaller(p, plan(tokens, seqs, context * 3), where + " (context x 3)");
          }
          if (::testing::Test::HasFailure()) return;
        }
  }
}

// A long chunk's gathered keys (gathered_range): for a valid call each sequence's ranges are
// exactly the keys its queries read (compressed tokens [0, n_cmp(P + c)), window positions
// [max(0, P - w), P + c)) with the prefix P; for any lengths (past the tables' capacity, negative,
// rows outside the chunk) the rows stay inside the gathered buffers, and while the chunk's rows are
// packed in order no two sequences' rows meet.
TEST(DecodePlan, GatheredKeysFitTheirSlots) {
  auto rng = rng_for_test(9);
  int checked = 0;
  for (const Hyper& h : kHypers)
    for (const long long window : {0LL, 1LL, 200LL, 512LL, 1LL << 40})
      for (int trial = 0; trial < 40; ++trial) {
        const int nseq = 1 + static_cast<int>(rng() % 6);
        std::vector<long long> cu(nseq + 1, 0);
        for (int b = 0; b < nseq; ++b) cu[b + 1] = cu[b] + static_cast<long long>(rng() % 700);
        const long long tokens = cu[nseq], context = 64 + static_cast<long long>(rng() % 3000);
        const NsaNumbers nsa = numbers(h, 1, 1, window);
        const StepPlan plan = plan_step(nsa, tokens, nseq, context);
        GatherParams p{};
        p.nsa = nsa;
        p.batch.tokens = tokens;
        p.max_context = context;
        p.cmp_slot = plan.gather_cmp_slot;
        p.window_slot = plan.gather_window_slot;
        const long long cmp_rows = nseq * p.cmp_slot, window_rows = nseq * p.window_slot + tokens;
        std::vector<std::pair<long long, long long>> used[2];
        for (int b = 0; b < nseq; ++b) {
          const long long c = cu[b + 1] - cu[b];
          // A third of the trials each: valid; cache lengths past capacity or negative; rows outside
          // the chunk as well (cu_seqlens not increasing: the rows stay in bounds, not disjoint).
          const bool valid = trial % 3 == 0 && c <= context, packed = trial % 3 != 2;
          const long long cached = valid ? static_cast<long long>(rng() % (context - c + 1))
                                         : static_cast<long long>(rng() % (3 * context)) - context / 2;
          const long long row0 = packed ? cu[b] : static_cast<long long>(rng() % (tokens + 50)) - 25;
          const long long fresh = packed ? c : static_cast<long long>(rng() % 900);
          const std::string where = "l=" + std::to_string(h.l) + " s=" + std::to_string(h.s) + " w=" +
                                    std::to_string(window) + " seq " + std::to_string(b) + " cached " +
                                    std::to_string(cached) + " new " + std::to_string(fresh);
          for (const bool compressed : {true, false}) {
            const GatheredRange r = gathered_range(p, b, row0, fresh, cached, compressed);
            const long long rows = compressed ? cmp_rows : window_rows;
            EXPECT_GE(r.end, r.first) << where;
            EXPECT_GE(r.dst0, 0) << where;
            EXPECT_LE(r.dst0 + (r.end - r.first), rows) << where;
            EXPECT_LE(r.prefix, context) << where;  // the selected branch's plan bound
            if (r.end > r.first) used[compressed ? 0 : 1].push_back({r.dst0, r.dst0 + (r.end - r.first)});
            if (valid) {
              EXPECT_EQ(r.prefix, cached) << where;
              if (compressed) {
                EXPECT_EQ(r.first, 0) << where;
                EXPECT_EQ(r.end, compressed_count(cached + c, h.l, h.s)) << where;
              } else {
                EXPECT_EQ(r.first, std::max(0LL, cached - window)) << where;
                EXPECT_EQ(r.end, cached + c) << where;
              }
            }
            ++checked;
          }
        }
        if (trial % 3 == 2) continue;
        for (auto& ranges : used) {
          std::sort(ranges.begin(), ranges.end());
          for (std::size_t i = 1; i < ranges.size(); ++i) EXPECT_LE(ranges[i - 1].second, ranges[i].first);
        }
      }
  EXPECT_GT(checked, 5000);
}

// The paged pools' page lookup divides by the page size as a multiply-high (fast_divisor.hpp): the
// quotient equals integer division for every divisor to 4096 at the multiples' edges and random
// dividends, for random divisors to 2^31 - 1 at the dividends' extremes, and no divisor outside
// [1, 2^31) gets constants.
TEST(DecodePlan, FastDivisorEqualsDivision) {
  using fsa::cuda::common::FastDivisor;
  using fsa::cuda::common::fast_divide;
  using fsa::cuda::common::make_fast_divisor;
  constexpr std::uint32_t kMaxDividend = 0x7fffffffu;
  std::mt19937_64 rng = rng_for_test();
  long long checked = 0;
  const auto check = [&](const FastDivisor& f, std::int64_t d, std::uint32_t n) {
    ASSERT_EQ(fast_divide(n, f), n / static_cast<std::uint32_t>(d)) << "n " << n << " d " << d;
    ++checked;
  };
  const auto check_divisor = [&](std::int64_t d, int random_dividends) {
    const FastDivisor f = make_fast_divisor(d);
    ASSERT_NE(f.multiplier, 0u) << "d " << d;
    for (std::uint32_t n : {0u, 1u, kMaxDividend, kMaxDividend - 1}) check(f, d, n);
    const std::uint64_t top = kMaxDividend / static_cast<std::uint64_t>(d);  // the last multiple's quotient
    for (std::uint64_t k : {std::uint64_t{1}, std::uint64_t{2}, top - 1, top})
      for (int delta = -1; delta <= 1; ++delta) {
        const std::int64_t n = static_cast<std::int64_t>(k * static_cast<std::uint64_t>(d)) + delta;
        if (n >= 0 && n <= kMaxDividend) check(f, d, static_cast<std::uint32_t>(n));
      }
    for (int i = 0; i < random_dividends; ++i) check(f, d, static_cast<std::uint32_t>(rng() & kMaxDividend));
  };
  for (std::int64_t d = 1; d <= 4096; ++d) check_divisor(d, 64);
  for (int e = 12; e <= 31; ++e) {  // powers of two and their neighbours
    const std::int64_t p = std::int64_t{1} << e;
    for (std::int64_t d : {p - 1, p, p + 1})
      if (d < (std::int64_t{1} << 31)) check_divisor(d, 64);
  }
  for (int i = 0; i < 20000; ++i) check_divisor(1 + static_cast<std::int64_t>(rng() % kMaxDividend), 16);
  EXPECT_GT(checked, 500000);
  for (std::int64_t d : {std::int64_t{0}, std::int64_t{-3}, std::int64_t{1} << 31, std::int64_t{1} << 40})
    EXPECT_EQ(make_fast_divisor(d).multiplier, 0u) << "d " << d;
}

// The one-launch compression appends an nsa_decode call's new tokens in the same launch as it reads
// the windows they complete (compress_append_kernel): correct only because no key-ring row a new
// token writes is one the windows read, for every cached length P and up to kMaxDecodeTokens new
// tokens, with the ring's nsa_cache_tail_rows rows. One more token than that breaks it for some P
// (so the check can fail), which is why a prefill call keeps the append in a launch of its own.
TEST(DecodePlan, DecodeTokensOverwriteNoRingRowTheWindowsRead) {
  // Whether c new tokens after P cached ones write a ring row (position % rows) that one of the
  // windows they complete reads from the ring (positions n_cmp(P) s .. P - 1).
  auto collides = [](long long P, int c, int l, int s, long long rows) {
    const StagedWindows w = staged_windows(P, c, l, s);
    if (w.count == 0) return false;
    for (long long p = w.first * s; p < P; ++p)
      for (int j = 0; j < c; ++j)
        if (P + j >= P + c - rows && (P + j) % rows == p % rows) return true;
    return false;
  };
  int tight = 0;
  for (const int l : {1, 2, 8, 16, 32, 64})
    for (const int s : {1, 2, 4, 8, 16, 32, 64}) {
      if (s > l) continue;
      NsaConfig cfg;
      cfg.cmp_len = l;
      cfg.cmp_stride = s;
      const long long rows = nsa_cache_tail_rows(cfg);
      for (long long P = 0; P <= 4 * l + 3 * s + 20; ++P) {
        for (int c = 1; c <= kMaxDecodeTokens; ++c)
          EXPECT_FALSE(collides(P, c, l, s, rows)) << "l " << l << " s " << s << " P " << P << " c " << c;
        tight += collides(P, kMaxDecodeTokens + 1, l, s, rows) ? 1 : 0;
      }
    }
  EXPECT_GT(tight, 0);
}

}  // namespace
}  // namespace fsa::test
