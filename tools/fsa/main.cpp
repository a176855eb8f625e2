// The `fsa` command-line tool.
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "bench.hpp"
#include "demo.hpp"
#include "fsa/fsa.hpp"

namespace {

using fsa::tool::DevicePreference;
using fsa::tool::ProblemSpec;

constexpr const char* kUsage = R"(fsa: Native Sparse Attention with the Flash Sparse Attention loop order

usage: fsa <command> [options]

commands:
  demo      run the full NSA layer forward and backward on an embedded default problem, phase by
            phase (per-phase times) and through the whole-layer entry points, and print the device
            used, the times and checksums of the output and of every gradient. Runs on the GPU when
            one is present and every op has a CUDA implementation, else on the CPU reference.
  bench selected
            time the GPU selected attention (forward and backward) on the canonical configurations
            (bf16, D=128, B=64, K=16): --config NAME (repeatable; S64-G1..16, S8K-G4, S16K-G4, S32K-G4,
            VAR-G4, LLAMA8B; default all), --pattern random|local (default both),
            --path auto|kv-outer|split|query-outer|deterministic (repeatable; default auto;
            deterministic: auto with the deterministic backward), --dense-threshold N (the
            split's; default the cost model's), --iters N (default 10), --csv PATH
  bench compressed
            time the GPU compression (k and v), compressed attention forward, selection, and the
            backward of compressed attention + compression: --config, --iters, --csv as above
  bench layer
            time the whole NSA layer on the GPU: every forward and backward phase, nsa_forward and
            nsa_backward, and the library's dense causal attention (forward, forward + backward) in
            the same run, on the canonical configurations plus a length sweep SWEEP-G{4,16}-{2..32}K
            that reports where NSA forward + backward becomes faster than dense: --config, --iters,
            --csv as above; the memory beyond the layer's inputs, outputs and gradients is in the
            saved_mib and workspace_mib columns. --config S256K-G4|S512K-G4|S1M-G4 (only when named)
            times the layer alone on one long sequence
  bench options shared by all three: --workspace-cap BYTES|unlimited, the cap of selected
            attention's scratch (SlcOptions::workspace_cap; default 8 GiB), above which it runs in
            query chunks
  info      print the version, whether CUDA kernels were built, and the CUDA device found
  help      print this text

demo options (defaults give the embedded problem):
  --device auto|cpu|cuda      where to run (default auto: the GPU if usable, else the CPU)
  --dtype bf16|fp16|fp32      element type of inputs and outputs (default bf16; fp32 is CPU only)
  --seqlens A,B,...           lengths of the packed sequences (default 1536,700,250,31)
  --heads-q N                 query heads Hq (default 8)
  --heads-kv N                key/value heads Hkv, dividing Hq (default 2)
  --head-dim N                Dqk (default 64)
  --head-dim-v N              Dv (default: Dqk)
  --block-size N              selection block B: 32, 64 or 128 (default 64)
  --topk N                    selected blocks per query K (default 16)
  --window N                  sliding window w (default 512)
  --cmp-len N, --cmp-stride N compression window l and stride s (default 32, 16)
  --compression linear|mean   compression kind (default linear)
  --gates per-head|shared     gate layout [N,Hq,3] or [N,3] (default per-head)
  --no-rope                   skip the rotary embedding
  --seed N                    seed of the random inputs (default 2026)
  --csv PATH                  also write the per-phase times as CSV

environment:
  FSA_NUM_THREADS             threads of the CPU reference (default: all cores)
  FSA_DISABLE_WGMMA=1         on Hopper, run the sm80 (mma.sync) flash-attention, selection and
                              selected-attention backward kernels instead of the wgmma ones (to
                              compare them)
)";

bool parse_int(const char* text, long long* out) {
  char* end = nullptr;
  *out = std::strtoll(text, &end, 10);
  return end != text && *end == '\0';
}

int usage_error(const std::string& message) {
  std::fprintf(stderr, "fsa: %s\nrun 'fsa --help' for usage\n", message.c_str());
  return 2;
}

int run_info() {
  const fsa::CudaDeviceInfo info = fsa::cuda_device_info();
  std::printf("fsa %s\nCUDA kernels built: %s\n", fsa::version(), fsa::built_with_cuda() ? "yes" : "no");
  if (info.available) {
    std::printf("CUDA devices: %d; device 0: %s, sm_%d%d, %d SMs, kernels %s\n", info.device_count,
                info.name.c_str(), info.sm_major, info.sm_minor, info.multiprocessors, info.kernel_set.c_str());
  } else {
    std::printf("CUDA device: none (%s)\n", info.reason.c_str());
  }
  return 0;
}

int run_demo_command(int argc, char** argv) {
  ProblemSpec spec;
  DevicePreference device = DevicePreference::kAuto;
  bool dv_given = false;
  std::string csv_path;
  for (int i = 0; i < argc; ++i) {
    const std::string opt = argv[i];
    if (opt == "--help" || opt == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (opt == "--no-rope") {
      spec.config.rope.enabled = false;
      continue;
    }
    if (i + 1 >= argc) return usage_error("option " + opt + " needs a value");
    const std::string value = argv[++i];
    long long number = 0;
    const bool is_number = parse_int(value.c_str(), &number);
    auto need_number = [&]() -> bool { return is_number && number >= 0 && number < (1ll << 31); };
    if (opt == "--device") {
      if (value == "auto") device = DevicePreference::kAuto;
      else if (value == "cpu") device = DevicePreference::kCpu;
      else if (value == "cuda") device = DevicePreference::kCuda;
      else return usage_error("--device: expected auto, cpu or cuda, got '" + value + "'");
    } else if (opt == "--dtype") {
      if (value == "bf16") spec.dtype = fsa::DType::kBFloat16;
      else if (value == "fp16") spec.dtype = fsa::DType::kFloat16;
      else if (value == "fp32") spec.dtype = fsa::DType::kFloat32;
      else return usage_error("--dtype: expected bf16, fp16 or fp32, got '" + value + "'");
    } else if (opt == "--seqlens") {
      spec.seqlens.clear();
      std::stringstream list(value);
      std::string item;
      while (std::getline(list, item, ',')) {
        long long len = 0;
        if (!parse_int(item.c_str(), &len) || len < 0) return usage_error("--seqlens: bad length '" + item + "'");
        spec.seqlens.push_back(len);
      }
      if (spec.seqlens.empty()) return usage_error("--seqlens: expected at least one length");
    } else if (opt == "--csv") {
      csv_path = value;
    } else if (opt == "--compression") {
      if (value == "linear") spec.config.compression = fsa::CompressionKind::kLinear;
      else if (value == "mean") spec.config.compression = fsa::CompressionKind::kMean;
      else return usage_error("--compression: expected linear or mean, got '" + value + "'");
    } else if (opt == "--gates") {
      if (value == "per-head") spec.config.gate_mode = fsa::GateMode::kPerHead;
      else if (value == "shared") spec.config.gate_mode = fsa::GateMode::kShared;
      else return usage_error("--gates: expected per-head or shared, got '" + value + "'");
    } else if (!need_number()) {
      return usage_error(opt + ": expected a non-negative integer, got '" + value + "'");
    } else if (opt == "--heads-q") {
      spec.heads_q = static_cast<int>(number);
    } else if (opt == "--heads-kv") {
      spec.heads_kv = static_cast<int>(number);
    } else if (opt == "--head-dim") {
      spec.head_dim_qk = static_cast<int>(number);
    } else if (opt == "--head-dim-v") {
      spec.head_dim_v = static_cast<int>(number);
      dv_given = true;
    } else if (opt == "--block-size") {
      spec.config.block_size = static_cast<int>(number);
    } else if (opt == "--topk") {
      spec.config.topk = static_cast<int>(number);
    } else if (opt == "--window") {
      spec.config.window = static_cast<int>(number);
    } else if (opt == "--cmp-len") {
      spec.config.cmp_len = static_cast<int>(number);
    } else if (opt == "--cmp-stride") {
      spec.config.cmp_stride = static_cast<int>(number);
    } else if (opt == "--seed") {
      spec.seed = static_cast<std::uint64_t>(number);
    } else {
      return usage_error("unknown option " + opt);
    }
  }
  if (!dv_given) spec.head_dim_v = spec.head_dim_qk;
  if (spec.heads_q <= 0 || spec.heads_kv <= 0 || spec.heads_q % spec.heads_kv != 0)
    return usage_error("--heads-q must be a positive multiple of --heads-kv");
  if (spec.head_dim_qk <= 0 || spec.head_dim_v <= 0) return usage_error("head dims must be positive");
  return fsa::tool::run_demo(spec, device, csv_path);
}

int run_bench_command(int argc, char** argv) {
  const std::string what = argc >= 1 ? argv[0] : "";
  if (what != "selected" && what != "compressed" && what != "layer")
    return usage_error("bench: expected 'selected', 'compressed' or 'layer'");
  fsa::tool::BenchOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string opt = argv[i];
    if (i + 1 >= argc) return usage_error("option " + opt + " needs a value");
    const std::string value = argv[++i];
    if (opt == "--config") {
      options.configs.push_back(value);
    } else if (opt == "--pattern") {
      if (value != "random" && value != "local") return usage_error("--pattern: expected random or local");
      options.patterns.push_back(value);
    } else if (opt == "--path") {
      if (value != "auto" && value != "kv-outer" && value != "split" && value != "query-outer" &&
          value != "deterministic")
        return usage_error("--path: expected auto, kv-outer, split, query-outer or deterministic");
      options.paths.push_back(value);
    } else if (opt == "--dense-threshold") {
      long long n = 0;
      if (!parse_int(value.c_str(), &n) || n < 1) return usage_error("--dense-threshold: expected a positive integer");
      options.dense_threshold = static_cast<int>(n);
    } else if (opt == "--iters") {
      long long n = 0;
      if (!parse_int(value.c_str(), &n) || n < 1) return usage_error("--iters: expected a positive integer");
      options.iterations = static_cast<int>(n);
    } else if (opt == "--csv") {
      options.csv_path = value;
    } else if (opt == "--workspace-cap") {
      long long n = 0;
      if (value == "unlimited") options.workspace_cap = SIZE_MAX;
      else if (parse_int(value.c_str(), &n) && n >= 1) options.workspace_cap = static_cast<std::size_t>(n);
      else return usage_error("--workspace-cap: expected a positive number of bytes or 'unlimited'");
    } else {
      return usage_error("unknown option " + opt);
    }
  }
  if (what == "layer") return fsa::tool::run_bench_layer(options);
  return what == "selected" ? fsa::tool::run_bench_selected(options) : fsa::tool::run_bench_compressed(options);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stdout);
    return 2;
  }
  const std::string command = argv[1];
  if (command == "--help" || command == "-h" || command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (command == "--version") {
    std::printf("fsa %s\n", fsa::version());
    return 0;
  }
  if (command == "info") return run_info();
  if (command == "demo") return run_demo_command(argc - 2, argv + 2);
  if (command == "bench") return run_bench_command(argc - 2, argv + 2);
  return usage_error("unknown command '" + command + "'");
}
