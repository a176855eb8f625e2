// Compressed attention on the GPU (docs/semantics.md section 3) against the CPU reference on the
// same rounded inputs: forward (o, natural-log lse, -inf and o = 0 for queries that see nothing)
// and backward (dq, dk_cmp, dv_cmp), packed batches with sequences shorter than l, exactly l, l + s
// - 1 and a few thousand tokens, G in {1, 4, 16}, the head dims the library instantiates, bf16 and
// fp16. Outputs are poisoned before each run; spare compressed rows of dk/dv must come back as
// zeros. Also: CUDA graph capture of forward + backward.
#include <cmath>

#include "gpu_compare.hpp"

namespace fsa::test {
namespace {

struct CmpCase {
  std::vector<std::int64_t> lengths;
  int hq = 4, hkv = 1, dqk = 128, dv = 128;
  int cmp_len = 32, cmp_stride = 16;
  DType dtype = DType::kBFloat16;
  double q_scale = 1.0;
};

struct CmpResult {
  HostTensor o, lse, dq, dk, dv;
};

CmpResult run(const CmpCase& c, const NsaConfig& config, const HostTensor& cu, const HostTensor& cu_cmp,
              const HostTensor& q, const HostTensor& k, const HostTensor& v, const HostTensor& d_o, bool on_gpu) {
  const std::int64_t n = q.sizes()[0];
  CmpResult r{HostTensor(q.dtype(), {n, c.hq, c.dv}), HostTensor(DType::kFloat32, {c.hq, n}),
              HostTensor(q.dtype(), q.sizes()), HostTensor(q.dtype(), k.sizes()), HostTensor(q.dtype(), v.sizes())};
  for (HostTensor* t : {&r.o, &r.lse, &r.dq, &r.dk, &r.dv}) t->poison();
  if (!on_gpu) {
    FSA_EXPECT_OK(cmp_attn_forward(config, q.view(), k.view(), v.view(), cu.view(), cu_cmp.view(), r.o.view(),
                                   r.lse.view()));
    FSA_EXPECT_OK(cmp_attn_backward(config, q.view(), k.view(), v.view(), cu.view(), cu_cmp.view(), r.o.view(),
                                    r.lse.view(), d_o.view(), r.dq.view(), r.dk.view(), r.dv.view()));
    return r;
  }
  DeviceTensor gq(q), gk(k), gv(v), gcu(cu), gcmp(cu_cmp), gdo(d_o), go(r.o), glse(r.lse), gdq(r.dq), gdk(r.dk),
      gdv(r.dv);
  FSA_EXPECT_OK(cmp_attn_forward(config, gq.view(), gk.view(), gv.view(), gcu.view(), gcmp.view(), go.view(),
                                 glse.view()));
  FSA_EXPECT_OK(cmp_attn_backward(config, gq.view(), gk.view(), gv.view(), gcu.view(), gcmp.view(), go.view(),
                                  glse.view(), gdo.view(), gdq.view(), gdk.view(), gdv.view()));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return {go.download(), glse.download(), gdq.download(), gdk.download(), gdv.download()};
}

std::vector<double> first_rows(const HostTensor& t, std::int64_t rows) {
  std::vector<double> v = t.to_double();
  v.resize(static_cast<std::size_t>(rows * (t.numel() / std::max<std::int64_t>(1, t.sizes()[0]))));
  return v;
}

void check_case(const CmpCase& c, std::uint64_t salt) {
  auto rng = rng_for_test(salt);
  NsaConfig config;
  config.cmp_len = c.cmp_len;
  config.cmp_stride = c.cmp_stride;
  config.block_size = 64;
  const HostTensor cu = make_cu_seqlens(c.lengths);
  const HostTensor cu_cmp = make_cu_cmp(config, cu);
  const std::int64_t n = cu.get(cu.numel() - 1);
  const std::int64_t used = cu_cmp.get(cu_cmp.numel() - 1);
  const std::int64_t rows = max_compressed_tokens(n, config);
  HostTensor q(c.dtype, {n, c.hq, c.dqk}), k(c.dtype, {rows, c.hkv, c.dqk}), v(c.dtype, {rows, c.hkv, c.dv});
  HostTensor d_o(c.dtype, {n, c.hq, c.dv});
  q.fill_normal(rng, c.q_scale);
  k.fill_normal(rng);
  v.fill_normal(rng);
  d_o.fill_normal(rng);
  const CmpResult gpu = run(c, config, cu, cu_cmp, q, k, v, d_o, true);
  const CmpResult ref = run(c, config, cu, cu_cmp, as_dtype(q, DType::kFloat32), as_dtype(k, DType::kFloat32),
                            as_dtype(v, DType::kFloat32), as_dtype(d_o, DType::kFloat32), false);
  const double tol = bf16_or_fp16_tolerance(c.dtype);
  std::string what = std::string(dtype_name(c.dtype)) + " G=" + std::to_string(c.hq / c.hkv) +
                     " Hkv=" + std::to_string(c.hkv) + " D=" + std::to_string(c.dqk) + "/" + std::to_string(c.dv) +
                     " l=" + std::to_string(c.cmp_len) + " s=" + std::to_string(c.cmp_stride) + " lengths=";
  for (auto len : c.lengths) what += std::to_string(len) + ",";

  expect_close("o " + what, gpu.o.to_double(), ref.o.to_double(), tol);
  const std::vector<double> lse_gpu = gpu.lse.to_double(), lse_ref = ref.lse.to_double();
  for (std::size_t i = 0; i < lse_ref.size(); ++i) {
    const std::int64_t h = static_cast<std::int64_t>(i) / n, t = static_cast<std::int64_t>(i) % n;
    if (std::isinf(lse_ref[i])) {
      ASSERT_TRUE(std::isinf(lse_gpu[i]) && lse_gpu[i] < 0)
          << "lse[h=" << h << ", token=" << t << "] should be -inf, got " << lse_gpu[i] << " " << what;
    } else {
      ASSERT_NEAR(lse_gpu[i], lse_ref[i], 2e-2 + 1e-3 * std::fabs(lse_ref[i]))
          << "lse[h=" << h << ", token=" << t << "] " << what;
    }
  }
  expect_close("dq " + what, gpu.dq.to_double(), ref.dq.to_double(), 2 * tol);
  expect_close("dk_cmp " + what, first_rows(gpu.dk, used), first_rows(ref.dk, used), 2 * tol);
  expect_close("dv_cmp " + what, first_rows(gpu.dv, used), first_rows(ref.dv, used), 2 * tol);
  expect_zero_rows("dk_cmp " + what, gpu.dk, used);
  expect_zero_rows("dv_cmp " + what, gpu.dv, used);
}

std::vector<std::int64_t> mixed_lengths(int l, int s) {
  return {static_cast<std::int64_t>(l) - 1, l, static_cast<std::int64_t>(l) + s - 1, 0, 2500, 1, 333};
}

TEST_F(Gpu, CmpAttnGroupSizes) {
  std::uint64_t salt = 0;
  for (const int g : {1, 4, 16, 3})
    for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
      CmpCase c;
      c.lengths = mixed_lengths(32, 16);
      c.hkv = 2;
      c.hq = 2 * g;
      c.dtype = dtype;
      check_case(c, ++salt);
    }
}

TEST_F(Gpu, CmpAttnHeadDims) {
  std::uint64_t salt = 100;
  for (const auto [dqk, dv] : {std::pair{64, 64}, {128, 128}, {192, 128}, {256, 256}})
    for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
      CmpCase c;
      c.lengths = mixed_lengths(32, 16);
      c.dqk = dqk;
      c.dv = dv;
      c.dtype = dtype;
      check_case(c, ++salt);
    }
}

TEST_F(Gpu, CmpAttnWindowsAndStrides) {
  std::uint64_t salt = 200;
  for (const auto [l, s] : {std::pair{16, 16}, {16, 8}, {32, 32}, {64, 32}, {64, 16}}) {
    CmpCase c;
    c.lengths = mixed_lengths(l, s);
    c.cmp_len = l;
    c.cmp_stride = s;
    c.dqk = c.dv = 64;
    check_case(c, ++salt);
  }
}

TEST_F(Gpu, CmpAttnLogitSpreadStaysFinite) {
  CmpCase c;
  c.lengths = {3000};
  c.q_scale = 30.0;  // logits of hundreds
  check_case(c, 300);
}

// docs/semantics.md section 3: t = 30 sees nothing (lse = -inf, o = 0), t = 31 and t = 46 see {0},
// t = 47 sees {0, 1}.
TEST_F(Gpu, CmpAttnVisibilityRule) {
  auto rng = rng_for_test();
  NsaConfig config;
  const HostTensor cu = make_cu_seqlens({200});
  const HostTensor cu_cmp = make_cu_cmp(config, cu);
  HostTensor q(DType::kBFloat16, {200, 1, 64}), k(DType::kBFloat16, {12, 1, 64}), v(DType::kBFloat16, {12, 1, 64});
  q.fill_normal(rng);
  k.fill_normal(rng);
  v.fill_normal(rng);
  HostTensor o(DType::kBFloat16, {200, 1, 64}), lse(DType::kFloat32, {1, 200});
  o.poison();
  lse.poison();
  DeviceTensor gq(q), gk(k), gv(v), gcu(cu), gcmp(cu_cmp), go(o), glse(lse);
  FSA_ASSERT_OK(cmp_attn_forward(config, gq.view(), gk.view(), gv.view(), gcu.view(), gcmp.view(), go.view(),
                                 glse.view()));
  const HostTensor got_o = go.download(), got_lse = glse.download();
  for (std::int64_t t = 0; t <= 30; ++t) {
    EXPECT_TRUE(std::isinf(got_lse.get(t)) && got_lse.get(t) < 0) << "t=" << t << " lse=" << got_lse.get(t);
    for (int d = 0; d < 64; ++d) ASSERT_EQ(got_o.get(t * 64 + d), 0.0) << "t=" << t << " d=" << d;
  }
  // One visible key: o = v~[0] exactly (up to rounding), lse = scale * q.k~[0].
  for (const std::int64_t t : {31, 46}) {
    for (int d = 0; d < 64; ++d) EXPECT_NEAR(got_o.get(t * 64 + d), v.get(d), 1e-2 * (1 + std::fabs(v.get(d))));
    double logit = 0;
    for (int d = 0; d < 64; ++d) logit += q.get(t * 64 + d) * k.get(d);
    EXPECT_NEAR(got_lse.get(t), logit / 8.0, 1e-2 * (1 + std::fabs(logit / 8.0))) << "t=" << t;
  }
  // t = 47 sees {0, 1}: lse = log(exp(a0) + exp(a1)).
  double a[2] = {0, 0};
  for (int i = 0; i < 2; ++i)
    for (int d = 0; d < 64; ++d) a[i] += q.get(47 * 64 + d) * k.get(i * 64 + d) / 8.0;
  const double m = std::max(a[0], a[1]);
  EXPECT_NEAR(got_lse.get(47), m + std::log(std::exp(a[0] - m) + std::exp(a[1] - m)), 1e-2 * (1 + std::fabs(m)));
}

// Forward and backward captured in a CUDA graph (stream-ordered workspace, no host
// synchronisation) and replayed give the eager results: the forward bitwise, the backward up to
// the order of its fp32 atomics.
TEST_F(Gpu, CmpAttnIsGraphCapturable) {
  auto rng = rng_for_test();
  CmpCase c;
  c.lengths = {700, 31, 90};
  NsaConfig config;
  const HostTensor cu = make_cu_seqlens(c.lengths);
  const HostTensor cu_cmp = make_cu_cmp(config, cu);
  const std::int64_t n = cu.get(cu.numel() - 1), rows = max_compressed_tokens(n, config);
  HostTensor q(c.dtype, {n, c.hq, c.dqk}), k(c.dtype, {rows, c.hkv, c.dqk}), v(c.dtype, {rows, c.hkv, c.dv});
  HostTensor d_o(c.dtype, {n, c.hq, c.dv});
  q.fill_normal(rng);
  k.fill_normal(rng);
  v.fill_normal(rng);
  d_o.fill_normal(rng);
  const CmpResult eager = run(c, config, cu, cu_cmp, q, k, v, d_o, true);

  HostTensor o(c.dtype, {n, c.hq, c.dv}), lse(DType::kFloat32, {c.hq, n}), dq(c.dtype, q.sizes());
  HostTensor dk(c.dtype, k.sizes()), dv(c.dtype, v.sizes());
  for (HostTensor* t : {&o, &lse, &dq, &dk, &dv}) t->poison();
  DeviceTensor gq(q), gk(k), gv(v), gcu(cu), gcmp(cu_cmp), gdo(d_o), go(o), gl(lse), gdq(dq), gdk(dk), gdv(dv);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  {
    CudaStreamScope scope(stream);
    FSA_EXPECT_OK(cmp_attn_forward(config, gq.view(), gk.view(), gv.view(), gcu.view(), gcmp.view(), go.view(),
                                   gl.view()));
    FSA_EXPECT_OK(cmp_attn_backward(config, gq.view(), gk.view(), gv.view(), gcu.view(), gcmp.view(), go.view(),
                                    gl.view(), gdo.view(), gdq.view(), gdk.view(), gdv.view()));
  }
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 2; ++replay) ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(go.download().to_double(), eager.o.to_double());
  EXPECT_EQ(gl.download().to_double(), eager.lse.to_double());
  EXPECT_LT(rel_frobenius(gdq.download().to_double(), eager.dq.to_double()), 1e-3);
  EXPECT_LT(rel_frobenius(gdk.download().to_double(), eager.dk.to_double()), 1e-3);
  EXPECT_LT(rel_frobenius(gdv.download().to_double(), eager.dv.to_double()), 1e-3);
  expect_zero_rows("dk_cmp (graph)", gdk.download(), cu_cmp.get(cu_cmp.numel() - 1));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace fsa::test
