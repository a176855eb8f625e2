// Sliding-window attention on the GPU (docs/semantics.md section 6: query t sees keys
// [max(0, t - w), t] of its sequence) against the CPU reference on the same rounded inputs: forward
// (o, natural-log lse) and backward (dq, dk, dv) on packed batches with lengths 1, 2, 3, 7, w - 1,
// w, w + 1 and a few hundred (0 where w - 1 = 0), windows 1, 16, 64, 512 and w >= N (dense causal
// attention, the library's own dense baseline), G in {1, 2, 3, 4, 8, 16}, the head dims the
// library instantiates, bf16 and fp16. Outputs are poisoned before each run. Also: bitwise run-to-run
// equality of the forward, CUDA graph capture of forward + backward, and misaligned rows refused
// with the argument's name.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "gpu_compare.hpp"

namespace fsa::test {
namespace {

constexpr int kDense = 1 << 30;  // a window longer than any sequence: dense causal attention

struct SwaCase {
  std::vector<std::int64_t> lengths;
  int hq = 4, hkv = 2, dqk = 64, dv = 64;
  int window = 64;
  DType dtype = DType::kBFloat16;
  double q_scale = 1.0;
};

struct SwaInputs {
  NsaConfig config;
  HostTensor cu, q, k, v, d_o;
  std::int64_t n = 0;
};

struct SwaResult {
  HostTensor o, lse, dq, dk, dv;
};

SwaInputs make_inputs(const SwaCase& c, std::uint64_t salt) {
  auto rng = rng_for_test(salt);
  SwaInputs in;
  in.config.window = c.window;
  in.cu = make_cu_seqlens(c.lengths);
  in.n = static_cast<std::int64_t>(in.cu.get(in.cu.numel() - 1));
  in.q = HostTensor(c.dtype, {in.n, c.hq, c.dqk});
  in.k = HostTensor(c.dtype, {in.n, c.hkv, c.dqk});
  in.v = HostTensor(c.dtype, {in.n, c.hkv, c.dv});
  in.d_o = HostTensor(c.dtype, {in.n, c.hq, c.dv});
  in.q.fill_normal(rng, c.q_scale);
  in.k.fill_normal(rng);
  in.v.fill_normal(rng);
  in.d_o.fill_normal(rng);
  return in;
}

SwaResult run(const SwaCase& c, const NsaConfig& config, const HostTensor& cu, const HostTensor& q, const HostTensor& k,
              const HostTensor& v, const HostTensor& d_o, bool on_gpu) {
  const std::int64_t n = q.sizes()[0];
  SwaResult r{HostTensor(q.dtype(), {n, c.hq, c.dv}), HostTensor(DType::kFloat32, {c.hq, n}),
              HostTensor(q.dtype(), q.sizes()), HostTensor(q.dtype(), k.sizes()), HostTensor(q.dtype(), v.sizes())};
  for (HostTensor* t : {&r.o, &r.lse, &r.dq, &r.dk, &r.dv}) t->poison();
  if (!on_gpu) {
    FSA_EXPECT_OK(swa_forward(config, q.view(), k.view(), v.view(), cu.view(), r.o.view(), r.lse.view()));
    FSA_EXPECT_OK(swa_backward(config, q.view(), k.view(), v.view(), cu.view(), r.o.view(), r.lse.view(), d_o.view(),
                               r.dq.view(), r.dk.view(), r.dv.view()));
    return r;
  }
  DeviceTensor gq(q), gk(k), gv(v), gcu(cu), gdo(d_o), go(r.o), glse(r.lse), gdq(r.dq), gdk(r.dk), gdv(r.dv);
  FSA_EXPECT_OK(swa_forward(config, gq.view(), gk.view(), gv.view(), gcu.view(), go.view(), glse.view()));
  FSA_EXPECT_OK(swa_backward(config, gq.view(), gk.view(), gv.view(), gcu.view(), go.view(), glse.view(), gdo.view(),
                             gdq.view(), gdk.view(), gdv.view()));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return {go.download(), glse.download(), gdq.download(), gdk.download(), gdv.download()};
}

std::string describe(const SwaCase& c) {
  std::string what = std::string(dtype_name(c.dtype)) + " G=" + std::to_string(c.hq / c.hkv) +
                     " Hkv=" + std::to_string(c.hkv) + " D=" + std::to_string(c.dqk) + "/" + std::to_string(c.dv) +
                     " w=" + (c.window == kDense ? std::string("dense") : std::to_string(c.window)) + " lengths=";
  for (auto len : c.lengths) what += std::to_string(len) + ",";
  return what;
}

void check_case(const SwaCase& c, std::uint64_t salt) {
  const SwaInputs in = make_inputs(c, salt);
  const SwaResult gpu = run(c, in.config, in.cu, in.q, in.k, in.v, in.d_o, true);
  const SwaResult ref = run(c, in.config, in.cu, as_dtype(in.q, DType::kFloat32), as_dtype(in.k, DType::kFloat32),
                            as_dtype(in.v, DType::kFloat32), as_dtype(in.d_o, DType::kFloat32), false);
  const double tol = bf16_or_fp16_tolerance(c.dtype);
  const std::string what = describe(c);

  expect_close("o " + what, gpu.o.to_double(), ref.o.to_double(), tol);
  // Every query sees at least itself: lse is always finite.
  const std::vector<double> lse_gpu = gpu.lse.to_double(), lse_ref = ref.lse.to_double();
  for (std::size_t i = 0; i < lse_ref.size(); ++i) {
    const std::int64_t h = static_cast<std::int64_t>(i) / in.n, t = static_cast<std::int64_t>(i) % in.n;
    ASSERT_NEAR(lse_gpu[i], lse_ref[i], 2e-2 + 1e-3 * std::fabs(lse_ref[i]))
        << "lse[h=" << h << ", token=" << t << "] " << what;
  }
  expect_close("dq " + what, gpu.dq.to_double(), ref.dq.to_double(), 2 * tol);
  expect_close("dk " + what, gpu.dk.to_double(), ref.dk.to_double(), 2 * tol);
  expect_close("dv " + what, gpu.dv.to_double(), ref.dv.to_double(), 2 * tol);
}

// Lengths 1, 2, 3, 7, w - 1, w, w + 1 and a few hundred, packed (w - 1 = 0 is an empty sequence).
std::vector<std::int64_t> window_lengths(int w) {
  return {1, 2, 3, 7, static_cast<std::int64_t>(w) - 1, w, static_cast<std::int64_t>(w) + 1, 250};
}

TEST_F(Gpu, SwaWindows) {
  std::uint64_t salt = 0;
  for (const int w : {1, 16, 64, 512})
    for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
      SwaCase c;
      c.lengths = window_lengths(w);
      c.window = w;
      c.hq = 8;
      c.dtype = dtype;
      check_case(c, ++salt);
    }
}

// w >= every sequence length: dense causal attention, with sequences long enough that the
// backward cuts each key tile's rows into several blocks.
TEST_F(Gpu, SwaDenseCausal) {
  std::uint64_t salt = 100;
  for (const DType dtype : {DType::kBFloat16, DType::kFloat16})
    for (const int g : {1, 4}) {
      SwaCase c;
      c.lengths = {1, 2, 3, 7, 300, 1100};
      c.window = kDense;
      c.hkv = 2;
      c.hq = 2 * g;
      c.dqk = c.dv = 128;
      c.dtype = dtype;
      check_case(c, ++salt);
    }
}

TEST_F(Gpu, SwaGroupSizes) {
  std::uint64_t salt = 200;
  for (const int g : {1, 2, 3, 4, 8, 16})
    for (const int w : {16, 512}) {
      SwaCase c;
      c.lengths = window_lengths(w);
      c.window = w;
      c.hq = 2 * g;
      check_case(c, ++salt);
    }
}

TEST_F(Gpu, SwaHeadDims) {
  std::uint64_t salt = 300;
  for (const auto [dqk, dv] : {std::pair{64, 64}, {128, 128}, {192, 128}, {256, 256}})
    for (const DType dtype : {DType::kBFloat16, DType::kFloat16})
      for (const int w : {64, kDense}) {
        SwaCase c;
        c.lengths = window_lengths(64);
        c.window = w;
        c.dqk = dqk;
        c.dv = dv;
        c.dtype = dtype;
        check_case(c, ++salt);
      }
}

TEST_F(Gpu, SwaLogitSpreadStaysFinite) {
  SwaCase c;
  c.lengths = {700, 90};
  c.window = 512;
  c.q_scale = 30.0;  // logits of hundreds
  check_case(c, 400);
}

// docs/semantics.md section 6: t = 1000 with w = 512 sees keys 488..1000, so its output is a
// softmax over exactly those keys (checked here against a direct sum over them, independent of the
// reference).
TEST_F(Gpu, SwaWindowRule) {
  SwaCase c;
  c.lengths = {1001};
  c.window = 512;
  c.hq = 1;
  c.hkv = 1;
  const SwaInputs in = make_inputs(c, 500);
  const SwaResult got = run(c, in.config, in.cu, in.q, in.k, in.v, in.d_o, true);
  const std::int64_t t = 1000;
  std::vector<double> logits;
  double m = -INFINITY;
  for (std::int64_t p = 488; p <= t; ++p) {
    double dot = 0;
    for (int d = 0; d < c.dqk; ++d) dot += in.q.get(t * c.dqk + d) * in.k.get(p * c.dqk + d);
    logits.push_back(dot / 8.0);
    m = std::max(m, logits.back());
  }
  double sum = 0;
  for (const double x : logits) sum += std::exp(x - m);
  EXPECT_NEAR(got.lse.get(t), m + std::log(sum), 2e-2 + 1e-3 * std::fabs(m));
  for (int d = 0; d < c.dv; ++d) {
    double o = 0;
    for (std::int64_t p = 488; p <= t; ++p) o += std::exp(logits[static_cast<std::size_t>(p - 488)] - m) / sum *
                                                 in.v.get(p * c.dv + d);
    EXPECT_NEAR(got.o.get(t * c.dv + d), o, 2e-2) << "d=" << d;
  }
}

// The forward never depends on the run: every row is computed by one CTA in a fixed order.
TEST_F(Gpu, SwaForwardIsBitwiseReproducible) {
  for (const int w : {64, kDense}) {
    SwaCase c;
    c.lengths = {1000, 333, 7};
    c.window = w;
    c.hq = 8;
    const SwaInputs in = make_inputs(c, 600);
    DeviceTensor gq(in.q), gk(in.k), gv(in.v), gcu(in.cu);
    HostTensor o(c.dtype, {in.n, c.hq, c.dv}), lse(DType::kFloat32, {c.hq, in.n});
    std::vector<double> first, first_lse;
    for (int run = 0; run < 3; ++run) {
      o.poison();
      lse.poison();
      DeviceTensor go(o), gl(lse);
      FSA_ASSERT_OK(swa_forward(in.config, gq.view(), gk.view(), gv.view(), gcu.view(), go.view(), gl.view()));
      const auto got = go.download().to_double();
      const auto got_lse = gl.download().to_double();
      if (run == 0) {
        first = got;
        first_lse = got_lse;
      } else {
        EXPECT_EQ(got, first) << describe(c) << " run " << run;
        EXPECT_EQ(got_lse, first_lse) << describe(c) << " run " << run;
      }
    }
  }
}

TEST_F(Gpu, SwaIsGraphCapturable) {
  SwaCase c;
  c.lengths = {400, 90, 1};
  c.window = 64;
  const SwaInputs in = make_inputs(c, 700);
  const SwaResult eager = run(c, in.config, in.cu, in.q, in.k, in.v, in.d_o, true);

  HostTensor o(c.dtype, {in.n, c.hq, c.dv}), lse(DType::kFloat32, {c.hq, in.n});
  HostTensor dq(c.dtype, in.q.sizes()), dk(c.dtype, in.k.sizes()), dv(c.dtype, in.v.sizes());
  for (HostTensor* t : {&o, &lse, &dq, &dk, &dv}) t->poison();
  DeviceTensor gq(in.q), gk(in.k), gv(in.v), gcu(in.cu), gdo(in.d_o), go(o), gl(lse), gdq(dq), gdk(dk), gdv(dv);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  {
    CudaStreamScope scope(stream);
    FSA_EXPECT_OK(swa_forward(in.config, gq.view(), gk.view(), gv.view(), gcu.view(), go.view(), gl.view()));
    FSA_EXPECT_OK(swa_backward(in.config, gq.view(), gk.view(), gv.view(), gcu.view(), go.view(), gl.view(),
                               gdo.view(), gdq.view(), gdk.view(), gdv.view()));
  }
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 2; ++replay) ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(go.download().to_double(), eager.o.to_double());
  EXPECT_EQ(gl.download().to_double(), eager.lse.to_double());
  // The backward accumulates with fp32 atomics, whose order varies from run to run; rounding the
  // sums to bf16 then flips a few elements by one unit in the last place.
  EXPECT_LT(rel_frobenius(gdq.download().to_double(), eager.dq.to_double()), 1e-3);
  EXPECT_LT(rel_frobenius(gdk.download().to_double(), eager.dk.to_double()), 1e-3);
  EXPECT_LT(rel_frobenius(gdv.download().to_double(), eager.dv.to_double()), 1e-3);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// The kernels move rows as 16-byte vectors: a data pointer or a stride off that grid is refused
// (kNotImplemented) with the argument's name, never read out of alignment.
TEST_F(Gpu, SwaMisalignedRowsAreNamed) {
  SwaCase c;
  c.lengths = {70};
  const SwaInputs in = make_inputs(c, 800);
  HostTensor o(c.dtype, {in.n, c.hq, c.dv}), lse(DType::kFloat32, {c.hq, in.n});
  HostTensor wide(c.dtype, {in.n, c.hkv, c.dqk + 4});  // k rows of Dqk + 4 elements: 8-byte head stride
  DeviceTensor gq(in.q), gk(in.k), gv(in.v), gcu(in.cu), gdo(in.d_o), go(o), gl(lse), gwide(wide);
  const auto expect_named = [](const Status& s, const std::string& name) {
    EXPECT_EQ(s.code(), StatusCode::kNotImplemented) << s.to_string();
    EXPECT_EQ(s.message().rfind(name + ":", 0), 0u) << s.to_string();
    EXPECT_NE(s.message().find("16-byte"), std::string::npos) << s.to_string();
  };

  TensorView q_shifted = gq.view();  // one element past a 16-byte boundary
  q_shifted.data = static_cast<unsigned char*>(q_shifted.data) + dtype_size(c.dtype);
  expect_named(swa_forward(in.config, q_shifted, gk.view(), gv.view(), gcu.view(), go.view(), gl.view()), "q");

  const TensorView k_strided =
      TensorView::strided(gwide.view().data, c.dtype, {in.n, c.hkv, c.dqk},
                          {static_cast<std::int64_t>(c.hkv) * (c.dqk + 4), c.dqk + 4, 1}, Device::cuda(0));
  expect_named(swa_forward(in.config, gq.view(), k_strided, gv.view(), gcu.view(), go.view(), gl.view()), "k");

  FSA_ASSERT_OK(swa_forward(in.config, gq.view(), gk.view(), gv.view(), gcu.view(), go.view(), gl.view()));
  HostTensor dq(c.dtype, in.q.sizes()), dv(c.dtype, in.v.sizes());
  DeviceTensor gdq(dq), gdk(in.k), gdv(dv);
  TensorView dk_shifted = gdk.view();
  dk_shifted.data = static_cast<unsigned char*>(dk_shifted.data) + 4;
  expect_named(swa_backward(in.config, gq.view(), gk.view(), gv.view(), gcu.view(), go.view(), gl.view(), gdo.view(),
                            gdq.view(), dk_shifted, gdv.view()),
               "dk");
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace fsa::test
