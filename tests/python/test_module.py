"""NativeSparseAttention against the spec's composition (naive_nsa.nsa_module) in float64, its
parameters and their initialisation, and its errors."""
import math

import pytest
import torch

import fsa
import naive_nsa
from problems import LENGTHS, SMALL, cu_seqlens_of


def make_module(compression="linear", shared_gates=False, llama3=False, heads=(4, 2), dims=(8, 6)):
    rope = fsa.RopeConfig(theta=500.0, llama3_scaling=llama3, llama3_original_max_position=64)
    config = fsa.NsaConfig(**{**SMALL.__dict__, "compression": compression, "rope": rope})
    return fsa.NativeSparseAttention(24, heads[0], heads[1], dims[0], dims[1], config=config,
                                     shared_gates=shared_gates, dtype=torch.float64)


@pytest.mark.parametrize("compression", ["linear", "mean"])
@pytest.mark.parametrize("shared_gates", [False, True])
@pytest.mark.parametrize("llama3", [False, True])
def test_forward_and_backward_match_the_spec(compression, shared_gates, llama3):
    module = make_module(compression, shared_gates, llama3)
    cu = cu_seqlens_of(LENGTHS).long()  # the module accepts int64 cu_seqlens too
    x = torch.randn(int(cu[-1]), 24, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y = module(x, cu)
    params = [p for p in module.parameters()]
    grad_y = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x] + params, grad_y)
    y_ref = naive_nsa.nsa_module(module, x_ref, cu)
    grads_ref = torch.autograd.grad(y_ref, [x_ref] + params, grad_y)
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
    names = ["x"] + [name for name, _ in module.named_parameters()]
    for name, g, g_ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"grad of {name}: {m}")
        assert g.abs().sum() > 0, f"no gradient reached {name}"


def test_parameters_and_their_shapes():
    module = make_module()
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    l = SMALL.cmp_len
    assert shapes == {
        "w_k": (2, l * 8, 8), "w_v": (2, l * 6, 6), "pe_k": (2, l, 8),
        "q_proj.weight": (32, 24), "k_proj.weight": (16, 24), "v_proj.weight": (12, 24),
        "o_proj.weight": (24, 24), "gate_proj.weight": (12, 24),
    }
    shared = make_module(compression="mean", shared_gates=True)
    names = {name for name, _ in shared.named_parameters()}
    assert "w_k" not in names and "w_v" not in names and "pe_k" in names
    assert tuple(shared.gate_proj.weight.shape) == (3, 24)


def test_compression_parameters_are_xavier_uniform_per_head():
    module = fsa.NativeSparseAttention(64, 4, 2, 32, config=fsa.NsaConfig(), dtype=torch.float64)
    l = module.config.cmp_len
    for param, rows, cols in ((module.w_k, l * 32, 32), (module.w_v, l * 32, 32), (module.pe_k, l, 32)):
        bound = math.sqrt(6 / (rows + cols))
        assert param.abs().max() <= bound
        # uniform on [-bound, bound]: the max is near the bound, the variance is bound^2 / 3
        assert param.abs().max() > 0.95 * bound
        torch.testing.assert_close(param.var().item(), bound ** 2 / 3, rtol=0.1, atol=0)


def test_rejects_bad_arguments_with_named_errors():
    module = make_module()
    x = torch.randn(10, 24, dtype=torch.float64)
    with pytest.raises(ValueError, match="cu_seqlens"):
        module(x, torch.tensor([0, 11], dtype=torch.int32))
    with pytest.raises(ValueError, match="num_kv_heads"):
        fsa.NativeSparseAttention(24, 3, 2, 8)
    with pytest.raises(ValueError, match="compression"):
        fsa.NativeSparseAttention(24, 2, 1, 8, config=fsa.NsaConfig(compression="max"))
