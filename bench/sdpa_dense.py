#!/usr/bin/env python3
"""Dense causal attention with torch SDPA on the GPU, for `fsa bench layer`'s comparison.

Times torch.nn.functional.scaled_dot_product_attention (causal, bf16, D=128, GQA with Hkv=4 as in the
canonical configurations of tools/fsa/bench_util.hpp; the flash backend) forward and forward + backward for the configurations of the
layer benchmark, with CUDA events, median of --iters runs after two warm-ups, and writes rows in
the CSV format of `fsa bench layer` (phases "sdpa fwd" and "sdpa fwd+bwd"). Packed batches
(VAR-G4) run one SDPA call per sequence, as a user without varlen SDPA would.
"""
import argparse
import sys

CONFIGS = {f"S64-G{g}": ([65536], 4, g) for g in (1, 2, 4, 8, 16)}
CONFIGS.update({"S8K-G4": ([8192], 4, 4), "S16K-G4": ([16384], 4, 4), "S32K-G4": ([32768], 4, 4),
                "VAR-G4": ([32768, 16384, 8192, 4096, 2048, 1024, 512, 512], 4, 4), "LLAMA8B": ([32768], 8, 4)})
for g in (4, 16):
    for kib in (2, 4, 8, 16, 32):
        CONFIGS[f"SWEEP-G{g}-{kib}K"] = ([kib * 1024], 4, g)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", action="append", help="configuration name (repeatable; default all)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--csv", help="append the rows to this file")
    args = parser.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"sdpa_dense: torch not available ({e})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("sdpa_dense: no CUDA device", file=sys.stderr)
        return 2
    d = 128
    rows = []
    for name, (seqlens, hkv, group) in CONFIGS.items():
        if args.config and name not in args.config:
            continue
        hq = hkv * group
        seqs = []
        for n in seqlens:
            q = torch.randn(1, hq, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            k = torch.randn(1, hkv, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            v = torch.randn(1, hkv, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            seqs.append((q, k, v, torch.randn(1, hq, n, d, device="cuda", dtype=torch.bfloat16)))

        def forward():
            return [F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True) for q, k, v, _ in seqs]

        def forward_backward():
            for (q, k, v, d_o), o in zip(seqs, forward()):
                o.backward(d_o)

        flop = sum(4.0 * d * 0.5 * n * (n + 1) * hq for n in seqlens)
        for phase, body, phase_flop in (("sdpa fwd", forward, flop), ("sdpa fwd+bwd", forward_backward, 3.5 * flop)):
            torch.cuda.reset_peak_memory_stats()
            times = []
            for i in range(args.iters + 2):
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                with torch.no_grad() if phase == "sdpa fwd" else torch.enable_grad():
                    body()
                stop.record()
                stop.synchronize()
                if i >= 2:
                    times.append(start.elapsed_time(stop))
            times.sort()
            med = times[len(times) // 2]
            peak = torch.cuda.max_memory_allocated() / 2**20
            rows.append(f"{name},{phase},{med:.3f},{times[0]:.3f},{times[-1]:.3f},{phase_flop / (med * 1e9):.1f},{peak:.0f}")
            print(rows[-1], flush=True)
        del seqs
        torch.cuda.empty_cache()
    if args.csv:
        with open(args.csv, "a") as f:
            f.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
