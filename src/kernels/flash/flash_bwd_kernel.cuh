// Backward of the masked flash attention (flash_params.hpp), KV-outer with the rows of every key
// tile split over several CTAs (flash_split.hpp).
//
// 1. delta = rowsum(o * d_o) (flash_bwd_rows.cuh); the fp32 dq / dk / dv accumulators are zeroed.
// 2. Main kernel: one CTA per (tile of kKeys keys of one sequence, kv head g, block of query rows).
//    The tile's K and V stay in shared memory; the CTA walks its block of rows (packed tokens x G
//    heads) in chunks through flash_bwd_chunk.cuh, dQ added to the dq accumulator with 16-byte fp32
//    atomics after each chunk. At the end the CTA adds its dK (times scale) / dV partial to the dk /
//    dv accumulators the same way. Rows with a non-finite lse (they see nothing) and padding rows
//    contribute nothing.
// 3. finish: accumulators -> dq / dk / dv in the input dtype (key rows past key_base[nseq] were
//    never added to: zeros).
//
// Tiles and registers: BwdTraits (flash_bwd_chunk.cuh).
#pragma once

#include <string>

#include "cuda/runtime.hpp"
#include "kernels/common/fragment_atomic.cuh"
#include "kernels/common/dispatch_table.hpp"
#include "kernels/common/tile_copy.cuh"
#include "kernels/flash/flash_bwd_block.cuh"
#include "kernels/flash/flash_bwd_chunk.cuh"
#include "kernels/flash/flash_bwd_sm90_kernel.cuh"
#include "kernels/flash/flash_bwd_rows.cuh"
#include "kernels/flash/flash_mask.cuh"
#include "kernels/flash/flash_params.hpp"
#include "kernels/flash/flash_softmax.cuh"
#include "kernels/flash/flash_tiles.cuh"
#include "kernels/flash/flash_split.hpp"

namespace fsa::cuda::flash {

// What a CTA of the main kernel knows about its rows and keys.
struct CtaRows {
  long long token_base;  // global token of the block's first row
  long long seq_start;   // global token of the sequence's first token
  long long key_row;     // key row of the tile's first key
  int first_in_group;    // head of the block's first row within its group
  int block_rows, chunks, keys;
  int rotation;          // chunk_rotation: step c walks chunk (c + rotation) mod chunks
};

template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(BwdTraits<Element, kDqk, kDv>::kThreads, 1)
    flash_bwd_kernel(const __grid_constant__ FlashParams p) {
  using T = BwdTraits<Element, kDqk, kDv>;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(16) BwdRowTable<T::kRowChunk> tab[2];  // per copy stage; dq: offset in dq_accum

  const int g = blockIdx.y, G = p.group;
  const BwdBlock work = backward_block<T::kKeys>(p);
  if (!work.valid) return;
  const long long seq_start = work.seq_start, key_start = work.key_start;
  const long long row_first = work.row_first, row_end = work.row_end;
  const int key0 = work.key0, keys = work.keys;  // the tile: local keys [key0, key0 + keys)
  // Rows are addressed by their offset x from row_first (x < split_rows < 2^31): row_first + x is
  // global token token_base + (first_in_group + x) / G, head g*G + (first_in_group + x) % G
  // (32-bit divisions: 64-bit ones cost registers this kernel does not have). The loop reads these
  // and the epilogue's values from shared memory (published by its first barrier), not registers:
  // the kernel is at its 128-register cap.
  __shared__ CtaRows cta_shared;
  CtaRows cta;
  cta.token_base = seq_start + row_first / G;
  cta.seq_start = seq_start;
  cta.key_row = key_start + key0;
  cta.first_in_group = static_cast<int>(row_first % G);
  cta.block_rows = static_cast<int>(row_end - row_first);
  cta.chunks = (cta.block_rows + T::kRowChunk - 1) / T::kRowChunk;
  cta.keys = keys;
  cta.rotation = chunk_rotation(p, work, T::kRowChunk, cta.chunks);
  if (threadIdx.x == 0) cta_shared = cta;

  auto* k_s = reinterpret_cast<Element*>(smem + T::kKOffset);
  auto* v_s = reinterpret_cast<Element*>(smem + T::kVOffset);

  const auto* k = static_cast<const Element*>(p.k) + (key_start + key0) * p.k_row_stride + g * p.k_head_stride;
  const auto* v = static_cast<const Element*>(p.v) + (key_start + key0) * p.v_row_stride + g * p.v_head_stride;
  common::copy_tile_async<T::kKeys, kDqk, T::kThreads>(
      k_s, T::kLdQk, [&](int r) -> const Element* { return r < keys ? k + r * p.k_row_stride : nullptr; });
  common::copy_tile_async<T::kKeys, kDv, T::kThreads>(
      v_s, T::kLdV, [&](int r) -> const Element* { return r < keys ? v + r * p.v_row_stride : nullptr; });

  // Chunk c into stage `stage`: thread i takes row i / kThreadsPerRow of the chunk, with one
  // division for its Q and dO vectors and, on the row's first thread, its row table entry.
  const auto* q = static_cast<const Element*>(p.q);
  const auto* d_o = static_cast<const Element*>(p.d_o);
  auto load_chunk = [&](int c, int stage, const CtaRows& rows) {
    const int r = threadIdx.x / T::kThreadsPerRow, part = threadIdx.x % T::kThreadsPerRow;
    const int walked = c + rows.rotation;
    const int x = (walked < rows.chunks ? walked : walked - rows.chunks) * T::kRowChunk + r;
    const int y = rows.first_in_group + x;
    const long long token = rows.token_base + y / G;
    const int head = g * G + y % G;
    const bool valid = x < rows.block_rows;
    bwd_copy_row<T, Element>(smem, stage, r, part, valid, q + token * p.q_token_stride + head * p.q_head_stride,
                             d_o + token * p.do_token_stride + head * p.do_head_stride);
    if (part == 0) {
      int lo = 0, hi = 0;
      float lse = 0.0f, delta = 0.0f;
      long long dq = -1;
      if (valid) {
        const float row_lse_value = p.lse[head * p.lse_head_stride + token * p.lse_token_stride];
        if (isfinite(row_lse_value)) {
          const KeyInterval interval = key_interval(p, token - rows.seq_start);
          lo = interval.lo;
          hi = interval.hi;
          lse = row_lse_value * kLog2e;
          delta = p.delta[head * p.tokens + token];
          dq = (token * p.heads_q + head) * kDqk;
        }
      }
      tab[stage].set(r, lo, hi, lse, delta, dq);
    }
  };
  load_chunk(0, 0, cta);
  common::cp_async_commit();  // K, V and chunk 0

  const float scale_log2 = p.scale * kLog2e;
  float acc[T::kMaxD / 8][4];  // dV (P warps, kDv columns) or dK (dS warps, kDqk columns)
  common::zero_acc<T::kMaxD>(acc);

  for (int c = 0;; ++c) {  // cta.chunks >= 1
    const int stage = c & 1;
    common::cp_async_wait<0>();  // chunk c has landed ...
    __syncthreads();             // ... for every thread's copies; every warp is done with chunk c - 1
    const bool more = c + 1 < cta_shared.chunks;
    if (more) load_chunk(c + 1, stage ^ 1, cta_shared);
    common::cp_async_commit();
    bwd_chunk<T, Element>(acc, smem, stage, tab[stage], key0, scale_log2, p.scale, p.dq_accum);
    if (!more) break;
  }

  // This warp's dK (times scale) or dV partial into the accumulators (row = key row x Hkv + g).
  const long long first_row = cta_shared.key_row * p.heads_kv + blockIdx.y;
  const bool ds_warp = bwd_is_ds_warp<T>();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int key = bwd_key_row0<T>() + threadIdx.x % 32 / 4 + 8 * h;
    const bool active = key < cta_shared.keys;
    const long long row = first_row + (active ? key : 0) * p.heads_kv;
    if (ds_warp)
      common::atomic_add_fragment_row<kDqk>(p.dk_accum + row * kDqk, acc, h, p.scale, active);
    else
      common::atomic_add_fragment_row<kDv>(p.dv_accum + row * kDv, acc, h, 1.0f, active);
  }
}

}  // namespace fsa::cuda::flash

namespace fsa::cuda {

// Zeroes the accumulators of p (fp32 workspace, shapes in flash_params.hpp), then runs delta, the
// main kernel and finish on `stream`.
template <class Element, int kDqk, int kDv>
Status launch_flash_backward(const FlashParams& params, cudaStream_t stream) {
  using T = flash::BwdTraits<Element, kDqk, kDv>;
  FlashParams p = params;
  const long long n = p.tokens, hq = p.heads_q;
  const std::size_t dq_floats = static_cast<std::size_t>(n * hq * kDqk);
  const std::size_t dk_floats = static_cast<std::size_t>(p.key_rows * p.heads_kv * kDqk);
  const std::size_t dv_floats = static_cast<std::size_t>(p.key_rows * p.heads_kv * kDv);
  if (dq_floats > 0) FSA_CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, dq_floats * sizeof(float), stream));
  if (dk_floats > 0) FSA_CUDA_CHECK(cudaMemsetAsync(p.dk_accum, 0, dk_floats * sizeof(float), stream));
  if (dv_floats > 0) FSA_CUDA_CHECK(cudaMemsetAsync(p.dv_accum, 0, dv_floats * sizeof(float), stream));
  if (n > 0 && hq > 0) {
    flash::flash_bwd_delta_kernel<Element, kDv><<<flash::row_ctas(n * hq * 32), flash::kRowThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("flash_bwd_delta_kernel", stream);
  }
  if (n > 0 && p.num_seqs > 0 && p.key_rows > 0 && p.heads_kv > 0) {
    // Hopper: the wgmma main kernel (flash_bwd_sm90_kernel.cuh) where it serves the head dims.
    using Sm90 = flash::BwdSm90Traits<Element, kDqk, kDv>;
    bool sm90 = false;
    if constexpr (Sm90::kSupported) sm90 = p.arch == common::KernelArch::kSm90a;
    const int keys_per_tile = sm90 ? Sm90::kKeys : T::kKeys;
    const flash::BackwardSplit split =
        flash::plan_backward_split(p, keys_per_tile, sm90 ? Sm90::kRowChunk : T::kRowChunk);
    p.split_rows = split.rows;
    p.split_relative = split.relative ? 1 : 0;
    p.split_period = split.period;
    const long long tiles = p.key_rows / keys_per_tile + p.num_seqs;
    if (tiles > 0x7fffffffLL || split.blocks > 65535)
      return FSA_ERROR(StatusCode::kNotImplemented, "k: " + std::to_string(tiles) + " key tiles x " +
                                                        std::to_string(split.blocks) +
                                                        " row blocks exceed the grid limits");
    const dim3 grid(static_cast<unsigned>(tiles), p.heads_kv, static_cast<unsigned>(split.blocks));
    if constexpr (Sm90::kSupported) {
      if (sm90) {
        auto* kernel = flash::flash_bwd_sm90_kernel<Element, kDqk, kDv>;
        FSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(Sm90::kSmemBytes)));
        kernel<<<grid, Sm90::kThreads, Sm90::kSmemBytes, stream>>>(p);
        FSA_CHECK_LAUNCH("flash_bwd_sm90_kernel", stream);
      }
    }
    if (!sm90) {
      auto* kernel = flash::flash_bwd_kernel<Element, kDqk, kDv>;
      FSA_CUDA_CHECK(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(T::kSmemBytes)));
      kernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
      FSA_CHECK_LAUNCH("flash_bwd_kernel", stream);
    }
  }
  const long long largest =
      std::max<long long>(n * hq * kDqk, p.key_rows * p.heads_kv * std::max(kDqk, kDv)) / 4;
  if (largest > 0) {
    flash::flash_bwd_finish_kernel<Element, kDqk, kDv><<<dim3(flash::row_ctas(largest), 3), flash::kRowThreads, 0,
                                                         stream>>>(p);
    FSA_CHECK_LAUNCH("flash_bwd_finish_kernel", stream);
  }
  return Status::ok();
}

}  // namespace fsa::cuda
