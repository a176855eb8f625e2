#!/usr/bin/env python3
"""Context-parallel NSA (fsa.distributed.nsa_attention_cp) on 2 / 4 / 8 GPUs of one host, NCCL.

NOT YET RUN: written while the multi-GPU machines were withheld; no result of it exists in
bench/results, and docs/distributed.md claims no speed. Run it on the device machine's
nvidia-h100-x8 (or -x2 / -x4) kind, from a CUDA build of the package:

    python bench/cp_bench.py --gpus 1 2 4 8 --config S256K-G4 S1M-G4 S256K-G16 S1M-G16 --csv out.csv

Per configuration (one sequence of S tokens, bf16, D = 128, Hkv = 4, Hq = 4G, the default
NsaConfig: l 32, s 16, B 64, K 16, w 512, linear compression, RoPE, per-head gates) and GPU count
it times, with CUDA events, the median (and min, max) of --iters runs after two warm-ups:

- "cp fwd", "cp fwd+bwd": one step of nsa_attention_cp on every rank (the slowest rank's time:
  each rank's events, then the maximum over the ranks);
- "comm fwd", "comm bwd": the step's collectives alone (the all-gathers of K and V, the fp32
  reduce-scatters of dK and dV, slice by slice), so that the communication left unhidden is
  fwd+bwd minus the same step's compute;
- with --gpus 1 also "layer fwd+bwd", fsa.nsa_attention on one GPU, the baseline of the scaling
  efficiency t1 / (P * tP) at the largest length that fits one GPU (S1M-G4 did at the default
  cap: docs/layer.md).

and the peak memory of the largest rank (torch.cuda.max_memory_allocated, MiB). A configuration
that runs out of memory is reported as such and the next one runs.

NVLink multicast stays off (the device machines' rule; KINDS.md): the script sets
NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1 before torch
starts NCCL.
"""
import argparse
import os
import socket
import sys

os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
os.environ["NVSHMEM_DISABLE_NVLS"] = "1"

CONFIGS = {f"S{k}K-G{g}" if k < 1024 else f"S{k // 1024}M-G{g}": (k * 1024, g)
           for k in (256, 512, 1024) for g in (4, 16)}
HEADS_KV, DIM = 4, 128


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _time(torch, body, iters):
    times = []
    for i in range(iters + 2):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        body()
        stop.record()
        stop.synchronize()
        if i >= 2:
            times.append(start.elapsed_time(stop))
    return times


def _worker(rank, world_size, port, args):
    import torch
    import torch.distributed as dist

    import fsa
    from fsa import distributed as cp

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            device_id=torch.device("cuda", rank))
    config = fsa.NsaConfig()
    rows_out = []
    for name in args.config:
        tokens, group = CONFIGS[name]
        heads_q = HEADS_KV * group
        cu = torch.tensor([0, tokens], dtype=torch.int32)
        plan = cp.plan_cp(cu, world_size, rank, args.sharding, config)
        rows = tokens // world_size
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            def randn(*shape):
                return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)

            q, k, v = randn(rows, heads_q, DIM), randn(rows, HEADS_KV, DIM), randn(rows, HEADS_KV, DIM)
            gates = torch.rand(rows, heads_q, 3, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            l = config.cmp_len
            w_k, w_v = randn(HEADS_KV, l * DIM, DIM), randn(HEADS_KV, l * DIM, DIM)
            pe_k = randn(HEADS_KV, l, DIM)
            d_o = torch.randn(rows, heads_q, DIM, device="cuda", dtype=torch.bfloat16)

            def forward():
                with torch.no_grad():
                    cp.nsa_attention_cp(q, k, v, cu, gates, w_k, w_v, pe_k, config, plan=plan)

            def forward_backward():
                cp.nsa_attention_cp(q, k, v, cu, gates, w_k, w_v, pe_k, config, plan=plan).backward(d_o)

            def comm_forward():
                for h in range(HEADS_KV):
                    for x in (k, v):
                        out = x.new_empty((tokens, 1, DIM))
                        dist.all_gather_into_tensor(out, x[:, h:h + 1].detach().contiguous())

            def comm_backward():
                for h in range(HEADS_KV):
                    for _ in range(2):
                        full = torch.empty(tokens, 1, DIM, device="cuda", dtype=torch.float32)
                        dist.reduce_scatter_tensor(full.new_empty((rows, 1, DIM)), full)

            phases = [("cp fwd", forward), ("cp fwd+bwd", forward_backward), ("comm fwd", comm_forward),
                      ("comm bwd", comm_backward)]
            if world_size == 1:
                def layer():
                    fsa.nsa_attention(q, k, v, cu.cuda(), gates, w_k, w_v, pe_k, config).backward(d_o)

                phases.append(("layer fwd+bwd", layer))
            for phase, body in phases:
                times = torch.tensor(_time(torch, body, args.iters), device="cuda")
                dist.all_reduce(times, op=dist.ReduceOp.MAX)  # the slowest rank of each run
                times = sorted(times.tolist())
                peak = torch.tensor(torch.cuda.max_memory_allocated() / 2**20, device="cuda")
                dist.all_reduce(peak, op=dist.ReduceOp.MAX)
                rows_out.append(f"{name},{phase},{world_size},{plan.sharding},{times[len(times) // 2]:.3f},"
                                f"{times[0]:.3f},{times[-1]:.3f},{peak.item():.0f}")
                if rank == 0:
                    print(rows_out[-1], flush=True)
            del q, k, v, gates, w_k, w_v, pe_k, d_o
        except torch.cuda.OutOfMemoryError:
            rows_out.append(f"{name},out of memory,{world_size},{plan.sharding},,,,")
            if rank == 0:
                print(rows_out[-1], flush=True)
    if rank == 0 and args.csv:
        with open(args.csv, "a") as f:
            f.write("\n".join(rows_out) + "\n")
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--config", nargs="+", default=["S256K-G4", "S1M-G4", "S256K-G16", "S1M-G16"],
                        choices=sorted(CONFIGS))
    parser.add_argument("--sharding", default="auto", choices=["auto", "contiguous", "zigzag"])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--csv", help="append the rows to this file (config,phase,gpus,sharding,median_ms,"
                                      "min_ms,max_ms,peak_mib_max_rank)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("cp_bench: no CUDA device", file=sys.stderr)
        return 2
    if not fsa_has_cuda():
        print("cp_bench: the fsa package was built without the CUDA kernels", file=sys.stderr)
        return 2
    for world_size in args.gpus:
        if world_size > torch.cuda.device_count():
            print(f"cp_bench: {world_size} GPUs asked, {torch.cuda.device_count()} present; skipped",
                  file=sys.stderr)
            continue
        torch.multiprocessing.spawn(_worker, args=(world_size, _free_port(), args), nprocs=world_size, join=True)
    return 0


def fsa_has_cuda() -> bool:
    import fsa

    return bool(fsa.CUDA_DISPATCH)


if __name__ == "__main__":
    sys.exit(main())
