"""Inference with a cache through torch (fsa.NsaCache, fsa.nsa_prefill, fsa.nsa_decode, the module
with a cache) on the CPU: every new token's output equals its row of one fsa.nsa_attention over the
whole sequences, however the sequences are cut into calls; the cache's page allocator; errors
that name the argument. The C++ tests (tests/cpp/test_inference.cpp) cover the branches, the
selection and the validation of the tables in depth; these cover the Python layer on top."""
import random

import pytest
import torch

import fsa
from fsa._schema import op_args
from problems import SMALL, make_problem

HEADS_KV, DIM_QK, DIM_V = 2, 8, 6


def make_cache(config=SMALL, max_seqs=5, num_pages=32, page_size=None, dtype=torch.float64, **kwargs):
    return fsa.NsaCache(config, HEADS_KV, DIM_QK, DIM_V, max_seqs=max_seqs, num_pages=num_pages,
                        page_size=config.block_size if page_size is None else page_size, dtype=dtype, **kwargs)


def one_shot(p):
    return fsa.nsa_attention(p.q, p.k, p.v, p.cu_seqlens, p.gates, p.w_k, p.w_v, p.pe_k, p.config)


def run_schedule(p, cache, seq_ids, schedule):
    """Feeds problem p's sequences to the cache call by call: schedule is a list of (op, counts),
    counts[b] new tokens of sequence b in that call. Returns the outputs in p's row order."""
    cu = p.cu_seqlens.tolist()
    fed = [0] * len(seq_ids)
    out = torch.full((cu[-1], p.q.shape[1], p.v.shape[2]), float("nan"), dtype=p.q.dtype)
    for op, counts in schedule:
        rows = torch.cat([torch.arange(cu[b] + fed[b], cu[b] + fed[b] + c) for b, c in enumerate(counts)]).long()
        chunk_cu = [0]
        for c in counts:
            chunk_cu.append(chunk_cu[-1] + c)
        out[rows] = op(p.q[rows], p.k[rows], p.v[rows], torch.tensor(chunk_cu, dtype=torch.int32), cache, seq_ids,
                       gates=p.gates[rows], w_k=p.w_k, w_v=p.w_v, pe_k=p.pe_k, config=p.config)
        fed = [f + c for f, c in zip(fed, counts)]
    assert fed == [cu[b + 1] - cu[b] for b in range(len(seq_ids))], "the schedule feeds every token once"
    return out


def random_schedule(lengths, rng, prefill_fraction=0.6):
    """Prefill chunks of random lengths over the first part of each sequence, then decode steps of
    1-8 tokens (ragged, some sequences idle in a step) until every token is fed."""
    left = list(lengths)
    prefill_end = [int(n * prefill_fraction) for n in lengths]
    schedule, fed = [], [0] * len(lengths)
    while any(f < e for f, e in zip(fed, prefill_end)):
        counts = [min(rng.randint(0, 45), e - f) for f, e in zip(fed, prefill_end)]
        schedule.append((fsa.nsa_prefill, counts))
        fed = [f + c for f, c in zip(fed, counts)]
    left = [n - f for n, f in zip(lengths, fed)]
    while any(left):
        counts = [min(rng.choice([0, 1, 1, 2, 5, 8]), x) for x in left]
        schedule.append((fsa.nsa_decode, counts))
        left = [x - c for x, c in zip(left, counts)]
    return schedule


@pytest.mark.parametrize("layout", ["token-major", "head-major"])
@pytest.mark.parametrize("compression", ["linear", "mean"])
@pytest.mark.parametrize("shared_gates", [False, True])
def test_chunked_prefill_then_decode_equals_one_shot(compression, shared_gates, layout):
    config = fsa.NsaConfig(**{**SMALL.__dict__, "compression": compression})
    lengths = (130, 37, 5, 0, 70)
    p = make_problem(lengths=lengths, config=config, shared_gates=shared_gates)
    cache = make_cache(config, layout=layout)
    if layout == "head-major":  # each page [Hkv, rows, D] in memory, viewed [rows, Hkv, D]
        pages, rows, heads, dim = cache.k_pages.shape
        assert cache.k_pages.stride() == (heads * rows * dim, dim, rows * dim, 1)
    seq_ids = [cache.add_sequence() for _ in lengths]
    rng = random.Random(torch.initial_seed())
    out = run_schedule(p, cache, seq_ids, random_schedule(lengths, rng))
    torch.testing.assert_close(out, one_shot(p), rtol=1e-12, atol=1e-12)
    assert [cache.length(i) for i in seq_ids] == list(lengths)


def test_whole_prefill_then_one_token_decode_last_rows():
    """The serving pattern: the prompt in one call, then one token per step; the decoded rows are
    the last rows of the one-shot run."""
    lengths = (100, 45)
    p = make_problem(lengths=lengths)
    cache = make_cache()
    seq_ids = [cache.add_sequence() for _ in lengths]
    prompt = [n - 12 for n in lengths]
    out = run_schedule(p, cache, seq_ids, [(fsa.nsa_prefill, prompt)] + [(fsa.nsa_decode, [1, 1])] * 12)
    full, cu = one_shot(p), p.cu_seqlens.tolist()
    for b in range(len(lengths)):
        last = slice(cu[b + 1] - 12, cu[b + 1])
        torch.testing.assert_close(out[last], full[last], rtol=1e-12, atol=1e-12)


def test_ragged_decode_batch_and_sequences_in_any_order():
    """One decode call with 8, 0, 1 and 5 new tokens, the cache's sequences passed in another order
    than they were added, and fp32 pools."""
    lengths = (60, 33, 9, 41)
    p = make_problem(lengths=lengths, dtype=torch.float32)
    cache = make_cache(dtype=torch.float32)
    ids = [cache.add_sequence() for _ in lengths]
    seq_ids = [ids[2], ids[0], ids[3], ids[1]]  # problem sequence b is cache sequence seq_ids[b]
    decode = [8, 0, 1, 5]
    out = run_schedule(p, cache, seq_ids, [(fsa.nsa_prefill, [n - d for n, d in zip(lengths, decode)]),
                                           (fsa.nsa_decode, decode)])
    torch.testing.assert_close(out, one_shot(p), rtol=1e-5, atol=1e-5)
    assert [cache.length(s) for s in seq_ids] == list(lengths)


def test_speculative_tail_dropped_with_truncate():
    """Decode 6 draft tokens, keep 2 (truncate), then feed the true continuation: the outputs of the
    kept and later tokens are those of the one-shot run over the true sequence."""
    n = 90
    p = make_problem(lengths=(n,))
    cache = make_cache()
    (seq,) = [cache.add_sequence()]
    weights = dict(w_k=p.w_k, w_v=p.w_v, pe_k=p.pe_k)

    def cu(count):
        return torch.tensor([0, count], dtype=torch.int32)

    fsa.nsa_prefill(p.q[:70], p.k[:70], p.v[:70], cu(70), cache, [seq], gates=p.gates[:70], **weights)
    draft = make_problem(lengths=(6,))  # wrong tokens after the first 2
    q, k, v, gates = (torch.cat([t[70:72], d[2:]]) for t, d in
                      ((p.q, draft.q), (p.k, draft.k), (p.v, draft.v), (p.gates, draft.gates)))
    fsa.nsa_decode(q, k, v, cu(6), cache, [seq], gates=gates, **weights)
    assert cache.length(seq) == 76
    cache.truncate(seq, 72)
    out = fsa.nsa_prefill(p.q[72:], p.k[72:], p.v[72:], cu(n - 72), cache, [seq], gates=p.gates[72:], **weights)
    torch.testing.assert_close(out, one_shot(p)[72:], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"^length: expected an int in \[90, 90\]"):
        cache.truncate(seq, 80)  # the latest call brought 18 tokens: it must be kept whole


def test_module_with_cache_equals_module_without():
    torch.manual_seed(torch.initial_seed())
    layer = fsa.NativeSparseAttention(32, 4, 2, 8, config=SMALL, dtype=torch.float64)
    lengths = (77, 20)
    x = torch.randn(sum(lengths), 32, dtype=torch.float64)
    cu = torch.tensor([0, lengths[0], sum(lengths)], dtype=torch.int32)
    full = layer(x, cu)
    cache = fsa.NsaCache.for_layer(layer, max_seqs=2, num_pages=8)
    assert cache.dtype == torch.float64 and cache.page_size == 4 * SMALL.block_size
    ids = [cache.add_sequence(), cache.add_sequence()]
    x0, x1 = x[:lengths[0]], x[lengths[0]:]
    first = layer(torch.cat([x0[:70], x1[:18]]), [0, 70, 88], cache, ids)
    step = layer(torch.cat([x0[70:], x1[18:]]), [0, 7, 9], cache, ids, decode=True)
    torch.testing.assert_close(torch.cat([first[:70], step[:7]]), full[:77], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.cat([first[70:], step[7:]]), full[77:], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"^seq_ids: "):
        layer(x, cu, cache)
    with pytest.raises(ValueError, match=r"^cache: "):
        layer(x, cu, decode=True)


# ---- NsaCache: pools, pages, slots, errors ---------------------------------------------------------

def test_pools_are_the_sizes_the_library_computes():
    cache = make_cache(max_seqs=3, num_pages=5, page_size=64, dtype=torch.float32)
    assert cache.tail_rows == SMALL.cmp_len + fsa.MAX_DECODE_TOKENS - 1  # fsa::nsa_cache_tail_rows
    assert cache.cmp_page_size == 64 // SMALL.cmp_stride
    assert tuple(cache.k_tail.shape) == (3, cache.tail_rows, HEADS_KV, DIM_QK)
    assert tuple(cache.v_pages.shape) == (5, 64, HEADS_KV, DIM_V)
    for name, nbytes in cache.pool_bytes().items():
        pool = getattr(cache, name)
        assert pool.numel() * pool.element_size() == nbytes, name
    # the default compressed pool holds the compressed tokens of every raw page, partial pages included
    assert cache.k_cmp_pages.shape[0] >= cache.pages_needed(5 * 64)[1] + 3


def test_pages_are_handed_out_on_demand_and_returned():
    cache = make_cache(num_pages=6, page_size=32)
    a, b = cache.add_sequence(), cache.add_sequence()
    batch = cache.batch([a, b], [40, 0])
    assert batch.block_table.dtype == torch.int32 and tuple(batch.block_table.shape) == (2, 2)
    assert batch.block_table[0].tolist() == [0, 1] and batch.cache_seqlens.tolist() == [0, 0]
    assert cache.free_pages == 4
    cache.advance([a, b], [40, 0])
    batch = cache.batch([b, a], [33, 1])  # a still fits its 2 pages, b takes 2
    assert cache.free_pages == 2 and batch.cache_seqlens.tolist() == [0, 40]
    assert sorted(batch.block_table.flatten().tolist()) == [0, 1, 2, 3]
    assert batch.cmp_block_table.shape[0] == 2 and len(set(batch.slots.tolist())) == 2
    cache.free_sequence(a)
    assert cache.free_pages == 4 and cache.sequences == (b,)
    c = cache.add_sequence()
    assert c == 2 and cache.length(c) == 0  # a fresh id; the freed slot serves it


def test_exhausted_pool_is_an_error_naming_num_pages_and_changes_nothing():
    p = make_problem(lengths=(50, 50))
    cache = make_cache(max_seqs=2, num_pages=3, page_size=32)
    ids = [cache.add_sequence(), cache.add_sequence()]
    with pytest.raises(RuntimeError, match=r"^num_pages: the call needs 4 more pages of 32 tokens, the cache has 3"):
        fsa.nsa_prefill(p.q, p.k, p.v, p.cu_seqlens, cache, ids, gates=p.gates, w_k=p.w_k, w_v=p.w_v, pe_k=p.pe_k)
    assert cache.free_pages == 3 and [cache.length(i) for i in ids] == [0, 0]
    with pytest.raises(RuntimeError, match=r"^max_seqs: all 2 slots"):
        cache.add_sequence()


def test_errors_name_the_argument():
    p = make_problem(lengths=(20, 9))
    cache = make_cache()
    a, b = cache.add_sequence(), cache.add_sequence()
    kw = dict(gates=p.gates, w_k=p.w_k, w_v=p.w_v, pe_k=p.pe_k)
    with pytest.raises(KeyError, match=r"seq_ids: no sequence 7 in the cache"):
        fsa.nsa_prefill(p.q, p.k, p.v, p.cu_seqlens, cache, [a, 7], **kw)
    with pytest.raises(ValueError, match=r"^seq_ids: a sequence appears more than once"):
        fsa.nsa_prefill(p.q, p.k, p.v, p.cu_seqlens, cache, [a, a], **kw)
    with pytest.raises(ValueError, match=r"^cu_seqlens: expected 2 offsets"):
        fsa.nsa_prefill(p.q, p.k, p.v, p.cu_seqlens, cache, [a], **kw)
    with pytest.raises(ValueError, match=r"^cu_seqlens: nsa_decode takes at most 8 new tokens per sequence, "
                                         r"sequence 0"):
        fsa.nsa_decode(p.q, p.k, p.v, p.cu_seqlens, cache, [a, b], **kw)
    with pytest.raises(ValueError, match=r"^config: "):
        fsa.nsa_prefill(p.q, p.k, p.v, p.cu_seqlens, cache, [a, b], config=fsa.NsaConfig(), **kw)
    with pytest.raises(TypeError, match=r"^cache: expected an fsa.NsaCache"):
        fsa.nsa_prefill(p.q, p.k, p.v, p.cu_seqlens, object(), [a, b], **kw)
    with pytest.raises(TypeError, match=r"^seq_ids: expected a sequence of the cache's sequence ids"):
        fsa.nsa_prefill(p.q, p.k, p.v, p.cu_seqlens, cache, 5, **kw)
    with pytest.raises(ValueError, match=r"seq_id: sequence 0 is already in the cache"):
        cache.add_sequence(a)
    with pytest.raises(KeyError, match=r"seq_id: no sequence 'x'"):
        cache.free_sequence("x")
    with pytest.raises(ValueError, match=r"^page_size: expected a multiple of config.block_size \(32\)"):
        make_cache(page_size=48)
    with pytest.raises(ValueError, match=r"^num_pages: expected a positive int"):
        make_cache(num_pages=0)
    with pytest.raises(ValueError, match=r"^layout: expected 'token-major' or 'head-major', got 'hnd'"):
        make_cache(layout="hnd")
    # pools larger than memory: the argument that sized them, not torch's allocator message
    with pytest.raises(MemoryError, match=r"^num_pages: the cache's k_pages \[1099511627776, "):
        make_cache(num_pages=2**40)
    # the C++ API's own checks come through as well, naming the pool
    wrong_dtype = make_cache(dtype=torch.float32)
    ids = [wrong_dtype.add_sequence(), wrong_dtype.add_sequence()]
    with pytest.raises(ValueError, match=r"cache\.k_pages"):
        fsa.nsa_prefill(p.q, p.k, p.v, p.cu_seqlens, wrong_dtype, ids, **kw)
    assert [cache.length(i) for i in (a, b)] == [0, 0]  # no failed call advanced a sequence


def test_decode_limit_is_the_library_s():
    """MAX_DECODE_TOKENS is fsa::kMaxDecodeTokens: the C++ key ring has l + kMaxDecodeTokens - 1
    rows, and the C++ check rejects one token more."""
    cache = make_cache()
    assert cache.tail_rows - SMALL.cmp_len + 1 == fsa.MAX_DECODE_TOKENS
    p = make_problem(lengths=(fsa.MAX_DECODE_TOKENS + 1,))
    seq = cache.add_sequence()
    args = (p.q, p.k, p.v, p.cu_seqlens, p.w_k, p.pe_k, p.w_v, p.gates, *cache.pools,
            *cache.batch([seq], [fsa.MAX_DECODE_TOKENS + 1]))
    with pytest.raises(ValueError, match=r"cu_seqlens: nsa_decode takes at most kMaxDecodeTokens = 8"):
        fsa.ops.nsa_decode(*op_args("nsa_decode", *args, config=SMALL))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not fsa.CUDA_DISPATCH, reason="needs a CUDA device and build")
def test_cuda_tensors_reach_the_library():
    """The CUDA registration routes to the library: until the kernels land it raises
    NotImplementedError naming the call; once they do, the outputs are the CPU's."""
    lengths = (100, 7)
    p = make_problem(lengths=lengths, heads_q=8, heads_kv=2, dim_qk=64, dim_v=64, dtype=torch.float32)
    outputs = {}
    for device, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
        pd = p.to(device=device, dtype=torch.bfloat16).to(dtype=dtype)
        cache = fsa.NsaCache(SMALL, 2, 64, max_seqs=2, num_pages=8, dtype=dtype, device=device)
        ids = [cache.add_sequence(), cache.add_sequence()]
        try:
            outputs[device] = fsa.nsa_prefill(pd.q, pd.k, pd.v, pd.cu_seqlens, cache, ids, gates=pd.gates,
                                              w_k=pd.w_k, w_v=pd.w_v, pe_k=pd.pe_k)
        except NotImplementedError as error:
            assert "nsa_prefill" in str(error)
            pytest.skip(f"no CUDA kernel yet: {error}")
    torch.testing.assert_close(outputs["cuda"].float().cpu(), outputs["cpu"], rtol=2e-2, atol=2e-2)
