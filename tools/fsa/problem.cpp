#include "problem.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>
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
  // Xavier-uniform over a projection [l*D, D] (docs/semantics.md section 8).
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

namespace {

// Saturating unsigned arithmetic: a result past 2^64 - 1 stays there and sets *overflow.
std::uint64_t mul(std::uint64_t a, std::uint64_t b, bool* overflow) {
  std::uint64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) {
    *overflow = true;
    return UINT64_MAX;
  }
  return r;
}

std::uint64_t add(std::uint64_t a, std::uint64_t b, bool* overflow) {
  std::uint64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) {
    *overflow = true;
    return UINT64_MAX;
  }
  return r;
}

}  // namespace

DemoFootprint demo_footprint(const ProblemSpec& spec) {
  const NsaConfig& c = spec.config;
  const std::uint64_t n = static_cast<std::uint64_t>(spec.tokens()), hq = static_cast<std::uint64_t>(spec.heads_q),
                      hkv = static_cast<std::uint64_t>(spec.heads_kv), l = static_cast<std::uint64_t>(c.cmp_len);
  const std::uint64_t dqk = static_cast<std::uint64_t>(spec.head_dim_qk),
                      dv = static_cast<std::uint64_t>(spec.head_dim_v);
  const std::uint64_t ncmp = n / static_cast<std::uint64_t>(c.cmp_stride), topk = static_cast<std::uint64_t>(c.topk);
  const std::uint64_t element = dtype_size(spec.dtype);
  const std::string dv_option = spec.head_dim_v_given ? "--head-dim-v" : "--head-dim";
  const bool linear = c.compression == CompressionKind::kLinear;
  auto dim = [](const char* name, std::uint64_t v) { return std::string(name) + "=" + std::to_string(v); };

  // Every tensor kind of the run: its shape, the options that size it, how many tool buffers of
  // that shape the run holds (DemoRun: input, phase outputs and gradients, whole-layer gradient,
  // saved copy), how many fp64 host copies it stages (the input and the downloaded gradient), and
  // how many fp32 copies the CPU reference holds at its peak: as many as the tool's buffers, but
  // 12 for the compression weights (loaded, transposed and their gradient, per phase and in the
  // layer; measured: the demo's peak RSS grows by 74 bytes per weight element of w_k and w_v
  // from Dqk = Dv = 256 to 512, N = 500).
  struct Term {
    std::string name, options;
    std::vector<std::uint64_t> sizes;
    std::uint64_t copies, staged, bytes, reference_copies = 0;
  };
  std::vector<Term> terms = {
      {"q [" + dim("N", n) + ", " + dim("Hq", hq) + ", " + dim("Dqk", dqk) + "]", "--seqlens, --heads-q, --head-dim",
       {n, hq, dqk}, 5, 2, element},
      {"k [" + dim("N", n) + ", " + dim("Hkv", hkv) + ", " + dim("Dqk", dqk) + "]",
       "--seqlens, --heads-kv, --head-dim", {n, hkv, dqk}, 5, 2, element},
      {"v [" + dim("N", n) + ", " + dim("Hkv", hkv) + ", " + dim("Dv", dv) + "]", "--seqlens, --heads-kv, " + dv_option,
       {n, hkv, dv}, 3, 2, element},
      {"o [" + dim("N", n) + ", " + dim("Hq", hq) + ", " + dim("Dv", dv) + "]", "--seqlens, --heads-q, " + dv_option,
       {n, hq, dv}, 12, 3, element},
      {"pe_k [" + dim("Hkv", hkv) + ", " + dim("l", l) + ", " + dim("Dqk", dqk) + "]",
       "--heads-kv, --cmp-len, --head-dim", {hkv, l, dqk}, 2, 2, element},
      {"gates [" + dim("N", n) + (c.gate_mode == GateMode::kPerHead ? ", " + dim("Hq", hq) : "") + ", 3]",
       c.gate_mode == GateMode::kPerHead ? "--seqlens, --heads-q" : "--seqlens",
       {n, c.gate_mode == GateMode::kPerHead ? hq : 1, 3}, 3, 2, element},
      {"k_cmp [" + dim("N/s", ncmp) + ", " + dim("Hkv", hkv) + ", " + dim("Dqk", dqk) + "]",
       "--seqlens, --cmp-stride, --heads-kv, --head-dim", {ncmp, hkv, dqk}, 4, 0, element},
      {"v_cmp [" + dim("N/s", ncmp) + ", " + dim("Hkv", hkv) + ", " + dim("Dv", dv) + "]",
       "--seqlens, --cmp-stride, --heads-kv, " + dv_option, {ncmp, hkv, dv}, 3, 0, element},
      {"lse [" + dim("Hq", hq) + ", " + dim("N", n) + "]", "--seqlens, --heads-q", {hq, n}, 6, 0, 4},
      {"topk [" + dim("Hkv", hkv) + ", " + dim("N", n) + ", " + dim("K", topk) + "]", "--seqlens, --heads-kv, --topk",
       {hkv, n, topk}, 2, 0, 4},
  };
  if (linear) {
    terms.push_back({"w_k [" + dim("Hkv", hkv) + ", " + dim("l*Dqk", l * dqk) + ", " + dim("Dqk", dqk) + "]",
                     "--heads-kv, --cmp-len, --head-dim", {hkv, l, dqk, dqk}, 3, 2, element, 12});
    terms.push_back({"w_v [" + dim("Hkv", hkv) + ", " + dim("l*Dv", l * dv) + ", " + dim("Dv", dv) + "]",
                     "--heads-kv, --cmp-len, " + dv_option, {hkv, l, dv, dv}, 2, 2, element, 12});
  }
  DemoFootprint f;
  std::uint64_t largest = 0, largest_elements = 0;
  bool* overflow = &f.overflow;
  for (const Term& t : terms) {
    std::uint64_t elements = 1;
    for (const std::uint64_t size : t.sizes) elements = mul(elements, size, overflow);
    const std::uint64_t bytes = mul(elements, t.bytes, overflow);
    f.buffers = add(f.buffers, mul(bytes, t.copies, overflow), overflow);
    const std::uint64_t reference_copies = t.reference_copies > 0 ? t.reference_copies : t.copies;
    f.reference = add(f.reference, mul(mul(elements, 4, overflow), reference_copies, overflow), overflow);
    f.staging = add(f.staging, mul(mul(elements, 8, overflow), t.staged, overflow), overflow);
    if (f.largest.empty() || bytes > largest) {
      largest = bytes;
      largest_elements = elements;
      f.largest = t.name;
      f.largest_options = t.options;
    }
  }
  // In flight while the largest tensor is uploaded or downloaded: its encoded bytes and fp64 values.
  f.staging = add(f.staging, mul(largest_elements, 8 + element, overflow), overflow);
  return f;
}

std::uint64_t DemoFootprint::host_bytes(bool cpu_runs) const {
  bool ignored = false;
  return cpu_runs ? add(add(staging, buffers, &ignored), reference, &ignored) : staging;
}

std::uint64_t host_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return 0;
  bool ignored = false;
  return mul(static_cast<std::uint64_t>(pages), static_cast<std::uint64_t>(page), &ignored);
}

std::string format_bytes(std::uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 6) {
    v /= 1024.0;
    ++u;
  }
  char text[32];
  std::snprintf(text, sizeof text, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return text;
}

}  // namespace fsa::tool
