// `fsa bench selected|compressed|layer|decode`: times GPU phases on the canonical configurations
// of bench_util.hpp (canonical_configs; decode: bench_decode_model.hpp) and writes CSV rows.
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
  std::string command_line;  // the command as run, for the CSV caption (BenchOutput)
  // `fsa bench decode` only.
  bool all = false;             // --all: the whole grid (decode_grid) and the prefill comparison
  double hbm_bandwidth = 0;     // --hbm-bandwidth, bytes/s (0 = by the device's name, hbm_bandwidth_of)
  bool head_major_pools = false;  // --cache-layout head-major: each pool allocated [pages, Hkv, page, D]
};

// The --config names `fsa bench <command>` accepts (command: selected, compressed or layer).
std::vector<std::string> bench_config_names(const std::string& command);

// The commands (bench*.cpp, built only with CUDA; main.cpp refuses them without a device first).
#ifdef FSA_WITH_CUDA
int run_bench_selected(const BenchOptions& options);
// `fsa bench compressed`: compression, compressed attention and selection phase by phase (uses
// configs, iters and csv_path of the options).
int run_bench_compressed(const BenchOptions& options);
// `fsa bench layer`: the whole layer phase by phase and through nsa_forward/nsa_backward against the
// library's dense causal attention, plus the break-even sweep (uses configs, iters and csv_path).
int run_bench_layer(const BenchOptions& options);
// `fsa bench decode`: one nsa_decode step over a paged cache of random values, eager and replayed
// from a CUDA graph, against its byte model's HBM floor and dense attention over the same cache,
// plus chunked nsa_prefill against one nsa_forward (uses configs (decode names), all, iters,
// csv_path, hbm_bandwidth, head_major_pools, command_line).
int run_bench_decode(const BenchOptions& options);
#endif

}  // namespace fsa::tool
