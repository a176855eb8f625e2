// Caller-owned workspaces on the GPU (include/fsa/workspace.hpp) and the query chunks of selected
// attention (SlcOptions::workspace_cap), against the CPU reference run in fp32 on the same rounded
// inputs, with every output poisoned (NaN) before each GPU run:
// - query chunks: a ragged packed batch whose chunk boundaries fall inside sequences and off the
//   block grid (one sequence longer than a chunk, one shorter), G in {1, 4}, the plan built inside
//   each call or once by slc_plan_build into a caller buffer, every forced path; equal to the
//   reference and to the unchunked GPU run; one plan build per chunk;
// - a plan built with the dense/sparse split, passed to the forward and then to the backward;
// - every op with a *_workspace_bytes query, run with a workspace of exactly that size, gives the
//   results of the library's own allocation; a workspace one byte short, misaligned or null is
//   refused with "workspace: ...", a bad `plan` with an error naming plan, and the deterministic
//   backward above its cap with one naming workspace_cap;
// - the layer builds its selected-attention plan once, in the forward (one build per chunk), and
//   its backward reuses it;
// - the layer under a small cap (chunked) against the reference and the default-cap run;
// - CUDA graphs (non-default stream, caller-owned buffers) of the layer's forward + backward and of
//   slc_plan_build + selected attention forward + backward, replayed with new inputs.
//
// FSA_SLC_MIN_CHUNK_TOKENS lowers the smallest query chunk from 4096 to 64 tokens for this process
// (slc_attn.cu reads it once), so that a thousand tokens run in several chunks.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cuda/backend.hpp"  // fsa::cuda::slc_plan_builds()
#include "gpu_compare.hpp"
#include "layer_case.hpp"

namespace fsa::test {
namespace {

// Set before the first test runs, so before the library's first chunking decision.
class SmallQueryChunks : public ::testing::Environment {
 public:
  void SetUp() override { ::setenv("FSA_SLC_MIN_CHUNK_TOKENS", "64", 1); }
};
[[maybe_unused]] ::testing::Environment* const kSmallQueryChunks =
    ::testing::AddGlobalTestEnvironment(new SmallQueryChunks);

// bf16 against the fp32 reference (the tolerances of the other GPU tests): outputs 1e-2 relative
// Frobenius, gradients 2e-2 (3e-2 through the whole layer), lse 2e-2 + 1e-3 |lse|.
constexpr double kTol = 1e-2;
// GPU against GPU: the default backward adds dQ, dK, dV with fp32 atomics whose order varies, and
// rounding the sums to bf16 then flips a few elements by one unit (measured ~5e-5 in
// test_gpu_slc_attn); through the whole layer the existing graph test allows 1e-2.
constexpr double kAtomicTol = 1e-3;
constexpr double kLayerAtomicTol = 1e-2;
// Two forward paths of the same function (the split's tile kernel against KV-outer): each output
// rounded to bf16 on its own, a unit apart at most.
constexpr double kOtherPathTol = 5e-3;

// A packed batch with sequences shorter and longer than a chunk of ~N/4, an empty-ish one and one
// of a single token; every one at most K * B = 1024 tokens, so the layer selects every visible
// block and its selection is unambiguous against the reference.
const std::vector<std::int64_t> kLengths = {37, 700, 5, 211, 1, 130};

// ---- Device buffers --------------------------------------------------------------------------

// cudaMalloc'd bytes (256-byte aligned), filled with 0xff (NaN in every float dtype) so that a
// workspace, plan or saved buffer never starts out zeroed.
class DeviceBytes {
 public:
  explicit DeviceBytes(std::size_t bytes) : bytes_(bytes) {
    if (bytes_ == 0) return;
    EXPECT_EQ(cudaMalloc(&data_, bytes_), cudaSuccess);
    poison(nullptr);
  }
  ~DeviceBytes() {
    if (data_ != nullptr) cudaFree(data_);
  }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  void poison(cudaStream_t stream) const {
    if (data_ == nullptr) return;
    EXPECT_EQ(cudaMemsetAsync(data_, 0xff, bytes_, stream), cudaSuccess);
  }
  Workspace workspace() const { return {data_, bytes_}; }
  // uint8 [bytes]: a plan or a saved buffer.
  TensorView tensor() const {
    return TensorView::contiguous(data_, DType::kUInt8, {static_cast<std::int64_t>(bytes_)}, Device::cuda(0));
  }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

class Stream {
 public:
  Stream() { EXPECT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess); }
  ~Stream() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class GraphExec {
 public:
  GraphExec() = default;
  ~GraphExec() {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  }
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  cudaGraphExec_t* out() { return &exec_; }
  cudaGraphExec_t get() const { return exec_; }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

std::size_t aligned(std::size_t bytes) {
  return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}

std::size_t view_bytes(const TensorView& v) { return static_cast<std::size_t>(v.numel()) * dtype_size(v.dtype); }

// Stream-ordered: the copy lands before later work on `stream` (a non-blocking stream does not
// wait for the legacy stream's cudaMemcpy).
void upload(const DeviceTensor& dst, const HostTensor& src, cudaStream_t stream) {
  ASSERT_EQ(view_bytes(dst.view()), view_bytes(src.view()));
  EXPECT_EQ(cudaMemcpyAsync(dst.view().data, src.view().data, view_bytes(src.view()), cudaMemcpyHostToDevice, stream),
            cudaSuccess);
}
void poison_async(const DeviceTensor& t, cudaStream_t stream) {
  EXPECT_EQ(cudaMemsetAsync(t.view().data, 0xff, view_bytes(t.view()), stream), cudaSuccess);
}

HostTensor poisoned(DType dtype, std::vector<std::int64_t> sizes) {
  HostTensor t(dtype, std::move(sizes));
  t.poison();
  return t;
}
HostTensor poisoned_like(const HostTensor& like) { return poisoned(like.dtype(), like.sizes()); }

// ---- Comparisons -----------------------------------------------------------------------------

// Bit-for-bit (through double: -inf equals -inf, NaN equals nothing).
void expect_identical(const std::string& what, const HostTensor& got, const HostTensor& want) {
  const std::vector<double> a = got.to_double(), b = want.to_double();
  if (a.size() != b.size()) {
    ADD_FAILURE() << what << ": " << a.size() << " elements against " << b.size();
    return;
  }
  std::size_t differ = 0, first = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i]) && differ++ == 0) first = i;
  if (differ > 0)
    ADD_FAILURE() << what << ": " << differ << " of " << a.size() << " elements differ, first [" << first << "] got "
                  << a[first] << ", want " << b[first];
}

// lse [Hq, N]: -inf exactly where the reference has -inf (no visible key), else within
// abs_tol + rel_tol * |lse|.
void expect_lse_near(const std::string& what, const HostTensor& got, const HostTensor& want, double abs_tol = 2e-2,
                     double rel_tol = 1e-3) {
  const std::vector<double> a = got.to_double(), b = want.to_double();
  ASSERT_EQ(a.size(), b.size()) << what;
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const bool ok = std::isinf(b[i]) ? std::isinf(a[i]) && a[i] < 0
                                     : std::fabs(a[i] - b[i]) <= abs_tol + rel_tol * std::fabs(b[i]);
    if (!ok && bad++ == 0) first = i;
  }
  if (bad > 0)
    ADD_FAILURE() << what << ": " << bad << " of " << a.size() << " entries off, first [" << first << "] got "
                  << a[first] << ", want " << b[first];
}

// A workspace one byte short of the query, one at a misaligned address and a null one with bytes
// are refused before any work, with a message that starts with "workspace:".
template <class Call>
void expect_workspace_checked(const std::string& what, std::size_t needed, const Call& call) {
  ASSERT_GT(needed, 0u) << what << ": the query reports no workspace";
  ASSERT_EQ(needed % kWorkspaceAlignment, 0u) << what << ": the query is not a multiple of the alignment";
  const DeviceBytes buffer(needed + kWorkspaceAlignment);
  auto* base = static_cast<unsigned char*>(buffer.data());
  const std::pair<const char*, Workspace> bad[] = {{"one byte short", {base, needed - 1}},
                                                   {"misaligned", {base + kWorkspaceAlignment / 2, needed}},
                                                   {"null data", {nullptr, needed}}};
  for (const auto& [how, workspace] : bad) {
    const Status s = call(workspace);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << what << ", " << how << ": " << s.to_string();
    EXPECT_EQ(s.message().rfind("workspace:", 0), 0u) << what << ", " << how << ": " << s.to_string();
  }
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess) << what;
}

// ---- Selected attention ----------------------------------------------------------------------

struct SlcData {
  NsaConfig config;
  std::vector<std::int64_t> lengths;
  int hq = 8, hkv = 2, dim = 64, width = 16;  // Dqk = Dv = dim
  HostTensor cu, q, k, v, d_o, topk;
  std::int64_t tokens() const { return q.sizes()[0]; }
};

// Rows of valid blocks mixed with -1 anywhere, duplicates, future and out-of-range entries, and a
// few rows of -1 only.
HostTensor random_topk(const SlcData& s, std::mt19937_64& rng) {
  const int block = s.config.block_size;
  const std::int64_t n = s.tokens();
  HostTensor topk(DType::kInt32, {s.hkv, n, s.width});
  std::uniform_real_distribution<double> u(0, 1);
  for (int g = 0; g < s.hkv; ++g)
    for (std::int64_t b = 0; b + 1 < s.cu.numel(); ++b) {
      const auto start = static_cast<std::int64_t>(s.cu.get(b)), end = static_cast<std::int64_t>(s.cu.get(b + 1));
      for (std::int64_t t = start; t < end; ++t) {
        const std::int64_t own = (t - start) / block;
        const std::int64_t row = (g * n + t) * s.width;
        const bool none = u(rng) < 0.03;
        for (int k = 0; k < s.width; ++k) {
          std::int64_t j = std::uniform_int_distribution<std::int64_t>(0, own)(rng);
          const double r = u(rng);
          if (none || r < 0.08) j = -1;
          else if (r < 0.12 && k > 0) j = static_cast<std::int64_t>(topk.get(row + k - 1));  // a duplicate
          else if (r < 0.15) j = own + 1 + static_cast<std::int64_t>(u(rng) * 3);            // future, out of range
          topk.set(row + k, static_cast<double>(j));
        }
      }
    }
  return topk;
}

// Every token of a query tile selects the same blocks (0, its own, the previous ones): from the
// fourth tile of a sequence on, the split sends them all to the tile kernel (dense pairs).
HostTensor local_topk(const SlcData& s) {
  const int block = s.config.block_size;
  const std::int64_t n = s.tokens();
  HostTensor topk(DType::kInt32, {s.hkv, n, s.width});
  for (int g = 0; g < s.hkv; ++g)
    for (std::int64_t b = 0; b + 1 < s.cu.numel(); ++b) {
      const auto start = static_cast<std::int64_t>(s.cu.get(b)), end = static_cast<std::int64_t>(s.cu.get(b + 1));
      for (std::int64_t t = start; t < end; ++t) {
        const std::int64_t own = (t - start) / block;
        for (int k = 0; k < s.width; ++k) {
          const std::int64_t j = k == 0 ? 0 : own - (k - 1);
          topk.set((g * n + t) * s.width + k, static_cast<double>(j < 0 ? -1 : j));
        }
      }
    }
  return topk;
}

// New values of the same shapes (and a new random selection).
void refill(SlcData& s, std::mt19937_64& rng) {
  for (HostTensor* t : {&s.q, &s.k, &s.v, &s.d_o}) t->fill_normal(rng);
  s.topk = random_topk(s, rng);
}

SlcData make_slc(const std::vector<std::int64_t>& lengths, int group, std::mt19937_64& rng, bool local = false,
                 const NsaConfig& config = {}) {
  SlcData s;
  s.config = config;
  s.lengths = lengths;
  s.hq = s.hkv * group;
  s.width = config.topk;
  s.cu = make_cu_seqlens(lengths);
  const auto n = static_cast<std::int64_t>(s.cu.get(s.cu.numel() - 1));
  s.q = HostTensor(DType::kBFloat16, {n, s.hq, s.dim});
  s.k = HostTensor(DType::kBFloat16, {n, s.hkv, s.dim});
  s.v = HostTensor(DType::kBFloat16, {n, s.hkv, s.dim});
  s.d_o = HostTensor(DType::kBFloat16, {n, s.hq, s.dim});
  for (HostTensor* t : {&s.q, &s.k, &s.v, &s.d_o}) t->fill_normal(rng);
  s.topk = local ? local_topk(s) : random_topk(s, rng);
  return s;
}

struct SlcOut {
  HostTensor o, lse, dq, dk, dv;
  // Chunk plans built by slc_plan_build, by the forward and by the backward (slc_plan_builds()).
  std::int64_t plan_builds = 0, forward_builds = 0, backward_builds = 0;
};

// The inputs on the device and poisoned outputs.
struct SlcDevice {
  DeviceTensor cu, q, k, v, d_o, topk, o, lse, dq, dk, dv;

  explicit SlcDevice(const SlcData& s)
      : cu(s.cu), q(s.q), k(s.k), v(s.v), d_o(s.d_o), topk(s.topk),
        o(poisoned(s.q.dtype(), {s.tokens(), s.hq, s.dim})), lse(poisoned(DType::kFloat32, {s.hq, s.tokens()})),
        dq(poisoned_like(s.q)), dk(poisoned_like(s.k)), dv(poisoned_like(s.v)) {}

  std::size_t plan_bytes(const SlcData& s, const SlcOptions& options) const {
    return fsa::slc_plan_bytes(s.config, q.view(), k.view(), v.view(), topk.view(), cu.view(), options);
  }
  Status plan_build(const SlcData& s, const TensorView& plan, const SlcOptions& options) const {
    return slc_plan_build(s.config, q.view(), k.view(), v.view(), topk.view(), cu.view(), plan, options);
  }
  std::size_t forward_bytes(const SlcData& s, const SlcOptions& options, const TensorView& plan = {}) const {
    return slc_attn_forward_workspace_bytes(s.config, q.view(), k.view(), v.view(), topk.view(), cu.view(), o.view(),
                                            lse.view(), options, plan);
  }
  std::size_t backward_bytes(const SlcData& s, const SlcOptions& options, const TensorView& plan = {}) const {
    return slc_attn_backward_workspace_bytes(s.config, q.view(), k.view(), v.view(), topk.view(), cu.view(), o.view(),
                                             lse.view(), d_o.view(), dq.view(), dk.view(), dv.view(), options, plan);
  }
  Status forward(const SlcData& s, const SlcOptions& options, const TensorView& plan, const Workspace& ws) const {
    return slc_attn_forward(s.config, q.view(), k.view(), v.view(), topk.view(), cu.view(), o.view(), lse.view(),
                            options, plan, ws);
  }
  Status backward(const SlcData& s, const SlcOptions& options, const TensorView& plan, const Workspace& ws) const {
    return slc_attn_backward(s.config, q.view(), k.view(), v.view(), topk.view(), cu.view(), o.view(), lse.view(),
                             d_o.view(), dq.view(), dk.view(), dv.view(), options, plan, ws);
  }
  SlcOut download() const { return {o.download(), lse.download(), dq.download(), dk.download(), dv.download()}; }
};

SlcOut run_slc_cpu(const SlcData& s) {
  const HostTensor q = as_dtype(s.q, DType::kFloat32), k = as_dtype(s.k, DType::kFloat32);
  const HostTensor v = as_dtype(s.v, DType::kFloat32), d_o = as_dtype(s.d_o, DType::kFloat32);
  SlcOut r{poisoned(DType::kFloat32, {s.tokens(), s.hq, s.dim}), poisoned(DType::kFloat32, {s.hq, s.tokens()}),
           poisoned_like(q), poisoned_like(k), poisoned_like(v)};
  FSA_EXPECT_OK(slc_attn_forward(s.config, q.view(), k.view(), v.view(), s.topk.view(), s.cu.view(), r.o.view(),
                                 r.lse.view()));
  FSA_EXPECT_OK(slc_attn_backward(s.config, q.view(), k.view(), v.view(), s.topk.view(), s.cu.view(), r.o.view(),
                                  r.lse.view(), d_o.view(), r.dq.view(), r.dk.view(), r.dv.view()));
  return r;
}

struct SlcRun {
  SlcOptions options{};
  bool explicit_plan = false;     // slc_plan_build into a caller buffer first; else each call builds its own
  bool caller_workspace = false;  // workspaces of exactly the queried size; else the library allocates
};

SlcOut run_slc_gpu(const SlcData& s, const SlcRun& run) {
  const SlcDevice d(s);
  const SlcOptions& options = run.options;
  std::int64_t plan_builds = 0;
  std::unique_ptr<DeviceBytes> plan_buffer;
  TensorView plan;
  if (run.explicit_plan) {
    plan_buffer = std::make_unique<DeviceBytes>(d.plan_bytes(s, options));
    EXPECT_GT(plan_buffer->bytes(), 0u);
    plan = plan_buffer->tensor();
    const std::int64_t before = cuda::slc_plan_builds();
    FSA_EXPECT_OK(d.plan_build(s, plan, options));
    plan_builds = cuda::slc_plan_builds() - before;
  }
  const DeviceBytes forward_ws(run.caller_workspace ? d.forward_bytes(s, options, plan) : 0);
  std::int64_t before = cuda::slc_plan_builds();
  FSA_EXPECT_OK(d.forward(s, options, plan, forward_ws.workspace()));
  const std::int64_t forward_builds = cuda::slc_plan_builds() - before;
  const DeviceBytes backward_ws(run.caller_workspace ? d.backward_bytes(s, options, plan) : 0);
  before = cuda::slc_plan_builds();
  FSA_EXPECT_OK(d.backward(s, options, plan, backward_ws.workspace()));
  const std::int64_t backward_builds = cuda::slc_plan_builds() - before;
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  SlcOut r = d.download();
  r.plan_builds = plan_builds;
  r.forward_builds = forward_builds;
  r.backward_builds = backward_builds;
  return r;
}

void expect_slc_matches_reference(const std::string& what, const SlcOut& got, const SlcOut& ref) {
  expect_close("o " + what, got.o.to_double(), ref.o.to_double(), kTol);
  expect_lse_near("lse " + what, got.lse, ref.lse);
  expect_close("dq " + what, got.dq.to_double(), ref.dq.to_double(), 2 * kTol);
  expect_close("dk " + what, got.dk.to_double(), ref.dk.to_double(), 2 * kTol);
  expect_close("dv " + what, got.dv.to_double(), ref.dv.to_double(), 2 * kTol);
}

// Two GPU runs: the forward bit for bit (every row is computed alone, whatever rows share its list
// or chunk), or within kOtherPathTol when the two ran different forward paths; the backward up to
// the order of its atomics (or, after different forward paths, whose o and lse differ in their
// last bits, within kOtherPathTol: measured 2.6e-3 for the split against KV-outer in chunks).
void expect_slc_same(const std::string& what, const SlcOut& got, const SlcOut& want, bool same_forward_path = true) {
  if (same_forward_path) {
    expect_identical("o " + what, got.o, want.o);
    expect_identical("lse " + what, got.lse, want.lse);
  } else {
    expect_close("o " + what, got.o.to_double(), want.o.to_double(), kOtherPathTol);
    expect_lse_near("lse " + what, got.lse, want.lse, 1e-3, 1e-4);
  }
  const double grad_tol = same_forward_path ? kAtomicTol : kOtherPathTol;
  expect_close("dq " + what, got.dq.to_double(), want.dq.to_double(), grad_tol);
  expect_close("dk " + what, got.dk.to_double(), want.dk.to_double(), grad_tol);
  expect_close("dv " + what, got.dv.to_double(), want.dv.to_double(), grad_tol);
}

// ---- Choosing a cap that forces query chunks -------------------------------------------------

struct Chunks {
  std::size_t cap = 0;
  std::int64_t count = 0;   // query chunks
  std::int64_t tokens = 0;  // tokens of every chunk but the last
};

// The query chunks of these options: slc_plan_build builds one plan per chunk.
std::int64_t count_chunks(const SlcData& s, const SlcDevice& d, const SlcOptions& options) {
  const DeviceBytes plan(d.plan_bytes(s, options));
  const std::int64_t before = cuda::slc_plan_builds();
  FSA_EXPECT_OK(d.plan_build(s, plan.tensor(), options));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return cuda::slc_plan_builds() - before;
}

// A cap that runs the queries in 3 to 6 chunks with every boundary inside a sequence (at no
// sequence start) and off its block grid, one sequence longer than a chunk and one shorter. The
// cap is lowered in steps from the unchunked scratch; the library balances the chunks (C =
// ceil(N / chunks) tokens each, slc_attn.cu), and 3 to 6 chunks of ~N/4 tokens keep C far above
// the 64-token floor, where the workspace queries stay within the cap (the backward's uncapped
// dK / dV sums aside).
Chunks choose_cap(const SlcData& s, SlcOptions options) {
  const SlcDevice d(s);
  options.workspace_cap = kDefaultWorkspaceCap;
  const std::size_t full = std::max(d.forward_bytes(s, options), d.backward_bytes(s, options));
  const std::int64_t n = s.tokens();
  const auto [shortest, longest] = std::minmax_element(s.lengths.begin(), s.lengths.end());
  for (int step = 28; step >= 2; --step) {
    options.workspace_cap = full / 32 * static_cast<std::size_t>(step);
    const std::int64_t chunks = count_chunks(s, d, options);
    if (chunks < 3 || chunks > 6) continue;
    const std::int64_t c = (n + chunks - 1) / chunks;
    bool fits = *longest > c && *shortest < c;
    for (std::int64_t i = 1; i < chunks; ++i) {
      // The boundary's position in its sequence: neither 0 (a sequence start) nor a block start.
      const std::int64_t boundary = i * c;
      std::int64_t start = 0;
      for (std::int64_t b = 0; b < s.cu.numel(); ++b)
        if (static_cast<std::int64_t>(s.cu.get(b)) <= boundary) start = static_cast<std::int64_t>(s.cu.get(b));
      fits = fits && (boundary - start) % s.config.block_size != 0;
    }
    if (fits) return {options.workspace_cap, chunks, c};
  }
  ADD_FAILURE() << "no cap below " << full << " bytes runs " << n
                << " tokens in 3-6 chunks off the block grid and the sequence starts";
  return {};
}

// ---- The layer -------------------------------------------------------------------------------

const char* const kGradNames[] = {"q", "k", "v", "w_k", "pe_k", "w_v", "gates"};

struct LayerData {
  LayerCase lc;
  LayerTensors h;
  HostTensor d_o;
};

// G = 4, Dqk = Dv = 64, bf16, linear compression, per-head gates, RoPE, a window of 128.
LayerData make_layer(const std::vector<std::int64_t>& lengths, std::mt19937_64& rng) {
  LayerCase lc;
  lc.hq = 8;
  lc.hkv = 2;
  lc.dqk = 64;
  lc.dv = 64;
  lc.dtype = DType::kBFloat16;
  lc.config.window = 128;
  lc.seqlens = lengths;
  LayerTensors h(lc, rng);
  HostTensor d_o(lc.dtype, {h.q.sizes()[0], lc.hq, lc.dv});
  d_o.fill_normal(rng);
  return {lc, h, d_o};
}

// The layer's selected-attention problem (the shapes of its slc_* calls; topk values are random).
SlcData slc_of_layer(const LayerData& l, std::mt19937_64& rng) {
  EXPECT_EQ(l.lc.dqk, l.lc.dv);
  SlcData s = make_slc(l.lc.seqlens, l.lc.hq / l.lc.hkv, rng, false, l.lc.config);
  EXPECT_EQ(s.hq, l.lc.hq);
  EXPECT_EQ(s.dim, l.lc.dqk);
  return s;
}

const HostTensor& input_named(const LayerTensors& h, const std::string& name) {
  if (name == "q") return h.q;
  if (name == "k") return h.k;
  if (name == "v") return h.v;
  if (name == "w_k") return h.w_k;
  if (name == "pe_k") return h.pe_k;
  if (name == "w_v") return h.w_v;
  return h.gates;
}

// Output "o" and the gradients, named like their inputs.
using LayerOut = std::map<std::string, HostTensor>;

NsaLayerGrads grads_of(const std::map<std::string, std::unique_ptr<DeviceTensor>>& g) {
  return {g.at("q")->view(),    g.at("k")->view(),   g.at("v")->view(),    g.at("w_k")->view(),
          g.at("pe_k")->view(), g.at("w_v")->view(), g.at("gates")->view()};
}

// The inputs on the device, d_o, and poisoned o and gradients.
struct LayerDevice {
  std::map<std::string, std::unique_ptr<DeviceTensor>> in, grads;
  std::unique_ptr<DeviceTensor> o, d_o;

  explicit LayerDevice(const LayerData& l) {
    in["cu"] = std::make_unique<DeviceTensor>(l.h.cu);
    for (const char* name : kGradNames) {
      in[name] = std::make_unique<DeviceTensor>(input_named(l.h, name));
      grads[name] = std::make_unique<DeviceTensor>(poisoned_like(input_named(l.h, name)));
    }
    o = std::make_unique<DeviceTensor>(poisoned(l.lc.dtype, {l.h.q.sizes()[0], l.lc.hq, l.lc.dv}));
    d_o = std::make_unique<DeviceTensor>(l.d_o);
  }
  NsaLayerInputs inputs() const {
    NsaLayerInputs x;
    x.q = in.at("q")->view();
    x.k = in.at("k")->view();
    x.v = in.at("v")->view();
    x.cu_seqlens = in.at("cu")->view();
    x.w_k = in.at("w_k")->view();
    x.pe_k = in.at("pe_k")->view();
    x.w_v = in.at("w_v")->view();
    x.gates = in.at("gates")->view();
    return x;
  }
  NsaLayerGrads gradients() const { return grads_of(grads); }
  // New input values (same shapes) and poisoned outputs, ordered on `stream`.
  void replace_inputs(const LayerData& l, cudaStream_t stream) const {
    for (const char* name : kGradNames) {
      upload(*in.at(name), input_named(l.h, name), stream);
      poison_async(*grads.at(name), stream);
    }
    upload(*d_o, l.d_o, stream);
    poison_async(*o, stream);
  }
  LayerOut download() const {
    LayerOut r;
    r["o"] = o->download();
    for (const auto& [name, t] : grads) r[name] = t->download();
    return r;
  }
};

LayerOut run_layer_cpu(const LayerData& l) {
  LayerTensors f = l.h;
  for (HostTensor* t : {&f.q, &f.k, &f.v, &f.w_k, &f.pe_k, &f.w_v, &f.gates}) *t = as_dtype(*t, DType::kFloat32);
  const NsaLayerInputs in = f.inputs();
  HostTensor saved(DType::kUInt8, {static_cast<std::int64_t>(nsa_saved_bytes(l.lc.config, NsaLayerShape::of(in)))});
  LayerOut r;
  r["o"] = poisoned(DType::kFloat32, {f.q.sizes()[0], l.lc.hq, l.lc.dv});
  for (const char* name : kGradNames) r[name] = poisoned_like(input_named(f, name));
  const HostTensor d_o = as_dtype(l.d_o, DType::kFloat32);
  FSA_EXPECT_OK(nsa_forward(l.lc.config, in, r["o"].view(), saved.view()));
  FSA_EXPECT_OK(nsa_backward(l.lc.config, in, saved.view(), d_o.view(),
                             {r["q"].view(), r["k"].view(), r["v"].view(), r["w_k"].view(), r["pe_k"].view(),
                              r["w_v"].view(), r["gates"].view()}));
  return r;
}

struct LayerRun {
  NsaLayerOptions options{};
  bool caller_workspace = false;  // workspaces of exactly the queried size; else the library allocates
};

struct LayerResult {
  LayerOut out;
  std::int64_t forward_builds = 0, backward_builds = 0;  // slc_plan_builds() of each call
};

LayerResult run_layer_gpu(const LayerData& l, const LayerRun& run) {
  const LayerDevice dev(l);
  const NsaLayerInputs in = dev.inputs();
  const NsaLayerShape shape = NsaLayerShape::of(in);
  const NsaConfig& config = l.lc.config;
  const DeviceBytes saved(nsa_saved_bytes(config, shape, run.options));
  const DeviceBytes forward_ws(run.caller_workspace ? nsa_forward_workspace_bytes(config, shape, true, run.options)
                                                    : 0);
  const DeviceBytes backward_ws(run.caller_workspace ? nsa_backward_workspace_bytes(config, shape, run.options) : 0);
  LayerResult r;
  std::int64_t before = cuda::slc_plan_builds();
  FSA_EXPECT_OK(nsa_forward(config, in, dev.o->view(), saved.tensor(), run.options, forward_ws.workspace()));
  r.forward_builds = cuda::slc_plan_builds() - before;
  before = cuda::slc_plan_builds();
  FSA_EXPECT_OK(
      nsa_backward(config, in, saved.tensor(), dev.d_o->view(), dev.gradients(), run.options, backward_ws.workspace()));
  r.backward_builds = cuda::slc_plan_builds() - before;
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  r.out = dev.download();
  return r;
}

// Inference: no saved buffer (the saved tensors and the plan live in the workspace).
HostTensor run_layer_inference(const LayerData& l, const NsaLayerOptions& options, bool caller_workspace,
                               std::int64_t* builds = nullptr) {
  const LayerDevice dev(l);
  const NsaLayerInputs in = dev.inputs();
  const DeviceBytes ws(
      caller_workspace ? nsa_forward_workspace_bytes(l.lc.config, NsaLayerShape::of(in), false, options) : 0);
  const std::int64_t before = cuda::slc_plan_builds();
  FSA_EXPECT_OK(nsa_forward(l.lc.config, in, dev.o->view(), TensorView{}, options, ws.workspace()));
  if (builds != nullptr) *builds = cuda::slc_plan_builds() - before;
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return dev.o->download();
}

void expect_layer_matches_reference(const std::string& what, const LayerOut& got, const LayerOut& ref) {
  expect_close("o " + what, got.at("o").to_double(), ref.at("o").to_double(), kTol);
  for (const char* name : kGradNames)
    expect_close(std::string("d") + name + " " + what, got.at(name).to_double(), ref.at(name).to_double(), 3 * kTol);
}

// Two GPU runs of the layer: the output within o_tol (0: bit for bit), the gradients within grad_tol.
void expect_layer_close(const std::string& what, const LayerOut& got, const LayerOut& want, double o_tol,
                        double grad_tol) {
  if (o_tol == 0) expect_identical("o " + what, got.at("o"), want.at("o"));
  else expect_close("o " + what, got.at("o").to_double(), want.at("o").to_double(), o_tol);
  for (const char* name : kGradNames)
    expect_close(std::string("d") + name + " " + what, got.at(name).to_double(), want.at(name).to_double(), grad_tol);
}

// ---- 1. Query chunks of selected attention -----------------------------------------------------

// Chunks whose boundaries cut sequences (and blocks) in the middle: the keys before a chunk are
// reached at negative rows and dK / dV accumulate over the chunks. Equal to the reference, and,
// KV-outer both, to the unchunked KV-outer run: the forward bit for bit.
TEST_F(Gpu, WorkspaceSelectedQueryChunksMatchReferenceAndUnchunkedRun) {
  std::uint64_t salt = 0;
  for (const int g : {1, 4}) {
    const std::string what = "G=" + std::to_string(g);
    SCOPED_TRACE(what);
    auto rng = rng_for_test(++salt);
    const SlcData s = make_slc(kLengths, g, rng);
    SlcOptions small;
    small.path = SlcPath::kKvOuter;
    const Chunks chunks = choose_cap(s, small);
    ASSERT_GE(chunks.count, 3);
    small.workspace_cap = chunks.cap;
    {
      // The queries read sizes only: a chunked call needs less than the whole problem, and (chunks
      // well above the floor) no more than the cap, plus, in the backward, the uncapped fp32 dK / dV
      // sums over all key rows (N * Hkv * (Dqk + Dv) * 4 bytes, two 256-byte aligned pieces).
      const std::size_t accumulators =
          aligned(static_cast<std::size_t>(s.tokens() * s.hkv * s.dim) * 4) * 2;
      const SlcDevice d(s);
      const std::size_t forward_default = d.forward_bytes(s, {}), forward_small = d.forward_bytes(s, small);
      const std::size_t backward_default = d.backward_bytes(s, {}), backward_small = d.backward_bytes(s, small);
      EXPECT_GT(forward_small, 0u);
      EXPECT_LT(forward_small, forward_default);
      EXPECT_LE(forward_small, chunks.cap);
      EXPECT_GT(backward_small, 0u);
      EXPECT_LT(backward_small, backward_default);
      EXPECT_LE(backward_small, chunks.cap + accumulators);
      const DeviceBytes plan(d.plan_bytes(s, small));
      EXPECT_LT(d.forward_bytes(s, small, plan.tensor()), forward_small) << "a given plan is not in the workspace";
      EXPECT_LT(d.backward_bytes(s, small, plan.tensor()), backward_small) << "a given plan is not in the workspace";
    }
    const SlcOut ref = run_slc_cpu(s);
    SlcOptions kv_outer;
    kv_outer.path = SlcPath::kKvOuter;
    const SlcOut unchunked = run_slc_gpu(s, {kv_outer});
    const SlcOut unchunked_auto = run_slc_gpu(s, {});
    const SlcOut inside = run_slc_gpu(s, {small});
    const SlcOut planned = run_slc_gpu(s, {small, true, true});
    expect_slc_matches_reference("unchunked KV-outer " + what, unchunked, ref);
    expect_slc_matches_reference("unchunked auto " + what, unchunked_auto, ref);
    expect_slc_matches_reference("chunks, plan built inside " + what, inside, ref);
    expect_slc_matches_reference("chunks, explicit plan " + what, planned, ref);
    expect_slc_same("chunks, plan built inside vs unchunked " + what, inside, unchunked);
    expect_slc_same("chunks, explicit plan vs unchunked " + what, planned, unchunked);
    // One plan per chunk: each call without a plan builds its own, slc_plan_build all of them once.
    EXPECT_EQ(unchunked.forward_builds, 1);
    EXPECT_EQ(unchunked.backward_builds, 1);
    EXPECT_EQ(inside.forward_builds, chunks.count);
    EXPECT_EQ(inside.backward_builds, chunks.count);
    EXPECT_EQ(planned.plan_builds, chunks.count);
    EXPECT_EQ(planned.forward_builds, 0);
    EXPECT_EQ(planned.backward_builds, 0);
  }
}

// Every path under the same small cap, on random selections and on local ones (whose tiles share
// blocks, so the split's tile kernel runs): a split tile that a chunk boundary cuts is planned and
// computed in each chunk for that chunk's tokens (a chunked split call is not bit-equal to the
// unchunked one: the tile's dense blocks are chosen from fewer tokens); query-outer reads its
// shifted cu_seqlens from the plan's chunk slot (given or in the workspace).
TEST_F(Gpu, WorkspaceSelectedForcedPathsUnderQueryChunks) {
  for (const bool local : {false, true}) {
    auto rng = rng_for_test(local ? 2 : 1);
    const SlcData s = make_slc(kLengths, 4, rng, local);
    const SlcOut ref = run_slc_cpu(s);
    const std::vector<std::pair<std::string, SlcOptions>> paths = {{"kv-outer", {SlcPath::kKvOuter, 0}},
                                                                   {"query-outer", {SlcPath::kQueryOuter, 0}},
                                                                   {"auto", {SlcPath::kAuto, 0}},
                                                                   {"split-default", {SlcPath::kSplit, 0}},
                                                                   {"split-all-dense", {SlcPath::kSplit, 1}}};
    for (const auto& [path_name, options] : paths) {
      const std::string name = path_name + (local ? " local" : " random");
      SCOPED_TRACE(name);
      // The cap that cuts this path's problem into 3 or more chunks (each path's plan has its size).
      const Chunks chunks = choose_cap(s, options);
      ASSERT_GE(chunks.count, 3);
      const bool split = options.path == SlcPath::kSplit || options.path == SlcPath::kAuto;
      const SlcOut unchunked = run_slc_gpu(s, {options});
      expect_slc_matches_reference(name + " unchunked", unchunked, ref);
      SlcOptions small = options;
      small.workspace_cap = chunks.cap;
      for (const bool explicit_plan : {false, true}) {
        const std::string what = name + (explicit_plan ? ", chunks, explicit plan" : ", chunks, plan built inside");
        const SlcOut chunked = run_slc_gpu(s, {small, explicit_plan, explicit_plan});
        expect_slc_matches_reference(what, chunked, ref);
        expect_slc_same(what + " vs unchunked", chunked, unchunked, !split);
        if (explicit_plan) {
          EXPECT_EQ(chunked.plan_builds, chunks.count) << what;
          EXPECT_EQ(chunked.forward_builds + chunked.backward_builds, 0) << what;
        } else {
          // Query-outer reads topk_idx directly: its forward builds no plan.
          EXPECT_EQ(chunked.forward_builds, options.path == SlcPath::kQueryOuter ? 0 : chunks.count) << what;
          EXPECT_EQ(chunked.backward_builds, chunks.count) << what;
        }
      }
    }
  }
}

// A plan built once with the dense/sparse split (kAuto on selections whose tiles share blocks,
// kSplit forced; and the deterministic mode's sorted plan) serves the forward and then the
// backward, which must still take every pair, the dense ones included: the same gradients as a
// backward that builds its own all-pairs plan, and as the reference.
TEST_F(Gpu, WorkspaceSelectedBackwardReusesTheForwardsSplitPlan) {
  auto rng = rng_for_test();
  const SlcData s = make_slc({700, 300, 65}, 4, rng, /*local=*/true);
  const SlcOut ref = run_slc_cpu(s);
  const std::vector<std::pair<std::string, SlcOptions>> paths = {{"auto", {SlcPath::kAuto, 0}},
                                                                 {"auto-deterministic", {SlcPath::kAuto, 0, true}},
                                                                 {"split-default", {SlcPath::kSplit, 0}},
                                                                 {"split-all-dense", {SlcPath::kSplit, 1}}};
  for (const auto& [name, options] : paths) {
    SCOPED_TRACE(name);
    const SlcOut inside = run_slc_gpu(s, {options});
    const SlcOut planned = run_slc_gpu(s, {options, true, true});
    expect_slc_matches_reference(name + ", plan built inside", inside, ref);
    expect_slc_matches_reference(name + ", explicit plan", planned, ref);
    expect_slc_same(name + ", explicit plan vs plan built inside", planned, inside);
  }
}

// ---- 2. Caller-owned workspaces ------------------------------------------------------------------

TEST_F(Gpu, WorkspaceCallerOwnedCompression) {
  auto rng = rng_for_test();
  const NsaConfig config;  // l = 32, s = 16, linear
  const int heads = 2, dim = 64, l = config.cmp_len;
  const HostTensor cu = make_cu_seqlens(kLengths), cu_cmp = make_cu_cmp(config, cu);
  const auto n = static_cast<std::int64_t>(cu.get(cu.numel() - 1));
  const std::int64_t rows = max_compressed_tokens(n, config);
  HostTensor x(DType::kBFloat16, {n, heads, dim}), w(DType::kBFloat16, {heads, l * dim, dim});
  HostTensor pe(DType::kBFloat16, {heads, l, dim}), dy(DType::kBFloat16, {rows, heads, dim});
  x.fill_normal(rng);
  w.fill_normal(rng, 1.0 / std::sqrt(static_cast<double>(l * dim)));
  pe.fill_normal(rng, 0.5);
  dy.fill_normal(rng);

  struct Out {
    HostTensor y, dx, dw, dpe;
  };
  Out ref{poisoned(DType::kFloat32, {rows, heads, dim}), poisoned(DType::kFloat32, x.sizes()),
          poisoned(DType::kFloat32, w.sizes()), poisoned(DType::kFloat32, pe.sizes())};
  {
    const HostTensor x32 = as_dtype(x, DType::kFloat32), w32 = as_dtype(w, DType::kFloat32);
    const HostTensor pe32 = as_dtype(pe, DType::kFloat32), dy32 = as_dtype(dy, DType::kFloat32);
    FSA_EXPECT_OK(
        compress_forward(config, x32.view(), cu.view(), cu_cmp.view(), w32.view(), pe32.view(), ref.y.view()));
    FSA_EXPECT_OK(compress_backward(config, x32.view(), cu.view(), cu_cmp.view(), w32.view(), pe32.view(), dy32.view(),
                                    ref.dx.view(), ref.dw.view(), ref.dpe.view()));
  }
  const DeviceTensor gx(x), gcu(cu), gcmp(cu_cmp), gw(w), gpe(pe), gdy(dy);
  auto run = [&](bool caller_workspace) {
    const DeviceTensor gy(poisoned(DType::kBFloat16, {rows, heads, dim})), gdx(poisoned_like(x)), gdw(poisoned_like(w)),
        gdpe(poisoned_like(pe));
    const std::size_t forward = compress_forward_workspace_bytes(config, gx.view(), gcu.view(), gcmp.view(), gw.view(),
                                                                 gpe.view(), gy.view());
    const std::size_t backward =
        compress_backward_workspace_bytes(config, gx.view(), gcu.view(), gcmp.view(), gw.view(), gpe.view(), gdy.view(),
                                          gdx.view(), gdw.view(), gdpe.view());
    const DeviceBytes forward_ws(caller_workspace ? forward : 0), backward_ws(caller_workspace ? backward : 0);
    FSA_EXPECT_OK(compress_forward(config, gx.view(), gcu.view(), gcmp.view(), gw.view(), gpe.view(), gy.view(),
                                   forward_ws.workspace()));
    FSA_EXPECT_OK(compress_backward(config, gx.view(), gcu.view(), gcmp.view(), gw.view(), gpe.view(), gdy.view(),
                                    gdx.view(), gdw.view(), gdpe.view(), backward_ws.workspace()));
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    if (caller_workspace) {
      expect_workspace_checked("compress_forward", forward, [&](const Workspace& ws) {
        return compress_forward(config, gx.view(), gcu.view(), gcmp.view(), gw.view(), gpe.view(), gy.view(), ws);
      });
      expect_workspace_checked("compress_backward", backward, [&](const Workspace& ws) {
        return compress_backward(config, gx.view(), gcu.view(), gcmp.view(), gw.view(), gpe.view(), gdy.view(),
                                 gdx.view(), gdw.view(), gdpe.view(), ws);
      });
    }
    return Out{gy.download(), gdx.download(), gdw.download(), gdpe.download()};
  };
  const Out library = run(false), caller = run(true);
  for (const Out* got : {&library, &caller}) {
    const std::string what = got == &library ? "library workspace" : "caller workspace";
    expect_close("y " + what, got->y.to_double(), ref.y.to_double(), kTol);
    expect_close("dx " + what, got->dx.to_double(), ref.dx.to_double(), 2 * kTol);
    expect_close("d_weight " + what, got->dw.to_double(), ref.dw.to_double(), 2 * kTol);
    expect_close("d_pos_emb " + what, got->dpe.to_double(), ref.dpe.to_double(), 2 * kTol);
  }
  // Compression writes every output once, without atomics: the same bits.
  expect_identical("y", caller.y, library.y);
  expect_identical("dx", caller.dx, library.dx);
  expect_identical("d_weight", caller.dw, library.dw);
  expect_identical("d_pos_emb", caller.dpe, library.dpe);
}

// cmp_attn_backward and swa_backward (their forwards take no workspace).
TEST_F(Gpu, WorkspaceCallerOwnedCompressedAndWindowAttentionBackward) {
  auto rng = rng_for_test();
  NsaConfig config;
  config.window = 128;
  const int hq = 8, hkv = 2, dim = 64;
  const HostTensor cu = make_cu_seqlens(kLengths), cu_cmp = make_cu_cmp(config, cu);
  const auto n = static_cast<std::int64_t>(cu.get(cu.numel() - 1));
  const std::int64_t rows = max_compressed_tokens(n, config);

  struct Out {
    HostTensor o, lse, dq, dk, dv;
  };
  for (const bool compressed : {true, false}) {
    const std::string op = compressed ? "cmp_attn_backward" : "swa_backward";
    SCOPED_TRACE(op);
    const std::int64_t keys = compressed ? rows : n;
    HostTensor q(DType::kBFloat16, {n, hq, dim}), k(DType::kBFloat16, {keys, hkv, dim});
    HostTensor v(DType::kBFloat16, {keys, hkv, dim}), d_o(DType::kBFloat16, {n, hq, dim});
    for (HostTensor* t : {&q, &k, &v, &d_o}) t->fill_normal(rng);
    const auto forward = [&](const TensorView& q_, const TensorView& k_, const TensorView& v_, const TensorView& cu_,
                             const TensorView& cmp_, const TensorView& o, const TensorView& lse) {
      return compressed ? cmp_attn_forward(config, q_, k_, v_, cu_, cmp_, o, lse)
                        : swa_forward(config, q_, k_, v_, cu_, o, lse);
    };
    const auto backward = [&](const TensorView& q_, const TensorView& k_, const TensorView& v_, const TensorView& cu_,
                              const TensorView& cmp_, const Out& out, const TensorView& d_o_, const Workspace& ws) {
      return compressed ? cmp_attn_backward(config, q_, k_, v_, cu_, cmp_, out.o.view(), out.lse.view(), d_o_,
                                            out.dq.view(), out.dk.view(), out.dv.view(), ws)
                        : swa_backward(config, q_, k_, v_, cu_, out.o.view(), out.lse.view(), d_o_, out.dq.view(),
                                       out.dk.view(), out.dv.view(), ws);
    };
    Out ref{poisoned(DType::kFloat32, {n, hq, dim}), poisoned(DType::kFloat32, {hq, n}),
            poisoned(DType::kFloat32, q.sizes()), poisoned(DType::kFloat32, k.sizes()),
            poisoned(DType::kFloat32, v.sizes())};
    {
      const HostTensor q32 = as_dtype(q, DType::kFloat32), k32 = as_dtype(k, DType::kFloat32);
      const HostTensor v32 = as_dtype(v, DType::kFloat32), d_o32 = as_dtype(d_o, DType::kFloat32);
      FSA_EXPECT_OK(
          forward(q32.view(), k32.view(), v32.view(), cu.view(), cu_cmp.view(), ref.o.view(), ref.lse.view()));
      FSA_EXPECT_OK(backward(q32.view(), k32.view(), v32.view(), cu.view(), cu_cmp.view(), ref, d_o32.view(), {}));
    }
    const DeviceTensor gq(q), gk(k), gv(v), gdo(d_o), gcu(cu), gcmp(cu_cmp);
    auto run = [&](bool caller_workspace) {
      const DeviceTensor go(poisoned(DType::kBFloat16, {n, hq, dim})), glse(poisoned(DType::kFloat32, {hq, n})),
          gdq(poisoned_like(q)), gdk(poisoned_like(k)), gdv(poisoned_like(v));
      const std::size_t needed =
          compressed ? cmp_attn_backward_workspace_bytes(config, gq.view(), gk.view(), gv.view(), gcu.view(),
                                                         gcmp.view(), go.view(), glse.view(), gdo.view(), gdq.view(),
                                                         gdk.view(), gdv.view())
                     : swa_backward_workspace_bytes(config, gq.view(), gk.view(), gv.view(), gcu.view(), go.view(),
                                                    glse.view(), gdo.view(), gdq.view(), gdk.view(), gdv.view());
      const auto device_backward = [&](const Workspace& ws) {
        return compressed ? cmp_attn_backward(config, gq.view(), gk.view(), gv.view(), gcu.view(), gcmp.view(),
                                              go.view(), glse.view(), gdo.view(), gdq.view(), gdk.view(), gdv.view(),
                                              ws)
                          : swa_backward(config, gq.view(), gk.view(), gv.view(), gcu.view(), go.view(), glse.view(),
                                         gdo.view(), gdq.view(), gdk.view(), gdv.view(), ws);
      };
      FSA_EXPECT_OK(forward(gq.view(), gk.view(), gv.view(), gcu.view(), gcmp.view(), go.view(), glse.view()));
      const DeviceBytes ws(caller_workspace ? needed : 0);
      FSA_EXPECT_OK(device_backward(ws.workspace()));
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      if (caller_workspace) expect_workspace_checked(op, needed, device_backward);
      return Out{go.download(), glse.download(), gdq.download(), gdk.download(), gdv.download()};
    };
    const Out library = run(false), caller = run(true);
    for (const Out* got : {&library, &caller}) {
      const std::string what = op + (got == &library ? ", library workspace" : ", caller workspace");
      expect_close("o " + what, got->o.to_double(), ref.o.to_double(), kTol);
      expect_lse_near("lse " + what, got->lse, ref.lse);
      expect_close("dq " + what, got->dq.to_double(), ref.dq.to_double(), 2 * kTol);
      expect_close("dk " + what, got->dk.to_double(), ref.dk.to_double(), 2 * kTol);
      expect_close("dv " + what, got->dv.to_double(), ref.dv.to_double(), 2 * kTol);
    }
    expect_identical("o", caller.o, library.o);
    expect_identical("lse", caller.lse, library.lse);
    expect_close("dq caller vs library", caller.dq.to_double(), library.dq.to_double(), kAtomicTol);
    expect_close("dk caller vs library", caller.dk.to_double(), library.dk.to_double(), kAtomicTol);
    expect_close("dv caller vs library", caller.dv.to_double(), library.dv.to_double(), kAtomicTol);
  }
}

// Selected attention with the default cap and with a small one (chunks), the plan built inside or
// given: an exact workspace gives the library allocation's results.
TEST_F(Gpu, WorkspaceCallerOwnedSelectedAttention) {
  auto rng = rng_for_test();
  const SlcData s = make_slc(kLengths, 4, rng);
  const Chunks chunks = choose_cap(s, {});
  ASSERT_GE(chunks.count, 3);
  const SlcOut ref = run_slc_cpu(s);
  for (const std::size_t cap : {kDefaultWorkspaceCap, chunks.cap}) {
    const std::string what = cap == kDefaultWorkspaceCap ? "default cap" : "small cap";
    SCOPED_TRACE(what);
    SlcOptions options;
    options.workspace_cap = cap;
    for (const bool explicit_plan : {false, true}) {
      const std::string how = what + (explicit_plan ? ", explicit plan" : ", plan built inside");
      // A given plan runs KV-outer here: the backward over a plan with the split is the subject of
      // WorkspaceSelectedBackwardReusesTheForwardsSplitPlan.
      SlcOptions run_options = options;
      if (explicit_plan) run_options.path = SlcPath::kKvOuter;
      const SlcOut library = run_slc_gpu(s, {run_options, explicit_plan, false});
      const SlcOut caller = run_slc_gpu(s, {run_options, explicit_plan, true});
      expect_slc_matches_reference(how + ", library workspace", library, ref);
      expect_slc_matches_reference(how + ", caller workspace", caller, ref);
      expect_slc_same(how + ", caller vs library workspace", caller, library);
    }
    // Workspace errors, with and without a plan.
    const SlcDevice d(s);
    const DeviceBytes plan(d.plan_bytes(s, options));
    FSA_ASSERT_OK(d.plan_build(s, plan.tensor(), options));
    for (const TensorView& p : {TensorView{}, plan.tensor()}) {
      const std::string with = p.defined() ? " with a plan" : " without a plan";
      expect_workspace_checked("slc_attn_forward " + what + with, d.forward_bytes(s, options, p),
                               [&](const Workspace& ws) { return d.forward(s, options, p, ws); });
      expect_workspace_checked("slc_attn_backward " + what + with, d.backward_bytes(s, options, p),
                               [&](const Workspace& ws) { return d.backward(s, options, p, ws); });
    }
  }
}

// A plan too small, of another dtype or misaligned is refused by slc_plan_build, the forward and
// the backward with an error naming `plan` (and the queries then report 0).
TEST_F(Gpu, WorkspaceSelectedPlanArgumentIsChecked) {
  auto rng = rng_for_test();
  const SlcData s = make_slc(kLengths, 4, rng);
  const Chunks chunks = choose_cap(s, {});
  ASSERT_GE(chunks.count, 3);
  const SlcDevice d(s);
  for (const std::size_t cap : {kDefaultWorkspaceCap, chunks.cap}) {
    SCOPED_TRACE(cap == kDefaultWorkspaceCap ? "default cap" : "small cap");
    SlcOptions options;
    options.workspace_cap = cap;
    const std::size_t bytes = d.plan_bytes(s, options);
    ASSERT_GT(bytes, kWorkspaceAlignment);
    const DeviceBytes buffer(bytes + kWorkspaceAlignment);
    auto* base = static_cast<unsigned char*>(buffer.data());
    const auto b = static_cast<std::int64_t>(bytes);
    const std::pair<const char*, TensorView> bad[] = {
        {"one byte short", TensorView::contiguous(base, DType::kUInt8, {b - 1}, Device::cuda(0))},
        {"int32", TensorView::contiguous(base, DType::kInt32, {b / 4 + 1}, Device::cuda(0))},
        {"misaligned", TensorView::contiguous(base + kWorkspaceAlignment / 2, DType::kUInt8, {b}, Device::cuda(0))}};
    for (const auto& [how, plan] : bad) {
      SCOPED_TRACE(how);
      expect_invalid(d.plan_build(s, plan, options), "plan");
      expect_invalid(d.forward(s, options, plan, {}), "plan");
      expect_invalid(d.backward(s, options, plan, {}), "plan");
      EXPECT_EQ(d.forward_bytes(s, options, plan), 0u);
      EXPECT_EQ(d.backward_bytes(s, options, plan), 0u);
    }
    expect_invalid(d.plan_build(s, TensorView{}, options), "plan");
  }
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// The deterministic backward does not run in chunks: with a cap below its workspace it fails with
// an error naming workspace_cap (whoever allocates the workspace, plan given or not), and its
// workspace query does not shrink with the cap; under the default cap it runs and matches the
// reference.
TEST_F(Gpu, WorkspaceDeterministicBackwardAboveItsCapNamesWorkspaceCap) {
  auto rng = rng_for_test();
  const SlcData s = make_slc(kLengths, 4, rng);
  const SlcOut ref = run_slc_cpu(s);
  SlcOptions deterministic;
  deterministic.deterministic = true;
  // KV-outer: the backward over a plan with the split is the subject of
  // WorkspaceSelectedBackwardReusesTheForwardsSplitPlan.
  deterministic.path = SlcPath::kKvOuter;
  for (const bool explicit_plan : {false, true}) {
    SCOPED_TRACE(explicit_plan ? "explicit plan" : "plan built inside");
    const SlcDevice d(s);
    const DeviceBytes plan(explicit_plan ? d.plan_bytes(s, deterministic) : 0);
    const TensorView p = explicit_plan ? plan.tensor() : TensorView{};
    if (explicit_plan) FSA_ASSERT_OK(d.plan_build(s, p, deterministic));
    FSA_ASSERT_OK(d.forward(s, deterministic, p, {}));
    const std::size_t needed = d.backward_bytes(s, deterministic, p);
    ASSERT_GT(needed, 0u);
    SlcOptions below = deterministic;
    below.workspace_cap = needed - 1;
    EXPECT_EQ(d.backward_bytes(s, below, p), needed) << "the deterministic backward does not chunk";
    expect_invalid(d.backward(s, below, p, {}), "workspace_cap");
    const DeviceBytes ws(needed);
    expect_invalid(d.backward(s, below, p, ws.workspace()), "workspace_cap");
    FSA_EXPECT_OK(d.backward(s, deterministic, p, ws.workspace()));
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const SlcOut got = d.download();
    expect_slc_matches_reference("deterministic", got, ref);
  }
}

// The layer with workspaces of exactly the queried sizes (forward with saved, backward, and the
// forward without saved) gives the results of the library's allocation.
TEST_F(Gpu, WorkspaceCallerOwnedLayer) {
  auto rng = rng_for_test();
  const LayerData l = make_layer(kLengths, rng);
  const LayerOut ref = run_layer_cpu(l);
  const LayerResult library = run_layer_gpu(l, {{}, false});
  const LayerResult caller = run_layer_gpu(l, {{}, true});
  expect_layer_matches_reference("library workspace", library.out, ref);
  expect_layer_matches_reference("caller workspace", caller.out, ref);
  expect_layer_close("caller vs library workspace", caller.out, library.out, 0, kLayerAtomicTol);
  expect_identical("o without saved, caller workspace", run_layer_inference(l, {}, true), library.out.at("o"));
  expect_identical("o without saved, library workspace", run_layer_inference(l, {}, false), library.out.at("o"));

  const LayerDevice dev(l);
  const NsaLayerInputs in = dev.inputs();
  const NsaLayerShape shape = NsaLayerShape::of(in);
  const DeviceBytes saved(nsa_saved_bytes(l.lc.config, shape));
  expect_workspace_checked("nsa_forward", nsa_forward_workspace_bytes(l.lc.config, shape, true),
                           [&](const Workspace& ws) {
                             return nsa_forward(l.lc.config, in, dev.o->view(), saved.tensor(), {}, ws);
                           });
  expect_workspace_checked("nsa_forward without saved", nsa_forward_workspace_bytes(l.lc.config, shape, false),
                           [&](const Workspace& ws) {
                             return nsa_forward(l.lc.config, in, dev.o->view(), TensorView{}, {}, ws);
                           });
  expect_workspace_checked("nsa_backward", nsa_backward_workspace_bytes(l.lc.config, shape), [&](const Workspace& ws) {
    return nsa_backward(l.lc.config, in, saved.tensor(), dev.d_o->view(), dev.gradients(), {}, ws);
  });
}

// ---- 3. The layer builds its plan once -----------------------------------------------------------

TEST_F(Gpu, WorkspaceLayerBuildsItsPlanOnce) {
  auto rng = rng_for_test();
  {
    SCOPED_TRACE("small problem, one chunk");
    const LayerData l = make_layer({100, 57}, rng);
    const LayerResult r = run_layer_gpu(l, {{}, true});
    EXPECT_EQ(r.forward_builds, 1);
    EXPECT_EQ(r.backward_builds, 0);
  }
  {
    SCOPED_TRACE("small cap, query chunks");
    const LayerData l = make_layer(kLengths, rng);
    const Chunks chunks = choose_cap(slc_of_layer(l, rng), {});
    ASSERT_GE(chunks.count, 3);
    NsaLayerOptions small;
    small.selected.workspace_cap = chunks.cap;
    for (const bool caller_workspace : {false, true}) {
      const LayerResult r = run_layer_gpu(l, {small, caller_workspace});
      EXPECT_EQ(r.forward_builds, chunks.count) << "one plan per chunk, built by the forward";
      EXPECT_EQ(r.backward_builds, 0) << "the backward reuses the saved plan";
    }
    std::int64_t builds = -1;
    run_layer_inference(l, small, true, &builds);
    EXPECT_EQ(builds, chunks.count) << "inference";
  }
}

// ---- 4. The layer under a small cap ------------------------------------------------------------

TEST_F(Gpu, WorkspaceLayerUnderASmallCapMatchesReferenceAndDefaultCap) {
  auto rng = rng_for_test();
  const LayerData l = make_layer(kLengths, rng);
  const Chunks chunks = choose_cap(slc_of_layer(l, rng), {});
  ASSERT_GE(chunks.count, 3);
  NsaLayerOptions small;
  small.selected.workspace_cap = chunks.cap;

  // Sizes from shapes alone: a small cap never asks for more workspace (the selected step's
  // scratch shrinks, the others stay), and the saved buffer holds every chunk's plan.
  NsaLayerShape shape;
  shape.tokens = l.h.q.sizes()[0];
  shape.num_seqs = static_cast<int>(l.lc.seqlens.size());
  shape.heads_q = l.lc.hq;
  shape.heads_kv = l.lc.hkv;
  shape.head_dim_qk = l.lc.dqk;
  shape.head_dim_v = l.lc.dv;
  shape.dtype = l.lc.dtype;
  shape.device = Device::cuda(0);
  const NsaConfig& config = l.lc.config;
  EXPECT_GT(nsa_saved_bytes(config, shape, small), 0u);
  EXPECT_GT(nsa_forward_workspace_bytes(config, shape, true, small), 0u);
  EXPECT_LE(nsa_forward_workspace_bytes(config, shape, true, small), nsa_forward_workspace_bytes(config, shape, true));
  EXPECT_LE(nsa_forward_workspace_bytes(config, shape, false, small),
            nsa_forward_workspace_bytes(config, shape, false) - nsa_saved_bytes(config, shape) +
                nsa_saved_bytes(config, shape, small));
  EXPECT_LE(nsa_backward_workspace_bytes(config, shape, small), nsa_backward_workspace_bytes(config, shape));

  const LayerOut ref = run_layer_cpu(l);
  const LayerResult default_cap = run_layer_gpu(l, {{}, true});
  const LayerResult chunked = run_layer_gpu(l, {small, true});
  const LayerResult chunked_library = run_layer_gpu(l, {small, false});
  expect_layer_matches_reference("default cap", default_cap.out, ref);
  expect_layer_matches_reference("small cap, caller workspace", chunked.out, ref);
  expect_layer_matches_reference("small cap, library workspace", chunked_library.out, ref);
  // The chunks' split tiles choose their dense blocks from their own tokens only: another path.
  expect_layer_close("small cap vs default cap", chunked.out, default_cap.out, kOtherPathTol, kLayerAtomicTol);
  expect_layer_close("small cap, caller vs library workspace", chunked.out, chunked_library.out, 0, kLayerAtomicTol);
  expect_identical("o without saved, small cap", run_layer_inference(l, small, true), chunked.out.at("o"));
}

// ---- 5. CUDA graphs ------------------------------------------------------------------------------

// nsa_forward (which builds the plan into `saved`) and nsa_backward captured on a non-blocking
// stream with caller-owned saved and workspace buffers, replayed with new values in the same input
// buffers: the eager results on those values.
void check_layer_graph(const NsaLayerOptions& options, std::mt19937_64& rng) {
  const LayerData first = make_layer(kLengths, rng);
  const LayerDevice dev(first);
  const NsaLayerInputs in = dev.inputs();
  const NsaLayerShape shape = NsaLayerShape::of(in);
  const NsaConfig& config = first.lc.config;
  const DeviceBytes saved(nsa_saved_bytes(config, shape, options));
  // One workspace for both calls: they run one after the other on the stream.
  const DeviceBytes ws(std::max(nsa_forward_workspace_bytes(config, shape, true, options),
                                nsa_backward_workspace_bytes(config, shape, options)));
  const Stream stream;
  GraphExec exec;
  {
    const CudaStreamScope scope(stream.get());
    // One eager call first, so that lazily set state (function attributes) is set outside the
    // capture.
    FSA_EXPECT_OK(nsa_forward(config, in, dev.o->view(), saved.tensor(), options, ws.workspace()));
    FSA_EXPECT_OK(nsa_backward(config, in, saved.tensor(), dev.d_o->view(), dev.gradients(), options, ws.workspace()));
    ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
    cudaGraph_t graph = nullptr;
    ASSERT_EQ(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal), cudaSuccess);
    const Status forward = nsa_forward(config, in, dev.o->view(), saved.tensor(), options, ws.workspace());
    const Status backward =
        nsa_backward(config, in, saved.tensor(), dev.d_o->view(), dev.gradients(), options, ws.workspace());
    const cudaError_t end = cudaStreamEndCapture(stream.get(), &graph);
    FSA_EXPECT_OK(forward);
    FSA_EXPECT_OK(backward);
    ASSERT_EQ(end, cudaSuccess);
    const cudaError_t instantiated = cudaGraphInstantiate(exec.out(), graph, 0);
    cudaGraphDestroy(graph);
    ASSERT_EQ(instantiated, cudaSuccess);
  }
  for (int replay = 0; replay < 2; ++replay) {
    SCOPED_TRACE("replay " + std::to_string(replay));
    const LayerData next = make_layer(kLengths, rng);  // new values, the same shapes
    dev.replace_inputs(next, stream.get());
    saved.poison(stream.get());
    ws.poison(stream.get());
    ASSERT_EQ(cudaGraphLaunch(exec.get(), stream.get()), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
    const LayerOut got = dev.download();
    const LayerResult eager = run_layer_gpu(next, {options, true});
    expect_layer_close("graph vs eager", got, eager.out, 0, kLayerAtomicTol);
  }
}

TEST_F(Gpu, WorkspaceLayerGraphReplaysWithNewInputs) {
  auto rng = rng_for_test();
  {
    SCOPED_TRACE("default cap");
    check_layer_graph({}, rng);
  }
  {
    SCOPED_TRACE("small cap");
    const LayerData l = make_layer(kLengths, rng);
    const Chunks chunks = choose_cap(slc_of_layer(l, rng), {});
    ASSERT_GE(chunks.count, 3);
    NsaLayerOptions small;
    small.selected.workspace_cap = chunks.cap;
    check_layer_graph(small, rng);
  }
}

// slc_plan_build + slc_attn_forward + slc_attn_backward with the plan in a caller buffer and a
// caller workspace, captured once and replayed with new q, k, v, d_o and a new selection: the plan
// is rebuilt by every replay.
void check_slc_graph(const SlcOptions& options, std::mt19937_64& rng) {
  SlcData s = make_slc(kLengths, 4, rng);
  const SlcDevice d(s);
  const DeviceBytes plan(d.plan_bytes(s, options));
  const DeviceBytes ws(
      std::max(d.forward_bytes(s, options, plan.tensor()), d.backward_bytes(s, options, plan.tensor())));
  const Stream stream;
  GraphExec exec;
  {
    const CudaStreamScope scope(stream.get());
    FSA_EXPECT_OK(d.plan_build(s, plan.tensor(), options));
    FSA_EXPECT_OK(d.forward(s, options, plan.tensor(), ws.workspace()));
    FSA_EXPECT_OK(d.backward(s, options, plan.tensor(), ws.workspace()));
    ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
    cudaGraph_t graph = nullptr;
    ASSERT_EQ(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal), cudaSuccess);
    const Status built = d.plan_build(s, plan.tensor(), options);
    const Status forward = d.forward(s, options, plan.tensor(), ws.workspace());
    const Status backward = d.backward(s, options, plan.tensor(), ws.workspace());
    const cudaError_t end = cudaStreamEndCapture(stream.get(), &graph);
    FSA_EXPECT_OK(built);
    FSA_EXPECT_OK(forward);
    FSA_EXPECT_OK(backward);
    ASSERT_EQ(end, cudaSuccess);
    const cudaError_t instantiated = cudaGraphInstantiate(exec.out(), graph, 0);
    cudaGraphDestroy(graph);
    ASSERT_EQ(instantiated, cudaSuccess);
  }
  for (int replay = 0; replay < 2; ++replay) {
    SCOPED_TRACE("replay " + std::to_string(replay));
    refill(s, rng);
    upload(d.q, s.q, stream.get());
    upload(d.k, s.k, stream.get());
    upload(d.v, s.v, stream.get());
    upload(d.d_o, s.d_o, stream.get());
    upload(d.topk, s.topk, stream.get());
    for (const DeviceTensor* out : {&d.o, &d.lse, &d.dq, &d.dk, &d.dv}) poison_async(*out, stream.get());
    plan.poison(stream.get());
    ws.poison(stream.get());
    ASSERT_EQ(cudaGraphLaunch(exec.get(), stream.get()), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
    const SlcOut got = d.download();
    const SlcOut eager = run_slc_gpu(s, {options, true, true});
    expect_slc_same("graph vs eager", got, eager);
  }
}

TEST_F(Gpu, WorkspaceSelectedGraphReplaysWithNewInputs) {
  auto rng = rng_for_test();
  {
    SCOPED_TRACE("default cap");
    check_slc_graph({}, rng);
  }
  {
    SCOPED_TRACE("small cap");
    const SlcData s = make_slc(kLengths, 4, rng);
    const Chunks chunks = choose_cap(s, {});
    ASSERT_GE(chunks.count, 3);
    SlcOptions small;
    small.workspace_cap = chunks.cap;
    check_slc_graph(small, rng);
  }
}

}  // namespace
}  // namespace fsa::test
