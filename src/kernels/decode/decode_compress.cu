// A decode step's compression: the windows the step completes, compressed and written into the
// compressed pools (k~ rotated at i*s) by one launch, compress_append_kernel, which reads each window
// where it is (the key tail and the value pages before the cached length P, the chunk after it:
// window_row, decode_append.cuh), compresses it and writes it into the pools; an nsa_decode call's
// new tokens are appended by the same launch. Longer calls stage the windows and run the training's
// compression (decode_step.cu).
//
// Why not the training's compression: its split-K GEMM is five or six launches a tensor pair
// (positional-embedding vector, partial sums, linear and reduce for k and for v), and a decode step
// launches them every step although at most one window a sequence and kv head completes, and none
// in most steps (15 of 16 at s 16, q_len 1): 2.5-3.6 us each on an H100 for nothing. Here a CTA per
// (new compressed row, kv head, k or v) computes its row, and exits at once when the step completes
// none. The staged route it replaced (staging offsets, staged windows, their compression, the
// compressed append: 3.8 + 3.1 + 2.8 + 2.8 us at 16 x 128K on an H100, all no-ops in those steps)
// measured 2-4% slower a step with the token append apart (docs/kernels/decode.md). A row is the
// window's l x D inputs (plus the positional embedding for k) times the head's [l D, D] weight, or
// their mean: the reference's compress_forward, accumulated in fp32, rounded once to the element
// type (compress_window); k~ is then rotated from that rounded value.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/runtime.hpp"
#include "kernels/common/convert.cuh"
#include "kernels/common/dependent_launch.cuh"
#include "kernels/common/launch_checks.hpp"
#include "kernels/decode/decode.hpp"
#include "kernels/decode/decode_append.cuh"
#include "kernels/decode/decode_paged.cuh"

namespace fsa::cuda::decode {

namespace {

constexpr int kThreads = 256;
constexpr int kColumns = 8;  // output columns a thread sums: one 16-byte load of a weight row
constexpr int kMaxDim = kThreads;  // a head dim's columns, at most (one a thread in the kMean sum)
// The one-launch route's compression CTAs, at most about: one wave of them on an H100 (132 SMs x 3,
// compress_append_kernel's bounds). Every CTA scans the batch before it knows whether a row is its
// own, so a grid of one CTA per possible row (N / s + nseq rows x Hkv x 2) would scan it that many
// times in every step (at 1000 sequences and Hkv 4, 8000 scans in 20 waves, tens of microseconds
// for a step that completes nothing); past a wave each CTA takes several rows in turn instead.
constexpr long long kWaveCtas = 384;

// The compression of one window (window_s: its l x D fp32 inputs, pos_emb added) into y[0, D)
// (shared or global memory), by the CTA's threads: with `weight` null (kMean) the reference's sum
// of the l rows, each times 1 / l; else the window times the head's [l D, D] weight (rows
// `row_stride` apart). partial_s: kThreads x kColumns floats of scratch. Ends with the kLinear
// sums' barrier passed, not with y's writes visible to the other threads.
template <class Element>
__device__ __forceinline__ void compress_window(const float* window_s, float* partial_s, const Element* weight,
                                                std::int64_t row_stride, int l, int D, Element* y) {
  using C = common::Convert<Element>;
  if (weight == nullptr) {
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
  const int window = l * D;
  const int groups = D / kColumns, slices = kThreads / groups;  // D <= 256: at least 8 slices
  const int group = threadIdx.x % groups, slice = threadIdx.x / groups;
  if (slice < slices) {
    const int r0 = slice * window / slices, r1 = (slice + 1) * window / slices;
    const Element* w = weight + kColumns * group;
    float acc[kColumns] = {};
#pragma unroll 4
    for (int i = r0; i < r1; ++i) {
      Element row[kColumns];
      *reinterpret_cast<uint4*>(row) = *reinterpret_cast<const uint4*>(w + i * row_stride);
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

// Grid: row_ctas x Hkv x 2 CTAs, then tokens x token_slices. CTA x + row_ctas (g +
// Hkv tensor) takes the step's new compressed rows x, x + row_ctas, .. (numbered across the batch in
// sequence order) of kv head g, k (tensor 0) or v; the CTAs after them append the new tokens
// (append_token_heads: q rotated, k and v into the pages, the key ring), when the launch carries
// them (token_slices > 0). Both in one launch only when no sequence brings more than
// kMaxDecodeTokens tokens: its tokens then overwrite ring rows of positions up to P - l, and the
// windows read positions from n_cmp(P) s > P - l on (nsa_cache_tail_rows = l + kMaxDecodeTokens - 1).
// Three CTAs a SM: at the default bounds ptxas takes 64 registers and spills 20 bytes; 76 here.
template <class Element>
__global__ void __launch_bounds__(kThreads, 3) compress_append_kernel(const __grid_constant__ CompressAppendParams p) {
  // The step's first kernel: the batch description too may come from the kernel before it.
  common::await_prior_grids();
  using C = common::Convert<Element>;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int row_seq;
  __shared__ long long row_index;
  __shared__ float2 angles[AppendParams::kMaxPairs];
  __shared__ alignas(16) Element k_row_s[kMaxDim];  // k~ rounded, before its rotation
  extern __shared__ float window_s[];                // [l D] inputs, then [slices, D] partial sums
  const AppendParams& a = p.append;
  const long long compress_ctas = p.row_ctas * a.nsa.heads_kv * 2;
  if (blockIdx.x >= compress_ctas) {  // the append of a new token's heads
    const long long unit = blockIdx.x - compress_ctas;
    append_token_heads<kThreads, Element>(a, unit / p.token_slices, static_cast<int>(unit % p.token_slices),
                                          p.token_slices, angles, /*awaited=*/true);
    return;
  }
  const CompressWeights& w = p.weights;
  const int nseq = a.batch.num_seqs, l = a.nsa.cmp_len, s = a.nsa.cmp_stride, hkv = a.nsa.heads_kv;
  const int x = static_cast<int>(blockIdx.x % p.row_ctas), g = static_cast<int>(blockIdx.x / p.row_ctas) % hkv;
  const int tensor = static_cast<int>(blockIdx.x / (p.row_ctas * hkv));

  // The new compressed tokens of the sequences, scanned: each thread takes a contiguous range of
  // sequences, so that one block scan covers a batch of any size with its loads in parallel (a
  // loop of 256-sequence scans, as stage_offsets_kernel's, is that many scans in series in every
  // CTA: at a thousand sequences, four).
  const int per_thread = (nseq + kThreads - 1) / kThreads;
  const int lo = min(nseq, static_cast<int>(threadIdx.x) * per_thread), hi = min(nseq, lo + per_thread);
  int mine = 0;
  for (int b = lo; b < hi; ++b) mine += static_cast<int>(staged_windows_of(a, b).count);
  int offset, total;
  Scan(scan_storage).ExclusiveSum(mine, offset, total);
  const long long rows = min(static_cast<long long>(total), static_cast<long long>(a.cmp_rows));  // none in most steps

  const int D = tensor == 0 ? a.dim_qk : a.dim_v, vectors = D / 8;
  const Element* weight = static_cast<const Element*>(w.weight[tensor]);
  if (weight != nullptr) weight += g * w.weight_head_stride[tensor];
  const auto* pos_emb = tensor == 0 ? static_cast<const Element*>(w.pos_emb) : nullptr;
  for (long long r = x; r < rows; r += p.row_ctas) {
    __syncthreads();  // the previous row's reads of row_seq, row_index and the shared rows are done
    if (r >= offset && r < offset + mine) {  // the row is among this thread's sequences
      long long before = offset;
      for (int b = lo; b < hi; ++b) {
        const StagedWindows e = staged_windows_of(a, b);
        if (r < before + e.count) {
          row_seq = b;
          row_index = e.first + (r - before);
          break;
        }
        before += e.count;
      }
    }
    __syncthreads();
    const int b = row_seq;
    const long long index = row_index;
    const PageRow at = locate(a.cmp_block_table, a.k_cmp_pages, b, index);
    if (at.page < 0) continue;  // the same in every thread
    const SeqInfo seq = seq_info(a.batch, b);
    // The window's positions index * s .. + l - 1, as fp32, pos_emb added for k.
    for (int i = threadIdx.x; i < l * vectors; i += kThreads) {
      const int j = i / vectors, d = (i % vectors) * 8;
      const Element* src = window_row<Element>(a, b, seq, index * s + j, g, tensor);
      alignas(16) Element vector[8];
      *reinterpret_cast<uint4*>(vector) =
          src != nullptr ? *reinterpret_cast<const uint4*>(src + d) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        float v = C::to_float(vector[k]);
        if (pos_emb != nullptr)
          v += C::to_float(pos_emb[g * w.pos_emb_head_stride + j * w.pos_emb_row_stride + d + k]);
        window_s[j * D + d + k] = v;
      }
    }
    __syncthreads();
    float* partial_s = window_s + l * D;
    if (tensor == 1) {
      compress_window<Element>(window_s, partial_s, weight, w.weight_row_stride[1], l, D,
                               pool_row<Element>(a.v_cmp_pages, at, g));
      continue;
    }
    compress_window<Element>(window_s, partial_s, weight, w.weight_row_stride[0], l, D, k_row_s);
    __syncthreads();
    rope_angles<kThreads>(a, index * s, angles);
    rotate_heads<kThreads, Element>(a, angles, 1, k_row_s, 0, pool_row<Element>(a.k_cmp_pages, at, g), 0);
  }
}

// The dynamic shared memory: the window's inputs (l x the larger head dim) and the slices' sums.
std::size_t window_smem_bytes(int cmp_len, int dim_k, int dim_v) {
  const std::size_t dim = static_cast<std::size_t>(std::max(dim_k, dim_v));
  return (static_cast<std::size_t>(cmp_len) * dim + kThreads * kColumns) * sizeof(float);
}

// What both kernels need of the head dims and the weights, and of the window's shared memory.
bool supported(const CompressWeights& w, int cmp_len, const int (&dims)[2], std::int64_t cmp_rows) {
  for (int t = 0; t < 2; ++t) {
    if (dims[t] % kColumns != 0 || dims[t] > kMaxDim) return false;
    // The weights are read as kColumns columns at once (16-byte loads).
    if (w.weight[t] != nullptr &&
        (reinterpret_cast<std::uintptr_t>(w.weight[t]) % 16 != 0 || w.weight_row_stride[t] % kColumns != 0 ||
         w.weight_head_stride[t] % kColumns != 0))
      return false;
  }
  // The window's inputs and the slices' sums in shared memory: within what every supported GPU
  // gives a CTA (l 32, D 256: 40 KB; compress_append_kernel's static scan storage, angles and k~
  // row add 2 KB).
  return cmp_rows <= 0x7fffffffLL && window_smem_bytes(cmp_len, dims[0], dims[1]) <= 96 * 1024;
}

// kKernel over `grid` with the window's shared memory (above the default 48 KB at l 32, D 256).
template <auto* kKernel, class Params>
Status launch_compression(const char* name, dim3 grid, std::size_t smem, cudaStream_t stream, const Params& p) {
  FSA_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  return common::launch_dependent<kKernel>(name, grid, kThreads, smem, stream, p);
}

}  // namespace

bool compress_append_supported(const CompressAppendParams& p) {
  const AppendParams& a = p.append;
  return supported(p.weights, a.nsa.cmp_len, {a.dim_qk, a.dim_v}, a.cmp_rows);
}

Status launch_compress_append(const CompressAppendParams& p, bool append_tokens, DType dtype, cudaStream_t stream) {
  const AppendParams& a = p.append;
  if (a.batch.num_seqs == 0 || a.batch.tokens == 0) return Status::ok();  // nothing to compress or append
  // The caller skips append_tokens_kernel when this launch appends the tokens: an early return here
  // would drop them, so a shape without compression rows is an error, not a no-op (N / s + nseq rows:
  // never 0 with a sequence).
  if (a.cmp_rows == 0 || a.nsa.heads_kv == 0)
    return FSA_ERROR(StatusCode::kInternal, "decode compression: no compression rows or kv heads in the plan");
  if (!compress_append_supported(p))
    return FSA_ERROR(StatusCode::kInternal, "decode compression: unsupported shape (compress_append_supported)");
  CompressAppendParams q = p;
  q.row_ctas = std::min<long long>(a.cmp_rows, std::max(1LL, kWaveCtas / (2LL * a.nsa.heads_kv)));
  // The token CTAs at this kernel's occupancy (256 threads, three CTAs a SM): about a wave of them
  // and at least 8 heads a CTA, where append_tokens_kernel's 128-thread CTAs (about ten a SM) aim
  // at 2048 with 4; its split would give this launch several waves of token CTAs (1088 at 64 new
  // tokens, G 16), each paying the token's lookups and RoPE angles.
  q.token_slices =
      append_tokens ? append_head_slices(a.batch.tokens, a.nsa.heads_q + a.nsa.heads_kv, 8, kWaveCtas) : 0;
  const long long ctas = q.row_ctas * a.nsa.heads_kv * 2 + a.batch.tokens * q.token_slices;
  if (ctas > 0x7fffffffLL)
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "q: nsa_decode: " + std::to_string(a.batch.tokens) + " tokens exceed the grid limit");
  const std::size_t smem = window_smem_bytes(a.nsa.cmp_len, a.dim_qk, a.dim_v);
  return common::dispatch_dtype("nsa_decode", "k", dtype, [&]<class Element>() -> Status {
    return launch_compression<&compress_append_kernel<Element>>("compress_append_kernel",
                                                                static_cast<unsigned>(ctas), smem, stream, q);
  });
}

}  // namespace fsa::cuda::decode
