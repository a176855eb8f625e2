"""Memory on the GPU belongs to torch: the extension allocates every workspace, the saved buffer
and the plan with torch's caching allocator, so torch.cuda.max_memory_allocated() sees all of it
(the library's own stream-ordered allocation would be invisible to torch), and workspace_cap
bounds it without changing the results.

Skipped without a CUDA device. The layer problem is 16384 tokens at G = 4 (Hq 16, Hkv 4,
D 128, bf16), large enough that selected attention's scratch is a real share of the total.
"""
import pytest
import torch

import fsa
from fsa import _schema
from problems import cu_seqlens_of, relative_error

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ops = torch.ops.fsa
LENGTHS = (9000, 4000, 3384)  # 16384 tokens; chunks of a capped run start inside sequences
HEADS_Q, HEADS_KV, DIM = 16, 4, 128
CONFIG = fsa.NsaConfig()  # l 32, s 16, B 64, K 16, w 512
# The smallest query chunk is 4096 tokens (slc_attn.cu): a cap this small forces it, 4 chunks here.
SMALL_CAP = 1 << 20
BF16_TOLERANCE = 1e-2
# The allocator rounds every block up to 512 bytes; the rest must match the library's counts.
SLACK = dict(rel=0.02, abs=4 << 20)


def layer_inputs(lengths=LENGTHS):
    """Leaves q, k, v, cu_seqlens, w_k, pe_k, w_v, gates (the nsa_forward order) on the GPU."""
    cu = cu_seqlens_of(lengths, device="cuda")
    n, l = int(cu[-1]), CONFIG.cmp_len

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, device="cuda") * std).to(torch.bfloat16).requires_grad_(True)

    q, k, v = randn(n, HEADS_Q, DIM), randn(n, HEADS_KV, DIM), randn(n, HEADS_KV, DIM)
    w_k, w_v = randn(HEADS_KV, l * DIM, DIM, std=(l * DIM) ** -0.5), randn(HEADS_KV, l * DIM, DIM, std=(l * DIM) ** -0.5)
    pe_k = randn(HEADS_KV, l, DIM, std=0.5)
    gates = torch.sigmoid(torch.randn(n, HEADS_Q, 3, device="cuda")).to(torch.bfloat16).requires_grad_(True)
    return q, k, v, cu, w_k, pe_k, w_v, gates


def layer_bytes(inputs, workspace_cap=None):
    """(saved, forward workspace, backward workspace): the library's counts (nsa_layer_bytes)."""
    q, k, v, cu = inputs[:4]
    shape = (q.shape[0], cu.shape[0] - 1, HEADS_Q, HEADS_KV, DIM, DIM, q.dtype, q.device)
    return ops.nsa_layer_bytes(*_schema.op_args("nsa_layer_bytes", *shape, config=CONFIG, workspace_cap=workspace_cap))


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def test_layer_memory_is_the_library_count_and_all_of_it_is_torch_memory():
    """Forward: o + saved + forward workspace; backward: the gradients + backward workspace. Each
    phase's peak over what was allocated before it is the library's count: a workspace allocated
    by the library itself (cudaMallocAsync) would be missing from torch's peak."""
    inputs = layer_inputs()
    saved_bytes, forward_bytes, backward_bytes = layer_bytes(inputs)
    assert forward_bytes > 0 and backward_bytes > 0
    args = _schema.op_args("nsa_forward", *inputs, config=CONFIG, workspace_cap=None)
    d_o = torch.randn(inputs[0].shape[0], HEADS_Q, DIM, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        o, saved = ops.nsa_forward(*args)
        torch.cuda.synchronize()
        forward_peak = torch.cuda.max_memory_allocated() - base
        assert saved.numel() == saved_bytes
        forward_expected = nbytes(o) + saved_bytes + forward_bytes
        assert forward_peak == pytest.approx(forward_expected, **SLACK), (forward_peak, forward_expected)

        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        backward_args = args[:8] + (saved, d_o) + args[8:]
        grads = ops.nsa_backward(*backward_args)
        torch.cuda.synchronize()
        backward_peak = torch.cuda.max_memory_allocated() - base
        backward_expected = nbytes(*grads) + backward_bytes
        assert backward_peak == pytest.approx(backward_expected, **SLACK), (backward_peak, backward_expected)
    # The layer's whole extra memory, as the brief of the test puts it: the peak over inputs, o and
    # gradients is the saved buffer plus the larger workspace (with the gradients' share of the
    # backward's phase).
    total_peak = max(forward_peak - nbytes(o), backward_peak - nbytes(*grads) + saved_bytes)
    assert total_peak == pytest.approx(saved_bytes + max(forward_bytes, backward_bytes), **SLACK)


def run_layer(inputs, workspace_cap):
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) if t is not None else None for t in inputs]
    q, k, v, cu, w_k, pe_k, w_v, gates = leaves
    o = fsa.nsa_attention(q, k, v, cu, gates, w_k, w_v, pe_k, CONFIG, workspace_cap=workspace_cap)
    d_o = torch.linspace(-1, 1, o.numel(), device="cuda", dtype=torch.float32).view_as(o).to(o.dtype)
    o.backward(d_o)
    return [o.detach()] + [t.grad for t in (q, k, v, w_k, pe_k, w_v, gates)]


def test_small_workspace_cap_runs_in_chunks_with_the_same_results():
    inputs = layer_inputs()
    default_bytes, capped_bytes = layer_bytes(inputs), layer_bytes(inputs, SMALL_CAP)
    # the cap took effect: chunked runs need less scratch in both passes
    assert capped_bytes[1] < default_bytes[1] and capped_bytes[2] < default_bytes[2], (capped_bytes, default_bytes)
    reference = run_layer(inputs, None)
    chunked = run_layer(inputs, SMALL_CAP)
    names = ["o", "dq", "dk", "dv", "dw_k", "dpe_k", "dw_v", "d_gates"]
    for name, got, want in zip(names, chunked, reference):
        assert torch.isfinite(got.float()).all(), f"{name}: NaN or Inf"
        error = relative_error(got, want)
        assert error <= BF16_TOLERANCE, f"{name}: relative error {error:.2e} between capped and default runs"


def test_selected_attention_with_a_small_cap_and_a_shared_plan():
    """The op-level path: a plan built once under a small cap serves the forward and backward,
    and matches the uncapped run."""
    inputs = layer_inputs()
    q, k, v, cu = (t.detach() for t in inputs[:4])
    n = q.shape[0]
    blocks = torch.arange(CONFIG.topk, device="cuda", dtype=torch.int32)
    topk = torch.minimum(blocks.expand(HEADS_KV, n, -1), torch.arange(n, device="cuda").view(1, n, 1) // 64)
    topk = topk.to(torch.int32).contiguous()

    def run(workspace_cap, plan=None):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        o, _ = fsa.selected_attention(*leaves, topk, cu, CONFIG, workspace_cap=workspace_cap, plan=plan)
        o.float().square().sum().backward()
        return [o.detach()] + [t.grad for t in leaves]

    plan = fsa.selected_attention_plan(q, k, v, topk, cu, CONFIG, workspace_cap=SMALL_CAP)
    assert plan.dtype == torch.uint8 and plan.is_cuda and plan.numel() > 0
    reference = run(None)
    for got in (run(SMALL_CAP, plan), run(SMALL_CAP)):
        for name, g, want in zip(["o", "dq", "dk", "dv"], got, reference):
            error = relative_error(g, want)
            assert error <= BF16_TOLERANCE, f"{name}: relative error {error:.2e} between capped and default runs"


def test_deterministic_backward_over_the_cap_names_workspace_cap():
    """The deterministic backward does not run in chunks: over the cap it is an error, by name."""
    q, k, v, cu = (t.detach() for t in layer_inputs(lengths=(1000, 700))[:4])
    topk = torch.zeros(HEADS_KV, q.shape[0], CONFIG.topk, device="cuda", dtype=torch.int32)
    q.requires_grad_(True)
    with pytest.raises(ValueError, match=r"workspace_cap"):
        o, _ = fsa.selected_attention(q, k, v, topk, cu, CONFIG, deterministic=True, workspace_cap=1)
        o.sum().backward()
