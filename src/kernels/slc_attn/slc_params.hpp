// Parameters of the selected-attention kernels, shared by host and device (trivially copyable,
// passed as __grid_constant__ arguments). Strides are in elements.
#pragma once

#include <cstdint>

#include "kernels/common/kernel_arch.hpp"
#include "kernels/common/paged_pool.hpp"
#include "kernels/slc_attn/slc_plan.hpp"

namespace fsa::cuda {

// Keys before the queries (nsa_prefill: the cached prefix). With key_prefix null every sequence's
// keys are its queries' rows (training). Otherwise sequence b has P_b = key_prefix[b] keys before
// its n_b queries: query t is at position P_b + t - cu[b] and the sequence has P_b + n_b keys.
struct SlcKeyPrefix {
  const std::int32_t* key_prefix = nullptr;  // [num_seqs]
  std::int64_t stride = 0;
};

// Keys in a paged cache (nsa_prefill): with table.data set, key position r of sequence b is row
// common::locate(table, k, b, r) of the pools k / v (common/paged_pool.cuh: [pages, page_size, Hkv,
// D]; page_size a multiple of the block size, so a key block lies in one page; a table entry
// outside the pool, or a block past the table, reads as zero rows). Null: key position r of
// sequence b is row cu[b] - P_b + r of k / v.
struct SlcPagedKeys {
  common::PageTable table{};
  common::PagedPool k{}, v{};
};

// Inputs of the plan builder.
struct SlcPlanInputs {
  const std::int32_t* topk;  // [Hkv, N, width]
  std::int64_t topk_head_stride, topk_token_stride;  // last stride is 1
  const std::int32_t* cu_seqlens;
  std::int64_t cu_stride;
  SlcKeyPrefix prefix;
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
  // Keys before the queries and paged keys (nsa_prefill's selected branch): the KV-outer forward
  // alone reads them; the host gives them to no other kernel (slc_attn.cu).
  SlcKeyPrefix prefix;
  SlcPagedKeys pages;
};

// Per-pair partial results of the KV-outer forward: normalized output and natural-log lse of the
// row's attention over one block. Contiguous [N, Hq, width, Dv] (dtype of q) and [N, Hq, width].
struct SlcPartials {
  void* o;
  float* lse;
};

// Which kernels the forward runs (resolved from SlcOptions by the host; see launch_path).
enum class SlcKernelPath : int { kKvOuter, kSplit, kQueryOuter };

// The query-outer path's Hopper kernel (slc_qo_sm90_kernel.cuh) serves key blocks of 64 (its
// wgmma M) and Dqk = Dv in {64, 128}; elsewhere, and on other GPUs, query-outer runs the mma.sync
// tile kernel. One K and one V buffer (the next block's K issued under this block's softmax and
// P V, its V under the next scores: 57 KB at D = 128, three CTAs a SM, where two stages fitted two
// and three stages one) and four tokens a CTA, which load a block they share once (measured on an
// H100 at S64-G16 against one and two tokens and against two and three stages:
// docs/kernels/slc_attn.md, "Pipeline" 5).
constexpr bool qo_sm90_supported(int block_size, int dim_qk, int dim_v) {
  return block_size == 64 && dim_qk == dim_v && (dim_qk == 64 || dim_qk == 128);
}
constexpr int kQoSm90Tokens = 4;

struct SlcForwardParams {
  SlcKernelPath path;
  common::KernelArch arch;  // the kernel set (common::kernel_arch), chosen once per op call
  SlcPlan plan;
  SlcTensors in;
  SlcPartials part;
  void* o;  // [N, Hq, Dv]
  std::int64_t o_token_stride, o_head_stride;
  float* lse;  // [Hq, N]
  std::int64_t lse_head_stride, lse_token_stride;
};

// The backward's gradient sinks (docs/kernels/slc_attn.md, "Backward"):
// - dQ, slots (deterministic mode, and large accumulators): dq_part [planes][N, Hq, width, Dqk] in
//   the dtype of q holds each (row, slot) pair's dQ per 64-key tile of its block (planes =
//   ceil(B / 64)), one writer each; a reduction kernel adds a row's slots in ascending order in fp32.
// - dQ, atomics (default below slc_bwd_dq_slots_threshold): fp32 accumulator dq_accum [N, Hq, Dqk]
//   (contiguous, zeroed first) takes each chunk's dQ by 16-byte atomics.
// - dK / dV, default: fp32 accumulators dk_accum [N, Hkv, Dqk], dv_accum [N, Hkv, Dv] (contiguous,
//   zeroed first) take each CTA's partial by atomics.
// - dK / dV, deterministic: kv_part [groups, B, Dqk + Dv] (fp32) holds each CTA's partial (group =
//   the CTA's run of units_per_cta units of one list, whose rows the sorted plan fixes), added in
//   ascending group order by a reduction kernel.
// The steps of one backward launch (SlcBackwardParams::steps). A whole problem takes all three in
// one launch; query chunks (slc_attn.cu) zero the dK / dV accumulators with the first chunk, run
// each chunk, and convert the accumulators of every key row after the last.
constexpr int kSlcBwdZeroKv = 1;    // zero dk_accum / dv_accum ([kv_tokens, Hkv, D])
constexpr int kSlcBwdChunk = 2;     // delta, the main kernel and the dQ sink of the plan's tokens
constexpr int kSlcBwdFinishKv = 4;  // dk / dv of kv_tokens key rows from the accumulators

struct SlcBackwardParams {
  SlcPlan plan;
  SlcTensors in;
  const void* o;    // [N, Hq, Dv]
  const void* d_o;  // [N, Hq, Dv]
  std::int64_t o_token_stride, o_head_stride, do_token_stride, do_head_stride;
  const float* lse;  // [Hq, N] of the forward's output
  std::int64_t lse_head_stride, lse_token_stride;
  float* delta;     // [Hq, N] contiguous: rowsum(o * d_o) in fp32
  void* dq_part;    // see above: one of dq_part, dq_accum
  float* dq_accum;
  float* dk_accum;  // default mode
  float* dv_accum;
  float* kv_part;   // deterministic mode
  int units_per_cta;  // work units (SlcPlanShape::kRowsPerUnit rows each) of one list per CTA
  // [slc_bwd_kv_groups] the first unit of each run (a CTA of the main kernel), indexed by the run's
  // group (below), -1 for the group indices no run takes; written by the backward's launcher.
  std::int32_t* run_unit;
  int steps;             // kSlcBwd* bits (above)
  std::int64_t kv_tokens;  // key rows of dk_accum / dv_accum and of dk / dv: N of the whole batch
  void* dq;         // outputs in the dtype of q, strided like q, k, v
  void* dk;
  void* dv;
  std::int64_t dq_token_stride, dq_head_stride, dk_token_stride, dk_head_stride, dv_token_stride, dv_head_stride;
  common::KernelArch arch;  // the kernel set (common::kernel_arch), chosen once per op call
};

// Sizes of the partials, from shapes alone (constexpr: device code calls them).
constexpr std::int64_t slc_bwd_planes(const SlcPlanShape& s) { return (s.block_size + 63) / 64; }
constexpr std::int64_t slc_bwd_dq_part_elements(const SlcPlanShape& s, std::int64_t heads_q, std::int64_t dqk) {
  return slc_bwd_planes(s) * s.tokens * heads_q * s.width * dqk;
}
// Group g of list s (the run of its units gU .. gU + U - 1) takes index
// floor(unit_offsets[s] / U) + s + g: disjoint over the lists (list s has ceil(units_s / U)
// groups) and below max_units / U + num_lists + 1. The main kernel's grid is these indices.
constexpr std::int64_t slc_bwd_kv_groups(const SlcPlanShape& s, int units_per_cta) {
  return s.max_units() / units_per_cta + s.num_lists() + 1;
}
constexpr std::int64_t slc_bwd_kv_part_floats(const SlcPlanShape& s, int units_per_cta, std::int64_t dqk,
                                           std::int64_t dv) {
  return slc_bwd_kv_groups(s, units_per_cta) * s.block_size * (dqk + dv);
}

}  // namespace fsa::cuda
