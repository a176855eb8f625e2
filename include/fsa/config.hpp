// Hyperparameters of an NSA layer (docs/semantics.md section 0) and their validation.
#pragma once

#include <cstdint>

#include "fsa/status.hpp"

namespace fsa {

// How compressed keys/values summarise a window of l raw tokens (docs/semantics.md section 1).
enum class CompressionKind : std::uint8_t {
  kLinear,  // per kv head learned projection W [Hkv, l*D, Dout], positional embedding on keys
  kMean,    // average of the window (positional embedding still added to keys)
};

// How per-head compressed-attention probabilities become one score per kv group
// (docs/semantics.md section 4).
enum class ScoreAggregation : std::uint8_t {
  kGroupSum,   // sum over the G heads of the group (the NSA paper)
  kFirstHead,  // only head g*G, for parity with the FSA repository's module
};

// Shape of the gate tensor of the combination (docs/semantics.md section 7).
enum class GateMode : std::uint8_t {
  kPerHead,  // gates [N, Hq, 3]
  kShared,   // gates [N, 3], one triple per token broadcast over heads
};

// Rotary embedding (docs/semantics.md section 2): GPT-NeoX rotate-half with optional llama3
// frequency scaling.
struct RopeConfig {
  bool enabled = true;  // the whole layer rotates q, k and compressed k when set
  float theta = 10000.0f;
  bool llama3_scaling = false;
  float llama3_factor = 8.0f;
  float llama3_low_freq_factor = 1.0f;
  float llama3_high_freq_factor = 4.0f;
  int llama3_original_max_position = 8192;

  Status validate() const;
};

struct NsaConfig {
  int cmp_len = 32;        // l: compression window
  int cmp_stride = 16;     // s: compression stride
  int block_size = 64;     // B: selection block, one of 32, 64, 128
  int topk = 16;           // K: selected blocks per query (forced ones included)
  int init_blocks = 1;     // I: leading blocks always selected
  int local_blocks = 2;    // L: trailing blocks (the query's own and the previous) always selected
  int window = 512;        // w: sliding window, keys [t-w, t]
  float scale = 0.0f;      // softmax scale; 0 means 1/sqrt(Dqk)
  CompressionKind compression = CompressionKind::kLinear;
  ScoreAggregation aggregation = ScoreAggregation::kGroupSum;
  GateMode gate_mode = GateMode::kPerHead;
  RopeConfig rope{};

  // Checks every constraint of docs/semantics.md section 0; the message names the field.
  Status validate() const;
  // The scale actually used for a given query/key head dim.
  float softmax_scale(int head_dim_qk) const;
};

// Compressed tokens of a sequence of n raw tokens: (n - l) / s + 1 when n >= l, else 0.
std::int64_t compressed_length(std::int64_t n, const NsaConfig& config);
// Upper bound of the total compressed tokens of any packed batch of `total_tokens` tokens,
// computable from shapes alone (n_cmp(n) <= n / s because l >= s): size compressed buffers with it.
std::int64_t max_compressed_tokens(std::int64_t total_tokens, const NsaConfig& config);
// Selection blocks of a sequence of n tokens: ceil(n / B).
std::int64_t num_blocks(std::int64_t n, const NsaConfig& config);

}  // namespace fsa
