// GPU path of nsa_prefill / nsa_decode (include/fsa/cache.hpp): one step appends every sequence's
// new tokens to its paged cache and computes their outputs, in stream order:
//
//   1. compress the windows the chunk completes and write the new compressed tokens, keys rotated
//      at i*s, into their pages: a decode step in one launch that reads the windows where they are
//      (decode_compress.cu); a longer chunk stages the pre-RoPE windows, compresses them in
//      kernels/compress (unchanged) and appends them (decode_append.cu);
//   2. rotate q (workspace) and k (pages), store v, update the key tail (after 1 read the old tail;
//      an nsa_decode call's step 1 launch does this too);
//   3. compressed attention over the compressed pages: o_cmp and lse_cmp (decode_attn_kernel.cuh,
//      split over the context, decode_merge.cu);
//   4. block selection: per-range top-K of block scores in shared memory, merged with the forced
//      blocks into topk_idx (decode_topk.cu). A decode step (at most 8 new tokens per sequence)
//      takes the scores from the block partials step 3 wrote as it read the compressed keys
//      (decode_block_partials.cuh, decode_block_scores.cu: the fused route); a longer chunk
//      recomputes them from q, the compressed keys and lse_cmp (decode_select_kernel.cuh), since
//      its partials would grow with chunk x context;
//   5. sliding-window attention in step 3's launch, selected attention after the selection
//      (decode_attn_kernel.cuh);
//   6. the selected branch's merge and the gated combination in one launch (decode_merge.cu).
//
// Long prefill chunks (long_chunk) run steps 3-5 in the training's kernels instead, with queries at
// positions after the cached prefix: the compressed tokens and the window's keys gathered out of
// the pages into contiguous rows (decode_gather.cu), then compressed and window attention in the
// flash kernels (cmp_attn_prefixed_forward, swa_prefixed_forward), the selection in the fused
// selection kernel (select_blocks_prefixed, which writes topk_idx whole: no finalize), the selected
// branch KV-outer over the pages (slc_paged_forward: a block lies in one page). A decode tile of 16
// tokens attends to the union of its tokens' blocks, up to 13x the key tiles each token needs, and
// the decode kernels' selection recomputes scores per 64-key range; a chunked prefill of thousands
// of tokens spent 4x the training's time in each. Decode steps keep the decode kernels (the
// training kernels' fixed costs are most of a step).
//
// The plan (grids, splits, ranges) and the workspace layout come from the call's shape alone
// (NsaInferenceShape: N, sequences, the context the block tables address); lengths, tables and
// slots are read by the kernels. Nothing here allocates, waits for the device or reads device
// memory, so the step can be captured in a CUDA graph and replayed as cache_seqlens advance.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "common/env_value.hpp"
#include "common/rope_frequency.hpp"
#include "common/workspace_carver.hpp"
#include "cuda/backend.hpp"
#include "cuda/runtime.hpp"
#include "kernels/common/launch_checks.hpp"
#include "kernels/common/paged_pool_views.hpp"
#include "kernels/decode/decode.hpp"
#include "kernels/decode/decode_params.hpp"
#include "kernels/decode/decode_tiling.hpp"

namespace fsa::cuda {

namespace decode {
namespace {
std::atomic<long long> quarter_launches{0};
}  // namespace
void note_quarter_launch() { quarter_launches.fetch_add(1, std::memory_order_relaxed); }
long long quarter_kernel_launches() { return quarter_launches.load(std::memory_order_relaxed); }
}  // namespace decode

namespace {

using detail::WorkspaceCarver;
using decode::StepPlan;

decode::NsaNumbers numbers_of(const NsaConfig& c, const NsaInferenceShape& s) {
  decode::NsaNumbers n{};
  n.cmp_len = c.cmp_len;
  n.cmp_stride = c.cmp_stride;
  n.block_size = c.block_size;
  n.topk = c.topk;
  n.init_blocks = c.init_blocks;
  n.local_blocks = c.local_blocks;
  n.window = c.window;
  n.heads_q = s.heads_q;
  n.heads_kv = s.heads_kv;
  n.group = s.heads_kv > 0 ? s.heads_q / s.heads_kv : 1;
  n.heads_used = c.aggregation == ScoreAggregation::kFirstHead ? 1 : n.group;
  n.scale = c.softmax_scale(s.head_dim_qk);
  return n;
}

// One wave of the attention kernel on the call's device: its SMs x the CTAs a SM its launch bounds
// ask for (decode::attn_ctas_per_sm). A failed query keeps the default (the call's own checks
// report a bad device).
long long attn_wave_ctas(const NsaInferenceShape& s) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, s.device.index) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();
    return decode::kDefaultAttnWaveCtas;
  }
  return static_cast<long long>(sms) * decode::attn_ctas_per_sm(s.head_dim_v);
}

// What the key-quarter kernel's wave needs of the call's device: its SMs and shared memory a SM
// (a failed query: none, so the plan keeps every tile in the one kernel), and whether a decode step
// launches it: FSA_DECODE_QUARTER_KERNEL=1 (the default 0 until it is measured on a GPU,
// docs/kernels/decode.md; a bad value is the call's error, checked in run_step; the workspace query
// reads the same switch, since the key-quarter splits need larger partials).
decode::QuarterDevice quarter_device(const NsaInferenceShape& s) {
  std::string enabled;
  const bool on = fsa::detail::env_decode_quarter_kernel(&enabled).is_ok() && enabled == "1";
  int sms = 0, smem = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, s.device.index) != cudaSuccess ||
      cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, s.device.index) != cudaSuccess ||
      sms <= 0 || smem <= 0) {
    (void)cudaGetLastError();
    return {};
  }
  return {sms, static_cast<std::size_t>(smem), static_cast<int>(s.head_dim_qk), static_cast<int>(s.head_dim_v), on};
}

// FSA_DECODE_ATTN_SPLITS: the attention's splits forced (0: the plan's own), to measure them; the
// workspace query reads it too (more splits need larger partials); a bad value is the call's error,
// checked in run_step (here: the plan's own).
static_assert(decode::kMaxSplits == 64, "FSA_DECODE_ATTN_SPLITS' range (env_value.hpp)");
int forced_attn_splits() {
  long long splits = 0;
  return fsa::detail::env_decode_attn_splits(&splits).is_ok() ? static_cast<int>(splits) : 0;
}

StepPlan plan_of(const NsaConfig& c, const NsaInferenceShape& s) {
  return decode::plan_step(numbers_of(c, s), s.tokens, s.num_seqs, s.max_context, attn_wave_ctas(s),
                           quarter_device(s), forced_attn_splits());
}

static_assert(decode::kFusedSelectTokensPerSeq == kMaxDecodeTokens, "decode steps fuse their selection");

// Whether the call selects through the compressed attention's block partials (fuses_selection);
// FSA_DECODE_SELECT=two-pass forces the second pass over the compressed keys (the tests run both
// routes on the same steps, the bench compares them), =fused the default.
Status fused_selection(const NsaInferenceShape& s, bool* fused) {
  std::string route;
  FSA_RETURN_IF_ERROR(fsa::detail::env_decode_select(&route));
  *fused = route != "two-pass" && decode::fuses_selection(s.tokens, s.num_seqs);
  return Status::ok();
}

// Whether a prefill call is a long chunk (see the top of the file): at least kLongChunkMinTokens new
// tokens. Not tuned between the two ends the decode bench measures (16K-token chunks, decode steps
// of 1-8 tokens per sequence); FSA_PREFILL_LONG_CHUNK_MIN_TOKENS overrides it (the tests run
// chunked prefills both ways); a bad value is the call's error (the workspace query sizes for the
// default).
constexpr std::int64_t kLongChunkMinTokens = 512;
Status long_chunk(const NsaInferenceShape& s, bool prefill, bool* long_route) {
  long long min_tokens = kLongChunkMinTokens;
  const Status read = fsa::detail::env_prefill_long_chunk_min_tokens(&min_tokens);
  *long_route = prefill && s.tokens >= (read.is_ok() ? min_tokens : kLongChunkMinTokens);
  return read;
}

// The KV-outer selected branch's problem from the shape alone (the views carry sizes, no data):
// the same SlcProblem the run derives from the call's tensors.
SlcProblem paged_problem(const NsaConfig& c, const NsaInferenceShape& s) {
  const auto view = [&](DType dtype, std::initializer_list<std::int64_t> sizes) {
    return TensorView::contiguous(nullptr, dtype, sizes, s.device);
  };
  PagedKeyInputs keys;
  keys.k_pages = view(s.dtype, {1, c.block_size, s.heads_kv, s.head_dim_qk});
  keys.v_pages = view(s.dtype, {1, c.block_size, s.heads_kv, s.head_dim_v});
  keys.max_context = s.max_context;
  return slc_paged_problem(c, view(s.dtype, {s.tokens, s.heads_q, s.head_dim_qk}), keys,
                           view(DType::kInt32, {s.heads_kv, s.tokens, c.topk}),
                           view(DType::kInt32, {s.num_seqs + 1}));
}

// A decode call serves at most kMaxDecodeTokens new tokens per sequence: its shape's N.
NsaInferenceShape decode_shape(NsaInferenceShape s) {
  s.tokens = std::min<std::int64_t>(s.tokens, static_cast<std::int64_t>(kMaxDecodeTokens) * s.num_seqs);
  return s;
}

// The compression's workspace for the staged windows (k, then v: the same piece). Its size is not
// monotone in the compressed rows (the split-K count falls as the row tiles grow), so the bound is
// the largest over every row count up to the shape's: one query per 64-row tile count until the
// split stops (1024 tiles, compress_k_splits).
std::size_t compress_bytes(const NsaConfig& c, const NsaInferenceShape& s, std::int64_t stage_rows,
                           std::int64_t cmp_rows) {
  const std::int64_t l = c.cmp_len, hkv = s.heads_kv;
  auto bytes_at = [&](std::int64_t rows, std::int64_t dim) {
    const TensorView x = TensorView::contiguous(nullptr, s.dtype, {stage_rows, hkv, dim}, s.device);
    const TensorView y = TensorView::contiguous(nullptr, s.dtype, {rows, hkv, dim}, s.device);
    const TensorView w = c.compression == CompressionKind::kLinear
                             ? TensorView::contiguous(nullptr, s.dtype, {hkv, l * dim, dim}, s.device)
                             : TensorView{};
    return compress_forward_workspace_bytes(c, x, w, y);
  };
  std::size_t most = 0;
  const std::int64_t tiles = std::min<std::int64_t>((cmp_rows + 63) / 64, 1024);
  for (std::int64_t m = 1; m <= tiles; ++m) {
    const std::int64_t rows = std::min<std::int64_t>(64 * m, cmp_rows);
    most = std::max({most, bytes_at(rows, s.head_dim_qk), bytes_at(rows, s.head_dim_v)});
  }
  return std::max({most, bytes_at(cmp_rows, s.head_dim_qk), bytes_at(cmp_rows, s.head_dim_v)});
}

// The step's scratch, carved from the caller's workspace (sizing: no base).
struct StepWorkspace {
  TensorView q_rot, cu_stage, cu_cmp_stage, k_stage, v_stage, k_cmp_new, v_cmp_new;
  Workspace compress;
  TensorView o_cmp, o_slc, o_swa, lse_cmp, topk;
  float* o_part[decode::kBranches] = {};
  decode::RowStats* stats[decode::kBranches] = {};
  decode::Candidate* candidates = nullptr;
  // The fused selection's block partials (sized for the calls of this shape that fuse).
  std::uint16_t* partial_values = nullptr;  // fp16 (decode::BlockPartials)
  float* partial_max = nullptr;
  // A long chunk's (long_chunk) selected and window lse, the KV-outer selected branch's workspace and
  // the gathered keys (decode::GatherParams).
  TensorView slc_lse, swa_lse;
  Workspace slc;
  TensorView key_prefix, cmp_base, win_base, k_cmp_rows, v_cmp_rows, k_win_rows, v_win_rows;

  StepWorkspace(WorkspaceCarver& w, const NsaConfig& c, const NsaInferenceShape& s, const StepPlan& plan,
                bool long_route) {
    const std::int64_t n = s.tokens, hq = s.heads_q, hkv = s.heads_kv, dqk = s.head_dim_qk, dv = s.head_dim_v;
    q_rot = w.take_tensor(s.dtype, {n, hq, dqk});
    cu_stage = w.take_tensor(DType::kInt32, {s.num_seqs + 1});
    cu_cmp_stage = w.take_tensor(DType::kInt32, {s.num_seqs + 1});
    k_stage = w.take_tensor(s.dtype, {plan.stage_rows, hkv, dqk});
    v_stage = w.take_tensor(s.dtype, {plan.stage_rows, hkv, dv});
    k_cmp_new = w.take_tensor(s.dtype, {plan.cmp_rows, hkv, dqk});
    v_cmp_new = w.take_tensor(s.dtype, {plan.cmp_rows, hkv, dv});
    compress = w.take_workspace(compress_bytes(c, s, plan.stage_rows, plan.cmp_rows));
    o_cmp = w.take_tensor(s.dtype, {n, hq, dv});
    o_slc = w.take_tensor(s.dtype, {n, hq, dv});
    o_swa = w.take_tensor(s.dtype, {n, hq, dv});
    lse_cmp = w.take_tensor(DType::kFloat32, {hq, n});
    topk = w.take_tensor(DType::kInt32, {hkv, n, c.topk});
    for (int b = 0; b < decode::kBranches; ++b) {
      o_part[b] = w.take<float>(plan.split_tokens[b] * hq * dv);
      stats[b] = w.take<decode::RowStats>(plan.split_tokens[b] * hq);
    }
    candidates = w.take<decode::Candidate>(std::max(plan.range_tokens, plan.score_range_tokens) * hkv * c.topk);
    partial_values = w.take<std::uint16_t>(plan.partial_rows * plan.partial_quarters * plan.quarter_blocks);
    partial_max = w.take<float>(plan.partial_rows * plan.partial_quarters);
    if (long_route) {
      slc_lse = w.take_tensor(DType::kFloat32, {hq, n});
      swa_lse = w.take_tensor(DType::kFloat32, {hq, n});
      slc = w.take_workspace(slc_paged_forward_workspace_bytes(paged_problem(c, s), SlcOptions{}));
      key_prefix = w.take_tensor(DType::kInt32, {s.num_seqs});
      cmp_base = w.take_tensor(DType::kInt32, {s.num_seqs});
      win_base = w.take_tensor(DType::kInt32, {s.num_seqs});
      const std::int64_t cmp_rows = s.num_seqs * plan.gather_cmp_slot;
      const std::int64_t win_rows = s.num_seqs * plan.gather_window_slot + n;
      k_cmp_rows = w.take_tensor(s.dtype, {cmp_rows, hkv, dqk});
      v_cmp_rows = w.take_tensor(s.dtype, {cmp_rows, hkv, dv});
      k_win_rows = w.take_tensor(s.dtype, {win_rows, hkv, dqk});
      v_win_rows = w.take_tensor(s.dtype, {win_rows, hkv, dv});
    }
  }
};

std::size_t workspace_bytes(const NsaConfig& c, const NsaInferenceShape& s, bool prefill) {
  if (s.tokens == 0 || s.num_seqs == 0) return 0;
  WorkspaceCarver sizing;
  bool long_route = false;
  static_cast<void>(long_chunk(s, prefill, &long_route));  // a bad value: the run reports it
  StepWorkspace(sizing, c, s, plan_of(c, s), long_route);
  return sizing.bytes();
}

decode::BatchInfo batch_of(const NsaLayerInputs& in, const NsaCacheBatch& batch, const NsaInferenceShape& s) {
  decode::BatchInfo info{};
  info.cu_seqlens = in.cu_seqlens.ptr<const std::int32_t>();
  info.cu_stride = in.cu_seqlens.stride(0);
  info.cache_seqlens = batch.cache_seqlens.ptr<const std::int32_t>();
  info.cache_stride = batch.cache_seqlens.stride(0);
  info.slots = batch.slots.ptr<const std::int32_t>();
  info.slot_stride = batch.slots.stride(0);
  info.num_seqs = s.num_seqs;
  info.tokens = s.tokens;
  return info;
}

// Accepts every (Element, Dqk, Dv) the dispatch table serves: the head-dim check without a launch.
struct AcceptAttention {
  template <class, int, int>
  Status operator()() const {
    return Status::ok();
  }
};

// What only the GPU path limits, checked before anything is written into the cache; and the
// decode attention's K / V stages (AttnParams::stages): at most two where they fit the shared
// memory, else one, the launcher taking one where it fits more CTAs a SM;
// FSA_DECODE_ATTN_STAGES=1|2 forces the count (2 where it fits; to compare them; a bad value is the
// call's error).
Status check_gpu_limits(const char* op, const NsaConfig& c, const NsaLayerInputs& in, const NsaCache& cache,
                        const NsaInferenceBranches& br, const TensorView& o, const NsaInferenceShape& s,
                        const StepPlan& plan, int* attn_stages, bool* stages_forced) {
  FSA_RETURN_IF_ERROR(common::dispatch_attention(op, s.dtype, s.head_dim_qk, s.head_dim_v, AcceptAttention{}));
  if (c.topk > decode::kMaxTopk)
    return FSA_ERROR(StatusCode::kNotImplemented, std::string("topk: ") + op + " on CUDA keeps at most " +
                                                      std::to_string(decode::kMaxTopk) + " blocks per token, got K=" +
                                                      std::to_string(c.topk));
  FSA_RETURN_IF_ERROR(common::check_rows_aligned(
      op, {{"q", in.q}, {"k", in.k}, {"v", in.v}, {"o", o}, {"cache.k_pages", cache.k_pages},
           {"cache.v_pages", cache.v_pages}, {"cache.k_cmp_pages", cache.k_cmp_pages},
           {"cache.v_cmp_pages", cache.v_cmp_pages}, {"cache.k_tail", cache.k_tail}, {"branches.o_cmp", br.o_cmp},
           {"branches.o_slc", br.o_slc}, {"branches.o_swa", br.o_swa}}));
  int max_smem = 0;
  FSA_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, in.q.device.index));
  max_smem -= static_cast<int>(decode::kAttnStaticSmem);  // the kernels' static tables
  // One K / V stage at least.
  const std::size_t attn =
      decode::AttnSmem(s.head_dim_qk, s.head_dim_v, plan.union_words, plan.union_capacity, /*stages=*/1).bytes;
  const int fit = decode::attn_stages(s.head_dim_qk, s.head_dim_v, plan.union_words, plan.union_capacity,
                                      static_cast<std::size_t>(std::max(max_smem, 0)));
  long long forced = 0;  // FSA_DECODE_ATTN_STAGES; 0: unset
  FSA_RETURN_IF_ERROR(fsa::detail::env_decode_attn_stages(&forced));
  *stages_forced = forced > 0;
  *attn_stages = static_cast<int>(forced > 0 ? std::min<long long>(forced, fit) : fit);
  if (attn > static_cast<std::size_t>(max_smem))
    return FSA_ERROR(StatusCode::kNotImplemented,
                     std::string("batch.block_table: ") + op + " on CUDA keeps the selected blocks of a tile over " +
                         std::to_string(s.max_context) + " tokens (block_table.size(1) x page_size) in " +
                         std::to_string(attn) + " bytes of shared memory, more than the device's " +
                         std::to_string(max_smem));
  const std::size_t sel =
      decode::SelectSmem(s.head_dim_qk, plan.row_chunks, plan.tile_tokens, plan.range_capacity).bytes;
  if (sel > static_cast<std::size_t>(max_smem))
    return FSA_ERROR(StatusCode::kNotImplemented, std::string("q: ") + op + " on CUDA selects blocks for G=" +
                                                      std::to_string(s.heads_q / std::max(1, s.heads_kv)) +
                                                      " heads in " + std::to_string(sel) +
                                                      " bytes of shared memory, more than the device's " +
                                                      std::to_string(max_smem));
  return Status::ok();
}

// A decode step's compression (decode_compress.cu): the weights both routes read.
decode::CompressWeights compress_weights(const NsaConfig& c, const NsaLayerInputs& in) {
  decode::CompressWeights p{};
  const bool linear = c.compression == CompressionKind::kLinear;
  const TensorView* weights[2] = {&in.w_k, &in.w_v};
  for (int t = 0; t < 2; ++t) {
    p.weight[t] = linear ? weights[t]->data : nullptr;
    p.weight_head_stride[t] = linear ? weights[t]->stride(0) : 0;
    p.weight_row_stride[t] = linear ? weights[t]->stride(1) : 0;
  }
  p.pos_emb = in.pe_k.defined() ? in.pe_k.data : nullptr;
  p.pos_emb_head_stride = in.pe_k.defined() ? in.pe_k.stride(0) : 0;
  p.pos_emb_row_stride = in.pe_k.defined() ? in.pe_k.stride(1) : 0;
  return p;
}

Status run_step(const char* op, bool prefill, const NsaConfig& c, const NsaLayerInputs& in, const NsaCache& cache,
                const NsaCacheBatch& batch, const TensorView& o, const NsaInferenceBranches& br,
                const Workspace& workspace, const NsaInferenceShape& s) {
  if (s.tokens == 0 || s.num_seqs == 0) return Status::ok();
  const DeviceGuard guard(in.q.device.index);
  // Every switch is read here, before anything is written into the cache, so that a bad value
  // stops the call with the cache as it was (plan_of reads them again).
  std::string quarter_kernel;
  FSA_RETURN_IF_ERROR(fsa::detail::env_decode_quarter_kernel(&quarter_kernel));
  long long forced_splits = 0;
  FSA_RETURN_IF_ERROR(fsa::detail::env_decode_attn_splits(&forced_splits));
  const StepPlan plan = plan_of(c, s);
  int attn_stages = 1;
  bool stages_forced = false;
  FSA_RETURN_IF_ERROR(check_gpu_limits(op, c, in, cache, br, o, s, plan, &attn_stages, &stages_forced));
  cudaStream_t stream = current_stream();
  bool long_route = false, fused = false;
  FSA_RETURN_IF_ERROR(long_chunk(s, prefill, &long_route));
  FSA_RETURN_IF_ERROR(fused_selection(s, &fused));
  // The gathered keys' rows are int32 (the kernels' key_base).
  if (long_route && s.num_seqs * std::max(plan.gather_cmp_slot, plan.gather_window_slot) + s.tokens > INT32_MAX)
    return FSA_ERROR(StatusCode::kNotImplemented,
                     std::string("batch.block_table: ") + op + " gathers a long chunk's keys into at most 2^31 rows; " +
                         std::to_string(s.num_seqs) + " sequences of up to " + std::to_string(plan.max_context) +
                         " tokens need more");
  WorkspaceCarver carve(workspace.data, in.q.device);
  const StepWorkspace w(carve, c, s, plan, long_route);
  const decode::NsaNumbers nsa = numbers_of(c, s);
  const decode::BatchInfo info = batch_of(in, batch, s);
  const decode::PagedPool k_pages = common::pool_view(cache.k_pages), v_pages = common::pool_view(cache.v_pages);
  const decode::PagedPool k_cmp_pages = common::pool_view(cache.k_cmp_pages), v_cmp_pages = common::pool_view(cache.v_cmp_pages);
  const decode::PageTable block_table = common::table_view(batch.block_table), cmp_table = common::table_view(batch.cmp_block_table);

  // ---- 1, 2: append ----
  decode::AppendParams ap{};
  ap.batch = info;
  ap.nsa = nsa;
  ap.q = in.q.data;
  ap.q_row_stride = in.q.stride(0);
  ap.q_head_stride = in.q.stride(1);
  ap.k = in.k.data;
  ap.k_row_stride = in.k.stride(0);
  ap.k_head_stride = in.k.stride(1);
  ap.v = in.v.data;
  ap.v_row_stride = in.v.stride(0);
  ap.v_head_stride = in.v.stride(1);
  ap.q_rot = w.q_rot.data;
  ap.k_pages = k_pages;
  ap.v_pages = v_pages;
  ap.k_cmp_pages = k_cmp_pages;
  ap.v_cmp_pages = v_cmp_pages;
  ap.block_table = block_table;
  ap.cmp_block_table = cmp_table;
  ap.k_tail = cache.k_tail.data;
  ap.tail_slot_stride = cache.k_tail.stride(0);
  ap.tail_row_stride = cache.k_tail.stride(1);
  ap.tail_head_stride = cache.k_tail.stride(2);
  ap.num_slots = cache.k_tail.size(0);
  ap.tail_rows = static_cast<int>(cache.k_tail.size(1));
  ap.cu_stage = w.cu_stage.ptr<std::int32_t>();
  ap.cu_cmp_stage = w.cu_cmp_stage.ptr<std::int32_t>();
  ap.k_stage = w.k_stage.data;
  ap.v_stage = w.v_stage.data;
  ap.stage_rows = plan.stage_rows;
  ap.k_cmp_new = w.k_cmp_new.data;
  ap.v_cmp_new = w.v_cmp_new.data;
  ap.cmp_rows = plan.cmp_rows;
  ap.dim_qk = s.head_dim_qk;
  ap.dim_v = s.head_dim_v;
  ap.rope = c.rope.enabled ? 1 : 0;
  for (int i = 0; i < s.head_dim_qk / 2 && i < decode::AppendParams::kMaxPairs; ++i)
    ap.frequency[i] = rope_frequency(c.rope, i, s.head_dim_qk);
  // A decode step's few windows in one launch (compress_append_kernel; an nsa_decode call's new
  // tokens appended in it too, since none of its sequences brings more than kMaxDecodeTokens); a
  // longer call's (or a shape that kernel does not take) staged and compressed by the training's
  // compression, then appended.
  const decode::CompressAppendParams ca{ap, compress_weights(c, in)};
  const bool one_launch_route =
      decode::fuses_selection(s.tokens, s.num_seqs) && decode::compress_append_supported(ca);
  const bool tokens_in_one_launch = one_launch_route && !prefill;
  if (one_launch_route) {
    FSA_RETURN_IF_ERROR(decode::launch_compress_append(ca, tokens_in_one_launch, s.dtype, stream));
  } else {
    FSA_RETURN_IF_ERROR(decode::launch_stage_windows(ap, s.dtype, stream));
    FSA_RETURN_IF_ERROR(
        cuda::compress_forward(c, w.k_stage, w.cu_stage, w.cu_cmp_stage, in.w_k, in.pe_k, w.k_cmp_new, w.compress));
    FSA_RETURN_IF_ERROR(cuda::compress_forward(c, w.v_stage, w.cu_stage, w.cu_cmp_stage, in.w_v, TensorView{},
                                               w.v_cmp_new, w.compress));
    FSA_RETURN_IF_ERROR(decode::launch_append_compressed(ap, s.dtype, stream));
  }
  if (!tokens_in_one_launch) FSA_RETURN_IF_ERROR(decode::launch_append_tokens(ap, s.dtype, stream));

  // ---- 3-5 ----
  const TensorView o_cmp = br.o_cmp.defined() ? br.o_cmp : w.o_cmp;
  const TensorView o_slc = br.o_slc.defined() ? br.o_slc : w.o_slc;
  const TensorView o_swa = br.o_swa.defined() ? br.o_swa : w.o_swa;
  const TensorView topk = br.topk_idx.defined() ? br.topk_idx : w.topk;
  if (long_route) {
    // ---- 3-5, a long chunk: the training's kernels over the gathered keys and the pages ----
    decode::GatherParams gp{};
    gp.batch = info;
    gp.nsa = nsa;
    gp.k_pages = k_pages;
    gp.v_pages = v_pages;
    gp.k_cmp_pages = k_cmp_pages;
    gp.v_cmp_pages = v_cmp_pages;
    gp.block_table = block_table;
    gp.cmp_block_table = cmp_table;
    gp.max_context = s.max_context;
    gp.prefix = w.key_prefix.ptr<std::int32_t>();
    gp.cmp_base = w.cmp_base.ptr<std::int32_t>();
    gp.win_base = w.win_base.ptr<std::int32_t>();
    gp.k_cmp = w.k_cmp_rows.data;
    gp.v_cmp = w.v_cmp_rows.data;
    gp.k_win = w.k_win_rows.data;
    gp.v_win = w.v_win_rows.data;
    gp.cmp_slot = plan.gather_cmp_slot;
    gp.window_slot = plan.gather_window_slot;
    gp.dim_qk = s.head_dim_qk;
    gp.dim_v = s.head_dim_v;
    FSA_RETURN_IF_ERROR(decode::launch_gather_keys(gp, s.dtype, stream));
    const PrefixedKeyRows cmp_keys{w.key_prefix, w.cmp_base, w.k_cmp_rows, w.v_cmp_rows};
    FSA_RETURN_IF_ERROR(cmp_attn_prefixed_forward(c, w.q_rot, cmp_keys, in.cu_seqlens, o_cmp, w.lse_cmp));
    FSA_RETURN_IF_ERROR(select_blocks_prefixed(c, w.q_rot, cmp_keys, w.lse_cmp, in.cu_seqlens, topk));
    PagedKeyInputs keys;  // the gather's prefix: the same clamp as the other branches' (GatherParams)
    keys.key_prefix = w.key_prefix;
    keys.block_table = batch.block_table;
    keys.k_pages = cache.k_pages;
    keys.v_pages = cache.v_pages;
    keys.max_context = s.max_context;
    FSA_RETURN_IF_ERROR(
        slc_paged_forward(c, w.q_rot, keys, topk, in.cu_seqlens, o_slc, w.slc_lse, SlcOptions{}, w.slc));
    const PrefixedKeyRows window_keys{w.key_prefix, w.win_base, w.k_win_rows, w.v_win_rows};
    FSA_RETURN_IF_ERROR(swa_prefixed_forward(c, w.q_rot, window_keys, in.cu_seqlens, o_swa, w.swa_lse));
    return cuda::combine_forward(c, in.gates, o_cmp, o_slc, o_swa, o);
  }

  decode::AttnParams at{};
  at.batch = info;
  at.nsa = nsa;
  at.q = w.q_rot.data;
  at.q_token_stride = w.q_rot.stride(0);
  at.q_head_stride = w.q_rot.stride(1);
  at.k_pages = k_pages;
  at.v_pages = v_pages;
  at.k_cmp_pages = k_cmp_pages;
  at.v_cmp_pages = v_cmp_pages;
  at.block_table = block_table;
  at.cmp_block_table = cmp_table;
  at.topk = topk.ptr<const std::int32_t>();
  at.topk_head_stride = topk.stride(0);
  at.topk_token_stride = topk.stride(1);
  at.topk_col_stride = topk.stride(2);
  const TensorView* outputs[decode::kBranches] = {&o_cmp, &o_slc, &o_swa};
  for (int b = 0; b < decode::kBranches; ++b) {
    decode::BranchOutput& out = at.out[b];
    out.o = outputs[b]->data;
    out.o_token_stride = outputs[b]->stride(0);
    out.o_head_stride = outputs[b]->stride(1);
    out.splits = plan.splits[b];
    out.rows_splits = plan.rows_splits[b];
    out.o_part = w.o_part[b];
    out.stats = w.stats[b];
  }
  at.out[static_cast<int>(decode::Branch::kCompressed)].lse = w.lse_cmp.ptr<float>();
  at.out[static_cast<int>(decode::Branch::kCompressed)].lse_head_stride = w.lse_cmp.stride(0);
  at.out[static_cast<int>(decode::Branch::kCompressed)].lse_token_stride = w.lse_cmp.stride(1);
  at.union_words = plan.union_words;
  at.union_capacity = plan.union_capacity;
  at.stages = attn_stages;
  at.stages_forced = stages_forced;
  at.quarter_launch = plan.quarter_launch;
  auto attend = [&](std::initializer_list<decode::Branch> branches, bool merge = true) -> Status {
    at.num_launch_branches = 0;
    int z = 0;
    for (const decode::Branch branch : branches) {
      at.launch_branch[at.num_launch_branches] = branch;
      at.z_begin[at.num_launch_branches] = z;
      z += at.out[static_cast<int>(branch)].splits;
      ++at.num_launch_branches;
    }
    FSA_RETURN_IF_ERROR(common::dispatch_attention(
        op, s.dtype, s.head_dim_qk, s.head_dim_v,
        [&]<class Element, int kDqk, int kDv>() { return decode::launch_decode_attention<Element, kDqk, kDv>(at, stream); }));
    return merge ? decode::launch_merge_splits(at, s.dtype, s.head_dim_v, stream) : Status::ok();
  };
  // ---- 3: compressed attention, with the window branch in the same launch ----
  // The window needs no selection, so its CTAs (after the compressed ones in blockIdx order) fill the
  // SMs the compressed launch leaves idle and its tail, and the launch after the selection carries
  // the selected branch alone.
  const decode::BlockPartials partials{w.partial_values, w.partial_max, plan.partial_quarters, plan.quarter_blocks};
  if (fused) at.partials = partials;  // written by the compressed branch's CTAs only
  FSA_RETURN_IF_ERROR(attend({decode::Branch::kCompressed, decode::Branch::kWindow}));
  at.partials = {};

  // ---- 4: selection ----
  decode::SelectParams sp{};
  sp.batch = info;
  sp.nsa = nsa;
  sp.q = w.q_rot.data;
  sp.q_token_stride = w.q_rot.stride(0);
  sp.q_head_stride = w.q_rot.stride(1);
  sp.k_cmp_pages = k_cmp_pages;
  sp.cmp_block_table = cmp_table;
  sp.lse = w.lse_cmp.ptr<const float>();
  sp.lse_head_stride = w.lse_cmp.stride(0);
  sp.lse_token_stride = w.lse_cmp.stride(1);
  sp.candidates = w.candidates;
  sp.topk = topk.ptr<std::int32_t>();
  sp.topk_head_stride = topk.stride(0);
  sp.topk_token_stride = topk.stride(1);
  sp.topk_col_stride = topk.stride(2);
  if (fused) {
    sp.partials = partials;
    sp.ranges = plan.score_ranges;
    sp.range_capacity = plan.score_range_capacity;
    FSA_RETURN_IF_ERROR(decode::launch_block_scores(sp, stream));
  } else {
    sp.ranges = plan.ranges;
    sp.tile_tokens = plan.tile_tokens;
    sp.row_chunks = plan.row_chunks;
    sp.range_capacity = plan.range_capacity;
    FSA_RETURN_IF_ERROR(common::dispatch_select(op, s.dtype, s.head_dim_qk, [&]<class Element, int kDqk>() {
      return decode::launch_decode_select<Element, kDqk>(sp, stream);
    }));
  }
  FSA_RETURN_IF_ERROR(decode::launch_finalize_topk(sp, stream));

  // ---- 5, 6: the selected branch, then its merge and the combination in one launch ----
  FSA_RETURN_IF_ERROR(attend({decode::Branch::kSelected}, /*merge=*/false));
  decode::CombineRows rows{};
  rows.gates = in.gates.data;
  rows.gate_token_stride = in.gates.stride(0);
  rows.gate_head_stride = c.gate_mode == GateMode::kShared ? 0 : in.gates.stride(1);
  rows.o = o.data;
  rows.o_token_stride = o.stride(0);
  rows.o_head_stride = o.stride(1);
  return decode::launch_merge_combine(at, rows, s.dtype, static_cast<int>(s.head_dim_v), stream);
}

}  // namespace

std::size_t nsa_prefill_workspace_bytes(const NsaConfig& config, const NsaInferenceShape& shape) {
  return workspace_bytes(config, shape, /*prefill=*/true);
}

std::size_t nsa_decode_workspace_bytes(const NsaConfig& config, const NsaInferenceShape& shape) {
  return workspace_bytes(config, decode_shape(shape), /*prefill=*/false);
}

Status nsa_prefill(const NsaConfig& config, const NsaLayerInputs& inputs, const NsaCache& cache,
                   const NsaCacheBatch& batch, const TensorView& o, const NsaInferenceBranches& branches,
                   const Workspace& workspace) {
  return run_step("nsa_prefill", /*prefill=*/true, config, inputs, cache, batch, o, branches, workspace,
                  NsaInferenceShape::of(inputs, cache, batch));
}

Status nsa_decode(const NsaConfig& config, const NsaLayerInputs& inputs, const NsaCache& cache,
                  const NsaCacheBatch& batch, const TensorView& o, const NsaInferenceBranches& branches,
                  const Workspace& workspace) {
  const NsaInferenceShape shape = NsaInferenceShape::of(inputs, cache, batch);
  if (shape.tokens > static_cast<std::int64_t>(kMaxDecodeTokens) * shape.num_seqs)
    return FSA_INVALID("q: nsa_decode takes at most " + std::to_string(kMaxDecodeTokens) +
                       " new tokens per sequence, got N=" + std::to_string(shape.tokens) + " for " +
                       std::to_string(shape.num_seqs) + " sequences");
  return run_step("nsa_decode", /*prefill=*/false, config, inputs, cache, batch, o, branches, workspace, decode_shape(shape));
}

}  // namespace fsa::cuda
