// Entry points of every NSA op, forward and backward (semantics: docs/semantics.md sections 1-7).
//
// Conventions shared by all ops:
// - Tensors are caller-allocated TensorViews; outputs are fully overwritten.
// - Packed variable-length batches: `cu_seqlens` int32 [nseq+1] gives the rows of each sequence;
//   `cu_cmp` int32 [nseq+1] gives the rows of its compressed tokens (see compressed_cu_seqlens).
//   Compressed tensors may have more rows than cu_cmp[nseq] (size them with max_compressed_tokens);
//   output rows past cu_cmp[nseq] are set to zero, input rows past it are never read.
// - q [N, Hq, Dqk], k [N, Hkv, Dqk], v [N, Hkv, Dv], o [N, Hq, Dv], lse fp32 [Hq, N] (natural log).
// - Floating tensors of one call share one dtype: bf16 or fp16 (both devices), fp32 or fp64 (CPU).
//   Index tensors are int32. The last dim must be contiguous; other strides are free (int64).
// - Every tensor of a call must be on the same device; the call runs there. A device without an
//   implementation of the op returns StatusCode::kNotImplemented.
// - Gradient outputs are overwritten, not accumulated into.
// - No output may share memory with an input, another output or the workspace (an error naming the
//   output, before anything runs), except where an op says it may be its input itself (RoPE). The
//   check is exact for dense tensors; strided views (slices of one fused buffer) are not refused.
// - Ops that need GPU scratch take a trailing `Workspace` and have a `*_workspace_bytes` query
//   with the same arguments (workspace.hpp). The others (compressed_cu_seqlens, rope_*,
//   cmp_attn_forward, select_blocks, swa_forward, combine_*) need none.
#pragma once

#include <cstddef>

#include "fsa/config.hpp"
#include "fsa/status.hpp"
#include "fsa/types.hpp"
#include "fsa/workspace.hpp"

namespace fsa {

// ---- Sequence metadata -------------------------------------------------------------------------

// cu_cmp[b+1] = cu_cmp[b] + compressed_length(n_b). Runs on the device of the tensors, with no
// host synchronisation. cu_seqlens and cu_cmp: int32 [nseq+1].
Status compressed_cu_seqlens(const NsaConfig& config, const TensorView& cu_seqlens, const TensorView& cu_cmp);

// ---- Compression (docs/semantics.md section 1) --------------------------------------------------

// Compresses x [N, Hkv, D] into y [Ncmp, Hkv, Dout]. `weight` [Hkv, l*D, Dout] for kLinear, must be
// undefined (a default TensorView) for kMean (then Dout = D). `pos_emb` [Hkv, l, D] is optional
// (undefined = none); the layer passes it for keys only.
Status compress_forward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                        const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                        const TensorView& y, const Workspace& workspace = {});
// Gradients of compress_forward. `d_weight` (kLinear) and `d_pos_emb` (when pos_emb is given) may
// be undefined to skip them.
Status compress_backward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                         const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                         const TensorView& dy, const TensorView& dx, const TensorView& d_weight,
                         const TensorView& d_pos_emb, const Workspace& workspace = {});
std::size_t compress_forward_workspace_bytes(const NsaConfig& config, const TensorView& x,
                                             const TensorView& cu_seqlens, const TensorView& cu_cmp,
                                             const TensorView& weight, const TensorView& pos_emb,
                                             const TensorView& y);
std::size_t compress_backward_workspace_bytes(const NsaConfig& config, const TensorView& x,
                                              const TensorView& cu_seqlens, const TensorView& cu_cmp,
                                              const TensorView& weight, const TensorView& pos_emb,
                                              const TensorView& dy, const TensorView& dx,
                                              const TensorView& d_weight, const TensorView& d_pos_emb);

// ---- Rotary embedding (docs/semantics.md section 2) ---------------------------------------------

// y = rotate(x) for x [rows, H, D] (D even). Row r of sequence b is at position
// (r - cu[b]) * position_stride: 1 for q and k, s for compressed keys (with cu = cu_cmp).
// Rows past cu[nseq] (spare rows of a compressed tensor) are copied unchanged. y may alias x.
Status rope_forward(const RopeConfig& rope, const TensorView& x, const TensorView& cu, int position_stride,
                    const TensorView& y);
// dx = rotate^T(dy) (rotation by the negative angle). dx may alias dy.
Status rope_backward(const RopeConfig& rope, const TensorView& dy, const TensorView& cu, int position_stride,
                     const TensorView& dx);

// ---- Compressed attention (docs/semantics.md section 3) -----------------------------------------

// o [N, Hq, Dv], lse [Hq, N] over compressed keys k_cmp [Ncmp, Hkv, Dqk], v_cmp [Ncmp, Hkv, Dv]
// visible under i*s + l - 1 <= t. Queries that see nothing get o = 0 and lse = -inf.
Status cmp_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                        const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                        const TensorView& o, const TensorView& lse);
Status cmp_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                         const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                         const TensorView& o, const TensorView& lse, const TensorView& d_o,
                         const TensorView& dq, const TensorView& dk_cmp, const TensorView& dv_cmp,
                         const Workspace& workspace = {});
// fp32 accumulators of dq, dk_cmp, dv_cmp and the row sums of o * d_o (not capped: they are the
// size of q, k_cmp and v_cmp in fp32).
std::size_t cmp_attn_backward_workspace_bytes(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                                              const TensorView& v_cmp, const TensorView& cu_seqlens,
                                              const TensorView& cu_cmp, const TensorView& o, const TensorView& lse,
                                              const TensorView& d_o, const TensorView& dq,
                                              const TensorView& dk_cmp, const TensorView& dv_cmp);

// ---- Block selection (docs/semantics.md section 4) ----------------------------------------------

// topk_idx int32 [Hkv, N, K]: per token and kv group, the forced blocks plus the highest-scoring
// ones, ascending, -1 padded. lse_cmp is the compressed attention's lse [Hq, N]. Selection has no
// backward: no gradient flows through it (docs/semantics.md section 8).
Status select_blocks(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                     const TensorView& lse_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                     const TensorView& topk_idx);

// ---- Selected attention (docs/semantics.md section 5) -------------------------------------------

// How the GPU runs selected attention (docs/kernels/slc_attn.md). Every path computes the same
// function; the CPU reference ignores the choice.
enum class SlcPath {
  kAuto,        // the planner's cost model picks per call (documented with its measurements)
  kKvOuter,     // FSA order for every pair: K/V block loaded once, gathered query rows, partials
  kSplit,       // dense (query tile, block) pairs in the tile kernel, the rest KV-outer
  kQueryOuter,  // NSA order: a CTA per (tokens, kv head) walks the tokens' blocks (on Hopper four
                // neighbouring tokens a CTA, each shared block loaded once; kAuto's choice from G = 16)
};

struct SlcOptions {
  SlcPath path = SlcPath::kAuto;
  // A (query tile, block) pair is dense when at least this many of the tile's tokens selected the
  // block; 0 = the cost model's threshold (B / 4). With kSplit forced, 1 makes every pair dense.
  // (kAuto also sends a tile's pairs KV-outer when it has fewer than 4 dense blocks.)
  int dense_threshold = 0;
  // Backward only: bitwise-reproducible gradients. Every partial of dQ, dK and dV gets one writer
  // and the partials are reduced in a fixed order over a sorted plan, at the price of memory and
  // time (docs/kernels/slc_attn.md). The default adds with fp32 atomics, whose order varies from
  // run to run in the last bits. A plan built for the deterministic backward has sorted lists.
  bool deterministic = false;
  // Cap of the scratch that grows with N * Hq * topk (one chunk's plan, the partial outputs, the
  // dQ slots): queries run in chunks of consecutive tokens whose scratch fits (at least 4096
  // tokens a chunk: below that the workspace query reports more than the cap). Not capped: the
  // backward's fp32 dK / dV sums over all key rows (N * Hkv * (Dqk + Dv) * 4 bytes, the size of
  // k and v in fp32, like the flash backward's accumulators). The deterministic backward does not
  // run in chunks: it fails with an error naming workspace_cap when its scratch exceeds the cap.
  // The forward, the backward and the plan of one problem must be given the same options.
  std::size_t workspace_cap = kDefaultWorkspaceCap;
};

// The selected-attention plan (docs/kernels/slc_attn.md): per query chunk, the CSR of (kv head,
// key block) -> query rows and the dense/sparse split, built on the device from topk_idx and
// cu_seqlens with no host synchronisation, into a caller-owned uint8 buffer of slc_plan_bytes()
// bytes. The forward and the backward of one problem both take it (the whole layer builds it once
// in its forward and its backward reuses it). On the CPU the plan is empty (0 bytes) and ignored.
std::size_t slc_plan_bytes(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                           const TensorView& topk_idx, const TensorView& cu_seqlens, const SlcOptions& options = {});
Status slc_plan_build(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& plan,
                      const SlcOptions& options = {});

// Attention of each query over the union of its selected blocks (topk_idx int32 [Hkv, N, Kw], any
// width Kw). Negative, future and out-of-range entries are ignored, duplicates count once.
// `options` chooses the GPU path (the backward runs KV-outer whatever the path) and the backward's
// deterministic mode. `plan`: a plan built by slc_plan_build for these arguments and options, or
// undefined to build one in the workspace.
Status slc_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                        const TensorView& lse, const SlcOptions& options = {}, const TensorView& plan = {},
                        const Workspace& workspace = {});
Status slc_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                         const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                         const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                         const TensorView& dk, const TensorView& dv, const SlcOptions& options = {},
                         const TensorView& plan = {}, const Workspace& workspace = {});
std::size_t slc_attn_forward_workspace_bytes(const NsaConfig& config, const TensorView& q, const TensorView& k,
                                             const TensorView& v, const TensorView& topk_idx,
                                             const TensorView& cu_seqlens, const TensorView& o,
                                             const TensorView& lse, const SlcOptions& options = {},
                                             const TensorView& plan = {});
std::size_t slc_attn_backward_workspace_bytes(const NsaConfig& config, const TensorView& q, const TensorView& k,
                                              const TensorView& v, const TensorView& topk_idx,
                                              const TensorView& cu_seqlens, const TensorView& o,
                                              const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                                              const TensorView& dk, const TensorView& dv,
                                              const SlcOptions& options = {}, const TensorView& plan = {});

// ---- Sliding-window attention (docs/semantics.md section 6) -------------------------------------

// Keys [max(0, t - w), t] of the query's own sequence.
Status swa_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                   const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse);
Status swa_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                    const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse,
                    const TensorView& d_o, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                    const Workspace& workspace = {});
// fp32 accumulators of dq, dk, dv and the row sums of o * d_o (not capped: the size of q, k, v in
// fp32).
std::size_t swa_backward_workspace_bytes(const NsaConfig& config, const TensorView& q, const TensorView& k,
                                         const TensorView& v, const TensorView& cu_seqlens, const TensorView& o,
                                         const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                                         const TensorView& dk, const TensorView& dv);

// ---- Gated combination (docs/semantics.md section 7) --------------------------------------------

// o = g0 * o_cmp + g1 * o_slc + g2 * o_swa with gates [N, Hq, 3] (kPerHead) or [N, 3] (kShared).
Status combine_forward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                       const TensorView& o_slc, const TensorView& o_swa, const TensorView& o);
Status combine_backward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                        const TensorView& o_slc, const TensorView& o_swa, const TensorView& d_o,
                        const TensorView& d_gates, const TensorView& d_o_cmp, const TensorView& d_o_slc,
                        const TensorView& d_o_swa);

}  // namespace fsa
