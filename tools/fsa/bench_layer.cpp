// `fsa bench layer`: the whole NSA layer on the GPU against dense causal attention measured in the
// same run. For each canonical configuration (bench_util.hpp): every forward and
// backward phase through the public ops, the layer entry points (nsa_forward, nsa_backward), and
// the library's own dense causal attention (the sliding-window kernels with a window as long as
// the longest sequence) forward and forward + backward. Then a sweep of sequence lengths at G = 4
// and G = 16 timing NSA and dense forward + backward, and the length where NSA becomes faster.
// Memory: peak_mib is every buffer the bench holds plus the largest workspace a phase asked for;
// saved_mib and workspace_mib are the layer's memory beyond its inputs, outputs and gradients (the
// saved activations, the phase's workspace). The long configurations (S256K-G4, S512K-G4, S1M-G4:
// one sequence, run only when named) time the layer alone, with --workspace-cap as the cap.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "bench.hpp"
#include "bench_util.hpp"
#include "buffer.hpp"
#include "fsa/fsa.hpp"

namespace fsa::tool {

#ifdef FSA_WITH_CUDA
namespace {

// Device buffers of one problem: the layer's inputs and gradients, and each phase's outputs.
class LayerProblem {
 public:
  // `phases`: also the buffers of the phase-by-phase runs and of dense attention.
  LayerProblem(const BenchConfig& c, const NsaConfig& config, int d, const NsaLayerOptions& options,
               BenchWorkspace* workspace, bool phases)
      : config_(config), options_(options), ws_(workspace) {
    const std::int64_t n = total_tokens(c), hq = c.heads_kv * c.group, hkv = c.heads_kv;
    const std::int64_t ncmp = max_compressed_tokens(n, config), l = config.cmp_len;
    const auto nseq = static_cast<std::int64_t>(c.seqlens.size());
    const DType bf16 = DType::kBFloat16;
    make("cu", DType::kInt32, {nseq + 1});
    make("cu_cmp", DType::kInt32, {nseq + 1});
    // The layer's inputs, output and gradients.
    for (const char* name : {"q", "dq"}) make(name, bf16, {n, hq, d});
    for (const char* name : {"k", "v", "dk", "dv"}) make(name, bf16, {n, hkv, d});
    for (const char* name : {"w_k", "w_v", "dw_k", "dw_v"}) make(name, bf16, {hkv, l * d, d});
    for (const char* name : {"pe_k", "dpe_k"}) make(name, bf16, {hkv, l, d});
    for (const char* name : {"o", "d_o"}) make(name, bf16, {n, hq, d});
    for (const char* name : {"gates", "d_gates"}) make(name, bf16, {n, hq, 3});
    if (phases) {
      for (const char* name : {"q_rot", "d_q_part"}) make(name, bf16, {n, hq, d});
      make("k_rot", bf16, {n, hkv, d});
      for (const char* name : {"k_cmp", "v_cmp", "dk_cmp", "dv_cmp"}) make(name, bf16, {ncmp, hkv, d});
      for (const char* name : {"o_cmp", "o_slc", "o_swa", "d_cmp", "d_slc", "d_swa"}) make(name, bf16, {n, hq, d});
      for (const char* name : {"lse_cmp", "lse_slc", "lse_swa"}) make(name, DType::kFloat32, {hq, n});
      make("topk", DType::kInt32, {hkv, n, config.topk});
    }
    if (!error_.empty()) return;
    make("saved", DType::kUInt8, {static_cast<std::int64_t>(saved_bytes())});
    if (!error_.empty()) return;

    FastRandom rng(17);
    std::vector<double> cu_host{0};
    for (std::int64_t s : c.seqlens) cu_host.push_back(cu_host.back() + static_cast<double>(s));
    const double w_scale = 1.0 / std::sqrt(static_cast<double>(l * d));
    Status s = buffers_["cu"].upload(cu_host);
    for (const auto& [name, scale] : std::vector<std::pair<std::string, double>>{
             {"q", 1.0}, {"k", 1.0}, {"v", 1.0}, {"d_o", 1.0}, {"w_k", w_scale}, {"w_v", w_scale}, {"pe_k", 0.1}})
      if (s.is_ok()) s = buffers_[name].upload_repeating(rng.values(block(buffers_[name].numel()), scale));
    // Gates in (0.05, 0.95), the range of the module's sigmoid gates.
    if (s.is_ok())
      s = buffers_["gates"].upload_repeating(rng.values(block(buffers_["gates"].numel()), 0.45 / std::sqrt(3.0), 0.5));
    if (s.is_ok() && phases) s = compressed_cu_seqlens(config, view("cu"), view("cu_cmp"));
    if (!s.is_ok()) error_ = s.to_string();
  }

  const std::string& error() const { return error_; }
  // Random values for every element up to 2^29 elements (every canonical configuration), beyond
  // that a block of 2^26 repeated (S1M-G4's q alone is 2^31 elements, 16 GiB of host doubles).
  static std::int64_t block(std::int64_t numel) {
    return numel <= (std::int64_t{1} << 29) ? numel : std::int64_t{1} << 26;
  }
  std::size_t saved_bytes() const { return nsa_saved_bytes(config_, NsaLayerShape::of(inputs()), options_); }
  double bytes_mib() const {
    double bytes = 0;
    for (const auto& [name, b] : buffers_) bytes += static_cast<double>(b.bytes());
    return bytes / (1 << 20);
  }
  TensorView view(const std::string& name) const { return buffers_.at(name).view(); }

  NsaLayerInputs inputs() const {
    NsaLayerInputs in;
    in.q = view("q");
    in.k = view("k");
    in.v = view("v");
    in.cu_seqlens = view("cu");
    in.w_k = view("w_k");
    in.pe_k = view("pe_k");
    in.w_v = view("w_v");
    in.gates = view("gates");
    return in;
  }
  NsaLayerGrads grads() const {
    return {view("dq"), view("dk"), view("dv"), view("dw_k"), view("dpe_k"), view("dw_v"), view("d_gates")};
  }

  // The phases of the layer, each through its public op (with the bench's workspace), in the
  // layer's order.
  std::vector<std::pair<std::string, std::function<Status()>>> phases() const {
    const NsaConfig& c = config_;
    const SlcOptions& slc = options_.selected;
    BenchWorkspace& ws = *ws_;
    const TensorView cu = view("cu"), cu_cmp = view("cu_cmp");
    const TensorView q = view("q_rot"), k = view("k_rot"), kc = view("k_cmp"), vc = view("v_cmp"), v = view("v");
    const TensorView o_cmp = view("o_cmp"), lse_cmp = view("lse_cmp"), o_slc = view("o_slc"), lse_slc = view("lse_slc");
    const TensorView o_swa = view("o_swa"), lse_swa = view("lse_swa"), topk = view("topk");
    const TensorView dq = view("dq"), dk = view("dk"), dv = view("dv"), dkc = view("dk_cmp"), dvc = view("dv_cmp");
    return {
        {"fwd: compress k+v", [=, this, &ws] {
           const TensorView kr = view("k"), wk = view("w_k"), pe = view("pe_k"), wv = view("w_v");
           FSA_RETURN_IF_ERROR(compress_forward(
               c, kr, cu, cu_cmp, wk, pe, kc, ws.take(compress_forward_workspace_bytes(c, kr, cu, cu_cmp, wk, pe, kc))));
           return compress_forward(
               c, v, cu, cu_cmp, wv, TensorView{}, vc,
               ws.take(compress_forward_workspace_bytes(c, v, cu, cu_cmp, wv, TensorView{}, vc)));
         }},
        {"fwd: rope q/k/k_cmp", [=, this] {
           FSA_RETURN_IF_ERROR(rope_forward(c.rope, view("q"), cu, 1, q));
           FSA_RETURN_IF_ERROR(rope_forward(c.rope, view("k"), cu, 1, k));
           return rope_forward(c.rope, kc, cu_cmp, c.cmp_stride, kc);
         }},
        {"fwd: cmp attn", [=] { return cmp_attn_forward(c, q, kc, vc, cu, cu_cmp, o_cmp, lse_cmp); }},
        {"fwd: select", [=] { return select_blocks(c, q, kc, lse_cmp, cu, cu_cmp, topk); }},
        {"fwd: slc attn", [=, &ws] {
           return slc_attn_forward(
               c, q, k, v, topk, cu, o_slc, lse_slc, slc, TensorView{},
               ws.take(slc_attn_forward_workspace_bytes(c, q, k, v, topk, cu, o_slc, lse_slc, slc)));
         }},
        {"fwd: swa", [=] { return swa_forward(c, q, k, v, cu, o_swa, lse_swa); }},
        {"fwd: combine", [=, this] { return combine_forward(c, view("gates"), o_cmp, o_slc, o_swa, view("o")); }},
        {"bwd: combine", [=, this] {
           return combine_backward(c, view("gates"), o_cmp, o_slc, o_swa, view("d_o"), view("d_gates"),
                                   view("d_cmp"), view("d_slc"), view("d_swa"));
         }},
        {"bwd: swa", [=, this, &ws] {
           const TensorView d = view("d_swa");
           return swa_backward(c, q, k, v, cu, o_swa, lse_swa, d, dq, dk, dv,
                               ws.take(swa_backward_workspace_bytes(c, q, k, v, cu, o_swa, lse_swa, d, dq, dk, dv)));
         }},
        {"bwd: slc attn", [=, this, &ws] {
           const TensorView d = view("d_slc");
           return slc_attn_backward(
               c, q, k, v, topk, cu, o_slc, lse_slc, d, dq, dk, dv, slc, TensorView{},
               ws.take(slc_attn_backward_workspace_bytes(c, q, k, v, topk, cu, o_slc, lse_slc, d, dq, dk, dv, slc)));
         }},
        {"bwd: cmp attn", [=, this, &ws] {
           const TensorView d = view("d_cmp");
           return cmp_attn_backward(
               c, q, kc, vc, cu, cu_cmp, o_cmp, lse_cmp, d, dq, dkc, dvc,
               ws.take(cmp_attn_backward_workspace_bytes(c, q, kc, vc, cu, cu_cmp, o_cmp, lse_cmp, d, dq, dkc, dvc)));
         }},
        {"bwd: compress k+v", [=, this, &ws] {
           const TensorView kr = view("k"), wk = view("w_k"), pe = view("pe_k"), dwk = view("dw_k"), dpe = view("dpe_k");
           FSA_RETURN_IF_ERROR(compress_backward(
               c, kr, cu, cu_cmp, wk, pe, dkc, dk, dwk, dpe,
               ws.take(compress_backward_workspace_bytes(c, kr, cu, cu_cmp, wk, pe, dkc, dk, dwk, dpe))));
           const TensorView wv = view("w_v"), dwv = view("dw_v");
           return compress_backward(
               c, v, cu, cu_cmp, wv, TensorView{}, dvc, dv, dwv, TensorView{},
               ws.take(compress_backward_workspace_bytes(c, v, cu, cu_cmp, wv, TensorView{}, dvc, dv, dwv, TensorView{})));
         }},
    };
  }

  std::size_t forward_workspace_bytes() const {
    return nsa_forward_workspace_bytes(config_, NsaLayerShape::of(inputs()), true, options_);
  }
  std::size_t backward_workspace_bytes() const {
    return nsa_backward_workspace_bytes(config_, NsaLayerShape::of(inputs()), options_);
  }
  Status layer_forward() const {
    return nsa_forward(config_, inputs(), view("o"), view("saved"), options_, ws_->take(forward_workspace_bytes()));
  }
  Status layer_backward() const {
    return nsa_backward(config_, inputs(), view("saved"), view("d_o"), grads(), options_,
                        ws_->take(backward_workspace_bytes()));
  }

  // Dense causal attention over the raw q, k, v: the window covers every earlier token.
  NsaConfig dense_config(std::int64_t longest) const {
    NsaConfig dense = config_;
    dense.window = static_cast<int>(longest);
    return dense;
  }
  Status dense_forward(const NsaConfig& dense) const {
    return swa_forward(dense, view("q"), view("k"), view("v"), view("cu"), view("o_swa"), view("lse_swa"));
  }
  Status dense_backward(const NsaConfig& dense) const {
    const TensorView q = view("q"), k = view("k"), v = view("v"), cu = view("cu"), o = view("o_swa");
    const TensorView lse = view("lse_swa"), d_o = view("d_o"), dq = view("dq"), dk = view("dk"), dv = view("dv");
    return swa_backward(dense, q, k, v, cu, o, lse, d_o, dq, dk, dv,
                        ws_->take(swa_backward_workspace_bytes(dense, q, k, v, cu, o, lse, d_o, dq, dk, dv)));
  }

 private:
  void make(const std::string& name, DType dtype, std::vector<std::int64_t> sizes) {
    if (!error_.empty()) return;
    buffers_[name] = Buffer(Device::cuda(0), dtype, std::move(sizes), &error_);
    if (!error_.empty()) error_ = name + ": " + error_;
  }

  NsaConfig config_;
  NsaLayerOptions options_;
  BenchWorkspace* ws_;
  std::map<std::string, Buffer> buffers_;
  std::string error_;
};

// Dense causal attention FLOPs (forward: two GEMMs over the causal half; backward: five).
double dense_fwd_flop(const BenchConfig& c, int d) {
  double pairs = 0;
  for (std::int64_t s : c.seqlens) pairs += 0.5 * static_cast<double>(s) * static_cast<double>(s + 1);
  return 4.0 * d * pairs * c.heads_kv * c.group;
}

}  // namespace

int run_bench_layer(const BenchOptions& options) {
  CudaDeviceInfo info;
  if (!bench_device(&info)) return 2;
  BenchOutput out("layer", info, options,
                  "config,phase,ms,min,max,tflops,peak_mib,saved_mib,workspace_mib");
  const NsaConfig config;  // the defaults: l=32, s=16, B=64, K=16, I=1, L=2, w=512
  const int d = 128;
  int failures = 0;
  // NSA and dense forward + backward per sweep length, for the break-even summary.
  std::map<int, std::vector<std::pair<std::int64_t, std::pair<double, double>>>> sweep_times;

  NsaLayerOptions layer_options;
  layer_options.selected.workspace_cap = options.workspace_cap;
  BenchWorkspace workspace;
  std::vector<BenchConfig> configs = canonical_configs();
  for (const BenchConfig& s : sweep_configs()) configs.push_back(s);
  const std::vector<BenchConfig> longs = long_configs();
  for (const BenchConfig& s : longs) configs.push_back(s);
  for (const BenchConfig& c : configs) {
    const bool sweep = c.name.rfind("SWEEP", 0) == 0;
    const bool is_long = std::any_of(longs.begin(), longs.end(), [&](const BenchConfig& l) { return l.name == c.name; });
    // The long configurations run only when named.
    if (is_long ? !selected(options.configs, c.name) || options.configs.empty() : !selected(options.configs, c.name))
      continue;
    LayerProblem p(c, config, d, layer_options, &workspace, !sweep && !is_long);
    if (!p.error().empty()) {
      std::fprintf(stderr, "%s: %s\n", c.name.c_str(), p.error().c_str());
      ++failures;
      continue;
    }
    const NsaConfig dense = p.dense_config(*std::max_element(c.seqlens.begin(), c.seqlens.end()));
    std::vector<std::pair<std::string, std::function<Status()>>> timed;
    if (!sweep && !is_long) timed = p.phases();
    timed.emplace_back("layer fwd", [&] { return p.layer_forward(); });
    timed.emplace_back("layer bwd", [&] { return p.layer_backward(); });
    timed.emplace_back("layer fwd+bwd", [&] {
      FSA_RETURN_IF_ERROR(p.layer_forward());
      return p.layer_backward();
    });
    if (!sweep && !is_long) timed.emplace_back("dense fwd", [&] { return p.dense_forward(dense); });
    if (!is_long)
      timed.emplace_back("dense fwd+bwd", [&] {
        FSA_RETURN_IF_ERROR(p.dense_forward(dense));
        return p.dense_backward(dense);
      });
    std::map<std::string, double> median;
    for (const auto& [name, body] : timed) {
      Timing t;
      if (!time_phase(c.name, name, options.iterations, body, &t, &workspace)) {
        ++failures;
        continue;
      }
      median[name] = t.median;
      const double flop = name == "dense fwd"       ? dense_fwd_flop(c, d)
                          : name == "dense fwd+bwd" ? 3.5 * dense_fwd_flop(c, d)
                                                    : 0.0;
      const bool layer = name.rfind("layer", 0) == 0;
      const double saved_mib = layer ? static_cast<double>(p.saved_bytes()) / (1 << 20) : 0.0;
      char line[320];
      std::snprintf(line, sizeof line, "%s,%s,%.3f,%.3f,%.3f,%.1f,%.0f,%.0f,%.0f", c.name.c_str(), name.c_str(),
                    t.median, t.min, t.max, flop > 0 ? flop / (t.median * 1e9) : 0.0,
                    workspace.peak_mib() + p.bytes_mib(), saved_mib, workspace.peak_mib());
      out.row(line);
    }
    if (sweep && median.count("layer fwd+bwd") && median.count("dense fwd+bwd"))
      sweep_times[c.group].push_back({c.seqlens[0], {median["layer fwd+bwd"], median["dense fwd+bwd"]}});
  }
  // Break-even: the first swept length where NSA forward + backward beats dense, interpolated
  // geometrically between it and the previous length.
  for (const auto& [g, points] : sweep_times) {
    std::string verdict = "NSA slower than dense at every swept length";
    for (std::size_t i = 0; i < points.size(); ++i) {
      const double ratio = points[i].second.first / points[i].second.second;
      if (ratio >= 1.0) continue;
      if (i == 0) {
        verdict = "NSA faster already at " + std::to_string(points[i].first) + " tokens";
      } else {
        const double r0 = points[i - 1].second.first / points[i - 1].second.second;
        const double x0 = std::log(static_cast<double>(points[i - 1].first));
        const double x1 = std::log(static_cast<double>(points[i].first));
        const double t = std::log(r0) / (std::log(r0) - std::log(ratio));
        verdict = "break-even ~" + std::to_string(static_cast<long long>(std::exp(x0 + t * (x1 - x0)))) + " tokens";
      }
      break;
    }
    char line[200];
    std::snprintf(line, sizeof line, "BREAK-EVEN-G%d,%s,0,0,0,0,0,0,0", g, verdict.c_str());
    out.row(line);
  }
  return failures == 0 ? 0 : 1;
}

#endif  // FSA_WITH_CUDA

}  // namespace fsa::tool
