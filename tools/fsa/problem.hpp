// The demo's problem: shapes, hyperparameters and host values of every input, drawn from a seed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fsa/fsa.hpp"

namespace fsa::tool {

struct ProblemSpec {
  // The embedded default: a packed batch of four sequences of different lengths, one shorter than
  // the compression window and one not a multiple of the block size.
  std::vector<std::int64_t> seqlens{1536, 700, 250, 31};
  int heads_q = 8, heads_kv = 2, head_dim_qk = 64, head_dim_v = 64;
  bool head_dim_v_given = false;  // --head-dim-v given (else Dv follows Dqk and errors name --head-dim)
  DType dtype = DType::kBFloat16;
  std::uint64_t seed = 2026;
  NsaConfig config{};

  std::int64_t tokens() const;
  std::string describe() const;
};

// Host values (fp64) of every tensor of the layer, and the upstream gradient.
struct ProblemData {
  std::vector<std::int32_t> cu_seqlens;
  std::vector<double> q, k, v, w_k, pe_k, w_v, gates, d_o;
};

ProblemData make_problem(const ProblemSpec& spec);

// The memory a demo run of `spec` allocates, from the shapes alone, in overflow-checked 64-bit
// arithmetic (a term past 2^64 saturates and sets `overflow`).
struct DemoFootprint {
  // The tool's tensors on the device that runs the layer: inputs, every phase's outputs, the
  // gradients (phase by phase and whole layer) and an estimate of the saved activations.
  std::uint64_t buffers = 0;
  // Host: the fp64 values of the inputs and of the downloaded results, plus the largest tensor's
  // conversion buffers in flight.
  std::uint64_t staging = 0;
  // Host, when the CPU runs the layer: the CPU reference's fp32 working copies at its peak (about
  // one per tool tensor, more for the compression weights). An estimate: measured, it errs high
  // for token-sized tensors (1.5x at N = 8192, Hq = 8, D = 128) and is close for the weights.
  std::uint64_t reference = 0;
  bool overflow = false;
  // The largest tensor, "w_k [Hkv=2, l*Dqk=3200000, Dqk=100000]", and the options that size it.
  std::string largest, largest_options;

  std::uint64_t host_bytes(bool cpu_runs) const;
};

DemoFootprint demo_footprint(const ProblemSpec& spec);

// Physical memory of the host (sysconf), 0 when unknown.
std::uint64_t host_memory_bytes();
// "1.5 GiB"
std::string format_bytes(std::uint64_t bytes);

}  // namespace fsa::tool
