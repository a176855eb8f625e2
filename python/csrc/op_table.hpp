// The ops of the `fsa` torch library, each declared once: X(name, arguments, scalars, returns).
// - arguments: the schema of the leading (tensor) arguments; the C++ function `name` (ops.hpp)
//   takes them first, in this order, with these types (torch checks that at registration);
// - scalars: the op's list of fields (fields.hpp), appended to the schema with their defaults and
//   to the C++ parameters (FSA_PARAMS);
// - returns: the schema of the results.
// registration.cpp expands the table into the schemas and the CPU kernels, cuda_registration.cpp
// into the CUDA kernels, both through named_op.hpp (every error an op raises ends with its name);
// the Python package registers a fake implementation for every op of the library and an autograd
// formula for every `*_forward` op with a `*_backward` op, and fails at import when one is missing
// (python/fsa/_fake.py, _autograd.py).
#pragma once

#include "fields.hpp"

// The layer's tensors: q, k, v [N, H, D], cu_seqlens, the compression weights and the gates.
#define FSA_LAYER_TENSORS \
  "Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, Tensor? w_k, Tensor? pe_k, Tensor? w_v, Tensor gates"
// A problem's shape, as the shape ops take it (FSA_SHAPE_PARAMS in ops.hpp).
#define FSA_SHAPE_ARGUMENTS \
  "int tokens, int num_seqs, int heads_q, int heads_kv, int head_dim_qk, int head_dim_v, ScalarType dtype, Device device"

// The pools of an NSA layer's cache, which the cache calls write (mutated arguments), then the
// tables of one call's sequences (fsa/cache.hpp: NsaCache, NsaCacheBatch).
#define FSA_CACHE_TENSORS                                                                                \
  "Tensor(a!) k_pages, Tensor(b!) v_pages, Tensor(c!) k_cmp_pages, Tensor(d!) v_cmp_pages, Tensor(e!) k_tail, " \
  "Tensor block_table, Tensor cmp_block_table, Tensor cache_seqlens, Tensor slots"
// A cache's shape (fsa::NsaCacheShape), as nsa_cache_bytes takes it.
#define FSA_CACHE_SHAPE_ARGUMENTS                                                                    \
  "int heads_kv, int head_dim_qk, int head_dim_v, int num_pages, int page_size, int num_cmp_pages, " \
  "int cmp_page_size, int num_slots, ScalarType dtype, Device device"

#define FSA_OPS(X)                                                                                             \
  X(compressed_cu_seqlens, "Tensor cu_seqlens", FSA_COMPRESSION_ARGS, "Tensor")                                \
  X(compress_forward, "Tensor x, Tensor cu_seqlens, Tensor cu_cmp, Tensor? weight, Tensor? pos_emb",           \
    FSA_COMPRESSION_ARGS, "Tensor")                                                                            \
  X(compress_backward, "Tensor x, Tensor cu_seqlens, Tensor cu_cmp, Tensor? weight, Tensor? pos_emb, Tensor dy", \
    FSA_COMPRESSION_ARGS, "(Tensor dx, Tensor d_weight, Tensor d_pos_emb)")                                    \
  X(rope_forward, "Tensor x, Tensor cu, int position_stride", FSA_ROPE_ARGS, "Tensor")                         \
  X(rope_backward, "Tensor dy, Tensor cu, int position_stride", FSA_ROPE_ARGS, "Tensor")                       \
  X(cmp_attn_forward, "Tensor q, Tensor k_cmp, Tensor v_cmp, Tensor cu_seqlens, Tensor cu_cmp",                \
    FSA_CMP_ATTN_ARGS, "(Tensor o, Tensor lse)")                                                               \
  X(cmp_attn_backward,                                                                                         \
    "Tensor q, Tensor k_cmp, Tensor v_cmp, Tensor cu_seqlens, Tensor cu_cmp, Tensor o, Tensor lse, Tensor d_o", \
    FSA_CMP_ATTN_ARGS, "(Tensor dq, Tensor dk_cmp, Tensor dv_cmp)")                                            \
  X(select_blocks, "Tensor q, Tensor k_cmp, Tensor lse_cmp, Tensor cu_seqlens, Tensor cu_cmp",                 \
    FSA_SELECT_ARGS, "Tensor")                                                                                 \
  X(slc_plan, "Tensor q, Tensor k, Tensor v, Tensor topk_idx, Tensor cu_seqlens", FSA_SLC_ATTN_ARGS, "Tensor")  \
  X(slc_attn_forward, "Tensor q, Tensor k, Tensor v, Tensor topk_idx, Tensor cu_seqlens, Tensor? plan",        \
    FSA_SLC_ATTN_ARGS, "(Tensor o, Tensor lse)")                                                               \
  X(slc_attn_backward,                                                                                         \
    "Tensor q, Tensor k, Tensor v, Tensor topk_idx, Tensor cu_seqlens, Tensor? plan, Tensor o, Tensor lse, "   \
    "Tensor d_o",                                                                                              \
    FSA_SLC_ATTN_ARGS, "(Tensor dq, Tensor dk, Tensor dv)")                                                    \
  X(swa_forward, "Tensor q, Tensor k, Tensor v, Tensor cu_seqlens", FSA_SWA_ARGS, "(Tensor o, Tensor lse)")    \
  X(swa_backward, "Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, Tensor o, Tensor lse, Tensor d_o",         \
    FSA_SWA_ARGS, "(Tensor dq, Tensor dk, Tensor dv)")                                                         \
  X(combine_forward, "Tensor gates, Tensor o_cmp, Tensor o_slc, Tensor o_swa", FSA_NO_ARGS, "Tensor")          \
  X(combine_backward, "Tensor gates, Tensor o_cmp, Tensor o_slc, Tensor o_swa, Tensor d_o", FSA_NO_ARGS,       \
    "(Tensor d_gates, Tensor d_o_cmp, Tensor d_o_slc, Tensor d_o_swa)")                                        \
  X(nsa_forward, FSA_LAYER_TENSORS, FSA_LAYER_ARGS, "(Tensor o, Tensor saved)")                                \
  X(nsa_backward, FSA_LAYER_TENSORS ", Tensor saved, Tensor d_o", FSA_LAYER_ARGS,                              \
    "(Tensor dq, Tensor dk, Tensor dv, Tensor dw_k, Tensor dpe_k, Tensor dw_v, Tensor d_gates)")              \
  X(nsa_prefill, FSA_LAYER_TENSORS ", " FSA_CACHE_TENSORS, FSA_LAYER_CONFIG_ARGS, "Tensor")                     \
  X(nsa_decode, FSA_LAYER_TENSORS ", " FSA_CACHE_TENSORS, FSA_LAYER_CONFIG_ARGS, "Tensor")

// Shape ops, without tensor arguments (one kernel for every dispatch key): the bytes the ops
// allocate, from shapes alone, for the fake implementations (the layer's saved buffer, the plan)
// and for accounting (the layer's workspaces, 0 on the CPU); a cache's pool bytes and what one
// sequence needs of it (python/fsa/cache.py sizes the pools and hands out pages with them).
#define FSA_SHAPE_OPS(X)                                                                                     \
  X(nsa_layer_bytes, FSA_SHAPE_ARGUMENTS, FSA_LAYER_ARGS,                                                     \
    "(int saved, int forward_workspace, int backward_workspace)")                                             \
  X(slc_plan_bytes, FSA_SHAPE_ARGUMENTS ", int topk_width", FSA_SLC_ATTN_ARGS, "int")                         \
  X(nsa_cache_bytes, FSA_CACHE_SHAPE_ARGUMENTS, FSA_LAYER_CONFIG_ARGS,                                         \
    "(int k_pages, int v_pages, int k_cmp_pages, int v_cmp_pages, int k_tail)")                                \
  X(nsa_cache_pages, "int tokens, int page_size, int cmp_page_size", FSA_LAYER_CONFIG_ARGS,                    \
    "(int pages, int cmp_pages, int tail_rows)")
