// Parameters of the fused block-selection kernel, shared by host and device (trivially copyable,
// passed as a __grid_constant__ argument). Strides are in elements.
#pragma once

#include <cstdint>

#include "kernels/common/kernel_arch.hpp"
#include "kernels/common/query_prefix.hpp"
#include "kernels/select/select_tiling.hpp"

namespace fsa::cuda {

struct SelectParams {
  const void* q;  // [N, Hq, Dqk]
  std::int64_t q_token_stride, q_head_stride;
  const void* k;  // compressed keys [Ncmp, Hkv, Dqk]
  std::int64_t k_row_stride, k_head_stride;
  const float* lse;  // compressed attention's lse [Hq, N]
  std::int64_t lse_head_stride, lse_token_stride;
  std::int32_t* topk;  // [Hkv, N, K]
  std::int64_t topk_head_stride, topk_token_stride;
  const std::int32_t* cu_seqlens;
  std::int64_t cu_stride;
  const std::int32_t* cu_cmp;  // first compressed key row of each sequence
  std::int64_t cu_cmp_stride;
  // nsa_prefill's long chunks: token t of sequence b at position prefix[b] + t (its compressed keys
  // gathered out of the cache, at rows cu_cmp[b]... of k). Null prefix: training, positions local
  // to the sequence.
  common::QueryPrefix prefix;
  int num_seqs;
  std::int64_t tokens;  // N
  int heads_q, heads_kv, group;
  int heads_used;  // heads of a group whose probabilities are summed: G, or 1 for kFirstHead
  int cmp_len, cmp_stride, block_size, topk_width, init_blocks, local_blocks;  // l, s, B, K, I, L
  float scale;
  // Work decomposition, chosen by the launcher from shapes alone (sel::choose_shape).
  sel::SelectShape shape;
  // Its shared-memory layout (sel::SelectSmem of shape, Dqk and K), computed by the launcher: read
  // from the parameter space, the kernel's offsets take no registers and no arithmetic.
  sel::SelectSmem layout;
  common::KernelArch arch;  // the kernel set (common::kernel_arch), chosen once per op call
};

}  // namespace fsa::cuda
