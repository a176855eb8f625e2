// Validation of the hyperparameters (docs/semantics.md section 0) and the length formulas derived
// from them.
#include <cmath>
#include <string>

#include "fsa/config.hpp"

namespace fsa {

namespace {
Status field_error(const char* field, const std::string& expected, long long got) {
  return FSA_INVALID(std::string("config.") + field + ": expected " + expected + ", got " + std::to_string(got));
}
}  // namespace

Status RopeConfig::validate() const {
  if (!(theta > 0.0f) || !std::isfinite(theta))
    return FSA_INVALID("config.rope.theta: expected a finite value > 0, got " + std::to_string(theta));
  if (llama3_scaling) {
    if (!(llama3_factor >= 1.0f))
      return FSA_INVALID("config.rope.llama3_factor: expected >= 1, got " + std::to_string(llama3_factor));
    if (!(llama3_high_freq_factor > llama3_low_freq_factor))
      return FSA_INVALID("config.rope.llama3_high_freq_factor: expected > llama3_low_freq_factor");
    if (llama3_original_max_position <= 0)
      return field_error("rope.llama3_original_max_position", "> 0", llama3_original_max_position);
  }
  return Status::ok();
}

Status NsaConfig::validate() const {
  if (cmp_len <= 0) return field_error("cmp_len (l)", "> 0", cmp_len);
  if (cmp_stride <= 0) return field_error("cmp_stride (s)", "> 0", cmp_stride);
  if (cmp_len % cmp_stride != 0)
    return FSA_INVALID("config.cmp_stride (s): expected s to divide cmp_len (l), got s=" + std::to_string(cmp_stride) +
                       " l=" + std::to_string(cmp_len));
  if (block_size != 32 && block_size != 64 && block_size != 128)
    return field_error("block_size (B)", "one of 32, 64, 128", block_size);
  if (block_size % cmp_stride != 0)
    return FSA_INVALID("config.cmp_stride (s): expected s to divide block_size (B), got s=" +
                       std::to_string(cmp_stride) + " B=" + std::to_string(block_size));
  if (init_blocks < 0) return field_error("init_blocks (I)", ">= 0", init_blocks);
  if (local_blocks < 0) return field_error("local_blocks (L)", ">= 0", local_blocks);
  if (topk <= 0) return field_error("topk (K)", "> 0", topk);
  if (topk < init_blocks + local_blocks)
    return FSA_INVALID("config.topk (K): expected K >= init_blocks + local_blocks = " +
                       std::to_string(init_blocks + local_blocks) + ", got " + std::to_string(topk));
  if (window < 0) return field_error("window (w)", ">= 0", window);
  if (!std::isfinite(scale) || scale < 0.0f)
    return FSA_INVALID("config.scale: expected 0 (meaning 1/sqrt(Dqk)) or a finite positive value, got " +
                       std::to_string(scale));
  return rope.validate();
}

float NsaConfig::softmax_scale(int head_dim_qk) const {
  return scale > 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(head_dim_qk));
}

std::int64_t compressed_length(std::int64_t n, const NsaConfig& config) {
  return n >= config.cmp_len ? (n - config.cmp_len) / config.cmp_stride + 1 : 0;
}

std::int64_t max_compressed_tokens(std::int64_t total_tokens, const NsaConfig& config) {
  return total_tokens / config.cmp_stride;
}

std::int64_t num_blocks(std::int64_t n, const NsaConfig& config) {
  return (n + config.block_size - 1) / config.block_size;
}

}  // namespace fsa
