// The ops of the extension: each allocates its outputs with torch, describes every tensor as a
// TensorView and calls the fsa API, which validates the arguments and runs the op on the tensors'
// device (CPU reference or CUDA kernels). Device-independent: registration.cpp registers them for
// the CPU, cuda_registration.cpp wraps them in torch's CUDA device and stream. The scalar
// parameters come from each op's list of fields (FSA_PARAMS, fields.hpp); op_table.hpp gives the
// schemas.
//
// Memory: every op that has a workspace query allocates its workspace with torch (uint8, on the
// op's device and current stream), so torch's memory statistics and caching allocator see it; on
// the GPU the op never gets an empty Workspace, so the library's own stream-ordered allocation is
// never reached from here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "fields.hpp"

namespace fsa::torch_ext {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;
using Tensor2 = std::tuple<Tensor, Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using Tensor7 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

Tensor compressed_cu_seqlens(const Tensor& cu_seqlens FSA_PARAMS(FSA_COMPRESSION_ARGS));

Tensor compress_forward(const Tensor& x, const Tensor& cu_seqlens, const Tensor& cu_cmp, const OptionalTensor& weight,
                        const OptionalTensor& pos_emb FSA_PARAMS(FSA_COMPRESSION_ARGS));
// (dx, d_weight, d_pos_emb); a gradient of an absent input is an empty tensor.
Tensor3 compress_backward(const Tensor& x, const Tensor& cu_seqlens, const Tensor& cu_cmp, const OptionalTensor& weight,
                          const OptionalTensor& pos_emb, const Tensor& dy FSA_PARAMS(FSA_COMPRESSION_ARGS));

Tensor rope_forward(const Tensor& x, const Tensor& cu, std::int64_t position_stride FSA_PARAMS(FSA_ROPE_ARGS));
Tensor rope_backward(const Tensor& dy, const Tensor& cu, std::int64_t position_stride FSA_PARAMS(FSA_ROPE_ARGS));

Tensor2 cmp_attn_forward(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const Tensor& cu_seqlens,
                         const Tensor& cu_cmp FSA_PARAMS(FSA_CMP_ATTN_ARGS));
Tensor3 cmp_attn_backward(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, const Tensor& cu_seqlens,
                          const Tensor& cu_cmp, const Tensor& o, const Tensor& lse,
                          const Tensor& d_o FSA_PARAMS(FSA_CMP_ATTN_ARGS));

Tensor select_blocks(const Tensor& q, const Tensor& k_cmp, const Tensor& lse_cmp, const Tensor& cu_seqlens,
                     const Tensor& cu_cmp FSA_PARAMS(FSA_SELECT_ARGS));

// Selected attention's plan (fsa::slc_plan_build): uint8 [slc_plan_bytes], empty on the CPU. The
// plan, the forward and the backward of one problem take the same scalars.
Tensor slc_plan(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& topk_idx,
                const Tensor& cu_seqlens FSA_PARAMS(FSA_SLC_ATTN_ARGS));
// `plan`: one built by slc_plan, or none (the op builds one in its workspace). `deterministic` is
// the backward's; the forward and the plan take it so that all three share one list.
Tensor2 slc_attn_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& topk_idx,
                         const Tensor& cu_seqlens, const OptionalTensor& plan FSA_PARAMS(FSA_SLC_ATTN_ARGS));
Tensor3 slc_attn_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& topk_idx,
                          const Tensor& cu_seqlens, const OptionalTensor& plan, const Tensor& o, const Tensor& lse,
                          const Tensor& d_o FSA_PARAMS(FSA_SLC_ATTN_ARGS));

Tensor2 swa_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens
                        FSA_PARAMS(FSA_SWA_ARGS));
Tensor3 swa_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens, const Tensor& o,
                     const Tensor& lse, const Tensor& d_o FSA_PARAMS(FSA_SWA_ARGS));

Tensor combine_forward(const Tensor& gates, const Tensor& o_cmp, const Tensor& o_slc, const Tensor& o_swa);
Tensor4 combine_backward(const Tensor& gates, const Tensor& o_cmp, const Tensor& o_slc, const Tensor& o_swa,
                         const Tensor& d_o);

// Returns (o, saved).
Tensor2 nsa_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                    const OptionalTensor& w_k, const OptionalTensor& pe_k, const OptionalTensor& w_v,
                    const Tensor& gates FSA_PARAMS(FSA_LAYER_ARGS));
// (dq, dk, dv, dw_k, dpe_k, dw_v, d_gates); a gradient of an absent input is an empty tensor.
Tensor7 nsa_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                     const OptionalTensor& w_k, const OptionalTensor& pe_k, const OptionalTensor& w_v,
                     const Tensor& gates, const Tensor& saved, const Tensor& d_o FSA_PARAMS(FSA_LAYER_ARGS));
// Inference with a cache (fsa/cache.hpp): the layer's tensors for the new tokens (cu_seqlens: the
// packed chunk of every sequence of the batch), the pools, which the call writes, and the batch's
// tables. Returns o [N, Hq, Dv]. nsa_decode: at most fsa::kMaxDecodeTokens new tokens per sequence.
#define FSA_CACHE_CALL_PARAMS                                                                                     \
  const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens, const OptionalTensor& w_k,         \
      const OptionalTensor& pe_k, const OptionalTensor& w_v, const Tensor& gates, const Tensor& k_pages,          \
      const Tensor& v_pages, const Tensor& k_cmp_pages, const Tensor& v_cmp_pages, const Tensor& k_tail,          \
      const Tensor& block_table, const Tensor& cmp_block_table, const Tensor& cache_seqlens, const Tensor& slots
Tensor nsa_prefill(FSA_CACHE_CALL_PARAMS FSA_PARAMS(FSA_LAYER_CONFIG_ARGS));
Tensor nsa_decode(FSA_CACHE_CALL_PARAMS FSA_PARAMS(FSA_LAYER_CONFIG_ARGS));

// ---- shape ops: bytes from shapes and device alone (fake implementations, memory accounting) ----

// A problem's shape (FSA_SHAPE_ARGUMENTS in op_table.hpp).
#define FSA_SHAPE_PARAMS                                                                                   \
  std::int64_t tokens, std::int64_t num_seqs, std::int64_t heads_q, std::int64_t heads_kv,                 \
      std::int64_t head_dim_qk, std::int64_t head_dim_v, at::ScalarType dtype, c10::Device device

// (bytes of nsa_forward's `saved` output, of nsa_forward's workspace, of nsa_backward's workspace):
// what the layer ops allocate besides their outputs and gradients. The workspaces are 0 on the CPU.
std::tuple<std::int64_t, std::int64_t, std::int64_t> nsa_layer_bytes(FSA_SHAPE_PARAMS FSA_PARAMS(FSA_LAYER_ARGS));
// Bytes of slc_plan's output for topk_idx [Hkv, N, topk_width].
std::int64_t slc_plan_bytes(FSA_SHAPE_PARAMS, std::int64_t topk_width FSA_PARAMS(FSA_SLC_ATTN_ARGS));

// Bytes of each pool of a cache (fsa::nsa_cache_bytes; all 0 for an invalid config or shape).
std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t> nsa_cache_bytes(
    std::int64_t heads_kv, std::int64_t head_dim_qk, std::int64_t head_dim_v, std::int64_t num_pages,
    std::int64_t page_size, std::int64_t num_cmp_pages, std::int64_t cmp_page_size, std::int64_t num_slots,
    at::ScalarType dtype, c10::Device device FSA_PARAMS(FSA_LAYER_CONFIG_ARGS));
// (raw pages, compressed pages) a sequence of `tokens` tokens needs (fsa::nsa_cache_pages,
// nsa_cache_cmp_pages; 0 for an invalid shape), and the rows of k_tail per slot
// (fsa::nsa_cache_tail_rows).
std::tuple<std::int64_t, std::int64_t, std::int64_t> nsa_cache_pages(std::int64_t tokens, std::int64_t page_size,
                                                                     std::int64_t cmp_page_size
                                                                         FSA_PARAMS(FSA_LAYER_CONFIG_ARGS));

}  // namespace fsa::torch_ext
