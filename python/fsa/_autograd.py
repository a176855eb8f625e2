"""Autograd formulas of the forward ops: each backward is the matching `*_backward` op.

No gradient flows through block selection (spec section 8): select_blocks has no formula, and the
log-sum-exp outputs, which only feed the selection, are marked non-differentiable. The `saved`
buffer of nsa_forward is opaque and non-differentiable too. Incoming gradients are made contiguous
because autograd hands out expanded (stride 0) gradients, which the C++ API rejects.
"""
import torch

from ._library import ops
from .config import LAYER_ARG_COUNT


def _grad(t):
    return t.contiguous()


def _optional_grad(grad, given):
    return grad if given is not None else None


# ---- compress ----------------------------------------------------------------------------------

def _compress_setup(ctx, inputs, output):
    x, cu_seqlens, cu_cmp, weight, pos_emb, cmp_len, cmp_stride = inputs
    ctx.save_for_backward(x, cu_seqlens, cu_cmp, weight, pos_emb)
    ctx.window = (cmp_len, cmp_stride)


def _compress_backward(ctx, dy):
    x, cu_seqlens, cu_cmp, weight, pos_emb = ctx.saved_tensors
    dx, d_weight, d_pos_emb = ops.compress_backward(x, cu_seqlens, cu_cmp, weight, pos_emb, _grad(dy), *ctx.window)
    return dx, None, None, _optional_grad(d_weight, weight), _optional_grad(d_pos_emb, pos_emb), None, None


torch.library.register_autograd("fsa::compress_forward", _compress_backward, setup_context=_compress_setup)


# ---- rope --------------------------------------------------------------------------------------

def _rope_setup(ctx, inputs, output):
    x, cu, *scalars = inputs
    ctx.save_for_backward(cu)
    ctx.scalars = scalars


def _rope_backward(ctx, dy):
    (cu,) = ctx.saved_tensors
    dx = ops.rope_backward(_grad(dy), cu, *ctx.scalars)
    return (dx, None) + (None,) * len(ctx.scalars)


torch.library.register_autograd("fsa::rope_forward", _rope_backward, setup_context=_rope_setup)


# ---- attention branches ------------------------------------------------------------------------

def _attention_setup(ctx, inputs, output, tensor_count):
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(*inputs[:tensor_count], o, lse)
    ctx.scalars = inputs[tensor_count:]
    ctx.input_count = len(inputs)


def _attention_backward(backward_op, differentiable_count):
    def backward(ctx, d_o, d_lse):
        *tensors, o, lse = ctx.saved_tensors
        grads = backward_op(*tensors, o, lse, _grad(d_o), *ctx.scalars)
        return tuple(grads) + (None,) * (ctx.input_count - differentiable_count)

    return backward


# cmp_attn_forward(q, k_cmp, v_cmp, cu_seqlens, cu_cmp, ...), slc_attn_forward(q, k, v, topk_idx,
# cu_seqlens, ...), swa_forward(q, k, v, cu_seqlens, ...): gradients for the first three.
for _name, _tensor_count in (("cmp_attn", 5), ("slc_attn", 5), ("swa", 4)):
    torch.library.register_autograd(
        f"fsa::{_name}_forward",
        _attention_backward(getattr(ops, f"{_name}_backward"), 3),
        setup_context=lambda ctx, inputs, output, n=_tensor_count: _attention_setup(ctx, inputs, output, n),
    )


# ---- combine -----------------------------------------------------------------------------------

def _combine_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _combine_backward(ctx, d_o):
    return tuple(ops.combine_backward(*ctx.saved_tensors, _grad(d_o)))


torch.library.register_autograd("fsa::combine_forward", _combine_backward, setup_context=_combine_setup)


# ---- the whole layer ---------------------------------------------------------------------------

def _layer_setup(ctx, inputs, output):
    o, saved = output
    ctx.mark_non_differentiable(saved)
    tensors = inputs[: len(inputs) - LAYER_ARG_COUNT]
    ctx.save_for_backward(*tensors, saved)
    ctx.scalars = inputs[len(inputs) - LAYER_ARG_COUNT:]


def _layer_backward(ctx, d_o, d_saved):
    q, k, v, cu_seqlens, w_k, pe_k, w_v, gates, saved = ctx.saved_tensors
    dq, dk, dv, dw_k, dpe_k, dw_v, d_gates = ops.nsa_backward(
        q, k, v, cu_seqlens, w_k, pe_k, w_v, gates, saved, _grad(d_o), *ctx.scalars)
    grads = (dq, dk, dv, None, _optional_grad(dw_k, w_k), _optional_grad(dpe_k, pe_k),
             _optional_grad(dw_v, w_v), d_gates)
    return grads + (None,) * LAYER_ARG_COUNT


torch.library.register_autograd("fsa::nsa_forward", _layer_backward, setup_context=_layer_setup)
