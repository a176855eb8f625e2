"""Finite-difference gradients (torch.autograd.gradcheck, float64) of every differentiable op."""
import pytest
import torch

from op_cases import op_cases
from problems import TINY_LENGTHS

DIFFERENTIABLE = ["compress_forward", "compress_forward_mean", "rope_forward", "rope_forward_compressed",
                  "cmp_attn_forward", "slc_attn_forward", "swa_forward", "combine_forward", "nsa_forward"]


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_gradcheck(name):
    op, args, differentiable = op_cases(TINY_LENGTHS, heads_q=2, heads_kv=1, dim_qk=4, dim_v=4)[name]
    args = list(args)
    for i in differentiable:
        args[i] = args[i].detach().requires_grad_(True)

    def differentiable_outputs(*inputs):
        out = op(*inputs)
        # lse and the layer's `saved` buffer are non-differentiable outputs
        return out[0] if isinstance(out, tuple) else out

    # The attention ops normalise with an fp32 log-sum-exp (see test_ops_vs_naive.py), hence the
    # tolerances above float64's.
    assert torch.autograd.gradcheck(differentiable_outputs, tuple(args), eps=1e-6, atol=1e-5, rtol=1e-4)
