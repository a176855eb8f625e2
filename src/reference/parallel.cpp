#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fsa::ref {

Status env_num_threads(int* threads) {
  *threads = 0;
  const char* env = std::getenv("FSA_NUM_THREADS");
  if (env == nullptr || *env == '\0') return Status::ok();
  // Digits only: no sign, spaces or suffix, so "4x", "-1" and "+4" are refused, not read as 4, 0 or 4.
  long long n = 0;
  for (const char* p = env; *p != '\0'; ++p) {
    if (*p < '0' || *p > '9' || n > kMaxThreads) {
      n = -1;
      break;
    }
    n = n * 10 + (*p - '0');
  }
  if (n < 1 || n > kMaxThreads)
    return FSA_INVALID("FSA_NUM_THREADS: expected an integer from 1 to " + std::to_string(kMaxThreads) + ", got '" +
                       env + "'");
  *threads = static_cast<int>(n);
  return Status::ok();
}

int num_threads() {
  int threads = 0;
  if (const Status s = env_num_threads(&threads); !s.is_ok()) {
    static std::once_flag reported;  // a bad value is reported once per process, not per loop
    std::call_once(reported, [&] {
      std::fprintf(stderr, "fsa: %s; the CPU reference uses every core\n", s.message().c_str());
    });
  }
  return threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

void parallel_for(std::int64_t items, const std::function<void(std::int64_t)>& body) {
  if (items <= 0) return;
  const int threads = static_cast<int>(std::min<std::int64_t>(items, num_threads()));
  if (threads == 1) {
    for (std::int64_t i = 0; i < items; ++i) body(i);
    return;
  }
  std::atomic<std::int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    try {
      for (std::int64_t i = next++; i < items; i = next++) body(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next = items;
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(threads - 1));
  for (int i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace fsa::ref
