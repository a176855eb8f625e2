// The launcher of the fused block selection, instantiated per (dtype, Dqk) by the generated
// instantiations/select_*.cu (tools/gen_instantiations.py); select_launch.cu calls it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "cuda/runtime.hpp"
#include "kernels/select/select_kernel.cuh"
#include "kernels/select/select_params.hpp"
#include "kernels/select/select_tiling.hpp"

namespace fsa::cuda {

// Picks the shape (sel::choose_launch_shape) knowing whether the wgmma variant runs, its layout,
// then launches one CTA per (token tile, kv head).
template <class Element, int kDqk>
Status launch_select_blocks(SelectParams p, const sel::SmemLimits& limits, cudaStream_t stream) {
  if (p.tokens == 0 || p.num_seqs == 0 || p.heads_kv == 0) return Status::ok();
  // On Hopper (the sm_90a image loaded) the two-CTA shape runs its wgmma variant.
  const bool wgmma_image = p.arch == common::KernelArch::kSm90a;
  p.shape = sel::choose_launch_shape(p.heads_used, kDqk, p.cmp_len, p.cmp_stride, p.block_size, p.topk_width,
                                     limits, wgmma_image);
  if (p.shape.tokens_per_cta == 0)
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "select_blocks: cmp_len: the per-token ring of block scores (l=" + std::to_string(p.cmp_len) +
                         ", s=" + std::to_string(p.cmp_stride) + ", B=" + std::to_string(p.block_size) +
                         ") and K=" + std::to_string(p.topk_width) + " do not fit in shared memory");
  const bool wgmma = wgmma_image && p.shape.ctas_per_sm == 2;
  p.layout = sel::SelectSmem(p.shape, kDqk, p.topk_width, wgmma);
  const sel::SelectSmem& layout = p.layout;
  auto* kernel = wgmma                      ? sel::select_blocks_kernel<Element, kDqk, 2, true>
                 : p.shape.ctas_per_sm == 2 ? sel::select_blocks_kernel<Element, kDqk, 2, false>
                                            : sel::select_blocks_kernel<Element, kDqk, 1, false>;
  FSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(layout.bytes)));
  const long long tiles = p.tokens / p.shape.tokens_per_cta + p.num_seqs;
  if (tiles > 0x7fffffffLL)
    return FSA_ERROR(StatusCode::kNotImplemented, "select_blocks: " + std::to_string(tiles) + " token tiles exceed the grid limit");
  kernel<<<dim3(static_cast<unsigned>(tiles), p.heads_kv), sel::kThreads, layout.bytes, stream>>>(p);
  FSA_CHECK_LAUNCH("select_blocks_kernel", stream);
  return Status::ok();
}

}  // namespace fsa::cuda
