// The `fsa` command-line tool. Every argument is checked before anything runs: an unknown option,
// a malformed or out-of-range value, a bad environment variable or a problem larger than the
// machine is an error naming the option (or variable), exit code 2. A run that fails is 1.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "bench.hpp"
#include "bench_decode_model.hpp"
#include "demo.hpp"
#include "fsa/fsa.hpp"

namespace {

using fsa::tool::DevicePreference;
using fsa::tool::ProblemSpec;

constexpr const char* kOverview = R"(fsa: Native Sparse Attention with the Flash Sparse Attention loop order

usage: fsa <command> [options]
       fsa <command> --help      the command's options

commands:
  demo      run the full NSA layer forward and backward on a problem (an embedded default, or the
            one the options describe), phase by phase and through the whole-layer entry points;
            check the results and end with a verdict (PASS, or FAIL and exit code 1)
  bench selected|compressed|layer|decode
            time GPU phases on the canonical configurations (decode: a decode step over a paged
            cache) and write CSV rows
  info      print the version, whether CUDA kernels were built, and the CUDA device found
  help [COMMAND]
            print this text, or a command's

)";

constexpr const char* kDemoDescription = R"(usage: fsa demo [options]

Runs the full NSA layer forward and backward, phase by phase (per-phase times) and through the
whole-layer entry points (nsa_forward, nsa_backward), on the GPU when one is present and every op
has a CUDA implementation, else on the CPU reference; prints the device, the times and the
checksums of the output and of every gradient. Then checks the results and ends with a verdict:
every output finite, and on a GPU each result (output and gradients) within its tolerance of the
CPU reference in fp32 on a small problem with the same shapes and inputs rounded alike (on the CPU,
the same comparison of the run's dtype against fp32). PASS: exit code 0; FAIL: exit code 1. The
hyperparameters are those of docs/semantics.md section 0.

)";

constexpr const char* kDemoOptions = R"(demo options (defaults give the embedded problem):
  --device auto|cpu|cuda      where to run (default auto: the GPU if usable, else the CPU)
  --dtype bf16|fp16|fp32      element type of inputs and outputs (default bf16; fp32 is CPU only)
  --seqlens A,B,...           lengths of the packed sequences (default 1536,700,250,31); the total
                              must fit int32 token indices
  --heads-q N                 query heads Hq (default 8)
  --heads-kv N                key/value heads Hkv, dividing Hq (default 2)
  --head-dim N                Dqk (default 64; even, for the rotary embedding, unless --no-rope)
  --head-dim-v N              Dv (default: Dqk)
  --block-size N              selection block B: 32, 64 or 128 (default 64)
  --topk N                    selected blocks per query K, at least 3 (default 16)
  --window N                  sliding window w (default 512)
  --cmp-len N, --cmp-stride N compression window l and stride s, s dividing l and B (default 32, 16)
  --compression linear|mean   compression kind (default linear)
  --gates per-head|shared     gate layout [N,Hq,3] or [N,3] (default per-head)
  --no-rope                   skip the rotary embedding
  --seed N                    seed of the random inputs (default 2026)
  --csv PATH                  also write the per-phase times as CSV
A problem whose tensors would not fit in the machine's memory (host, and the GPU's when one runs
it) is refused before anything is allocated, naming the options that size it.

)";

constexpr const char* kBenchSelectedText = R"(  bench selected
            time the GPU selected attention (forward and backward) on the canonical configurations
            (bf16, D=128, B=64, K=16): --config NAME (repeatable; S64-G1..16, S8K-G4, S16K-G4, S32K-G4,
            VAR-G4, LLAMA8B; default all), --pattern random|local (repeatable; default both),
            --path auto|kv-outer|split|query-outer|deterministic (repeatable; default auto;
            deterministic: auto with the deterministic backward), --dense-threshold N (the
            split's, 1 to 64; default the cost model's), --iters N (default 10), --csv PATH
)";

constexpr const char* kBenchCompressedText = R"(  bench compressed
            time the GPU compression (k and v), compressed attention forward, selection, and the
            backward of compressed attention + compression: --config, --iters, --csv as above
)";

constexpr const char* kBenchLayerText = R"(  bench layer
            time the whole NSA layer on the GPU: every forward and backward phase, nsa_forward and
            nsa_backward, and the library's dense causal attention (forward, forward + backward) in
            the same run, on the canonical configurations plus a length sweep SWEEP-G{4,16}-{2..32}K
            that reports where NSA forward + backward becomes faster than dense: --config, --iters,
            --csv as above; the memory beyond the layer's inputs, outputs and gradients is in the
            saved_mib and workspace_mib columns. --config S256K-G4|S512K-G4|S1M-G4 (only when named)
            times the layer alone on one long sequence
)";

constexpr const char* kBenchDecodeText = R"(  bench decode
            time one nsa_decode step over a paged cache filled with random values (cache_seqlens =
            context, never advanced: every step does the same work), eager and replayed from a CUDA
            graph, against the HBM floor of its byte model (docs/kernels/decode.md) and against dense
            attention over the same cache (nsa_decode with w >= context, less the NSA step); then
            S64-G4 through nsa_prefill in 4 chunks against one nsa_forward. Hkv 4, D 128, bf16.
            --config D<batch>x<context>K-G<G>-Q<q_len> (repeatable, in the order given; e.g.
            D16x128K-G16-Q1; batch 1-1024, context 1K-1024K, G 1-16, q_len 1-8; S64-G4-PREFILL: the
            prefill comparison); default: D16x128K-G16-Q1, D16x128K-G16-Q4, D64x32K-G4-Q1,
            D64x32K-G4-Q4, D1x128K-G4-Q1 and the prefill comparison (under a minute on an H100);
            --all: batch {1,16,64,128} x context {4K,32K,128K,512K} x G {1,4,16} x q_len {1,4}
            and the prefill comparison (about 5 minutes); a configuration whose cache does not fit
            the GPU's free memory is skipped with a '#' line saying so (128 x 512K: 136 GiB);
            --hbm-bandwidth B/S, the floor's bandwidth in bytes/s (default by the device's name:
            H100 SXM 3.35e12, H100 PCIe 2.0e12, H200 4.8e12, else 3.35e12); --cache-layout
            token-major|head-major, how the four pools lie in memory (default token-major: [pages,
            page_size, Hkv, D] as allocated; head-major: allocated [pages, Hkv, page_size, D], so a
            kv head's rows of a page are contiguous, and passed as views with those strides);
            --iters N (samples of 10 steps; default 10); --csv PATH (the caption names the device,
            the commit (FSA_COMMIT, else git), the date and the protocol)
)";

constexpr const char* kBenchShared = R"(  bench options shared by selected, compressed and layer:
            --workspace-cap BYTES|unlimited, the cap of selected attention's scratch
            (SlcOptions::workspace_cap; default 8 GiB), above which it runs in query chunks;
            --iters N, the timed iterations after two warm-up runs (default 10); --csv PATH.
            The benchmark protocol is docs/measuring.md's. Needs a CUDA device.

)";

constexpr const char* kInfoUsage = R"(usage: fsa info

Prints the version, whether CUDA kernels were built, and the CUDA device found (its name, compute
capability, SMs and the kernel set it runs), or why none is usable. Takes no options.

)";

constexpr const char* kEnvironment = R"(environment:
  FSA_NUM_THREADS             threads of the CPU reference, 1 to 1024 (default: all cores)
  FSA_COMMIT                  the commit every bench command names in its CSV caption (default:
                              git rev-parse in the working directory)
  FSA_DISABLE_WGMMA=0|1       1: on Hopper, run the sm80 (mma.sync) flash-attention, selection and
                              selected-attention backward kernels instead of the wgmma ones (to
                              compare them)
  FSA_DECODE_SELECT=fused|two-pass
                              how a decode step selects blocks: from the compressed attention's
                              block partials (default for <= 8 new tokens a sequence) or a second
                              pass over the compressed keys
  FSA_DECODE_ATTN_STAGES=1|2  K / V stages of the decode attention (default: 2 where they fit
                              the shared memory without costing a CTA a SM, else 1; to compare)
  FSA_PREFILL_LONG_CHUNK_MIN_TOKENS=N
                              nsa_prefill calls of at least N new tokens run the training's
                              compressed attention, selection and KV-outer selected attention
                              over the cache's pages (default 512)
  FSA_SLC_MIN_CHUNK_TOKENS=N, FSA_COMPRESS_K_SPLITS=N
                              test switches: the smallest query chunk of selected attention
                              (default 4096), a forced split-K count of the compression

documents: docs/semantics.md (the NSA semantics the library implements, sections 0-11) and
docs/measuring.md (the benchmark protocol)
)";

std::string global_usage() {
  return std::string(kOverview) + kDemoOptions + "bench commands:\n" + kBenchSelectedText + kBenchCompressedText +
         kBenchLayerText + kBenchDecodeText + kBenchShared + kEnvironment;
}

std::string demo_usage() { return std::string(kDemoDescription) + kDemoOptions + kEnvironment; }

std::string bench_usage(const std::string& what) {
  std::string text = "usage: fsa bench " +
                     (what.empty() ? std::string("selected|compressed|layer|decode") : what) + " [options]\n\n";
  if (what.empty() || what == "selected") text += kBenchSelectedText;
  if (what.empty() || what == "compressed") text += kBenchCompressedText;
  if (what.empty() || what == "layer") text += kBenchLayerText;
  if (what.empty() || what == "decode") text += kBenchDecodeText;
  return text + (what == "decode" ? "\n" : kBenchShared) + kEnvironment;
}

int print_usage(const std::string& text) {
  std::fputs(text.c_str(), stdout);
  return 0;
}

// A usage error: the message (which names the option), where to find the usage, exit code 2.
int usage_error(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "fsa%s%s: %s\nrun 'fsa%s%s --help' for usage\n", command.empty() ? "" : " ", command.c_str(),
               message.c_str(), command.empty() ? "" : " ", command.c_str());
  return 2;
}

// ---- Reading options -----------------------------------------------------------------------------

struct OptionSpec {
  const char* name;
  bool takes_value;
};

struct Option {
  std::string name, value;
};

// Reads argv against a command's options: `--name value`, `--name=value`, or a flag. Sets *help
// on --help / -h. Returns an error naming the culprit for an unknown option, a stray argument, a
// missing value or a value given to a flag; "" when every argument was read.
std::string read_options(int argc, char** argv, const std::vector<OptionSpec>& table, std::vector<Option>* options,
                         bool* help) {
  *help = false;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      *help = true;
      return "";
    }
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) return "unexpected argument '" + arg + "'";
    std::string value;
    const std::size_t eq = arg.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = arg.substr(eq + 1);
      arg.resize(eq);
    }
    const OptionSpec* spec = nullptr;
    for (const OptionSpec& o : table)
      if (arg == o.name) spec = &o;
    if (spec == nullptr) return "unknown option " + arg;
    if (!spec->takes_value) {
      if (inline_value) return "option " + arg + " takes no value, got '" + value + "'";
    } else if (!inline_value) {
      // A following option is not a value: `--seqlens --heads-q 4` is a missing value.
      if (i + 1 >= argc || std::string(argv[i + 1]).rfind("--", 0) == 0) return "option " + arg + " needs a value";
      value = argv[++i];
    }
    options->push_back({arg, value});
  }
  return "";
}

// A decimal integer within [min, max]: digits only (no sign, spaces, suffix or exponent), so that
// "4x" or "1e3" are refused rather than read as 4 or 1, and a value past `max` (or past 64 bits)
// is reported as too large rather than wrapped. `limit_why` explains the maximum. Returns "" and
// sets *out, or an error naming `option`.
std::string parse_count(const std::string& option, const std::string& text, std::uint64_t min, std::uint64_t max,
                        const std::string& limit_why, std::uint64_t* out) {
  const std::string kind = min == 1 ? "a positive integer" : min == 0 ? "a non-negative integer"
                                                                     : "an integer >= " + std::to_string(min);
  const bool negative = !text.empty() && text[0] == '-';
  const std::string digits = negative ? text.substr(1) : text;
  bool too_large = false;
  std::uint64_t value = 0;
  for (const char c : digits) {
    if (c < '0' || c > '9') return option + ": expected " + kind + ", got '" + text + "'";
    too_large = too_large || __builtin_mul_overflow(value, 10u, &value) ||
                __builtin_add_overflow(value, static_cast<std::uint64_t>(c - '0'), &value);
  }
  if (digits.empty()) return option + ": expected " + kind + ", got '" + text + "'";
  if (negative && (value != 0 || min > 0)) return option + ": expected " + kind + ", got " + text;
  if (too_large || value > max)
    return option + ": " + text + " is too large (at most " + std::to_string(max) +
           (limit_why.empty() ? "" : ", " + limit_why) + ")";
  if (value < min) return option + ": expected " + kind + ", got " + text;
  *out = value;
  return "";
}

constexpr std::uint64_t kIntMax = static_cast<std::uint64_t>(std::numeric_limits<std::int32_t>::max());

// An `int` option: [min, INT32_MAX].
std::string parse_int_option(const Option& o, std::uint64_t min, int* out, const std::string& why = "") {
  std::uint64_t v = 0;
  std::string error = parse_count(o.name, o.value, min, kIntMax, why, &v);
  if (error.empty()) *out = static_cast<int>(v);
  return error;
}

// --hbm-bandwidth: bytes per second, a plain decimal or exponent form (3.35e12), from 1e9 to 1e14
// (1 GB/s to 100 TB/s: a value outside is a unit mistake).
std::string parse_bandwidth(const Option& o, double* out) {
  const std::string expected =
      o.name + ": expected bytes per second from 1e9 to 1e14 (e.g. 3.35e12), got '" + o.value + "'";
  const bool plain = !o.value.empty() && o.value.find_first_not_of("0123456789.eE+") == std::string::npos &&
                     o.value[0] >= '0' && o.value[0] <= '9';
  char* end = nullptr;
  const double v = plain ? std::strtod(o.value.c_str(), &end) : 0.0;
  if (!plain || end != o.value.c_str() + o.value.size() || !(v >= 1e9 && v <= 1e14)) return expected;
  *out = v;
  return "";
}

// Whether `path` can be written, checked before a run so that a bad --csv costs nothing. The file
// is opened for appending (an existing one is not truncated) and removed again if this made it.
std::string check_writable(const std::string& option, const std::string& path) {
  if (path.empty()) return option + ": expected a file path, got ''";
  std::FILE* existing = std::fopen(path.c_str(), "r");
  if (existing != nullptr) std::fclose(existing);
  std::FILE* f = std::fopen(path.c_str(), "a");
  if (f == nullptr) return option + ": cannot write " + path + ": " + std::strerror(errno);
  std::fclose(f);
  if (existing == nullptr) std::remove(path.c_str());
  return "";
}

// The environment variables the tool and the library read, checked up front: a bad value is an
// error naming the variable (the library would otherwise fall back to its default).
std::string check_environment() {
  const fsa::Status s = fsa::check_environment();
  return s.is_ok() ? "" : s.message();
}

// ---- Commands ----------------------------------------------------------------------------------------

int run_info(int argc, char** argv) {
  std::vector<Option> options;
  bool help = false;
  if (const std::string e = read_options(argc, argv, {}, &options, &help); !e.empty()) return usage_error("info", e);
  if (help) return print_usage(kInfoUsage);
  if (const std::string e = check_environment(); !e.empty()) return usage_error("info", e);
  const fsa::CudaDeviceInfo info = fsa::cuda_device_info();
  std::printf("fsa %s\nCUDA kernels built: %s\n", fsa::version(), fsa::built_with_cuda() ? "yes" : "no");
  if (info.available) {
    std::printf("CUDA devices: %d; device 0: %s, sm_%d%d, %d SMs, kernels %s\n", info.device_count,
                info.name.c_str(), info.sm_major, info.sm_minor, info.multiprocessors, info.kernel_set.c_str());
  } else {
    std::printf("CUDA device: none found\n  (%s)\n", info.reason.c_str());
  }
  int threads = 0;
  (void)fsa::cpu_threads(&threads);  // checked above
  std::printf("CPU reference threads: %d\n", threads);
  return 0;
}

// --seqlens A,B,...: non-negative lengths separated by single commas, each and their sum within
// int32 (cu_seqlens and every token index are int32).
std::string parse_seqlens(const Option& o, std::vector<std::int64_t>* seqlens) {
  const std::string why = "token indices are int32";
  seqlens->clear();
  std::uint64_t total = 0;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = o.value.find(',', start);
    const std::string item = o.value.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (item.empty())
      return o.name + ": expected lengths separated by single commas (A,B,...), got '" + o.value + "'";
    std::uint64_t len = 0;
    if (std::string e = parse_count(o.name, item, 0, kIntMax, why, &len); !e.empty()) return e;
    total += len;
    if (total > kIntMax)
      return o.name + ": the total length N = " + std::to_string(total) + (comma == std::string::npos ? "" : "+") +
             " is too large (at most " + std::to_string(kIntMax) + ", " + why + ")";
    seqlens->push_back(static_cast<std::int64_t>(len));
    if (comma == std::string::npos) return "";
    start = comma + 1;
  }
}

int run_demo_command(int argc, char** argv) {
  static const std::vector<OptionSpec> table = {
      {"--device", true},     {"--dtype", true},      {"--seqlens", true},  {"--heads-q", true},
      {"--heads-kv", true},   {"--head-dim", true},   {"--head-dim-v", true}, {"--block-size", true},
      {"--topk", true},       {"--window", true},     {"--cmp-len", true},  {"--cmp-stride", true},
      {"--compression", true}, {"--gates", true},     {"--no-rope", false}, {"--seed", true},
      {"--csv", true}};
  std::vector<Option> options;
  bool help = false;
  if (const std::string e = read_options(argc, argv, table, &options, &help); !e.empty())
    return usage_error("demo", e);
  if (help) return print_usage(demo_usage());

  ProblemSpec spec;
  DevicePreference device = DevicePreference::kAuto;
  std::string csv_path;
  for (const Option& o : options) {
    std::string error;
    const std::string& v = o.value;
    if (o.name == "--device") {
      if (v == "auto") device = DevicePreference::kAuto;
      else if (v == "cpu") device = DevicePreference::kCpu;
      else if (v == "cuda") device = DevicePreference::kCuda;
      else error = "--device: expected auto, cpu or cuda, got '" + v + "'";
    } else if (o.name == "--dtype") {
      if (v == "bf16") spec.dtype = fsa::DType::kBFloat16;
      else if (v == "fp16") spec.dtype = fsa::DType::kFloat16;
      else if (v == "fp32") spec.dtype = fsa::DType::kFloat32;
      else error = "--dtype: expected bf16, fp16 or fp32, got '" + v + "'";
    } else if (o.name == "--seqlens") {
      error = parse_seqlens(o, &spec.seqlens);
    } else if (o.name == "--compression") {
      if (v == "linear") spec.config.compression = fsa::CompressionKind::kLinear;
      else if (v == "mean") spec.config.compression = fsa::CompressionKind::kMean;
      else error = "--compression: expected linear or mean, got '" + v + "'";
    } else if (o.name == "--gates") {
      if (v == "per-head") spec.config.gate_mode = fsa::GateMode::kPerHead;
      else if (v == "shared") spec.config.gate_mode = fsa::GateMode::kShared;
      else error = "--gates: expected per-head or shared, got '" + v + "'";
    } else if (o.name == "--no-rope") {
      spec.config.rope.enabled = false;
    } else if (o.name == "--csv") {
      csv_path = v;
    } else if (o.name == "--seed") {
      std::uint64_t seed = 0;
      error = parse_count(o.name, v, 0, std::numeric_limits<std::uint64_t>::max(), "the seed is 64-bit", &seed);
      spec.seed = seed;
    } else if (o.name == "--heads-q") {
      error = parse_int_option(o, 1, &spec.heads_q);
    } else if (o.name == "--heads-kv") {
      error = parse_int_option(o, 1, &spec.heads_kv);
    } else if (o.name == "--head-dim") {
      error = parse_int_option(o, 1, &spec.head_dim_qk);
    } else if (o.name == "--head-dim-v") {
      error = parse_int_option(o, 1, &spec.head_dim_v);
      spec.head_dim_v_given = true;
    } else if (o.name == "--block-size") {
      error = parse_int_option(o, 1, &spec.config.block_size);
    } else if (o.name == "--topk") {
      error = parse_int_option(o, 1, &spec.config.topk);
    } else if (o.name == "--window") {
      error = parse_int_option(o, 0, &spec.config.window);
    } else if (o.name == "--cmp-len") {
      error = parse_int_option(o, 1, &spec.config.cmp_len);
    } else if (o.name == "--cmp-stride") {
      error = parse_int_option(o, 1, &spec.config.cmp_stride);
    }
    if (!error.empty()) return usage_error("demo", error);
  }
  if (!spec.head_dim_v_given) spec.head_dim_v = spec.head_dim_qk;

  // The constraints between options (docs/semantics.md section 0), each naming the option to change.
  const fsa::NsaConfig& c = spec.config;
  const std::string hq = std::to_string(spec.heads_q), hkv = std::to_string(spec.heads_kv);
  if (spec.heads_q % spec.heads_kv != 0)
    return usage_error("demo", "--heads-kv: expected a divisor of --heads-q (" + hq + "), got " + hkv);
  if (c.rope.enabled && spec.head_dim_qk % 2 != 0)
    return usage_error("demo", "--head-dim: expected an even head dim for the rotary embedding (or --no-rope), got " +
                                   std::to_string(spec.head_dim_qk));
  if (c.block_size != 32 && c.block_size != 64 && c.block_size != 128)
    return usage_error("demo", "--block-size: expected 32, 64 or 128, got " + std::to_string(c.block_size));
  if (c.cmp_len % c.cmp_stride != 0 || c.block_size % c.cmp_stride != 0)
    return usage_error("demo", "--cmp-stride: expected a divisor of --cmp-len (" + std::to_string(c.cmp_len) +
                                   ") and of --block-size (" + std::to_string(c.block_size) + "), got " +
                                   std::to_string(c.cmp_stride));
  const int forced = c.init_blocks + c.local_blocks;
  if (c.topk < forced)
    return usage_error("demo", "--topk: expected at least " + std::to_string(forced) + " (the forced blocks: " +
                                   std::to_string(c.init_blocks) + " initial and " + std::to_string(c.local_blocks) +
                                   " local), got " + std::to_string(c.topk));
  if (device == DevicePreference::kCuda && spec.dtype == fsa::DType::kFloat32)
    return usage_error("demo", "--dtype: fp32 runs on the CPU only (--device cpu or auto); the GPU takes bf16 or fp16");
  // The rest of section 0, in the library's words (none of these is expected to fire after the
  // checks above; a new constraint would).
  if (const fsa::Status s = c.validate(); !s.is_ok()) return usage_error("demo", s.message());
  if (!csv_path.empty())
    if (const std::string e = check_writable("--csv", csv_path); !e.empty()) return usage_error("demo", e);
  if (const std::string e = check_environment(); !e.empty()) return usage_error("demo", e);
  return fsa::tool::run_demo(spec, device, csv_path);
}

int run_bench_command(int argc, char** argv) {
  const std::string what = argc >= 1 ? argv[0] : "";
  if (what == "--help" || what == "-h") return print_usage(bench_usage(""));
  const char* kinds = "'selected', 'compressed', 'layer' or 'decode'";
  if (what.empty()) return usage_error("bench", std::string("expected ") + kinds);
  if (what != "selected" && what != "compressed" && what != "layer" && what != "decode")
    return usage_error("bench", std::string("expected ") + kinds + ", got '" + what + "'");
  const std::string command = "bench " + what;
  std::vector<OptionSpec> table = {{"--config", true}, {"--iters", true}, {"--csv", true}};
  if (what == "decode") {
    table.push_back({"--all", false});
    table.push_back({"--hbm-bandwidth", true});
    table.push_back({"--cache-layout", true});
  } else {
    table.push_back({"--workspace-cap", true});
  }
  if (what == "selected") {
    table.push_back({"--pattern", true});
    table.push_back({"--path", true});
    table.push_back({"--dense-threshold", true});
  }
  std::vector<Option> parsed;
  bool help = false;
  if (const std::string e = read_options(argc - 1, argv + 1, table, &parsed, &help); !e.empty())
    return usage_error(command, e);
  if (help) return print_usage(bench_usage(what));

  fsa::tool::BenchOptions options;
  const std::vector<std::string> names = fsa::tool::bench_config_names(what);
  options.command_line = "fsa " + command;
  for (int i = 1; i < argc; ++i) options.command_line += std::string(" ") + argv[i];
  for (const Option& o : parsed) {
    std::string error;
    const std::string& v = o.value;
    if (o.name == "--config" && what == "decode") {
      fsa::tool::DecodeConfig c;
      if (v != fsa::tool::kDecodePrefillConfig)
        if (const std::string e = fsa::tool::parse_decode_config(v, &c); !e.empty()) error = "--config: " + e;
      options.configs.push_back(v);
    } else if (o.name == "--all") {
      options.all = true;
    } else if (o.name == "--hbm-bandwidth") {
      error = parse_bandwidth(o, &options.hbm_bandwidth);
    } else if (o.name == "--cache-layout") {
      if (v != "token-major" && v != "head-major")
        error = "--cache-layout: expected token-major or head-major, got '" + v + "'";
      options.head_major_pools = v == "head-major";
    } else if (o.name == "--config") {
      if (std::find(names.begin(), names.end(), v) == names.end()) {
        std::string list;
        for (const std::string& n : names) list += (list.empty() ? "" : ", ") + n;
        error = "--config: unknown configuration '" + v + "' (expected one of " + list + ")";
      }
      options.configs.push_back(v);
    } else if (o.name == "--pattern") {
      if (v != "random" && v != "local") error = "--pattern: expected random or local, got '" + v + "'";
      options.patterns.push_back(v);
    } else if (o.name == "--path") {
      if (v != "auto" && v != "kv-outer" && v != "split" && v != "query-outer" && v != "deterministic")
        error = "--path: expected auto, kv-outer, split, query-outer or deterministic, got '" + v + "'";
      options.paths.push_back(v);
    } else if (o.name == "--dense-threshold") {
      // A query tile has B = 64 tokens: a threshold above that would make no pair dense.
      std::uint64_t n = 0;
      error = parse_count(o.name, v, 1, 64, "the tokens of a query tile, B = 64", &n);
      options.dense_threshold = static_cast<int>(n);
    } else if (o.name == "--iters") {
      error = parse_int_option(o, 1, &options.iterations);
    } else if (o.name == "--csv") {
      options.csv_path = v;
      error = check_writable(o.name, v);
    } else if (o.name == "--workspace-cap") {
      std::uint64_t n = 0;
      if (v == "unlimited") {
        options.workspace_cap = SIZE_MAX;
      } else {
        error = parse_count(o.name, v, 1, std::numeric_limits<std::int64_t>::max(), "", &n);
        if (!error.empty())
          error = "--workspace-cap: expected a positive number of bytes or 'unlimited', got '" + v + "'";
        options.workspace_cap = static_cast<std::size_t>(n);
      }
    }
    if (!error.empty()) return usage_error(command, error);
  }
  if (options.all && !options.configs.empty())
    return usage_error(command, "--all: runs every configuration; drop --config or --all");
  if (const std::string e = check_environment(); !e.empty()) return usage_error(command, e);
  const fsa::CudaDeviceInfo info = fsa::cuda_device_info();
  if (!info.available) {
    std::fprintf(stderr, "fsa %s: no CUDA device found; the benchmarks time GPU kernels\n  (%s)\n", command.c_str(),
                 info.reason.c_str());
    return 2;
  }
#ifdef FSA_WITH_CUDA
  if (what == "layer") return fsa::tool::run_bench_layer(options);
  if (what == "decode") return fsa::tool::run_bench_decode(options);
  return what == "selected" ? fsa::tool::run_bench_selected(options) : fsa::tool::run_bench_compressed(options);
#else
  return 2;  // not reached: without CUDA, cuda_device_info() reports no device
#endif
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(global_usage().c_str(), stderr);
    return 2;
  }
  const std::string command = argv[1];
  if (command == "--help" || command == "-h") return print_usage(global_usage());
  if (command == "help") {
    if (argc == 2) return print_usage(global_usage());
    const std::string topic = argv[2];
    if (argc > 3 && topic != "bench")
      return usage_error("", "help: unexpected argument '" + std::string(argv[3]) + "'");
    if (topic == "demo") return print_usage(demo_usage());
    if (topic == "info") return print_usage(kInfoUsage);
    if (topic == "bench") {
      const std::string what = argc > 3 ? argv[3] : "";
      if (!what.empty() && what != "selected" && what != "compressed" && what != "layer" && what != "decode")
        return usage_error("", "help bench: expected 'selected', 'compressed', 'layer' or 'decode', got '" + what +
                                   "'");
      if (argc > 4) return usage_error("", "help: unexpected argument '" + std::string(argv[4]) + "'");
      return print_usage(bench_usage(what));
    }
    return usage_error("", "help: unknown command '" + topic + "' (expected demo, bench or info)");
  }
  if (command == "--version") {
    if (argc > 2) return usage_error("", "--version: unexpected argument '" + std::string(argv[2]) + "'");
    std::printf("fsa %s\n", fsa::version());
    return 0;
  }
  if (command == "info") return run_info(argc - 2, argv + 2);
  if (command == "demo") return run_demo_command(argc - 2, argv + 2);
  if (command == "bench") return run_bench_command(argc - 2, argv + 2);
  return usage_error("", "unknown command '" + command + "' (expected demo, bench, info or help)");
}
