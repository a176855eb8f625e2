// The library's environment switches (src/common/env_value.hpp): integers in a range, digits only;
// words from a list; unset or empty keeps the default; a bad value names the variable and quotes
// it; fsa::check_environment checks every switch. Sets and unsets the variables it reads.
#include <cstdlib>
#include <string>

#include "common/env_value.hpp"
#include "fsa/runtime.hpp"
#include "test_util.hpp"

namespace fsa::test {
namespace {

constexpr const char* kName = "FSA_TEST_ENV_VALUE";

struct ScopedEnv {
  ScopedEnv(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
  ~ScopedEnv() { ::unsetenv(name_); }
  const char* name_;
};

TEST(EnvValue, IntegersInRangeDigitsOnly) {
  ::unsetenv(kName);
  long long v = 7;
  FSA_EXPECT_OK(detail::env_integer(kName, 1, 100, &v));
  EXPECT_EQ(v, 7);  // unset: the default
  {
    const ScopedEnv e(kName, "");
    FSA_EXPECT_OK(detail::env_integer(kName, 1, 100, &v));
    EXPECT_EQ(v, 7);
  }
  for (const char* good : {"1", "42", "100", "007"}) {
    const ScopedEnv e(kName, good);
    FSA_EXPECT_OK(detail::env_integer(kName, 1, 100, &v));
    EXPECT_EQ(v, std::stoll(good)) << good;
  }
  for (const char* bad : {"0", "101", "-1", "+4", "4x", " 4", "abc", "99999999999999999999999"}) {
    const ScopedEnv e(kName, bad);
    v = 7;
    const Status s = detail::env_integer(kName, 1, 100, &v);
    EXPECT_FALSE(s.is_ok()) << bad;
    EXPECT_NE(s.message().find(kName), std::string::npos) << s.to_string();
    EXPECT_NE(s.message().find(std::string("'") + bad + "'"), std::string::npos) << s.to_string();
    EXPECT_EQ(v, 7) << bad;  // untouched
  }
}

TEST(EnvValue, WordsFromAList) {
  std::string w = "default";
  {
    const ScopedEnv e(kName, "two-pass");
    FSA_EXPECT_OK(detail::env_choice(kName, {"fused", "two-pass"}, &w));
    EXPECT_EQ(w, "two-pass");
  }
  const ScopedEnv e(kName, "Fused");
  const Status s = detail::env_choice(kName, {"fused", "two-pass"}, &w);
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("fused or two-pass"), std::string::npos) << s.to_string();
  EXPECT_EQ(w, "two-pass");
}

TEST(EnvValue, ReadersWithoutAStatusFallBack) {
  ::unsetenv("FSA_SLC_MIN_CHUNK_TOKENS");
  EXPECT_EQ(detail::env_value_or(detail::env_slc_min_chunk_tokens, 4096), 4096);
  {
    const ScopedEnv e("FSA_SLC_MIN_CHUNK_TOKENS", "96");
    EXPECT_EQ(detail::env_value_or(detail::env_slc_min_chunk_tokens, 4096), 96);
  }
  const ScopedEnv e("FSA_SLC_MIN_CHUNK_TOKENS", "-5");
  EXPECT_EQ(detail::env_value_or(detail::env_slc_min_chunk_tokens, 4096), 4096);
}

TEST(EnvValue, CheckEnvironmentNamesEachSwitch) {
  for (const char* name : {"FSA_NUM_THREADS", "FSA_DISABLE_WGMMA", "FSA_DECODE_SELECT",
                           "FSA_PREFILL_LONG_CHUNK_MIN_TOKENS", "FSA_SLC_MIN_CHUNK_TOKENS", "FSA_COMPRESS_K_SPLITS",
                           "FSA_DECODE_ATTN_STAGES", "FSA_DECODE_QUARTER_KERNEL", "FSA_DECODE_ATTN_SPLITS"})
    ::unsetenv(name);
  FSA_EXPECT_OK(check_environment());
  for (const char* name : {"FSA_NUM_THREADS", "FSA_DISABLE_WGMMA", "FSA_DECODE_SELECT",
                           "FSA_PREFILL_LONG_CHUNK_MIN_TOKENS", "FSA_SLC_MIN_CHUNK_TOKENS", "FSA_COMPRESS_K_SPLITS",
                           "FSA_DECODE_ATTN_STAGES", "FSA_DECODE_QUARTER_KERNEL", "FSA_DECODE_ATTN_SPLITS"}) {
    const ScopedEnv e(name, "bogus");
    const Status s = check_environment();
    EXPECT_FALSE(s.is_ok()) << name;
    EXPECT_NE(s.message().find(name), std::string::npos) << s.to_string();
  }
}

}  // namespace
}  // namespace fsa::test
