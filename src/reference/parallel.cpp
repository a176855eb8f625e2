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

#include "common/env_value.hpp"

namespace fsa::ref {

Status env_num_threads(int* threads) {
  long long n = 0;
  const Status s = detail::env_integer("FSA_NUM_THREADS", 1, kMaxThreads, &n);
  *threads = s.is_ok() ? static_cast<int>(n) : 0;
  return s;
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
