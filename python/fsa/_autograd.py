"""Autograd formulas of the forward ops: each backward is the matching `*_backward` op.

No gradient flows through block selection (docs/semantics.md section 8): select_blocks has no formula, and the
log-sum-exp outputs, which only feed the selection, are marked non-differentiable. The `saved`
buffer of nsa_forward is opaque and non-differentiable too. Incoming gradients are made contiguous
because autograd hands out expanded (stride 0) gradients, which the C++ API rejects; an empty one
(N = 0) stays expanded, since torch calls every empty tensor contiguous, and the API accepts it: a
tensor without elements has no layout to check.

A backward op takes the forward's tensors, then its own, then the forward's scalars in the same
order (the C++ op table gives both the same list of fields), so the formulas pass the scalars
through without naming them. Every `X_forward` op with an `X_backward` op must have a formula:
importing the package fails otherwise.
"""
import torch

from . import _schema
from ._library import ops

_FORMULAS = {}


def _grad(t):
    return t.contiguous()


def _optional_grad(grad, given):
    return grad if given is not None else None


def _save_scalars(ctx, name, inputs):
    """Keeps the forward's scalars (the inputs after its leading tensors) for the backward."""
    count = _schema.tensor_count(name)
    ctx.scalars = tuple(inputs[count:])
    return inputs[:count]


def _no_grads_for(ctx):
    return (None,) * len(ctx.scalars)


# ---- compress ----------------------------------------------------------------------------------

def _compress_setup(ctx, inputs, output):
    ctx.save_for_backward(*_save_scalars(ctx, "compress_forward", inputs))


def _compress_backward(ctx, dy):
    x, cu_seqlens, cu_cmp, weight, pos_emb = ctx.saved_tensors
    dx, d_weight, d_pos_emb = ops.compress_backward(x, cu_seqlens, cu_cmp, weight, pos_emb, _grad(dy), *ctx.scalars)
    return (dx, None, None, _optional_grad(d_weight, weight), _optional_grad(d_pos_emb, pos_emb)) + _no_grads_for(ctx)


_FORMULAS["compress_forward"] = (_compress_backward, _compress_setup)


# ---- rope --------------------------------------------------------------------------------------

def _rope_setup(ctx, inputs, output):
    x, cu = _save_scalars(ctx, "rope_forward", inputs)
    ctx.save_for_backward(cu)


def _rope_backward(ctx, dy):
    (cu,) = ctx.saved_tensors
    return (ops.rope_backward(_grad(dy), cu, *ctx.scalars), None) + _no_grads_for(ctx)


_FORMULAS["rope_forward"] = (_rope_backward, _rope_setup)


# ---- attention branches ------------------------------------------------------------------------

def _attention_formula(name):
    """cmp_attn_forward(q, k_cmp, v_cmp, cu_seqlens, cu_cmp, ...), slc_attn_forward(q, k, v,
    topk_idx, cu_seqlens, ...), swa_forward(q, k, v, cu_seqlens, ...): gradients for the first
    three tensors."""
    backward_op = getattr(ops, name.replace("_forward", "_backward"))

    def setup(ctx, inputs, output):
        o, lse = output
        ctx.mark_non_differentiable(lse)
        tensors = _save_scalars(ctx, name, inputs)
        ctx.save_for_backward(*tensors, o, lse)
        ctx.tensor_count = len(tensors)

    def backward(ctx, d_o, d_lse):
        *tensors, o, lse = ctx.saved_tensors
        grads = backward_op(*tensors, o, lse, _grad(d_o), *ctx.scalars)
        return tuple(grads) + (None,) * (ctx.tensor_count - 3) + _no_grads_for(ctx)

    return backward, setup


for _name in ("cmp_attn_forward", "slc_attn_forward", "swa_forward"):
    _FORMULAS[_name] = _attention_formula(_name)


# ---- combine -----------------------------------------------------------------------------------

def _combine_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _combine_backward(ctx, d_o):
    return tuple(ops.combine_backward(*ctx.saved_tensors, _grad(d_o)))


_FORMULAS["combine_forward"] = (_combine_backward, _combine_setup)


# ---- the whole layer ---------------------------------------------------------------------------

def _layer_setup(ctx, inputs, output):
    o, saved = output
    ctx.mark_non_differentiable(saved)
    ctx.save_for_backward(*_save_scalars(ctx, "nsa_forward", inputs), saved)


def _layer_backward(ctx, d_o, d_saved):
    q, k, v, cu_seqlens, w_k, pe_k, w_v, gates, saved = ctx.saved_tensors
    dq, dk, dv, dw_k, dpe_k, dw_v, d_gates = ops.nsa_backward(
        q, k, v, cu_seqlens, w_k, pe_k, w_v, gates, saved, _grad(d_o), *ctx.scalars)
    grads = (dq, dk, dv, None, _optional_grad(dw_k, w_k), _optional_grad(dpe_k, pe_k),
             _optional_grad(dw_v, w_v), d_gates)
    return grads + _no_grads_for(ctx)


_FORMULAS["nsa_forward"] = (_layer_backward, _layer_setup)


_names = set(_schema.op_names())
_needed = {name for name in _names if name.endswith("_forward") and name[:-8] + "_backward" in _names}
if _needed != set(_FORMULAS):
    raise ImportError(f"fsa/_autograd.py is out of step with the library's ops: no formula for "
                      f"{sorted(_needed - set(_FORMULAS))}, one for {sorted(set(_FORMULAS) - _needed)}")
for _name in sorted(_needed):
    _backward, _setup = _FORMULAS[_name]
    torch.library.register_autograd(f"fsa::{_name}", _backward, setup_context=_setup)
