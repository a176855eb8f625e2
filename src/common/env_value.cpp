#include "common/env_value.hpp"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>

namespace fsa::detail {

Status env_integer(const char* name, long long lo, long long hi, long long* value) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return Status::ok();
  long long n = 0;
  bool fits = true;
  for (const char* p = env; *p != '\0' && fits; ++p) {
    fits = *p >= '0' && *p <= '9' && n <= hi;  // n <= hi < 2^62 keeps n * 10 + 9 from overflowing
    n = fits ? n * 10 + (*p - '0') : n;
  }
  if (!fits || n < lo || n > hi)
    return FSA_INVALID(std::string(name) + ": expected an integer from " + std::to_string(lo) + " to " +
                       std::to_string(hi) + ", got '" + env + "'");
  *value = n;
  return Status::ok();
}

Status env_choice(const char* name, std::initializer_list<const char*> choices, std::string* value) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return Status::ok();
  std::string expected;
  for (const char* c : choices) {
    if (std::string(env) == c) {
      *value = env;
      return Status::ok();
    }
    expected += expected.empty() ? c : std::string(" or ") + c;
  }
  return FSA_INVALID(std::string(name) + ": expected " + expected + ", got '" + env + "'");
}

long long env_value_or(Status (*read)(long long*), long long fallback) {
  long long value = fallback;
  const Status s = read(&value);
  if (s.is_ok()) return value;
  static std::mutex mutex;
  static std::set<Status (*)(long long*)> reported;
  const std::lock_guard<std::mutex> lock(mutex);
  if (reported.insert(read).second) std::fprintf(stderr, "fsa: %s; using %lld\n", s.message().c_str(), fallback);
  return fallback;
}

}  // namespace fsa::detail
