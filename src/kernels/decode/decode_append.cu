// Appending a chunk of new tokens to the paged cache (the first steps of nsa_prefill / nsa_decode):
//
//   1. stage_offsets_kernel + stage_windows_kernel (calls that compress through the training's
//      compress_forward; a decode step compresses and appends in one launch, decode_compress.cu):
//      for every sequence whose chunk completes at least one compression window, the pre-RoPE keys
//      and the values of positions [n_cmp(P) * s, P + c) are gathered into a packed staging buffer
//      (window_row, decode_append.cuh: keys before P from the key tail, values before P from the
//      value pages, the rest from the chunk). These are exactly the windows of the new compressed
//      tokens n_cmp(P) .. n_cmp(P + c) - 1, and every position before P that they need is among
//      the tail's last l positions (n_cmp(P) * s > P - l). The compression kernels
//      (kernels/compress) then run on the staged batch unchanged.
//   2. append_compressed_kernel: the new compressed keys rotated at i*s and the compressed values
//      written into their pages.
//   3. append_tokens_kernel: q rotated into the workspace, k rotated and v written into the pages,
//      and the key tail's rows of the chunk's last tail_rows positions overwritten. It runs after
//      the kernels that read the old tail (stream order).
//
// RoPE as the rope kernel (rope_angles, rotate_heads: decode_append.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cstdint>

#include "cuda/runtime.hpp"
#include "kernels/common/convert.cuh"
#include "kernels/common/dependent_launch.cuh"
#include "kernels/common/launch_checks.hpp"
#include "kernels/decode/decode.hpp"
#include "kernels/decode/decode_append.cuh"
#include "kernels/decode/decode_paged.cuh"
#include "kernels/decode/decode_tiling.hpp"

namespace fsa::cuda::decode {

namespace {

constexpr int kThreads = 128;
constexpr int kScanThreads = 256;

// cu_stage / cu_cmp_stage: exclusive prefix sums of the staged rows and compressed tokens over the
// sequences, by one CTA (the batch is at most a few thousand sequences).
__global__ void __launch_bounds__(kScanThreads) stage_offsets_kernel(const __grid_constant__ AppendParams p) {
  common::await_prior_grids();  // before any global access: launched by launch_dependent
  using Scan = cub::BlockScan<int, kScanThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  int rows_before = 0, compressed_before = 0;
  for (int base = 0; base < p.batch.num_seqs; base += kScanThreads) {
    const int b = base + static_cast<int>(threadIdx.x);
    const StagedWindows e = b < p.batch.num_seqs ? staged_windows_of(p, b) : StagedWindows{0, 0, 0};
    int rows_offset, rows_total, cmp_offset, cmp_total;
    Scan(scan_storage).ExclusiveSum(static_cast<int>(e.rows), rows_offset, rows_total);
    __syncthreads();  // the scan storage is reused
    Scan(scan_storage).ExclusiveSum(static_cast<int>(e.count), cmp_offset, cmp_total);
    __syncthreads();
    if (b < p.batch.num_seqs) {
      p.cu_stage[b] = rows_before + rows_offset;
      p.cu_cmp_stage[b] = compressed_before + cmp_offset;
    }
    rows_before += rows_total;
    compressed_before += cmp_total;
  }
  if (threadIdx.x == 0) {
    p.cu_stage[p.batch.num_seqs] = rows_before;
    p.cu_cmp_stage[p.batch.num_seqs] = compressed_before;
  }
}

// One staged row per CTA: the pre-RoPE key (tail or chunk) and the value (pages or chunk) of one
// position, all heads.
template <class Element>
__global__ void __launch_bounds__(kThreads) stage_windows_kernel(const __grid_constant__ AppendParams p) {
  common::await_prior_grids();  // before any global access: launched by launch_dependent
  const long long row = blockIdx.x;
  const int nseq = p.batch.num_seqs;
  if (row >= p.stage_rows || row >= p.cu_stage[nseq]) return;
  const int b = seq_of_row(p.cu_stage, 1, nseq, row);
  if (b < 0) return;
  const SeqInfo seq = seq_info(p.batch, b);
  const int l = p.nsa.cmp_len, s = p.nsa.cmp_stride;
  const long long position = compressed_count(seq.cached, l, s) * s + (row - p.cu_stage[b]);
  const int hkv = p.nsa.heads_kv;
  const int k_vectors = p.dim_qk / 8, v_vectors = p.dim_v / 8;
  auto* k_dst = static_cast<Element*>(p.k_stage) + row * hkv * p.dim_qk;
  auto* v_dst = static_cast<Element*>(p.v_stage) + row * hkv * p.dim_v;
  for (int h = 0; h < hkv; ++h) {
    const Element* k_src = window_row<Element>(p, b, seq, position, h, 0);
    const Element* v_src = window_row<Element>(p, b, seq, position, h, 1);
    copy_vectors(reinterpret_cast<uint4*>(k_dst + h * p.dim_qk), reinterpret_cast<const uint4*>(k_src), k_vectors,
                 threadIdx.x, kThreads);
    copy_vectors(reinterpret_cast<uint4*>(v_dst + h * p.dim_v), reinterpret_cast<const uint4*>(v_src), v_vectors,
                 threadIdx.x, kThreads);
  }
}

// One new compressed token per CTA: k~ rotated at i*s into the compressed key pages, v~ into the
// value pages.
template <class Element>
__global__ void __launch_bounds__(kThreads) append_compressed_kernel(const __grid_constant__ AppendParams p) {
  common::await_prior_grids();  // before any global access: launched by launch_dependent
  const long long row = blockIdx.x;
  const int nseq = p.batch.num_seqs;
  if (row >= p.cmp_rows || row >= p.cu_cmp_stage[nseq]) return;
  const int b = seq_of_row(p.cu_cmp_stage, 1, nseq, row);
  if (b < 0) return;
  const SeqInfo seq = seq_info(p.batch, b);
  const int l = p.nsa.cmp_len, s = p.nsa.cmp_stride, hkv = p.nsa.heads_kv;
  const long long index = compressed_count(seq.cached, l, s) + (row - p.cu_cmp_stage[b]);
  const PageRow at = locate(p.cmp_block_table, p.k_cmp_pages, b, index);
  if (at.page < 0) return;
  __shared__ float2 angles[AppendParams::kMaxPairs];
  rope_angles<kThreads>(p, index * s, angles);
  rotate_heads<kThreads, Element>(p, angles, hkv, static_cast<const Element*>(p.k_cmp_new) + row * hkv * p.dim_qk,
                                  p.dim_qk, pool_row<Element>(p.k_cmp_pages, at, 0), p.k_cmp_pages.head_stride);
  const auto* v_src = static_cast<const Element*>(p.v_cmp_new) + row * hkv * p.dim_v;
  for (int h = 0; h < hkv; ++h)
    copy_vectors(reinterpret_cast<uint4*>(pool_row<Element>(p.v_cmp_pages, at, h)),
                 reinterpret_cast<const uint4*>(v_src + h * p.dim_v), p.dim_v / 8, threadIdx.x, kThreads);
}

// One new token per CTA row (blockIdx.x), its heads split over blockIdx.y (append_token_heads,
// decode_append.cuh).
template <class Element>
__global__ void __launch_bounds__(kThreads) append_tokens_kernel(const __grid_constant__ AppendParams p) {
  __shared__ float2 angles[AppendParams::kMaxPairs];
  append_token_heads<kThreads, Element>(p, blockIdx.x, static_cast<int>(blockIdx.y), static_cast<int>(gridDim.y),
                                        angles, /*awaited=*/false);
}

// A grid of `rows` CTAs, one row each (the rows past the batch's return at once).
Status check_grid(const char* what, long long rows) {
  if (rows <= 0x7fffffffLL) return Status::ok();
  return FSA_ERROR(StatusCode::kNotImplemented,
                   std::string("q: ") + what + ": " + std::to_string(rows) + " rows exceed the grid limit");
}

}  // namespace

int append_head_slices(long long tokens, int heads, int min_heads, long long target_ctas) {
  const long long by_heads = (heads + min_heads - 1) / min_heads;
  const long long by_grid = tokens > 0 ? target_ctas / tokens : 1;
  return static_cast<int>(std::max(1LL, std::min(by_heads, by_grid)));
}

Status launch_stage_windows(const AppendParams& p, DType dtype, cudaStream_t stream) {
  if (p.batch.num_seqs == 0) return Status::ok();
  FSA_RETURN_IF_ERROR(check_grid("stage_windows", p.stage_rows));
  FSA_RETURN_IF_ERROR(
      common::launch_dependent<&stage_offsets_kernel>("stage_offsets_kernel", 1, kScanThreads, 0, stream, p));
  if (p.stage_rows == 0) return Status::ok();
  return common::dispatch_dtype("nsa_prefill", "k", dtype, [&]<class Element>() -> Status {
    return common::launch_dependent<&stage_windows_kernel<Element>>("stage_windows_kernel",
                                                                    static_cast<unsigned>(p.stage_rows), kThreads, 0,
                                                                    stream, p);
  });
}

Status launch_append_compressed(const AppendParams& p, DType dtype, cudaStream_t stream) {
  if (p.batch.num_seqs == 0 || p.cmp_rows == 0) return Status::ok();
  FSA_RETURN_IF_ERROR(check_grid("append_compressed", p.cmp_rows));
  return common::dispatch_dtype("nsa_prefill", "k", dtype, [&]<class Element>() -> Status {
    return common::launch_dependent<&append_compressed_kernel<Element>>(
        "append_compressed_kernel", static_cast<unsigned>(p.cmp_rows), kThreads, 0, stream, p);
  });
}

Status launch_append_tokens(const AppendParams& p, DType dtype, cudaStream_t stream) {
  if (p.batch.num_seqs == 0 || p.batch.tokens == 0) return Status::ok();
  FSA_RETURN_IF_ERROR(check_grid("append_tokens", p.batch.tokens));
  return common::dispatch_dtype("nsa_prefill", "q", dtype, [&]<class Element>() -> Status {
    const dim3 grid(static_cast<unsigned>(p.batch.tokens),
                    static_cast<unsigned>(append_head_slices(p.batch.tokens, p.nsa.heads_q + p.nsa.heads_kv)));
    return common::launch_dependent<&append_tokens_kernel<Element>>("append_tokens_kernel", grid, kThreads, 0, stream,
                                                                    p);
  });
}

}  // namespace fsa::cuda::decode
