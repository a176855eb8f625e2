// A long prefill chunk's keys out of the paged cache into contiguous rows (GatherParams in
// decode_params.hpp), so that its compressed attention, selection and window run in the training's
// kernels as they run for training, with the queries after each sequence's prefix.
//
// Why a copy: the training kernels reading the pages through the tables (a table load and page
// arithmetic per key row of every key tile, in kernels tuned for contiguous rows) took 1.7x the
// training's time for the compressed branch and 1.6x for the window (H100, S64-G4 in four chunks);
// the copy reads each key once per call, a few megabytes (the compressed prefix: 8 MB a sequence
// at 64K tokens, Hkv 4, D 128), where the branches read each key once per query tile.
//
// One CTA takes kGatherRows rows of one sequence's compressed tokens (blockIdx.z 0) or window keys
// (blockIdx.z 1) per pass: their pages located once per row into shared memory, then every head's
// K and V vectors copied by all threads. The sequence's first CTA writes where its rows are.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/runtime.hpp"
#include "kernels/common/launch_checks.hpp"
#include "kernels/decode/decode.hpp"
#include "kernels/decode/decode_paged.cuh"
#include "kernels/decode/decode_tiling.hpp"

namespace fsa::cuda::decode {

namespace {

constexpr int kThreads = 256;
constexpr int kGatherRows = 16;            // rows a CTA copies per pass
constexpr long long kGatherTargetCtas = 2048;  // CTAs of a launch to aim at, both branches

template <class Element>
__global__ void __launch_bounds__(kThreads) gather_keys_kernel(const __grid_constant__ GatherParams p) {
  const int b = blockIdx.y;
  const bool compressed = blockIdx.z == 0;
  const SeqInfo seq = seq_info(p.batch, b);
  const GatheredRange range = gathered_range(p, b, seq.row0, seq.new_tokens, seq.cached, compressed);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    if (compressed) {
      p.prefix[b] = static_cast<std::int32_t>(range.prefix);
      p.cmp_base[b] = static_cast<std::int32_t>(range.dst0);
    } else {
      p.win_base[b] = static_cast<std::int32_t>(range.dst0 - range.first);
    }
  }
  const PagedPool k_pool = compressed ? p.k_cmp_pages : p.k_pages;
  const PagedPool v_pool = compressed ? p.v_cmp_pages : p.v_pages;
  const PageTable table = compressed ? p.cmp_block_table : p.block_table;
  auto* k_dst = static_cast<Element*>(compressed ? p.k_cmp : p.k_win);
  auto* v_dst = static_cast<Element*>(compressed ? p.v_cmp : p.v_win);
  const int hkv = p.nsa.heads_kv, k_vectors = p.dim_qk / 8, v_vectors = p.dim_v / 8;
  const int head_vectors = k_vectors + v_vectors, row_vectors = hkv * head_vectors;
  __shared__ PageRow located[kGatherRows];
  const long long count = range.end - range.first;
  for (long long r0 = static_cast<long long>(blockIdx.x) * kGatherRows; r0 < count;
       r0 += static_cast<long long>(gridDim.x) * kGatherRows) {
    const int rows = static_cast<int>(min(static_cast<long long>(kGatherRows), count - r0));
    __syncthreads();  // the previous pass's copies read `located`
    if (threadIdx.x < rows) located[threadIdx.x] = locate(table, k_pool, b, range.first + r0 + threadIdx.x);
    __syncthreads();
    for (int i = threadIdx.x; i < rows * row_vectors; i += kThreads) {
      const int r = i / row_vectors, in_row = i % row_vectors;
      const int h = in_row / head_vectors, vec = in_row % head_vectors;
      const long long dst_row = range.dst0 + r0 + r;
      const bool value = vec >= k_vectors;
      const Element* src =
          value ? pool_row<const Element>(v_pool, located[r], h) : pool_row<const Element>(k_pool, located[r], h);
      Element* dst = value ? v_dst + (dst_row * hkv + h) * p.dim_v : k_dst + (dst_row * hkv + h) * p.dim_qk;
      const int column = (value ? vec - k_vectors : vec) * 8;
      *reinterpret_cast<uint4*>(dst + column) =
          src != nullptr ? *reinterpret_cast<const uint4*>(src + column) : make_uint4(0, 0, 0, 0);
    }
  }
}

}  // namespace

Status launch_gather_keys(const GatherParams& p, DType dtype, cudaStream_t stream) {
  if (p.batch.num_seqs == 0) return Status::ok();
  const long long rows = std::max(p.cmp_slot, p.window_slot + p.batch.tokens);
  const long long per_seq = std::max(1LL, kGatherTargetCtas / (2LL * p.batch.num_seqs));
  const long long chunks = std::max(1LL, std::min((rows + kGatherRows - 1) / kGatherRows, per_seq));
  if (p.batch.num_seqs > 65535)
    return FSA_ERROR(StatusCode::kNotImplemented, "cu_seqlens: nsa_prefill gathers the keys of at most 65535 "
                                                  "sequences a call, got " + std::to_string(p.batch.num_seqs));
  return common::dispatch_dtype("nsa_prefill", "k", dtype, [&]<class Element>() -> Status {
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(p.batch.num_seqs), 2);
    gather_keys_kernel<Element><<<grid, kThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("gather_keys_kernel", stream);
    return Status::ok();
  });
}

}  // namespace fsa::cuda::decode
