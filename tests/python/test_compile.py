"""torch.compile(fullgraph=True) traces the module through the ops' fake implementations and
autograd formulas, and the compiled module computes what the eager one does."""
import pytest
import torch

import fsa
from problems import LENGTHS, SMALL, cu_seqlens_of


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_module_matches_eager(backend):
    torch._dynamo.reset()
    module = fsa.NativeSparseAttention(24, 4, 2, 8, config=SMALL)
    cu = cu_seqlens_of(LENGTHS)
    x = torch.randn(int(cu[-1]), 24, requires_grad=True)
    compiled = torch.compile(module, backend=backend, fullgraph=True)
    y = compiled(x, cu)
    (grad_x,) = torch.autograd.grad(y.square().sum(), x)
    y_eager = module(x, cu)
    (grad_x_eager,) = torch.autograd.grad(y_eager.square().sum(), x)
    torch.testing.assert_close(y, y_eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_x, grad_x_eager, atol=1e-4, rtol=1e-4)


def test_compiled_module_with_dynamic_shapes_matches_eager():
    """One graph for several batch shapes: the layer's saved buffer then has a size only known at
    run time (fsa/_fake.py), which AOT autograd must carry to the backward."""
    torch._dynamo.reset()
    module = fsa.NativeSparseAttention(24, 4, 2, 8, config=SMALL)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True, dynamic=True)
    for lengths in (LENGTHS, (90, 41), (33,)):
        cu = cu_seqlens_of(lengths)
        x = torch.randn(int(cu[-1]), 24, requires_grad=True)
        y = compiled(x, cu)
        (grad_x,) = torch.autograd.grad(y.square().sum(), x)
        y_eager = module(x, cu)
        (grad_x_eager,) = torch.autograd.grad(y_eager.square().sum(), x)
        torch.testing.assert_close(y, y_eager, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad_x, grad_x_eager, atol=1e-4, rtol=1e-4)
