// Host side of the inference kernels: the launchers decode_step.cu composes into nsa_prefill /
// nsa_decode. Each launches on `stream`, reads sizes from its params only, and never waits for the
// device, so a step can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include "fsa/status.hpp"
#include "fsa/types.hpp"
#include "kernels/decode/decode_params.hpp"

namespace fsa::cuda::decode {

// ---- decode_append.cu ----
// The staging offsets (cu_stage, cu_cmp_stage) and the staged pre-RoPE windows of a call whose
// compression reads them (compress_forward: calls longer than a decode step): reads the old key
// tail, so it runs before launch_append_tokens overwrites it.
Status launch_stage_windows(const AppendParams& p, DType dtype, cudaStream_t stream);
// The compressed tokens (k_cmp_new / v_cmp_new, compressed from the staged windows) rotated at i*s
// and written into the compressed pools.
Status launch_append_compressed(const AppendParams& p, DType dtype, cudaStream_t stream);
// q rotated into q_rot; k rotated and v into the pools; the key tail's last l positions.
Status launch_append_tokens(const AppendParams& p, DType dtype, cudaStream_t stream);
// The CTAs a new token's heads (Hq + Hkv units) are split over in the append: about target_ctas
// CTAs in all, at least min_heads heads a CTA, one (every head) once the tokens alone fill that
// many (prefill chunks). append_tokens_kernel: about 2048 CTAs of 128 threads, 4 heads a CTA.
int append_head_slices(long long tokens, int heads, int min_heads = 4, long long target_ctas = 2048);

// ---- decode_compress.cu ----
// A decode step's new compressed tokens, compressed from the windows where they are (key tail,
// value pages, chunk), k~ rotated at i*s, into the compressed pools, in one launch (longer calls
// stage the windows and run the training's compress_forward, then launch_append_compressed). It
// reads the old key
// tail: with append_tokens the same launch does launch_append_tokens' work (only where no sequence
// brings more than kMaxDecodeTokens tokens, an nsa_decode call: those overwrite no ring row a
// window reads); without, launch_append_tokens follows it.
Status launch_compress_append(const CompressAppendParams& p, bool append_tokens, DType dtype, cudaStream_t stream);
// Whether it takes these params: head dims multiples of 8 up to 256, weights 16-byte aligned with
// strides multiples of 8 elements, the window within the shared memory bound (else the call takes
// the longer calls' route).
bool compress_append_supported(const CompressAppendParams& p);

// ---- decode_gather.cu ----
// A long prefill chunk's compressed tokens and window keys out of the pages into contiguous rows
// (GatherParams), after the append wrote the chunk's own.
Status launch_gather_keys(const GatherParams& p, DType dtype, cudaStream_t stream);

// ---- decode_attn_kernel.cuh (instantiations/decode_attn_*.cu) ----
template <class Element, int kDqk, int kDv>
Status launch_decode_attention(const AttnParams& p, cudaStream_t stream);
// Launches of the key-quarter kernel since the process started (a test's proof that a step ran it).
void note_quarter_launch();
long long quarter_kernel_launches();

// ---- decode_merge.cu ----
// o and lse of the launched branches that ran in several splits.
Status launch_merge_splits(const AttnParams& p, DType dtype, int dim_v, cudaStream_t stream);
// The selected branch's merge (when it ran in several splits) and the gated combination of the
// three branches into o, in one launch: bit for bit what
// launch_merge_splits and combine_forward compute.
Status launch_merge_combine(const AttnParams& p, const CombineRows& c, DType dtype, int dim_v, cudaStream_t stream);

// ---- decode_select_kernel.cuh (instantiations/decode_select_*.cu) ----
template <class Element, int kDqk>
Status launch_decode_select(const SelectParams& p, cudaStream_t stream);

// ---- decode_block_scores.cu ----
// The fused route's per-range candidates from the compressed attention's block partials.
Status launch_block_scores(const SelectParams& p, cudaStream_t stream);

// ---- decode_topk.cu ----
// topk_idx from the ranges' candidates and the forced blocks.
Status launch_finalize_topk(const SelectParams& p, cudaStream_t stream);

}  // namespace fsa::cuda::decode
