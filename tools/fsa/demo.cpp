#include "demo.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "buffer.hpp"

namespace fsa::tool {

namespace {

// A failed call, thrown out of DemoRun; run_demo decides whether the CPU fallback applies.
struct Failure {
  Status status;
};

struct PhaseTime {
  std::string name;
  double ms;
};

// Allocates, uploads and runs everything on one device; throws Failure on the first error.
class DemoRun {
 public:
  // `phases`: run every phase on its own before the whole layer (the demo's timed run); without,
  // only nsa_forward and nsa_backward (the check's runs).
  DemoRun(const ProblemSpec& spec, const ProblemData& data, Device device, bool phases = true)
      : spec_(spec), data_(data), device_(device), phases_(phases) {}

  void run() {
    upload_inputs();
    if (!phases_) {
      whole_layer();
      return;
    }
    if (device_.kind == DeviceKind::kCUDA) {
      // A first pass pays one-time costs (kernel attributes, the memory pool growing to the
      // workspaces' size); the times printed are those of the second.
      forward_phases();
      backward_phases();
      whole_layer();
      times_.clear();
    }
    forward_phases();
    backward_phases();
    whole_layer();
  }

  const std::vector<PhaseTime>& times() const { return times_; }
  const std::map<std::string, std::vector<double>>& results() const { return results_; }
  double layer_vs_phases_rel_diff() const { return layer_vs_phases_; }

 private:
  Buffer& make(const std::string& name, DType dtype, std::vector<std::int64_t> sizes) {
    std::string error;
    Buffer b(device_, dtype, std::move(sizes), &error);
    if (!error.empty()) throw Failure{FSA_ERROR(StatusCode::kCudaError, name + ": " + error)};
    return buffers_[name] = std::move(b);
  }
  TensorView view(const std::string& name) const { return buffers_.at(name).view(); }
  static void check(const Status& s) {
    if (!s.is_ok()) throw Failure{s};
  }
  void phase(const std::string& name, const std::function<Status()>& body) {
    check(synchronize(device_));
    const auto start = std::chrono::steady_clock::now();
    check(body());
    check(synchronize(device_));
    const auto stop = std::chrono::steady_clock::now();
    times_.push_back({name, std::chrono::duration<double, std::milli>(stop - start).count()});
  }
  void upload(const std::string& name, DType dtype, std::vector<std::int64_t> sizes, const std::vector<double>& v) {
    check(make(name, dtype, std::move(sizes)).upload(v));
  }
  std::vector<double> download(const std::string& name) const {
    std::vector<double> v;
    check(buffers_.at(name).download(&v));
    return v;
  }

  void upload_inputs() {
    const auto& c = spec_.config;
    const std::int64_t n = spec_.tokens(), hq = spec_.heads_q, hkv = spec_.heads_kv;
    const std::int64_t dqk = spec_.head_dim_qk, dv = spec_.head_dim_v, l = c.cmp_len;
    const DType dt = spec_.dtype;
    ncmp_ = max_compressed_tokens(n, c);
    std::vector<double> cu(data_.cu_seqlens.begin(), data_.cu_seqlens.end());
    upload("cu_seqlens", DType::kInt32, {static_cast<std::int64_t>(cu.size())}, cu);
    upload("q", dt, {n, hq, dqk}, data_.q);
    upload("k", dt, {n, hkv, dqk}, data_.k);
    upload("v", dt, {n, hkv, dv}, data_.v);
    if (c.compression == CompressionKind::kLinear) {
      upload("w_k", dt, {hkv, l * dqk, dqk}, data_.w_k);
      upload("w_v", dt, {hkv, l * dv, dv}, data_.w_v);
    }
    upload("pe_k", dt, {hkv, l, dqk}, data_.pe_k);
    if (c.gate_mode == GateMode::kPerHead) {
      upload("gates", dt, {n, hq, 3}, data_.gates);
    } else {
      upload("gates", dt, {n, 3}, data_.gates);
    }
    upload("d_o", dt, {n, hq, dv}, data_.d_o);
  }

  std::vector<std::int64_t> sizes_of(const std::string& name) const {
    const TensorView v = view(name);
    return std::vector<std::int64_t>(v.sizes.begin(), v.sizes.begin() + v.ndim);
  }

  TensorView optional(const std::string& name) const {
    return buffers_.count(name) ? view(name) : TensorView{};
  }

  void forward_phases() {
    const auto& c = spec_.config;
    const std::int64_t n = spec_.tokens(), hq = spec_.heads_q, hkv = spec_.heads_kv;
    const std::int64_t dqk = spec_.head_dim_qk, dv = spec_.head_dim_v;
    const DType dt = spec_.dtype;
    make("cu_cmp", DType::kInt32, {static_cast<std::int64_t>(data_.cu_seqlens.size())});
    for (const char* name : {"k_cmp", "kc_rot"}) make(name, dt, {ncmp_, hkv, dqk});
    make("v_cmp", dt, {ncmp_, hkv, dv});
    make("q_rot", dt, {n, hq, dqk});
    make("k_rot", dt, {n, hkv, dqk});
    for (const char* name : {"o_cmp", "o_slc", "o_swa", "o_phases", "o"}) make(name, dt, {n, hq, dv});
    for (const char* name : {"lse_cmp", "lse_slc", "lse_swa"}) make(name, DType::kFloat32, {hq, n});
    make("topk", DType::kInt32, {hkv, n, c.topk});
    const TensorView cu = view("cu_seqlens"), cu_cmp = view("cu_cmp");

    phase("compressed cu_seqlens", [&] { return compressed_cu_seqlens(c, cu, cu_cmp); });
    phase("compress k, v", [&] {
      FSA_RETURN_IF_ERROR(compress_forward(c, view("k"), cu, cu_cmp, optional("w_k"), view("pe_k"), view("k_cmp")));
      return compress_forward(c, view("v"), cu, cu_cmp, optional("w_v"), TensorView{}, view("v_cmp"));
    });
    phase("rope q, k, k_cmp", [&] {
      if (!c.rope.enabled) return Status::ok();
      FSA_RETURN_IF_ERROR(rope_forward(c.rope, view("q"), cu, 1, view("q_rot")));
      FSA_RETURN_IF_ERROR(rope_forward(c.rope, view("k"), cu, 1, view("k_rot")));
      return rope_forward(c.rope, view("k_cmp"), cu_cmp, c.cmp_stride, view("kc_rot"));
    });
    const std::string q = c.rope.enabled ? "q_rot" : "q", k = c.rope.enabled ? "k_rot" : "k",
                      kc = c.rope.enabled ? "kc_rot" : "k_cmp";
    phase("compressed attention", [&] {
      return cmp_attn_forward(c, view(q), view(kc), view("v_cmp"), cu, cu_cmp, view("o_cmp"), view("lse_cmp"));
    });
    phase("block selection", [&] {
      return select_blocks(c, view(q), view(kc), view("lse_cmp"), cu, cu_cmp, view("topk"));
    });
    phase("selected attention", [&] {
      return slc_attn_forward(c, view(q), view(k), view("v"), view("topk"), cu, view("o_slc"), view("lse_slc"));
    });
    phase("sliding window", [&] {
      return swa_forward(c, view(q), view(k), view("v"), cu, view("o_swa"), view("lse_swa"));
    });
    phase("gated combine", [&] {
      return combine_forward(c, view("gates"), view("o_cmp"), view("o_slc"), view("o_swa"), view("o_phases"));
    });
    q_name_ = q;
    k_name_ = k;
    kc_name_ = kc;
  }

  void backward_phases() {
    const auto& c = spec_.config;
    const std::int64_t n = spec_.tokens(), hq = spec_.heads_q, hkv = spec_.heads_kv;
    const std::int64_t dqk = spec_.head_dim_qk, dv = spec_.head_dim_v;
    const DType dt = spec_.dtype;
    for (const char* name : {"d_cmp", "d_slc", "d_swa"}) make(name, dt, {n, hq, dv});
    make("b_dgates", dt, sizes_of("gates"));
    make("b_dq", dt, {n, hq, dqk});
    make("b_dk", dt, {n, hkv, dqk});
    make("b_dv", dt, {n, hkv, dv});
    make("b_dkc", dt, {ncmp_, hkv, dqk});
    make("b_dvc", dt, {ncmp_, hkv, dv});
    if (buffers_.count("w_k")) make("b_dw_k", dt, sizes_of("w_k"));
    const TensorView cu = view("cu_seqlens"), cu_cmp = view("cu_cmp");
    phase("bwd: gated combine", [&] {
      return combine_backward(c, view("gates"), view("o_cmp"), view("o_slc"), view("o_swa"), view("d_o"),
                              view("b_dgates"), view("d_cmp"), view("d_slc"), view("d_swa"));
    });
    phase("bwd: sliding window", [&] {
      return swa_backward(c, view(q_name_), view(k_name_), view("v"), cu, view("o_swa"), view("lse_swa"),
                          view("d_swa"), view("b_dq"), view("b_dk"), view("b_dv"));
    });
    phase("bwd: selected attention", [&] {
      return slc_attn_backward(c, view(q_name_), view(k_name_), view("v"), view("topk"), cu, view("o_slc"),
                               view("lse_slc"), view("d_slc"), view("b_dq"), view("b_dk"), view("b_dv"));
    });
    phase("bwd: compressed attention", [&] {
      return cmp_attn_backward(c, view(q_name_), view(kc_name_), view("v_cmp"), cu, cu_cmp, view("o_cmp"),
                               view("lse_cmp"), view("d_cmp"), view("b_dq"), view("b_dkc"), view("b_dvc"));
    });
    phase("bwd: rope", [&] {
      if (!c.rope.enabled) return Status::ok();
      FSA_RETURN_IF_ERROR(rope_backward(c.rope, view("b_dq"), cu, 1, view("b_dq")));
      FSA_RETURN_IF_ERROR(rope_backward(c.rope, view("b_dk"), cu, 1, view("b_dk")));
      return rope_backward(c.rope, view("b_dkc"), cu_cmp, c.cmp_stride, view("b_dkc"));
    });
    phase("bwd: compress k, v", [&] {
      FSA_RETURN_IF_ERROR(compress_backward(c, view("k"), cu, cu_cmp, optional("w_k"), view("pe_k"), view("b_dkc"),
                                            view("b_dk"), optional("b_dw_k"),
                                            TensorView{}));
      return compress_backward(c, view("v"), cu, cu_cmp, optional("w_v"), TensorView{}, view("b_dvc"), view("b_dv"),
                               TensorView{}, TensorView{});
    });
  }

  void whole_layer() {
    const auto& c = spec_.config;
    NsaLayerInputs in;
    in.q = view("q");
    in.k = view("k");
    in.v = view("v");
    in.cu_seqlens = view("cu_seqlens");
    in.w_k = optional("w_k");
    in.pe_k = view("pe_k");
    in.w_v = optional("w_v");
    in.gates = view("gates");
    const std::int64_t saved_bytes = static_cast<std::int64_t>(nsa_saved_bytes(c, NsaLayerShape::of(in)));
    make("saved", DType::kUInt8, {saved_bytes});
    if (!phases_) make("o", spec_.dtype, {spec_.tokens(), spec_.heads_q, spec_.head_dim_v});
    NsaLayerGrads g;
    const std::vector<std::pair<std::string, std::string>> grads = {
        {"dq", "q"}, {"dk", "k"}, {"dv", "v"}, {"dw_k", "w_k"}, {"dpe_k", "pe_k"}, {"dw_v", "w_v"}, {"d_gates", "gates"}};
    for (const auto& [grad, input] : grads) {
      if (!buffers_.count(input)) continue;
      make(grad, view(input).dtype, sizes_of(input));
    }
    g.dq = view("dq");
    g.dk = view("dk");
    g.dv = view("dv");
    g.dw_k = optional("dw_k");
    g.dpe_k = optional("dpe_k");
    g.dw_v = optional("dw_v");
    g.d_gates = view("d_gates");
    phase("layer: nsa_forward", [&] { return nsa_forward(c, in, view("o"), view("saved")); });
    phase("layer: nsa_backward", [&] { return nsa_backward(c, in, view("saved"), view("d_o"), g); });

    results_["o"] = download("o");
    for (const auto& [grad, input] : grads)
      if (buffers_.count(grad)) results_[grad] = download(grad);
    if (!phases_) return;
    const std::vector<double> phases = download("o_phases");
    double diff = 0, norm = 0;
    for (std::size_t i = 0; i < phases.size(); ++i) {
      diff += (phases[i] - results_["o"][i]) * (phases[i] - results_["o"][i]);
      norm += results_["o"][i] * results_["o"][i];
    }
    layer_vs_phases_ = std::sqrt(diff / std::max(norm, 1e-300));
  }

  const ProblemSpec& spec_;
  const ProblemData& data_;
  Device device_;
  bool phases_;
  std::int64_t ncmp_ = 0;
  std::string q_name_, k_name_, kc_name_;
  std::map<std::string, Buffer> buffers_;
  std::vector<PhaseTime> times_;
  std::map<std::string, std::vector<double>> results_;
  double layer_vs_phases_ = 0;
};

// Prints the times and checksums; returns whether every output is finite.
bool print_report(const DemoRun& run, Device device, const ProblemSpec& spec) {
  double forward = 0, backward = 0;
  std::printf("\n%-28s %12s\n", "phase", "time (ms)");
  for (const PhaseTime& t : run.times()) {
    std::printf("%-28s %12.3f\n", t.name.c_str(), t.ms);
    if (t.name.rfind("layer:", 0) == 0) continue;
    (t.name.rfind("bwd:", 0) == 0 ? backward : forward) += t.ms;
  }
  std::printf("%-28s %12.3f\n%-28s %12.3f\n", "sum of forward phases", forward, "sum of backward phases", backward);
  std::printf("\n%-10s %22s %22s %8s\n", "output", "checksum sum(x)", "checksum sum(|x|)", "finite");
  bool finite = true;
  for (const auto& [name, values] : run.results()) {
    double sum = 0, abs_sum = 0;
    bool ok = true;
    for (double x : values) {
      sum += x;
      abs_sum += std::fabs(x);
      ok = ok && std::isfinite(x);
    }
    finite = finite && ok;
    std::printf("%-10s %22.9e %22.9e %8s\n", name.c_str(), sum, abs_sum, ok ? "yes" : "NO");
  }
  // The phase-by-phase run rounds every intermediate to the storage dtype, the layer keeps them
  // in fp32 (CPU) or on chip, so the two agree to the dtype's precision, not bitwise.
  std::printf("\n||o(layer) - o(phase by phase)|| / ||o(layer)|| = %.3e (%s intermediates)\n",
              run.layer_vs_phases_rel_diff(), dtype_name(spec.dtype));
  std::printf("device: %s\n", device_name(device).c_str());
  if (!finite) std::printf("error: non-finite values in the outputs\n");
  return finite;
}

// Writes one `phase,ms` row per phase; "" or the reason it could not.
std::string write_csv(const DemoRun& run, Device device, const ProblemSpec& spec, const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return "--csv: cannot write " + path + ": " + std::strerror(errno);
  std::fprintf(f, "# fsa demo on %s: %s\nphase,ms\n", device_name(device).c_str(), spec.describe().c_str());
  for (const PhaseTime& t : run.times()) std::fprintf(f, "\"%s\",%.3f\n", t.name.c_str(), t.ms);
  const bool failed = std::ferror(f) != 0;
  if (std::fclose(f) != 0 || failed) return "--csv: cannot write " + path + ": " + std::strerror(errno);
  return "";
}

// "" when a run on `device` fits the machine: the host's physical memory (the fp64 staging, and
// when the CPU runs the layer its tensors and the reference's working copies) and, on a GPU, the
// device's free memory (the tensors, the saved activations and the larger layer workspace). Else
// the message, naming the options that size the largest tensor.
std::string check_fits(const ProblemSpec& spec, Device device) {
  const bool cpu_runs = device.kind == DeviceKind::kCPU;
  const DemoFootprint f = demo_footprint(spec);
  const std::string largest = "; its largest tensor is " + f.largest;
  if (f.overflow) return f.largest_options + ": the run's byte count overflows 64 bits" + largest;
  const std::uint64_t host = f.host_bytes(cpu_runs), host_total = host_memory_bytes();
  if (host_total > 0 && host > host_total)
    return f.largest_options + ": the run needs about " + format_bytes(host) + " of host memory (" +
           (cpu_runs ? "the tensors, their fp64 staging and the CPU reference's working copies"
                     : "the fp64 staging of the inputs and results") +
           "), more than this machine's " + format_bytes(host_total) + largest;
  std::uint64_t free_bytes = 0, total_bytes = 0;
  if (cpu_runs || !cuda_memory_info(&free_bytes, &total_bytes)) return "";
  std::uint64_t device_bytes = f.buffers;
  if (device_bytes <= total_bytes) {
    // Sizes are now known to be moderate, so the library's own (unchecked) byte counts are safe.
    NsaLayerShape shape;
    shape.tokens = spec.tokens();
    shape.num_seqs = static_cast<int>(spec.seqlens.size());
    shape.heads_q = spec.heads_q;
    shape.heads_kv = spec.heads_kv;
    shape.head_dim_qk = spec.head_dim_qk;
    shape.head_dim_v = spec.head_dim_v;
    shape.dtype = spec.dtype;
    shape.device = Device::cuda(0);
    device_bytes += std::max<std::uint64_t>(nsa_forward_workspace_bytes(spec.config, shape, true),
                                            nsa_backward_workspace_bytes(spec.config, shape));
  }
  if (device_bytes > free_bytes)
    return f.largest_options + ": the run needs about " + format_bytes(device_bytes) +
           " of GPU memory (the tensors, the saved activations and the layer's workspace), more than the " +
           format_bytes(free_bytes) + " free on CUDA device 0" + largest;
  return "";
}

// The check's problem: the run's shapes and hyperparameters on at most four sequences of at most
// min(K * B, 256) tokens. A sequence of at most K blocks has every visible block selected, so the
// selection cannot differ by rounding between the device (rotated q, k in the input dtype) and the
// fp32 reference; and the reference stays quick.
ProblemSpec check_problem(const ProblemSpec& spec) {
  ProblemSpec check = spec;
  const std::int64_t longest = std::min<std::int64_t>(static_cast<std::int64_t>(spec.config.topk) *
                                                           spec.config.block_size, 256);
  check.seqlens.clear();
  for (std::size_t i = 0; i < spec.seqlens.size() && i < 4; ++i)
    check.seqlens.push_back(std::min(spec.seqlens[i], longest));
  return check;
}

std::vector<double> rounded(const std::vector<double>& values, DType dtype) {
  std::vector<double> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    const float x = static_cast<float>(values[i]);
    out[i] = dtype == DType::kBFloat16 ? bf16_to_float(float_to_bf16(x))
             : dtype == DType::kFloat16 ? half_to_float(float_to_half(x))
                                        : x;
  }
  return out;
}

double norm(const std::vector<double>& v) {
  double s = 0;
  for (const double x : v) s += x * x;
  return std::sqrt(s);
}

// The tolerance of the output against the fp32 reference (relative Frobenius norm); gradients get
// three times as much. The values of the GPU layer tests (tests/cpp/gpu_compare.hpp, test_gpu_layer.cpp).
double output_tolerance(DType dtype) {
  return dtype == DType::kBFloat16 ? 1e-2 : dtype == DType::kFloat16 ? 5e-3 : 1e-4;
}

// Runs the check's problem on `device` in the run's dtype and on the CPU reference in fp32 on the
// same rounded inputs, prints each result's relative error against its tolerance; returns whether
// every result is finite and within it. A failed call is reported and fails the check, except a
// kNotImplemented on the GPU, which skips it (*skipped set).
bool check_against_reference(const ProblemSpec& spec, Device device, bool* skipped) {
  *skipped = false;
  const ProblemSpec check = check_problem(spec);
  ProblemSpec check32 = check;
  check32.dtype = DType::kFloat32;
  const ProblemData data = make_problem(check);
  ProblemData data32 = data;
  for (std::vector<double>* v : {&data32.q, &data32.k, &data32.v, &data32.w_k, &data32.pe_k, &data32.w_v,
                                 &data32.gates, &data32.d_o})
    *v = rounded(*v, check.dtype);
  std::printf("\ncheck: %s %s against the CPU reference in fp32 on the same rounded inputs, seqlens [",
              device_name(device).c_str(), dtype_name(check.dtype));
  for (std::size_t i = 0; i < check.seqlens.size(); ++i)
    std::printf("%s%lld", i ? "," : "", static_cast<long long>(check.seqlens[i]));
  std::printf("] (otherwise the same problem)\n");
  DemoRun run(check, data, device, false), reference(check32, data32, Device::cpu(), false);
  try {
    run.run();
  } catch (const Failure& failure) {
    *skipped = device.kind == DeviceKind::kCUDA && failure.status.code() == StatusCode::kNotImplemented;
    std::printf("  %s on %s: %s\n", *skipped ? "skipped" : "FAILED", device_name(device).c_str(),
                failure.status.to_string().c_str());
    return *skipped;
  }
  try {
    reference.run();
  } catch (const Failure& failure) {
    std::printf("  FAILED: the CPU reference: %s\n", failure.status.to_string().c_str());
    return false;
  }
  const double tol = output_tolerance(check.dtype);
  std::printf("  %-10s %14s %12s\n", "result", "rel. error", "tolerance");
  bool pass = true;
  for (const auto& [name, want] : reference.results()) {
    const auto it = run.results().find(name);
    if (it == run.results().end() || it->second.size() != want.size()) {
      std::printf("  %-10s missing\n", name.c_str());
      pass = false;
      continue;
    }
    const std::vector<double>& got = it->second;
    bool finite = true;
    std::vector<double> diff(got.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      finite = finite && std::isfinite(got[i]);
      diff[i] = got[i] - want[i];
    }
    double error = 0, limit = name == "o" ? tol : 3 * tol;
    const char* note = "";
    if (name == "dpe_k" && !check.config.rope.enabled) {
      // Without RoPE, adding one vector to every compressed key leaves each softmax unchanged:
      // d pe_k is exactly zero and both sides hold rounding noise, small against d k.
      error = norm(got) / std::max(norm(reference.results().at("dk")), 1e-300);
      limit = tol;
      note = " (|dpe_k| / |dk|: exactly 0 without RoPE)";
    } else {
      const double scale = norm(want);
      error = scale > 0 ? norm(diff) / scale : norm(diff);
    }
    const bool ok = finite && error <= limit;
    pass = pass && ok;
    std::printf("  %-10s %14.3e %12.1e  %s%s\n", name.c_str(), error, limit,
                ok ? "ok" : finite ? "FAIL" : "FAIL (non-finite)", note);
  }
  return pass;
}

// "no CUDA device found", and the runtime's reason on a second line.
void print_no_device(std::FILE* out, const char* prefix, const CudaDeviceInfo& info) {
  std::fprintf(out, "%sno CUDA device found\n  (%s)\n", prefix, info.reason.c_str());
}

}  // namespace

int run_demo(const ProblemSpec& spec, DevicePreference preference, const std::string& csv_path) {
  if (const Status s = spec.config.validate(); !s.is_ok()) {
    std::fprintf(stderr, "fsa demo: %s\n", s.message().c_str());
    return 2;
  }
  const CudaDeviceInfo info = cuda_device_info();
  if (preference == DevicePreference::kCuda && !info.available) {
    print_no_device(stderr, "fsa demo: --device cuda: ", info);
    return 2;
  }
  std::vector<Device> attempts;
  // fp32 is the CPU reference's alone (the GPU takes bf16 or fp16): auto runs it on the CPU.
  const bool gpu_dtype = spec.dtype != DType::kFloat32;
  if (preference != DevicePreference::kCpu && info.available && gpu_dtype) attempts.push_back(Device::cuda(0));
  if (preference != DevicePreference::kCuda) attempts.push_back(Device::cpu());
  // Before anything is allocated: the problem must fit where it runs first (and a fallback to the
  // CPU is checked again before it allocates).
  if (const std::string e = check_fits(spec, attempts.front()); !e.empty()) {
    std::fprintf(stderr, "fsa demo: %s\n", e.c_str());
    return 2;
  }

  std::printf("fsa %s demo: %s\n", version(), spec.describe().c_str());
  if (info.available) {
    std::printf("CUDA device 0: %s (sm_%d%d, %d SMs)\n", info.name.c_str(), info.sm_major, info.sm_minor,
                info.multiprocessors);
  } else {
    print_no_device(stdout, "CUDA: ", info);
  }
  const ProblemData data = make_problem(spec);

  for (const Device device : attempts) {
    if (device.kind != attempts.front().kind) {
      if (const std::string e = check_fits(spec, device); !e.empty()) {
        std::fprintf(stderr, "fsa demo: on %s: %s\n", device_name(device).c_str(), e.c_str());
        return 2;
      }
    }
    DemoRun run(spec, data, device);
    try {
      run.run();
    } catch (const Failure& failure) {
      const bool fallback = failure.status.code() == StatusCode::kNotImplemented && device.kind == DeviceKind::kCUDA &&
                            preference == DevicePreference::kAuto;
      std::fprintf(stderr, "%s on %s: %s\n", fallback ? "note" : "fsa demo: error", device_name(device).c_str(),
                   failure.status.to_string().c_str());
      if (fallback) {
        std::printf("the GPU path does not cover this problem; running on the CPU reference instead\n");
        continue;
      }
      // An invalid argument is the problem the options describe, and so is a problem that
      // --device cuda asks of a GPU path that does not serve it: not a failed run.
      if (failure.status.code() == StatusCode::kNotImplemented && preference == DevicePreference::kCuda) {
        std::fprintf(stderr, "fsa demo: --device cuda: the GPU path does not cover this problem (--device auto "
                             "runs it on the CPU reference)\n");
        return 2;
      }
      return failure.status.code() == StatusCode::kInvalidArgument ? 2 : 1;
    }
    std::printf("running on %s%s\n", device_name(device).c_str(),
                device.kind == DeviceKind::kCPU ? " (CPU reference backend)" : " (CUDA kernels)");
    const bool finite = print_report(run, device, spec);
    if (!csv_path.empty()) {
      if (const std::string e = write_csv(run, device, spec, csv_path); !e.empty()) {
        std::fprintf(stderr, "fsa demo: %s\n", e.c_str());
        return 2;
      }
    }

    if (device.kind == DeviceKind::kCPU) {
      std::printf("\nGPU comparison: skipped (%s)\n",
                  preference == DevicePreference::kCpu ? "--device cpu"
                  : !info.available                     ? "no CUDA device found"
                  : !gpu_dtype                          ? "--dtype fp32: the GPU takes bf16 or fp16"
                                                        : "the GPU path does not cover this problem");
    }
    bool skipped = false;
    bool check_pass = true;
    if (device.kind == DeviceKind::kCPU && spec.dtype == DType::kFloat32) {
      std::printf("check: the fp32 CPU run is the reference itself; nothing to compare\n");
    } else {
      check_pass = check_against_reference(spec, device, &skipped);
    }
    const bool pass = finite && check_pass;
    std::string what = finite ? "every output finite" : "non-finite outputs";
    if (device.kind == DeviceKind::kCUDA) {
      what += skipped ? "; GPU comparison skipped"
              : check_pass ? "; every GPU result within its tolerance of the CPU reference"
                           : "; GPU results outside their tolerance of the CPU reference";
    } else if (spec.dtype != DType::kFloat32) {
      what += check_pass ? std::string("; the CPU ") + dtype_name(spec.dtype) + " run within its tolerance of fp32"
                         : std::string("; the CPU ") + dtype_name(spec.dtype) + " run outside its tolerance of fp32";
    }
    std::printf("\nverdict: %s (%s)\n", pass ? "PASS" : "FAIL", what.c_str());
    return pass ? 0 : 1;
  }
  return 1;
}

}  // namespace fsa::tool
