"""What the Python API does with the inputs a user may get wrong: index arguments (cu_seqlens,
cu_cmp, cu, topk_idx) are range-checked before they are narrowed to int32, floating ones refused
and lists converted; an empty batch (N = 0) runs forward and backward through every op, every
function and the module; the module refuses a padded [B, T, hidden] batch; the ops' errors end
with the op's name, not a C++ source location."""
import pytest
import torch

import fsa
from op_cases import ALL_OPS, op_cases
from problems import SMALL, make_problem, random_topk

ops = torch.ops.fsa


# ---- index arguments ---------------------------------------------------------------------------

def _index_calls(p):
    """{(function, argument): call(value)}: every functional entry point, with `value` in place of
    one of its index arguments and valid values for the rest."""
    topk = random_topk(2, p.cu_seqlens, width=4, block_size=SMALL.block_size)
    k_cmp = fsa.compress(p.k, p.cu_seqlens, p.w_k, p.pe_k, SMALL)
    v_cmp = fsa.compress(p.v, p.cu_seqlens, p.w_v, None, SMALL)
    _, lse_cmp = fsa.compressed_attention(p.q, k_cmp, v_cmp, p.cu_seqlens, SMALL)
    cu, cu_cmp = p.cu_seqlens, p.cu_cmp
    module = fsa.NativeSparseAttention(24, 4, 2, 8, config=SMALL, dtype=p.q.dtype)
    x = torch.randn(p.q.shape[0], 24, dtype=p.q.dtype)
    return {
        ("compressed_cu_seqlens", "cu_seqlens"): lambda c: fsa.compressed_cu_seqlens(c, SMALL),
        ("compress", "cu_seqlens"): lambda c: fsa.compress(p.k, c, p.w_k, p.pe_k, SMALL),
        ("compress", "cu_cmp"): lambda c: fsa.compress(p.k, cu, p.w_k, p.pe_k, SMALL, cu_cmp=c),
        ("rope", "cu"): lambda c: fsa.rope(p.q, c, 1, SMALL),
        ("compressed_attention", "cu_seqlens"): lambda c: fsa.compressed_attention(p.q, k_cmp, v_cmp, c, SMALL),
        ("compressed_attention", "cu_cmp"): lambda c: fsa.compressed_attention(p.q, k_cmp, v_cmp, cu, SMALL,
                                                                               cu_cmp=c),
        ("select_blocks", "cu_seqlens"): lambda c: fsa.select_blocks(p.q, k_cmp, lse_cmp, c, SMALL),
        ("select_blocks", "cu_cmp"): lambda c: fsa.select_blocks(p.q, k_cmp, lse_cmp, cu, SMALL, cu_cmp=c),
        ("selected_attention_plan", "cu_seqlens"): lambda c: fsa.selected_attention_plan(p.q, p.k, p.v, topk, c,
                                                                                         SMALL),
        ("selected_attention_plan", "topk_idx"): lambda t: fsa.selected_attention_plan(p.q, p.k, p.v, t, cu, SMALL),
        ("selected_attention", "cu_seqlens"): lambda c: fsa.selected_attention(p.q, p.k, p.v, topk, c, SMALL),
        ("selected_attention", "topk_idx"): lambda t: fsa.selected_attention(p.q, p.k, p.v, t, cu, SMALL),
        ("sliding_window_attention", "cu_seqlens"): lambda c: fsa.sliding_window_attention(p.q, p.k, p.v, c, SMALL),
        ("nsa_attention", "cu_seqlens"): lambda c: fsa.nsa_attention(p.q, p.k, p.v, c, p.gates, p.w_k, p.w_v, p.pe_k,
                                                                     SMALL),
        ("NativeSparseAttention", "cu_seqlens"): lambda c: module(x, c),
    }, {"cu_seqlens": cu, "cu_cmp": cu_cmp, "cu": cu, "topk_idx": topk}


_PROBLEM = make_problem(lengths=(70, 37, 0, 5))
_CALLS, _VALID = _index_calls(_PROBLEM)
_CASES = sorted(_CALLS)


def _ids(cases):
    return [f"{function}-{argument}" for function, argument in cases]


def _first_output(result):
    return result[0] if isinstance(result, tuple) else result


@pytest.mark.parametrize("case", _CASES, ids=_ids(_CASES))
def test_int64_index_within_int32_is_accepted(case):
    call, valid = _CALLS[case], _VALID[case[1]]
    torch.testing.assert_close(_first_output(call(valid.long())), _first_output(call(valid)), rtol=0, atol=0)


@pytest.mark.parametrize("case", _CASES, ids=_ids(_CASES))
def test_int64_index_past_int32_is_refused_by_name(case):
    """2**32 + v would wrap around to v (2**32 to block 0, 2**31 - 1 + 101 to a negative offset)."""
    call, argument = _CALLS[case], case[1]
    for past in (2**32, 2**31):
        wide = _VALID[argument].long().clone()
        # From a value >= 0: topk_idx may end in its -1 padding, and -1 + 2**31 fits.
        wide.view(-1)[-1] = wide.view(-1)[-1].clamp_min(0) + past
        with pytest.raises(ValueError, match=rf"^{argument}: value {int(wide.view(-1)[-1])} does not fit in int32"):
            call(wide)
    negative = _VALID[argument].long().clone()
    negative.view(-1)[0] = -(2**31) - 1
    with pytest.raises(ValueError, match=rf"^{argument}: value -2147483649 does not fit in int32"):
        call(negative)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
@pytest.mark.parametrize("case", _CASES, ids=_ids(_CASES))
def test_non_integer_index_is_refused_by_name(case, dtype):
    call, argument = _CALLS[case], case[1]
    with pytest.raises(TypeError, match=rf"^{argument}: expected an integer tensor .*got dtype {dtype}"):
        call(_VALID[argument].to(dtype))


@pytest.mark.parametrize("case", [c for c in _CASES if c[1] != "topk_idx"],
                         ids=_ids([c for c in _CASES if c[1] != "topk_idx"]))
def test_list_of_offsets_is_converted(case):
    call, valid = _CALLS[case], _VALID[case[1]]
    torch.testing.assert_close(_first_output(call(valid.tolist())), _first_output(call(valid)), rtol=0, atol=0)
    torch.testing.assert_close(_first_output(call(tuple(valid.tolist()))), _first_output(call(valid)), rtol=0,
                               atol=0)


@pytest.mark.parametrize("case", _CASES, ids=_ids(_CASES))
def test_other_index_objects_are_refused_by_name(case):
    call, argument = _CALLS[case], case[1]
    with pytest.raises(TypeError, match=rf"^{argument}: expected a list of ints, got \['int', 'float'"):
        call([0, 1.5])
    with pytest.raises(TypeError, match=rf"^{argument}: expected an int32 tensor \(or a list of ints\), got str"):
        call("0, 70, 107")
    for past in (2**32, 2**70):  # 2**70 does not even fit in int64
        with pytest.raises(ValueError, match=rf"^{argument}: value {past} does not fit in int32"):
            call([0, past])


def test_compiled_module_checks_int64_offsets_inside_the_graph():
    """A traced graph cannot branch on values: under torch.compile the range check is an assert
    inside the graph (a RuntimeError naming the argument) instead of a ValueError."""
    torch._dynamo.reset()
    module = fsa.NativeSparseAttention(24, 4, 2, 8, config=SMALL)
    cu = torch.tensor([0, 70, 107], dtype=torch.int64)
    x = torch.randn(107, 24)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, cu), module(x, cu))
    wide = cu.clone()
    wide[-1] += 2**32
    with pytest.raises(RuntimeError, match=r"cu_seqlens: a value does not fit in int32"):
        compiled(x, wide)


# ---- errors name the op, not a source location --------------------------------------------------

def test_library_errors_end_with_the_op_not_a_source_line():
    p = make_problem()
    with pytest.raises(ValueError) as error:
        ops.swa_forward(p.q, p.k[:, :, :4].contiguous(), p.v, p.cu_seqlens, 12, 0.0)
    assert str(error.value).startswith("k: expected shape"), str(error.value)
    assert str(error.value).endswith("(fsa::swa_forward)"), str(error.value)
    assert ".cpp" not in str(error.value) and ".hpp" not in str(error.value)


def test_extension_errors_end_with_the_op():
    """The extension's own checks (dtype, fields) name the op too."""
    p = make_problem()
    with pytest.raises(TypeError, match=r"^cu_seqlens: dtype Long .* \(fsa::swa_forward\)$"):
        ops.swa_forward(p.q, p.k, p.v, p.cu_seqlens.long(), 12, 0.0)
    with pytest.raises(ValueError, match=r"^config\.window: .* does not fit in an int \(fsa::swa_backward\)$"):
        o, lse = ops.swa_forward(p.q, p.k, p.v, p.cu_seqlens, 12, 0.0)
        ops.swa_backward(p.q, p.k, p.v, p.cu_seqlens, o, lse, torch.ones_like(o), 2**40, 0.0)


def test_errors_raised_in_backward_name_the_backward_op():
    p = make_problem()
    q = p.q.detach().requires_grad_(True)
    o, lse = ops.swa_forward(q, p.k, p.v, p.cu_seqlens, 12, 0.0)
    with pytest.raises(ValueError, match=r"^d_o: .* \(fsa::swa_backward\)$"):
        ops.swa_backward(p.q, p.k, p.v, p.cu_seqlens, o.detach(), lse, torch.ones(3, 4, 6, dtype=o.dtype), 12, 0.0)


# ---- N = 0 -----------------------------------------------------------------------------------------

EMPTY_BATCHES = {"no-sequence": (), "empty-sequences": (0, 0)}


@pytest.mark.parametrize("lengths", EMPTY_BATCHES.values(), ids=EMPTY_BATCHES.keys())
@pytest.mark.parametrize("name", ALL_OPS)
def test_every_op_runs_an_empty_batch(name, lengths):
    """Forward ops: forward, then backward through autograd with the stride-0 gradients that sum()
    hands out (torch calls an empty expanded tensor contiguous, so it reaches the op as it is).
    Backward ops: called directly. Every gradient of an empty batch is zero."""
    op, args, differentiable = op_cases(lengths)[name]
    args = [a.detach().requires_grad_(True) if i in differentiable else a for i, a in enumerate(args)]
    out = op(*args)
    outputs = out if isinstance(out, (tuple, list)) else (out,)
    if name.endswith("_backward"):
        for i, grad in enumerate(outputs):
            assert (grad == 0).all(), f"output {i}: gradient of an empty batch is not zero"
    if differentiable:
        loss = sum(o.sum() for o in outputs if o.requires_grad)
        loss.backward()
        for i in differentiable:
            assert args[i].grad is not None and args[i].grad.shape == args[i].shape, f"argument {i}"
            assert (args[i].grad == 0).all(), f"argument {i}: gradient of an empty batch is not zero"


def _functional_calls(p):
    """{name: call()} of every differentiable function of the API on problem p, returning its
    differentiable output."""
    config = p.config
    k_cmp = fsa.compress(p.k, p.cu_seqlens, p.w_k, p.pe_k, config)
    v_cmp = fsa.compress(p.v, p.cu_seqlens, p.w_v, None, config)
    topk = torch.zeros(2, p.q.shape[0], 3, dtype=torch.int32, device=p.q.device)
    return {
        "compress": lambda: fsa.compress(p.k, p.cu_seqlens, p.w_k, p.pe_k, config),
        "compress_mean": lambda: fsa.compress(p.v, p.cu_seqlens, None, None, config),
        "rope": lambda: fsa.rope(p.q, p.cu_seqlens, 1, config),
        "compressed_attention": lambda: fsa.compressed_attention(p.q, k_cmp, v_cmp, p.cu_seqlens, config)[0],
        "selected_attention": lambda: fsa.selected_attention(p.q, p.k, p.v, topk, p.cu_seqlens, config)[0],
        "sliding_window_attention": lambda: fsa.sliding_window_attention(p.q, p.k, p.v, p.cu_seqlens, config)[0],
        "combine": lambda: fsa.combine(p.gates, p.q, p.q, p.q),
        "nsa_attention": lambda: fsa.nsa_attention(p.q, p.k, p.v, p.cu_seqlens, p.gates, p.w_k, p.w_v, p.pe_k,
                                                   config),
    }


_FUNCTIONS = sorted(_functional_calls(make_problem(lengths=(3,))))


def _run_empty_function(name, p):
    leaves = {}
    for field in ("q", "k", "v", "w_k", "w_v", "pe_k", "gates"):
        leaves[field] = getattr(p, field).detach().requires_grad_(True)
        setattr(p, field, leaves[field])
    out = _functional_calls(p)[name]()
    assert out.shape[0] == 0
    out.sum().backward()
    used = [leaf for leaf in leaves.values() if leaf.grad is not None]
    assert used, "no gradient reached an input"
    for leaf in used:
        assert (leaf.grad == 0).all()


@pytest.mark.parametrize("lengths", EMPTY_BATCHES.values(), ids=EMPTY_BATCHES.keys())
@pytest.mark.parametrize("name", _FUNCTIONS)
def test_every_function_runs_an_empty_batch_forward_and_backward(name, lengths):
    _run_empty_function(name, make_problem(lengths=lengths))


# Head dims and a config that the CUDA kernels serve (test_gpu.py's).
GPU_CONFIG = fsa.NsaConfig(cmp_len=32, cmp_stride=16, block_size=64, topk=4, init_blocks=1, local_blocks=2, window=96)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("lengths", EMPTY_BATCHES.values(), ids=EMPTY_BATCHES.keys())
@pytest.mark.parametrize("name", _FUNCTIONS)
def test_every_function_runs_an_empty_batch_on_the_gpu(name, lengths):
    p = make_problem(lengths=lengths, heads_q=8, heads_kv=2, dim_qk=128, dim_v=128, config=GPU_CONFIG,
                     dtype=torch.float32).to("cuda", torch.bfloat16)
    _run_empty_function(name, p)
    torch.cuda.synchronize()


@pytest.mark.parametrize("lengths", EMPTY_BATCHES.values(), ids=EMPTY_BATCHES.keys())
@pytest.mark.parametrize("compression", ["linear", "mean"])
def test_module_runs_an_empty_batch_forward_and_backward(lengths, compression):
    config = fsa.NsaConfig(**{**SMALL.__dict__, "compression": compression})
    module = fsa.NativeSparseAttention(24, 4, 2, 8, config=config, dtype=torch.float64)
    x = torch.randn(0, 24, dtype=torch.float64, requires_grad=True)
    y = module(x, [0, *lengths])
    assert y.shape == (0, 24)
    y.sum().backward()
    assert x.grad.shape == (0, 24)
    for name, param in module.named_parameters():
        assert param.grad is not None and (param.grad == 0).all(), name


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("lengths", EMPTY_BATCHES.values(), ids=EMPTY_BATCHES.keys())
def test_module_runs_an_empty_batch_on_the_gpu(lengths):
    module = fsa.NativeSparseAttention(256, 8, 2, 128, config=GPU_CONFIG, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(0, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = module(x, [0, *lengths])
    y.sum().backward()
    torch.cuda.synchronize()
    assert y.shape == (0, 256) and x.grad.shape == (0, 256)
    for name, param in module.named_parameters():
        assert param.grad is not None and (param.grad == 0).all(), name


# ---- the module's input layout -----------------------------------------------------------------

def test_module_refuses_a_padded_batch_by_name():
    module = fsa.NativeSparseAttention(64, 4, 2, 8, config=SMALL)
    cu = torch.tensor([0, 50, 100], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"^x: expected a packed varlen batch \[N, hidden_size=64\] .*"
                                         r"got shape \[2, 50, 64\]"):
        module(torch.randn(2, 50, 64), cu)
    with pytest.raises(ValueError, match=r"^x: expected a packed varlen batch .*got shape \[64\]"):
        module(torch.randn(64), cu)
    with pytest.raises(ValueError, match=r"^x: expected \[N, hidden_size=64\], got shape \[100, 32\]"):
        module(torch.randn(100, 32), cu)
    with pytest.raises(TypeError, match=r"^x: expected a tensor"):
        module(None, cu)


def test_module_accepts_a_list_of_offsets():
    module = fsa.NativeSparseAttention(24, 4, 2, 8, config=SMALL, dtype=torch.float64)
    x = torch.randn(107, 24, dtype=torch.float64)
    torch.testing.assert_close(module(x, [0, 70, 107]), module(x, torch.tensor([0, 70, 107], dtype=torch.int32)),
                               rtol=0, atol=0)
