// A minimal parallel loop for the CPU reference: work items are claimed one at a time from an
// atomic counter by min(items, threads) std::threads. FSA_NUM_THREADS overrides the thread count.
#pragma once

#include <cstdint>
#include <functional>

#include "fsa/status.hpp"

namespace fsa::ref {

// The most threads FSA_NUM_THREADS may ask for: far above any core count, and low enough that
// starting them cannot fail (a failed std::thread start would terminate the process).
constexpr int kMaxThreads = 1024;

// FSA_NUM_THREADS: *threads = its value, or 0 when it is unset or empty; an error naming the
// variable when it is not an integer from 1 to kMaxThreads.
Status env_num_threads(int* threads);
// The threads of a parallel loop: FSA_NUM_THREADS when valid, else every core (a bad value is
// reported once on stderr, not ignored in silence).
int num_threads();
void parallel_for(std::int64_t items, const std::function<void(std::int64_t)>& body);

}  // namespace fsa::ref
