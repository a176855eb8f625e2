// Shared pieces of the `fsa bench` commands: the canonical configurations (also read without CUDA,
// to check --config), fast random values, a CUDA-event timer, the caller-owned workspace, and the
// output (stdout and a CSV file).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace fsa::tool {

struct BenchConfig {
  std::string name;
  std::vector<std::int64_t> seqlens;
  int heads_kv, group;
};

// The canonical configurations of every bench: bf16, D=128, l=32, s=16, B=64, K=16, I=1, L=2;
// S<len>-G<g> is one sequence with Hkv = 4 and G query heads per kv head.
inline std::vector<BenchConfig> canonical_configs() {
  std::vector<BenchConfig> c;
  for (const int g : {1, 2, 4, 8, 16}) c.push_back({"S64-G" + std::to_string(g), {65536}, 4, g});
  c.push_back({"S8K-G4", {8192}, 4, 4});
  c.push_back({"S16K-G4", {16384}, 4, 4});
  c.push_back({"S32K-G4", {32768}, 4, 4});
  c.push_back({"VAR-G4", {32768, 16384, 8192, 4096, 2048, 1024, 512, 512}, 4, 4});
  c.push_back({"LLAMA8B", {32768}, 8, 4});
  return c;
}

// `fsa bench layer` only: one long sequence at G = 4, the bounded-memory runs (the layer alone,
// run only when named).
inline std::vector<BenchConfig> long_configs() {
  return {{"S256K-G4", {262144}, 4, 4}, {"S512K-G4", {524288}, 4, 4}, {"S1M-G4", {1048576}, 4, 4}};
}

// `fsa bench layer` only: the length sweep of the NSA / dense break-even.
inline std::vector<BenchConfig> sweep_configs() {
  std::vector<BenchConfig> sweep;
  for (const int g : {4, 16})
    for (const int kib : {2, 4, 8, 16, 32})
      sweep.push_back({"SWEEP-G" + std::to_string(g) + "-" + std::to_string(kib) + "K", {kib * 1024LL}, 4, g});
  return sweep;
}

// Uniform values of unit variance from a 64-bit xorshift: the inputs of a 64K-token problem are
// hundreds of millions of elements, too many for std::normal_distribution in a benchmark's setup.
class FastRandom {
 public:
  explicit FastRandom(std::uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  std::vector<double> values(std::int64_t count, double scale, double offset = 0.0) {
    std::vector<double> v(static_cast<std::size_t>(count));
    for (double& x : v) x = offset + scale * std::sqrt(3.0) * (2.0 * uniform() - 1.0);
    return v;
  }

 private:
  double uniform() {
    state_ ^= state_ << 13;
    state_ ^= state_ >> 7;
    state_ ^= state_ << 17;
    return static_cast<double>(state_ >> 11) * (1.0 / 9007199254740992.0);
  }
  std::uint64_t state_;
};

inline std::int64_t total_tokens(const BenchConfig& c) {
  std::int64_t n = 0;
  for (std::int64_t s : c.seqlens) n += s;
  return n;
}

inline bool selected(const std::vector<std::string>& names, const std::string& name) {
  return names.empty() || std::find(names.begin(), names.end(), name) != names.end();
}

}  // namespace fsa::tool

#ifdef FSA_WITH_CUDA
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>

#include "bench.hpp"
#include "buffer.hpp"
#include "fsa/fsa.hpp"

namespace fsa::tool {

// The commit a result file's caption names: FSA_COMMIT, else git's view of the working directory
// (the device machine's copy of the tree has no .git: set FSA_COMMIT there).
inline std::string commit_name() {
  if (const char* env = std::getenv("FSA_COMMIT"); env != nullptr && *env != '\0') return env;
  std::string commit;
  if (std::FILE* git = popen("git rev-parse --short HEAD 2>/dev/null", "r")) {
    char text[64] = {};
    if (std::fgets(text, sizeof text, git) != nullptr) commit = text;
    pclose(git);
  }
  while (!commit.empty() && (commit.back() == '\n' || commit.back() == '\r')) commit.pop_back();
  return commit.empty() ? "unknown (set FSA_COMMIT)" : commit;
}

inline std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  char text[32] = {};
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  return text;
}

struct Timing {
  double median, min, max;
};

template <class Fn>
Timing time_gpu(int iterations, Fn&& body, Status* status) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<double> ms;
  for (int i = -2; i < iterations; ++i) {  // two warm-up runs
    cudaEventRecord(start);
    *status = body();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    if (!status->is_ok()) break;
    float elapsed = 0;
    cudaEventElapsedTime(&elapsed, start, stop);
    if (i >= 0) ms.push_back(elapsed);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (ms.empty()) return {0, 0, 0};
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front(), ms.back()};
}

// The caller-owned workspace of the benches (fsa/workspace.hpp): one device buffer that grows to
// the largest query it is asked for, so that no timed iteration allocates (a growth happens in a
// phase's warm-up iteration). peak_mib() is the largest request since reset_peak().
class BenchWorkspace {
 public:
  Workspace take(std::size_t bytes) {
    peak_ = std::max(peak_, bytes);
    if (bytes > capacity_) {
      std::string error;
      buffer_ = Buffer();  // free the old one first: the new one may need its memory
      buffer_ = Buffer(Device::cuda(0), DType::kUInt8, {static_cast<std::int64_t>(bytes)}, &error);
      capacity_ = error.empty() ? bytes : 0;
    }
    return capacity_ >= bytes ? Workspace{buffer_.view().data, capacity_} : Workspace{nullptr, 0};
  }
  void reset_peak() { peak_ = 0; }
  double peak_mib() const { return static_cast<double>(peak_) / (1 << 20); }

 private:
  Buffer buffer_;
  std::size_t capacity_ = 0, peak_ = 0;
};

// One phase of a bench: the workspace's peak reset, then time_gpu; a failure is printed as
// "<config> <phase>: <error>" and returns false.
template <class Fn>
bool time_phase(const std::string& config, const std::string& phase, int iterations, Fn&& body, Timing* timing,
                BenchWorkspace* ws) {
  ws->reset_peak();
  Status status;
  *timing = time_gpu(iterations, body, &status);
  if (status.is_ok()) return true;
  std::fprintf(stderr, "%s %s: %s\n", config.c_str(), phase.c_str(), status.to_string().c_str());
  return false;
}

// A bench command's output: a banner and the CSV header on stdout, then each row on stdout and in
// the CSV file (when a path is given), flushed per row so that a run cut short keeps its rows.
class BenchOutput {
 public:
  // The caption (docs/measuring.md) starts with the run: the command as run, the device and its
  // kernel set, the commit (commit_name) and the date; `caption`: more '#' lines, written (and
  // printed) before the header.
  BenchOutput(const char* command, const CudaDeviceInfo& info, const BenchOptions& options, const std::string& header,
              const std::vector<std::string>& caption = {})
      : csv_(options.csv_path.empty() ? nullptr : std::fopen(options.csv_path.c_str(), "w")) {
    std::printf("device: %s (sm_%d%d, %d SMs), fsa %s\n", info.name.c_str(), info.sm_major, info.sm_minor,
                info.multiprocessors, version());
    if (csv_) std::fprintf(csv_, "# fsa bench %s on %s\n", command, info.name.c_str());
    std::vector<std::string> lines = {options.command_line + "; " + info.name + " (sm_" + std::to_string(info.sm_major) +
                                      std::to_string(info.sm_minor) + ", " + std::to_string(info.multiprocessors) +
                                      " SMs, kernels " + info.kernel_set + "); commit " + commit_name() + "; " +
                                      utc_now()};
    lines.insert(lines.end(), caption.begin(), caption.end());
    for (const std::string& line : lines) {
      std::printf("# %s\n", line.c_str());
      if (csv_) std::fprintf(csv_, "# %s\n", line.c_str());
    }
    std::printf("%s\n", header.c_str());
    if (csv_) std::fprintf(csv_, "%s\n", header.c_str());
  }
  ~BenchOutput() {
    if (csv_) std::fclose(csv_);
  }
  BenchOutput(const BenchOutput&) = delete;
  BenchOutput& operator=(const BenchOutput&) = delete;

  // A '#' line among the rows (a configuration skipped, and why): printed, and kept in the CSV file.
  void comment(const std::string& line) {
    std::printf("# %s\n", line.c_str());
    std::fflush(stdout);
    if (csv_) {
      std::fprintf(csv_, "# %s\n", line.c_str());
      std::fflush(csv_);
    }
  }

  void row(const char* line) {
    std::printf("%s\n", line);
    std::fflush(stdout);
    if (csv_) {
      std::fprintf(csv_, "%s\n", line);
      std::fflush(csv_);
    }
  }

 private:
  std::FILE* csv_;
};

// The CUDA device the benches run on; prints why and returns false when there is none.
inline bool bench_device(CudaDeviceInfo* info) {
  *info = cuda_device_info();
  if (!info->available) std::fprintf(stderr, "fsa bench: no CUDA device found\n  (%s)\n", info->reason.c_str());
  return info->available;
}

}  // namespace fsa::tool
#endif
