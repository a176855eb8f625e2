// Backward of selected attention in the FSA (KV-outer) loop order, over the all-pairs plan.
//
// 1. delta: delta[h, t] = rowsum(o * d_o) in fp32, one warp per (token, head).
// 2. Main kernel: one CTA per (run of units_per_cta work units of one list, 64-key tile of the
//    list's block; B = 128 takes two tiles, B = 32 masks the tile's second half). The runs are
//    numbered by their group index (slc_params.hpp), listed first by slc_bwd_runs_kernel: a grid
//    over every unit, with all but each run's first CTA exiting, spent ~3 of 4 CTA slots on CTAs
//    that did nothing. The tile's K and V stay in shared memory while the CTA walks the run's rows
//    (tokens of the block's list x the G heads, gathered through pair_token) in chunks, with the
//    register-resident mma.sync core of the masked flash-attention backward
//    (flash/flash_bwd_chunk.cuh): each row sees the keys of the block up to its own token. dK / dV
//    stay in registers across the run. On Hopper, at Dqk = Dv in {64, 128},
//    slc_bwd_sm90_kernel.cuh does the same with warpgroup MMAs and 64-row chunks; both take their
//    runs and row tables from slc_bwd_run.cuh.
//    dQ, two sinks (the host picks, slc_attn.cu):
//    - slots: dQ of each (row, slot) pair is stored in its own slot of dq_part (input dtype, one
//      writer), and a reduction kernel adds each row's slots in ascending slot order (fp32) into
//      dq: rows of tokens far apart are not read and rewritten in DRAM at every pair;
//    - atomics: added to the fp32 dq accumulator by 16-byte atomics after each chunk, cheaper
//      while the accumulator's rows stay in L2.
//    - default: dK / dV by 16-byte fp32 atomics at each CTA's end (several runs share a block); a
//      convert kernel writes them in the input dtype.
//    - deterministic: dK / dV in the run's own kv_part rows (plain stores), added by a reduction
//      kernel in ascending run order; the plan's lists are sorted, so every run holds the same rows
//      in the same chunks on every run. Bitwise reproducible; costs kv_part (slc_params.hpp).
// Rows whose lse is not finite (empty key set) get zero gradients, as in the reference.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "cuda/runtime.hpp"
#include "kernels/common/dispatch_table.hpp"
#include "kernels/common/fragment_atomic.cuh"
#include "kernels/common/dispatch_table.hpp"
#include "kernels/common/tile_copy.cuh"
#include "kernels/flash/flash_bwd_chunk.cuh"
#include "kernels/flash/flash_bwd_rows.cuh"
#include "kernels/slc_attn/slc_bwd_launch.hpp"
#include "kernels/slc_attn/slc_bwd_run.cuh"
#include "kernels/slc_attn/slc_bwd_sm90_kernel.cuh"
#include "kernels/slc_attn/slc_common.cuh"
#include "kernels/slc_attn/slc_params.hpp"

namespace fsa::cuda::slc {

// 64 keys (B = 64, the common block) with 8 warps and chunks of 32 rows. Two CTAs per SM where
// registers allow it (head dims <= 128: 128 registers, ~82 KB of shared memory at 128/128).
template <class Element, int kDqk, int kDv>
using SlcBwdTraits = flash::BwdTraits<Element, kDqk, kDv, 64, 32>;
template <int kDqk, int kDv>
constexpr int kSlcBwdMinBlocks = (kDqk > kDv ? kDqk : kDv) <= 128 ? 2 : 1;

// The delta, convert and reduction kernels are shaped like the flash backward's row kernels.
using flash::kRowThreads;
using flash::row_ctas;
using flash::store4;

// One warp per (token, head) row: delta = rowsum(o * d_o) in fp32.
template <class Element, int kDv>
__global__ void __launch_bounds__(kRowThreads) slc_bwd_delta_kernel(const __grid_constant__ SlcBackwardParams p) {
  flash::delta_rows<Element, kDv>(p.o, p.o_token_stride, p.o_head_stride, p.d_o, p.do_token_stride, p.do_head_stride,
                                  p.plan.shape.tokens, p.in.heads_q, p.delta);
}

// One thread per list: run_unit[group] = the run's first unit, for each run of the list (the
// caller set run_unit to -1 first). A template only so that every instantiation file may define it.
template <bool kDeterministic>
__global__ void __launch_bounds__(kRowThreads) slc_bwd_runs_kernel(const __grid_constant__ SlcBackwardParams p) {
  const long long lists = p.plan.shape.num_lists();
  const int U = p.units_per_cta;
  for (long long s = static_cast<long long>(blockIdx.x) * kRowThreads + threadIdx.x; s < lists;
       s += static_cast<long long>(gridDim.x) * kRowThreads) {
    const int first = p.plan.unit_offsets[s], units = p.plan.unit_offsets[s + 1] - first;
    const long long group0 = first / U + s;
    for (int run = 0; run * U < units; ++run) p.run_unit[group0 + run] = first + run * U;
  }
}

template <class Element, int kDqk, int kDv, bool kDeterministic, bool kDqSlots>
__global__ void __launch_bounds__(SlcBwdTraits<Element, kDqk, kDv>::kThreads, kSlcBwdMinBlocks<kDqk, kDv>)
    slc_bwd_kernel(const __grid_constant__ SlcBackwardParams p) {
  using T = SlcBwdTraits<Element, kDqk, kDv>;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(16) flash::BwdRowTable<T::kRowChunk> tab[2];  // per copy stage
  // The run, in shared memory rather than registers: the kernel is at its 128-register cap at
  // D = 128 (the atomic variant spilled with the epilogue's key row kept in registers).
  __shared__ RunRows run_shared;
  __shared__ RunTable<kSlcBwdRunEntries<kDeterministic>> table;
  // Each chunk row's lse and delta as copied (cp.async, with the row's Q / dO); the row's first
  // thread turns them into its row table entry once its copies have landed.
  __shared__ float raw_lse[2][T::kRowChunk], raw_delta[2][T::kRowChunk];

  RunRows run;
  int key0;  // local position of the tile's first key
  if (!begin_run<T::kKeys>(p, T::kRowChunk, run, key0, table)) return;
  if (threadIdx.x == 0) run_shared = run;
  const int G = p.plan.shape.group;
  const long long key_token = run.seq_start + key0;
  const int keys = run.keys;
  const auto* k =
      static_cast<const Element*>(p.in.k) + key_token * p.in.k_token_stride + run.kv_head * p.in.k_head_stride;
  const auto* v =
      static_cast<const Element*>(p.in.v) + key_token * p.in.v_token_stride + run.kv_head * p.in.v_head_stride;
  common::copy_tile_async<T::kKeys, kDqk, T::kThreads>(
      reinterpret_cast<Element*>(smem + T::kKOffset), T::kLdQk,
      [&](int r) -> const Element* { return r < keys ? k + r * p.in.k_token_stride : nullptr; });
  common::copy_tile_async<T::kKeys, kDv, T::kThreads>(
      reinterpret_cast<Element*>(smem + T::kVOffset), T::kLdV,
      [&](int r) -> const Element* { return r < keys ? v + r * p.in.v_token_stride : nullptr; });
  __syncthreads();  // the run table and run_shared

  // Chunk c into stage `stage`: thread i takes row i / kThreadsPerRow of the chunk; the row's first
  // thread also copies its lse and delta.
  const auto* q = static_cast<const Element*>(p.in.q);
  const auto* d_o = static_cast<const Element*>(p.d_o);
  auto load_chunk = [&](int c, int stage, const RunRows& rows) {
    const int r = threadIdx.x / T::kThreadsPerRow, part = threadIdx.x % T::kThreadsPerRow;
    const RunRow row = run_row(rows, table, G, rows.row_begin + c * T::kRowChunk + r);
    flash::bwd_copy_row<T, Element>(smem, stage, r, part, row.valid,
                                    q + row.token * p.in.q_token_stride + row.head * p.in.q_head_stride,
                                    d_o + row.token * p.do_token_stride + row.head * p.do_head_stride);
    if (part == 0 && row.valid) copy_row_stats(p, row, &raw_lse[stage][r], &raw_delta[stage][r]);
  };
  // The row table entry of chunk c's row r, on the row's first thread once its copies landed.
  auto set_row = [&](int c, int stage, const RunRows& rows) {
    const int r = threadIdx.x / T::kThreadsPerRow;
    if (threadIdx.x % T::kThreadsPerRow != 0) return;
    const RunRow row = run_row(rows, table, G, rows.row_begin + c * T::kRowChunk + r);
    const RowEntry e = row_entry<kDqk, kDqSlots>(p, rows, table, row, raw_lse[stage][r], raw_delta[stage][r]);
    tab[stage].set(r, 0, e.hi, e.lse, e.delta, e.dq);
  };
  load_chunk(0, 0, run);
  common::cp_async_commit();  // K, V and chunk 0
  common::cp_async_wait<0>();
  set_row(0, 0, run);

  const float scale_log2 = p.in.scale * kBwdLog2e;
  float acc[T::kMaxD / 8][4];  // dV (P warps, kDv columns) or dK (dS warps, kDqk columns)
  common::zero_acc<T::kMaxD>(acc);
  for (int c = 0;; ++c) {  // run.chunks >= 1: a unit has at least one row
    const int stage = c & 1;
    // Chunk c's copies and table have landed for every thread; every warp is done with chunk c - 1.
    __syncthreads();
    const bool more = c + 1 < run_shared.chunks;
    if (more) load_chunk(c + 1, stage ^ 1, run_shared);
    common::cp_async_commit();
    if constexpr (kDqSlots)
      flash::bwd_chunk<T, Element, flash::DqSink::kStoreElement>(acc, smem, stage, tab[stage], key0, scale_log2,
                                                                 p.in.scale, p.dq_part);
    else
      flash::bwd_chunk<T, Element>(acc, smem, stage, tab[stage], key0, scale_log2, p.in.scale, p.dq_accum);
    if (!more) break;
    common::cp_async_wait<0>();  // this thread's copies of chunk c + 1 (tab[stage ^ 1] was chunk c - 1's)
    set_row(c + 1, stage ^ 1, run_shared);
  }

  // This warp's dK (times scale) or dV partial: atomics into the accumulators (row = key token x
  // Hkv + g), or stores into the run's kv_part rows [B][Dqk | Dv].
  const bool ds_warp = flash::bwd_is_ds_warp<T>();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int key = flash::bwd_key_row0<T>() + threadIdx.x % 32 / 4 + 8 * h;
    const bool active = key < run_shared.keys;
    if constexpr (kDeterministic) {
      // The run's rows of kv_part: its group index (blockIdx.x) x B, from the tile's first key.
      const long long first = static_cast<long long>(blockIdx.x) * p.plan.shape.block_size + blockIdx.y * T::kKeys;
      float* row = p.kv_part + (first + (active ? key : 0)) * (kDqk + kDv);
      if (ds_warp) common::store_fragment_row<kDqk>(row, acc, h, p.in.scale, active);
      else common::store_fragment_row<kDv>(row + kDqk, acc, h, 1.0f, active);
    } else {
      const long long kv_row =
          (run_shared.seq_start + key0 + (active ? key : 0)) * p.plan.shape.heads_kv + run_shared.kv_head;
      if (ds_warp) common::atomic_add_fragment_row<kDqk>(p.dk_accum + kv_row * kDqk, acc, h, p.in.scale, active);
      else common::atomic_add_fragment_row<kDv>(p.dv_accum + kv_row * kDv, acc, h, 1.0f, active);
    }
  }
}

// Default mode: the fp32 accumulators into the outputs; blockIdx.y picks dk, dv (kv_tokens key
// rows, with kSlcBwdFinishKv) or, for the atomic dq sink, dq (the plan's tokens, with kSlcBwdChunk).
template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(kRowThreads) slc_bwd_convert_kernel(const __grid_constant__ SlcBackwardParams p) {
  const int hkv = p.plan.shape.heads_kv;
  const long long step = static_cast<long long>(gridDim.x) * kRowThreads;
  const long long first = static_cast<long long>(blockIdx.x) * kRowThreads + threadIdx.x;
  if (blockIdx.y == 2) {
    if ((p.steps & kSlcBwdChunk) == 0 || p.dq_part != nullptr) return;
    flash::convert_rows<Element, kDqk>(p.dq_accum, p.dq, p.dq_token_stride, p.dq_head_stride, p.plan.shape.tokens,
                                       p.in.heads_q, first, step);
  } else if ((p.steps & kSlcBwdFinishKv) == 0) {
    return;
  } else if (blockIdx.y == 0) {
    flash::convert_rows<Element, kDqk>(p.dk_accum, p.dk, p.dk_token_stride, p.dk_head_stride, p.kv_tokens, hkv, first,
                                       step);
  } else {
    flash::convert_rows<Element, kDv>(p.dv_accum, p.dv, p.dv_token_stride, p.dv_head_stride, p.kv_tokens, hkv, first,
                                      step);
  }
}

// dq: row (t, h) is the sum of its pairs' slots in ascending slot order, each over the planes in
// order (rows without pairs: zeros). One thread per 8 columns (16-byte loads); the slots are read in
// batches whose loads are all issued before the first add (the loop over a row's pairs one load at
// a time left the kernel latency-bound, ~2.5 TB/s on H100).
// kPlanes: ceil(B / 64), 1 or 2 (a template argument: a batch holds 8 vectors of 8 floats in registers).
template <class Element, int kDqk, int kPlanes>
__global__ void __launch_bounds__(kRowThreads) slc_bwd_reduce_dq_kernel(const __grid_constant__ SlcBackwardParams p) {
  constexpr int kVectors = kDqk / 8;
  constexpr int kBatch = 8 / kPlanes;  // slots per batch
  const long long n = p.plan.shape.tokens;
  const int hq = p.in.heads_q, width = p.plan.shape.width, G = p.plan.shape.group;
  const long long plane = n * hq * width * kDqk;
  const long long vectors = n * hq * kVectors;
  for (long long idx = static_cast<long long>(blockIdx.x) * kRowThreads + threadIdx.x; idx < vectors;
       idx += static_cast<long long>(gridDim.x) * kRowThreads) {
    const long long row = idx / kVectors;  // t * Hq + h
    const int d = static_cast<int>(idx % kVectors) * 8;
    const long long t = row / hq;
    const int h = static_cast<int>(row - t * hq);
    const std::uint64_t slots = p.plan.slot_mask[(h / G) * n + t];
    const Element* part = static_cast<const Element*>(p.dq_part) + row * width * kDqk + d;
    float sum[8] = {};
    for (int first = 0; first < width; first += kBatch) {
      float x[kBatch][kPlanes][8];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const bool used = first + b < width && ((slots >> (first + b)) & 1) != 0;
#pragma unroll
        for (int y = 0; y < kPlanes; ++y)
          if (used) load_vector<Element, 8>(part + y * plane + (first + b) * kDqk, x[b][y]);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (first + b >= width || ((slots >> (first + b)) & 1) == 0) continue;
#pragma unroll
        for (int y = 0; y < kPlanes; ++y)
#pragma unroll
          for (int c = 0; c < 8; ++c) sum[c] += x[b][y][c];
      }
    }
    store_vector<Element, 8>(static_cast<Element*>(p.dq) + t * p.dq_token_stride + h * p.dq_head_stride + d, sum);
  }
}

// Deterministic mode, dk and dv: key token t of kv head g (block j of its sequence, list s) is the
// sum of the kv_part rows of the list's runs in ascending order (tokens past the last sequence:
// zeros). One thread per 4 columns of [dK | dV].
template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(kRowThreads) slc_bwd_reduce_kv_kernel(const __grid_constant__ SlcBackwardParams p) {
  constexpr int kQuads = (kDqk + kDv) / 4;
  const SlcPlanShape& shape = p.plan.shape;
  const long long n = shape.tokens;
  const int hkv = shape.heads_kv, B = shape.block_size, U = p.units_per_cta;
  const long long total = p.in.cu_seqlens[shape.num_seqs * p.in.cu_stride];
  const int max_blocks = static_cast<int>(shape.max_blocks());
  const long long quads = n * hkv * kQuads;
  for (long long idx = static_cast<long long>(blockIdx.x) * kRowThreads + threadIdx.x; idx < quads;
       idx += static_cast<long long>(gridDim.x) * kRowThreads) {
    const long long row = idx / kQuads;  // t * Hkv + g
    const int d = static_cast<int>(idx % kQuads) * 4;
    const long long t = row / hkv;
    const int g = static_cast<int>(row - t * hkv);
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (t < total) {
      const int b = upper_index(p.in.cu_seqlens, p.in.cu_stride, shape.num_seqs, t);
      const long long local = t - p.in.cu_seqlens[b * p.in.cu_stride];
      const int s = g * max_blocks + p.plan.block_offsets[b] + static_cast<int>(local / B);
      const int first = p.plan.unit_offsets[s], units = p.plan.unit_offsets[s + 1] - first;
      const long long base = first / U + s;
      for (int i = 0; i < (units + U - 1) / U; ++i) {
        const float4 x = *reinterpret_cast<const float4*>(p.kv_part + ((base + i) * B + local % B) * (kDqk + kDv) + d);
        sum.x += x.x;
        sum.y += x.y;
        sum.z += x.z;
        sum.w += x.w;
      }
    }
    if (d < kDqk) store4(static_cast<Element*>(p.dk) + t * p.dk_token_stride + g * p.dk_head_stride + d, sum);
    else store4(static_cast<Element*>(p.dv) + t * p.dv_token_stride + g * p.dv_head_stride + d - kDqk, sum);
  }
}

// Sets the kernel's dynamic shared memory (checked against the device's limit with its static
// part) and the carveout.
template <auto kKernel>
Status set_smem(std::size_t dynamic_bytes, int kDqk, int kDv) {
  int device = 0, smem_limit = 0;
  FSA_CUDA_CHECK(cudaGetDevice(&device));
  FSA_CUDA_CHECK(cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes attributes{};
  FSA_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kKernel));
  if (dynamic_bytes + attributes.sharedSizeBytes > static_cast<std::size_t>(smem_limit))
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "slc_attn_backward: head dims " + std::to_string(kDqk) + "/" + std::to_string(kDv) + " need " +
                         std::to_string(dynamic_bytes + attributes.sharedSizeBytes) +
                         " bytes of shared memory per CTA, the device offers " + std::to_string(smem_limit));
  FSA_CUDA_CHECK(
      cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dynamic_bytes)));
  FSA_CUDA_CHECK(
      cudaFuncSetAttribute(kKernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  return Status::ok();
}

template <class Element, int kDqk, int kDv, bool kDeterministic, bool kDqSlots>
Status launch_main(const SlcBackwardParams& p, cudaStream_t stream) {
  if (p.units_per_cta < 1 || p.units_per_cta * SlcPlanShape::kRowsPerUnit + 1 > kSlcBwdRunEntries<kDeterministic>)
    return FSA_ERROR(StatusCode::kInternal, "slc_attn_backward: units_per_cta " + std::to_string(p.units_per_cta) +
                                                " exceeds the run table of the main kernel");
  const long long runs = slc_bwd_kv_groups(p.plan.shape, p.units_per_cta);
  FSA_CUDA_CHECK(cudaMemsetAsync(p.run_unit, 0xff, static_cast<std::size_t>(runs) * sizeof(std::int32_t), stream));
  slc_bwd_runs_kernel<kDeterministic><<<row_ctas(p.plan.shape.num_lists()), kRowThreads, 0, stream>>>(p);
  FSA_CHECK_LAUNCH("slc_bwd_runs_kernel", stream);
  const dim3 grid(static_cast<unsigned>(runs), static_cast<unsigned>(slc_bwd_planes(p.plan.shape)));
  // Hopper: the wgmma kernel where it serves the head dims (both kernels take the same grid).
  using Sm90 = SlcBwdSm90Traits<kDqk, kDv>;
  if constexpr (Sm90::kSupported) {
    constexpr auto kSm90Kernel = slc_bwd_sm90_kernel<Element, kDqk, kDv, kDeterministic, kDqSlots>;
    if (p.arch == common::KernelArch::kSm90a) {
      FSA_RETURN_IF_ERROR(set_smem<kSm90Kernel>(Sm90::kSmemBytes, kDqk, kDv));
      kSm90Kernel<<<grid, Sm90::kThreads, Sm90::kSmemBytes, stream>>>(p);
      FSA_CHECK_LAUNCH("slc_bwd_sm90_kernel", stream);
      return Status::ok();
    }
  }
  using T = SlcBwdTraits<Element, kDqk, kDv>;
  constexpr auto kKernel = slc_bwd_kernel<Element, kDqk, kDv, kDeterministic, kDqSlots>;
  FSA_RETURN_IF_ERROR(set_smem<kKernel>(T::kSmemBytes, kDqk, kDv));
  kKernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  FSA_CHECK_LAUNCH("slc_bwd_kernel", stream);
  return Status::ok();
}

}  // namespace fsa::cuda::slc

namespace fsa::cuda {

// dq_part (slots) or dq_accum (atomics) set, and dk_accum / dv_accum (default) or kv_part
// (deterministic, with dq_part); accumulators are zeroed here, partials are written before they are
// read. units_per_cta must match the kv_part sizing.
template <class Element, int kDqk, int kDv>
Status launch_slc_backward(const SlcBackwardParams& p, cudaStream_t stream) {
  const SlcPlanShape& shape = p.plan.shape;
  const int B = shape.block_size;
  FSA_RETURN_IF_ERROR(common::check_block_size("slc_attn_backward", B));
  const long long n = shape.tokens, hq = p.in.heads_q, hkv = shape.heads_kv;
  if (n == 0 || hq == 0) return Status::ok();
  const bool deterministic = p.kv_part != nullptr, dq_slots = p.dq_part != nullptr;
  if (deterministic && !dq_slots)
    return FSA_ERROR(StatusCode::kInternal, "slc_attn_backward: the deterministic mode needs the dq slots");
  const long long units = shape.max_units();
  if (units > INT_MAX)
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "slc_attn_backward: " + std::to_string(units) + " work units exceed the grid limit");

  const int steps = p.steps;
  if (deterministic && steps != (kSlcBwdZeroKv | kSlcBwdChunk | kSlcBwdFinishKv))
    return FSA_ERROR(StatusCode::kInternal, "slc_attn_backward: the deterministic mode runs in one launch");
  const long long kv_rows = p.kv_tokens;
  if (!deterministic && (steps & kSlcBwdZeroKv) != 0) {
    FSA_CUDA_CHECK(cudaMemsetAsync(p.dk_accum, 0, static_cast<std::size_t>(kv_rows * hkv * kDqk) * sizeof(float), stream));
    FSA_CUDA_CHECK(cudaMemsetAsync(p.dv_accum, 0, static_cast<std::size_t>(kv_rows * hkv * kDv) * sizeof(float), stream));
  }
  if ((steps & kSlcBwdChunk) != 0) {
    if (!dq_slots)
      FSA_CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, static_cast<std::size_t>(n * hq * kDqk) * sizeof(float), stream));
    slc::slc_bwd_delta_kernel<Element, kDv><<<slc::row_ctas(n * hq * 32), slc::kRowThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("slc_bwd_delta_kernel", stream);
    if (units > 0) {
      if (deterministic) {
        FSA_RETURN_IF_ERROR((slc::launch_main<Element, kDqk, kDv, true, true>(p, stream)));
      } else if (dq_slots) {
        FSA_RETURN_IF_ERROR((slc::launch_main<Element, kDqk, kDv, false, true>(p, stream)));
      } else {
        FSA_RETURN_IF_ERROR((slc::launch_main<Element, kDqk, kDv, false, false>(p, stream)));
      }
    }
    if (dq_slots) {
      const unsigned ctas = slc::row_ctas(n * hq * kDqk / 8);
      if (slc_bwd_planes(shape) == 1)
        slc::slc_bwd_reduce_dq_kernel<Element, kDqk, 1><<<ctas, slc::kRowThreads, 0, stream>>>(p);
      else
        slc::slc_bwd_reduce_dq_kernel<Element, kDqk, 2><<<ctas, slc::kRowThreads, 0, stream>>>(p);
      FSA_CHECK_LAUNCH("slc_bwd_reduce_dq_kernel", stream);
    }
  }
  if (deterministic) {
    slc::slc_bwd_reduce_kv_kernel<Element, kDqk, kDv>
        <<<slc::row_ctas(n * hkv * (kDqk + kDv) / 4), slc::kRowThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("slc_bwd_reduce_kv_kernel", stream);
    return Status::ok();
  }
  // One conversion launch for what this launch finishes: dq (atomic sink) and / or dk, dv.
  const bool convert_dq = (steps & kSlcBwdChunk) != 0 && !dq_slots;
  const bool convert_kv = (steps & kSlcBwdFinishKv) != 0;
  const long long largest_quads =
      std::max(convert_dq ? n * hq * kDqk : 0LL, convert_kv ? kv_rows * hkv * std::max(kDqk, kDv) : 0LL) / 4;
  if (largest_quads > 0) {
    slc::slc_bwd_convert_kernel<Element, kDqk, kDv>
        <<<dim3(slc::row_ctas(largest_quads), convert_dq ? 3 : 2), slc::kRowThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("slc_bwd_convert_kernel", stream);
  }
  return Status::ok();
}

}  // namespace fsa::cuda
