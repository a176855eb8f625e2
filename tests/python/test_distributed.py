"""fsa.distributed.nsa_attention_cp on 2 and 4 gloo processes of this machine against the
single-process fsa.nsa_attention on the same packed batch, fp32: the output and every gradient
(q, k, v, gates, and w_k, w_v, pe_k summed over the ranks) for both shardings, ragged batches with a
sequence crossing rank boundaries and sequences shorter than one rank's share, G in {1, 4}; and
NativeSparseAttention given the process group."""
from dataclasses import replace

import pytest
import torch

import fsa
from problems import SMALL, make_problem

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
from fsa import distributed as cp  # noqa: E402  (after the skip: it needs torch.distributed)

# 130 crosses rank boundaries at every world size; 37, 5 and 20 are shorter than a rank's share
# (96 rows on 2 ranks, 48 on 4) and 5 than a compression window; 0 is empty. 192 tokens: a
# multiple of 2P for P in {2, 4}, as zig-zag needs.
RAGGED = (130, 37, 5, 0, 20)
ONE_SEQUENCE = (192,)

# One row per case: lengths, (Hq, Hkv), sharding, what else varies. Each worker runs all of them.
CASES = [
    dict(lengths=RAGGED, heads=(2, 2), sharding="contiguous"),
    dict(lengths=RAGGED, heads=(8, 2), sharding="zigzag", shared_gates=True),
    dict(lengths=RAGGED, heads=(8, 2), sharding="contiguous", slice_heads=2, compression="mean"),
    dict(lengths=ONE_SEQUENCE, heads=(8, 2), sharding="auto", expect="zigzag"),
    dict(lengths=ONE_SEQUENCE, heads=(2, 2), sharding="contiguous", rope=False),
    dict(lengths=RAGGED, heads=(2, 2), sharding="zigzag", aggregation="first_head"),
]


def _config(compression="linear", rope=True, aggregation="group_sum"):
    return replace(SMALL, compression=compression, aggregation=aggregation,
                   rope=replace(SMALL.rope, enabled=rope))


def _check_case(world_size, seed, lengths, heads, sharding, expect=None, shared_gates=False, slice_heads=1,
                **config_fields):
    config = _config(**config_fields)
    # The same inputs on every rank: the seed is the case's, not the rank's.
    p = make_problem(lengths, heads_q=heads[0], heads_kv=heads[1], dtype=torch.float32, config=config,
                     shared_gates=shared_gates, generator_seed=seed)
    whole = [p.q, p.k, p.v, p.gates, p.w_k, p.w_v, p.pe_k]
    names = ["q", "k", "v", "gates", "w_k", "w_v", "pe_k"]
    d_o = torch.randn(p.q.shape[0], heads[0], p.v.shape[2], generator=torch.Generator().manual_seed(seed + 1))

    ref_in = [None if t is None else t.clone().requires_grad_(True) for t in whole]
    o_ref = fsa.nsa_attention(ref_in[0], ref_in[1], ref_in[2], p.cu_seqlens, ref_in[3], ref_in[4], ref_in[5],
                              ref_in[6], config)
    o_ref.backward(d_o)

    resolved = cp.choose_sharding(p.cu_seqlens, world_size) if sharding == "auto" else sharding
    if expect is not None:
        assert resolved == expect, f"auto sharding of {lengths}: {resolved}, expected {expect}"
    local = [cp.shard_rows(t, p.cu_seqlens, sharding=sharding).clone().requires_grad_(True) for t in whole[:4]]
    weights = [None if t is None else t.clone().requires_grad_(True) for t in whole[4:]]
    o = cp.nsa_attention_cp(*local[:3], p.cu_seqlens, local[3], *weights, config=config, sharding=sharding,
                            slice_heads=slice_heads)
    o.backward(cp.shard_rows(d_o, p.cu_seqlens, sharding=sharding))
    with torch.no_grad():  # inference: no graph kept, the same output
        o_no_grad = cp.nsa_attention_cp(*local[:3], p.cu_seqlens, local[3], *weights, config=config,
                                        sharding=sharding, slice_heads=slice_heads)
    assert o_no_grad.grad_fn is None
    torch.testing.assert_close(o_no_grad, o.detach(), atol=0, rtol=0)

    what = f"case {lengths} heads {heads} {sharding} on rank {dist.get_rank()} of {world_size}"
    tol = dict(atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(o, cp.shard_rows(o_ref.detach(), p.cu_seqlens, sharding=sharding), **tol,
                               msg=lambda m: f"{what}, output: {m}")
    for name, t, t_ref in zip(names[:4], local, ref_in[:4]):
        expected = cp.shard_rows(t_ref.grad, p.cu_seqlens, sharding=sharding)
        torch.testing.assert_close(t.grad, expected, **tol, msg=lambda m, name=name: f"{what}, grad of {name}: {m}")
    for name, t, t_ref in zip(names[4:], weights, ref_in[4:]):
        if t is None:
            continue
        # A replicated parameter's gradient is each rank's contribution: their sum is the whole one.
        total = t.grad.clone()
        dist.all_reduce(total)
        torch.testing.assert_close(total, t_ref.grad, **tol, msg=lambda m, name=name: f"{what}, grad of {name}: {m}")
        assert t.grad.abs().sum() > 0, f"{what}: no gradient reached {name}"


def _check_module(world_size, seed):
    """NativeSparseAttention with the group: this rank's rows of y and of x's gradient, and the
    parameters' gradients summed over the ranks, equal the single-process module's."""
    torch.manual_seed(seed)  # the same parameters on every rank
    single = fsa.NativeSparseAttention(24, 8, 2, 8, 6, config=_config(), dtype=torch.float32)
    parallel = fsa.NativeSparseAttention(24, 8, 2, 8, 6, config=_config(), dtype=torch.float32,
                                         process_group=dist.group.WORLD)
    parallel.load_state_dict(single.state_dict())
    cu = torch.tensor([0, 130, 167, 172, 172, 192], dtype=torch.int32)
    x = torch.randn(192, 24)
    d_y = torch.randn(192, 24)
    x_ref = x.clone().requires_grad_(True)
    y_ref = single(x_ref, cu)
    y_ref.backward(d_y)
    x_local = cp.shard_rows(x, cu).requires_grad_(True)
    y = parallel(x_local, cu)
    y.backward(cp.shard_rows(d_y, cu))
    tol = dict(atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(y, cp.shard_rows(y_ref.detach(), cu), **tol)
    torch.testing.assert_close(x_local.grad, cp.shard_rows(x_ref.grad, cu), **tol)
    for (name, p), p_ref in zip(parallel.named_parameters(), single.parameters()):
        total = p.grad.clone()
        dist.all_reduce(total)
        torch.testing.assert_close(total, p_ref.grad, **tol, msg=lambda m, name=name: f"module, grad of {name}: {m}")


def _worker(rank, world_size, store_path, seed):
    torch.set_num_threads(1)  # the processes share the machine's cores
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    try:
        for i, case in enumerate(CASES):
            _check_case(world_size, seed + 10 * i, **case)
        _check_module(world_size, seed)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world_size", [2, 4])
def test_matches_the_single_process_layer(world_size, tmp_path):
    seed = int(torch.randint(0, 2**30, ()))
    torch.multiprocessing.spawn(_worker, args=(world_size, str(tmp_path / "store"), seed), nprocs=world_size,
                                join=True)


def test_local_rows_of_each_sharding():
    # 16 rows on 2 ranks: contiguous halves; zig-zag chunks of 4, rank 0 holds chunks 0 and 3.
    assert cp.local_runs(16, 2, 0, "contiguous") == [(0, 8)]
    assert cp.local_runs(16, 2, 1, "contiguous") == [(8, 16)]
    assert cp.local_runs(16, 2, 0, "zigzag") == [(0, 4), (12, 16)]
    assert cp.local_runs(16, 2, 1, "zigzag") == [(4, 8), (8, 12)]
    with pytest.raises(ValueError, match="multiple of 4"):
        cp.local_runs(18, 2, 0, "zigzag")


def test_auto_sharding():
    # One sequence: zig-zag balances the causal work; many equal short ones: contiguous already does.
    assert cp.choose_sharding([0, 4096], 4) == "zigzag"
    assert cp.choose_sharding(list(range(0, 4097, 64)), 4) == "contiguous"
    # A token count that zig-zag cannot split: contiguous.
    assert cp.choose_sharding([0, 4100], 4) == "contiguous"


def test_plan_of_a_rank():
    # cu = 0, 130, 167, 172, 172, 192 on 2 ranks, contiguous: rank 1 holds rows 96..191, i.e. the
    # positions 96..129 of sequence 0 and the whole of sequences 1, 2 and 4.
    cu = [0, 130, 167, 172, 172, 192]
    plan = cp.plan_cp(cu, 2, 1, "contiguous", replace(SMALL, window=12))
    assert plan.cu_prefix.tolist() == [0, 130, 167, 172, 192]
    assert plan.local_in_prefix.tolist() == list(range(96, 192))
    assert int(plan.prefix_is_local.sum()) == 96
    # Window halo: 12 rows before position 96 of sequence 0, none before the others.
    assert plan.cu_halo.tolist() == [0, 46, 83, 88, 108]
    assert plan.halo_in_prefix[:2].tolist() == [84, 85]


def test_rejects_wrong_row_counts(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        p = make_problem((16,), dtype=torch.float32)
        with pytest.raises(ValueError, match="q: expected this rank's 16 rows"):
            cp.nsa_attention_cp(p.q[:8], p.k, p.v, p.cu_seqlens, p.gates, p.w_k, p.w_v, p.pe_k, config=p.config)
        with pytest.raises(ValueError, match="slice_heads"):
            cp.nsa_attention_cp(p.q, p.k, p.v, p.cu_seqlens, p.gates, p.w_k, p.w_v, p.pe_k, config=p.config,
                                slice_heads=3)
    finally:
        dist.destroy_process_group()



# ---- on the GPU ----------------------------------------------------------------------------------
# The same comparison on CUDA tensors (bf16, head dim 128, a config the kernels serve), each rank on
# GPU rank % device_count. With a GPU per rank the ranks talk over NCCL; with fewer (one GPU, as on
# a one-GPU machine) over gloo, which moves CUDA tensors through the host: a correctness run, not a
# speed claim (NCCL refuses two ranks on one GPU). The reference is the single-process GPU layer on
# the same inputs; bf16 tolerances as in test_gpu.py.
GPU_CONFIG = fsa.NsaConfig(cmp_len=32, cmp_stride=16, block_size=64, topk=4, init_blocks=1, local_blocks=2,
                           window=96)
GPU_LENGTHS = (700, 213, 37, 0, 74)  # 1024 tokens: zig-zag on 2 and 4 ranks; 37 shorter than l


def _check_case_gpu(world_size, seed, sharding, device):
    p = make_problem(GPU_LENGTHS, heads_q=8, heads_kv=2, dim_qk=128, dim_v=128, config=GPU_CONFIG,
                     dtype=torch.float32, generator_seed=seed).to(device, torch.bfloat16)
    whole = [p.q, p.k, p.v, p.gates, p.w_k, p.w_v, p.pe_k]
    names = ["q", "k", "v", "gates", "w_k", "w_v", "pe_k"]
    d_o = torch.randn(p.q.shape[0], 8, 128, generator=torch.Generator().manual_seed(seed + 1)).to(device,
                                                                                                  torch.bfloat16)
    cu = p.cu_seqlens.cpu()
    ref_in = [t.detach().clone().requires_grad_(True) for t in whole]
    o_ref = fsa.nsa_attention(*ref_in[:3], p.cu_seqlens, *ref_in[3:], GPU_CONFIG)
    o_ref.backward(d_o)
    local = [cp.shard_rows(t.detach(), cu, sharding=sharding).clone().requires_grad_(True) for t in whole[:4]]
    weights = [t.detach().clone().requires_grad_(True) for t in whole[4:]]
    o = cp.nsa_attention_cp(*local[:3], cu, local[3], *weights, config=GPU_CONFIG, sharding=sharding, slice_heads=1)
    o.backward(cp.shard_rows(d_o, cu, sharding=sharding))
    torch.cuda.synchronize(device)

    def rel(a, b):
        return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))

    what = f"{sharding} on rank {dist.get_rank()} of {world_size}"
    errors = {"o": rel(o, cp.shard_rows(o_ref.detach(), cu, sharding=sharding))}
    for name, t, t_ref in zip(names[:4], local, ref_in[:4]):
        errors[name] = rel(t.grad, cp.shard_rows(t_ref.grad, cu, sharding=sharding))
    for name, t, t_ref in zip(names[4:], weights, ref_in[4:]):
        total = t.grad.float()
        dist.all_reduce(total)
        errors[name] = rel(total, t_ref.grad.float())
    bad = {name: err for name, err in errors.items() if not err < 2e-2}
    assert not bad, f"{what}: relative errors above 2e-2: {bad} (all: {errors})"


def _worker_gpu(rank, world_size, store_path, seed, backend):
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    try:
        for i, sharding in enumerate(("contiguous", "zigzag")):
            _check_case_gpu(world_size, seed + 10 * i, sharding, device)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not fsa.CUDA_DISPATCH, reason="needs a CUDA device and build")
@pytest.mark.parametrize("world_size", [2])
def test_matches_the_single_process_layer_on_the_gpu(world_size, tmp_path, monkeypatch):
    for variable in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"):
        monkeypatch.setenv(variable, "0" if variable == "NCCL_NVLS_ENABLE" else "1")  # no NVLink multicast
    backend = "nccl" if torch.cuda.device_count() >= world_size and dist.is_nccl_available() else "gloo"
    seed = int(torch.randint(0, 2**30, ()))
    torch.multiprocessing.spawn(_worker_gpu, args=(world_size, str(tmp_path / "store"), seed, backend),
                                nprocs=world_size, join=True)
