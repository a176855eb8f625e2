"""Fake (meta) implementations of the ops: output shapes and dtypes from input shapes alone, so
that torch.compile and torch.export trace the ops without running them. Shapes follow ops.hpp.
"""
import torch

from ._library import ops
from .config import max_compressed_tokens


def _attention_outputs(q, v):
    n, heads_q = q.shape[0], q.shape[1]
    return q.new_empty((n, heads_q, v.shape[2])), q.new_empty((heads_q, n), dtype=torch.float32)


def _like(t):
    return t.new_empty(t.shape)


def _grad_for(optional_input, reference):
    return _like(optional_input) if optional_input is not None else reference.new_empty((0,))


@torch.library.register_fake("fsa::compressed_cu_seqlens")
def _(cu_seqlens, cmp_len, cmp_stride):
    return _like(cu_seqlens)


@torch.library.register_fake("fsa::compress_forward")
def _(x, cu_seqlens, cu_cmp, weight, pos_emb, cmp_len, cmp_stride):
    out_dim = weight.shape[2] if weight is not None else x.shape[2]
    return x.new_empty((max_compressed_tokens(x.shape[0], cmp_stride), x.shape[1], out_dim))


@torch.library.register_fake("fsa::compress_backward")
def _(x, cu_seqlens, cu_cmp, weight, pos_emb, dy, cmp_len, cmp_stride):
    return _like(x), _grad_for(weight, x), _grad_for(pos_emb, x)


@torch.library.register_fake("fsa::rope_forward")
def _(x, cu, position_stride, *rope):
    return _like(x)


@torch.library.register_fake("fsa::rope_backward")
def _(dy, cu, position_stride, *rope):
    return _like(dy)


@torch.library.register_fake("fsa::cmp_attn_forward")
def _(q, k_cmp, v_cmp, cu_seqlens, cu_cmp, cmp_len, cmp_stride, scale):
    return _attention_outputs(q, v_cmp)


@torch.library.register_fake("fsa::cmp_attn_backward")
def _(q, k_cmp, v_cmp, cu_seqlens, cu_cmp, o, lse, d_o, cmp_len, cmp_stride, scale):
    return _like(q), _like(k_cmp), _like(v_cmp)


@torch.library.register_fake("fsa::select_blocks")
def _(q, k_cmp, lse_cmp, cu_seqlens, cu_cmp, cmp_len, cmp_stride, block_size, topk, init_blocks,
      local_blocks, scale, aggregation):
    return q.new_empty((k_cmp.shape[1], q.shape[0], topk), dtype=torch.int32)


@torch.library.register_fake("fsa::slc_attn_forward")
def _(q, k, v, topk_idx, cu_seqlens, block_size, scale, path="auto", dense_threshold=0, deterministic=False):
    return _attention_outputs(q, v)


@torch.library.register_fake("fsa::slc_attn_backward")
def _(q, k, v, topk_idx, cu_seqlens, o, lse, d_o, block_size, scale, path="auto", dense_threshold=0,
      deterministic=False):
    return _like(q), _like(k), _like(v)


@torch.library.register_fake("fsa::swa_forward")
def _(q, k, v, cu_seqlens, window, scale):
    return _attention_outputs(q, v)


@torch.library.register_fake("fsa::swa_backward")
def _(q, k, v, cu_seqlens, o, lse, d_o, window, scale):
    return _like(q), _like(k), _like(v)


@torch.library.register_fake("fsa::combine_forward")
def _(gates, o_cmp, o_slc, o_swa):
    return _like(o_cmp)


@torch.library.register_fake("fsa::combine_backward")
def _(gates, o_cmp, o_slc, o_swa, d_o):
    return _like(gates), _like(o_cmp), _like(o_slc), _like(o_swa)


def _saved_bytes(q, k, v, cu_seqlens, config_args):
    """The exact size when the shapes are concrete; an unbacked size under dynamic shapes (the
    layout is the C++ library's business, not re-derived here)."""
    sizes = (q.shape[0], cu_seqlens.shape[0] - 1, q.shape[1], k.shape[1], q.shape[2], v.shape[2])
    if all(isinstance(s, int) for s in sizes):
        return ops.nsa_saved_bytes(*sizes, q.dtype, q.device, *config_args)
    return torch.library.get_ctx().new_dynamic_size()


@torch.library.register_fake("fsa::nsa_forward")
def _(q, k, v, cu_seqlens, w_k, pe_k, w_v, gates, *config_args):
    o = q.new_empty((q.shape[0], q.shape[1], v.shape[2]))
    saved = q.new_empty((_saved_bytes(q, k, v, cu_seqlens, config_args),), dtype=torch.uint8)
    return o, saved


@torch.library.register_fake("fsa::nsa_backward")
def _(q, k, v, cu_seqlens, w_k, pe_k, w_v, gates, saved, d_o, *config_args):
    return (_like(q), _like(k), _like(v), _grad_for(w_k, q), _grad_for(pe_k, q), _grad_for(w_v, q),
            _like(gates))
