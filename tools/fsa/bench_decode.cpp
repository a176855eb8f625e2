// `fsa bench decode`: one nsa_decode step over a paged cache, eager and replayed from a CUDA graph,
// against the HBM floor of its byte model and against dense attention over the same cache, plus
// chunked nsa_prefill against one nsa_forward (docs/measuring.md, docs/kernels/decode.md).
//
// The cache is not built by prefills (a 128K-token prefill per sequence would take longer than the
// whole bench): the pools are filled with random values, the page tables are shuffled pages, every
// cache_seqlens is the context and the key ring is random. A step's time does not depend on the
// values, except through which blocks the tokens select (counted from the step's own topk_idx for
// the byte model).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iterator>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "bench.hpp"
#include "bench_decode_model.hpp"
#include "bench_util.hpp"
#include "buffer.hpp"
#include "fsa/fsa.hpp"

namespace fsa::tool {

#ifdef FSA_WITH_CUDA
namespace {

constexpr int kPageBlocks = 4;         // raw pages of 4 selection blocks (256 tokens), fsa.NsaCache's default
constexpr int kStepsPerSample = 10;    // steps (or replays) enqueued back to back per timed sample
constexpr int kWarmupSamples = 2;
constexpr std::int64_t kRandomBlock = 4194301;  // a prime: no two pages of a pool hold the same values
constexpr std::uint64_t kMemoryMargin = 512ull << 20;  // left free for the CUDA context's own needs
// The prefill comparison: one sequence of 65536 tokens (S64-G4) cut at unaligned positions.
constexpr std::int64_t kPrefillChunks[] = {16389, 16382, 16386, 16379};

Status cuda_status(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return Status::ok();
  cudaGetLastError();  // clear it, so that the next configuration starts clean
  return FSA_ERROR(StatusCode::kCudaError, what + ": " + cudaGetErrorString(e));
}

// Fills a device buffer with uniform values of standard deviation `scale`: a random block of
// kRandomBlock elements uploaded once, then repeated by device-to-device copies that double the
// filled part (tens of GiB in a fraction of a second; element i holds block[i % kRandomBlock]).
Status fill_random(Buffer& b, FastRandom& rng, double scale) {
  const std::int64_t n = b.numel();
  FSA_RETURN_IF_ERROR(b.upload(rng.values(std::min(n, kRandomBlock), scale)));
  auto* base = static_cast<char*>(b.view().data);
  const std::size_t total = b.bytes();
  std::size_t filled = static_cast<std::size_t>(std::min(n, kRandomBlock)) * (total / static_cast<std::size_t>(n));
  while (filled < total) {
    const std::size_t count = std::min(filled, total - filled);
    FSA_RETURN_IF_ERROR(cuda_status(cudaMemcpy(base + filled, base, count, cudaMemcpyDeviceToDevice), "pool fill"));
    filled += count;
  }
  return Status::ok();
}

// `rows` rows of `columns` pool pages: a random permutation of [0, rows * columns).
std::vector<double> shuffled_table(std::int64_t rows, std::int64_t columns, std::mt19937_64& rng) {
  std::vector<double> table(static_cast<std::size_t>(rows * columns));
  std::iota(table.begin(), table.end(), 0.0);
  std::shuffle(table.begin(), table.end(), rng);
  return table;
}

// A view of rows [first, first + count) of a contiguous [rows, ...] buffer.
TensorView rows_of(const TensorView& t, std::int64_t first, std::int64_t count) {
  TensorView v = t;
  v.data = static_cast<char*>(t.data) + first * t.stride(0) * static_cast<std::int64_t>(dtype_size(t.dtype));
  v.sizes[0] = count;
  return v;
}

// The device buffers of one run, by name, allocated in order; the first failure is kept.
class Buffers {
 public:
  void make(const std::string& name, DType dtype, std::vector<std::int64_t> sizes) {
    if (!error_.empty()) return;
    std::string error;
    names_.push_back(name);
    buffers_.emplace_back(Device::cuda(0), dtype, std::move(sizes), &error);
    if (!error.empty()) error_ = name + ": " + error;
  }
  Buffer& operator[](const std::string& name) {
    return buffers_[static_cast<std::size_t>(std::find(names_.begin(), names_.end(), name) - names_.begin())];
  }
  TensorView view(const std::string& name) { return (*this)[name].view(); }
  const std::string& error() const { return error_; }

 private:
  std::vector<std::string> names_;
  std::vector<Buffer> buffers_;
  std::string error_;
};

// The layer's inputs of `tokens` new tokens (q, k, v, gates; weights of the default linear
// compression with PE on k) and their random values; `cu` from the lengths.
Status make_inputs(Buffers& b, const std::vector<std::int64_t>& lengths, int heads_q, const NsaConfig& config,
                   FastRandom& rng) {
  const std::int64_t n = std::accumulate(lengths.begin(), lengths.end(), std::int64_t{0});
  const std::int64_t hkv = DecodeConfig::kHeadsKv, d = DecodeConfig::kHeadDim, l = config.cmp_len;
  const DType bf16 = DType::kBFloat16;
  b.make("q", bf16, {n, heads_q, d});
  b.make("k", bf16, {n, hkv, d});
  b.make("v", bf16, {n, hkv, d});
  b.make("gates", bf16, {n, heads_q, 3});
  b.make("o", bf16, {n, heads_q, d});
  b.make("w_k", bf16, {hkv, l * d, d});
  b.make("w_v", bf16, {hkv, l * d, d});
  b.make("pe_k", bf16, {hkv, l, d});
  b.make("cu", DType::kInt32, {static_cast<std::int64_t>(lengths.size()) + 1});
  if (!b.error().empty()) return FSA_ERROR(StatusCode::kCudaError, b.error());
  std::vector<double> cu{0};
  for (const std::int64_t len : lengths) cu.push_back(cu.back() + static_cast<double>(len));
  const double w_scale = 1.0 / std::sqrt(static_cast<double>(l * d));
  FSA_RETURN_IF_ERROR(b["cu"].upload(cu));
  for (const char* name : {"q", "k", "v"}) FSA_RETURN_IF_ERROR(fill_random(b[name], rng, 1.0));
  FSA_RETURN_IF_ERROR(fill_random(b["w_k"], rng, w_scale));
  FSA_RETURN_IF_ERROR(fill_random(b["w_v"], rng, w_scale));
  FSA_RETURN_IF_ERROR(fill_random(b["pe_k"], rng, 0.1));
  // Gates in (0.05, 0.95), the range of the module's sigmoid gates.
  return b["gates"].upload(rng.values(b["gates"].numel(), 0.45 / std::sqrt(3.0), 0.5));
}

NsaLayerInputs inputs_of(Buffers& b) {
  NsaLayerInputs in;
  in.q = b.view("q");
  in.k = b.view("k");
  in.v = b.view("v");
  in.cu_seqlens = b.view("cu");
  in.w_k = b.view("w_k");
  in.pe_k = b.view("pe_k");
  in.w_v = b.view("w_v");
  in.gates = b.view("gates");
  return in;
}

// The cache's shape for `seqs` sequences of up to `tokens` tokens: raw pages of kPageBlocks blocks,
// compressed pages of page_size / s compressed tokens, one slot per sequence.
NsaCacheShape cache_shape(const NsaConfig& config, int seqs, std::int64_t tokens) {
  NsaCacheShape shape;
  shape.heads_kv = DecodeConfig::kHeadsKv;
  shape.head_dim_qk = shape.head_dim_v = DecodeConfig::kHeadDim;
  shape.page_size = kPageBlocks * config.block_size;
  shape.cmp_page_size = shape.page_size / config.cmp_stride;
  shape.num_pages = seqs * nsa_cache_pages(shape, tokens);
  shape.num_cmp_pages = seqs * nsa_cache_cmp_pages(config, shape, tokens);
  shape.num_slots = seqs;
  shape.dtype = DType::kBFloat16;
  shape.device = Device::cuda(0);
  return shape;
}

// The pools of `shape` filled with random values, tables of shuffled pages wide enough for
// `tokens` tokens per sequence, slots shuffled; cache_seqlens is left to the caller. head_major:
// the four page pools allocated [pages, Hkv, page_size, D] (cache_of passes them with those strides).
Status make_cache(Buffers& b, const NsaConfig& config, const NsaCacheShape& shape, std::int64_t tokens,
                  bool head_major, FastRandom& rng, std::mt19937_64& shuffle) {
  const std::int64_t hkv = shape.heads_kv, d = shape.head_dim_qk, seqs = shape.num_slots;
  const std::int64_t width = nsa_cache_pages(shape, tokens), cmp_width = nsa_cache_cmp_pages(config, shape, tokens);
  const DType bf16 = DType::kBFloat16;
  auto pool = [&](std::int64_t pages, std::int64_t rows) {
    return head_major ? std::vector<std::int64_t>{pages, hkv, rows, d} : std::vector<std::int64_t>{pages, rows, hkv, d};
  };
  b.make("k_pages", bf16, pool(shape.num_pages, shape.page_size));
  b.make("v_pages", bf16, pool(shape.num_pages, shape.page_size));
  b.make("k_cmp_pages", bf16, pool(shape.num_cmp_pages, shape.cmp_page_size));
  b.make("v_cmp_pages", bf16, pool(shape.num_cmp_pages, shape.cmp_page_size));
  b.make("k_tail", bf16, {seqs, nsa_cache_tail_rows(config), hkv, d});
  b.make("block_table", DType::kInt32, {seqs, width});
  b.make("cmp_block_table", DType::kInt32, {seqs, cmp_width});
  b.make("slots", DType::kInt32, {seqs});
  if (!b.error().empty()) return FSA_ERROR(StatusCode::kCudaError, b.error());
  for (const char* name : {"k_pages", "v_pages", "k_cmp_pages", "v_cmp_pages", "k_tail"})
    FSA_RETURN_IF_ERROR(fill_random(b[name], rng, 1.0));
  FSA_RETURN_IF_ERROR(b["block_table"].upload(shuffled_table(seqs, width, shuffle)));
  FSA_RETURN_IF_ERROR(b["cmp_block_table"].upload(shuffled_table(seqs, cmp_width, shuffle)));
  return b["slots"].upload(shuffled_table(seqs, 1, shuffle));
}

// The cache's views: [pages, page_size, Hkv, D] whatever the allocation (head-major pools are
// viewed through their strides).
NsaCache cache_of(Buffers& b, bool head_major) {
  auto pool = [&](const char* name) {
    const TensorView t = b.view(name);
    if (!head_major) return t;
    const std::int64_t pages = t.size(0), hkv = t.size(1), rows = t.size(2), d = t.size(3);
    return TensorView::strided(t.data, t.dtype, {pages, rows, hkv, d}, {hkv * rows * d, d, rows * d, 1}, t.device);
  };
  return {pool("k_pages"), pool("v_pages"), pool("k_cmp_pages"), pool("v_cmp_pages"), b.view("k_tail")};
}

// Samples of kStepsPerSample steps enqueued back to back on `stream` between two CUDA events (the
// host waits after each sample), divided by kStepsPerSample; kWarmupSamples untimed first.
template <class Fn>
Timing time_steps(cudaStream_t stream, int iterations, Fn&& step, Status* status) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<double> ms;
  for (int i = -kWarmupSamples; i < iterations && status->is_ok(); ++i) {
    cudaEventRecord(start, stream);
    for (int s = 0; s < kStepsPerSample && status->is_ok(); ++s) *status = step();
    cudaEventRecord(stop, stream);
    const cudaError_t waited = cudaEventSynchronize(stop);
    if (status->is_ok()) *status = cuda_status(waited, "step");
    float elapsed = 0;
    cudaEventElapsedTime(&elapsed, start, stop);
    if (i >= 0 && status->is_ok()) ms.push_back(elapsed / kStepsPerSample);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (ms.empty()) return {0, 0, 0};
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front(), ms.back()};
}

// One nsa_decode call captured on `stream` (the library launches on fsa::cuda_stream(), set by
// the caller's CudaStreamScope) and instantiated.
Status capture(cudaStream_t stream, const std::function<Status()>& step, cudaGraphExec_t* exec) {
  cudaGraph_t graph = nullptr;
  FSA_RETURN_IF_ERROR(cuda_status(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture"));
  const Status captured = step();
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  FSA_RETURN_IF_ERROR(captured);
  FSA_RETURN_IF_ERROR(cuda_status(ended, "capture"));
  const cudaError_t instantiated = cudaGraphInstantiate(exec, graph, 0);
  cudaGraphDestroy(graph);
  return cuda_status(instantiated, "graph instantiation");
}

// Eager and graph-replayed medians of one step function on `stream`.
struct ModeTimes {
  Timing eager{0, 0, 0}, graph{0, 0, 0};
};
Status time_modes(cudaStream_t stream, int iterations, const std::function<Status()>& step, ModeTimes* t) {
  Status status;
  t->eager = time_steps(stream, iterations, step, &status);  // also sets the kernels' attributes before the capture
  FSA_RETURN_IF_ERROR(status);
  cudaGraphExec_t exec = nullptr;
  FSA_RETURN_IF_ERROR(capture(stream, step, &exec));
  t->graph = time_steps(stream, iterations, [&] { return cuda_status(cudaGraphLaunch(exec, stream), "replay"); },
                        &status);
  cudaGraphExecDestroy(exec);
  return status;
}

// Distinct blocks the new tokens of each sequence selected, summed over sequences and kv heads
// (topk_idx [Hkv, N, K], tokens of a sequence consecutive, -1 padding).
std::int64_t distinct_selected_blocks(const std::vector<double>& topk, const DecodeConfig& c, int K) {
  const std::int64_t n = static_cast<std::int64_t>(c.batch) * c.q_len;
  std::int64_t total = 0;
  std::vector<double> blocks;
  for (std::int64_t h = 0; h < DecodeConfig::kHeadsKv; ++h)
    for (std::int64_t b = 0; b < c.batch; ++b) {
      blocks.clear();
      for (std::int64_t t = b * c.q_len; t < (b + 1) * c.q_len; ++t)
        for (int j = 0; j < K; ++j) {
          const double block = topk[static_cast<std::size_t>((h * n + t) * K + j)];
          if (block >= 0) blocks.push_back(block);
        }
      std::sort(blocks.begin(), blocks.end());
      total += std::unique(blocks.begin(), blocks.end()) - blocks.begin();
    }
  return total;
}

std::string format(const char* fmt, double value) {
  char text[64];
  std::snprintf(text, sizeof text, fmt, value);
  return text;
}

// The decode steps' selection route (every configuration brings at most 8 tokens per sequence, so
// the library fuses unless FSA_DECODE_SELECT=two-pass; it refuses any other value itself).
DecodeSelect select_route() {
  const char* env = std::getenv("FSA_DECODE_SELECT");
  return env != nullptr && std::string(env) == "two-pass" ? DecodeSelect::kTwoPass : DecodeSelect::kFused;
}

// The decode rows of one configuration: "skipped" (a '#' line, returns true) when its buffers do
// not fit the GPU's free memory; false on a failure (printed).
bool run_decode_config(const DecodeConfig& c, const NsaConfig& config, int iterations, double bandwidth, bool head_major,
                       BenchOutput* out) {
  const std::string name = decode_config_name(c);
  const int hq = DecodeConfig::kHeadsKv * c.group;
  const std::int64_t end = c.context + c.q_len;
  const NsaCacheShape shape = cache_shape(config, c.batch, end);
  // Dense: the same step with a window over the whole cache (w >= every key of every new token).
  NsaConfig dense = config;
  dense.window = static_cast<int>(end);

  // Memory, checked before anything is allocated: the pools, both workspaces (one buffer), the
  // inputs and the compression weights (below 1%: a 10% allowance).
  NsaInferenceShape step_shape;
  step_shape.tokens = static_cast<std::int64_t>(c.batch) * c.q_len;
  step_shape.num_seqs = c.batch;
  step_shape.max_context = nsa_cache_pages(shape, end) * shape.page_size;
  step_shape.heads_q = hq;
  step_shape.heads_kv = DecodeConfig::kHeadsKv;
  step_shape.head_dim_qk = step_shape.head_dim_v = DecodeConfig::kHeadDim;
  step_shape.dtype = DType::kBFloat16;
  step_shape.device = Device::cuda(0);
  const std::size_t workspace_bytes =
      std::max(nsa_decode_workspace_bytes(config, step_shape), nsa_decode_workspace_bytes(dense, step_shape));
  const double pools = static_cast<double>(nsa_cache_bytes(config, shape).total());
  const double needed = 1.1 * (pools + static_cast<double>(workspace_bytes)) + (64 << 20);
  std::uint64_t free_bytes = 0, total_bytes = 0;
  if (!cuda_memory_info(&free_bytes, &total_bytes) || workspace_bytes == 0 || pools == 0) {
    std::fprintf(stderr, "%s: cannot size the problem (cudaMemGetInfo or the size queries failed)\n", name.c_str());
    return false;
  }
  if (needed > static_cast<double>(free_bytes) - static_cast<double>(kMemoryMargin)) {
    out->comment("skipped " + name + ": its pools and workspace need " + format("%.1f", needed / (1ull << 30)) +
                 " GiB, the GPU has " + format("%.1f", static_cast<double>(free_bytes) / (1ull << 30)) + " GiB free");
    return true;
  }

  Buffers b;
  FastRandom rng(29);
  std::mt19937_64 shuffle(31);
  Status s = make_inputs(b, std::vector<std::int64_t>(static_cast<std::size_t>(c.batch), c.q_len), hq, config, rng);
  if (s.is_ok()) s = make_cache(b, config, shape, end, head_major, rng, shuffle);
  b.make("cache_seqlens", DType::kInt32, {c.batch});
  b.make("topk", DType::kInt32, {DecodeConfig::kHeadsKv, step_shape.tokens, config.topk});
  b.make("workspace", DType::kUInt8, {static_cast<std::int64_t>(workspace_bytes)});
  if (s.is_ok() && !b.error().empty()) s = FSA_ERROR(StatusCode::kCudaError, b.error());
  if (s.is_ok()) s = b["cache_seqlens"].upload(std::vector<double>(static_cast<std::size_t>(c.batch), c.context));
  // The fills' device copies ran on the default stream; the steps run on their own stream.
  if (s.is_ok()) s = synchronize(Device::cuda(0));
  if (!s.is_ok()) {
    std::fprintf(stderr, "%s: %s\n", name.c_str(), s.to_string().c_str());
    return false;
  }
  const NsaLayerInputs in = inputs_of(b);
  const NsaCache cache = cache_of(b, head_major);
  const NsaCacheBatch batch{b.view("block_table"), b.view("cmp_block_table"), b.view("cache_seqlens"),
                            b.view("slots")};
  const TensorView o = b.view("o");
  const Workspace ws{b.view("workspace").data, workspace_bytes};

  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
    std::fprintf(stderr, "%s: cudaStreamCreate failed\n", name.c_str());
    return false;
  }
  ModeTimes nsa, full;
  std::vector<double> topk;
  {
    const CudaStreamScope scope(stream);
    // cache_seqlens is never advanced: every step writes the same new tokens and reads the same
    // keys, so every step and replay does the same work.
    NsaInferenceBranches branches;
    branches.topk_idx = b.view("topk");
    s = nsa_decode(config, in, cache, batch, o, branches, ws);  // the selections, for the byte model
    if (s.is_ok()) s = cuda_status(cudaStreamSynchronize(stream), "step");
    if (s.is_ok()) s = b["topk"].download(&topk);
    if (s.is_ok())
      s = time_modes(stream, iterations, [&] { return nsa_decode(config, in, cache, batch, o, {}, ws); }, &nsa);
    if (s.is_ok())
      s = time_modes(stream, iterations, [&] { return nsa_decode(dense, in, cache, batch, o, {}, ws); }, &full);
  }
  cudaStreamDestroy(stream);
  if (!s.is_ok()) {
    std::fprintf(stderr, "%s: %s\n", name.c_str(), s.to_string().c_str());
    return false;
  }
  const DecodeBytes bytes = decode_step_bytes(c, config, distinct_selected_blocks(topk, c, config.topk), select_route());
  const double floor_ms = bytes.total() / bandwidth * 1e3;
  const std::tuple<const char*, Timing, Timing> modes[] = {{"eager", nsa.eager, full.eager},
                                                            {"graph", nsa.graph, full.graph}};
  for (const auto& [mode, t, t_full] : modes) {
    const double dense_ms = t_full.median - t.median;
    char line[400];
    std::snprintf(line, sizeof line, "%s,%d,%lld,%d,%d,%s,%.4f,%.4f,%.4f,%.1f,%.4f,%.3f,%.4f,%s", name.c_str(),
                  c.batch, static_cast<long long>(c.context), c.group, c.q_len, mode, t.median, t.min, t.max,
                  bytes.total() / 1e6, floor_ms, floor_ms / t.median, dense_ms,
                  dense_ms > 0 ? format("%.2f", dense_ms / t.median).c_str() : "");
    out->row(line);
  }
  return true;
}

// S64-G4 through nsa_prefill in 4 chunks (ends off every grid of s, l and B; the cache of one
// sequence emptied by passing cache_seqlens 0 to the first chunk) against one nsa_forward (no
// saved buffer), each timed as time_gpu does (one sample = the whole sequence).
bool run_prefill_comparison(const NsaConfig& config, int iterations, bool head_major, BenchOutput* out) {
  const int group = 4, hq = DecodeConfig::kHeadsKv * group;
  std::int64_t n = 0;
  for (const std::int64_t len : kPrefillChunks) n += len;
  Buffers b;
  FastRandom rng(37);
  std::mt19937_64 shuffle(41);
  const NsaCacheShape shape = cache_shape(config, 1, n);
  Status s = make_inputs(b, {n}, hq, config, rng);
  if (s.is_ok()) s = make_cache(b, config, shape, n, head_major, rng, shuffle);
  std::vector<std::int64_t> starts;
  for (std::size_t i = 0; i < std::size(kPrefillChunks); ++i) {
    starts.push_back(i == 0 ? 0 : starts.back() + kPrefillChunks[i - 1]);
    b.make("cu" + std::to_string(i), DType::kInt32, {2});
    b.make("cached" + std::to_string(i), DType::kInt32, {1});
  }
  if (s.is_ok() && !b.error().empty()) s = FSA_ERROR(StatusCode::kCudaError, b.error());
  for (std::size_t i = 0; i < starts.size() && s.is_ok(); ++i) {
    s = b["cu" + std::to_string(i)].upload({0.0, static_cast<double>(kPrefillChunks[i])});
    if (s.is_ok()) s = b["cached" + std::to_string(i)].upload({static_cast<double>(starts[i])});
  }
  if (s.is_ok()) s = synchronize(Device::cuda(0));
  if (!s.is_ok()) {
    std::fprintf(stderr, "%s: %s\n", kDecodePrefillConfig, s.to_string().c_str());
    return false;
  }
  const NsaLayerInputs whole = inputs_of(b);
  const NsaCache cache = cache_of(b, head_major);
  std::vector<NsaLayerInputs> chunk_inputs;
  std::vector<NsaCacheBatch> chunk_batches;
  std::vector<TensorView> chunk_o;
  for (std::size_t i = 0; i < starts.size(); ++i) {
    NsaLayerInputs in = whole;
    for (TensorView* t : {&in.q, &in.k, &in.v, &in.gates}) *t = rows_of(*t, starts[i], kPrefillChunks[i]);
    in.cu_seqlens = b.view("cu" + std::to_string(i));
    chunk_inputs.push_back(in);
    chunk_batches.push_back({b.view("block_table"), b.view("cmp_block_table"), b.view("cached" + std::to_string(i)),
                             b.view("slots")});
    chunk_o.push_back(rows_of(b.view("o"), starts[i], kPrefillChunks[i]));
  }
  BenchWorkspace workspace;
  const auto prefill = [&] {
    for (std::size_t i = 0; i < starts.size(); ++i) {
      const std::size_t bytes = nsa_prefill_workspace_bytes(
          config, NsaInferenceShape::of(chunk_inputs[i], cache, chunk_batches[i]));
      FSA_RETURN_IF_ERROR(nsa_prefill(config, chunk_inputs[i], cache, chunk_batches[i], chunk_o[i], {},
                                      workspace.take(bytes)));
    }
    return Status::ok();
  };
  const auto forward = [&] {
    const std::size_t bytes = nsa_forward_workspace_bytes(config, NsaLayerShape::of(whole), false);
    return nsa_forward(config, whole, b.view("o"), TensorView{}, {}, workspace.take(bytes));
  };
  bool ok = true;
  for (const auto& [mode, body] : std::vector<std::pair<std::string, std::function<Status()>>>{
           {"prefill 4 chunks", prefill}, {"nsa_forward", forward}}) {
    Timing t;
    if (!time_phase(kDecodePrefillConfig, mode, iterations, body, &t, &workspace)) {
      ok = false;
      continue;
    }
    char line[300];
    std::snprintf(line, sizeof line, "%s,1,%lld,%d,%lld,%s,%.4f,%.4f,%.4f,,,,,", kDecodePrefillConfig,
                  static_cast<long long>(n), group, static_cast<long long>(n), mode.c_str(), t.median, t.min, t.max);
    out->row(line);
  }
  return ok;
}

}  // namespace

int run_bench_decode(const BenchOptions& options) {
  CudaDeviceInfo info;
  if (!bench_device(&info)) return 2;
  const NsaConfig config;  // the defaults: l=32, s=16, B=64, K=16, I=1, L=2, w=512
  std::string bandwidth_source;
  double bandwidth = hbm_bandwidth_of(info.name, &bandwidth_source);
  if (options.hbm_bandwidth > 0) {
    bandwidth = options.hbm_bandwidth;
    bandwidth_source = format("%.4g B/s", bandwidth) + " (--hbm-bandwidth)";
  }
  // What runs: the named configurations in the order given, else the grid (--all) or the default
  // subset, each followed by the prefill comparison.
  std::vector<std::string> names = options.configs;
  if (names.empty()) {
    if (options.all) {
      for (const DecodeConfig& c : decode_grid()) names.push_back(decode_config_name(c));
    } else {
      names = default_decode_configs();
    }
    names.push_back(kDecodePrefillConfig);
  }
  const std::vector<std::string> caption = {
      "bf16, D=128, Hkv=4, Hq=4G, l=32, s=16, B=64, K=16, w=512, linear compression with PE on k, RoPE, per-head "
      "gates; raw pages of 256 tokens, compressed pages of 16, page tables shuffled, pools of random values (a "
      "random block of 4194301 elements repeated), cache_seqlens = context, every sequence brings q_len new tokens",
      std::string("pools ") + (options.head_major_pools
                                   ? "head-major (--cache-layout head-major: allocated [pages, Hkv, page_size, D], "
                                     "passed as [pages, page_size, Hkv, D] views with those strides)"
                                   : "token-major ([pages, page_size, Hkv, D], contiguous)"),
      "per step: median (min, max) of " + std::to_string(options.iterations) + " samples after " +
          std::to_string(kWarmupSamples) + " warm-up samples, each " + std::to_string(kStepsPerSample) +
          " steps enqueued back to back on one stream between two CUDA events, divided by " +
          std::to_string(kStepsPerSample) + "; ms. eager: nsa_decode called from the host per step; graph: one "
          "nsa_decode (plan + run) captured with the fixed workspace of nsa_decode_workspace_bytes and replayed. "
          "cache_seqlens is not advanced between steps or replays: every step writes the same new tokens and does "
          "the same work (at these contexts it completes no compression window; one step in s does)",
      std::string("selection: ") +
          (select_route() == DecodeSelect::kTwoPass
               ? "two-pass (FSA_DECODE_SELECT=two-pass: a second pass over k~ scores the blocks)"
               : "fused (block scores from the partials the compressed attention writes)"),
      "bytes_mb: docs/kernels/decode.md's byte model as implemented (compressed k~ and v~; k~ again for a "
      "two-pass selection, or the fused selection's block partials written and read; the distinct blocks the step's topk_idx selected, the window, q/k/v/gates in and o out, new "
      "keys, values and ring rows written; MB = 1e6 B); floor_ms = bytes / " + bandwidth_source +
          "; floor_frac = floor_ms / ms",
      "dense_ms: nsa_decode with w = context + q_len (its window branch is then dense attention of the new tokens "
      "over the whole paged cache; the library has no separate dense paged kernel) minus the NSA step, same mode: "
      "the time dense attention adds; speedup_vs_dense = dense_ms / ms",
      std::string(kDecodePrefillConfig) + " rows: one sequence of 65536 tokens at G 4 through nsa_prefill in 4 "
          "chunks (16389, 16382, 16386, 16379 tokens) vs one nsa_forward without a saved buffer; median (min, max) "
          "of " + std::to_string(options.iterations) + " after 2 warm-ups, one sample = the whole sequence, "
          "CUDA events on the default stream"};
  BenchOutput out("decode", info, options,
                  "config,batch,context,G,q_len,mode,ms,min,max,bytes_mb,floor_ms,floor_frac,dense_ms,"
                  "speedup_vs_dense",
                  caption);
  int failures = 0;
  for (const std::string& name : names) {
    if (name == kDecodePrefillConfig) {
      failures += run_prefill_comparison(config, options.iterations, options.head_major_pools, &out) ? 0 : 1;
      continue;
    }
    DecodeConfig c;
    if (const std::string e = parse_decode_config(name, &c); !e.empty()) {  // checked by the option parser
      std::fprintf(stderr, "%s\n", e.c_str());
      ++failures;
      continue;
    }
    failures += run_decode_config(c, config, options.iterations, bandwidth, options.head_major_pools, &out) ? 0 : 1;
  }
  return failures == 0 ? 0 : 1;
}

#endif  // FSA_WITH_CUDA

}  // namespace fsa::tool
