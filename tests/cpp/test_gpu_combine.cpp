// Gated combination on the GPU (docs/semantics.md section 7) against the CPU reference on the same
// rounded inputs: per-head and shared gates, bf16 and fp16, the Dv the library instantiates, a strided
// output view, gradients skipped when undefined, d_gates bitwise reproducible (no atomics), and the
// error for a Dv that is not a multiple of 8.
#include <cuda_runtime.h>

#include "gpu_compare.hpp"

namespace fsa::test {
namespace {

struct CombineData {
  HostTensor gates, o_cmp, o_slc, o_swa, d_o;
};

CombineData make_data(GateMode mode, DType dtype, std::int64_t n, int hq, int dv, std::mt19937_64& rng) {
  CombineData d;
  d.gates = mode == GateMode::kShared ? HostTensor(dtype, {n, 3}) : HostTensor(dtype, {n, hq, 3});
  d.gates.fill_uniform(rng, 0.05, 0.95);
  for (HostTensor* t : {&d.o_cmp, &d.o_slc, &d.o_swa, &d.d_o}) {
    *t = HostTensor(dtype, {n, hq, dv});
    t->fill_normal(rng);
  }
  return d;
}

TEST_F(Gpu, CombineMatchesReference) {
  std::uint64_t salt = 0;
  for (const GateMode mode : {GateMode::kPerHead, GateMode::kShared})
    for (const DType dtype : {DType::kBFloat16, DType::kFloat16})
      for (const int dv : {64, 128, 256}) {
        auto rng = rng_for_test(++salt);
        NsaConfig config;
        config.gate_mode = mode;
        const std::int64_t n = 1037;
        const int hq = 12;
        const CombineData d = make_data(mode, dtype, n, hq, dv, rng);
        const std::string what = std::string(dtype_name(dtype)) +
                                 (mode == GateMode::kShared ? " shared" : " per-head") +
                                 " Dv=" + std::to_string(dv);
        // Reference in fp32 on the rounded inputs.
        auto f32 = [](const HostTensor& t) { return as_dtype(t, DType::kFloat32); };
        HostTensor o_ref(DType::kFloat32, {n, hq, dv}), dg_ref(DType::kFloat32, d.gates.sizes());
        HostTensor db_ref[3] = {HostTensor(DType::kFloat32, {n, hq, dv}), HostTensor(DType::kFloat32, {n, hq, dv}),
                                HostTensor(DType::kFloat32, {n, hq, dv})};
        const HostTensor g32 = f32(d.gates), c32 = f32(d.o_cmp), s32 = f32(d.o_slc), w32 = f32(d.o_swa),
                         do32 = f32(d.d_o);
        FSA_EXPECT_OK(combine_forward(config, g32.view(), c32.view(), s32.view(), w32.view(), o_ref.view()));
        FSA_EXPECT_OK(combine_backward(config, g32.view(), c32.view(), s32.view(), w32.view(), do32.view(),
                                       dg_ref.view(), db_ref[0].view(), db_ref[1].view(), db_ref[2].view()));

        DeviceTensor gg(d.gates), gc(d.o_cmp), gs(d.o_slc), gw(d.o_swa), gdo(d.d_o);
        // The output written into every other head of a [n, 2*hq, dv] buffer: a strided view.
        HostTensor wide(dtype, {n, 2 * hq, dv});
        wide.poison();
        DeviceTensor go(wide);
        TensorView o = go.view();
        o.sizes[1] = hq;
        o.strides[1] = 2 * dv;
        HostTensor dg_host(dtype, d.gates.sizes()), db_host(dtype, {n, hq, dv});
        dg_host.poison();
        db_host.poison();
        DeviceTensor dg(dg_host), dg2(dg_host), db0(db_host), db1(db_host), db2(db_host);
        FSA_EXPECT_OK(combine_forward(config, gg.view(), gc.view(), gs.view(), gw.view(), o));
        FSA_EXPECT_OK(combine_backward(config, gg.view(), gc.view(), gs.view(), gw.view(), gdo.view(), dg.view(),
                                       db0.view(), db1.view(), db2.view()));
        // Only d_gates: the branch gradients skipped; the result is bitwise the same.
        FSA_EXPECT_OK(combine_backward(config, gg.view(), gc.view(), gs.view(), gw.view(), gdo.view(), dg2.view(),
                                       TensorView{}, TensorView{}, TensorView{}));
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

        const std::vector<double> wide_out = go.download().to_double();
        std::vector<double> o_got;
        for (std::int64_t t = 0; t < n; ++t)
          for (int h = 0; h < hq; ++h)
            for (int e = 0; e < dv; ++e)
              o_got.push_back(wide_out[static_cast<std::size_t>((t * 2 * hq + 2 * h) * dv + e)]);
        const double tol = bf16_or_fp16_tolerance(dtype);
        expect_close("o " + what, o_got, o_ref.to_double(), tol);
        expect_close("d_gates " + what, dg.download().to_double(), dg_ref.to_double(), tol);
        EXPECT_EQ(dg.download().to_double(), dg2.download().to_double()) << "d_gates not reproducible " << what;
        const DeviceTensor* db[3] = {&db0, &db1, &db2};
        for (int b = 0; b < 3; ++b)
          expect_close("d_o branch " + std::to_string(b) + " " + what, db[b]->download().to_double(),
                       db_ref[b].to_double(), tol);
      }
}

TEST_F(Gpu, CombineRejectsDvNotMultipleOf8) {
  auto rng = rng_for_test(99);
  NsaConfig config;
  const CombineData d = make_data(GateMode::kPerHead, DType::kBFloat16, 5, 2, 12, rng);
  DeviceTensor gg(d.gates), gc(d.o_cmp), gs(d.o_slc), gw(d.o_swa), go(d.d_o);
  const Status s = combine_forward(config, gg.view(), gc.view(), gs.view(), gw.view(), go.view());
  EXPECT_EQ(s.code(), StatusCode::kNotImplemented) << s.to_string();
  EXPECT_NE(s.message().find("o_cmp"), std::string::npos) << s.to_string();
}

}  // namespace
}  // namespace fsa::test
