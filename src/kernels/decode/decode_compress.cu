// A decode step's compression (CompressWindowsParams in decode_params.hpp): the windows the step
// completes, from the staged pre-RoPE rows (launch_stage_windows), into k_cmp_new / v_cmp_new,
// which launch_append_compressed rotates and writes into the compressed pools.
//
// Why not the training's compression: its split-K GEMM is five or six launches a tensor pair
// (positional-embedding vector, partial sums, linear and reduce for k and for v), and a decode step
// launches them every step although at most one window a sequence and kv head completes, and none
// in most steps (15 of 16 at s 16, q_len 1): 2.5-3.6 us each on an H100 for nothing. Here one
// launch computes every completed row, a CTA per (staged row, kv head, tensor), and its CTAs exit
// at once when the step completes none. A row is the window's l x D inputs (plus the positional
// embedding for k) times the head's [l D, D] weight, or their mean: the reference's
// compress_forward, accumulated in fp32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "cuda/runtime.hpp"
#include "kernels/common/convert.cuh"
#include "kernels/common/dependent_launch.cuh"
#include "kernels/common/launch_checks.hpp"
#include "kernels/decode/decode.hpp"
#include "kernels/decode/decode_paged.cuh"

namespace fsa::cuda::decode {

namespace {

constexpr int kThreads = 256;
constexpr int kColumns = 8;  // output columns a thread sums: one 16-byte load of a weight row

template <class Element>
__global__ void __launch_bounds__(kThreads) compress_windows_kernel(const __grid_constant__ CompressWindowsParams p) {
  common::await_prior_grids();  // before any global access: launched by launch_dependent
  using C = common::Convert<Element>;
  extern __shared__ float window_s[];  // [l D] inputs, then [slices, D] partial sums
  const int tensor = blockIdx.z, g = blockIdx.y;
  const long long r = blockIdx.x;  // staged compressed row
  const int total = p.cu_cmp_stage[p.num_seqs];
  if (r >= total) return;  // most steps: no window completes
  const int b = seq_of_row(p.cu_cmp_stage, 1, p.num_seqs, r);
  const int l = p.cmp_len, D = p.dim[tensor], heads = p.heads_kv;
  const long long first_row = p.cu_stage[b] + (r - p.cu_cmp_stage[b]) * p.cmp_stride;
  const auto* x = static_cast<const Element*>(p.x[tensor]);
  const auto* pos_emb = tensor == 0 ? static_cast<const Element*>(p.pos_emb) : nullptr;
  const int window = l * D;
  for (int i = threadIdx.x; i < window; i += kThreads) {
    const int j = i / D, d = i % D;
    float v = C::to_float(x[((first_row + j) * heads + g) * D + d]);
    if (pos_emb != nullptr) v += C::to_float(pos_emb[g * p.pos_emb_head_stride + j * p.pos_emb_row_stride + d]);
    window_s[i] = v;
  }
  __syncthreads();
  auto* y = static_cast<Element*>(p.y[tensor]) + (r * heads + g) * D;
  const auto* weight = static_cast<const Element*>(p.weight[tensor]);
  if (weight == nullptr) {  // kMean: the reference's sum of the l rows, each times 1 / l
    const float inv_l = 1.0f / static_cast<float>(l);
    for (int e = threadIdx.x; e < D; e += kThreads) {
      float acc = 0.0f;
      for (int j = 0; j < l; ++j) acc = fmaf(window_s[j * D + e], inv_l, acc);
      y[e] = C::from_float(acc);
    }
    return;
  }
  // kLinear: thread (slice, group) sums output columns kColumns group .. + kColumns - 1 over its
  // slice of the window's rows, reading each weight row's columns as one 16-byte load (a warp: 512
  // contiguous bytes of a row or two), so that a thread has a few hundred loads in flight in batches
  // rather than thousands in series; the slices' sums are then added in slice order.
  const int groups = D / kColumns, slices = kThreads / groups;  // D <= 256: at least 8 slices
  const int group = threadIdx.x % groups, slice = threadIdx.x / groups;
  float* partial_s = window_s + window;
  if (slice < slices) {
    const int r0 = slice * window / slices, r1 = (slice + 1) * window / slices;
    const Element* w = weight + g * p.weight_head_stride[tensor] + kColumns * group;
    float acc[kColumns] = {};
#pragma unroll 4
    for (int i = r0; i < r1; ++i) {
      Element row[kColumns];
      *reinterpret_cast<uint4*>(row) = *reinterpret_cast<const uint4*>(w + i * p.weight_row_stride[tensor]);
      const float in = window_s[i];
#pragma unroll
      for (int k = 0; k < kColumns; ++k) acc[k] = fmaf(in, C::to_float(row[k]), acc[k]);
    }
#pragma unroll
    for (int k = 0; k < kColumns; ++k) partial_s[slice * D + kColumns * group + k] = acc[k];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < D; e += kThreads) {
    float acc = 0.0f;
    for (int k = 0; k < slices; ++k) acc += partial_s[k * D + e];
    y[e] = C::from_float(acc);
  }
}

// The dynamic shared memory: the window's inputs (l x the larger head dim) and the slices' sums.
std::size_t window_smem_bytes(const CompressWindowsParams& p) {
  const std::size_t dim = static_cast<std::size_t>(p.dim[0] > p.dim[1] ? p.dim[0] : p.dim[1]);
  return (static_cast<std::size_t>(p.cmp_len) * dim + kThreads * kColumns) * sizeof(float);
}

}  // namespace

bool compress_windows_supported(const CompressWindowsParams& p) {
  for (int t = 0; t < 2; ++t) {
    if (p.dim[t] % kColumns != 0 || p.dim[t] > kThreads) return false;
    // The weights are read as kColumns columns at once (16-byte loads).
    if (p.weight[t] != nullptr &&
        (reinterpret_cast<std::uintptr_t>(p.weight[t]) % 16 != 0 || p.weight_row_stride[t] % kColumns != 0 ||
         p.weight_head_stride[t] % kColumns != 0))
      return false;
  }
  // The window's inputs and the slices' sums in shared memory: within what every supported GPU
  // gives a CTA (l 32, D 256: 40 KB).
  return p.cmp_rows <= 0x7fffffffLL && window_smem_bytes(p) <= 96 * 1024;
}

Status launch_compress_windows(const CompressWindowsParams& p, DType dtype, cudaStream_t stream) {
  if (p.num_seqs == 0 || p.cmp_rows == 0 || p.heads_kv == 0) return Status::ok();
  if (!compress_windows_supported(p))
    return FSA_ERROR(StatusCode::kInternal, "decode compression: unsupported shape (compress_windows_supported)");
  const std::size_t smem = window_smem_bytes(p);
  return common::dispatch_dtype("nsa_decode", "k", dtype, [&]<class Element>() -> Status {
    auto* kernel = compress_windows_kernel<Element>;
    FSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    return common::launch_dependent<&compress_windows_kernel<Element>>(
        "compress_windows_kernel", dim3(static_cast<unsigned>(p.cmp_rows), p.heads_kv, 2), kThreads, smem, stream, p);
  });
}

}  // namespace fsa::cuda::decode
