// GPU tests of the device components built so far (label gpu: they need a CUDA device):
// compressed_cu_seqlens and RoPE against the CPU reference, stream and graph capture, and the
// "not implemented on CUDA" answer of the ops that have no kernels yet.
#include <cstdlib>
#include <cstring>
#include <utility>

#include "gpu_test_util.hpp"

namespace fsa::test {
namespace {

TEST_F(Gpu, DeviceInfo) {
  const CudaDeviceInfo info = cuda_device_info();
  EXPECT_GE(info.sm_major, 8) << "the kernels target sm80 and newer";
  EXPECT_GT(info.multiprocessors, 0);
  EXPECT_FALSE(info.name.empty());
}

// The architecture choice (common::kernel_arch, probed once per device): the wgmma kernels exactly
// where a Hopper GPU loaded the build's sm_90a image and FSA_DISABLE_WGMMA does not forbid them.
TEST_F(Gpu, KernelSetFollowsDeviceAndBuild) {
  const CudaDeviceInfo info = cuda_device_info();
  const char* disable = std::getenv("FSA_DISABLE_WGMMA");
  const bool disabled = disable != nullptr && *disable != '\0' && std::strcmp(disable, "0") != 0;
#ifdef FSA_TEST_BUILD_HAS_SM90A
  const bool build_has_sm90a = true;
#else
  const bool build_has_sm90a = false;
#endif
  const bool hopper = info.sm_major == 9 && info.sm_minor == 0;
  EXPECT_EQ(info.kernel_set, hopper && build_has_sm90a && !disabled ? "sm_90a (wgmma)" : "sm80 (mma.sync)")
      << info.name << " sm_" << info.sm_major << info.sm_minor;
}

TEST_F(Gpu, CompressedCuSeqlensMatchesReference) {
  auto rng = rng_for_test();
  NsaConfig config;
  // 700 sequences: more than one chunk of the single-CTA scan, with empty and short sequences.
  for (const int nseq : {1, 3, 255, 256, 257, 700}) {
    std::vector<std::int64_t> lengths(static_cast<std::size_t>(nseq));
    std::uniform_int_distribution<int> len(0, 300);
    for (auto& l : lengths) l = len(rng);
    HostTensor cu = make_cu_seqlens(lengths);
    HostTensor expected = make_cu_cmp(config, cu);
    HostTensor out(DType::kInt32, cu.sizes());
    out.poison();
    DeviceTensor d_cu(cu), d_out(out);
    FSA_ASSERT_OK(compressed_cu_seqlens(config, d_cu.view(), d_out.view()));
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(d_out.download().to_double(), expected.to_double()) << "nseq " << nseq;
  }
}

// RoPE forward and backward on bf16 and fp16 against the reference (fp32 on the same rounded
// inputs), with a stride-s compressed-key layout, spare rows, in-place use and llama3 scaling; head
// dims with an even number of pairs take the kernel's two-pairs-per-thread path, D = 126 (63 pairs)
// the one-pair path.
TEST_F(Gpu, RopeMatchesReference) {
  auto rng = rng_for_test();
  for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    for (const bool llama3 : {false, true}) {
      for (const auto [stride, dim] : {std::pair{1, 128}, {16, 128}, {1, 64}, {16, 126}, {1, 192}, {16, 256}}) {
        RopeConfig rope;
        rope.llama3_scaling = llama3;
        const std::vector<std::int64_t> lengths = {300, 0, 1, 77};
        HostTensor cu = make_cu_seqlens(lengths);
        const std::int64_t rows = 378 + 5;  // five spare rows past cu[nseq]
        HostTensor x(dtype, {rows, 3, dim});
        x.fill_normal(rng);
        HostTensor x32(DType::kFloat32, x.sizes());
        x32.from_double(x.to_double());
        for (const bool inverse : {false, true}) {
          HostTensor expected(DType::kFloat32, x.sizes());
          const auto ref_call = inverse ? rope_backward : rope_forward;
          FSA_ASSERT_OK(ref_call(rope, x32.view(), cu.view(), stride, expected.view()));
          HostTensor y(dtype, x.sizes());
          y.poison();
          DeviceTensor d_x(x), d_y(y), d_cu(cu);
          FSA_ASSERT_OK(ref_call(rope, d_x.view(), d_cu.view(), stride, d_y.view()));
          FSA_ASSERT_OK(ref_call(rope, d_x.view(), d_cu.view(), stride, d_x.view()));  // in place
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          const auto got = d_y.download().to_double();
          EXPECT_TRUE(all_finite(got));
          const double tol = dtype == DType::kBFloat16 ? 1e-2 : 5e-3;
          EXPECT_LT(rel_frobenius(got, expected.to_double()), tol)
              << dtype_name(dtype) << " stride " << stride << " dim " << dim;
          EXPECT_EQ(d_x.download().to_double(), got) << "in-place result differs";
        }
      }
    }
  }
}

// The launch goes to the stream set by CudaStreamScope, so it can be captured into a CUDA graph
// and replayed.
TEST_F(Gpu, RopeIsGraphCapturable) {
  auto rng = rng_for_test();
  RopeConfig rope;
  HostTensor cu = make_cu_seqlens({100, 60});
  HostTensor x(DType::kBFloat16, {160, 2, 64});
  x.fill_normal(rng);
  HostTensor expected(DType::kBFloat16, x.sizes());
  FSA_ASSERT_OK(rope_forward(rope, x.view(), cu.view(), 1, expected.view()));
  DeviceTensor d_x(x), d_y(expected), d_cu(cu);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  {
    CudaStreamScope scope(stream);
    FSA_EXPECT_OK(rope_forward(rope, d_x.view(), d_cu.view(), 1, d_y.view()));
  }
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaMemset(d_y.view().data, 0xff, 160 * 2 * 64 * 2), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  const auto got = d_y.download().to_double();
  EXPECT_LT(rel_frobenius(got, expected.to_double()), 1e-2);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// Every op has a CUDA kernel now; a shape the kernels do not serve (head dim 48) is refused the same
// way, never launched.
TEST_F(Gpu, UnsupportedShapesSayNotImplemented) {
  auto rng = rng_for_test();
  NsaConfig config;
  HostTensor cu = make_cu_seqlens({70});
  HostTensor q(DType::kBFloat16, {70, 4, 48}), k(DType::kBFloat16, {70, 2, 48}), v(DType::kBFloat16, {70, 2, 48});
  HostTensor o(DType::kBFloat16, {70, 4, 48}), lse(DType::kFloat32, {4, 70});
  q.fill_normal(rng);
  DeviceTensor dq(q), dk(k), dv(v), d_o(o), d_lse(lse), d_cu(cu);
  const Status s = swa_forward(config, dq.view(), dk.view(), dv.view(), d_cu.view(), d_o.view(), d_lse.view());
  EXPECT_EQ(s.code(), StatusCode::kNotImplemented) << s.to_string();
  EXPECT_NE(s.message().find("CUDA"), std::string::npos) << s.to_string();
}

}  // namespace
}  // namespace fsa::test
