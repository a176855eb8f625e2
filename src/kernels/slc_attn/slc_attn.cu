// Host side of selected attention on the GPU: the plan (built on the device, in caller memory),
// the query chunks that keep the scratch under SlcOptions::workspace_cap, the workspace layout
// (sized from shapes alone) and the launches. The runtime dtype and head dims become template
// arguments in common::dispatch_attention, and nowhere else.
//
// Query chunks. Scratch that grows with N * Hq * topk (partials, dQ slots, the plan's pairs) is
// bounded by running consecutive tokens [t0, t0 + C) at a time. A chunk is the whole-batch problem
// seen from token t0: every pointer indexed by token (q, k, v, o, lse, topk_idx, d_o, dq, dk, dv and
// the dK / dV accumulators) is advanced by t0 rows and cu_seqlens is shifted by -t0
// (shift_cu_seqlens). The kernels then find each chunk token's sequence and position as before and
// read the keys before the chunk at negative rows, inside the caller's tensors; the plan's global
// block numbering spans all key rows (SlcPlanShape::key_tokens). dK / dV accumulate over the chunks
// in fp32 and are converted once at the end. A split tile that a chunk boundary cuts is planned and
// computed in each chunk for that chunk's tokens only (its other rows are padding there).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <string>

#include "common/env_value.hpp"
#include "common/workspace_carver.hpp"
#include "cuda/backend.hpp"
#include "cuda/runtime.hpp"
#include "kernels/common/launch_checks.hpp"
#include "kernels/common/paged_pool_views.hpp"
#include "kernels/slc_attn/slc_bwd_launch.hpp"
#include "kernels/slc_attn/slc_fwd_launch.hpp"
#include "kernels/slc_attn/slc_plan_build.hpp"
#include "kernels/varlen/shift_cu_seqlens.hpp"

namespace fsa::cuda {

namespace {

std::atomic<std::int64_t> plan_builds{0};

using common::check_rows_aligned;
using common::dispatch_attention;
using detail::align_workspace;
using detail::WorkspaceCarver;

Status check_gpu_limits(const char* op, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& topk_idx) {
  if (topk_idx.size(2) > SlcPlanShape::kMaxWidth)
    return FSA_ERROR(StatusCode::kNotImplemented, "topk_idx: the CUDA path supports rows of at most " +
                                                      std::to_string(SlcPlanShape::kMaxWidth) + " entries, got " +
                                                      std::to_string(topk_idx.size(2)));
  return check_rows_aligned(op, {{"q", q}, {"k", k}, {"v", v}});
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
// KV-outer. From G = 16 on Hopper (where the wgmma query-outer kernel serves the shape) kAuto runs
// query-outer: a token's G heads fill its 16 columns, each pair's K / V (32 KB) comes from L2 with
// no partials (a block shared by the CTA's four tokens once), where KV-outer's gathered rows and
// partials grow with G (S64-G16 random 19.96 against 26.6 ms, local 11.38 against 16.2; G = 8 random
// 19.57 against 13.45, so not below 16). The mma.sync query-outer kernel stays behind KV-outer.
struct ResolvedPath {
  SlcKernelPath path;
  int dense_threshold;   // the plan shape's (0 = no split)
  int min_dense_blocks;  // the plan shape's
};

constexpr int kAutoMinDenseBlocks = 4;
constexpr int kAutoQueryOuterMinGroup = 16;

// The kernel set of `device` (queries may size a workspace before the call makes it current).
common::KernelArch arch_of(int device) {
  int current = 0;
  if (cudaGetDevice(&current) != cudaSuccess) {  // no GPU: only a size is asked for
    cudaGetLastError();
    return common::KernelArch::kSm80;
  }
  if (current == device) return common::kernel_arch();
  const DeviceGuard guard(device);
  return common::kernel_arch();
}

ResolvedPath resolve_path(const SlcOptions& options, const SlcProblem& problem) {
  const int threshold = options.dense_threshold > 0 ? options.dense_threshold : std::max(1, problem.block_size / 4);
  const SlcPlanShape bound{.tokens = problem.tokens, .num_seqs = problem.num_seqs, .block_size = problem.block_size};
  switch (options.path) {
    case SlcPath::kKvOuter: return {SlcKernelPath::kKvOuter, 0, 1};
    case SlcPath::kQueryOuter: return {SlcKernelPath::kQueryOuter, 0, 1};
    case SlcPath::kSplit:  // forced: the threshold alone decides
      return {SlcKernelPath::kSplit, threshold, 1};
    case SlcPath::kAuto: break;
  }
  if (problem.heads_kv > 0 && problem.heads_q / problem.heads_kv >= kAutoQueryOuterMinGroup &&
      qo_sm90_supported(problem.block_size, problem.dim_qk, problem.dim_v) &&
      arch_of(problem.device) == common::KernelArch::kSm90a)
    return {SlcKernelPath::kQueryOuter, 0, 1};
  // The split's sort keys hold 19 bits of block index; beyond that every pair goes KV-outer.
  if (bound.max_blocks() > SlcPlanShape::kMaxSplitBlocks) return {SlcKernelPath::kKvOuter, 0, 1};
  return {SlcKernelPath::kSplit, threshold, kAutoMinDenseBlocks};
}

// The plan of `tokens` query rows (one chunk) reaching every key row of the batch.
SlcPlanShape plan_shape(const SlcProblem& problem, std::int64_t tokens, const ResolvedPath& path,
                        const SlcOptions& options) {
  SlcPlanShape s;
  s.tokens = tokens;
  s.key_tokens = problem.key_tokens > 0 ? problem.key_tokens : problem.tokens;
  s.num_seqs = problem.num_seqs;
  s.heads_kv = problem.heads_kv;
  s.group = problem.heads_kv > 0 ? problem.heads_q / problem.heads_kv : 1;
  s.width = problem.width;
  s.block_size = problem.block_size;
  s.dense_threshold = path.dense_threshold;
  s.min_dense_blocks = path.min_dense_blocks;
  // Deterministic sums over a list's rows need the same rows in the same chunks on every run.
  s.sorted_lists = options.deterministic;
  return s;
}

std::size_t element_bytes(const SlcProblem& p) { return dtype_size(p.dtype); }

// dQ sink (docs/kernels/slc_attn.md, "Backward"): fp32 atomics while the [N, Hq, Dqk] accumulator
// is at most kDqAtomicsMaxL2 times L2 (its rows then mostly hit L2: measured faster at S64-G1,
// 134 MB, and with local selections), else the per-slot partials (S64-G4, 537 MB: 11.7 ms against
// 12.5 with atomics, which read and rewrite DRAM sectors at every pair; S64-G16: 44.8 against
// 50.3). The deterministic mode always takes the slots. Decided per chunk size.
bool uses_dq_slots(const SlcProblem& p, const SlcOptions& options, std::int64_t chunk_tokens) {
  constexpr std::int64_t kDqAtomicsMaxL2 = 4;
  if (options.deterministic) return true;
  int l2_bytes = 0;
  if (cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, p.device) != cudaSuccess) {
    cudaGetLastError();
    l2_bytes = 50 << 20;  // H100's: only sizes a workspace; the launch reports a missing device
  }
  return chunk_tokens * p.heads_q * p.dim_qk * 4 > kDqAtomicsMaxL2 * l2_bytes;
}

int units_per_cta(const SlcOptions& options) {
  return options.deterministic ? kSlcBwdDeterministicUnitsPerCta : kSlcBwdUnitsPerCta;
}

// ---- Sizes and layouts (one function each, for sizing and for carving) ---------------------------

// One chunk's plan: the shifted cu_seqlens (several chunks only), then the plan's buffers.
struct ChunkPlanLayout {
  std::int32_t* cu = nullptr;
  void* plan = nullptr;
};
ChunkPlanLayout chunk_plan_layout(WorkspaceCarver& c, const SlcProblem& p, const SlcPlanShape& shape, bool chunked) {
  ChunkPlanLayout l;
  if (chunked) l.cu = c.take<std::int32_t>(p.num_seqs + 1);
  l.plan = c.take_bytes(slc_plan_workspace_bytes(shape));
  return l;
}

// The forward's per-chunk scratch: the KV-outer partials (none for query-outer).
struct ForwardScratch {
  SlcPartials part{};
};
ForwardScratch forward_scratch(WorkspaceCarver& c, const SlcProblem& p, std::int64_t chunk_tokens, bool planned) {
  const std::int64_t slots = planned ? chunk_tokens * p.heads_q * p.width : 0;
  ForwardScratch s;
  s.part.o = c.take_bytes(static_cast<std::size_t>(slots * p.dim_v) * element_bytes(p));
  s.part.lse = c.take<float>(slots);
  return s;
}

// The backward's scratch: the dK / dV accumulators of every key row (default mode), then the
// per-chunk delta, dQ sink, kv partials (deterministic) and run table.
struct BackwardScratch {
  float* dk_accum = nullptr;
  float* dv_accum = nullptr;
  float* delta = nullptr;
  void* dq_part = nullptr;
  float* dq_accum = nullptr;
  float* kv_part = nullptr;
  std::int32_t* run_unit = nullptr;
};
void backward_accumulators(WorkspaceCarver& c, const SlcProblem& p, const SlcOptions& options, BackwardScratch* s) {
  if (options.deterministic) return;
  s->dk_accum = c.take<float>(p.tokens * p.heads_kv * p.dim_qk);
  s->dv_accum = c.take<float>(p.tokens * p.heads_kv * p.dim_v);
}
void backward_chunk_scratch(WorkspaceCarver& c, const SlcProblem& p, const SlcOptions& options,
                            const SlcPlanShape& shape, bool dq_slots, BackwardScratch* s) {
  const int units = units_per_cta(options);
  s->delta = c.take<float>(shape.tokens * p.heads_q);
  if (dq_slots) {
    s->dq_part =
        c.take_bytes(static_cast<std::size_t>(slc_bwd_dq_part_elements(shape, p.heads_q, p.dim_qk)) * element_bytes(p));
  } else {
    s->dq_accum = c.take<float>(shape.tokens * p.heads_q * p.dim_qk);
  }
  if (options.deterministic) s->kv_part = c.take<float>(slc_bwd_kv_part_floats(shape, units, p.dim_qk, p.dim_v));
  s->run_unit = c.take<std::int32_t>(slc_bwd_kv_groups(shape, units));
}

// ---- Query chunks ----------------------------------------------------------------------------

struct Chunking {
  std::int64_t chunk_tokens = 0;  // C: every chunk but the last has C tokens
  std::int64_t chunks = 1;
  bool chunked() const { return chunks > 1; }
};

// The capped scratch of any call of the problem with chunks of C tokens: one chunk's plan and the
// larger of one chunk's forward and backward scratch (the backward taken with dQ slots, its larger
// sink). The backward's dK / dV accumulators are not counted: like the flash backward's, they are
// the size of k and v in fp32 whatever the chunks.
std::size_t capped_bytes(const SlcProblem& p, const SlcOptions& options, std::int64_t chunk_tokens, bool chunked) {
  const ResolvedPath path = resolve_path(options, p);
  const SlcPlanShape shape = plan_shape(p, chunk_tokens, path, options);
  WorkspaceCarver plan, fwd, bwd;
  BackwardScratch unused;
  chunk_plan_layout(plan, p, shape, chunked);
  forward_scratch(fwd, p, chunk_tokens, true);
  backward_chunk_scratch(bwd, p, options, shape, true, &unused);
  return plan.bytes() + std::max(fwd.bytes(), bwd.bytes());
}

// The largest chunk whose scratch fits the cap, balanced over the chunks it takes. The smallest
// chunk is 4096 tokens (fewer tokens per launch leave the GPU idle): below that the workspace
// exceeds the cap and the queries report it. FSA_SLC_MIN_CHUNK_TOKENS lowers the floor (tests:
// chunk boundaries inside short, ragged sequences). The deterministic backward never chunks.
std::int64_t min_chunk_tokens() {
  static const std::int64_t tokens = fsa::detail::env_value_or(fsa::detail::env_slc_min_chunk_tokens, 4096);
  return tokens;
}

Chunking chunking(const SlcProblem& p, const SlcOptions& options) {
  const std::int64_t floor = min_chunk_tokens();
  Chunking c;
  c.chunk_tokens = std::max<std::int64_t>(p.tokens, 1);
  if (options.deterministic || p.tokens <= floor ||
      capped_bytes(p, options, p.tokens, false) <= options.workspace_cap)
    return c;
  std::int64_t lo = floor, hi = p.tokens - 1;  // lo fits or is the floor
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo + 1) / 2;
    if (capped_bytes(p, options, mid, true) <= options.workspace_cap) lo = mid; else hi = mid - 1;
  }
  c.chunks = (p.tokens + lo - 1) / lo;
  c.chunk_tokens = (p.tokens + c.chunks - 1) / c.chunks;
  return c;
}

std::int64_t chunk_begin(const Chunking& c, std::int64_t chunk) { return chunk * c.chunk_tokens; }
std::int64_t chunk_size(const SlcProblem& p, const Chunking& c, std::int64_t chunk) {
  return std::min(c.chunk_tokens, p.tokens - chunk_begin(c, chunk));
}

// Bytes of one chunk's slot in a plan buffer (every chunk's slot has the size of a full chunk's).
std::size_t chunk_plan_bytes(const SlcProblem& p, const SlcOptions& options, const Chunking& c) {
  WorkspaceCarver sizing;
  chunk_plan_layout(sizing, p, plan_shape(p, c.chunk_tokens, resolve_path(options, p), options),
                    c.chunked());
  return sizing.bytes();
}

// ---- Views of one chunk ----------------------------------------------------------------------

// The pointer `rows` rows past data (TensorView::data is void* even for inputs).
void* advance(void* data, std::int64_t rows, std::int64_t row_stride, std::size_t element) {
  return static_cast<unsigned char*>(data) + rows * row_stride * static_cast<std::int64_t>(element);
}

SlcKeyPrefix key_prefix_of(const PagedKeyInputs* paged) {
  if (paged == nullptr) return {};
  return {paged->key_prefix.ptr<const std::int32_t>(), paged->key_prefix.stride(0)};
}

// q, k, v, topk_idx and the sequences as chunk [t0, ...) sees them. With a paged cache (`paged`;
// k and v unused) the keys stay where they are: the pages are addressed by position.
SlcTensors chunk_tensors(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                         const TensorView& topk_idx, const std::int32_t* cu, std::int64_t cu_stride,
                         std::int64_t t0, const PagedKeyInputs* paged = nullptr) {
  const std::size_t e = dtype_size(q.dtype);
  SlcTensors t{};
  t.q = advance(q.data, t0, q.stride(0), e);
  t.q_token_stride = q.stride(0);
  t.q_head_stride = q.stride(1);
  // Rows [N, H, D] are advanced to the chunk; pages [pages, page_size, H, D] are addressed by position.
  const TensorView& keys = paged != nullptr ? paged->k_pages : k;
  const TensorView& values = paged != nullptr ? paged->v_pages : v;
  const int row_dim = paged != nullptr ? 1 : 0;
  const std::int64_t rows_before = paged != nullptr ? 0 : t0;
  t.k = advance(keys.data, rows_before, keys.stride(row_dim), e);
  t.v = advance(values.data, rows_before, values.stride(row_dim), e);
  t.k_token_stride = keys.stride(row_dim);
  t.k_head_stride = keys.stride(row_dim + 1);
  t.v_token_stride = values.stride(row_dim);
  t.v_head_stride = values.stride(row_dim + 1);
  if (paged != nullptr) {
    t.prefix = key_prefix_of(paged);
    t.pages = {common::table_view(paged->block_table), common::pool_view(keys), common::pool_view(values)};
  }
  t.cu_seqlens = cu;
  t.cu_stride = cu_stride;
  t.heads_q = static_cast<int>(q.size(1));
  t.scale = config.softmax_scale(static_cast<int>(q.size(2)));
  t.topk = topk_idx.ptr<const std::int32_t>() + t0 * topk_idx.stride(1);
  t.topk_head_stride = topk_idx.stride(0);
  t.topk_token_stride = topk_idx.stride(1);
  return t;
}

// The plan of chunk `chunk`: its slot in the caller's plan buffer (built by slc_plan_build), or
// `scratch` (one slot in the workspace) built now.
struct ChunkPlan {
  SlcPlan plan;
  const std::int32_t* cu;
  std::int64_t cu_stride;
};

// `shift`: write the chunk's shifted cu_seqlens into its slot; `build`: build its plan there.
Status place_chunk_plan(const SlcProblem& p, const SlcOptions& options, const ResolvedPath& path,
                        const Chunking& c, std::int64_t chunk, void* slot, const TensorView& topk_idx,
                        const TensorView& cu_seqlens, bool shift, bool build, cudaStream_t stream, ChunkPlan* out,
                        SlcKeyPrefix prefix = {}) {
  const std::int64_t t0 = chunk_begin(c, chunk);
  const SlcPlanShape shape = plan_shape(p, chunk_size(p, c, chunk), path, options);
  WorkspaceCarver carve(slot);
  const ChunkPlanLayout l = chunk_plan_layout(carve, p, shape, c.chunked());
  out->plan = slc_plan_layout(shape, l.plan);
  out->cu = c.chunked() ? l.cu : cu_seqlens.ptr<const std::int32_t>();
  out->cu_stride = c.chunked() ? 1 : cu_seqlens.stride(0);
  if (shift && c.chunked())
    FSA_RETURN_IF_ERROR(shift_cu_seqlens(cu_seqlens.ptr<const std::int32_t>(), cu_seqlens.stride(0), p.num_seqs, t0,
                                         l.cu, stream));
  if (!build) return Status::ok();
  plan_builds.fetch_add(1, std::memory_order_relaxed);
  const SlcPlanInputs in{topk_idx.ptr<const std::int32_t>() + t0 * topk_idx.stride(1), topk_idx.stride(0),
                         topk_idx.stride(1), out->cu, out->cu_stride, prefix};
  return build_slc_plan(out->plan, in, stream);
}

// The plan a backward reads: the forward's (the caller's, through its backward view), or one it
// builds for itself, which needs no split since the backward runs every pair KV-outer.
ResolvedPath backward_path(const SlcOptions& options, const SlcProblem& p, bool plan_given) {
  return plan_given ? resolve_path(options, p) : ResolvedPath{SlcKernelPath::kKvOuter, 0, 1};
}

// The deterministic mode runs unchunked (its plan's sorted lists and its kv partials span the
// batch): its capped scratch (the pass's own, plus the plan when the caller gives none) must fit.
Status check_cap(const SlcProblem& p, const SlcOptions& options, bool backward, bool plan_given) {
  if (!options.deterministic) return Status::ok();
  const ResolvedPath path = backward ? backward_path(options, p, plan_given) : resolve_path(options, p);
  const SlcPlanShape shape = plan_shape(p, p.tokens, path, options);
  WorkspaceCarver sizing;
  BackwardScratch unused;
  if (!plan_given) chunk_plan_layout(sizing, p, shape, false);
  if (backward) backward_chunk_scratch(sizing, p, options, shape, true, &unused);
  else forward_scratch(sizing, p, p.tokens, path.path != SlcKernelPath::kQueryOuter);
  if (sizing.bytes() <= options.workspace_cap) return Status::ok();
  return FSA_INVALID(std::string("options.workspace_cap: the deterministic mode does not run in query chunks and its ") +
                     (backward ? "backward" : "forward") + " needs " + std::to_string(sizing.bytes()) +
                     " bytes of capped workspace, above the cap of " + std::to_string(options.workspace_cap) +
                     "; raise the cap or use the default backward");
}

}  // namespace

std::int64_t slc_plan_builds() { return plan_builds.load(std::memory_order_relaxed); }

// ---- Queries ---------------------------------------------------------------------------------

std::size_t slc_plan_bytes(const SlcProblem& p, const SlcOptions& options) {
  const Chunking c = chunking(p, options);
  return static_cast<std::size_t>(c.chunks) * chunk_plan_bytes(p, options, c);
}

std::size_t slc_forward_workspace_bytes(const SlcProblem& p, const SlcOptions& options, bool plan_given) {
  const Chunking c = chunking(p, options);
  const bool planned = resolve_path(options, p).path != SlcKernelPath::kQueryOuter;
  WorkspaceCarver sizing;
  if (!plan_given && (planned || c.chunked())) sizing.take_bytes(chunk_plan_bytes(p, options, c));
  forward_scratch(sizing, p, c.chunk_tokens, planned);
  return sizing.bytes();
}

std::size_t slc_backward_workspace_bytes(const SlcProblem& p, const SlcOptions& options, bool plan_given) {
  const Chunking c = chunking(p, options);
  WorkspaceCarver sizing;
  if (!plan_given) sizing.take_bytes(chunk_plan_bytes(p, options, c));
  BackwardScratch unused;
  backward_accumulators(sizing, p, options, &unused);
  const SlcPlanShape shape = plan_shape(p, c.chunk_tokens, backward_path(options, p, plan_given), options);
  backward_chunk_scratch(sizing, p, options, shape, uses_dq_slots(p, options, c.chunk_tokens), &unused);
  return sizing.bytes();
}

// ---- Runs ------------------------------------------------------------------------------------

Status slc_plan_build(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& plan,
                      const SlcOptions& options) {
  FSA_RETURN_IF_ERROR(check_gpu_limits("slc_plan_build", q, k, v, topk_idx));
  const DeviceGuard guard(q.device.index);
  cudaStream_t stream = current_stream();
  const SlcProblem p = SlcProblem::of(config, q, k, v, topk_idx, cu_seqlens);
  const Chunking c = chunking(p, options);
  const ResolvedPath path = resolve_path(options, p);
  const std::size_t slot_bytes = chunk_plan_bytes(p, options, c);
  for (std::int64_t chunk = 0; chunk < c.chunks; ++chunk) {
    ChunkPlan unused;
    FSA_RETURN_IF_ERROR(place_chunk_plan(p, options, path, c, chunk, plan.ptr<unsigned char>() + chunk * slot_bytes,
                                         topk_idx, cu_seqlens, true, true, stream, &unused));
  }
  return Status::ok();
}

namespace {

// The forward of `p` over the caller's k / v rows, or (`paged`) a paged cache.
Status run_forward(const NsaConfig& config, const SlcProblem& p, const TensorView& q, const TensorView& k,
                   const TensorView& v, const PagedKeyInputs* paged, const TensorView& topk_idx,
                   const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse, const SlcOptions& options,
                   const TensorView& plan, const Workspace& workspace) {
  const DeviceGuard guard(q.device.index);
  cudaStream_t stream = current_stream();
  const bool plan_given = plan.defined();
  FSA_RETURN_IF_ERROR(check_cap(p, options, /*backward=*/false, plan_given));
  const Chunking c = chunking(p, options);
  const ResolvedPath path = resolve_path(options, p);
  const bool planned = path.path != SlcKernelPath::kQueryOuter;  // query-outer reads topk_idx directly
  const std::size_t slot_bytes = chunk_plan_bytes(p, options, c);
  WorkspaceCarver carve(workspace.data);
  // Without a plan buffer, one chunk's slot in the workspace (query-outer uses only its cu_seqlens).
  const bool own_slot = !plan_given && (planned || c.chunked());
  void* own_plan = own_slot ? carve.take_bytes(slot_bytes) : nullptr;
  const ForwardScratch scratch = forward_scratch(carve, p, c.chunk_tokens, planned);
  const std::size_t e = dtype_size(q.dtype);

  for (std::int64_t chunk = 0; chunk < c.chunks; ++chunk) {
    const std::int64_t t0 = chunk_begin(c, chunk);
    ChunkPlan cp{};
    void* slot = plan_given ? plan.ptr<unsigned char>() + chunk * slot_bytes : own_plan;
    if (slot != nullptr) {
      FSA_RETURN_IF_ERROR(place_chunk_plan(p, options, path, c, chunk, slot, topk_idx, cu_seqlens, own_slot,
                                           own_slot && planned, stream, &cp, key_prefix_of(paged)));
    } else {
      cp.cu = cu_seqlens.ptr<const std::int32_t>();
      cp.cu_stride = cu_seqlens.stride(0);
    }
    SlcForwardParams f{};
    f.path = path.path;
    f.arch = common::kernel_arch();
    if (planned) {
      f.plan = slc_plan_forward_view(cp.plan);
    } else {
      f.plan.shape = plan_shape(p, chunk_size(p, c, chunk), path, options);
    }
    f.in = chunk_tensors(config, q, k, v, topk_idx, cp.cu, cp.cu_stride, t0, paged);
    f.part = scratch.part;
    f.o = advance(o.data, t0, o.stride(0), e);
    f.o_token_stride = o.stride(0);
    f.o_head_stride = o.stride(1);
    f.lse = lse.ptr<float>() + t0 * lse.stride(1);
    f.lse_head_stride = lse.stride(0);
    f.lse_token_stride = lse.stride(1);
    FSA_RETURN_IF_ERROR(dispatch_attention("slc_attn_forward", q.dtype, p.dim_qk, p.dim_v,
                                           [&]<class Element, int kDqk, int kDv>() {
                                             return slc::launch_slc_forward<Element, kDqk, kDv>(f, stream);
                                           }));
  }
  return Status::ok();
}

// The paged forward's options: KV-outer without the split (the tile and query-outer kernels read
// keys as rows of the batch), never deterministic (the forward has no such mode to keep).
SlcOptions paged_options(const SlcOptions& options) {
  SlcOptions o = options;
  o.path = SlcPath::kKvOuter;
  o.deterministic = false;
  return o;
}

}  // namespace

Status slc_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                        const TensorView& lse, const SlcOptions& options, const TensorView& plan,
                        const Workspace& workspace) {
  FSA_RETURN_IF_ERROR(check_gpu_limits("slc_attn_forward", q, k, v, topk_idx));
  FSA_RETURN_IF_ERROR(check_rows_aligned("slc_attn_forward", "o", o));  // written in 4-16 byte vectors
  return run_forward(config, SlcProblem::of(config, q, k, v, topk_idx, cu_seqlens), q, k, v, nullptr, topk_idx,
                     cu_seqlens, o, lse, options, plan, workspace);
}

SlcProblem slc_paged_problem(const NsaConfig& config, const TensorView& q, const PagedKeyInputs& keys,
                             const TensorView& topk_idx, const TensorView& cu_seqlens) {
  SlcProblem p;
  p.tokens = q.size(0);
  p.num_seqs = static_cast<int>(cu_seqlens.size(0) - 1);
  p.key_tokens = p.tokens + p.num_seqs * keys.max_context;
  p.heads_q = static_cast<int>(q.size(1));
  p.heads_kv = static_cast<int>(keys.k_pages.size(2));
  p.dim_qk = static_cast<int>(q.size(2));
  p.dim_v = static_cast<int>(keys.v_pages.size(3));
  p.width = static_cast<int>(topk_idx.size(2));
  p.block_size = config.block_size;
  p.dtype = q.dtype;
  p.device = q.device.index;
  return p;
}

std::size_t slc_paged_forward_workspace_bytes(const SlcProblem& problem, const SlcOptions& options) {
  return slc_forward_workspace_bytes(problem, paged_options(options), false);
}

Status slc_paged_forward(const NsaConfig& config, const TensorView& q, const PagedKeyInputs& keys,
                         const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                         const TensorView& lse, const SlcOptions& options, const Workspace& workspace) {
  FSA_RETURN_IF_ERROR(check_gpu_limits("slc_attn_forward", q, keys.k_pages, keys.v_pages, topk_idx));
  FSA_RETURN_IF_ERROR(check_rows_aligned("slc_attn_forward", "o", o));
  return run_forward(config, slc_paged_problem(config, q, keys, topk_idx, cu_seqlens), q, TensorView{}, TensorView{},
                     &keys, topk_idx, cu_seqlens, o, lse, paged_options(options), TensorView{}, workspace);
}

Status slc_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                         const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                         const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                         const TensorView& dv, const SlcOptions& options, const TensorView& plan,
                         const Workspace& workspace) {
  FSA_RETURN_IF_ERROR(check_gpu_limits("slc_attn_backward", q, k, v, topk_idx));
  FSA_RETURN_IF_ERROR(check_rows_aligned("slc_attn_backward", {{"d_o", d_o}, {"dq", dq}, {"dk", dk}, {"dv", dv}}));
  const DeviceGuard guard(q.device.index);
  cudaStream_t stream = current_stream();
  const SlcProblem p = SlcProblem::of(config, q, k, v, topk_idx, cu_seqlens);
  const bool plan_given = plan.defined();
  FSA_RETURN_IF_ERROR(check_cap(p, options, /*backward=*/true, plan_given));
  const Chunking c = chunking(p, options);
  const ResolvedPath path = backward_path(options, p, plan_given);
  const std::size_t slot_bytes = chunk_plan_bytes(p, options, c);
  const bool dq_slots = uses_dq_slots(p, options, c.chunk_tokens);
  WorkspaceCarver carve(workspace.data);
  void* own_plan = plan_given ? nullptr : carve.take_bytes(slot_bytes);
  BackwardScratch s;
  backward_accumulators(carve, p, options, &s);
  backward_chunk_scratch(carve, p, options, plan_shape(p, c.chunk_tokens, path, options), dq_slots, &s);
  const std::size_t e = dtype_size(q.dtype);
  const std::int64_t hkv = p.heads_kv;

  SlcBackwardParams b{};
  b.arch = common::kernel_arch();
  b.units_per_cta = units_per_cta(options);
  b.kv_tokens = p.tokens;
  b.o_token_stride = o.stride(0);
  b.o_head_stride = o.stride(1);
  b.do_token_stride = d_o.stride(0);
  b.do_head_stride = d_o.stride(1);
  b.lse_head_stride = lse.stride(0);
  b.lse_token_stride = lse.stride(1);
  b.delta = s.delta;
  b.dq_part = s.dq_part;
  b.dq_accum = s.dq_accum;
  b.kv_part = s.kv_part;
  b.run_unit = s.run_unit;
  b.dq_token_stride = dq.stride(0);
  b.dq_head_stride = dq.stride(1);
  b.dk_token_stride = dk.stride(0);
  b.dk_head_stride = dk.stride(1);
  b.dv_token_stride = dv.stride(0);
  b.dv_head_stride = dv.stride(1);
  const auto launch = [&](const SlcBackwardParams& params) {
    return dispatch_attention("slc_attn_backward", q.dtype, p.dim_qk, p.dim_v,
                              [&]<class Element, int kDqk, int kDv>() {
                                return launch_slc_backward<Element, kDqk, kDv>(params, stream);
                              });
  };

  for (std::int64_t chunk = 0; chunk < c.chunks; ++chunk) {
    const std::int64_t t0 = chunk_begin(c, chunk);
    ChunkPlan cp{};
    void* slot = plan_given ? plan.ptr<unsigned char>() + chunk * slot_bytes : own_plan;
    FSA_RETURN_IF_ERROR(place_chunk_plan(p, options, path, c, chunk, slot, topk_idx, cu_seqlens, !plan_given,
                                         !plan_given, stream, &cp));
    SlcBackwardParams x = b;
    x.plan = slc_plan_backward_view(cp.plan);
    x.in = chunk_tensors(config, q, k, v, topk_idx, cp.cu, cp.cu_stride, t0);
    x.o = advance(o.data, t0, o.stride(0), e);
    x.d_o = advance(d_o.data, t0, d_o.stride(0), e);
    x.lse = lse.ptr<const float>() + t0 * lse.stride(1);
    x.dq = advance(dq.data, t0, dq.stride(0), e);
    // Key rows are reached from the chunk's first token: the accumulators and dk / dv too.
    x.dk = advance(dk.data, t0, dk.stride(0), e);
    x.dv = advance(dv.data, t0, dv.stride(0), e);
    if (s.dk_accum != nullptr) {
      x.dk_accum = s.dk_accum + t0 * hkv * p.dim_qk;
      x.dv_accum = s.dv_accum + t0 * hkv * p.dim_v;
    }
    x.steps = kSlcBwdChunk | (chunk == 0 ? kSlcBwdZeroKv : 0) | (chunk + 1 == c.chunks ? kSlcBwdFinishKv : 0);
    if (c.chunked() && (x.steps & kSlcBwdFinishKv) != 0) {
      // The conversion of dK / dV covers every key row: run it from the batch's first token.
      x.steps &= ~kSlcBwdFinishKv;
      FSA_RETURN_IF_ERROR(launch(x));
      x.steps = kSlcBwdFinishKv;
      x.dk = dk.data;
      x.dv = dv.data;
      x.dk_accum = s.dk_accum;
      x.dv_accum = s.dv_accum;
    }
    FSA_RETURN_IF_ERROR(launch(x));
  }
  return Status::ok();
}

}  // namespace fsa::cuda
