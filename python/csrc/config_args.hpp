// NsaConfig from the plain scalars of the op schemas. Each op's schema lists only the fields the op
// reads; the others keep NsaConfig's defaults. The config is not validated here: the fsa API does
// that and names the field.
#pragma once

#include <c10/util/string_view.h>

#include <cstdint>

#include "fsa/config.hpp"
#include "fsa/ops.hpp"

namespace fsa::torch_ext {

// The RoPE fields, in schema order: "bool rope, float rope_theta, bool llama3_scaling,
// float llama3_factor, float llama3_low_freq_factor, float llama3_high_freq_factor,
// int llama3_original_max_position".
struct RopeArgs {
  bool enabled;
  double theta;
  bool llama3_scaling;
  double llama3_factor, llama3_low_freq_factor, llama3_high_freq_factor;
  std::int64_t llama3_original_max_position;

  RopeConfig to_config() const;
};

// The whole layer's fields, in schema order (see kLayerConfigSchema in registration.cpp).
struct LayerArgs {
  std::int64_t cmp_len, cmp_stride, block_size, topk, init_blocks, local_blocks, window;
  double scale;
  c10::string_view compression, aggregation;
  RopeArgs rope;

  // gate_mode follows the rank of the gates: [N, 3] is shared, anything else per head (and the
  // API then reports the expected [N, Hq, 3]).
  NsaConfig to_config(std::int64_t gates_dim) const;
};

// "linear" / "mean"; "group_sum" / "first_head". Unknown names raise a ValueError naming the field.
CompressionKind parse_compression(c10::string_view name);
ScoreAggregation parse_aggregation(c10::string_view name);
// Selected attention's GPU path and dense threshold ("auto", "kv-outer", "split", "query-outer");
// an unknown name raises a ValueError naming `path`.
SlcOptions slc_options(c10::string_view path, std::int64_t dense_threshold, bool deterministic);

// An NsaConfig with the compression window fields set (ops that only read l and s).
NsaConfig config_with_compression(std::int64_t cmp_len, std::int64_t cmp_stride);

}  // namespace fsa::torch_ext
