// A minimal parallel loop for the CPU reference: work items are claimed one at a time from an
// atomic counter by min(items, threads) std::threads. FSA_NUM_THREADS overrides the thread count.
#pragma once

#include <cstdint>
#include <functional>

namespace fsa::ref {

int num_threads();
void parallel_for(std::int64_t items, const std::function<void(std::int64_t)>& body);

}  // namespace fsa::ref
