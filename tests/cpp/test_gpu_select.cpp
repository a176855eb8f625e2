// Fused block selection on the GPU (docs/semantics.md section 4) against the CPU reference on the
// same rounded inputs. topk_idx must equal the reference row by row, except that two blocks may
// swap places when their scores, recomputed here in fp64 from the same rounded q, k~ and lse, are
// within 1e-5 relative of each other (the GPU sums in another order and uses a fast exp). Every row
// must also be a well-formed selection: ascending, -1 padded, min(K, bq + 1) entries, forced blocks
// present. Also: the 200-token worked example of section 4, G in {1, 3, 4, 16, 24, 64}, first-head
// aggregation, block sizes, widths up to 64, window/stride pairs, head dims, bf16 and fp16, packed
// short and long sequences; bitwise run-to-run reproducibility, exact ties broken by the lower
// block (no tolerance), and CUDA-graph capture.
#include <algorithm>
#include <cmath>
#include <set>

#include "gpu_compare.hpp"

namespace fsa::test {
namespace {

struct SelectCase {
  std::vector<std::int64_t> lengths;
  int hq = 8, hkv = 2, dqk = 128;
  int cmp_len = 32, cmp_stride = 16, block_size = 64, topk = 16, init_blocks = 1, local_blocks = 2;
  ScoreAggregation aggregation = ScoreAggregation::kGroupSum;
  DType dtype = DType::kBFloat16;
};

NsaConfig config_of(const SelectCase& c) {
  NsaConfig config;
  config.cmp_len = c.cmp_len;
  config.cmp_stride = c.cmp_stride;
  config.block_size = c.block_size;
  config.topk = c.topk;
  config.init_blocks = c.init_blocks;
  config.local_blocks = c.local_blocks;
  config.aggregation = c.aggregation;
  return config;
}

struct Inputs {
  HostTensor cu, cu_cmp, q, k, lse;
};

// Random q and k~ (rounded to the case's dtype) and the lse of the compressed attention over them
// (CPU reference, fp32), which makes the probabilities of a row sum to one as in the layer.
Inputs make_inputs(const SelectCase& c, const NsaConfig& config, std::mt19937_64& rng) {
  Inputs in;
  in.cu = make_cu_seqlens(c.lengths);
  in.cu_cmp = make_cu_cmp(config, in.cu);
  const std::int64_t n = in.cu.get(in.cu.numel() - 1);
  const std::int64_t rows = max_compressed_tokens(n, config);
  in.q = HostTensor(c.dtype, {n, c.hq, c.dqk});
  in.k = HostTensor(c.dtype, {rows, c.hkv, c.dqk});
  in.q.fill_normal(rng);
  in.k.fill_normal(rng);
  HostTensor v(DType::kFloat32, {rows, c.hkv, 16}), o(DType::kFloat32, {n, c.hq, 16});
  v.fill_normal(rng);
  in.lse = HostTensor(DType::kFloat32, {c.hq, n});
  FSA_EXPECT_OK(cmp_attn_forward(config, as_dtype(in.q, DType::kFloat32).view(), as_dtype(in.k, DType::kFloat32).view(),
                                 v.view(), in.cu.view(), in.cu_cmp.view(), o.view(), in.lse.view()));
  return in;
}

HostTensor run_gpu(const SelectCase& c, const NsaConfig& config, const Inputs& in) {
  const std::int64_t n = in.q.sizes()[0];
  HostTensor topk(DType::kInt32, {c.hkv, n, c.topk});
  topk.poison();
  DeviceTensor gq(in.q), gk(in.k), glse(in.lse), gcu(in.cu), gcmp(in.cu_cmp), gt(topk);
  FSA_EXPECT_OK(select_blocks(config, gq.view(), gk.view(), glse.view(), gcu.view(), gcmp.view(), gt.view()));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return gt.download();
}

HostTensor run_reference(const SelectCase& c, const NsaConfig& config, const Inputs& in) {
  const std::int64_t n = in.q.sizes()[0];
  HostTensor topk(DType::kInt32, {c.hkv, n, c.topk});
  topk.poison();
  FSA_EXPECT_OK(select_blocks(config, as_dtype(in.q, DType::kFloat32).view(), as_dtype(in.k, DType::kFloat32).view(),
                              in.lse.view(), in.cu.view(), in.cu_cmp.view(), topk.view()));
  return topk;
}

// Block scores of local query t of sequence b in group g, in fp64 from the rounded inputs (spec
// section 4 steps 1-3, written independently of both backends).
std::vector<double> block_scores_fp64(const SelectCase& c, const Inputs& in, std::int64_t b, std::int64_t t, int g) {
  const std::int64_t n_total = in.q.sizes()[0];
  const std::int64_t start = in.cu.get(b), cmp_start = in.cu_cmp.get(b);
  const std::int64_t l = c.cmp_len, s = c.cmp_stride, B = c.block_size;
  const std::int64_t visible = t >= l - 1 ? (t - l + 1) / s + 1 : 0;
  const int G = c.hq / c.hkv;
  const int heads = c.aggregation == ScoreAggregation::kFirstHead ? 1 : G;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.dqk));
  std::vector<double> scores(static_cast<std::size_t>(t / B + 1), 0.0);
  for (std::int64_t i = 0; i < visible; ++i) {
    double prob = 0;
    for (int h = g * G; h < g * G + heads; ++h) {
      double dot = 0;
      for (int d = 0; d < c.dqk; ++d)
        dot += in.q.get(((start + t) * c.hq + h) * c.dqk + d) * in.k.get(((cmp_start + i) * c.hkv + g) * c.dqk + d);
      prob += std::exp(scale * dot - in.lse.get(h * n_total + start + t));
    }
    for (std::int64_t j = i * s / B; j * B < i * s + l; ++j)
      scores[static_cast<std::size_t>(j)] +=
          static_cast<double>(std::min(i * s + l, (j + 1) * B) - std::max(i * s, j * B)) / s * prob;
  }
  return scores;
}

// Checks one row of the GPU's topk_idx: well formed, and equal to the reference's up to near-ties.
// Returns false (after reporting) on the first problem.
bool check_row(const SelectCase& c, const Inputs& in, const std::vector<std::int32_t>& got,
               const std::vector<std::int32_t>& want, std::int64_t b, std::int64_t t, int g, const std::string& what) {
  const std::string where = what + " g=" + std::to_string(g) + " seq=" + std::to_string(b) + " t=" + std::to_string(t);
  return compare_topk_row(got, want, t / c.block_size, c.init_blocks, c.local_blocks, 1e-5,
                          [&] { return block_scores_fp64(c, in, b, t, g); }, where) != TopkRow::kWrong;
}

std::string describe(const SelectCase& c) {
  std::string what = std::string(dtype_name(c.dtype)) + " G=" + std::to_string(c.hq / c.hkv) +
                     (c.aggregation == ScoreAggregation::kFirstHead ? " first_head" : "") +
                     " Dqk=" + std::to_string(c.dqk) + " l=" + std::to_string(c.cmp_len) +
                     " s=" + std::to_string(c.cmp_stride) + " B=" + std::to_string(c.block_size) +
                     " K=" + std::to_string(c.topk) + " lengths=";
  for (auto len : c.lengths) what += std::to_string(len) + ",";
  return what;
}

// Every row of `got` against the reference's `want` (check_row), and few near-tie differences.
void compare_with_reference(const SelectCase& c, const Inputs& in, const HostTensor& got, const HostTensor& want,
                            const std::string& what) {
  const std::int64_t n = in.q.sizes()[0];
  std::int64_t differing_rows = 0;
  for (int g = 0; g < c.hkv; ++g)
    for (std::int64_t b = 0; b + 1 < in.cu.numel(); ++b)
      for (std::int64_t t = 0; t < in.cu.get(b + 1) - in.cu.get(b); ++t) {
        const std::int64_t offset = (g * n + in.cu.get(b) + t) * c.topk;
        std::vector<std::int32_t> got_row(static_cast<std::size_t>(c.topk)), want_row(got_row);
        for (int i = 0; i < c.topk; ++i) {
          got_row[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(got.get(offset + i));
          want_row[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(want.get(offset + i));
        }
        differing_rows += got_row != want_row;
        if (!check_row(c, in, got_row, want_row, b, t, g, what)) return;
      }
  // Near-ties are rare with random inputs; many would point at a systematic score error.
  EXPECT_LE(differing_rows * 100, c.hkv * n) << what << ": " << differing_rows << " rows differ (near-ties)";
}

void check_case(const SelectCase& c, std::uint64_t salt) {
  auto rng = rng_for_test(salt);
  const NsaConfig config = config_of(c);
  const Inputs in = make_inputs(c, config, rng);
  const HostTensor got = run_gpu(c, config, in);
  const HostTensor want = run_reference(c, config, in);
  compare_with_reference(c, in, got, want, describe(c));
}

std::vector<std::int64_t> mixed_lengths(int l, int s) {
  return {static_cast<std::int64_t>(l) - 1, l, static_cast<std::int64_t>(l) + s - 1, 0, 3000, 200, 1};
}

// docs/semantics.md section 4: a 200-token sequence with K = 16, I = 1, L = 2, B = 64 selects every
// candidate.
TEST_F(Gpu, SelectWorkedExample) {
  SelectCase c;
  c.lengths = {200};
  c.hq = 4;
  auto rng = rng_for_test();
  const NsaConfig config = config_of(c);
  const Inputs in = make_inputs(c, config, rng);
  const HostTensor got = run_gpu(c, config, in);
  for (int g = 0; g < c.hkv; ++g)
    for (std::int64_t t = 0; t < 200; ++t)
      for (int i = 0; i < 16; ++i) {
        const std::int64_t want = i <= t / 64 ? i : -1;
        ASSERT_EQ(got.get((g * 200 + t) * 16 + i), want) << "g=" << g << " t=" << t << " entry " << i;
      }
}

TEST_F(Gpu, SelectGroupSizesAndAggregation) {
  std::uint64_t salt = 0;
  // 24 and 64 heads: more m-tiles per token than one CTA keeps in shared memory at Dqk = 128 (Q rows
  // reloaded per key tile).
  for (const int g : {1, 4, 16, 3, 24, 64})
    for (const auto aggregation : {ScoreAggregation::kGroupSum, ScoreAggregation::kFirstHead}) {
      SelectCase c;
      c.lengths = mixed_lengths(32, 16);
      c.hq = 2 * g;
      c.aggregation = aggregation;
      check_case(c, ++salt);
    }
}

TEST_F(Gpu, SelectBlockSizesAndWidths) {
  std::uint64_t salt = 100;
  for (const int block : {32, 64, 128})
    for (const int topk : {3, 16, 64}) {
      SelectCase c;
      c.lengths = mixed_lengths(32, 16);
      c.block_size = block;
      c.topk = topk;
      check_case(c, ++salt);
    }
  SelectCase c;  // more init and local blocks
  c.lengths = {4000, 77};
  c.block_size = 32;
  c.topk = 20;
  c.init_blocks = 3;
  c.local_blocks = 4;
  check_case(c, ++salt);
}

TEST_F(Gpu, SelectWindowsAndStrides) {
  std::uint64_t salt = 200;
  for (const auto [l, s, block] : {std::tuple{16, 16, 32}, {16, 8, 64}, {32, 32, 32}, {64, 32, 64}, {64, 16, 128},
                                   {32, 8, 32}, {64, 64, 128}}) {
    SelectCase c;
    c.lengths = mixed_lengths(l, s);
    c.cmp_len = l;
    c.cmp_stride = s;
    c.block_size = block;
    check_case(c, ++salt);
  }
}

TEST_F(Gpu, SelectHeadDimsAndDtypes) {
  std::uint64_t salt = 300;
  for (const int dqk : {64, 128, 192, 256})
    for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
      SelectCase c;
      c.lengths = {1500, 47, 31};
      c.dqk = dqk;
      c.dtype = dtype;
      check_case(c, ++salt);
    }
  SelectCase c;  // Dqk = 256 with 24 heads a group: Q rows in two chunks per key tile
  c.lengths = {900, 64};
  c.dqk = 256;
  c.hq = 48;
  check_case(c, ++salt);
}

// Selection is deterministic (docs/semantics.md section 4): every sum has one owner and a fixed
// order, so repeated runs give bitwise the same topk_idx, near-ties included. Large problems (many
// blocks per row, many CTAs per sequence), a packed batch, the group sums of G = 4 and 16 and of
// the odd G = 3.
TEST_F(Gpu, SelectIsReproducibleRunToRun) {
  std::uint64_t salt = 400;
  for (const int g : {4, 16, 3}) {
    SelectCase c;
    c.lengths = g == 3 ? std::vector<std::int64_t>{2500, 1, 1700} : std::vector<std::int64_t>{4096};
    c.hq = 2 * g;
    auto rng = rng_for_test(++salt);
    const NsaConfig config = config_of(c);
    const Inputs in = make_inputs(c, config, rng);
    const HostTensor first = run_gpu(c, config, in);
    for (int run = 1; run < 4; ++run) {
      const HostTensor again = run_gpu(c, config, in);
      std::int64_t differing = 0;
      for (std::int64_t i = 0; i < first.numel(); ++i) differing += first.get(i) != again.get(i);
      EXPECT_EQ(differing, 0) << describe(c) << ": run " << run << " differs from run 0 in " << differing
                              << " entries";
    }
    compare_with_reference(c, in, first, run_reference(c, config, in), describe(c));
  }
}

// Exact ties: every q row equal and every k~ row equal make all probabilities of a token equal, so
// all blocks whose keys are all visible score exactly the same (the same sum in the same order) and
// the lower block index must win, on the GPU as in the reference, with no near-tie allowance.
TEST_F(Gpu, SelectBreaksExactTiesByLowerBlock) {
  std::uint64_t salt = 500;
  for (const int g : {1, 4, 16})
    for (const int topk : {16, 64}) {
      SelectCase c;
      c.lengths = {3000, 700};
      c.hq = 2 * g;
      c.topk = topk;
      auto rng = rng_for_test(++salt);
      const NsaConfig config = config_of(c);
      Inputs in = make_inputs(c, config, rng);
      const std::int64_t n = in.q.sizes()[0], rows = in.k.sizes()[0];
      for (std::int64_t t = 0; t < n; ++t)
        for (int h = 0; h < c.hq; ++h)
          for (int d = 0; d < c.dqk; ++d) in.q.set((t * c.hq + h) * c.dqk + d, in.q.get(d));
      for (std::int64_t i = 0; i < rows; ++i)
        for (int h = 0; h < c.hkv; ++h)
          for (int d = 0; d < c.dqk; ++d) in.k.set((i * c.hkv + h) * c.dqk + d, in.k.get(d));
      HostTensor v(DType::kFloat32, {rows, c.hkv, 16}), o(DType::kFloat32, {n, c.hq, 16});
      v.fill_normal(rng);
      FSA_EXPECT_OK(cmp_attn_forward(config, as_dtype(in.q, DType::kFloat32).view(),
                                     as_dtype(in.k, DType::kFloat32).view(), v.view(), in.cu.view(), in.cu_cmp.view(),
                                     o.view(), in.lse.view()));
      const HostTensor got = run_gpu(c, config, in);
      const HostTensor want = run_reference(c, config, in);
      std::int64_t differing = 0;
      for (std::int64_t i = 0; i < got.numel(); ++i) differing += got.get(i) != want.get(i);
      EXPECT_EQ(differing, 0) << describe(c) << ": " << differing << " entries differ from the reference";
    }
}

// select_blocks enqueues only kernel work on the current stream (no host synchronisation, no
// allocation), so it can be captured in a CUDA graph; replays give the eager result bitwise.
TEST_F(Gpu, SelectIsGraphCapturable) {
  for (const int g : {4, 16}) {
    SelectCase c;
    c.lengths = {1500, 0, 333};
    c.hq = 2 * g;
    auto rng = rng_for_test(600 + g);
    const NsaConfig config = config_of(c);
    const Inputs in = make_inputs(c, config, rng);
    const HostTensor eager = run_gpu(c, config, in);
    HostTensor topk(DType::kInt32, eager.sizes());
    topk.poison();
    DeviceTensor gq(in.q), gk(in.k), glse(in.lse), gcu(in.cu), gcmp(in.cu_cmp), gt(topk);
    cudaStream_t stream;
    ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
    cudaGraph_t graph;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
    {
      CudaStreamScope scope(stream);
      FSA_EXPECT_OK(select_blocks(config, gq.view(), gk.view(), glse.view(), gcu.view(), gcmp.view(), gt.view()));
    }
    ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
    cudaGraphExec_t exec;
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    for (int replay = 0; replay < 2; ++replay) ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const HostTensor got = gt.download();
    std::int64_t differing = 0;
    for (std::int64_t i = 0; i < got.numel(); ++i) differing += got.get(i) != eager.get(i);
    EXPECT_EQ(differing, 0) << describe(c) << ": graph replay differs from the eager run in " << differing
                            << " entries";
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
  }
}

TEST_F(Gpu, SelectWidthAboveLimitIsNamed) {
  SelectCase c;
  c.lengths = {128};
  c.topk = 65;
  auto rng = rng_for_test();
  const NsaConfig config = config_of(c);
  const Inputs in = make_inputs(c, config, rng);
  HostTensor topk(DType::kInt32, {c.hkv, 128, c.topk});
  DeviceTensor gq(in.q), gk(in.k), glse(in.lse), gcu(in.cu), gcmp(in.cu_cmp), gt(topk);
  const Status s = select_blocks(config, gq.view(), gk.view(), glse.view(), gcu.view(), gcmp.view(), gt.view());
  EXPECT_EQ(s.code(), StatusCode::kNotImplemented) << s.to_string();
  EXPECT_NE(s.message().find("topk"), std::string::npos) << s.to_string();
}

}  // namespace
}  // namespace fsa::test
