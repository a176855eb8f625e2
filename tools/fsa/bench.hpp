// `fsa bench selected`: times the GPU selected attention on the canonical configurations of
// benchmarks.md and writes one CSV row per (configuration, pattern).
#pragma once

#include <string>
#include <vector>

namespace fsa::tool {

struct BenchOptions {
  std::vector<std::string> configs;   // names from benchmarks.md; empty = all
  std::vector<std::string> patterns;  // "random", "local"; empty = both
  int iterations = 10;
  std::string csv_path;
};

int run_bench_selected(const BenchOptions& options);

}  // namespace fsa::tool
