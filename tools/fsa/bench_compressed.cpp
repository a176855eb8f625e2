// `fsa bench compressed`: times the GPU compression, compressed attention and block selection on
// the canonical configurations (bench_util.hpp), phase by phase: compression of k and v
// (forward), compressed attention forward + selection, and the backward of compressed attention
// and compression (the phases docs/kernels/cmp_attn.md sets its floors for).
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>

#include "bench.hpp"
#include "bench_util.hpp"
#include "buffer.hpp"
#include "fsa/fsa.hpp"

namespace fsa::tool {

#ifdef FSA_WITH_CUDA
namespace {

// Device buffers of one configuration, filled with random values (weights scaled like the module's
// initialisation so the compressed keys and the softmax stay in a realistic range).
struct CompressedProblem {
  Buffer cu, cu_cmp, q, k, v, w_k, w_v, pe_k, k_cmp, v_cmp, o, lse, topk;
  Buffer d_o, dq, dk_cmp, dv_cmp, dk, dv, dw_k, dw_v, dpe_k;
  std::string error;

  CompressedProblem(const BenchConfig& c, const NsaConfig& config, int d) {
    const Device gpu = Device::cuda(0);
    const std::int64_t n = total_tokens(c), hq = c.heads_kv * c.group, hkv = c.heads_kv;
    const std::int64_t ncmp = max_compressed_tokens(n, config), l = config.cmp_len;
    const auto nseq = static_cast<std::int64_t>(c.seqlens.size());
    auto make = [&](DType dtype, std::vector<std::int64_t> sizes) { return Buffer(gpu, dtype, std::move(sizes), &error); };
    cu = make(DType::kInt32, {nseq + 1});
    cu_cmp = make(DType::kInt32, {nseq + 1});
    q = make(DType::kBFloat16, {n, hq, d});
    k = make(DType::kBFloat16, {n, hkv, d});
    v = make(DType::kBFloat16, {n, hkv, d});
    w_k = make(DType::kBFloat16, {hkv, l * d, d});
    w_v = make(DType::kBFloat16, {hkv, l * d, d});
    pe_k = make(DType::kBFloat16, {hkv, l, d});
    k_cmp = make(DType::kBFloat16, {ncmp, hkv, d});
    v_cmp = make(DType::kBFloat16, {ncmp, hkv, d});
    o = make(DType::kBFloat16, {n, hq, d});
    lse = make(DType::kFloat32, {hq, n});
    topk = make(DType::kInt32, {hkv, n, config.topk});
    d_o = make(DType::kBFloat16, {n, hq, d});
    dq = make(DType::kBFloat16, {n, hq, d});
    dk_cmp = make(DType::kBFloat16, {ncmp, hkv, d});
    dv_cmp = make(DType::kBFloat16, {ncmp, hkv, d});
    dk = make(DType::kBFloat16, {n, hkv, d});
    dv = make(DType::kBFloat16, {n, hkv, d});
    dw_k = make(DType::kBFloat16, {hkv, l * d, d});
    dw_v = make(DType::kBFloat16, {hkv, l * d, d});
    dpe_k = make(DType::kBFloat16, {hkv, l, d});
    if (!error.empty()) return;
    std::mt19937_64 rng(11);
    std::normal_distribution<double> normal(0, 1);
    auto random = [&](std::int64_t count, double scale) {
      std::vector<double> values(static_cast<std::size_t>(count));
      for (double& x : values) x = scale * normal(rng);
      return values;
    };
    std::vector<double> cu_host{0};
    for (std::int64_t s : c.seqlens) cu_host.push_back(cu_host.back() + static_cast<double>(s));
    const double w_scale = 1.0 / std::sqrt(static_cast<double>(l * d));
    Status s = cu.upload(cu_host);
    if (s.is_ok()) s = q.upload(random(q.numel(), 1.0));
    if (s.is_ok()) s = k.upload(random(k.numel(), 1.0));
    if (s.is_ok()) s = v.upload(random(v.numel(), 1.0));
    if (s.is_ok()) s = w_k.upload(random(w_k.numel(), w_scale));
    if (s.is_ok()) s = w_v.upload(random(w_v.numel(), w_scale));
    if (s.is_ok()) s = pe_k.upload(random(pe_k.numel(), 0.1));
    if (s.is_ok()) s = d_o.upload(random(d_o.numel(), 1.0));
    if (s.is_ok()) s = compressed_cu_seqlens(config, cu.view(), cu_cmp.view());
    if (!s.is_ok()) error = s.to_string();
  }
};

}  // namespace

int run_bench_compressed(const BenchOptions& options) {
  CudaDeviceInfo info;
  if (!bench_device(&info)) return 2;
  BenchOutput out("compressed", info, options, "config,phase,ms,min,max,peak_workspace_mib");
  NsaConfig config;
  const int d = 128;
  int failures = 0;
  BenchWorkspace workspace;
  for (const BenchConfig& c : canonical_configs()) {
    if (!selected(options.configs, c.name)) continue;
    CompressedProblem p(c, config, d);
    if (!p.error.empty()) {
      std::fprintf(stderr, "%s: %s\n", c.name.c_str(), p.error.c_str());
      ++failures;
      continue;
    }
    const TensorView cu = p.cu.view(), cu_cmp = p.cu_cmp.view();
    auto compress_kv = [&] {
      const TensorView k = p.k.view(), v = p.v.view(), wk = p.w_k.view(), wv = p.w_v.view(), pe = p.pe_k.view();
      FSA_RETURN_IF_ERROR(compress_forward(
          config, k, cu, cu_cmp, wk, pe, p.k_cmp.view(),
          workspace.take(compress_forward_workspace_bytes(config, k, cu, cu_cmp, wk, pe, p.k_cmp.view()))));
      return compress_forward(
          config, v, cu, cu_cmp, wv, TensorView{}, p.v_cmp.view(),
          workspace.take(compress_forward_workspace_bytes(config, v, cu, cu_cmp, wv, TensorView{}, p.v_cmp.view())));
    };
    auto attention = [&] {
      return cmp_attn_forward(config, p.q.view(), p.k_cmp.view(), p.v_cmp.view(), cu, cu_cmp, p.o.view(),
                              p.lse.view());
    };
    auto selection = [&] {
      return select_blocks(config, p.q.view(), p.k_cmp.view(), p.lse.view(), cu, cu_cmp, p.topk.view());
    };
    auto backward = [&] {
      const TensorView q = p.q.view(), kc = p.k_cmp.view(), vc = p.v_cmp.view(), o = p.o.view(), lse = p.lse.view();
      const TensorView d_o = p.d_o.view(), dq = p.dq.view(), dkc = p.dk_cmp.view(), dvc = p.dv_cmp.view();
      FSA_RETURN_IF_ERROR(cmp_attn_backward(
          config, q, kc, vc, cu, cu_cmp, o, lse, d_o, dq, dkc, dvc,
          workspace.take(cmp_attn_backward_workspace_bytes(config, q, kc, vc, cu, cu_cmp, o, lse, d_o, dq, dkc, dvc))));
      const TensorView k = p.k.view(), wk = p.w_k.view(), pe = p.pe_k.view(), dk = p.dk.view(), dwk = p.dw_k.view(),
                       dpe = p.dpe_k.view();
      FSA_RETURN_IF_ERROR(compress_backward(
          config, k, cu, cu_cmp, wk, pe, dkc, dk, dwk, dpe,
          workspace.take(compress_backward_workspace_bytes(config, k, cu, cu_cmp, wk, pe, dkc, dk, dwk, dpe))));
      const TensorView v = p.v.view(), wv = p.w_v.view(), dv = p.dv.view(), dwv = p.dw_v.view();
      return compress_backward(config, v, cu, cu_cmp, wv, TensorView{}, dvc, dv, dwv, TensorView{},
                               workspace.take(compress_backward_workspace_bytes(config, v, cu, cu_cmp, wv, TensorView{},
                                                                                dvc, dv, dwv, TensorView{})));
    };
    const std::vector<std::pair<std::string, std::function<Status()>>> phases = {
        {"compress k+v fwd", compress_kv},
        {"cmp attn fwd", attention},
        {"select", selection},
        {"cmp attn fwd + select", [&] {
           FSA_RETURN_IF_ERROR(attention());
           return selection();
         }},
        {"cmp attn bwd + compress bwd", backward},
    };
    for (const auto& [name, body] : phases) {
      Timing t;
      if (!time_phase(c.name, name, options.iterations, body, &t, &workspace)) {
        ++failures;
        continue;
      }
      char line[256];
      std::snprintf(line, sizeof line, "%s,%s,%.3f,%.3f,%.3f,%.0f", c.name.c_str(), name.c_str(), t.median, t.min,
                    t.max, workspace.peak_mib());
      out.row(line);
    }
  }
  return failures == 0 ? 0 : 1;
}

#endif  // FSA_WITH_CUDA

}  // namespace fsa::tool
