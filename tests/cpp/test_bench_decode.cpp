// `fsa bench decode` without a GPU: its configuration names (the grid, the default subset, the
// parser's refusals), the byte model against values worked out by hand from docs/kernels/decode.md,
// and the floor's bandwidth by device name.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "bench_decode_model.hpp"

namespace fsa::tool {
namespace {

TEST(BenchDecodeConfigs, NamesReadBack) {
  const std::vector<DecodeConfig> grid = decode_grid();
  EXPECT_EQ(grid.size(), 4u * 4u * 3u * 2u);
  std::set<std::string> names;
  for (const DecodeConfig& c : grid) {
    const std::string name = decode_config_name(c);
    names.insert(name);
    DecodeConfig back;
    ASSERT_EQ(parse_decode_config(name, &back), "") << name;
    EXPECT_EQ(back.batch, c.batch);
    EXPECT_EQ(back.context, c.context);
    EXPECT_EQ(back.group, c.group);
    EXPECT_EQ(back.q_len, c.q_len);
  }
  EXPECT_EQ(names.size(), grid.size());
  EXPECT_TRUE(names.count("D16x128K-G16-Q1"));
  EXPECT_TRUE(names.count("D128x512K-G4-Q4"));
  for (const std::string& name : default_decode_configs()) EXPECT_TRUE(names.count(name)) << name;

  DecodeConfig c;
  ASSERT_EQ(parse_decode_config("D16x128K-G16-Q1", &c), "");
  EXPECT_EQ(c.batch, 16);
  EXPECT_EQ(c.context, 131072);
  EXPECT_EQ(c.group, 16);
  EXPECT_EQ(c.q_len, 1);
  ASSERT_EQ(parse_decode_config("D3x7K-G2-Q8", &c), "");  // off the grid, within the limits
  EXPECT_EQ(c.context, 7168);
}

TEST(BenchDecodeConfigs, ParserRefusesByName) {
  for (const char* bad : {"", "D16x128K-G16", "D16x128K-G16-Q1x", "d16x128K-G16-Q1", "D16X128K-G16-Q1",
                          "D0x128K-G16-Q1", "D016x128K-G16-Q1", "D1025x4K-G1-Q1", "D1x1025K-G1-Q1", "D1x4K-G17-Q1",
                          "D1x4K-G1-Q0", "D1x4K-G1-Q9", "D1x4M-G1-Q1", "D-1x4K-G1-Q1", "D99999999999999999999x4K-G1-Q1",
                          "S64-G4"}) {
    DecodeConfig c;
    const std::string error = parse_decode_config(bad, &c);
    EXPECT_NE(error.find("D<batch>x<context>K-G<G>-Q<q_len>"), std::string::npos) << bad;
    std::string quoted = "'";  // appended: GCC 12 warns (-Wrestrict, a false positive) on "'" + std::string
    quoted += bad;
    quoted += "'";
    EXPECT_NE(error.find(quoted), std::string::npos) << bad;
  }
}

// 16 sequences x 128K at G 16, q_len 1, every kv head selecting K = 16 distinct blocks: the first
// row of docs/kernels/decode.md's table (454 MB with the two-pass selection, floor 135 us at
// 3.35 TB/s; 334 MB and 100 us with the fused one).
TEST(BenchDecodeBytes, TargetShapeByHand) {
  const NsaConfig config;
  const DecodeConfig c{16, 131072, 16, 1};
  const DecodeBytes b = decode_step_bytes(c, config, 16 * 4 * 16, DecodeSelect::kTwoPass);
  // n_cmp = (131073 - 32) / 16 + 1 = 8191 compressed tokens per sequence.
  EXPECT_EQ(b.cmp_kv, 16.0 * 8191 * 4 * 256 * 2);  // 268402688
  EXPECT_EQ(b.cmp_k, 16.0 * 8191 * 4 * 128 * 2);   // 134201344
  EXPECT_EQ(b.selected, 1024.0 * 64 * 256 * 2);    // 33554432
  EXPECT_EQ(b.window, 16.0 * 513 * 4 * 256 * 2);   // 16809984
  // q 64 x 128, k and v 4 x 128 each, gates 64 x 3, o 64 x 128 per token.
  EXPECT_EQ(b.io, 16.0 * (8192 + 512 + 512 + 192 + 8192) * 2);  // 563200
  EXPECT_EQ(b.written, 16.0 * 4 * 384 * 2);                     // 49152
  EXPECT_EQ(b.compression, 0.0);  // positions 131072.. complete no window (the next ends at 131087)
  EXPECT_EQ(b.total(), 453580800.0);
  EXPECT_NEAR(b.total() / 3.35e12 * 1e6, 135.4, 0.05);
  // Fused: no second read of k~; 16 x 64 rows x 512 key quarters x (5 fp16 values + an fp32
  // maximum) written and read.
  const DecodeBytes f = decode_step_bytes(c, config, 16 * 4 * 16);
  EXPECT_EQ(f.cmp_k, 0.0);
  EXPECT_EQ(f.partials, 2.0 * 16 * 64 * 512 * 14);  // 14680064
  EXPECT_EQ(f.total(), b.total() - b.cmp_k + f.partials);
  EXPECT_NEAR(f.total() / 3.35e12 * 1e6, 99.7, 0.05);
}

// 64 x 32K at G 4: 605 MB as implemented at q_len 1 (docs/kernels/decode.md); at q_len 4 the same
// compressed tokens (n_cmp(32772) = n_cmp(32769) = 2047), the window 3 keys longer.
TEST(BenchDecodeBytes, QLenFourAddsWindowKeysAndSelections) {
  const NsaConfig config;
  const DecodeBytes one = decode_step_bytes({64, 32768, 4, 1}, config, 64 * 4 * 16, DecodeSelect::kTwoPass);
  const DecodeBytes four = decode_step_bytes({64, 32768, 4, 4}, config, 64 * 4 * 40, DecodeSelect::kTwoPass);
  EXPECT_EQ(one.total(), 604772352.0);  // 604.8 MB
  EXPECT_EQ(four.cmp_kv, one.cmp_kv);
  EXPECT_EQ(four.window - one.window, 64.0 * 3 * 4 * 256 * 2);
  EXPECT_EQ(four.selected, 64.0 * 4 * 40 * 64 * 256 * 2);
  EXPECT_EQ(four.io, 4 * one.io);
}

// A step that completes a compression window: 47 cached tokens, one new (window 1 = [16, 48)).
TEST(BenchDecodeBytes, CompressionOnlyWhenAWindowCompletes) {
  const NsaConfig config;
  const DecodeBytes b = decode_step_bytes({1, 47, 1, 1}, config, 1);
  // 32 staged rows and one compressed token, each read, written and read again (x 3), plus w_k,
  // w_v [4, 32 x 128, 128] and pe_k [4, 32, 128].
  EXPECT_EQ(b.compression, 3.0 * 32 * 4 * 256 * 2 + 3.0 * 1 * 4 * 256 * 2 + 4.0 * 32 * (128 * 128 * 2 + 128) * 2);
  EXPECT_EQ(b.window, 48.0 * 4 * 256 * 2);  // the whole sequence: shorter than the window
  EXPECT_EQ(b.cmp_kv, 2.0 * 4 * 256 * 2);   // n_cmp(48) = 2
  EXPECT_EQ(decode_step_bytes({1, 48, 1, 1}, config, 1).compression, 0.0);
}

TEST(BenchDecodeBandwidth, ByDeviceName) {
  std::string source;
  EXPECT_EQ(hbm_bandwidth_of("NVIDIA H100 80GB HBM3", &source), 3.35e12);
  EXPECT_NE(source.find("H100 SXM"), std::string::npos);
  EXPECT_EQ(hbm_bandwidth_of("NVIDIA H200", &source), 4.8e12);
  EXPECT_EQ(hbm_bandwidth_of("NVIDIA H100 PCIe", &source), 2.0e12);
  EXPECT_EQ(hbm_bandwidth_of("NVIDIA A100-SXM4-80GB", &source), 3.35e12);
  EXPECT_NE(source.find("--hbm-bandwidth"), std::string::npos);
}

}  // namespace
}  // namespace fsa::tool
