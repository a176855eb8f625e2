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
#include "kernels/common/launch_checks.hpp"
#include "kernels/decode/decode.hpp"

namespace fsa::cuda::decode {

namespace {

constexpr int kThreads = 128;

template <class Element>
__global__ void __launch_bounds__(kThreads) compress_windows_kernel(const __grid_constant__ CompressWindowsParams p) {
  using C = common::Convert<Element>;
  extern __shared__ float window_s[];  // [l D] inputs, then [slices, D] partial sums
  const int tensor = blockIdx.z, g = blockIdx.y;
  const long long r = blockIdx.x;  // staged compressed row
  const int total = p.cu_cmp_stage[p.num_seqs];
  if (r >= total) return;  // most steps: no window completes
  int b = 0;
  while (b + 1 < p.num_seqs && p.cu_cmp_stage[b + 1] <= r) ++b;
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
  // kLinear: thread (slice, pair) sums output columns 2 pair, 2 pair + 1 over its slice of the
  // window's rows (each weight row read as pairs: coalesced); the slices' sums are then added in
  // slice order.
  const int pairs = D / 2, slices = kThreads / pairs;  // D <= 256: at least one slice
  const int pair = threadIdx.x % pairs, slice = threadIdx.x / pairs;
  float* partial_s = window_s + window;
  if (slice < slices) {
    const int r0 = slice * window / slices, r1 = (slice + 1) * window / slices;
    const Element* w = weight + g * p.weight_head_stride[tensor] + 2 * pair;
    float acc0 = 0.0f, acc1 = 0.0f;
#pragma unroll 8
    for (int i = r0; i < r1; ++i) {
      // Columns 2 pair and 2 pair + 1 as one 32-bit load (the row stride and 2 pair are even).
      Element pair_w[2];
      *reinterpret_cast<std::uint32_t*>(pair_w) =
          *reinterpret_cast<const std::uint32_t*>(w + i * p.weight_row_stride[tensor]);
      const float in = window_s[i];
      acc0 = fmaf(in, C::to_float(pair_w[0]), acc0);
      acc1 = fmaf(in, C::to_float(pair_w[1]), acc1);
    }
    partial_s[slice * D + 2 * pair] = acc0;
    partial_s[slice * D + 2 * pair + 1] = acc1;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < D; e += kThreads) {
    float acc = 0.0f;
    for (int k = 0; k < slices; ++k) acc += partial_s[k * D + e];
    y[e] = C::from_float(acc);
  }
}

}  // namespace

bool compress_windows_supported(const CompressWindowsParams& p) {
  for (int t = 0; t < 2; ++t) {
    if (p.dim[t] % 2 != 0 || p.dim[t] > 2 * kThreads) return false;
    // The weights are read as pairs of columns (32-bit loads).
    if (p.weight[t] != nullptr && (reinterpret_cast<std::uintptr_t>(p.weight[t]) % 4 != 0 ||
                                   p.weight_row_stride[t] % 2 != 0 || p.weight_head_stride[t] % 2 != 0))
      return false;
  }
  return p.cmp_rows <= 0x7fffffffLL;
}

Status launch_compress_windows(const CompressWindowsParams& p, DType dtype, cudaStream_t stream) {
  if (p.num_seqs == 0 || p.cmp_rows == 0 || p.heads_kv == 0) return Status::ok();
  if (!compress_windows_supported(p))
    return FSA_ERROR(StatusCode::kInternal, "decode compression: unsupported shape (compress_windows_supported)");
  const int dim = p.dim[0] > p.dim[1] ? p.dim[0] : p.dim[1];
  const std::size_t smem = (static_cast<std::size_t>(p.cmp_len) * dim + 2 * kThreads) * sizeof(float);
  return common::dispatch_dtype("nsa_decode", "k", dtype, [&]<class Element>() -> Status {
    auto* kernel = compress_windows_kernel<Element>;
    FSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<dim3(static_cast<unsigned>(p.cmp_rows), p.heads_kv, 2), kThreads, smem, stream>>>(p);
    FSA_CHECK_LAUNCH("compress_windows_kernel", stream);
    return Status::ok();
  });
}

}  // namespace fsa::cuda::decode
