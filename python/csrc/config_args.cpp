#include "config_args.hpp"

#include <c10/util/Exception.h>

#include <string>

namespace fsa::torch_ext {

namespace {

// Schema ints are int64; NsaConfig fields are int. Out-of-range values become an error instead of
// wrapping around into a valid-looking config.
int to_int(std::int64_t value, const char* field) {
  TORCH_CHECK_VALUE(value >= INT32_MIN && value <= INT32_MAX, "config.", field, ": ", value, " does not fit in an int");
  return static_cast<int>(value);
}

}  // namespace

RopeConfig RopeArgs::to_config() const {
  RopeConfig rope;
  rope.enabled = enabled;
  rope.theta = static_cast<float>(theta);
  rope.llama3_scaling = llama3_scaling;
  rope.llama3_factor = static_cast<float>(llama3_factor);
  rope.llama3_low_freq_factor = static_cast<float>(llama3_low_freq_factor);
  rope.llama3_high_freq_factor = static_cast<float>(llama3_high_freq_factor);
  rope.llama3_original_max_position = to_int(llama3_original_max_position, "llama3_original_max_position");
  return rope;
}

NsaConfig LayerArgs::to_config(std::int64_t gates_dim) const {
  NsaConfig config;
  config.cmp_len = to_int(cmp_len, "cmp_len");
  config.cmp_stride = to_int(cmp_stride, "cmp_stride");
  config.block_size = to_int(block_size, "block_size");
  config.topk = to_int(topk, "topk");
  config.init_blocks = to_int(init_blocks, "init_blocks");
  config.local_blocks = to_int(local_blocks, "local_blocks");
  config.window = to_int(window, "window");
  config.scale = static_cast<float>(scale);
  config.compression = parse_compression(compression);
  config.aggregation = parse_aggregation(aggregation);
  config.gate_mode = gates_dim == 2 ? GateMode::kShared : GateMode::kPerHead;
  config.rope = rope.to_config();
  return config;
}

CompressionKind parse_compression(c10::string_view name) {
  if (name == "linear") return CompressionKind::kLinear;
  if (name == "mean") return CompressionKind::kMean;
  TORCH_CHECK_VALUE(false, "config.compression: expected 'linear' or 'mean', got '", std::string(name), "'");
}

ScoreAggregation parse_aggregation(c10::string_view name) {
  if (name == "group_sum") return ScoreAggregation::kGroupSum;
  if (name == "first_head") return ScoreAggregation::kFirstHead;
  TORCH_CHECK_VALUE(false, "config.aggregation: expected 'group_sum' or 'first_head', got '", std::string(name), "'");
}

SlcOptions slc_options(c10::string_view path, std::int64_t dense_threshold, bool deterministic) {
  SlcOptions options;
  options.deterministic = deterministic;
  if (path == "auto") options.path = SlcPath::kAuto;
  else if (path == "kv-outer") options.path = SlcPath::kKvOuter;
  else if (path == "split") options.path = SlcPath::kSplit;
  else if (path == "query-outer") options.path = SlcPath::kQueryOuter;
  else TORCH_CHECK_VALUE(false, "path: expected 'auto', 'kv-outer', 'split' or 'query-outer', got '", std::string(path), "'");
  TORCH_CHECK_VALUE(dense_threshold >= 0 && dense_threshold <= INT32_MAX,
                    "dense_threshold: expected 0 (the library's) or a positive int, got ", dense_threshold);
  options.dense_threshold = static_cast<int>(dense_threshold);
  return options;
}

NsaConfig config_with_compression(std::int64_t cmp_len, std::int64_t cmp_stride) {
  NsaConfig config;
  config.cmp_len = to_int(cmp_len, "cmp_len");
  config.cmp_stride = to_int(cmp_stride, "cmp_stride");
  return config;
}

}  // namespace fsa::torch_ext
