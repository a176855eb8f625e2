// Inference with a paged cache on the GPU (nsa_prefill / nsa_decode) against the CPU reference on
// the same problem: the output, each branch, topk_idx and the cache the call leaves.
//
// Each test builds the cache state of every sequence with one CPU prefill (fp32 pools, rounded to
// the GPU's dtype afterwards, so that both backends start from the same values), copies it to the
// GPU, and runs the same steps on both: the CPU in fp32 on the rounded inputs, the GPU in bf16/fp16
// with poisoned outputs. Pages are handed out shuffled, compressed pages hold an odd number of
// tokens (windows cross pages), unused table entries and pool rows are NaN-poisoned (a read of
// them would show), and slots are shuffled.
//
// Selection: the GPU keeps rotated q and compressed keys in the input dtype, the reference in fp32,
// so block scores differ by ~1e-3 relative and a token whose K-th and (K+1)-th blocks are that close
// may select differently. Every GPU row must be well formed (ascending, -1 padded, min(K, bq + 1)
// blocks, forced blocks present); a row that differs from the reference's may only swap blocks whose
// scores, recomputed here in fp64 from the reference's cache, are within kNearTie of each other, and
// few rows may differ. The selected branch and the output are compared on the rows whose selection
// matches; the compressed and window branches on every row.
//
// Cases: cache lengths {1, l-1, l, l+s-1, B-1, B, B+1, 4B+7, ~3000} with 1..8 new tokens in one
// ragged batch (G = 1, 4, 16; first-head aggregation; fp16 with mean compression, shared gates and
// no RoPE), chunked prefill (long chunks, an empty chunk, an empty cache; the selected branch in the
// KV-outer kernels and in the decode kernel), several decode steps in a
// row, and one decode step captured in a CUDA graph and replayed as cache_seqlens advance on the
// device (steps that complete a compression window and steps that do not).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "common/rope_frequency.hpp"
#include "fsa/cache.hpp"
#include "gpu_compare.hpp"
#include "kernels/decode/decode.hpp"          // cuda::decode::quarter_kernel_launches()
#include "kernels/decode/decode_tiling.hpp"   // cuda::decode::attn_quarter_ctas_per_sm

namespace fsa::test {
namespace {

constexpr double kNearTie = 2e-2;        // relative score gap of a tolerated swap
constexpr double kMaxDifferingRows = 0.05;  // share of (token, kv head) rows whose selection may differ

struct CacheCase {
  NsaConfig config;
  int hq = 8, hkv = 2, dqk = 128, dv = 128;
  DType dtype = DType::kBFloat16;
  int page_size = 64;      // a multiple of B
  int cmp_page_size = 5;   // compressed tokens per page: windows cross pages
  std::int64_t min_table_width = 0;  // raw block table columns at least (its width x page_size bounds the plan)
  std::vector<std::int64_t> cached;                  // tokens cached before the steps, per sequence
  std::vector<std::vector<std::int64_t>> steps;      // new tokens per step, per sequence
  // Tokens kept after each step (the caller's next cache_seqlens - P: speculative decoding drops
  // the rejected tail); empty: all of them.
  std::vector<std::vector<std::int64_t>> kept;
  // The four page pools allocated [pages, Hkv, rows, D] on the device and passed as [pages, rows,
  // Hkv, D] views through their strides (a kv head's rows of a page contiguous).
  bool head_major = false;
};

std::string describe(const CacheCase& c) {
  std::string s = std::string(dtype_name(c.dtype)) + " G=" + std::to_string(c.hq / c.hkv) +
                  (c.config.aggregation == ScoreAggregation::kFirstHead ? " first_head" : "") +
                  (c.config.compression == CompressionKind::kMean ? " mean" : " linear") +
                  (c.config.rope.enabled ? "" : " no-rope") + " cached=";
  for (auto n : c.cached) s += std::to_string(n) + ",";
  return s;
}

// A host tensor's values in another dtype (NaN stays NaN).
HostTensor converted(const HostTensor& t, DType dtype) { return as_dtype(t, dtype); }

// The layer's parameters, shared by every call of a case (w_k, w_v empty for mean compression).
struct Params {
  HostTensor w_k, pe_k, w_v;

  Params to(DType dtype) const {
    Params p;
    if (!w_k.sizes().empty()) p.w_k = converted(w_k, dtype);
    if (!w_v.sizes().empty()) p.w_v = converted(w_v, dtype);
    p.pe_k = converted(pe_k, dtype);
    return p;
  }
};

Params make_params(const CacheCase& c, std::mt19937_64& rng) {
  Params p;
  const std::int64_t l = c.config.cmp_len;
  if (c.config.compression == CompressionKind::kLinear) {
    p.w_k = HostTensor(c.dtype, {c.hkv, l * c.dqk, c.dqk});
    p.w_v = HostTensor(c.dtype, {c.hkv, l * c.dv, c.dv});
    p.w_k.fill_normal(rng, 1.0 / std::sqrt(static_cast<double>(l * c.dqk)));
    p.w_v.fill_normal(rng, 1.0 / std::sqrt(static_cast<double>(l * c.dv)));
  }
  p.pe_k = HostTensor(c.dtype, {c.hkv, l, c.dqk});
  p.pe_k.fill_normal(rng, 0.5);
  return p;
}

// The new tokens of one call.
struct Chunk {
  std::vector<std::int64_t> lengths;
  HostTensor cu, q, k, v, gates;

  std::int64_t tokens() const { return q.sizes()[0]; }
  Chunk to(DType dtype) const { return {lengths, cu, converted(q, dtype), converted(k, dtype), converted(v, dtype), converted(gates, dtype)}; }
};

Chunk make_chunk(const CacheCase& c, const std::vector<std::int64_t>& lengths, std::mt19937_64& rng) {
  Chunk x;
  x.lengths = lengths;
  const std::int64_t n = std::accumulate(lengths.begin(), lengths.end(), std::int64_t{0});
  x.cu = make_cu_seqlens(lengths);
  x.q = HostTensor(c.dtype, {n, c.hq, c.dqk});
  x.k = HostTensor(c.dtype, {n, c.hkv, c.dqk});
  x.v = HostTensor(c.dtype, {n, c.hkv, c.dv});
  x.q.fill_normal(rng);
  x.k.fill_normal(rng);
  x.v.fill_normal(rng);
  x.gates = c.config.gate_mode == GateMode::kPerHead ? HostTensor(c.dtype, {n, c.hq, 3}) : HostTensor(c.dtype, {n, 3});
  x.gates.fill_uniform(rng, 0.05, 0.95);
  return x;
}

NsaLayerInputs inputs_of(const Chunk& x, const Params& p) {
  NsaLayerInputs in;
  in.q = x.q.view();
  in.k = x.k.view();
  in.v = x.v.view();
  in.cu_seqlens = x.cu.view();
  in.w_k = p.w_k.sizes().empty() ? TensorView{} : p.w_k.view();
  in.pe_k = p.pe_k.view();
  in.w_v = p.w_v.sizes().empty() ? TensorView{} : p.w_v.view();
  in.gates = x.gates.view();
  return in;
}

// The pools and the batch tables of one backend, on the host.
struct CacheState {
  HostTensor k_pages, v_pages, k_cmp_pages, v_cmp_pages, k_tail;
  HostTensor block_table, cmp_block_table, cache_seqlens, slots;

  NsaCache cache() const { return {k_pages.view(), v_pages.view(), k_cmp_pages.view(), v_cmp_pages.view(), k_tail.view()}; }
  NsaCacheBatch batch() const { return {block_table.view(), cmp_block_table.view(), cache_seqlens.view(), slots.view()}; }
  std::vector<HostTensor*> pools() { return {&k_pages, &v_pages, &k_cmp_pages, &v_cmp_pages, &k_tail}; }
  void advance(const std::vector<std::int64_t>& lengths) {
    for (std::size_t b = 0; b < lengths.size(); ++b)
      cache_seqlens.set(static_cast<std::int64_t>(b), cache_seqlens.get(static_cast<std::int64_t>(b)) + static_cast<double>(lengths[b]));
  }
};

// A fresh fp32 cache for the case's sequences at their longest over all steps: pages shuffled, one
// spare page (poisoned, never written) named by every unused table entry, pools poisoned, slots
// shuffled, lengths 0.
CacheState make_cache(const CacheCase& c, std::mt19937_64& rng) {
  const std::int64_t nseq = static_cast<std::int64_t>(c.cached.size());
  std::vector<std::int64_t> longest = c.cached;
  for (const auto& step : c.steps)
    for (std::int64_t b = 0; b < nseq; ++b) longest[static_cast<std::size_t>(b)] += step[static_cast<std::size_t>(b)];
  const NsaConfig& cfg = c.config;
  auto raw_pages = [&](std::int64_t n) { return (n + c.page_size - 1) / c.page_size; };
  auto cmp_pages_of = [&](std::int64_t n) { return (compressed_length(n, cfg) + c.cmp_page_size - 1) / c.cmp_page_size; };
  std::int64_t pages = 0, cmp_pages = 0, width = std::max<std::int64_t>(1, c.min_table_width), cmp_width = 1;
  for (const std::int64_t n : longest) {
    pages += raw_pages(n);
    cmp_pages += cmp_pages_of(n);
    width = std::max(width, raw_pages(n) + 1);  // a spare column: tables wider than the sequences need
    cmp_width = std::max(cmp_width, cmp_pages_of(n) + 1);
  }
  CacheState s;
  const std::int64_t num_slots = nseq + 2;
  s.k_pages = HostTensor(DType::kFloat32, {pages + 1, c.page_size, c.hkv, c.dqk});
  s.v_pages = HostTensor(DType::kFloat32, {pages + 1, c.page_size, c.hkv, c.dv});
  s.k_cmp_pages = HostTensor(DType::kFloat32, {cmp_pages + 1, c.cmp_page_size, c.hkv, c.dqk});
  s.v_cmp_pages = HostTensor(DType::kFloat32, {cmp_pages + 1, c.cmp_page_size, c.hkv, c.dv});
  s.k_tail = HostTensor(DType::kFloat32, {num_slots, nsa_cache_tail_rows(cfg), c.hkv, c.dqk});
  for (HostTensor* t : s.pools()) t->poison();
  auto assign = [&](std::int64_t total, std::int64_t columns, auto need) {
    std::vector<std::int32_t> order(static_cast<std::size_t>(total));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    HostTensor table(DType::kInt32, {nseq, columns});
    std::size_t next = 0;
    for (std::int64_t b = 0; b < nseq; ++b)
      for (std::int64_t j = 0; j < columns; ++j)
        table.set(b * columns + j, j < need(longest[static_cast<std::size_t>(b)]) ? order[next++] : total);
    return table;
  };
  s.block_table = assign(pages, width, raw_pages);
  s.cmp_block_table = assign(cmp_pages, cmp_width, cmp_pages_of);
  s.cache_seqlens = HostTensor(DType::kInt32, {nseq});
  s.slots = HostTensor(DType::kInt32, {nseq});
  std::vector<std::int32_t> slot_order(static_cast<std::size_t>(num_slots));
  std::iota(slot_order.begin(), slot_order.end(), 0);
  std::shuffle(slot_order.begin(), slot_order.end(), rng);
  for (std::int64_t b = 0; b < nseq; ++b) {
    s.cache_seqlens.set(b, 0);
    s.slots.set(b, slot_order[static_cast<std::size_t>(b)]);
  }
  return s;
}

// The pools' values rounded to `dtype` (the cache the GPU starts from), kept in fp32.
void round_pools(CacheState& s, DType dtype) {
  for (HostTensor* t : s.pools()) *t = converted(converted(*t, dtype), DType::kFloat32);
}

// The outputs of one call.
struct StepOut {
  HostTensor o, o_cmp, o_slc, o_swa, topk;
  std::vector<HostTensor*> all() { return {&o, &o_cmp, &o_slc, &o_swa, &topk}; }
  NsaInferenceBranches branches() const { return {o_cmp.view(), o_slc.view(), o_swa.view(), topk.view()}; }
};

StepOut poisoned_outputs(const CacheCase& c, DType dtype, std::int64_t n) {
  StepOut out{HostTensor(dtype, {n, c.hq, c.dv}), HostTensor(dtype, {n, c.hq, c.dv}),
              HostTensor(dtype, {n, c.hq, c.dv}), HostTensor(dtype, {n, c.hq, c.dv}),
              HostTensor(DType::kInt32, {c.hkv, n, c.config.topk})};
  for (HostTensor* t : out.all()) t->poison();
  return out;
}

bool is_decode(const std::vector<std::int64_t>& lengths) {
  return std::all_of(lengths.begin(), lengths.end(), [](std::int64_t n) { return n <= kMaxDecodeTokens; }) &&
         std::any_of(lengths.begin(), lengths.end(), [](std::int64_t n) { return n > 0; });
}

// The reference: one call in fp32 (params and chunk already fp32), then the lengths advance by
// `kept` (all the new tokens when empty).
StepOut run_cpu(const CacheCase& c, const Params& p32, const Chunk& x32, CacheState& cpu,
                const std::vector<std::int64_t>& kept = {}) {
  StepOut out = poisoned_outputs(c, DType::kFloat32, x32.tokens());
  const NsaLayerInputs in = inputs_of(x32, p32);
  if (is_decode(x32.lengths)) {
    FSA_EXPECT_OK(nsa_decode(c.config, in, cpu.cache(), cpu.batch(), out.o.view(), out.branches()));
  } else {
    FSA_EXPECT_OK(nsa_prefill(c.config, in, cpu.cache(), cpu.batch(), out.o.view(), out.branches()));
  }
  cpu.advance(kept.empty() ? x32.lengths : kept);
  return out;
}

// Device memory of `bytes`, filled with 0xff (NaN in bf16/fp16, -1 in int32) so that scratch read
// before it is written shows.
class DeviceBytes {
 public:
  explicit DeviceBytes(std::size_t bytes) : bytes_(bytes) {
    EXPECT_EQ(cudaMalloc(&data_, std::max<std::size_t>(bytes, 256)), cudaSuccess);
    EXPECT_EQ(cudaMemset(data_, 0xff, std::max<std::size_t>(bytes, 256)), cudaSuccess);
  }
  ~DeviceBytes() { cudaFree(data_); }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  Workspace workspace() const { return {data_, bytes_}; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

void upload(const DeviceTensor& dst, const HostTensor& src, cudaStream_t stream = nullptr) {
  ASSERT_EQ(cudaMemcpyAsync(dst.view().data, src.view().data, static_cast<std::size_t>(src.numel()) * dtype_size(src.dtype()),
                            cudaMemcpyHostToDevice, stream),
            cudaSuccess);
}

// A page pool with its dims 1 and 2 swapped ([pages, rows, Hkv, D] <-> [pages, Hkv, rows, D]).
HostTensor swap_rows_and_heads(const HostTensor& t) {
  const std::int64_t pages = t.sizes()[0], a = t.sizes()[1], b = t.sizes()[2], d = t.sizes()[3];
  HostTensor out(t.dtype(), {pages, b, a, d});
  for (std::int64_t p = 0; p < pages; ++p)
    for (std::int64_t i = 0; i < a; ++i)
      for (std::int64_t j = 0; j < b; ++j)
        for (std::int64_t e = 0; e < d; ++e) out.set(((p * b + j) * a + i) * d + e, t.get(((p * a + i) * b + j) * d + e));
  return out;
}

// The GPU's cache: device copies of the pools (in the case's dtype; head_major: see CacheCase) and
// of the tables; the lengths are kept on the host too (the caller advances them).
struct DeviceCache {
  std::unique_ptr<DeviceTensor> k_pages, v_pages, k_cmp_pages, v_cmp_pages, k_tail;
  std::unique_ptr<DeviceTensor> block_table, cmp_block_table, cache_seqlens, slots;
  HostTensor host_seqlens;
  bool head_major = false;

  DeviceCache(const CacheState& s, DType dtype, bool head_major_pools = false)
      : host_seqlens(s.cache_seqlens), head_major(head_major_pools) {
    auto pool = [&](const HostTensor& t) {
      return std::make_unique<DeviceTensor>(converted(head_major ? swap_rows_and_heads(t) : t, dtype));
    };
    k_pages = pool(s.k_pages);
    v_pages = pool(s.v_pages);
    k_cmp_pages = pool(s.k_cmp_pages);
    v_cmp_pages = pool(s.v_cmp_pages);
    k_tail = std::make_unique<DeviceTensor>(converted(s.k_tail, dtype));
    block_table = std::make_unique<DeviceTensor>(s.block_table);
    cmp_block_table = std::make_unique<DeviceTensor>(s.cmp_block_table);
    cache_seqlens = std::make_unique<DeviceTensor>(s.cache_seqlens);
    slots = std::make_unique<DeviceTensor>(s.slots);
  }
  NsaCache cache() const {
    auto pool = [&](const DeviceTensor& t) {
      const TensorView v = t.view();
      if (!head_major) return v;
      const std::int64_t pages = v.size(0), hkv = v.size(1), rows = v.size(2), d = v.size(3);
      return TensorView::strided(v.data, v.dtype, {pages, rows, hkv, d}, {hkv * rows * d, d, rows * d, 1}, v.device);
    };
    return {pool(*k_pages), pool(*v_pages), pool(*k_cmp_pages), pool(*v_cmp_pages), k_tail->view()};
  }
  NsaCacheBatch batch() const {
    return {block_table->view(), cmp_block_table->view(), cache_seqlens->view(), slots->view()};
  }
  // The pools in fp32, the tables and the lengths (host copy).
  CacheState download() const {
    CacheState s;
    auto pool = [&](const DeviceTensor& t) {
      HostTensor host = converted(t.download(), DType::kFloat32);
      return head_major ? swap_rows_and_heads(host) : host;
    };
    s.k_pages = pool(*k_pages);
    s.v_pages = pool(*v_pages);
    s.k_cmp_pages = pool(*k_cmp_pages);
    s.v_cmp_pages = pool(*v_cmp_pages);
    s.k_tail = converted(k_tail->download(), DType::kFloat32);
    s.block_table = block_table->download();
    s.cmp_block_table = cmp_block_table->download();
    s.cache_seqlens = host_seqlens;
    s.slots = slots->download();
    return s;
  }
  void advance(const std::vector<std::int64_t>& lengths, cudaStream_t stream = nullptr) {
    for (std::size_t b = 0; b < lengths.size(); ++b)
      host_seqlens.set(static_cast<std::int64_t>(b), host_seqlens.get(static_cast<std::int64_t>(b)) + static_cast<double>(lengths[b]));
    upload(*cache_seqlens, host_seqlens, stream);
  }
};

// Device copies of a call's inputs and outputs.
struct DeviceStep : DeviceTensors {
  DeviceStep(const Chunk& x, const Params& p, const StepOut& out) {
    for (const auto& [name, h] : std::map<std::string, const HostTensor*>{
             {"cu", &x.cu}, {"q", &x.q}, {"k", &x.k}, {"v", &x.v}, {"gates", &x.gates}, {"pe_k", &p.pe_k},
             {"w_k", &p.w_k}, {"w_v", &p.w_v}, {"o", &out.o}, {"o_cmp", &out.o_cmp}, {"o_slc", &out.o_slc},
             {"o_swa", &out.o_swa}, {"topk", &out.topk}})
      add(name, *h);
  }
  NsaLayerInputs inputs() const { return layer_inputs(); }
  NsaInferenceBranches branches() const { return {view("o_cmp"), view("o_slc"), view("o_swa"), view("topk")}; }
  StepOut download() const {
    return {DeviceTensors::download("o"), DeviceTensors::download("o_cmp"), DeviceTensors::download("o_slc"),
            DeviceTensors::download("o_swa"), DeviceTensors::download("topk")};
  }
};

// The GPU: one call with a caller workspace sized by the query (poisoned), then the lengths advance.
StepOut run_gpu(const CacheCase& c, const Params& p, const Chunk& x, DeviceCache& gpu,
                const std::vector<std::int64_t>& kept = {}) {
  const DeviceStep dev(x, p, poisoned_outputs(c, c.dtype, x.tokens()));
  const NsaLayerInputs in = dev.inputs();
  const NsaInferenceShape shape = NsaInferenceShape::of(in, gpu.cache(), gpu.batch());
  const bool decode = is_decode(x.lengths);
  const DeviceBytes ws(decode ? nsa_decode_workspace_bytes(c.config, shape) : nsa_prefill_workspace_bytes(c.config, shape));
  if (decode) {
    FSA_EXPECT_OK(nsa_decode(c.config, in, gpu.cache(), gpu.batch(), dev.view("o"), dev.branches(), ws.workspace()));
  } else {
    FSA_EXPECT_OK(nsa_prefill(c.config, in, gpu.cache(), gpu.batch(), dev.view("o"), dev.branches(), ws.workspace()));
  }
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  gpu.advance(kept.empty() ? x.lengths : kept);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return dev.download();
}

// ---- Comparison ------------------------------------------------------------------------------

// x rotated at `position` in fp64 (GPT-NeoX rotate-half with the frequencies both backends use).
std::vector<double> rotated(const CacheCase& c, const std::vector<double>& x, std::int64_t position) {
  if (!c.config.rope.enabled) return x;
  const int half = static_cast<int>(x.size()) / 2;
  std::vector<double> y(x.size());
  for (int i = 0; i < half; ++i) {
    const double angle = static_cast<double>(position) * rope_frequency(c.config.rope, i, static_cast<int>(x.size()));
    y[i] = x[i] * std::cos(angle) - x[i + half] * std::sin(angle);
    y[i + half] = x[i + half] * std::cos(angle) + x[i] * std::sin(angle);
  }
  return y;
}

// Block scores of new token t of sequence b (position `position`, packed row `row`) in kv group g,
// in fp64 from the chunk's q and the reference's compressed keys after the step: group-summed
// probabilities spread over the blocks with the overlap weights.
std::vector<double> block_scores_fp64(const CacheCase& c, const Chunk& x, const CacheState& cpu, std::int64_t b,
                                      std::int64_t row, std::int64_t position, int g) {
  const NsaConfig& cfg = c.config;
  const std::int64_t l = cfg.cmp_len, s = cfg.cmp_stride, B = cfg.block_size;
  const std::int64_t visible = position >= l - 1 ? (position - l + 1) / s + 1 : 0;
  const int G = c.hq / c.hkv, heads = cfg.aggregation == ScoreAggregation::kFirstHead ? 1 : G;
  const double scale = cfg.softmax_scale(c.dqk);
  const std::int64_t cmp_width = cpu.cmp_block_table.sizes()[1];
  std::vector<std::vector<double>> keys(static_cast<std::size_t>(visible));
  for (std::int64_t i = 0; i < visible; ++i) {
    const std::int64_t page = static_cast<std::int64_t>(cpu.cmp_block_table.get(b * cmp_width + i / c.cmp_page_size));
    const std::int64_t base = ((page * c.cmp_page_size + i % c.cmp_page_size) * c.hkv + g) * c.dqk;
    keys[static_cast<std::size_t>(i)].resize(static_cast<std::size_t>(c.dqk));
    for (int d = 0; d < c.dqk; ++d) keys[static_cast<std::size_t>(i)][static_cast<std::size_t>(d)] = cpu.k_cmp_pages.get(base + d);
  }
  std::vector<double> prob(static_cast<std::size_t>(visible), 0.0);
  for (int h = g * G; h < g * G + heads; ++h) {
    std::vector<double> q(static_cast<std::size_t>(c.dqk));
    for (int d = 0; d < c.dqk; ++d) q[static_cast<std::size_t>(d)] = x.q.get((row * c.hq + h) * c.dqk + d);
    q = rotated(c, q, position);
    std::vector<double> logit(static_cast<std::size_t>(visible));
    double most = -INFINITY;
    for (std::int64_t i = 0; i < visible; ++i) {
      double dot = 0;
      for (int d = 0; d < c.dqk; ++d) dot += q[static_cast<std::size_t>(d)] * keys[static_cast<std::size_t>(i)][static_cast<std::size_t>(d)];
      logit[static_cast<std::size_t>(i)] = scale * dot;
      most = std::max(most, scale * dot);
    }
    double sum = 0;
    for (const double z : logit) sum += std::exp(z - most);
    for (std::int64_t i = 0; i < visible; ++i) prob[static_cast<std::size_t>(i)] += std::exp(logit[static_cast<std::size_t>(i)] - most) / sum;
  }
  std::vector<double> scores(static_cast<std::size_t>(position / B + 1), 0.0);
  for (std::int64_t i = 0; i < visible; ++i)
    for (std::int64_t j = i * s / B; j * B < i * s + l && j < static_cast<std::int64_t>(scores.size()); ++j)
      scores[static_cast<std::size_t>(j)] +=
          static_cast<double>(std::min(i * s + l, (j + 1) * B) - std::max(i * s, j * B)) / s * prob[static_cast<std::size_t>(i)];
  return scores;
}

// One topk row of the GPU: well formed, and equal to the reference's up to near-ties. Returns
// whether it equals the reference's; reports a failure otherwise.
bool check_topk_row(const CacheCase& c, const Chunk& x, const CacheState& cpu, const std::vector<std::int32_t>& got,
                    const std::vector<std::int32_t>& want, std::int64_t b, std::int64_t row, std::int64_t position, int g,
                    const std::string& where) {
  const NsaConfig& cfg = c.config;
  return compare_topk_row(got, want, position / cfg.block_size, cfg.init_blocks, cfg.local_blocks, kNearTie,
                          [&] { return block_scores_fp64(c, x, cpu, b, row, position, g); }, where) == TopkRow::kEqual;
}

// Values of the rows of `t` (rows of `row_size` elements) selected by `rows`.
std::vector<double> rows_of(const HostTensor& t, const std::vector<std::int64_t>& rows, std::int64_t row_size) {
  std::vector<double> out;
  out.reserve(rows.size() * static_cast<std::size_t>(row_size));
  for (const std::int64_t r : rows)
    for (std::int64_t e = 0; e < row_size; ++e) out.push_back(t.get(r * row_size + e));
  return out;
}

// A GPU step against the reference's: topk rows, the branches, the output.
void compare_step(const CacheCase& c, const Chunk& x, const std::vector<std::int64_t>& cached_before,
                  const StepOut& got, const StepOut& want, const CacheState& cpu_after, const std::string& what) {
  const NsaConfig& cfg = c.config;
  const std::int64_t n = x.tokens(), K = cfg.topk;
  const int G = c.hq / c.hkv;
  const double tol = bf16_or_fp16_tolerance(c.dtype);
  std::vector<bool> matched(static_cast<std::size_t>(c.hkv * n), true);
  std::int64_t differing = 0;
  for (std::size_t b = 0; b < x.lengths.size(); ++b)
    for (std::int64_t t = 0; t < x.lengths[b]; ++t) {
      const std::int64_t row = static_cast<std::int64_t>(x.cu.get(static_cast<std::int64_t>(b))) + t;
      const std::int64_t position = cached_before[b] + t;
      for (int g = 0; g < c.hkv; ++g) {
        std::vector<std::int32_t> got_row(static_cast<std::size_t>(K)), want_row(got_row.size());
        for (std::int64_t i = 0; i < K; ++i) {
          got_row[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(got.topk.get((g * n + row) * K + i));
          want_row[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(want.topk.get((g * n + row) * K + i));
        }
        const std::string where = what + " seq=" + std::to_string(b) + " position=" + std::to_string(position) +
                                  " g=" + std::to_string(g);
        const bool same = check_topk_row(c, x, cpu_after, got_row, want_row, static_cast<std::int64_t>(b), row, position,
                                         g, where);
        matched[static_cast<std::size_t>(g * n + row)] = same;
        differing += same ? 0 : 1;
      }
    }
  EXPECT_LE(static_cast<double>(differing), kMaxDifferingRows * static_cast<double>(std::max<std::int64_t>(1, c.hkv * n)))
      << what << ": " << differing << " of " << c.hkv * n << " topk rows differ";
  expect_close("o_cmp " + what, got.o_cmp.to_double(), want.o_cmp.to_double(), tol);
  expect_close("o_swa " + what, got.o_swa.to_double(), want.o_swa.to_double(), tol);
  // (token, head) rows whose kv head selected as the reference did.
  std::vector<std::int64_t> rows;
  for (std::int64_t t = 0; t < n; ++t)
    for (int h = 0; h < c.hq; ++h)
      if (matched[static_cast<std::size_t>((h / G) * n + t)]) rows.push_back(t * c.hq + h);
  expect_close("o_slc " + what, rows_of(got.o_slc, rows, c.dv), rows_of(want.o_slc, rows, c.dv), tol);
  expect_close("o " + what, rows_of(got.o, rows, c.dv), rows_of(want.o, rows, c.dv), tol);
  // Every element of every output written, whatever the selection.
  for (const HostTensor* t : {&got.o, &got.o_slc})
    EXPECT_TRUE(all_finite(t->to_double())) << what << ": non-finite output";
}

// Pool rows of a sequence's tokens [0, total): raw rows (page, row) and compressed rows, as flat
// row indices into the pools ([pages * page_rows] rows of Hkv x D elements).
std::vector<std::int64_t> pool_rows(const HostTensor& table, std::int64_t b, std::int64_t count, std::int64_t page_rows) {
  const std::int64_t width = table.sizes()[1];
  std::vector<std::int64_t> rows;
  for (std::int64_t p = 0; p < count; ++p)
    rows.push_back(static_cast<std::int64_t>(table.get(b * width + p / page_rows)) * page_rows + p % page_rows);
  return rows;
}

// The GPU's cache after a step against the reference's: every row the sequences hold (raw keys and
// values, compressed keys and values, the key ring's positions still in it) close, and every other
// row of the pools as it was before the step (`before`, the GPU's own state then): no stray writes.
// `written_end` is each sequence's end of the call (P + c); a caller that kept fewer tokens
// (cache_seqlens short of it) leaves rows the call wrote for the dropped tokens, which are neither
// held nor strays.
void compare_cache(const CacheCase& c, const CacheState& gpu, const CacheState& cpu, const CacheState& before,
                   const std::vector<std::int64_t>& written_end, const std::string& what) {
  const NsaConfig& cfg = c.config;
  const double tol = bf16_or_fp16_tolerance(c.dtype);
  const std::int64_t nseq = gpu.cache_seqlens.numel(), ring = nsa_cache_tail_rows(cfg);
  struct Pool {
    const char* name;
    const HostTensor *got, *want, *old;
    std::int64_t row_size;
    std::vector<std::int64_t> rows, dropped;
  };
  Pool pools[] = {{"k_pages", &gpu.k_pages, &cpu.k_pages, &before.k_pages, c.hkv * c.dqk, {}, {}},
                  {"v_pages", &gpu.v_pages, &cpu.v_pages, &before.v_pages, c.hkv * c.dv, {}, {}},
                  {"k_cmp_pages", &gpu.k_cmp_pages, &cpu.k_cmp_pages, &before.k_cmp_pages, c.hkv * c.dqk, {}, {}},
                  {"v_cmp_pages", &gpu.v_cmp_pages, &cpu.v_cmp_pages, &before.v_cmp_pages, c.hkv * c.dv, {}, {}},
                  {"k_tail", &gpu.k_tail, &cpu.k_tail, &before.k_tail, c.hkv * c.dqk, {}, {}}};
  auto add = [](std::vector<std::int64_t>& to, const std::vector<std::int64_t>& rows, std::size_t from) {
    to.insert(to.end(), rows.begin() + static_cast<std::ptrdiff_t>(std::min(from, rows.size())), rows.end());
  };
  for (std::int64_t b = 0; b < nseq; ++b) {
    const std::int64_t total = static_cast<std::int64_t>(gpu.cache_seqlens.get(b));
    const std::int64_t end =
        static_cast<std::size_t>(b) < written_end.size() ? std::max(total, written_end[static_cast<std::size_t>(b)]) : total;
    const auto raw = pool_rows(gpu.block_table, b, end, c.page_size);
    const auto cmp = pool_rows(gpu.cmp_block_table, b, compressed_length(end, cfg), c.cmp_page_size);
    const std::size_t held_raw = static_cast<std::size_t>(total);
    const std::size_t held_cmp = static_cast<std::size_t>(compressed_length(total, cfg));
    for (int i = 0; i < 2; ++i) {
      pools[i].rows.insert(pools[i].rows.end(), raw.begin(), raw.begin() + static_cast<std::ptrdiff_t>(held_raw));
      add(pools[i].dropped, raw, held_raw);
    }
    for (int i = 2; i < 4; ++i) {
      pools[i].rows.insert(pools[i].rows.end(), cmp.begin(), cmp.begin() + static_cast<std::ptrdiff_t>(held_cmp));
      add(pools[i].dropped, cmp, held_cmp);
    }
    // The ring holds the call's last `ring` positions; those before `total` are the sequence's.
    const std::int64_t slot = static_cast<std::int64_t>(gpu.slots.get(b));
    for (std::int64_t p = std::max<std::int64_t>(0, end - ring); p < total; ++p)
      pools[4].rows.push_back(slot * ring + p % ring);
    for (std::int64_t p = total; p < end; ++p) pools[4].dropped.push_back(slot * ring + p % ring);
  }
  for (Pool& pool : pools) {
    expect_close(std::string(pool.name) + " " + what, rows_of(*pool.got, pool.rows, pool.row_size),
                 rows_of(*pool.want, pool.rows, pool.row_size), tol);
    std::set<std::int64_t> known(pool.rows.begin(), pool.rows.end());
    known.insert(pool.dropped.begin(), pool.dropped.end());
    const std::int64_t rows = pool.got->numel() / pool.row_size;
    for (std::int64_t r = 0; r < rows; ++r) {
      if (known.count(r)) continue;
      bool same = true;
      for (std::int64_t e = 0; e < pool.row_size && same; ++e) {
        const double a = pool.got->get(r * pool.row_size + e), o = pool.old->get(r * pool.row_size + e);
        same = (std::isnan(a) && std::isnan(o)) || a == o;
      }
      if (!same) {
        ADD_FAILURE() << what << ": " << pool.name << " row " << r << " (no sequence's) was written";
        break;
      }
    }
  }
}

// ---- Driver ----------------------------------------------------------------------------------

// Builds the cache (CPU prefill of the cached tokens, rounded, copied to the GPU) and runs every step
// on both backends, comparing outputs and caches.
void check_case(const CacheCase& c, std::uint64_t salt) {
  auto rng = rng_for_test(salt);
  const std::string what = describe(c);
  const Params params = make_params(c, rng);
  const Params params32 = params.to(DType::kFloat32);
  CacheState cpu = make_cache(c, rng);
  if (std::accumulate(c.cached.begin(), c.cached.end(), std::int64_t{0}) > 0) {
    const Chunk prefix = make_chunk(c, c.cached, rng);
    run_cpu(c, params32, prefix.to(DType::kFloat32), cpu);
  }
  round_pools(cpu, c.dtype);
  DeviceCache gpu(cpu, c.dtype, c.head_major);
  for (std::size_t step = 0; step < c.steps.size(); ++step) {
    const std::string where = what + " step " + std::to_string(step);
    std::vector<std::int64_t> cached_before(c.cached.size());
    for (std::size_t b = 0; b < cached_before.size(); ++b)
      cached_before[b] = static_cast<std::int64_t>(cpu.cache_seqlens.get(static_cast<std::int64_t>(b)));
    const Chunk x = make_chunk(c, c.steps[step], rng);
    const CacheState before = gpu.download();
    const std::vector<std::int64_t> kept = c.kept.empty() ? x.lengths : c.kept[step];
    const StepOut want = run_cpu(c, params32, x.to(DType::kFloat32), cpu, kept);
    const StepOut got = run_gpu(c, params, x, gpu, kept);
    compare_step(c, x, cached_before, got, want, cpu, where);
    std::vector<std::int64_t> written_end(cached_before.size());
    for (std::size_t b = 0; b < written_end.size(); ++b) written_end[b] = cached_before[b] + x.lengths[b];
    compare_cache(c, gpu.download(), cpu, before, written_end, where);
    if (::testing::Test::HasFailure()) return;  // later steps build on this one
  }
}

NsaConfig model_config() {
  NsaConfig cfg;  // l 32, s 16, B 64, K 16, I 1, L 2
  cfg.window = 512;
  return cfg;
}

// The cache lengths around every boundary of the defaults (l = 32, s = 16, B = 64), a long one, and
// an empty one; 1..8 new tokens; two steps.
CacheCase decode_case(int hq, int hkv, int dqk, int dv) {
  CacheCase c;
  c.config = model_config();
  c.hq = hq;
  c.hkv = hkv;
  c.dqk = dqk;
  c.dv = dv;
  c.cached = {1, 31, 32, 47, 63, 64, 65, 263, 3001, 0};
  c.steps = {{1, 2, 3, 4, 5, 6, 7, 8, 3, 2}, {8, 7, 6, 5, 4, 3, 2, 1, 1, 8}};
  return c;
}

// decode_case at G 1, 4 and 16 (D 128), each with the next salt.
void check_group_sizes(std::uint64_t& salt) {
  for (const auto& [hq, hkv] : {std::pair{2, 2}, {8, 2}, {32, 2}}) check_case(decode_case(hq, hkv, 128, 128), ++salt);
}

// Every group size through both selection routes of a decode step: block scores from the
// compressed attention's partials (the default) and the second pass over the compressed keys.
TEST_F(Gpu, InferenceDecodeGroupSizes) {
  std::uint64_t salt = 0;
  for (const char* route : {"fused", "two-pass"}) {
    SCOPED_TRACE(std::string("FSA_DECODE_SELECT=") + route);
    ::setenv("FSA_DECODE_SELECT", route, 1);
    check_group_sizes(salt);
  }
  ::unsetenv("FSA_DECODE_SELECT");
}

// The key-quarter kernel (FSA_DECODE_QUARTER_KERNEL=1: a decode step's tiles of at most 16 rows in
// a launch of their own, four CTAs a SM) against the reference: every group size with ragged q_len
// 1..8, so that one step has tiles of both kernels, both selection routes; head dims it serves (64,
// 128) and one it leaves to the other kernel (Dqk 192, whose four CTAs do not fit); a table of
// 2400 pages, whose plan gives the small tiles more splits than the large ones (26 against 18 and 16 at
// G 16 on an H100), so the large tiles' CTAs past their count write the empty statistics the merge
// reads; and steps whose tiles are all small (G 16 and 4, q_len 1 and up to 4) or all large (G 16,
// q_len 2..8), in which one of the two launches has no tile at all and every CTA of it exits before
// its wait (before_early_exit keeps the launches' order). Where the device fits four CTAs a SM the
// kernel must have run.
TEST_F(Gpu, InferenceDecodeQuarterKernel) {
  ::setenv("FSA_DECODE_QUARTER_KERNEL", "1", 1);
  const long long launches_before = cuda::decode::quarter_kernel_launches();
  std::uint64_t salt = 500;
  CacheCase small_g16 = decode_case(32, 2, 128, 128), small_g4 = decode_case(8, 2, 128, 128),
            large_g16 = decode_case(32, 2, 128, 128);
  small_g16.steps = {std::vector<std::int64_t>(10, 1), std::vector<std::int64_t>(10, 1)};
  small_g4.steps = {{1, 2, 3, 4, 4, 3, 2, 1, 1, 2}, {4, 4, 1, 1, 2, 2, 3, 3, 4, 1}};
  large_g16.steps = {{2, 3, 4, 5, 6, 7, 8, 2, 3, 4}, {8, 7, 6, 5, 4, 3, 2, 2, 8, 2}};
  for (const char* route : {"fused", "two-pass"}) {
    SCOPED_TRACE(std::string("FSA_DECODE_QUARTER_KERNEL=1 FSA_DECODE_SELECT=") + route);
    ::setenv("FSA_DECODE_SELECT", route, 1);
    check_group_sizes(salt);
    check_case(decode_case(8, 2, 64, 64), ++salt);
    check_case(decode_case(8, 2, 192, 128), ++salt);
    CacheCase wide = decode_case(32, 2, 128, 128);
    wide.min_table_width = 2400;
    check_case(wide, ++salt);
    for (const CacheCase& c : {small_g16, small_g4, large_g16}) check_case(c, ++salt);
  }
  ::unsetenv("FSA_DECODE_SELECT");
  ::unsetenv("FSA_DECODE_QUARTER_KERNEL");
  int device = 0, smem_per_sm = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device), cudaSuccess);
  if (cuda::decode::attn_quarter_ctas_per_sm(128, 128, 64, 64, static_cast<std::size_t>(smem_per_sm)) > 0)
    EXPECT_GT(cuda::decode::quarter_kernel_launches(), launches_before) << "the key-quarter kernel never ran";
}

// The decode attention with each K / V stage count forced (the launcher otherwise takes the one
// that fits more CTAs a SM, so a device runs only one of them by default; two where they do not
// fit, as Dqk = Dv = 256 on an A100, runs one) against the reference, at D 128 and 256, both
// selection routes.
TEST_F(Gpu, InferenceDecodeForcedAttentionStages) {
  std::uint64_t salt = 300;
  for (const char* stages : {"1", "2"}) {
    ::setenv("FSA_DECODE_ATTN_STAGES", stages, 1);
    for (const char* route : {"fused", "two-pass"}) {
      SCOPED_TRACE(std::string("FSA_DECODE_ATTN_STAGES=") + stages + " FSA_DECODE_SELECT=" + route);
      ::setenv("FSA_DECODE_SELECT", route, 1);
      for (const int d : {128, 256}) check_case(decode_case(8, 2, d, d), ++salt);
    }
  }
  ::unsetenv("FSA_DECODE_SELECT");
  ::unsetenv("FSA_DECODE_ATTN_STAGES");
}

// The attention's splits forced (FSA_DECODE_ATTN_SPLITS: the bench sweeps them) against the
// reference: one split (no merge), an odd count, and more than the short caches' key tiles (each
// branch clamps to its own), with the kernel of any tile and with the key-quarter kernel.
// Case c with every forced split count of `splits`, with the kernel of any tile and with the
// key-quarter kernel, each with the next salt.
void check_forced_splits(const CacheCase& c, std::initializer_list<const char*> splits, std::uint64_t& salt) {
  for (const char* quarter : {"0", "1"})
    for (const char* count : splits) {
      SCOPED_TRACE(std::string("FSA_DECODE_QUARTER_KERNEL=") + quarter + " FSA_DECODE_ATTN_SPLITS=" + count);
      ::setenv("FSA_DECODE_QUARTER_KERNEL", quarter, 1);
      ::setenv("FSA_DECODE_ATTN_SPLITS", count, 1);
      check_case(c, ++salt);
    }
  ::unsetenv("FSA_DECODE_ATTN_SPLITS");
  ::unsetenv("FSA_DECODE_QUARTER_KERNEL");
}

TEST_F(Gpu, InferenceDecodeForcedSplits) {
  std::uint64_t salt = 700;
  check_forced_splits(decode_case(8, 2, 128, 128), {"1", "3", "64"}, salt);
}

// A raw block table addressing 2400 pages (153,600 tokens) over a short cache: the plan sizes the
// fused selection for that context, one token of one kv head scores in 19 ranges, and the finalize
// takes its 304 candidates in place (above the 256 it keeps in registers), against the reference.
TEST_F(Gpu, InferenceDecodeLongCandidateLists) {
  CacheCase c = decode_case(8, 1, 128, 128);
  c.cached = {3001};
  c.steps = {{1}, {1}};
  c.min_table_width = 2400;
  check_case(c, 400);
}

// An unknown FSA_DECODE_SELECT is an error that names it, before anything is written.
TEST_F(Gpu, InferenceDecodeRejectsAnUnknownSelectRoute) {
  const CacheCase c = decode_case(8, 2, 128, 128);
  auto rng = rng_for_test(50);
  const Params params = make_params(c, rng);
  DeviceCache gpu(make_cache(c, rng), c.dtype);
  const Chunk x = make_chunk(c, c.steps[0], rng);
  const DeviceStep dev(x, params, poisoned_outputs(c, c.dtype, x.tokens()));
  const NsaLayerInputs in = dev.inputs();
  const DeviceBytes ws(nsa_decode_workspace_bytes(c.config, NsaInferenceShape::of(in, gpu.cache(), gpu.batch())));
  CacheState before = gpu.download();
  ::setenv("FSA_DECODE_SELECT", "three-pass", 1);
  const Status s = nsa_decode(c.config, in, gpu.cache(), gpu.batch(), dev.view("o"), dev.branches(), ws.workspace());
  ::unsetenv("FSA_DECODE_SELECT");
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("FSA_DECODE_SELECT"), std::string::npos) << s.to_string();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  CacheState after = gpu.download();
  const std::vector<HostTensor*> pools_after = after.pools(), pools_before = before.pools();
  for (std::size_t i = 0; i < pools_after.size(); ++i) {  // every pool, v_cmp_pages included
    const HostTensor &a = *pools_after[i], &b = *pools_before[i];
    for (std::int64_t e = 0; e < a.numel(); ++e)
      if (!(a.get(e) == b.get(e) || (std::isnan(a.get(e)) && std::isnan(b.get(e))))) {
        ADD_FAILURE() << "pool " << i << " changed at element " << e;
        break;
      }
  }
}

TEST_F(Gpu, InferenceDecodeHeadDims) {
  check_case(decode_case(8, 2, 192, 128), 10);
  check_case(decode_case(4, 2, 256, 256), 11);
  check_case(decode_case(4, 2, 64, 64), 12);
}

TEST_F(Gpu, InferenceDecodeFirstHeadFp16MeanSharedGatesNoRope) {
  CacheCase c = decode_case(8, 2, 128, 128);
  c.config.aggregation = ScoreAggregation::kFirstHead;
  check_case(c, 20);
  c.config.aggregation = ScoreAggregation::kGroupSum;
  c.dtype = DType::kFloat16;
  c.config.compression = CompressionKind::kMean;
  c.config.gate_mode = GateMode::kShared;
  c.config.rope.enabled = false;
  check_case(c, 21);
}

// Speculative decoding: a step of up to 8 tokens per sequence of which the caller keeps only the
// first few (0 included), then steps from the shorter lengths; windows completed by dropped tokens
// are completed again.
TEST_F(Gpu, InferenceDecodeDropsRejectedTokens) {
  CacheCase c = decode_case(8, 2, 128, 128);
  c.cached = {30, 31, 46, 63, 127, 1000};
  c.steps = {{8, 8, 4, 8, 2, 5}, {8, 3, 8, 1, 8, 4}, {2, 2, 2, 2, 2, 2}};
  c.kept = {{1, 0, 4, 3, 1, 2}, {5, 3, 0, 1, 8, 4}, {2, 2, 2, 2, 2, 2}};
  check_case(c, 25);
}

// Decode steps that complete up to two windows a sequence (l 8, s 4: eight new tokens complete two
// once P >= l) over 300 sequences: cache lengths on and off the stride and window grids (some below
// l, some long), pages shuffled and compressed pages of 5 tokens (make_cache), steps of 8, of 1..8
// and of 0..8 tokens; linear compression with RoPE in bf16 (Hkv 2, D 64), and mean compression
// without it in fp16 (one kv head, D 128). Then short prefill chunks with a sequence of 10-12 new
// tokens (nsa_prefill on a decode step's route, which appends the tokens in a launch of their own).
std::vector<CacheCase> several_windows_cases() {
  constexpr int kSeqs = 300;
  CacheCase c;
  c.config = model_config();
  c.config.cmp_len = 8;
  c.config.cmp_stride = 4;
  c.hq = 4;
  c.hkv = 2;
  c.dqk = 64;
  c.dv = 64;
  c.steps.assign(3, std::vector<std::int64_t>(kSeqs));
  for (int b = 0; b < kSeqs; ++b) {
    c.cached.push_back((b * 37) % 203 + (b % 50 == 0 ? 1500 : 0));
    c.steps[0][static_cast<std::size_t>(b)] = 8;
    c.steps[1][static_cast<std::size_t>(b)] = b % 8 + 1;
    c.steps[2][static_cast<std::size_t>(b)] = (b * 5) % 9;
  }
  CacheCase mean = c;
  mean.dtype = DType::kFloat16;
  mean.hkv = 1;
  mean.dqk = 128;
  mean.dv = 128;
  mean.config.compression = CompressionKind::kMean;
  mean.config.rope.enabled = false;
  // A prefill call whose chunk fuses the selection (at most 8 tokens a sequence on average) with a
  // sequence of more than 8 tokens: compress_append_kernel compresses, append_tokens_kernel appends.
  CacheCase chunk = decode_case(8, 2, 128, 128);
  chunk.steps = {{12, 1, 2, 3, 1, 2, 3, 1, 2, 0}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}};
  return {c, mean, chunk};
}

// A decode step's one-launch compression (compress_append_kernel, with the new tokens' append in it
// for nsa_decode) against the reference on those steps: its CTAs take several rows in turn and its
// scan threads several sequences at 300 sequences.
TEST_F(Gpu, InferenceDecodeSeveralWindowsAStep) {
  std::uint64_t salt = 600;
  for (const CacheCase& c : several_windows_cases()) check_case(c, ++salt);
}

// The selected branch's merge and the combination in one launch (merge_combine_kernel) against the
// reference: in one split (FSA_DECODE_ATTN_SPLITS=1: o_slc read back, not merged) and in four
// whatever the device (so that the merge surely runs), with the key-quarter kernel too (splits past
// a large tile's own count: empty statistics); shared gates in fp16, D 64 (half the lanes without
// columns) and 256 (two column passes). (Before it replaced merge_splits_kernel and combine_forward
// for the selected branch, a GPU test found the two routes the same bits on these cases.)
TEST_F(Gpu, InferenceDecodeMergeCombine) {
  CacheCase shared = decode_case(8, 2, 128, 128);
  shared.dtype = DType::kFloat16;
  shared.config.gate_mode = GateMode::kShared;
  std::uint64_t salt = 640;
  for (const CacheCase& c : {shared, decode_case(8, 2, 64, 64), decode_case(8, 2, 256, 256)}) check_case(c, ++salt);
  check_forced_splits(decode_case(32, 2, 128, 128), {"1", "4"}, salt);
}

// Chunked prefill: long chunks, an empty chunk, an empty cache, chunks ending on and off the
// window, stride and block grids; then decode steps after them. Every case runs twice: with every
// prefill call a long chunk (the training's compressed attention, selection and window kernels over
// the gathered keys and the KV-outer selected kernels over the pages, queries after the cached
// prefix) and with none (the decode kernels),
// the two routes of nsa_prefill.
TEST_F(Gpu, InferenceChunkedPrefill) {
  CacheCase c;
  c.config = model_config();
  c.config.window = 200;
  c.hkv = 2;
  c.cached = {0, 5, 100, 1000, 70, 31};
  c.steps = {{300, 1, 64, 700, 0, 1}, {17, 200, 0, 1, 129, 33}, {1, 1, 1, 1, 1, 1}};
  std::uint64_t salt = 30;
  for (const char* min_tokens : {"1", "1000000000"}) {
    SCOPED_TRACE(std::string("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS=") + min_tokens);
    ::setenv("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS", min_tokens, 1);
    for (const int hq : {8, 2, 32}) {  // G = 4; 1 (64 tokens per attention tile); 16
      c.hq = hq;
      check_case(c, ++salt);
    }
  }
  ::unsetenv("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS");
}

// A long chunk's route (the training's compressed attention, selection and window kernels over the
// gathered keys, the KV-outer selected kernels over the pages) at every head dim, fp16 with first-head scores and mean compression, every call of the case
// a long chunk (threshold 1) so that prefixes of every length meet the gathered keys.
TEST_F(Gpu, InferenceLongChunkHeadDims) {
  ::setenv("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS", "1", 1);
  CacheCase c = decode_case(8, 2, 128, 128);
  c.cached = {0, 31, 100, 1000};
  c.steps = {{300, 1, 64, 70}, {17, 200, 0, 129}};
  std::uint64_t salt = 40;
  for (const auto& [dqk, dv] : {std::pair{192, 128}, {256, 256}, {64, 64}}) {
    c.dqk = dqk;
    c.dv = dv;
    check_case(c, ++salt);
  }
  c.dqk = c.dv = 128;
  c.dtype = DType::kFloat16;
  c.config.aggregation = ScoreAggregation::kFirstHead;
  c.config.compression = CompressionKind::kMean;
  check_case(c, ++salt);
  ::unsetenv("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS");
}

// Table entries the host cannot check (outside the pool, negative) in pages a step reads: the step
// completes without a device fault and its outputs are finite (those rows read as zeros), on both
// routes of nsa_prefill and in a decode step.
TEST_F(Gpu, InferenceBadTableEntriesReadAsZeros) {
  CacheCase c = decode_case(8, 2, 128, 128);
  c.cached = {100, 1000};
  c.steps = {{300, 64}, {3, 8}};
  auto rng = rng_for_test(60);
  const Params params = make_params(c, rng);
  CacheState state = make_cache(c, rng);
  const std::int64_t pages = state.k_pages.sizes()[0], cmp_pages = state.k_cmp_pages.sizes()[0];
  const std::int64_t width = state.block_table.sizes()[1], cmp_width = state.cmp_block_table.sizes()[1];
  state.block_table.set(0, static_cast<double>(pages + 3));            // sequence 0's first page
  state.block_table.set(width + 2, -7.0);                              // sequence 1's third
  state.cmp_block_table.set(1, static_cast<double>(cmp_pages + 100));  // sequence 0's second compressed page
  state.cmp_block_table.set(cmp_width + 4, -1.0);                      // sequence 1's fifth
  for (const char* min_tokens : {"1", "1000000000"}) {
    SCOPED_TRACE(std::string("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS=") + min_tokens);
    ::setenv("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS", min_tokens, 1);
    DeviceCache gpu(state, c.dtype);
    for (const auto& lengths : c.steps) {
      const Chunk x = make_chunk(c, lengths, rng);
      const StepOut got = run_gpu(c, params, x, gpu);  // expects ok calls and a clean synchronize
      for (const HostTensor* t : {&got.o, &got.o_cmp, &got.o_slc, &got.o_swa})
        EXPECT_TRUE(all_finite(t->to_double())) << "a non-finite output after " << lengths[0] << " tokens";
    }
  }
  ::unsetenv("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS");
}

// Cache lengths the host cannot check (on the device) past the tables' capacity, and negative, one
// a call beside valid sequences (an empty cache, then a long chunk each): the call completes
// without a device fault (compute-sanitizer runs this test in gpu-check.sh: no access outside the
// caller's tensors), and the valid sequences' outputs are those of the same call with the bad length
// replaced by 0, so that the bad sequence's rows (the gather clamps the prefix every branch takes)
// stay its own. Its own outputs are not checked: they read rows of its pages that no call wrote,
// whatever the caller's pool holds there (the test's pools hold NaN).
TEST_F(Gpu, InferenceLongChunkLengthsPastCapacityStayInBounds) {
  ::setenv("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS", "1", 1);
  CacheCase c = decode_case(8, 2, 128, 128);
  const std::vector<std::int64_t> lengths = {300, 64, 200};
  c.cached = {100, 1000, 40};  // table room beyond the chunks: lengths past them still meet pages
  c.steps = {lengths};
  auto rng = rng_for_test(61);
  const Params params = make_params(c, rng);
  const CacheState empty = make_cache(c, rng);
  const std::int64_t capacity = empty.block_table.sizes()[1] * c.page_size;
  const Chunk x = make_chunk(c, lengths, rng);
  DeviceCache reference_cache(empty, c.dtype);
  const StepOut reference = run_gpu(c, params, x, reference_cache);
  const std::pair<const char*, double> cases[] = {{"negative", -50.0},
                                                  {"past its table", static_cast<double>(capacity + 3000)},
                                                  {"its chunk runs past its table", static_cast<double>(capacity - 10)}};
  for (int bad = 0; bad < 3; ++bad) {
    SCOPED_TRACE(std::string("sequence ") + std::to_string(bad) + "'s cache_seqlens " + cases[bad].first);
    CacheState state = empty;
    state.cache_seqlens.set(bad, cases[bad].second);
    DeviceCache gpu(state, c.dtype);
    const StepOut got = run_gpu(c, params, x, gpu);  // expects an ok call and a clean synchronize
    const HostTensor* outs[] = {&got.o, &got.o_cmp, &got.o_slc, &got.o_swa};
    const HostTensor* refs[] = {&reference.o, &reference.o_cmp, &reference.o_slc, &reference.o_swa};
    const char* names[] = {"o", "o_cmp", "o_slc", "o_swa"};
    for (int i = 0; i < 4; ++i) {
      const std::vector<double> g = outs[i]->to_double(), r = refs[i]->to_double();
      const std::int64_t per_token = outs[i]->numel() / x.tokens();
      std::int64_t row0 = 0, worst_at = -1;
      double worst = 0.0;
      for (int b = 0; b < 3; ++b) {
        if (b != bad)
          for (std::int64_t e = row0 * per_token; e < (row0 + lengths[static_cast<std::size_t>(b)]) * per_token; ++e) {
            const double d = std::abs(g[static_cast<std::size_t>(e)] - r[static_cast<std::size_t>(e)]);
            if (!(d <= worst)) {  // NaN counts as the worst
              worst = std::isnan(d) ? INFINITY : d;
              worst_at = e / per_token;
            }
          }
        row0 += lengths[static_cast<std::size_t>(b)];
      }
      EXPECT_LE(worst, 1e-2) << names[i] << ": a valid sequence's row " << worst_at << " moved";
    }
  }
  ::unsetenv("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS");
}

// Head-major pools (each page [Hkv, rows, D], passed through strided views): decode steps of 1-8
// tokens and chunked prefill on both of its routes give the reference's outputs, selections and
// cache writes, as with token-major pools (the kernels address a pool row through its view's
// page, row and head strides).
TEST_F(Gpu, InferenceHeadMajorPools) {
  CacheCase c = decode_case(8, 2, 128, 128);
  c.head_major = true;
  c.cached = {0, 31, 100, 1000};
  c.steps = {{300, 1, 64, 70}, {1, 8, 3, 5}, {2, 2, 7, 1}};
  std::uint64_t salt = 90;
  for (const char* min_tokens : {"1", "1000000000"}) {
    SCOPED_TRACE(std::string("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS=") + min_tokens);
    ::setenv("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS", min_tokens, 1);
    for (const int hq : {8, 32}) {  // G = 4, 16
      c.hq = hq;
      check_case(c, ++salt);
    }
  }
  ::unsetenv("FSA_PREFILL_LONG_CHUNK_MIN_TOKENS");
}

// A decode step captured in a CUDA graph (caller workspace sized by the query for the tables'
// context) and replayed with new inputs while cache_seqlens advances on the device: across the
// replays every sequence meets steps that complete a compression window and steps that do not.
TEST_F(Gpu, InferenceDecodeGraphReplay) {
  CacheCase c;
  c.config = model_config();
  c.hq = 8;
  c.hkv = 2;
  c.cached = {29, 45, 1000, 2047};
  const std::vector<std::int64_t> q_len = {2, 2, 2, 2};
  constexpr int kReplays = 5;
  c.steps.assign(kReplays + 1, q_len);
  auto rng = rng_for_test(40);
  const Params params = make_params(c, rng);
  const Params params32 = params.to(DType::kFloat32);
  CacheState cpu = make_cache(c, rng);
  run_cpu(c, params32, make_chunk(c, c.cached, rng).to(DType::kFloat32), cpu);
  round_pools(cpu, c.dtype);
  DeviceCache gpu(cpu, c.dtype);

  Chunk x = make_chunk(c, q_len, rng);
  const DeviceStep dev(x, params, poisoned_outputs(c, c.dtype, x.tokens()));
  const NsaLayerInputs in = dev.inputs();
  const NsaInferenceShape shape = NsaInferenceShape::of(in, gpu.cache(), gpu.batch());
  const DeviceBytes ws(nsa_decode_workspace_bytes(c.config, shape));
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  {
    const CudaStreamScope scope(stream);
    // Step 0 eagerly (function attributes and the kernel-set probe set outside the capture).
    std::vector<std::int64_t> cached_before(c.cached.begin(), c.cached.end());
    const CacheState before = gpu.download();
    const StepOut want = run_cpu(c, params32, x.to(DType::kFloat32), cpu);
    FSA_EXPECT_OK(nsa_decode(c.config, in, gpu.cache(), gpu.batch(), dev.view("o"), dev.branches(), ws.workspace()));
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    gpu.advance(q_len, stream);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    compare_step(c, x, cached_before, dev.download(), want, cpu, "eager step");
    compare_cache(c, gpu.download(), cpu, before, {}, "eager step");

    cudaGraph_t graph = nullptr;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    const Status captured =
        nsa_decode(c.config, in, gpu.cache(), gpu.batch(), dev.view("o"), dev.branches(), ws.workspace());
    const cudaError_t end = cudaStreamEndCapture(stream, &graph);
    FSA_EXPECT_OK(captured);
    ASSERT_EQ(end, cudaSuccess);
    const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    ASSERT_EQ(instantiated, cudaSuccess);
  }
  for (int replay = 0; replay < kReplays && !HasFailure(); ++replay) {
    const std::string where = "replay " + std::to_string(replay);
    std::vector<std::int64_t> cached_before(c.cached.size());
    for (std::size_t b = 0; b < cached_before.size(); ++b)
      cached_before[b] = static_cast<std::int64_t>(gpu.host_seqlens.get(static_cast<std::int64_t>(b)));
    x = make_chunk(c, q_len, rng);  // new values in the captured input buffers
    for (const auto& [name, host] : std::map<std::string, const HostTensor*>{
             {"q", &x.q}, {"k", &x.k}, {"v", &x.v}, {"gates", &x.gates}})
      upload(dev.at(name), *host, stream);
    StepOut poisoned = poisoned_outputs(c, c.dtype, x.tokens());
    for (const auto& [name, host] : std::map<std::string, const HostTensor*>{
             {"o", &poisoned.o}, {"o_cmp", &poisoned.o_cmp}, {"o_slc", &poisoned.o_slc}, {"o_swa", &poisoned.o_swa},
             {"topk", &poisoned.topk}})
      upload(dev.at(name), *host, stream);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const CacheState before = gpu.download();
    const StepOut want = run_cpu(c, params32, x.to(DType::kFloat32), cpu);
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    gpu.advance(q_len, stream);  // the lengths the next replay reads, on the device
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    compare_step(c, x, cached_before, dev.download(), want, cpu, where);
    compare_cache(c, gpu.download(), cpu, before, {}, where);
  }
  cudaGraphExecDestroy(exec);
  cudaStreamDestroy(stream);
}

// The workspace only grows with the shape (a workspace sized for the largest batch and context
// serves every smaller call), and a decode call's is its N's. Needs no device: sizes only.
TEST(GpuInferenceWorkspace, QueriesGrowWithTheShape) {
  NsaConfig cfg = model_config();
  for (const auto& [hq, hkv, d] : {std::tuple{64, 4, 128}, {16, 4, 128}, {4, 4, 64}, {8, 2, 256}}) {
    NsaInferenceShape s;
    s.heads_q = hq;
    s.heads_kv = hkv;
    s.head_dim_qk = d;
    s.head_dim_v = d;
    s.device = Device::cuda(0);
    std::size_t previous_tokens = 0;
    for (std::int64_t tokens = 1; tokens <= 4096; tokens = tokens * 3 / 2 + 1) {
      std::size_t previous_seqs = 0;
      for (int seqs = 1; seqs <= 64; seqs *= 2) {
        std::size_t previous_context = 0;
        for (std::int64_t context = 64; context <= (1 << 20); context *= 4) {
          s.tokens = tokens;
          s.num_seqs = seqs;
          s.max_context = context;
          const std::size_t bytes = nsa_prefill_workspace_bytes(cfg, s);
          EXPECT_GE(bytes, previous_context) << "context " << context;
          previous_context = bytes;
          if (context == (1 << 20)) {
            EXPECT_GE(bytes, previous_seqs) << "seqs " << seqs;
            previous_seqs = bytes;
          }
        }
        if (seqs == 64) {
          EXPECT_GE(previous_seqs, previous_tokens) << "tokens " << tokens;
          previous_tokens = previous_seqs;
        }
      }
    }
    s.tokens = 4;
    s.num_seqs = 4;
    s.max_context = 4096;
    EXPECT_EQ(nsa_decode_workspace_bytes(cfg, s), nsa_prefill_workspace_bytes(cfg, s));
    EXPECT_GT(nsa_decode_workspace_bytes(cfg, s), 0u);
  }
}

}  // namespace
}  // namespace fsa::test
