// Parameters of the selected-attention kernels, shared by host and device (trivially copyable,
// passed as __grid_constant__ arguments). Strides are in elements.
#pragma once

#include <cstdint>

#include "kernels/slc_attn/slc_plan.hpp"

namespace fsa::cuda {

// Inputs of the plan builder.
struct SlcPlanInputs {
  const std::int32_t* topk;  // [Hkv, N, width]
  std::int64_t topk_head_stride, topk_token_stride;  // last stride is 1
  const std::int32_t* cu_seqlens;
  std::int64_t cu_stride;
};

// q [N, Hq, Dqk], k [N, Hkv, Dqk], v [N, Hkv, Dv] (last dim contiguous) and the sequences.
struct SlcTensors {
  const void* q;
  const void* k;
  const void* v;
  std::int64_t q_token_stride, q_head_stride;
  std::int64_t k_token_stride, k_head_stride;
  std::int64_t v_token_stride, v_head_stride;
  const std::int32_t* cu_seqlens;
  std::int64_t cu_stride;
  int heads_q;
  float scale;  // softmax scale (natural-log domain)
  // topk_idx [Hkv, N, width], read directly by the query-outer kernel (the planned paths read
  // the plan instead).
  const std::int32_t* topk;
  std::int64_t topk_head_stride, topk_token_stride;
};

// Per-pair partial results of the KV-outer forward: normalized output and natural-log lse of the
// row's attention over one block. Contiguous [N, Hq, width, Dv] (dtype of q) and [N, Hq, width].
struct SlcPartials {
  void* o;
  float* lse;
};

// Which kernels the forward runs (resolved from SlcOptions by the host; see launch_path).
enum class SlcKernelPath : int { kKvOuter, kSplit, kQueryOuter };

struct SlcForwardParams {
  SlcKernelPath path;
  SlcPlan plan;
  SlcTensors in;
  SlcPartials part;
  void* o;  // [N, Hq, Dv]
  std::int64_t o_token_stride, o_head_stride;
  float* lse;  // [Hq, N]
  std::int64_t lse_head_stride, lse_token_stride;
};

struct SlcBackwardParams {
  SlcPlan plan;
  SlcTensors in;
  const void* o;    // [N, Hq, Dv]
  const void* d_o;  // [N, Hq, Dv]
  std::int64_t o_token_stride, o_head_stride, do_token_stride, do_head_stride;
  const float* lse;  // [Hq, N] of the forward's output
  std::int64_t lse_head_stride, lse_token_stride;
  float* delta;     // [Hq, N] contiguous: rowsum(o * d_o) in fp32
  float* dq_accum;  // [N, Hq, Dqk] contiguous fp32, zeroed before the backward kernel
  float* dk_accum;  // [N, Hkv, Dqk] contiguous fp32, zeroed
  float* dv_accum;  // [N, Hkv, Dv] contiguous fp32, zeroed
  void* dq;         // outputs in the dtype of q, strided like q, k, v
  void* dk;
  void* dv;
  std::int64_t dq_token_stride, dq_head_stride, dk_token_stride, dk_head_stride, dv_token_stride, dv_head_stride;
};

}  // namespace fsa::cuda
