"""selected_attention's path option: it only picks GPU kernels, so every path gives the reference's
result (here on the CPU, and on a GPU in test_gpu.py's run of the same function), forced paths go
through autograd and opcheck, and bad values raise errors naming the argument."""
import pytest
import torch

import fsa
from problems import SMALL, make_problem

ops = torch.ops.fsa
PATHS = [("auto", 0), ("kv-outer", 0), ("split", 1), ("split", 0), ("query-outer", 0)]


def _topk(p):
    return fsa.select_blocks(*_selection_inputs(p), p.cu_seqlens, SMALL)


def _selection_inputs(p):
    k_cmp = fsa.compress(p.k, p.cu_seqlens, p.w_k, p.pe_k, SMALL)
    v_cmp = fsa.compress(p.v, p.cu_seqlens, p.w_v, None, SMALL)
    _, lse = fsa.compressed_attention(p.q, k_cmp, v_cmp, p.cu_seqlens, SMALL)
    return p.q, k_cmp, lse


def _run(p, topk, path, threshold, device):
    q = p.q.to(device).detach().requires_grad_(True)
    k = p.k.to(device).detach().requires_grad_(True)
    v = p.v.to(device).detach().requires_grad_(True)
    o, lse = fsa.selected_attention(q, k, v, topk.to(device), p.cu_seqlens.to(device), SMALL, path, threshold)
    (o * torch.linspace(-1, 1, o.numel(), device=device).view_as(o)).sum().backward()
    return [t.detach().cpu().double() for t in (o, lse, q.grad, k.grad, v.grad)]


@pytest.mark.parametrize("path,threshold", PATHS)
def test_every_path_gives_the_same_result_on_cpu(path, threshold):
    p = make_problem()
    topk = _topk(p)
    want = _run(p, topk, "auto", 0, "cpu")
    got = _run(p, topk, path, threshold, "cpu")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_forced_path_passes_opcheck():
    p = make_problem()
    topk = _topk(p)
    torch.library.opcheck(ops.slc_attn_forward,
                          (p.q, p.k, p.v, topk, p.cu_seqlens, None, SMALL.block_size, p.scale, "split", 2))


def test_bad_path_or_threshold_names_the_argument():
    p = make_problem()
    topk = _topk(p)
    with pytest.raises(ValueError, match=r"^path: expected 'auto'"):
        fsa.selected_attention(p.q, p.k, p.v, topk, p.cu_seqlens, SMALL, "fastest")
    with pytest.raises(ValueError, match=r"^dense_threshold: "):
        fsa.selected_attention(p.q, p.k, p.v, topk, p.cu_seqlens, SMALL, "split", -3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("path,threshold", PATHS)
def test_every_path_matches_the_cpu_on_gpu(path, threshold):
    exact = make_problem(dim_qk=64, dim_v=64).to(dtype=torch.float32)  # head dims the GPU supports
    p = exact.to(dtype=torch.bfloat16)
    topk = _topk(exact)
    want = _run(p.to(dtype=torch.float32), topk, "auto", 0, "cpu")  # the reference on the rounded inputs
    got = _run(p, topk, path, threshold, "cuda")
    for g, w in zip(got, want):
        assert torch.isfinite(g[torch.isfinite(w)]).all()
        finite = torch.isfinite(w)
        err = (g[finite] - w[finite]).norm() / w[finite].norm().clamp_min(1e-30)
        assert err < 3e-2, f"{path}: relative error {err:.3g}"
