"""torch.library.opcheck on every op: schema, fake (meta) implementation against the real outputs,
autograd registration, and tracing by AOT autograd with dynamic shapes."""
import pytest
import torch

from fsa._schema import op_names
from op_cases import ALL_OPS, op_cases
from problems import LENGTHS


@pytest.mark.parametrize("name", ALL_OPS)
def test_opcheck(name):
    op, args, differentiable = op_cases(LENGTHS, dtype=torch.float32)[name]
    args = tuple(a.detach().requires_grad_(True) if i in differentiable else a for i, a in enumerate(args))
    torch.library.opcheck(op, args)


def test_every_registered_op_is_checked():
    registered = set(op_names())
    assert {"nsa_forward", "nsa_backward", "select_blocks"} <= registered
    checked = {name.removesuffix("_mean").removesuffix("_compressed").removesuffix("_unplanned") for name in ALL_OPS}
    # the shape ops take no tensors: helpers of the fake implementations (tested through them)
    assert registered - checked == {"nsa_layer_bytes", "slc_plan_bytes", "nsa_cache_bytes", "nsa_cache_pages"}, \
        registered - checked
