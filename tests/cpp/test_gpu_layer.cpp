// The whole NSA layer on the GPU (nsa_forward / nsa_backward) against the CPU reference layer run
// in fp32 on the same rounded inputs: the output and every gradient (q, k, v, w_k, pe_k, w_v,
// gates), packed batches, G in {1, 4, 16}, (Dqk, Dv) = (128, 128) and (192, 128), bf16 and fp16,
// linear and mean compression, per-head and shared gates; inference without `saved`; capture of
// forward + backward in a CUDA graph; errors naming the argument.
//
// The GPU keeps q, k after RoPE in the input dtype, the reference in fp32, so block scores differ
// by ~1e-3 relative and a token whose K-th and (K+1)-th blocks are that close may select
// differently. The exact comparisons therefore use sequences of at most K*B tokens (every visible
// block selected: the selection is unambiguous); one test with long sequences, where the choice is
// real, bounds the share of rows allowed to differ.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <type_traits>

#include "gpu_compare.hpp"
#include "layer_case.hpp"

namespace fsa::test {
namespace {

// The inputs on the device.
struct DeviceLayer : DeviceTensors {
  explicit DeviceLayer(const LayerTensors& h) {
    for (const auto& [name, x] : std::map<std::string, const HostTensor*>{
             {"cu", &h.cu}, {"q", &h.q}, {"k", &h.k}, {"v", &h.v}, {"pe_k", &h.pe_k}, {"gates", &h.gates},
             {"w_k", &h.w_k}, {"w_v", &h.w_v}})
      add(name, *x);
  }
  NsaLayerInputs inputs() const { return layer_inputs(); }
};

// Output and gradients, named like the inputs ("o", "q", "k", ...).
using Results = std::map<std::string, HostTensor>;

const char* const kGradNames[] = {"q", "k", "v", "w_k", "pe_k", "w_v", "gates"};

const HostTensor* input_of(const LayerTensors& h, const std::string& name) {
  if (name == "q") return &h.q;
  if (name == "k") return &h.k;
  if (name == "v") return &h.v;
  if (name == "w_k") return h.w_k.sizes().empty() ? nullptr : &h.w_k;
  if (name == "pe_k") return &h.pe_k;
  if (name == "w_v") return h.w_v.sizes().empty() ? nullptr : &h.w_v;
  return &h.gates;
}

using DeviceResults = std::map<std::string, std::unique_ptr<DeviceTensor>>;

// The gradient outputs, named like their inputs (host tensors or device copies); a name missing
// from `out` is left undefined.
template <class Map>
NsaLayerGrads grads_of(const Map& out) {
  auto view = [&](const char* name) -> TensorView {
    const auto it = out.find(name);
    if (it == out.end()) return {};
    if constexpr (std::is_same_v<typename Map::mapped_type, HostTensor>) {
      return it->second.view();
    } else {
      return it->second->view();
    }
  };
  return {view("q"), view("k"), view("v"), view("w_k"), view("pe_k"), view("w_v"), view("gates")};
}

// Forward then backward with d_o, on the CPU reference (fp32 copies) or the GPU.
Results run_layer(const LayerCase& lc, const LayerTensors& h, const HostTensor& d_o, bool on_gpu) {
  Results r;
  const std::int64_t n = h.q.sizes()[0];
  r["o"] = HostTensor(h.q.dtype(), {n, lc.hq, lc.dv});
  r["o"].poison();
  for (const char* name : kGradNames)
    if (const HostTensor* x = input_of(h, name)) {
      r[name] = HostTensor(x->dtype(), x->sizes());
      r[name].poison();
    }
  if (!on_gpu) {
    const NsaLayerInputs in = h.inputs();
    HostTensor saved(DType::kUInt8, {static_cast<std::int64_t>(nsa_saved_bytes(lc.config, NsaLayerShape::of(in)))});
    FSA_EXPECT_OK(nsa_forward(lc.config, in, r["o"].view(), saved.view()));
    FSA_EXPECT_OK(nsa_backward(lc.config, in, saved.view(), d_o.view(), grads_of(r)));
    return r;
  }
  const DeviceLayer dev(h);
  const NsaLayerInputs in = dev.inputs();
  const std::int64_t bytes = static_cast<std::int64_t>(nsa_saved_bytes(lc.config, NsaLayerShape::of(in)));
  HostTensor saved_host(DType::kUInt8, {bytes});
  saved_host.poison();
  DeviceTensor saved(saved_host), o(r["o"]), gd_o(d_o);
  DeviceResults dg;
  for (const char* name : kGradNames)
    if (r.count(name)) dg[name] = std::make_unique<DeviceTensor>(r[name]);
  FSA_EXPECT_OK(nsa_forward(lc.config, in, o.view(), saved.view()));
  FSA_EXPECT_OK(nsa_backward(lc.config, in, saved.view(), gd_o.view(), grads_of(dg)));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  r["o"] = o.download();
  for (auto& [name, x] : dg) r[name] = x->download();
  return r;
}

LayerTensors as_fp32(const LayerCase& lc, const LayerTensors& h) {
  LayerCase lc32 = lc;
  lc32.dtype = DType::kFloat32;
  auto rng = rng_for_test();
  LayerTensors out(lc32, rng);
  for (auto [src, dst] : {std::pair{&h.q, &out.q}, {&h.k, &out.k}, {&h.v, &out.v}, {&h.w_k, &out.w_k},
                          {&h.w_v, &out.w_v}, {&h.pe_k, &out.pe_k}, {&h.gates, &out.gates}})
    if (!src->sizes().empty()) dst->from_double(src->to_double());
  return out;
}

double sum_of_squares(const std::vector<double>& v) {
  double s = 0;
  for (const double x : v) s += x * x;
  return s;
}

std::string describe(const LayerCase& lc) {
  std::string s = std::string(dtype_name(lc.dtype)) + " G=" + std::to_string(lc.hq / lc.hkv) +
                  " Hkv=" + std::to_string(lc.hkv) + " D=" + std::to_string(lc.dqk) + "/" + std::to_string(lc.dv) +
                  (lc.config.compression == CompressionKind::kMean ? " mean" : " linear") +
                  (lc.config.gate_mode == GateMode::kShared ? " shared-gates" : " per-head-gates") +
                  (lc.config.rope.enabled ? " rope" : " no-rope") + " lengths=";
  for (auto len : lc.seqlens) s += std::to_string(len) + ",";
  return s;
}

// The default hyperparameters (docs/semantics.md section 0), with a window short enough to matter here.
LayerCase model_case(int g, int dqk, int dv, DType dtype) {
  LayerCase lc;
  lc.hkv = 2;
  lc.hq = 2 * g;
  lc.dqk = dqk;
  lc.dv = dv;
  lc.dtype = dtype;
  lc.config.window = 128;
  // At most K * B = 1024 tokens per sequence: every visible block is selected.
  lc.seqlens = {1, 2, 31, 47, 300, 0, 1024, 700};
  return lc;
}

void check_exact(const LayerCase& lc, std::uint64_t salt) {
  auto rng = rng_for_test(salt);
  const LayerTensors h(lc, rng);
  HostTensor d_o(lc.dtype, {h.q.sizes()[0], lc.hq, lc.dv});
  d_o.fill_normal(rng);
  const Results gpu = run_layer(lc, h, d_o, true);
  LayerCase lc32 = lc;
  lc32.dtype = DType::kFloat32;
  const Results ref = run_layer(lc32, as_fp32(lc, h), as_dtype(d_o, DType::kFloat32), false);
  const double tol = bf16_or_fp16_tolerance(lc.dtype);
  const std::string what = describe(lc);
  expect_close("o " + what, gpu.at("o").to_double(), ref.at("o").to_double(), tol);
  for (const char* name : kGradNames) {
    if (!ref.count(name)) continue;
    // Without RoPE, adding one vector to every compressed key leaves each softmax unchanged, so
    // the compressed keys' gradients sum to zero and d pe_k is exactly zero: both sides hold only
    // rounding noise. It must be small against the keys' gradient instead.
    if (std::string(name) == "pe_k" && !lc.config.rope.enabled) {
      const double noise = std::sqrt(sum_of_squares(gpu.at(name).to_double()));
      EXPECT_LT(noise, tol * std::sqrt(sum_of_squares(ref.at("k").to_double()))) << "dpe_k " << what;
      continue;
    }
    expect_close(std::string("d") + name + " " + what, gpu.at(name).to_double(), ref.at(name).to_double(), 3 * tol);
  }
}

TEST_F(Gpu, LayerGroupSizesAndHeadDims) {
  std::uint64_t salt = 0;
  for (const int g : {1, 4, 16})
    for (const auto [dqk, dv] : {std::pair{128, 128}, {192, 128}})
      check_exact(model_case(g, dqk, dv, DType::kBFloat16), ++salt);
}

TEST_F(Gpu, LayerFp16MeanCompressionSharedGatesNoRope) {
  LayerCase lc = model_case(4, 128, 128, DType::kFloat16);
  check_exact(lc, 20);
  lc.config.compression = CompressionKind::kMean;
  lc.config.gate_mode = GateMode::kShared;
  check_exact(lc, 21);
  lc.config.rope.enabled = false;
  lc.config.rope.llama3_scaling = false;
  check_exact(lc, 22);
  lc.config.rope.enabled = true;
  lc.config.rope.llama3_scaling = true;
  lc.dtype = DType::kBFloat16;
  check_exact(lc, 23);
}

TEST_F(Gpu, LayerHeadDims64And256) {
  check_exact(model_case(2, 64, 64, DType::kBFloat16), 30);
  check_exact(model_case(2, 256, 256, DType::kBFloat16), 31);
}

// Long sequences with a real top-K choice: rows whose selection differs at a near-tie may differ;
// they must stay few, and everything else must match.
TEST_F(Gpu, LayerLongSequencesWithRealSelection) {
  LayerCase lc = model_case(4, 128, 128, DType::kBFloat16);
  lc.config.topk = 6;
  lc.config.window = 256;
  lc.seqlens = {3000, 1, 1700};
  auto rng = rng_for_test(40);
  const LayerTensors h(lc, rng);
  HostTensor d_o(lc.dtype, {h.q.sizes()[0], lc.hq, lc.dv});
  d_o.fill_normal(rng);
  const Results gpu = run_layer(lc, h, d_o, true);
  LayerCase lc32 = lc;
  lc32.dtype = DType::kFloat32;
  const Results ref = run_layer(lc32, as_fp32(lc, h), as_dtype(d_o, DType::kFloat32), false);
  const std::vector<double> got = gpu.at("o").to_double(), want = ref.at("o").to_double();
  ASSERT_TRUE(all_finite(got));
  const std::size_t row = static_cast<std::size_t>(lc.dv), rows = got.size() / row;
  std::size_t off = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    const std::vector<double> a(got.begin() + r * row, got.begin() + (r + 1) * row),
        b(want.begin() + r * row, want.begin() + (r + 1) * row);
    if (rel_frobenius(a, b) > 0.05) ++off;
  }
  EXPECT_LT(static_cast<double>(off), 0.02 * static_cast<double>(rows)) << off << " of " << rows << " rows differ";
  EXPECT_LT(rel_frobenius(got, want), 0.03);
  for (const char* name : kGradNames)
    if (ref.count(name)) {
      const std::vector<double> gg = gpu.at(name).to_double(), gr = ref.at(name).to_double();
      EXPECT_TRUE(all_finite(gg)) << name;
      EXPECT_LT(rel_frobenius(gg, gr), 0.06) << "d" << name << ": " << describe_difference(gg, gr);
    }
}

// Inference (no `saved`) gives the same output, and forward + backward captured in a CUDA graph
// give the eager results when replayed.
TEST_F(Gpu, LayerInferenceAndGraphCapture) {
  const LayerCase lc = model_case(4, 128, 128, DType::kBFloat16);
  auto rng = rng_for_test(50);
  const LayerTensors h(lc, rng);
  HostTensor d_o(lc.dtype, {h.q.sizes()[0], lc.hq, lc.dv});
  d_o.fill_normal(rng);
  const Results eager = run_layer(lc, h, d_o, true);

  const DeviceLayer dev(h);
  const NsaLayerInputs in = dev.inputs();
  HostTensor o_host = eager.at("o");
  o_host.poison();
  DeviceTensor o_inf(o_host);
  FSA_EXPECT_OK(nsa_forward(lc.config, in, o_inf.view(), TensorView{}));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  expect_close("o without saved", o_inf.download().to_double(), eager.at("o").to_double(), 1e-6);

  const std::int64_t bytes = static_cast<std::int64_t>(nsa_saved_bytes(lc.config, NsaLayerShape::of(in)));
  HostTensor saved_host(DType::kUInt8, {bytes});
  DeviceTensor saved(saved_host), o(o_host), gd_o(d_o);
  DeviceResults dg;
  for (const char* name : kGradNames)
    if (eager.count(name)) {
      HostTensor poisoned = eager.at(name);
      poisoned.poison();
      dg[name] = std::make_unique<DeviceTensor>(poisoned);
    }
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  {
    const CudaStreamScope scope(stream);
    // One eager call first so lazily initialised state (pool attributes, function attributes) is
    // set outside the capture.
    FSA_EXPECT_OK(nsa_forward(lc.config, in, o.view(), saved.view()));
    FSA_EXPECT_OK(nsa_backward(lc.config, in, saved.view(), gd_o.view(), grads_of(dg)));
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    cudaGraph_t graph;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    FSA_EXPECT_OK(nsa_forward(lc.config, in, o.view(), saved.view()));
    FSA_EXPECT_OK(nsa_backward(lc.config, in, saved.view(), gd_o.view(), grads_of(dg)));
    ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
    cudaGraphExec_t exec;
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    ASSERT_EQ(cudaMemsetAsync(o.view().data, 0xff, static_cast<std::size_t>(o_host.numel()) * 2, stream), cudaSuccess);
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
  cudaStreamDestroy(stream);
  // Selected attention's and compressed attention's backward add dq with atomics: equal up to
  // summation order.
  expect_close("o replayed", o.download().to_double(), eager.at("o").to_double(), 1e-6);
  for (auto& [name, x] : dg)
    expect_close("d" + name + " replayed", x->download().to_double(), eager.at(name).to_double(), 1e-2);
}

TEST_F(Gpu, LayerErrorsNameTheArgument) {
  const LayerCase lc = model_case(1, 128, 128, DType::kBFloat16);
  auto rng = rng_for_test(60);
  const LayerTensors h(lc, rng);
  const DeviceLayer dev(h);
  NsaLayerInputs in = dev.inputs();
  HostTensor o_host(lc.dtype, {h.q.sizes()[0], lc.hq, lc.dv});
  DeviceTensor o(o_host);
  // A q view whose rows are not 16-byte aligned (offset by one element).
  NsaLayerInputs bad = in;
  bad.q.data = static_cast<unsigned char*>(bad.q.data) + 2;
  const Status s = nsa_forward(lc.config, bad, o.view(), TensorView{});
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("q"), std::string::npos) << s.to_string();
  // The CPU layout of `saved` is not the GPU's: a buffer sized for the CPU is refused when smaller.
  NsaLayerShape shape = NsaLayerShape::of(in);
  EXPECT_GT(nsa_saved_bytes(lc.config, shape), 0u);
  HostTensor tiny_host(DType::kUInt8, {16});
  DeviceTensor tiny(tiny_host);
  const Status t = nsa_forward(lc.config, in, o.view(), tiny.view());
  EXPECT_FALSE(t.is_ok());
  EXPECT_NE(t.message().find("saved"), std::string::npos) << t.to_string();
}

}  // namespace
}  // namespace fsa::test
