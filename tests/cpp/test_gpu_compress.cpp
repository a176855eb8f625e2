// Compression on the GPU (docs/semantics.md section 1) against the CPU reference on the same
// rounded inputs: linear and mean, with and without the positional embedding, forward and every
// gradient, packed batches with sequences shorter than l, exactly l, l + s - 1 and a few thousand
// tokens, the head dims the library instantiates, window/stride pairs, bf16 and fp16. Outputs are poisoned
// before each run; the spare rows of y (sized by max_compressed_tokens) must come back as zeros.
#include <cmath>
#include <cstdlib>
#include <string>

#include "gpu_compare.hpp"

namespace fsa::test {
namespace {

struct CompressCase {
  std::vector<std::int64_t> lengths;
  int heads = 2, dim = 128, dim_out = 128;
  int cmp_len = 32, cmp_stride = 16;
  CompressionKind kind = CompressionKind::kLinear;
  bool pos_emb = true;
  DType dtype = DType::kBFloat16;
};

struct CompressResult {
  HostTensor y, dx, d_weight, d_pos_emb;
};

CompressResult run(const CompressCase& c, const NsaConfig& config, const HostTensor& cu, const HostTensor& cu_cmp,
                   const HostTensor& x, const HostTensor& weight, const HostTensor& pos_emb, const HostTensor& dy,
                   bool on_gpu) {
  const bool linear = c.kind == CompressionKind::kLinear;
  CompressResult r{HostTensor(x.dtype(), dy.sizes()), HostTensor(x.dtype(), x.sizes()),
                   linear ? HostTensor(x.dtype(), weight.sizes()) : HostTensor(),
                   c.pos_emb ? HostTensor(x.dtype(), pos_emb.sizes()) : HostTensor()};
  for (HostTensor* t : {&r.y, &r.dx, &r.d_weight, &r.d_pos_emb})
    if (!t->sizes().empty()) t->poison();
  auto opt = [](const HostTensor& t, bool present) { return present ? t.view() : TensorView{}; };
  if (!on_gpu) {
    FSA_EXPECT_OK(compress_forward(config, x.view(), cu.view(), cu_cmp.view(), opt(weight, linear),
                                   opt(pos_emb, c.pos_emb), r.y.view()));
    FSA_EXPECT_OK(compress_backward(config, x.view(), cu.view(), cu_cmp.view(), opt(weight, linear),
                                    opt(pos_emb, c.pos_emb), dy.view(), r.dx.view(), opt(r.d_weight, linear),
                                    opt(r.d_pos_emb, c.pos_emb)));
    return r;
  }
  DeviceTensor gx(x), gcu(cu), gcmp(cu_cmp), gdy(dy), gy(r.y), gdx(r.dx);
  std::unique_ptr<DeviceTensor> gw, gpe, gdw, gdpe;
  if (linear) {
    gw = std::make_unique<DeviceTensor>(weight);
    gdw = std::make_unique<DeviceTensor>(r.d_weight);
  }
  if (c.pos_emb) {
    gpe = std::make_unique<DeviceTensor>(pos_emb);
    gdpe = std::make_unique<DeviceTensor>(r.d_pos_emb);
  }
  auto dev = [](const std::unique_ptr<DeviceTensor>& t) { return t ? t->view() : TensorView{}; };
  FSA_EXPECT_OK(compress_forward(config, gx.view(), gcu.view(), gcmp.view(), dev(gw), dev(gpe), gy.view()));
  FSA_EXPECT_OK(compress_backward(config, gx.view(), gcu.view(), gcmp.view(), dev(gw), dev(gpe), gdy.view(),
                                  gdx.view(), dev(gdw), dev(gdpe)));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  r.y = gy.download();
  r.dx = gdx.download();
  if (gdw) r.d_weight = gdw->download();
  if (gdpe) r.d_pos_emb = gdpe->download();
  return r;
}

void check_case(const CompressCase& c, std::uint64_t salt) {
  auto rng = rng_for_test(salt);
  NsaConfig config;
  config.cmp_len = c.cmp_len;
  config.cmp_stride = c.cmp_stride;
  config.block_size = 64;
  config.compression = c.kind;
  const HostTensor cu = make_cu_seqlens(c.lengths);
  const HostTensor cu_cmp = make_cu_cmp(config, cu);
  const std::int64_t n = cu.get(cu.numel() - 1);
  const std::int64_t used = cu_cmp.get(cu_cmp.numel() - 1);
  const std::int64_t rows = max_compressed_tokens(n, config);  // spare rows past `used`
  const int dim_out = c.kind == CompressionKind::kLinear ? c.dim_out : c.dim;
  HostTensor x(c.dtype, {n, c.heads, c.dim});
  HostTensor weight(c.dtype, {c.heads, static_cast<std::int64_t>(c.cmp_len) * c.dim, dim_out});
  HostTensor pos_emb(c.dtype, {c.heads, c.cmp_len, c.dim});
  HostTensor dy(c.dtype, {rows, c.heads, dim_out});
  x.fill_normal(rng);
  weight.fill_normal(rng, 1.0 / std::sqrt(static_cast<double>(c.cmp_len) * c.dim));
  pos_emb.fill_normal(rng, 0.5);
  dy.fill_normal(rng);

  const CompressResult gpu = run(c, config, cu, cu_cmp, x, weight, pos_emb, dy, true);
  const CompressResult ref = run(c, config, cu, cu_cmp, as_dtype(x, DType::kFloat32),
                                 as_dtype(weight, DType::kFloat32), as_dtype(pos_emb, DType::kFloat32),
                                 as_dtype(dy, DType::kFloat32), false);
  const double tol = bf16_or_fp16_tolerance(c.dtype);
  std::string what = std::string(dtype_name(c.dtype)) +
                     (c.kind == CompressionKind::kLinear ? " linear" : " mean") + (c.pos_emb ? "+pe" : "") +
                     " D=" + std::to_string(c.dim) + " Dout=" + std::to_string(dim_out) +
                     " l=" + std::to_string(c.cmp_len) + " s=" + std::to_string(c.cmp_stride) + " lengths=";
  for (auto len : c.lengths) what += std::to_string(len) + ",";
  // Compare the used rows of y; the spare rows must be zeros.
  std::vector<double> y_gpu = gpu.y.to_double(), y_ref = ref.y.to_double();
  const std::size_t used_elems = static_cast<std::size_t>(used * c.heads * dim_out);
  y_gpu.resize(used_elems);
  y_ref.resize(used_elems);
  expect_close("y " + what, y_gpu, y_ref, tol);
  expect_zero_rows("y " + what, gpu.y, used);
  expect_close("dx " + what, gpu.dx.to_double(), ref.dx.to_double(), 2 * tol);
  if (c.kind == CompressionKind::kLinear)
    expect_close("d_weight " + what, gpu.d_weight.to_double(), ref.d_weight.to_double(), 2 * tol);
  if (c.pos_emb) expect_close("d_pos_emb " + what, gpu.d_pos_emb.to_double(), ref.d_pos_emb.to_double(), 2 * tol);
}

// Short sequences (shorter than l, exactly l, l + s - 1, empty) packed with long ones.
std::vector<std::int64_t> mixed_lengths(int l, int s) {
  return {static_cast<std::int64_t>(l) - 1, l, static_cast<std::int64_t>(l) + s - 1, 0, 3001, 5, 700};
}

TEST_F(Gpu, CompressLinearHeadDims) {
  std::uint64_t salt = 0;
  for (const auto [dim, dim_out] : {std::pair{64, 64}, {128, 128}, {192, 128}, {256, 256}, {128, 64}})
    for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
      CompressCase c;
      c.lengths = mixed_lengths(32, 16);
      c.dim = dim;
      c.dim_out = dim_out;
      c.dtype = dtype;
      check_case(c, ++salt);
    }
}

// The split of the K reductions (compress_k_splits) of the linear forward (l*D) and of dW (the
// compressed rows): the automatic count (several splits at these sizes), none (the direct
// epilogues), an uneven split and more splits than some CTAs have chunks for.
TEST_F(Gpu, CompressLinearSplitK) {
  std::uint64_t salt = 50;
  for (const char* splits : {"", "1", "3", "64"}) {
    SCOPED_TRACE(std::string("FSA_COMPRESS_K_SPLITS=") + splits);
    if (*splits != '\0') setenv("FSA_COMPRESS_K_SPLITS", splits, 1);
    for (const bool pe : {true, false}) {
      CompressCase c;
      c.lengths = mixed_lengths(32, 16);
      c.pos_emb = pe;
      check_case(c, ++salt);
    }
    unsetenv("FSA_COMPRESS_K_SPLITS");
  }
}

TEST_F(Gpu, CompressWindowsAndStrides) {
  std::uint64_t salt = 100;
  for (const auto [l, s] : {std::pair{16, 16}, {16, 8}, {32, 16}, {32, 32}, {64, 32}, {64, 16}, {32, 8}})
    for (const bool pe : {true, false}) {
      CompressCase c;
      c.lengths = mixed_lengths(l, s);
      c.cmp_len = l;
      c.cmp_stride = s;
      c.pos_emb = pe;
      c.heads = 3;
      c.dim = 64;
      c.dim_out = 128;
      check_case(c, ++salt);
    }
}

TEST_F(Gpu, CompressMean) {
  std::uint64_t salt = 200;
  for (const int dim : {64, 128, 192, 256})
    for (const DType dtype : {DType::kBFloat16, DType::kFloat16})
      for (const bool pe : {true, false}) {
        CompressCase c;
        c.lengths = mixed_lengths(32, 16);
        c.kind = CompressionKind::kMean;
        c.dim = dim;
        c.dtype = dtype;
        c.pos_emb = pe;
        check_case(c, ++salt);
      }
}

TEST_F(Gpu, CompressOnlyShortSequences) {
  CompressCase c;
  c.lengths = {1, 31, 2, 0, 15};  // nothing to compress: y has spare rows only, dx = 0
  check_case(c, 300);
  c.kind = CompressionKind::kMean;
  check_case(c, 301);
}

// N = 0 (no sequence, or only empty ones): nothing to sum, so dW and dPE are zeros, written over
// the poisoned buffers (an early return would leave the caller's stale memory as the gradient).
TEST_F(Gpu, CompressEmptyBatchZeroesParameterGradients) {
  for (const std::vector<std::int64_t>& lengths : {std::vector<std::int64_t>{}, std::vector<std::int64_t>{0, 0}}) {
    CompressCase c;
    c.lengths = lengths;
    NsaConfig config;
    config.block_size = 64;
    const HostTensor cu = make_cu_seqlens(lengths);
    const HostTensor cu_cmp = make_cu_cmp(config, cu);
    HostTensor x(c.dtype, {0, c.heads, c.dim}), dy(c.dtype, {0, c.heads, c.dim_out});
    HostTensor weight(c.dtype, {c.heads, static_cast<std::int64_t>(c.cmp_len) * c.dim, c.dim_out});
    HostTensor pos_emb(c.dtype, {c.heads, c.cmp_len, c.dim});
    const CompressResult r = run(c, config, cu, cu_cmp, x, weight, pos_emb, dy, true);
    const std::string what = "empty batch of " + std::to_string(lengths.size()) + " sequences";
    expect_zero_rows("d_weight, " + what, r.d_weight, 0);
    expect_zero_rows("d_pos_emb, " + what, r.d_pos_emb, 0);
  }
}

TEST_F(Gpu, CompressUnsupportedHeadDimIsNamed) {
  NsaConfig config;
  const HostTensor cu = make_cu_seqlens({64});
  const HostTensor cu_cmp = make_cu_cmp(config, cu);
  HostTensor x(DType::kBFloat16, {64, 1, 48}), w(DType::kBFloat16, {1, 32 * 48, 48}), y(DType::kBFloat16, {4, 1, 48});
  DeviceTensor gx(x), gw(w), gy(y), gcu(cu), gcmp(cu_cmp);
  const Status s = compress_forward(config, gx.view(), gcu.view(), gcmp.view(), gw.view(), TensorView{}, gy.view());
  EXPECT_EQ(s.code(), StatusCode::kNotImplemented) << s.to_string();
  EXPECT_NE(s.message().find("x"), std::string::npos) << s.to_string();
}

}  // namespace
}  // namespace fsa::test
