// Selected attention on the GPU against the CPU reference on the same rounded inputs: forward and
// backward, every selection edge case of docs/semantics.md section 5, group sizes, head dims, block
// sizes, widths, packed ragged batches, poisoned outputs, run-to-run determinism of the forward and
// of the deterministic backward, and CUDA graph capture; each forward path (KV-outer, dense/sparse
// split at several thresholds, query-outer) forced separately, and the adaptive plan.
#include <cmath>
#include <limits>

#include "gpu_test_util.hpp"

namespace fsa::test {
namespace {

struct SlcCase {
  std::vector<std::int64_t> lengths;
  int hq = 4, hkv = 1, dqk = 64, dv = 64, width = 16;
  int block_size = 64;
  DType dtype = DType::kBFloat16;
  double q_scale = 1.0;  // > 1 spreads the logits
  bool edge_entries = true;
  double local_noise = -1;  // >= 0: local_topk with this noise instead of random_topk
};

// Rows mixing valid blocks with -1 anywhere, duplicates, future and out-of-range entries, and some
// all -1 rows.
HostTensor random_topk(const SlcCase& c, const HostTensor& cu, std::mt19937_64& rng) {
  const std::int64_t n_total = cu.get(cu.numel() - 1);
  HostTensor topk(DType::kInt32, {c.hkv, n_total, c.width});
  std::uniform_real_distribution<double> u(0, 1);
  for (int g = 0; g < c.hkv; ++g)
    for (std::int64_t b = 0; b + 1 < cu.numel(); ++b) {
      const std::int64_t start = cu.get(b), n = cu.get(b + 1) - start;
      for (std::int64_t t = 0; t < n; ++t) {
        const std::int64_t bq = t / c.block_size;
        const bool all_invalid = c.edge_entries && u(rng) < 0.03;
        for (int k = 0; k < c.width; ++k) {
          std::int64_t value = std::uniform_int_distribution<std::int64_t>(0, bq)(rng);
          const double r = u(rng);
          if (all_invalid) value = -1;
          else if (c.edge_entries && r < 0.08) value = -1;
          else if (c.edge_entries && r < 0.12 && k > 0) value = topk.get((g * n_total + start + t) * c.width + k - 1);
          else if (c.edge_entries && r < 0.15) value = bq + 1 + static_cast<std::int64_t>(u(rng) * 3);
          else if (c.edge_entries && r < 0.16) value = std::numeric_limits<std::int32_t>::max();
          topk.set((g * n_total + start + t) * c.width + k, static_cast<double>(value));
        }
      }
    }
  return topk;
}

// Neighbouring tokens share most blocks: the forced ones (0, own, previous) and the most recent
// earlier ones, each replaced by a random earlier block with probability `noise`, so that a query
// tile's dense blocks have partial token masks.
HostTensor local_topk(const SlcCase& c, const HostTensor& cu, double noise, std::mt19937_64& rng) {
  const std::int64_t n_total = cu.get(cu.numel() - 1);
  HostTensor topk(DType::kInt32, {c.hkv, n_total, c.width});
  std::uniform_real_distribution<double> u(0, 1);
  for (int g = 0; g < c.hkv; ++g)
    for (std::int64_t b = 0; b + 1 < cu.numel(); ++b) {
      const std::int64_t start = cu.get(b), n = cu.get(b + 1) - start;
      for (std::int64_t t = 0; t < n; ++t) {
        const std::int64_t bq = t / c.block_size;
        for (int k = 0; k < c.width; ++k) {
          std::int64_t value = k == 0 ? 0 : bq - (k - 1);
          if (k > 2 && u(rng) < noise) value = std::uniform_int_distribution<std::int64_t>(0, bq)(rng);
          topk.set((g * n_total + start + t) * c.width + k, static_cast<double>(value < 0 ? -1 : value));
        }
      }
    }
  return topk;
}

// Every way the forward can run: the adaptive plan, each path forced, and the split with every
// pair dense (threshold 1), with the default threshold, and with no pair dense (threshold > B);
// and the backward's deterministic mode.
std::vector<std::pair<std::string, SlcOptions>> all_paths() {
  return {{"auto", {SlcPath::kAuto, 0}},
          {"auto-deterministic", {SlcPath::kAuto, 0, true}},
          {"kv-outer", {SlcPath::kKvOuter, 0}},
          {"split-all-dense", {SlcPath::kSplit, 1}},
          {"split-default", {SlcPath::kSplit, 0}},
          {"split-none-dense", {SlcPath::kSplit, 1000}},
          {"query-outer", {SlcPath::kQueryOuter, 0}}};
}

struct SlcResult {
  std::vector<double> o, lse, dq, dk, dv;
};

// Runs forward and backward on `device` with the given host inputs (converted to `dtype`).
SlcResult run(const SlcCase& c, const NsaConfig& config, const HostTensor& cu, const HostTensor& q,
              const HostTensor& k, const HostTensor& v, const HostTensor& topk, const HostTensor& d_o, bool on_gpu,
              const SlcOptions& options = {}) {
  const std::int64_t n = q.sizes()[0];
  HostTensor o(q.dtype(), {n, c.hq, c.dv}), lse(DType::kFloat32, {c.hq, n});
  HostTensor dq(q.dtype(), q.sizes()), dk(q.dtype(), k.sizes()), dv(q.dtype(), v.sizes());
  for (HostTensor* t : {&o, &lse, &dq, &dk, &dv}) t->poison();
  SlcResult r;
  if (!on_gpu) {
    FSA_EXPECT_OK(slc_attn_forward(config, q.view(), k.view(), v.view(), topk.view(), cu.view(), o.view(), lse.view()));
    FSA_EXPECT_OK(slc_attn_backward(config, q.view(), k.view(), v.view(), topk.view(), cu.view(), o.view(), lse.view(),
                                    d_o.view(), dq.view(), dk.view(), dv.view()));
    r = {o.to_double(), lse.to_double(), dq.to_double(), dk.to_double(), dv.to_double()};
    return r;
  }
  DeviceTensor gq(q), gk(k), gv(v), gtopk(topk), gcu(cu), go(o), glse(lse), gdo(d_o), gdq(dq), gdk(dk), gdv(dv);
  FSA_EXPECT_OK(slc_attn_forward(config, gq.view(), gk.view(), gv.view(), gtopk.view(), gcu.view(), go.view(),
                                 glse.view(), options));
  FSA_EXPECT_OK(slc_attn_backward(config, gq.view(), gk.view(), gv.view(), gtopk.view(), gcu.view(), go.view(),
                                  glse.view(), gdo.view(), gdq.view(), gdk.view(), gdv.view(), options));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  r = {go.download().to_double(), glse.download().to_double(), gdq.download().to_double(),
       gdk.download().to_double(), gdv.download().to_double()};
  return r;
}

HostTensor as_dtype(const HostTensor& t, DType dtype) {
  HostTensor out(dtype, t.sizes());
  out.from_double(t.to_double());
  return out;
}

// Runs the case on the GPU once per path in `paths` and compares each with one reference run.
void check_case(const SlcCase& c, std::uint64_t salt,
                const std::vector<std::pair<std::string, SlcOptions>>& paths = all_paths()) {
  auto rng = rng_for_test(salt);
  NsaConfig config;
  config.block_size = c.block_size;
  const HostTensor cu = make_cu_seqlens(c.lengths);
  const std::int64_t n = cu.get(cu.numel() - 1);
  HostTensor q(c.dtype, {n, c.hq, c.dqk}), k(c.dtype, {n, c.hkv, c.dqk}), v(c.dtype, {n, c.hkv, c.dv});
  HostTensor d_o(c.dtype, {n, c.hq, c.dv});
  q.fill_normal(rng, c.q_scale);
  k.fill_normal(rng);
  v.fill_normal(rng);
  d_o.fill_normal(rng);
  const HostTensor topk = c.local_noise >= 0 ? local_topk(c, cu, c.local_noise, rng) : random_topk(c, cu, rng);
  // The reference in fp32 on the same rounded inputs.
  const SlcResult ref = run(c, config, cu, as_dtype(q, DType::kFloat32), as_dtype(k, DType::kFloat32),
                            as_dtype(v, DType::kFloat32), topk, as_dtype(d_o, DType::kFloat32), false);
  const double tol = c.dtype == DType::kBFloat16 ? 1e-2 : 5e-3;
  for (const auto& [path_name, options] : paths) {
    const SlcResult gpu = run(c, config, cu, q, k, v, topk, d_o, true, options);
    const std::string what = path_name + " " + std::string(dtype_name(c.dtype)) + " G=" +
                             std::to_string(c.hq / c.hkv) + " D=" + std::to_string(c.dqk) + "/" +
                             std::to_string(c.dv) + " B=" + std::to_string(c.block_size) +
                             " K=" + std::to_string(c.width);
    for (const auto* out : {&gpu.o, &gpu.dq, &gpu.dk, &gpu.dv}) EXPECT_TRUE(all_finite(*out)) << what;
    EXPECT_LT(rel_frobenius(gpu.o, ref.o), tol) << "o " << what;
    for (std::size_t i = 0; i < ref.lse.size(); ++i) {
      if (std::isinf(ref.lse[i])) {
        ASSERT_TRUE(std::isinf(gpu.lse[i]) && gpu.lse[i] < 0) << "lse[" << i << "] should be -inf " << what;
      } else {
        ASSERT_NEAR(gpu.lse[i], ref.lse[i], 2e-2 + 1e-3 * std::fabs(ref.lse[i])) << "lse[" << i << "] " << what;
      }
    }
    EXPECT_LT(rel_frobenius(gpu.dq, ref.dq), 2 * tol) << "dq " << what;
    EXPECT_LT(rel_frobenius(gpu.dk, ref.dk), 2 * tol) << "dk " << what;
    EXPECT_LT(rel_frobenius(gpu.dv, ref.dv), 2 * tol) << "dv " << what;
  }
}

TEST_F(Gpu, SelectedAttentionGroupSizes) {
  std::uint64_t salt = 0;
  for (const int g : {1, 2, 3, 4, 8, 16, 20, 32}) {
    SlcCase c;
    c.lengths = {300, 1, 2, 3, 6, 7, 11, 129};
    c.hkv = 2;
    c.hq = 2 * g;
    check_case(c, ++salt);
  }
}

TEST_F(Gpu, SelectedAttentionEveryLengthUpTo2B) {
  SlcCase c;
  c.block_size = 32;
  for (int len = 1; len <= 64; ++len) c.lengths.push_back(len);
  c.width = 4;
  check_case(c, 1);
}

TEST_F(Gpu, SelectedAttentionHeadDimsBlockSizesWidths) {
  std::uint64_t salt = 100;
  for (const auto [dqk, dv] : {std::pair{64, 64}, {128, 128}, {192, 128}, {256, 256}})
    for (const int block : {32, 64, 128})
      for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
        SlcCase c;
        c.lengths = {520, 77};
        c.dqk = dqk;
        c.dv = dv;
        c.block_size = block;
        c.dtype = dtype;
        c.width = block == 32 ? 64 : (block == 64 ? 1 : 7);
        check_case(c, ++salt);
      }
}

// Long sequences where query tiles share most of their blocks: the split's dense path with full
// and partial token masks, at group sizes whose tiles span one or several row chunks.
TEST_F(Gpu, SelectedAttentionLocalPatternEveryPath) {
  std::uint64_t salt = 300;
  for (const int g : {1, 4, 16})
    for (const double noise : {0.0, 0.3}) {
      SlcCase c;
      c.lengths = {2500, 700, 65};
      c.hkv = 2;
      c.hq = 2 * g;
      c.local_noise = noise;
      check_case(c, ++salt);
    }
}

TEST_F(Gpu, SelectedAttentionLogitSpreadStaysFinite) {
  SlcCase c;
  c.lengths = {700};
  c.q_scale = 40.0;  // logits of hundreds
  c.edge_entries = false;
  check_case(c, 7);
}

// The forward's result never depends on the run: list order inside the plan is atomic, but every
// row is computed alone.
TEST_F(Gpu, SelectedAttentionForwardIsBitwiseReproducible) {
  auto rng = rng_for_test();
  SlcCase c;
  c.lengths = {1000, 333};
  c.hq = 8;
  c.hkv = 2;
  NsaConfig config;
  const HostTensor cu = make_cu_seqlens(c.lengths);
  const std::int64_t n = 1333;
  HostTensor q(c.dtype, {n, c.hq, c.dqk}), k(c.dtype, {n, c.hkv, c.dqk}), v(c.dtype, {n, c.hkv, c.dv});
  q.fill_normal(rng);
  k.fill_normal(rng);
  v.fill_normal(rng);
  const HostTensor topk = random_topk(c, cu, rng);
  DeviceTensor gq(q), gk(k), gv(v), gt(topk), gcu(cu);
  HostTensor o(c.dtype, {n, c.hq, c.dv}), lse(DType::kFloat32, {c.hq, n});
  for (const auto& [path_name, options] : all_paths()) {
    std::vector<double> first, first_lse;
    for (int run = 0; run < 3; ++run) {
      o.poison();
      lse.poison();
      DeviceTensor go(o), gl(lse);
      FSA_ASSERT_OK(slc_attn_forward(config, gq.view(), gk.view(), gv.view(), gt.view(), gcu.view(), go.view(),
                                     gl.view(), options));
      const auto got = go.download().to_double();
      const auto got_lse = gl.download().to_double();
      if (run == 0) {
        first = got;
        first_lse = got_lse;
      } else {
        EXPECT_EQ(got, first) << path_name << " run " << run;
        EXPECT_EQ(got_lse, first_lse) << path_name << " run " << run;
      }
    }
  }
}

// The deterministic backward gives the same bits on every run (the default one's fp32 atomics
// may not), at every block size (B = 128: two key tiles write their own dq planes; B = 32: half a
// tile masked), with long lists split over several runs of units (block 0 of a 3000-token
// sequence is picked by every token: 3000 * G rows) and a packed batch.
TEST_F(Gpu, SelectedAttentionDeterministicBackwardIsBitwiseReproducible) {
  std::uint64_t salt = 500;
  for (const int block : {32, 64, 128}) {
    auto rng = rng_for_test(++salt);
    SlcCase c;
    c.lengths = {3000, 333, 5};
    c.hq = 6;
    c.hkv = 2;
    c.block_size = block;
    c.width = 8;
    NsaConfig config;
    config.block_size = block;
    const HostTensor cu = make_cu_seqlens(c.lengths);
    const std::int64_t n = cu.get(cu.numel() - 1);
    HostTensor q(c.dtype, {n, c.hq, c.dqk}), k(c.dtype, {n, c.hkv, c.dqk}), v(c.dtype, {n, c.hkv, c.dv});
    HostTensor d_o(c.dtype, {n, c.hq, c.dv});
    q.fill_normal(rng);
    k.fill_normal(rng);
    v.fill_normal(rng);
    d_o.fill_normal(rng);
    HostTensor topk = random_topk(c, cu, rng);
    for (std::int64_t row = 0; row < c.hkv * n; ++row) topk.set(row * c.width, 0.0);  // long lists
    SlcOptions options;
    options.deterministic = true;
    const SlcResult first = run(c, config, cu, q, k, v, topk, d_o, true, options);
    for (int again = 0; again < 2; ++again) {
      const SlcResult next = run(c, config, cu, q, k, v, topk, d_o, true, options);
      EXPECT_EQ(next.dq, first.dq) << "B=" << block << " run " << again + 1;
      EXPECT_EQ(next.dk, first.dk) << "B=" << block << " run " << again + 1;
      EXPECT_EQ(next.dv, first.dv) << "B=" << block << " run " << again + 1;
    }
    // And it computes the same gradients as the default mode (atomics at this size), up to the order
    // of the sums and, for dq, the rounding of each slot's partial to bf16 (measured 2.3e-3; the
    // output's own bf16 rounding is ~1e-3).
    const SlcResult atomic = run(c, config, cu, q, k, v, topk, d_o, true);
    EXPECT_LT(rel_frobenius(first.dq, atomic.dq), 5e-3) << "B=" << block;
    EXPECT_LT(rel_frobenius(first.dk, atomic.dk), 1e-3) << "B=" << block;
    EXPECT_LT(rel_frobenius(first.dv, atomic.dv), 1e-3) << "B=" << block;
  }
}

// Past a dq accumulator of 4x L2 the default backward stores dQ per (row, slot) as the
// deterministic mode does (slc_attn.cu): the same dq bits in both modes, dk / dv equal up to the
// order of the sums. (Smaller shapes, every other test, take the atomic sink in the default mode.)
TEST_F(Gpu, SelectedAttentionLargeBackwardStoresDqPerSlot) {
  auto rng = rng_for_test();
  SlcCase c;
  c.lengths = {100000, 31072};  // N Hq Dqk * 4 bytes = 537 MB
  c.hq = 8;
  c.hkv = 2;
  c.dqk = c.dv = 128;
  c.width = 8;
  NsaConfig config;
  const HostTensor cu = make_cu_seqlens(c.lengths);
  const std::int64_t n = cu.get(cu.numel() - 1);
  HostTensor q(c.dtype, {n, c.hq, c.dqk}), k(c.dtype, {n, c.hkv, c.dqk}), v(c.dtype, {n, c.hkv, c.dv});
  HostTensor d_o(c.dtype, {n, c.hq, c.dv});
  for (HostTensor* t : {&q, &k, &v, &d_o}) t->fill_normal(rng);
  const HostTensor topk = random_topk(c, cu, rng);
  SlcOptions deterministic;
  deterministic.deterministic = true;
  const SlcResult slots = run(c, config, cu, q, k, v, topk, d_o, true);
  const SlcResult reference = run(c, config, cu, q, k, v, topk, d_o, true, deterministic);
  EXPECT_TRUE(all_finite(slots.dq) && all_finite(slots.dk) && all_finite(slots.dv));
  EXPECT_EQ(slots.dq, reference.dq);
  EXPECT_LT(rel_frobenius(slots.dk, reference.dk), 1e-3);
  EXPECT_LT(rel_frobenius(slots.dv, reference.dv), 1e-3);
}

TEST_F(Gpu, SelectedAttentionIsGraphCapturable) {
  auto rng = rng_for_test();
  SlcCase c;
  c.lengths = {400, 90};
  NsaConfig config;
  const HostTensor cu = make_cu_seqlens(c.lengths);
  const std::int64_t n = 490;
  HostTensor q(c.dtype, {n, c.hq, c.dqk}), k(c.dtype, {n, c.hkv, c.dqk}), v(c.dtype, {n, c.hkv, c.dv});
  q.fill_normal(rng);
  k.fill_normal(rng);
  v.fill_normal(rng);
  HostTensor d_o(c.dtype, {n, c.hq, c.dv});
  d_o.fill_normal(rng);
  const HostTensor topk = random_topk(c, cu, rng);
  for (const auto& [path_name, options] : all_paths()) {
    SCOPED_TRACE(path_name);
    const SlcResult eager = run(c, config, cu, q, k, v, topk, d_o, true, options);

    HostTensor o(c.dtype, {n, c.hq, c.dv}), lse(DType::kFloat32, {c.hq, n}), dq(c.dtype, q.sizes());
    HostTensor dk(c.dtype, k.sizes()), dv(c.dtype, v.sizes());
    DeviceTensor gq(q), gk(k), gv(v), gt(topk), gcu(cu), go(o), gl(lse), gdo(d_o), gdq(dq), gdk(dk), gdv(dv);
    cudaStream_t stream;
    ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
    cudaGraph_t graph;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
    {
      CudaStreamScope scope(stream);
      FSA_EXPECT_OK(slc_attn_forward(config, gq.view(), gk.view(), gv.view(), gt.view(), gcu.view(), go.view(), gl.view(),
                                     options));
      FSA_EXPECT_OK(slc_attn_backward(config, gq.view(), gk.view(), gv.view(), gt.view(), gcu.view(), go.view(), gl.view(),
                                      gdo.view(), gdq.view(), gdk.view(), gdv.view(), options));
    }
    ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
    cudaGraphExec_t exec;
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    for (int replay = 0; replay < 2; ++replay) ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(go.download().to_double(), eager.o);
    if (options.deterministic) {
      EXPECT_EQ(gdq.download().to_double(), eager.dq);
      EXPECT_EQ(gdk.download().to_double(), eager.dk);
      EXPECT_EQ(gdv.download().to_double(), eager.dv);
    }
    // The default backward accumulates with fp32 atomics, whose order varies from run to run; rounding the
    // sums to bf16 then flips a few elements by one unit in the last place (measured: 5e-5).
    EXPECT_LT(rel_frobenius(gdq.download().to_double(), eager.dq), 1e-3);
    EXPECT_LT(rel_frobenius(gdk.download().to_double(), eager.dk), 1e-3);
    EXPECT_LT(rel_frobenius(gdv.download().to_double(), eager.dv), 1e-3);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
  }
}

}  // namespace
}  // namespace fsa::test
