// Host side of selected attention on the GPU: checks the GPU path's limits, sizes the workspace
// from shapes alone (stream-ordered allocation, so no host synchronisation and graph capture
// works), builds the plan and launches the kernels. The runtime dtype and head dims become
// template arguments in common::dispatch_attention, and nowhere else.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "cuda/runtime.hpp"
#include "kernels/common/launch_checks.hpp"
#include "kernels/common/stream_workspace.hpp"
#include "kernels/slc_attn/slc_attn.hpp"
#include "kernels/slc_attn/slc_bwd_launch.hpp"
#include "kernels/slc_attn/slc_fwd_launch.hpp"
#include "kernels/slc_attn/slc_plan_build.hpp"

namespace fsa::cuda {

namespace {

using common::align256;
using common::check_rows_aligned;
using common::dispatch_attention;
using common::StreamWorkspace;

Status check_gpu_limits(const char* op, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& topk_idx) {
  if (topk_idx.size(2) > SlcPlanShape::kMaxWidth)
    return FSA_ERROR(StatusCode::kNotImplemented, "topk_idx: the CUDA path supports rows of at most " +
                                                      std::to_string(SlcPlanShape::kMaxWidth) + " entries, got " +
                                                      std::to_string(topk_idx.size(2)));
  return check_rows_aligned(op, {{"q", q}, {"k", k}, {"v", v}});
}

SlcPlanShape plan_shape(const NsaConfig& config, const TensorView& q, const TensorView& k,
                        const TensorView& topk_idx, const TensorView& cu_seqlens) {
  SlcPlanShape s;
  s.tokens = q.size(0);
  s.num_seqs = static_cast<int>(cu_seqlens.size(0) - 1);
  s.heads_kv = static_cast<int>(k.size(1));
  s.group = static_cast<int>(q.size(1) / k.size(1));
  s.width = static_cast<int>(topk_idx.size(2));
  s.block_size = config.block_size;
  return s;
}

SlcTensors tensors_of(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& topk_idx, const TensorView& cu_seqlens) {
  SlcTensors t{};
  t.q = q.data;
  t.k = k.data;
  t.v = v.data;
  t.q_token_stride = q.stride(0);
  t.q_head_stride = q.stride(1);
  t.k_token_stride = k.stride(0);
  t.k_head_stride = k.stride(1);
  t.v_token_stride = v.stride(0);
  t.v_head_stride = v.stride(1);
  t.cu_seqlens = cu_seqlens.ptr<const std::int32_t>();
  t.cu_stride = cu_seqlens.stride(0);
  t.heads_q = static_cast<int>(q.size(1));
  t.scale = config.softmax_scale(static_cast<int>(q.size(2)));
  t.topk = topk_idx.ptr<const std::int32_t>();
  t.topk_head_stride = topk_idx.stride(0);
  t.topk_token_stride = topk_idx.stride(1);
  return t;
}

SlcPlanInputs plan_inputs(const TensorView& topk_idx, const TensorView& cu_seqlens) {
  return {topk_idx.ptr<const std::int32_t>(), topk_idx.stride(0), topk_idx.stride(1),
          cu_seqlens.ptr<const std::int32_t>(), cu_seqlens.stride(0)};
}


// The planner's choice (docs/kernels/slc_attn.md, "Choosing a path"): the forced path, or for
// kAuto the split with two rules measured on H100 (bench/results/h100-selected.csv):
// - a (tile, block) pair is dense when a quarter of the tile's tokens picked the block: it then
//   wastes at most 3/4 of its rows' MMA work, which costs less than the gathered q rows and the
//   partials a KV-outer pair writes and reads back (per row: 4 * B * D flops at ~350 TFLOP/s
//   against (Dqk + 2 * Dv + 4) * 2 bytes at ~3 TB/s);
// - a tile needs at least 4 dense blocks to go to the tile kernel (SlcPlanShape::min_dense_blocks).
// So selections whose neighbouring tokens share blocks run mostly in the tile kernel (S64-G4 local:
// 4.0 ms against 6.7 ms KV-outer), and random ones, whose tiles share only the 3 forced blocks, run
// KV-outer. Query-outer is never chosen: at G = 16, where a token's heads fill an MMA tile, its
// L2 traffic (32 KB of K/V per pair) still made it slower than KV-outer (27.7 against 26.0 ms).
struct ResolvedPath {
  SlcKernelPath path;
  int dense_threshold;   // the plan shape's (0 = no split)
  int min_dense_blocks;  // the plan shape's
};

constexpr int kAutoMinDenseBlocks = 4;

ResolvedPath resolve_path(const SlcOptions& options, const SlcPlanShape& shape) {
  const int threshold = options.dense_threshold > 0 ? options.dense_threshold : std::max(1, shape.block_size / 4);
  switch (options.path) {
    case SlcPath::kKvOuter: return {SlcKernelPath::kKvOuter, 0, 1};
    case SlcPath::kQueryOuter: return {SlcKernelPath::kQueryOuter, 0, 1};
    case SlcPath::kSplit: return {SlcKernelPath::kSplit, threshold, 1};  // forced: the threshold alone decides
    case SlcPath::kAuto: break;
  }
  // The split's sort keys hold 19 bits of block index; beyond that every pair goes KV-outer.
  if (shape.max_blocks() > SlcPlanShape::kMaxSplitBlocks) return {SlcKernelPath::kKvOuter, 0, 1};
  return {SlcKernelPath::kSplit, threshold, kAutoMinDenseBlocks};
}

}  // namespace

Status slc_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                        const TensorView& lse, const SlcOptions& options) {
  FSA_RETURN_IF_ERROR(check_gpu_limits("slc_attn_forward", q, k, v, topk_idx));
  FSA_RETURN_IF_ERROR(check_rows_aligned("slc_attn_forward", "o", o));  // written in 4-16 byte vectors
  const DeviceGuard guard(q.device.index);
  cudaStream_t stream = current_stream();
  SlcPlanShape shape = plan_shape(config, q, k, topk_idx, cu_seqlens);
  const ResolvedPath resolved = resolve_path(options, shape);
  shape.dense_threshold = resolved.dense_threshold;
  shape.min_dense_blocks = resolved.min_dense_blocks;
  // The query-outer path reads topk_idx directly: no plan, no partials.
  const bool planned = resolved.path != SlcKernelPath::kQueryOuter;
  const std::int64_t slots = planned ? shape.tokens * q.size(1) * shape.width : 0;
  const std::size_t plan_bytes = planned ? align256(slc_plan_workspace_bytes(shape)) : 0;
  const std::size_t o_part_bytes = align256(static_cast<std::size_t>(slots * v.size(2)) * dtype_size(q.dtype));
  const std::size_t lse_part_bytes = align256(static_cast<std::size_t>(slots) * sizeof(float));
  StreamWorkspace ws(plan_bytes + o_part_bytes + lse_part_bytes, stream);
  FSA_RETURN_IF_ERROR(ws.status());

  SlcForwardParams p{};
  p.path = resolved.path;
  if (planned) {
    p.plan = slc_plan_layout(shape, ws.bytes());
  } else {
    p.plan.shape = shape;
  }
  p.in = tensors_of(config, q, k, v, topk_idx, cu_seqlens);
  p.part.o = ws.bytes() + plan_bytes;
  p.part.lse = reinterpret_cast<float*>(ws.bytes() + plan_bytes + o_part_bytes);
  p.o = o.data;
  p.o_token_stride = o.stride(0);
  p.o_head_stride = o.stride(1);
  p.lse = lse.ptr<float>();
  p.lse_head_stride = lse.stride(0);
  p.lse_token_stride = lse.stride(1);
  if (planned) FSA_RETURN_IF_ERROR(build_slc_plan(p.plan, plan_inputs(topk_idx, cu_seqlens), stream));
  return dispatch_attention("slc_attn_forward", q.dtype, q.size(2), v.size(2),
                  [&]<class Element, int kDqk, int kDv>() { return slc::launch_slc_forward<Element, kDqk, kDv>(p, stream); });
}

Status slc_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                         const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                         const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                         const TensorView& dv, const SlcOptions& options) {
  FSA_RETURN_IF_ERROR(check_gpu_limits("slc_attn_backward", q, k, v, topk_idx));
  FSA_RETURN_IF_ERROR(check_rows_aligned("slc_attn_backward", {{"d_o", d_o}, {"dq", dq}, {"dk", dk}, {"dv", dv}}));
  const DeviceGuard guard(q.device.index);
  cudaStream_t stream = current_stream();
  SlcPlanShape shape = plan_shape(config, q, k, topk_idx, cu_seqlens);  // all pairs (the path is forward's)
  // Deterministic sums over a list's rows need the same rows in the same chunks on every run.
  shape.sorted_lists = options.deterministic;
  const std::int64_t n = shape.tokens, hq = q.size(1), hkv = k.size(1), dqk = q.size(2), dv_dim = v.size(2);
  const int units_per_cta = options.deterministic ? kSlcBwdDeterministicUnitsPerCta : kSlcBwdUnitsPerCta;
  const auto floats = [](std::int64_t count) { return align256(static_cast<std::size_t>(count) * sizeof(float)); };
  const std::size_t plan_bytes = align256(slc_plan_workspace_bytes(shape));
  const std::size_t delta_bytes = floats(n * hq);
  // dQ sink (docs/kernels/slc_attn.md, "Backward"): fp32 atomics while the [N, Hq, Dqk] accumulator
  // is at most kDqAtomicsMaxL2 times L2 (its rows then mostly hit L2: measured faster at S64-G1,
  // 134 MB, and with local selections), else the per-slot partials (S64-G4, 537 MB: 11.7 ms against
  // 12.5 with atomics, which read and rewrite DRAM sectors at every pair; S64-G16: 44.8 against
  // 50.3). The deterministic mode always takes the slots.
  constexpr std::int64_t kDqAtomicsMaxL2 = 4;
  int l2_bytes = 0;
  FSA_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, q.device.index));
  const bool dq_slots = options.deterministic || n * hq * dqk * 4 > kDqAtomicsMaxL2 * l2_bytes;
  // The dq sink, then the dk and dv accumulators (default) or the kv partials (slc_params.hpp).
  const std::size_t first_bytes =
      dq_slots ? align256(static_cast<std::size_t>(slc_bwd_dq_part_elements(shape, hq, dqk)) * dtype_size(q.dtype))
               : floats(n * hq * dqk);
  const std::size_t second_bytes = options.deterministic
                                       ? floats(slc_bwd_kv_part_floats(shape, units_per_cta, dqk, dv_dim))
                                       : floats(n * hkv * dqk);
  const std::size_t third_bytes = options.deterministic ? 0 : floats(n * hkv * dv_dim);
  const std::size_t run_bytes = align256(static_cast<std::size_t>(slc_bwd_kv_groups(shape, units_per_cta)) * 4);
  StreamWorkspace ws(plan_bytes + delta_bytes + first_bytes + second_bytes + third_bytes + run_bytes, stream);
  FSA_RETURN_IF_ERROR(ws.status());

  SlcBackwardParams p{};
  p.plan = slc_plan_layout(shape, ws.bytes());
  p.in = tensors_of(config, q, k, v, topk_idx, cu_seqlens);
  p.o = o.data;
  p.d_o = d_o.data;
  p.o_token_stride = o.stride(0);
  p.o_head_stride = o.stride(1);
  p.do_token_stride = d_o.stride(0);
  p.do_head_stride = d_o.stride(1);
  p.lse = lse.ptr<const float>();
  p.lse_head_stride = lse.stride(0);
  p.lse_token_stride = lse.stride(1);
  unsigned char* cursor = ws.bytes() + plan_bytes;
  p.delta = reinterpret_cast<float*>(cursor);
  cursor += delta_bytes;
  if (dq_slots) p.dq_part = cursor;
  else p.dq_accum = reinterpret_cast<float*>(cursor);
  float* second = reinterpret_cast<float*>(cursor += first_bytes);
  float* third = reinterpret_cast<float*>(cursor += second_bytes);
  p.run_unit = reinterpret_cast<std::int32_t*>(cursor += third_bytes);
  if (options.deterministic) {
    p.kv_part = second;
  } else {
    p.dk_accum = second;
    p.dv_accum = third;
  }
  p.units_per_cta = units_per_cta;
  p.dq = dq.data;
  p.dk = dk.data;
  p.dv = dv.data;
  p.dq_token_stride = dq.stride(0);
  p.dq_head_stride = dq.stride(1);
  p.dk_token_stride = dk.stride(0);
  p.dk_head_stride = dk.stride(1);
  p.dv_token_stride = dv.stride(0);
  p.dv_head_stride = dv.stride(1);
  FSA_RETURN_IF_ERROR(build_slc_plan(p.plan, plan_inputs(topk_idx, cu_seqlens), stream));
  return dispatch_attention("slc_attn_backward", q.dtype, dqk, dv_dim,
                  [&]<class Element, int kDqk, int kDv>() { return launch_slc_backward<Element, kDqk, kDv>(p, stream); });
}

}  // namespace fsa::cuda
