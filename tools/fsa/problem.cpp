#include "problem.hpp"

#include <cmath>
#include <random>
#include <sstream>

namespace fsa::tool {

std::int64_t ProblemSpec::tokens() const {
  std::int64_t n = 0;
  for (std::int64_t s : seqlens) n += s;
  return n;
}

std::string ProblemSpec::describe() const {
  std::ostringstream out;
  out << "seqlens [";
  for (std::size_t i = 0; i < seqlens.size(); ++i) out << (i ? "," : "") << seqlens[i];
  out << "] (N=" << tokens() << "), Hq=" << heads_q << " Hkv=" << heads_kv << " (G=" << heads_q / heads_kv
      << "), Dqk=" << head_dim_qk << " Dv=" << head_dim_v << ", " << dtype_name(dtype) << ", l=" << config.cmp_len
      << " s=" << config.cmp_stride << " B=" << config.block_size << " K=" << config.topk
      << " w=" << config.window << ", " << (config.compression == CompressionKind::kLinear ? "linear" : "mean")
      << " compression, " << (config.gate_mode == GateMode::kPerHead ? "per-head" : "shared") << " gates";
  return out.str();
}

ProblemData make_problem(const ProblemSpec& spec) {
  std::mt19937_64 rng(spec.seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto normals = [&](std::int64_t count, double stddev) {
    std::vector<double> v(static_cast<std::size_t>(count));
    for (double& x : v) x = stddev * normal(rng);
    return v;
  };
  // Xavier-uniform over a projection [l*D, D] (spec section 8).
  auto xavier = [&](std::int64_t heads, std::int64_t fan_in, std::int64_t fan_out) {
    const double bound = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
    std::uniform_real_distribution<double> uniform(-bound, bound);
    std::vector<double> v(static_cast<std::size_t>(heads * fan_in * fan_out));
    for (double& x : v) x = uniform(rng);
    return v;
  };
  const std::int64_t n = spec.tokens(), l = spec.config.cmp_len;
  ProblemData d;
  d.cu_seqlens.push_back(0);
  for (std::int64_t s : spec.seqlens) d.cu_seqlens.push_back(d.cu_seqlens.back() + static_cast<std::int32_t>(s));
  d.q = normals(n * spec.heads_q * spec.head_dim_qk, 1.0);
  d.k = normals(n * spec.heads_kv * spec.head_dim_qk, 1.0);
  d.v = normals(n * spec.heads_kv * spec.head_dim_v, 1.0);
  if (spec.config.compression == CompressionKind::kLinear) {
    d.w_k = xavier(spec.heads_kv, l * spec.head_dim_qk, spec.head_dim_qk);
    d.w_v = xavier(spec.heads_kv, l * spec.head_dim_v, spec.head_dim_v);
  }
  d.pe_k = xavier(spec.heads_kv, l, spec.head_dim_qk);
  const std::int64_t gate_count = spec.config.gate_mode == GateMode::kPerHead ? n * spec.heads_q * 3 : n * 3;
  d.gates = normals(gate_count, 1.0);
  for (double& g : d.gates) g = 1.0 / (1.0 + std::exp(-g));  // the layer's sigmoid gates
  d.d_o = normals(n * spec.heads_q * spec.head_dim_v, 1.0);
  return d;
}

}  // namespace fsa::tool
