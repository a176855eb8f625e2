// `fsa bench selected|compressed|layer`: times GPU phases on the canonical configurations of
// bench_util.hpp (canonical_configs) and writes CSV rows.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "fsa/workspace.hpp"

namespace fsa::tool {

struct BenchOptions {
  std::vector<std::string> configs;   // names from canonical_configs(); empty = all
  std::vector<std::string> patterns;  // "random", "local"; empty = both
  std::vector<std::string> paths;     // "auto", "kv-outer", "split", "query-outer"; empty = auto
  int dense_threshold = 0;            // SlcOptions::dense_threshold (0 = the cost model's)
  int iterations = 10;
  std::size_t workspace_cap = kDefaultWorkspaceCap;  // SlcOptions::workspace_cap of every call
  std::string csv_path;
};

// The --config names `fsa bench <command>` accepts (command: selected, compressed or layer).
std::vector<std::string> bench_config_names(const std::string& command);

int run_bench_selected(const BenchOptions& options);
// `fsa bench compressed`: compression, compressed attention and selection phase by phase (uses
// configs, iters and csv_path of the options).
int run_bench_compressed(const BenchOptions& options);
// `fsa bench layer`: the whole layer phase by phase and through nsa_forward/nsa_backward against the
// library's dense causal attention, plus the break-even sweep (uses configs, iters and csv_path).
int run_bench_layer(const BenchOptions& options);

}  // namespace fsa::tool
