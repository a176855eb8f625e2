"""workspace_cap and the selected-attention plan on the CPU: the option reaches every op of a call
(the plan, the forward and, through autograd, the backward) with the caller's value, bad values
raise errors naming it, and the plan built once is shared by the forward and the backward. The
GPU side (torch allocates every workspace; chunked runs give the same results) is in
test_gpu_workspace.py."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fsa
from fsa import _schema
from problems import LENGTHS, SMALL, cu_seqlens_of, make_problem, random_topk

ops = torch.ops.fsa


class RecordFsaCalls(TorchDispatchMode):
    """Records every fsa op called while active: (name, {argument name: value})."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name.startswith("fsa::"):
            op = name.removeprefix("fsa::")
            self.calls.append((op, vars(_schema.bind(op, args, kwargs))))
        return func(*args, **kwargs)

    def args_of(self, op):
        return [arguments for name, arguments in self.calls if name == op]


@pytest.mark.parametrize("workspace_cap", [None, 0, 123456, 1 << 40])
def test_module_passes_workspace_cap_to_forward_and_backward(workspace_cap):
    module = fsa.NativeSparseAttention(24, 4, 2, 8, config=SMALL, workspace_cap=workspace_cap, dtype=torch.float64)
    assert module.workspace_cap == workspace_cap and f"workspace_cap={workspace_cap}" in repr(module)
    cu = cu_seqlens_of(LENGTHS)
    x = torch.randn(int(cu[-1]), 24, dtype=torch.float64, requires_grad=True)
    with RecordFsaCalls() as record:
        module(x, cu).sum().backward()
    (forward,) = record.args_of("nsa_forward")
    (backward,) = record.args_of("nsa_backward")
    assert forward["workspace_cap"] == workspace_cap and backward["workspace_cap"] == workspace_cap
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_selected_attention_builds_one_plan_for_forward_and_backward():
    p = make_problem()
    topk = random_topk(2, p.cu_seqlens, width=4, block_size=SMALL.block_size)
    q = p.q.detach().requires_grad_(True)
    with RecordFsaCalls() as record:
        o, _ = fsa.selected_attention(q, p.k, p.v, topk, p.cu_seqlens, SMALL, workspace_cap=4096)
        o.sum().backward()
    (plan_call,) = record.args_of("slc_plan")
    (forward,) = record.args_of("slc_attn_forward")
    (backward,) = record.args_of("slc_attn_backward")
    assert forward["plan"] is not None and backward["plan"] is forward["plan"]
    for call in (plan_call, forward, backward):
        assert call["workspace_cap"] == 4096 and call["path"] == "auto"
    assert forward["plan"].dtype == torch.uint8 and forward["plan"].numel() == 0  # the CPU needs no plan
    # a plan given by the caller is used as it is, and gives the same result
    plan = fsa.selected_attention_plan(p.q, p.k, p.v, topk, p.cu_seqlens, SMALL, workspace_cap=4096)
    o_planned, _ = fsa.selected_attention(p.q, p.k, p.v, topk, p.cu_seqlens, SMALL, workspace_cap=4096, plan=plan)
    torch.testing.assert_close(o_planned, o.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("bad,error", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("4GiB", TypeError)])
def test_bad_workspace_cap_is_an_error_naming_it(bad, error):
    p = make_problem()
    with pytest.raises(error, match=r"^workspace_cap: "):
        fsa.NativeSparseAttention(24, 4, 2, 8, config=SMALL, workspace_cap=bad)
    with pytest.raises(error, match=r"^workspace_cap: "):
        fsa.nsa_attention(p.q, p.k, p.v, p.cu_seqlens, p.gates, p.w_k, p.w_v, p.pe_k, SMALL, workspace_cap=bad)
    topk = torch.zeros(2, p.q.shape[0], 1, dtype=torch.int32)
    with pytest.raises(error, match=r"^workspace_cap: "):
        fsa.selected_attention(p.q, p.k, p.v, topk, p.cu_seqlens, SMALL, workspace_cap=bad)


def test_ops_reject_a_negative_or_non_int_workspace_cap_by_name():
    """The ops check too, for callers of torch.ops.fsa."""
    p = make_problem()
    layer = (p.q, p.k, p.v, p.cu_seqlens, p.w_k, p.pe_k, p.w_v, p.gates)
    with pytest.raises(ValueError, match=r"^workspace_cap: expected a byte count >= 0, got -5"):
        ops.nsa_forward(*_schema.op_args("nsa_forward", *layer, config=SMALL, workspace_cap=-5))
    with pytest.raises(ValueError, match=r"^workspace_cap: expected a byte count >= 0, got -1"):
        ops.nsa_layer_bytes(10, 1, 4, 2, 8, 6, torch.float64, torch.device("cpu"), workspace_cap=-1)
    with pytest.raises(RuntimeError, match=r"workspace_cap"):
        ops.nsa_forward(*layer, workspace_cap=2.5)


def test_layer_bytes_on_the_cpu():
    """The CPU layer keeps its saved activations and needs no workspace; the shape op's saved
    bytes are the forward's saved buffer."""
    p = make_problem()
    layer = (p.q, p.k, p.v, p.cu_seqlens, p.w_k, p.pe_k, p.w_v, p.gates)
    _, saved = ops.nsa_forward(*_schema.op_args("nsa_forward", *layer, config=SMALL, workspace_cap=None))
    shape = (p.q.shape[0], p.cu_seqlens.shape[0] - 1, p.q.shape[1], p.k.shape[1], p.q.shape[2], p.v.shape[2],
             p.q.dtype, p.q.device)
    saved_bytes, forward_bytes, backward_bytes = ops.nsa_layer_bytes(
        *_schema.op_args("nsa_layer_bytes", *shape, config=SMALL, workspace_cap=None))
    assert saved_bytes == saved.numel() > 0 and forward_bytes == 0 and backward_bytes == 0
