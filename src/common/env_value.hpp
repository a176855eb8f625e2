// The library's environment variables, parsed in one place: an integer in a range or one of a few
// words. Unset or empty leaves the caller's default; anything else that does not parse is an error
// naming the variable and quoting the value (digits only for integers: "4x", "-1", "+4" and
// " 4" are refused, not read as 4, -1 or 4). fsa::check_environment (runtime.hpp) checks every
// variable below up front.
#pragma once

#include <initializer_list>
#include <string>

#include "fsa/status.hpp"

namespace fsa::detail {

// *value keeps its default when `name` is unset or empty; hi < 2^62.
Status env_integer(const char* name, long long lo, long long hi, long long* value);
Status env_choice(const char* name, std::initializer_list<const char*> choices, std::string* value);
// For a reader that cannot return an error (a plan function): `read`'s value, or `fallback` when
// the variable is unset, empty or bad; a bad value is reported once per process on stderr.
long long env_value_or(Status (*read)(long long*), long long fallback);

// The tuning and test switches the kernels' host code reads (docs/architecture.md, "Environment switches").
constexpr long long kEnvMaxTokens = 1LL << 40;
inline Status env_decode_select(std::string* route) {  // "" (the shape decides), fused, two-pass
  return env_choice("FSA_DECODE_SELECT", {"fused", "two-pass"}, route);
}
inline Status env_prefill_long_chunk_min_tokens(long long* tokens) {
  return env_integer("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS", 1, kEnvMaxTokens, tokens);
}
inline Status env_slc_min_chunk_tokens(long long* tokens) {
  return env_integer("FSA_SLC_MIN_CHUNK_TOKENS", 1, kEnvMaxTokens, tokens);
}
inline Status env_compress_k_splits(long long* splits) {
  return env_integer("FSA_COMPRESS_K_SPLITS", 1, 1 << 16, splits);
}
// The key-quarter decode kernel (decode_attn_kernel.cuh, kQuarters): 0 (default: measured slower at
// the decode targets' q_len 1 shapes on an H100, docs/kernels/decode.md) or 1.
inline Status env_decode_quarter_kernel(std::string* value) {
  return env_choice("FSA_DECODE_QUARTER_KERNEL", {"0", "1"}, value);
}
// The decode attention's splits of the context, every branch (1..64, at most a branch's key tiles;
// default: the plan's, one wave of CTAs), for measuring the split count.
inline Status env_decode_attn_splits(long long* splits) {
  return env_integer("FSA_DECODE_ATTN_SPLITS", 1, 64, splits);
}
inline Status env_decode_attn_stages(long long* stages) {  // 1 or 2 (default: what gives the most CTAs a SM)
  return env_integer("FSA_DECODE_ATTN_STAGES", 1, 2, stages);
}
inline Status env_disable_wgmma(std::string* value) {  // 0 or 1 (kernel_arch takes a bad value as 1)
  return env_choice("FSA_DISABLE_WGMMA", {"0", "1"}, value);
}

}  // namespace fsa::detail
