"""A failed fsa::Status becomes a Python exception carrying its message, which names the argument."""
import pytest
import torch

import fsa
from problems import SMALL, make_problem

ops = torch.ops.fsa


def test_invalid_argument_is_a_value_error_naming_the_argument():
    p = make_problem()
    with pytest.raises(ValueError, match=r"^k: .*Dqk.* \(fsa::swa_forward\)$"):
        ops.swa_forward(p.q, p.k[:, :, :4].contiguous(), p.v, p.cu_seqlens, 12, 0.0)
    with pytest.raises(ValueError, match=r"v: .*dtype"):
        ops.swa_forward(p.q, p.k, p.v.float(), p.cu_seqlens, 12, 0.0)
    with pytest.raises(ValueError, match=r"gates"):
        fsa.combine(p.gates[:, :2], p.q, p.q, p.q)


def test_config_errors_name_the_field():
    p = make_problem()
    with pytest.raises(ValueError, match=r"block_size"):
        fsa.selected_attention(p.q, p.k, p.v, torch.zeros(2, p.q.shape[0], 1, dtype=torch.int32), p.cu_seqlens,
                               fsa.NsaConfig(block_size=48))
    with pytest.raises(ValueError, match=r"config.aggregation"):
        fsa.nsa_attention(p.q, p.k, p.v, p.cu_seqlens, p.gates, p.w_k, p.w_v, p.pe_k,
                          fsa.NsaConfig(**{**SMALL.__dict__, "aggregation": "max"}))


def test_unsupported_dtype_or_device_names_the_argument():
    p = make_problem()
    with pytest.raises(TypeError, match=r"^x: dtype .*Long"):
        ops.rope_forward(p.q.long(), p.cu_seqlens, 1, 1e4, False, 8.0, 1.0, 4.0, 8192)
    with pytest.raises(TypeError, match=r"cu_seqlens: dtype"):
        ops.swa_forward(p.q, p.k, p.v, p.cu_seqlens.long(), 12, 0.0)


def test_non_contiguous_last_dim_is_rejected_by_name():
    p = make_problem()
    q_t = p.q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, last dim strided
    with pytest.raises(ValueError, match=r"q: .*contiguous"):
        ops.swa_forward(q_t, p.k, p.v, p.cu_seqlens, 12, 0.0)


def test_backward_accepts_expanded_gradients():
    """autograd hands out stride-0 gradients (here from sum()); the ops must still get valid views."""
    p = make_problem()
    q = p.q.detach().requires_grad_(True)
    o, _ = fsa.sliding_window_attention(q, p.k, p.v, p.cu_seqlens, SMALL)
    o.sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_buffer_sized_by_the_config_that_does_not_fit_memory_names_it():
    """topk_idx is [Hkv, N, config.topk]: 859 TB here, past any address space (so no overcommit
    setting lets it through). The allocation fails as torch's OutOfMemoryError naming config.topk
    and the bytes, not with the allocator's own text; it comes before the values are read."""
    config = fsa.NsaConfig(cmp_len=16, cmp_stride=8, block_size=32, topk=2**31 - 1, window=32, compression="mean")
    n = 50000
    q, k_cmp, lse = torch.randn(n, 4, 16), torch.randn(n // 8, 2, 16), torch.zeros(4, n)
    cu = torch.tensor([0, n], dtype=torch.int32)
    expected = r"^config\.topk \(topk_idx \[Hkv, N, K\]\): 858993458800000 bytes on cpu could not be allocated"
    with pytest.raises(torch.OutOfMemoryError, match=expected):
        fsa.select_blocks(q, k_cmp, lse, cu, config)
