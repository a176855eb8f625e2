"""Every op, forward and gradients, against the pure-PyTorch composition of the spec (naive_nsa),
in float64 on the CPU reference, on fresh random packed batches."""
import pytest
import torch

import fsa
import naive_nsa
from problems import LENGTHS, SMALL, cu_seqlens_of, make_problem, random_topk

ATOL = 1e-9
# The attention ops keep the log-sum-exp in fp32 (the API's lse is fp32 even for fp64 inputs), so
# their fp64 outputs agree with an all-fp64 computation to about 1e-7 relative, not 1e-15.
ATTENTION_TOL = dict(atol=1e-6, rtol=1e-5)


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]


def assert_same_values_and_grads(ours, reference, ours_inputs, reference_inputs, atol=ATOL, rtol=1e-7):
    """Forward outputs equal; gradients of a random projection of the outputs equal."""
    ours, reference = list(ours), list(reference)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
    projections = [torch.randn_like(r) for r in reference]
    loss_ours = sum((a * p).sum() for a, p in zip(ours, projections))
    loss_ref = sum((b * p).sum() for b, p in zip(reference, projections))
    grads_ours = torch.autograd.grad(loss_ours, [t for t in ours_inputs if t is not None])
    grads_ref = torch.autograd.grad(loss_ref, [t for t in reference_inputs if t is not None])
    for a, b in zip(grads_ours, grads_ref):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def test_compressed_cu_seqlens_matches_spec_example():
    config = fsa.NsaConfig()  # l=32, s=16
    cu_cmp = fsa.compressed_cu_seqlens(cu_seqlens_of([200, 20, 48]), config)
    assert cu_cmp.tolist() == [0, 11, 11, 13]
    lengths = torch.randint(0, 300, (7,)).tolist()
    expected = naive_nsa.cu_cmp_of(cu_seqlens_of(lengths), 32, 16)
    assert torch.equal(fsa.compressed_cu_seqlens(cu_seqlens_of(lengths), config), expected)


@pytest.mark.parametrize("compression", ["linear", "mean"])
@pytest.mark.parametrize("with_pos_emb", [True, False])
def test_compress(compression, with_pos_emb):
    config = fsa.NsaConfig(**{**SMALL.__dict__, "compression": compression})
    p = make_problem(config=config)
    x, weight, pe = leaves(p.k, p.w_k, p.pe_k if with_pos_emb else None)
    x_ref, weight_ref, pe_ref = leaves(p.k, p.w_k, p.pe_k if with_pos_emb else None)
    ours = fsa.compress(x, p.cu_seqlens, weight, pe, config)
    reference = naive_nsa.compress(x_ref, p.cu_seqlens, weight_ref, pe_ref, config.cmp_len, config.cmp_stride)
    assert ours.shape == (p.q.shape[0] // config.cmp_stride,) + reference.shape[1:]
    assert_same_values_and_grads([ours], [reference], [x, weight, pe], [x_ref, weight_ref, pe_ref])


@pytest.mark.parametrize("llama3", [False, True])
@pytest.mark.parametrize("position_stride", [1, 4])
def test_rope(llama3, position_stride):
    rope = fsa.RopeConfig(theta=10000.0, llama3_scaling=llama3, llama3_original_max_position=64)
    config = fsa.NsaConfig(rope=rope)
    cu = cu_seqlens_of(LENGTHS)
    rows = int(cu[-1]) + 3  # spare rows past cu[-1], as in a compressed tensor, stay unchanged
    (x,) = leaves(torch.randn(rows, 3, 16, dtype=torch.float64))
    (x_ref,) = leaves(x)
    ours = fsa.rope(x, cu, position_stride, config)
    reference = naive_nsa.rope(x_ref, cu, position_stride, rope)
    # cos/sin of the fp32 angles are evaluated in fp32 by the library
    assert_same_values_and_grads([ours], [reference], [x], [x_ref], atol=1e-6, rtol=1e-6)
    assert torch.equal(ours[-3:], x[-3:])


def test_compressed_attention():
    p = make_problem()
    l, s = SMALL.cmp_len, SMALL.cmp_stride
    k_cmp = naive_nsa.compress(p.k, p.cu_seqlens, p.w_k, p.pe_k, l, s)
    v_cmp = naive_nsa.compress(p.v, p.cu_seqlens, p.w_v, None, l, s)
    q, k, v = leaves(p.q, k_cmp, v_cmp)
    q_ref, k_ref, v_ref = leaves(p.q, k_cmp, v_cmp)
    o, lse = fsa.compressed_attention(q, k, v, p.cu_seqlens, SMALL, p.cu_cmp)
    o_ref, lse_ref = naive_nsa.compressed_attention(q_ref, k_ref, v_ref, p.cu_seqlens, p.cu_cmp, l, s, p.scale)
    torch.testing.assert_close(lse, lse_ref.float(), atol=1e-5, rtol=1e-6)
    assert not lse.requires_grad  # feeds only the selection
    # queries that see no compressed token: o = 0 exactly, lse = -inf (docs/semantics.md section 3)
    early = torch.cat([torch.arange(a, min(b, a + l - 1)) for a, b in naive_nsa.bounds(p.cu_seqlens)])
    assert torch.all(o[early] == 0) and torch.all(torch.isneginf(lse[:, early]))
    assert_same_values_and_grads([o], [o_ref], [q, k, v], [q_ref, k_ref, v_ref], **ATTENTION_TOL)


@pytest.mark.parametrize("aggregation", ["group_sum", "first_head"])
def test_select_blocks(aggregation):
    config = fsa.NsaConfig(**{**SMALL.__dict__, "aggregation": aggregation})
    p = make_problem(config=config, heads_q=6, heads_kv=2)
    l, s = config.cmp_len, config.cmp_stride
    k_cmp = naive_nsa.compress(p.k, p.cu_seqlens, p.w_k, p.pe_k, l, s)
    v_cmp = naive_nsa.compress(p.v, p.cu_seqlens, p.w_v, None, l, s)
    _, lse = fsa.compressed_attention(p.q, k_cmp, v_cmp, p.cu_seqlens, config, p.cu_cmp)
    topk = fsa.select_blocks(p.q, k_cmp, lse, p.cu_seqlens, config, p.cu_cmp)
    reference = naive_nsa.select_blocks(p.q, k_cmp, lse, p.cu_seqlens, p.cu_cmp, config, p.scale)
    assert topk.dtype == torch.int32 and topk.shape == (2, p.q.shape[0], config.topk)
    assert torch.equal(topk, reference)


@pytest.mark.parametrize("heads_q,heads_kv", [(4, 2), (3, 1), (2, 2)])
def test_selected_attention(heads_q, heads_kv):
    p = make_problem(heads_q=heads_q, heads_kv=heads_kv)
    topk = random_topk(heads_kv, p.cu_seqlens, width=5, block_size=SMALL.block_size)
    topk[:, 3] = -1  # a query with an empty selection: o = 0, lse = -inf
    q, k, v = leaves(p.q, p.k, p.v)
    q_ref, k_ref, v_ref = leaves(p.q, p.k, p.v)
    o, lse = fsa.selected_attention(q, k, v, topk, p.cu_seqlens, SMALL)
    o_ref, lse_ref = naive_nsa.selected_attention(q_ref, k_ref, v_ref, topk, p.cu_seqlens, SMALL.block_size, p.scale)
    torch.testing.assert_close(lse, lse_ref.float(), atol=1e-5, rtol=1e-6)
    assert torch.all(o[3] == 0) and torch.all(torch.isneginf(lse[:, 3]))
    assert_same_values_and_grads([o], [o_ref], [q, k, v], [q_ref, k_ref, v_ref], **ATTENTION_TOL)


@pytest.mark.parametrize("window", [0, 12, 1000])
def test_sliding_window_attention(window):
    config = fsa.NsaConfig(window=window)
    p = make_problem()
    q, k, v = leaves(p.q, p.k, p.v)
    q_ref, k_ref, v_ref = leaves(p.q, p.k, p.v)
    o, lse = fsa.sliding_window_attention(q, k, v, p.cu_seqlens, config)
    o_ref, lse_ref = naive_nsa.sliding_window_attention(q_ref, k_ref, v_ref, p.cu_seqlens, window, p.scale)
    torch.testing.assert_close(lse, lse_ref.float(), atol=1e-5, rtol=1e-6)
    assert_same_values_and_grads([o], [o_ref], [q, k, v], [q_ref, k_ref, v_ref], **ATTENTION_TOL)


@pytest.mark.parametrize("shared_gates", [False, True])
def test_combine(shared_gates):
    n, heads, dim = 20, 3, 5
    gates_shape = (n, 3) if shared_gates else (n, heads, 3)
    tensors = [torch.rand(gates_shape, dtype=torch.float64)] + [torch.randn(n, heads, dim, dtype=torch.float64)
                                                                 for _ in range(3)]
    ours_inputs, ref_inputs = leaves(*tensors), leaves(*tensors)
    ours = fsa.combine(*ours_inputs)
    reference = naive_nsa.combine(*ref_inputs)
    assert_same_values_and_grads([ours], [reference], ours_inputs, ref_inputs)


@pytest.mark.parametrize("compression", ["linear", "mean"])
@pytest.mark.parametrize("shared_gates", [False, True])
@pytest.mark.parametrize("rope", [True, False])
def test_nsa_attention(compression, shared_gates, rope):
    config = fsa.NsaConfig(**{**SMALL.__dict__, "compression": compression,
                              "rope": fsa.RopeConfig(enabled=rope, theta=500.0, llama3_scaling=True,
                                                     llama3_original_max_position=64)})
    p = make_problem(config=config, shared_gates=shared_gates)
    ours_inputs = leaves(p.q, p.k, p.v, p.gates, p.w_k, p.w_v, p.pe_k)
    ref_inputs = leaves(p.q, p.k, p.v, p.gates, p.w_k, p.w_v, p.pe_k)
    q, k, v, gates, w_k, w_v, pe_k = ours_inputs
    ours = fsa.nsa_attention(q, k, v, p.cu_seqlens, gates, w_k, w_v, pe_k, config)
    q, k, v, gates, w_k, w_v, pe_k = ref_inputs
    reference = naive_nsa.nsa_attention(q, k, v, p.cu_seqlens, gates, w_k, w_v, pe_k, config)
    assert_same_values_and_grads([ours], [reference], ours_inputs, ref_inputs, **ATTENTION_TOL)
