#include "bench.hpp"

#include <algorithm>
#include <cstdio>
#include <random>

#include "bench_util.hpp"
#include "buffer.hpp"
#include "fsa/fsa.hpp"

namespace fsa::tool {

std::vector<std::string> bench_config_names(const std::string& command) {
  std::vector<BenchConfig> configs = canonical_configs();
  if (command == "layer") {
    for (const BenchConfig& c : sweep_configs()) configs.push_back(c);
    for (const BenchConfig& c : long_configs()) configs.push_back(c);
  }
  std::vector<std::string> names;
  for (const BenchConfig& c : configs) names.push_back(c.name);
  return names;
}

#ifdef FSA_WITH_CUDA
namespace {

// Selections with the statistics of the peers' benchmarks: the forced blocks (block 0 and the last
// two, the query's own included) plus distinct blocks drawn uniformly from the rest ("random"), or
// the most recent earlier blocks ("local", where neighbouring tokens share their selections).
std::vector<double> make_topk(const BenchConfig& c, const NsaConfig& config, const std::string& pattern,
                              std::int64_t* attended_keys) {
  std::int64_t n_total = 0;
  for (std::int64_t s : c.seqlens) n_total += s;
  const int K = config.topk, B = config.block_size;
  std::vector<double> topk(static_cast<std::size_t>(c.heads_kv * n_total * K), -1.0);
  std::mt19937_64 rng(12345);
  *attended_keys = 0;
  std::vector<int> chosen;
  for (int g = 0; g < c.heads_kv; ++g) {
    std::int64_t start = 0;
    for (std::int64_t n : c.seqlens) {
      for (std::int64_t t = 0; t < n; ++t) {
        const int bq = static_cast<int>(t / B);
        chosen.clear();
        for (int j = 0; j < config.init_blocks && j <= bq; ++j) chosen.push_back(j);
        for (int j = std::max(0, bq - config.local_blocks + 1); j <= bq; ++j)
          if (std::find(chosen.begin(), chosen.end(), j) == chosen.end()) chosen.push_back(j);
        const int want = std::min(K, bq + 1);
        if (pattern == "local") {
          for (int j = bq; j >= 0 && static_cast<int>(chosen.size()) < want; --j)
            if (std::find(chosen.begin(), chosen.end(), j) == chosen.end()) chosen.push_back(j);
        } else {
          std::uniform_int_distribution<int> pick(0, bq);
          while (static_cast<int>(chosen.size()) < want) {
            const int j = pick(rng);
            if (std::find(chosen.begin(), chosen.end(), j) == chosen.end()) chosen.push_back(j);
          }
        }
        std::sort(chosen.begin(), chosen.end());
        double* row = topk.data() + (g * n_total + start + t) * K;
        for (std::size_t i = 0; i < chosen.size(); ++i) {
          row[i] = chosen[i];
          *attended_keys += std::min<std::int64_t>(B, t + 1 - static_cast<std::int64_t>(chosen[i]) * B);
        }
      }
      start += n;
    }
  }
  return topk;
}

// The share of (token, block) pairs that the split sends to the tile kernel: pairs whose block was
// picked by at least `threshold` tokens of the token's query tile, in tiles with at least
// `min_dense` such blocks (the plan's rules, computed here from the same rows to report them).
// Rows are sorted and distinct, as make_topk writes them.
double dense_fraction(const BenchConfig& c, const NsaConfig& config, const std::vector<double>& topk, int threshold,
                      int min_dense) {
  std::int64_t n_total = 0;
  for (std::int64_t s : c.seqlens) n_total += s;
  const int K = config.topk, B = config.block_size;
  std::int64_t pairs = 0, dense = 0;
  std::vector<int> count;
  for (int g = 0; g < c.heads_kv; ++g) {
    std::int64_t start = 0;
    for (std::int64_t n : c.seqlens) {
      for (std::int64_t t0 = 0; t0 < n; t0 += B) {
        const std::int64_t t1 = std::min<std::int64_t>(n, t0 + B);
        count.assign(static_cast<std::size_t>(t0 / B + 1), 0);
        int dense_blocks = 0;
        for (int pass = 0; pass < 2; ++pass)
          for (std::int64_t t = t0; t < t1; ++t)
            for (int k = 0; k < K; ++k) {
              const double j = topk[static_cast<std::size_t>((g * n_total + start + t) * K + k)];
              if (j < 0) continue;
              if (pass == 0) {
                dense_blocks += ++count[static_cast<std::size_t>(j)] == threshold ? 1 : 0;
              } else {
                ++pairs;
                dense += dense_blocks >= min_dense && count[static_cast<std::size_t>(j)] >= threshold ? 1 : 0;
              }
            }
      }
      start += n;
    }
  }
  return pairs > 0 ? static_cast<double>(dense) / static_cast<double>(pairs) : 0.0;
}

SlcOptions slc_options(const std::string& path, int dense_threshold) {
  SlcOptions o;
  o.dense_threshold = dense_threshold;
  if (path == "kv-outer") o.path = SlcPath::kKvOuter;
  if (path == "split") o.path = SlcPath::kSplit;
  if (path == "query-outer") o.path = SlcPath::kQueryOuter;
  o.deterministic = path == "deterministic";  // the adaptive forward, the deterministic backward
  return o;
}

}  // namespace

int run_bench_selected(const BenchOptions& options) {
  CudaDeviceInfo info;
  if (!bench_device(&info)) return 2;
  BenchOutput out("selected", info, options,
                  "config,pattern,path,fwd_ms,fwd_min,fwd_max,fwd_tflops,bwd_ms,bwd_min,bwd_max,bwd_tflops,"
                  "peak_workspace_mib,dense_pairs_pct");
  const std::vector<std::string> patterns =
      options.patterns.empty() ? std::vector<std::string>{"random", "local"} : options.patterns;
  const std::vector<std::string> paths = options.paths.empty() ? std::vector<std::string>{"auto"} : options.paths;
  NsaConfig config;
  int failures = 0;
  BenchWorkspace workspace;
  for (const BenchConfig& c : canonical_configs()) {
    if (!options.configs.empty() &&
        std::find(options.configs.begin(), options.configs.end(), c.name) == options.configs.end())
      continue;
    std::int64_t n = 0;
    for (std::int64_t s : c.seqlens) n += s;
    const int hq = c.heads_kv * c.group, d = 128;
    std::mt19937_64 rng(7);
    std::normal_distribution<double> normal(0, 1);
    auto random_values = [&](std::int64_t count) {
      std::vector<double> v(static_cast<std::size_t>(count));
      for (double& x : v) x = normal(rng);
      return v;
    };
    std::string error;
    const Device gpu = Device::cuda(0);
    Buffer q(gpu, DType::kBFloat16, {n, hq, d}, &error), k(gpu, DType::kBFloat16, {n, c.heads_kv, d}, &error),
        v(gpu, DType::kBFloat16, {n, c.heads_kv, d}, &error), o(gpu, DType::kBFloat16, {n, hq, d}, &error),
        d_o(gpu, DType::kBFloat16, {n, hq, d}, &error), dq(gpu, DType::kBFloat16, {n, hq, d}, &error),
        dk(gpu, DType::kBFloat16, {n, c.heads_kv, d}, &error), dv(gpu, DType::kBFloat16, {n, c.heads_kv, d}, &error),
        lse(gpu, DType::kFloat32, {hq, n}, &error),
        cu(gpu, DType::kInt32, {static_cast<std::int64_t>(c.seqlens.size()) + 1}, &error),
        topk(gpu, DType::kInt32, {c.heads_kv, n, config.topk}, &error);
    if (!error.empty()) {
      std::fprintf(stderr, "%s: %s\n", c.name.c_str(), error.c_str());
      ++failures;
      continue;
    }
    std::vector<double> cu_host{0};
    for (std::int64_t s : c.seqlens) cu_host.push_back(cu_host.back() + static_cast<double>(s));
    Status s = q.upload(random_values(q.numel()));
    if (s.is_ok()) s = k.upload(random_values(k.numel()));
    if (s.is_ok()) s = v.upload(random_values(v.numel()));
    if (s.is_ok()) s = d_o.upload(random_values(d_o.numel()));
    if (s.is_ok()) s = cu.upload(cu_host);
    for (const std::string& pattern : patterns) {
      std::int64_t keys = 0;
      const std::vector<double> topk_host = make_topk(c, config, pattern, &keys);
      if (s.is_ok()) s = topk.upload(topk_host);
      const int threshold = options.dense_threshold > 0 ? options.dense_threshold : config.block_size / 4;
      for (const std::string& path : paths) {
        SlcOptions slc = slc_options(path, options.dense_threshold);
        slc.workspace_cap = options.workspace_cap;
        // The split's share for the paths that plan it (auto also needs 4 dense blocks per tile).
        const double dense_pct = path == "auto" || path == "deterministic" ? 100.0 * dense_fraction(c, config, topk_host, threshold, 4)
                                 : path == "split" ? 100.0 * dense_fraction(c, config, topk_host, threshold, 1)
                                                   : 0.0;
        workspace.reset_peak();
        Status run_status = s;
        const Timing fwd = time_gpu(options.iterations, [&] {
          const std::size_t bytes = slc_attn_forward_workspace_bytes(config, q.view(), k.view(), v.view(), topk.view(),
                                                                     cu.view(), o.view(), lse.view(), slc);
          return slc_attn_forward(config, q.view(), k.view(), v.view(), topk.view(), cu.view(), o.view(),
                                  lse.view(), slc, TensorView{}, workspace.take(bytes));
        }, &run_status);
        Timing bwd{0, 0, 0};
        if (run_status.is_ok())
          bwd = time_gpu(options.iterations, [&] {
            const std::size_t bytes =
                slc_attn_backward_workspace_bytes(config, q.view(), k.view(), v.view(), topk.view(), cu.view(),
                                                  o.view(), lse.view(), d_o.view(), dq.view(), dk.view(), dv.view(), slc);
            return slc_attn_backward(config, q.view(), k.view(), v.view(), topk.view(), cu.view(), o.view(),
                                     lse.view(), d_o.view(), dq.view(), dk.view(), dv.view(), slc, TensorView{},
                                     workspace.take(bytes));
          }, &run_status);
        if (!run_status.is_ok()) {
          std::fprintf(stderr, "%s %s %s: %s\n", c.name.c_str(), pattern.c_str(), path.c_str(),
                       run_status.to_string().c_str());
          ++failures;
          continue;
        }
        // Useful FLOPs count only the attended keys (docs/measuring.md, useful TFLOP/s; the keys
        // of docs/semantics.md section 5): the forward's two GEMMs, the backward's five.
        const double per_key_fwd = 2.0 * (d + d) * hq / c.heads_kv;
        const double per_key_bwd = 2.0 * (3 * d + 2 * d) * hq / c.heads_kv;
        const double fwd_tflops = per_key_fwd * static_cast<double>(keys) / (fwd.median * 1e9);
        const double bwd_tflops = per_key_bwd * static_cast<double>(keys) / (bwd.median * 1e9);
        char line[512];
        std::snprintf(line, sizeof line, "%s,%s,%s,%.3f,%.3f,%.3f,%.1f,%.3f,%.3f,%.3f,%.1f,%.0f,%.1f",
                      c.name.c_str(), pattern.c_str(), path.c_str(), fwd.median, fwd.min, fwd.max, fwd_tflops,
                      bwd.median, bwd.min, bwd.max, bwd_tflops, workspace.peak_mib(), dense_pct);
        out.row(line);
      }
    }
  }
  return failures == 0 ? 0 : 1;
}

#endif  // FSA_WITH_CUDA

}  // namespace fsa::tool
