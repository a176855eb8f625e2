"""Fake (meta) implementations of the ops: output shapes and dtypes from input shapes alone, so
that torch.compile and torch.export trace the ops without running them. Shapes follow ops.hpp.

Each implementation takes the call's arguments by schema name (`a.x`, `a.cmp_stride`, ...; see
_schema.bind), so none repeats an op's argument list. Every op of the library with tensor
arguments must have one: importing the package fails otherwise.
"""
import torch

from . import _schema
from ._library import ops
from .config import max_compressed_tokens

_FAKES = {}


def _fake(*names):
    def register(fn):
        for name in names:
            _FAKES[name] = fn
        return fn

    return register


def _attention_outputs(q, v):
    n, heads_q = q.shape[0], q.shape[1]
    return q.new_empty((n, heads_q, v.shape[2])), q.new_empty((heads_q, n), dtype=torch.float32)


def _like(t):
    return t.new_empty(t.shape)


def _grad_for(optional_input, reference):
    return _like(optional_input) if optional_input is not None else reference.new_empty((0,))


@_fake("compressed_cu_seqlens")
def _(a):
    return _like(a.cu_seqlens)


@_fake("compress_forward")
def _(a):
    out_dim = a.weight.shape[2] if a.weight is not None else a.x.shape[2]
    return a.x.new_empty((max_compressed_tokens(a.x.shape[0], a.cmp_stride), a.x.shape[1], out_dim))


@_fake("compress_backward")
def _(a):
    return _like(a.x), _grad_for(a.weight, a.x), _grad_for(a.pos_emb, a.x)


@_fake("rope_forward")
def _(a):
    return _like(a.x)


@_fake("rope_backward")
def _(a):
    return _like(a.dy)


@_fake("cmp_attn_forward")
def _(a):
    return _attention_outputs(a.q, a.v_cmp)


@_fake("cmp_attn_backward")
def _(a):
    return _like(a.q), _like(a.k_cmp), _like(a.v_cmp)


@_fake("select_blocks")
def _(a):
    return a.q.new_empty((a.k_cmp.shape[1], a.q.shape[0], a.topk), dtype=torch.int32)


@_fake("slc_attn_forward", "swa_forward")
def _(a):
    return _attention_outputs(a.q, a.v)


@_fake("slc_attn_backward", "swa_backward")
def _(a):
    return _like(a.q), _like(a.k), _like(a.v)


@_fake("combine_forward")
def _(a):
    return _like(a.o_cmp)


@_fake("combine_backward")
def _(a):
    return _like(a.gates), _like(a.o_cmp), _like(a.o_slc), _like(a.o_swa)


def _shape_op(shape_op, faked_op, a, *extra):
    """Shape op `shape_op` (the C++ library's exact bytes) on the problem's sizes, `extra` and the
    scalars of the call of `faked_op` (the shape ops take the same list of fields)."""
    sizes = (a.q.shape[0], a.cu_seqlens.shape[0] - 1, a.q.shape[1], a.k.shape[1], a.q.shape[2], a.v.shape[2])
    scalars = {name: getattr(a, name) for name in _schema.scalar_names(faked_op)}
    return getattr(ops, shape_op)(*sizes, a.q.dtype, a.q.device, *extra, **scalars)


def _byte_buffer(a, bytes_fn, sized_by):
    """uint8 [bytes_fn()] when the shapes of the tensors `sized_by` are concrete, else an unbacked
    size under dynamic shapes (the layout is the C++ library's business, not re-derived here)."""
    concrete = all(isinstance(s, int) for t in sized_by for s in t.shape)
    size = bytes_fn() if concrete else torch.library.get_ctx().new_dynamic_size()
    return a.q.new_empty((size,), dtype=torch.uint8)


@_fake("slc_plan")
def _(a):
    return _byte_buffer(a, lambda: _shape_op("slc_plan_bytes", "slc_plan", a, a.topk_idx.shape[2]),
                        (a.q, a.k, a.v, a.cu_seqlens, a.topk_idx))


@_fake("nsa_forward")
def _(a):
    o = a.q.new_empty((a.q.shape[0], a.q.shape[1], a.v.shape[2]))
    saved = _byte_buffer(a, lambda: _shape_op("nsa_layer_bytes", "nsa_forward", a)[0], (a.q, a.k, a.v, a.cu_seqlens))
    return o, saved


@_fake("nsa_backward")
def _(a):
    return (_like(a.q), _like(a.k), _like(a.v), _grad_for(a.w_k, a.q), _grad_for(a.pe_k, a.q),
            _grad_for(a.w_v, a.q), _like(a.gates))


@_fake("nsa_prefill", "nsa_decode")
def _(a):
    # The pools are written in place (mutated arguments): o is the only output.
    return a.q.new_empty((a.q.shape[0], a.q.shape[1], a.v.shape[2]))


def _register(name, fn):
    torch.library.register_fake(f"fsa::{name}", lambda *args, **kwargs: fn(_schema.bind(name, args, kwargs)))


_needed = {name for name in _schema.op_names() if _schema.has_tensors(name)}  # the shape ops run as they are
if _needed != set(_FAKES):
    raise ImportError(f"fsa/_fake.py is out of step with the library's ops: no fake implementation for "
                      f"{sorted(_needed - set(_FAKES))}, one for unknown ops {sorted(set(_FAKES) - _needed)}")
for _name in sorted(_needed):
    _register(_name, _FAKES[_name])
