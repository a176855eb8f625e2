"""The op schemas (declared once, in python/csrc/op_table.hpp and fields.hpp) and the Python side
agree: every config scalar of an op is a field of NsaConfig with the same default, every other
scalar is a keyword of the functional API, and a config value reaches the C++ op by name."""
import inspect

import pytest
import torch

import fsa
from fsa import _schema
from problems import SMALL, make_problem


def _schema_scalars(name):
    return {a.name: a.default for a in _schema.arguments(name)[_schema.tensor_count(name):]}


def _functional_keywords():
    names = set()
    for function in vars(fsa.functional).values():
        if inspect.isfunction(function) and function.__module__ == fsa.functional.__name__:
            names |= set(inspect.signature(function).parameters)
    return names


def test_config_fields_are_the_layer_schema_with_the_same_defaults():
    fields = _schema.config_fields(fsa.NsaConfig())
    schema = _schema_scalars("nsa_forward")
    assert set(fields) <= set(schema), f"NsaConfig fields the layer ops lack: {set(fields) - set(schema)}"
    options = set(schema) - set(fields)
    layer_keywords = set(inspect.signature(fsa.nsa_attention).parameters)
    assert options <= layer_keywords, f"layer op arguments neither in NsaConfig nor nsa_attention: {options}"
    for name, value in fields.items():
        assert schema[name] == value, f"{name}: C++ default {schema[name]!r}, Python default {value!r}"
    # the backward, the shape op and the selected-attention ops take the same scalars in the same order
    assert _schema.scalar_names("nsa_backward") == _schema.scalar_names("nsa_forward")
    assert _schema.scalar_names("nsa_layer_bytes")[-len(schema):] == _schema.scalar_names("nsa_forward")
    slc = _schema.scalar_names("slc_plan")
    assert _schema.scalar_names("slc_attn_forward") == _schema.scalar_names("slc_attn_backward") == slc
    assert _schema.scalar_names("slc_plan_bytes")[-len(slc):] == slc


def test_every_op_scalar_is_a_config_field_or_a_functional_keyword():
    known = set(_schema.config_fields(fsa.NsaConfig())) | _functional_keywords()
    for name in _schema.op_names():
        if not _schema.has_tensors(name):
            continue
        unknown = set(_schema.scalar_names(name)) - known
        assert not unknown, f"fsa::{name}: {unknown} come from neither NsaConfig nor the functional API"


def test_op_args_fill_scalars_by_name_and_reject_drift():
    config = fsa.NsaConfig(window=77, rope=fsa.RopeConfig(theta=123.0))
    args = dict(zip((a.name for a in _schema.arguments("nsa_forward")),
                    _schema.op_args("nsa_forward", *range(8), config=config, workspace_cap=5)))
    assert args["window"] == 77 and args["rope_theta"] == 123.0 and args["rope_enabled"] is True
    assert args["workspace_cap"] == 5
    with pytest.raises(TypeError, match="takes no argument 'bogus'"):
        _schema.op_args("swa_forward", *range(4), config=config, bogus=1)
    with pytest.raises(TypeError, match="'window' is neither a field of RopeConfig"):
        _schema.op_args("swa_forward", *range(4), config=fsa.RopeConfig())


def test_nested_config_values_reach_the_op_under_their_path():
    p = make_problem()
    rope = fsa.RopeConfig(llama3_scaling=True, llama3_original_max_position=2 ** 40)
    with pytest.raises(ValueError, match=r"^config\.rope\.llama3_original_max_position: .* does not fit in an int"):
        fsa.rope(p.q, p.cu_seqlens, 1, fsa.NsaConfig(rope=rope))
    with pytest.raises(ValueError, match=r"^config\.compression: expected 'linear' or 'mean', got 'max'"):
        fsa.nsa_attention(p.q, p.k, p.v, p.cu_seqlens, p.gates, p.w_k, p.w_v, p.pe_k,
                          fsa.NsaConfig(**{**SMALL.__dict__, "compression": "max"}))


def test_scale_none_is_the_default_scale():
    p = make_problem()
    default, _ = fsa.sliding_window_attention(p.q, p.k, p.v, p.cu_seqlens, SMALL)
    explicit, _ = fsa.sliding_window_attention(p.q, p.k, p.v, p.cu_seqlens,
                                               fsa.NsaConfig(**{**SMALL.__dict__, "scale": p.q.shape[2] ** -0.5}))
    torch.testing.assert_close(default, explicit, rtol=1e-6, atol=1e-6)
