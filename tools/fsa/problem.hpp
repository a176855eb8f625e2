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

}  // namespace fsa::tool
