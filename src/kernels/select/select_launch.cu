// Host side of the fused block selection: checks the GPU path's limits, picks the work
// decomposition and turns the runtime dtype and head dim into template arguments
// (common::dispatch_select, the one place it happens for this op). No workspace: everything but
// topk_idx stays on chip. The compressed keys are rows of k_cmp (training) or a long prefill chunk's
// compressed keys gathered out of the cache (select_blocks_prefixed).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "cuda/runtime.hpp"
#include "kernels/common/launch_checks.hpp"
#include "cuda/backend.hpp"
#include "kernels/select/select_params.hpp"
#include "kernels/select/select_tiling.hpp"

namespace fsa::cuda {

template <class Element, int kDqk>
Status launch_select_blocks(SelectParams p, const sel::SmemLimits& limits,
                            cudaStream_t stream);  // instantiations/select_*.cu

namespace {

// The launch of p (its tensors set) for a q of `dtype` and head dim `dqk`.
Status run_select(const NsaConfig& config, SelectParams p, DType dtype, std::int64_t dqk, int device) {
  if (config.topk > sel::kMaxTopk)
    return FSA_ERROR(StatusCode::kNotImplemented, "select_blocks: topk: the CUDA selection keeps at most " +
                                                      std::to_string(sel::kMaxTopk) + " blocks per token, got K=" +
                                                      std::to_string(config.topk));
  p.arch = common::kernel_arch();
  p.group = p.heads_q / p.heads_kv;
  p.heads_used = config.aggregation == ScoreAggregation::kFirstHead ? 1 : p.group;
  p.cmp_len = config.cmp_len;
  p.cmp_stride = config.cmp_stride;
  p.block_size = config.block_size;
  p.topk_width = config.topk;
  p.init_blocks = config.init_blocks;
  p.local_blocks = config.local_blocks;
  p.scale = config.softmax_scale(static_cast<int>(dqk));
  const DeviceGuard guard(device);
  int max_smem = 0, sm_smem = 0, reserved = 0;
  FSA_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  FSA_CUDA_CHECK(cudaDeviceGetAttribute(&sm_smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  FSA_CUDA_CHECK(cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device));
  const sel::SmemLimits limits =
      sel::launch_limits(static_cast<std::size_t>(max_smem), static_cast<std::size_t>(sm_smem),
                         static_cast<std::size_t>(reserved));
  cudaStream_t stream = current_stream();
  return common::dispatch_select("select_blocks", dtype, dqk, [&]<class Element, int kDqk>() {
    return launch_select_blocks<Element, kDqk>(p, limits, stream);
  });
}

// q, lse, topk_idx and the sequences (the keys are the caller's).
SelectParams query_params(const TensorView& q, const TensorView& lse_cmp, const TensorView& cu_seqlens,
                          const TensorView& topk_idx) {
  SelectParams p{};
  p.q = q.data;
  p.q_token_stride = q.stride(0);
  p.q_head_stride = q.stride(1);
  p.lse = lse_cmp.ptr<const float>();
  p.lse_head_stride = lse_cmp.stride(0);
  p.lse_token_stride = lse_cmp.stride(1);
  p.topk = topk_idx.ptr<std::int32_t>();
  p.topk_head_stride = topk_idx.stride(0);
  p.topk_token_stride = topk_idx.stride(1);
  p.cu_seqlens = cu_seqlens.ptr<const std::int32_t>();
  p.cu_stride = cu_seqlens.stride(0);
  p.num_seqs = static_cast<int>(cu_seqlens.size(0) - 1);
  p.tokens = q.size(0);
  p.heads_q = static_cast<int>(q.size(1));
  return p;
}

// The launch of p (queries set) over the compressed keys k_cmp, sequence b's at rows cu_cmp[b]....
Status run_select_over(const NsaConfig& config, SelectParams p, const TensorView& q, const TensorView& k_cmp,
                       const TensorView& cu_cmp) {
  FSA_RETURN_IF_ERROR(common::check_rows_aligned("select_blocks", {{"q", q}, {"k_cmp", k_cmp}}));
  p.k = k_cmp.data;
  p.k_row_stride = k_cmp.stride(0);
  p.k_head_stride = k_cmp.stride(1);
  p.cu_cmp = cu_cmp.ptr<const std::int32_t>();
  p.cu_cmp_stride = cu_cmp.stride(0);
  p.heads_kv = static_cast<int>(k_cmp.size(1));
  return run_select(config, p, q.dtype, q.size(2), q.device.index);
}

}  // namespace

Status select_blocks(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                     const TensorView& lse_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                     const TensorView& topk_idx) {
  return run_select_over(config, query_params(q, lse_cmp, cu_seqlens, topk_idx), q, k_cmp, cu_cmp);
}

Status select_blocks_prefixed(const NsaConfig& config, const TensorView& q, const PrefixedKeyRows& keys,
                              const TensorView& lse_cmp, const TensorView& cu_seqlens, const TensorView& topk_idx) {
  SelectParams p = query_params(q, lse_cmp, cu_seqlens, topk_idx);
  p.prefix = {keys.key_prefix.ptr<const std::int32_t>(), keys.key_prefix.stride(0)};
  return run_select_over(config, p, q, keys.k, keys.key_base);
}

}  // namespace fsa::cuda
