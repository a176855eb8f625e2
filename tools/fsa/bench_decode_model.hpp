// `fsa bench decode` without CUDA: the configuration names, the byte model of one decode step
// (docs/kernels/decode.md, "Byte model of a decode step") and the HBM bandwidth of the floor.
// Plain C++, read by the option parser and by the CPU test (tests/cpp/test_bench_decode.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "fsa/config.hpp"

namespace fsa::tool {

// One decode configuration: `batch` sequences of `context` cached tokens each bring `q_len` new
// tokens; Hkv = 4, Hq = 4 G, D = 128, bf16. Named D<batch>x<context/1024>K-G<G>-Q<q_len>
// (D16x128K-G16-Q1).
struct DecodeConfig {
  int batch = 0;
  std::int64_t context = 0;
  int group = 0, q_len = 0;
  static constexpr int kHeadsKv = 4, kHeadDim = 128;
};

// The prefill comparison of `fsa bench decode`: S64-G4 through nsa_prefill in 4 chunks against one
// nsa_forward.
inline constexpr const char* kDecodePrefillConfig = "S64-G4-PREFILL";

inline std::string decode_config_name(const DecodeConfig& c) {
  // Appended piece by piece: GCC 12 warns (-Wrestrict, a false positive) on "D" + std::string.
  std::string name = "D";
  for (const std::string& piece : {std::to_string(c.batch), std::string("x"), std::to_string(c.context / 1024),
                                   std::string("K-G"), std::to_string(c.group), std::string("-Q"),
                                   std::to_string(c.q_len)})
    name += piece;
  return name;
}

// The grid of the issue: batch {1, 16, 64, 128} x context {4K, 32K, 128K, 512K} x G {1, 4, 16} x
// q_len {1, 4} (`--all`), batch-major.
inline std::vector<DecodeConfig> decode_grid() {
  std::vector<DecodeConfig> grid;
  for (const int batch : {1, 16, 64, 128})
    for (const std::int64_t kib : {4, 32, 128, 512})
      for (const int group : {1, 4, 16})
        for (const int q_len : {1, 4}) grid.push_back({batch, kib * 1024, group, q_len});
  return grid;
}

// The default subset (under a minute on an H100): the targets (16 x 128K at G 16; 64 x
// 32K at G 4, q_len 1 and 4), one long sequence, and q_len 4 at the 128K target shape.
inline std::vector<std::string> default_decode_configs() {
  return {"D16x128K-G16-Q1", "D16x128K-G16-Q4", "D64x32K-G4-Q1", "D64x32K-G4-Q4", "D1x128K-G4-Q1"};
}

namespace decode_detail {
// Digits of `text` from `*at` as a positive int (at most `max`); false when there are none, a
// leading zero, or the value is larger.
inline bool read_number(const std::string& text, std::size_t* at, long long max, long long* out) {
  const std::size_t start = *at;
  long long v = 0;
  while (*at < text.size() && text[*at] >= '0' && text[*at] <= '9') {
    v = v * 10 + (text[*at] - '0');
    if (v > max) return false;
    ++*at;
  }
  if (*at == start || (text[start] == '0')) return false;
  *out = v;
  return true;
}
inline bool expect(const std::string& text, std::size_t* at, const char* literal) {
  const std::string l(literal);
  if (text.compare(*at, l.size(), l) != 0) return false;
  *at += l.size();
  return true;
}
}  // namespace decode_detail

// Reads D<batch>x<n>K-G<g>-Q<q>: batch 1..1024, context n K with n 1..1024, G 1..16, q_len 1..8
// (kMaxDecodeTokens). Returns "" and sets *out, or why the name is not one.
inline std::string parse_decode_config(const std::string& name, DecodeConfig* out) {
  using decode_detail::expect;
  using decode_detail::read_number;
  const std::string form = "expected D<batch>x<context>K-G<G>-Q<q_len> (e.g. D16x128K-G16-Q1: batch 1-1024, "
                           "context 1K-1024K, G 1-16, q_len 1-8), got '" + name + "'";
  std::size_t at = 0;
  long long batch = 0, kib = 0, group = 0, q_len = 0;
  if (!expect(name, &at, "D") || !read_number(name, &at, 1024, &batch) || !expect(name, &at, "x") ||
      !read_number(name, &at, 1024, &kib) || !expect(name, &at, "K-G") || !read_number(name, &at, 16, &group) ||
      !expect(name, &at, "-Q") || !read_number(name, &at, 8, &q_len) || at != name.size())
    return form;
  *out = {static_cast<int>(batch), kib * 1024, static_cast<int>(group), static_cast<int>(q_len)};
  return "";
}

// Bytes one decode step moves through HBM, as implemented (docs/kernels/decode.md): per sequence
// with P = context cached and c = q_len new tokens, bf16 (2 bytes), n = compressed_count(P + c)
// compressed tokens (those the last new token sees):
//   cmp_kv     n Hkv (Dqk + Dv) 2          compressed keys and values, pass 1 (compressed attention)
//   cmp_k      n Hkv Dqk 2                 compressed keys again, pass 2 (the two-pass selection)
//   partials   2 c Hq 4T (2 QB + 4)        the fused selection's block partials, written by pass 1
//                                          and read by the scoring kernel: T = ceil(n / 64) key
//                                          tiles of four quarters, each QB fp16 values and an fp32
//                                          maximum, QB = (B - d + 15 s + l - 1) / B + 1 blocks a
//                                          quarter meets, d = gcd(16 s, B)
//   selected   blocks B (Dqk + Dv) 2       the distinct blocks the tokens selected, summed over
//                                          sequences and kv heads (K per kv head when they agree)
//   window     min(w + c, P + c) Hkv (Dqk + Dv) 2
//   io         q, k, v, gates in and o out
//   written    the new keys and values into the pages, the new pre-RoPE keys into the ring
//   compression only in a step that completes a compression window: the staged window rows read
//              from the cache and the chunk, written and read again by the compression, w_k, w_v and
//              pe_k once, the new compressed tokens written, read and written into their pages
// Not counted: the split partials and branch outputs in the workspace (fp32, at most a few MB),
// the page tables, and the local blocks that the selected and window branches both read (counted
// in both, as both read them).
struct DecodeBytes {
  double cmp_kv = 0, cmp_k = 0, partials = 0, selected = 0, window = 0, io = 0, written = 0, compression = 0;
  double total() const { return cmp_kv + cmp_k + partials + selected + window + io + written + compression; }
};

inline std::int64_t decode_compressed_count(std::int64_t n, const NsaConfig& config) {
  return n >= config.cmp_len ? (n - config.cmp_len) / config.cmp_stride + 1 : 0;
}

// The selection route of a decode step (FSA_DECODE_SELECT): block scores from the compressed
// attention's partials, or a second pass over the compressed keys.
enum class DecodeSelect { kFused, kTwoPass };

inline DecodeBytes decode_step_bytes(const DecodeConfig& c, const NsaConfig& config, std::int64_t selected_blocks,
                                     DecodeSelect route = DecodeSelect::kFused) {
  const double e = 2.0, hkv = DecodeConfig::kHeadsKv, d = DecodeConfig::kHeadDim, hq = hkv * c.group;
  const double batch = c.batch, tokens = static_cast<double>(c.batch) * c.q_len;
  const std::int64_t end = c.context + c.q_len;
  const double n_cmp = static_cast<double>(decode_compressed_count(end, config));
  DecodeBytes b;
  b.cmp_kv = batch * n_cmp * hkv * (d + d) * e;
  if (route == DecodeSelect::kTwoPass) {
    b.cmp_k = batch * n_cmp * hkv * d * e;
  } else {
    const double tiles = std::ceil(n_cmp / 64.0);
    const int d = std::gcd(16 * config.cmp_stride, config.block_size);
    const double quarter_blocks = (config.block_size - d + 15 * config.cmp_stride + config.cmp_len - 1) / config.block_size + 1;
    b.partials = 2.0 * tokens * hq * 4 * tiles * (quarter_blocks * 2.0 + 4.0);
  }
  b.selected = static_cast<double>(selected_blocks) * config.block_size * (d + d) * e;
  const double window_keys = static_cast<double>(std::min<std::int64_t>(config.window + c.q_len, end));
  b.window = batch * window_keys * hkv * (d + d) * e;
  b.io = tokens * (hq * d + hkv * d + hkv * d + hq * 3 + hq * d) * e;
  b.written = tokens * hkv * (d + d + d) * e;
  const std::int64_t first = decode_compressed_count(c.context, config);
  const std::int64_t new_cmp = decode_compressed_count(end, config) - first;
  if (new_cmp > 0) {
    const double rows = static_cast<double>(end - first * config.cmp_stride);
    const double weights = hkv * config.cmp_len * (d * d + d * d + d) * e;
    b.compression = batch * (3.0 * rows * hkv * (d + d) * e + 3.0 * static_cast<double>(new_cmp) * hkv * (d + d) * e) +
                    weights;
  }
  return b;
}

// The HBM bandwidth of the floor, bytes/s, from the device name, and where it came from (`source`):
// H200 4.8e12, H100 PCIe 2.0e12, other H100 (SXM, HBM3) 3.35e12; any other device 3.35e12, said to
// be a guess. `--hbm-bandwidth` replaces it.
inline double hbm_bandwidth_of(const std::string& device_name, std::string* source) {
  const auto has = [&](const char* s) { return device_name.find(s) != std::string::npos; };
  if (has("H200")) {
    *source = "H200's 4.8e12 B/s";
    return 4.8e12;
  }
  if (has("H100") && has("PCIe")) {
    *source = "H100 PCIe's 2.0e12 B/s";
    return 2.0e12;
  }
  if (has("H100")) {
    *source = "H100 SXM's 3.35e12 B/s";
    return 3.35e12;
  }
  *source = "3.35e12 B/s (H100 SXM's; device not recognised: pass --hbm-bandwidth)";
  return 3.35e12;
}

}  // namespace fsa::tool
