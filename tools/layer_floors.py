#!/usr/bin/env python3
"""The byte and FLOP floor of every phase of the NSA layer, next to its measured time.

For each `S<len>-G<G>` configuration of bench/results/h100-layer.csv (one sequence, Hkv = 4,
D = 128, bf16, l = 32, s = 16, B = 64, K = 16, w = 512, as `fsa bench layer` runs them) it models,
per phase of the forward and the backward, the compulsory HBM bytes (every input read once, every
output written once) and the tensor-core FLOPs (the products the phase must compute), takes the
floor as max(bytes / HBM bandwidth, FLOPs / tensor peak) with an H100 SXM's 3.35 TB/s and
989 TFLOP/s (dense bf16), and writes a table of measured / floor into docs/layer.md between its
markers (or prints it with --print). The model, term by term, is in docs/layer.md above the table.
No GPU needed:

    python3 tools/layer_floors.py [--print | --check] [--config S64-G4 ...]
"""
import argparse
import csv
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "h100-layer.csv"
DOC = ROOT / "docs" / "layer.md"
BEGIN = "<!-- BEGIN GENERATED: tools/layer_floors.py from bench/results/h100-layer.csv -->"
END = "<!-- END GENERATED -->"

HBM_BYTES_PER_S = 3.35e12  # H100 SXM HBM3
TENSOR_FLOP_PER_S = 989.4e12  # H100 SXM dense bf16
E = 2  # bytes per bf16 element
HKV, D, L, S, B, K, W = 4, 128, 32, 16, 64, 16, 512
DEFAULT_CONFIGS = ("S64-G1", "S64-G4", "S64-G16", "S8K-G4")


def tokens_of(name):
    """S64 -> 65536 (thousands of tokens; `K` suffix the same), None for other names."""
    m = re.fullmatch(r"S(\d+)K?-G(\d+)", name)
    return (int(m.group(1)) * 1024, int(m.group(2))) if m else None


def phase_model(n, group):
    """{phase: (bytes, flops)} for one sequence of n tokens at G = group (the phase names of
    `fsa bench layer`)."""
    hq = HKV * group
    n_cmp = (n - L) // S + 1 if n >= L else 0
    # Keys each query attends to, summed over the queries: the compressed tokens whose window it has
    # seen whole (floor((t - l + 1) / s) + 1 from t = l - 1 on), K blocks of B keys (all t + 1
    # keys before that), the window [t - w, t].
    m = max(0, n - L + 1)
    visible = S * (m // S) * (m // S - 1) // 2 + (m // S) * (m % S) + m

    def capped(cap):  # sum over t < n of min(cap, t + 1)
        return cap * (n - cap) + cap * (cap + 1) // 2 if n > cap else n * (n + 1) // 2

    selected, window = capped(K * B), capped(W + 1)
    q = n * hq * D * E  # bytes of q (and of o, dq, d_o)
    kv = n * HKV * D * E  # bytes of k (or v, dk, dv)
    kv_cmp = n_cmp * HKV * D * E
    lse = hq * n * 4
    weights = HKV * L * D * D * E
    attention = 4 * hq * D  # FLOPs per (query, key): S = Q K^T and O = P V, 2 per multiply-add
    fwd = {
        "compress k+v": (2 * kv + 2 * weights + 2 * kv_cmp, 2 * 2 * n_cmp * HKV * L * D * D),
        "rope q/k/k_cmp": (2 * (q + kv + kv_cmp), 0),
        "cmp attn": (q + 2 * kv_cmp + q + lse, attention * visible),
        "select": (q + kv_cmp + lse + HKV * n * K * 4, attention / 2 * visible),
        "slc attn": (q + 2 * kv + HKV * n * K * 4 + q + lse, attention * selected),
        "swa": (q + 2 * kv + q + lse, attention * window),
        "combine": (3 * q + n * hq * 3 * E + q, 0),
    }
    # Backward: S recomputed, dP = dO V^T, dV += P^T dO, dQ = dS K, dK = dS^T Q: 5 products to the
    # forward's 2. Bytes: q, o, d_o and lse read, dq written; k, v read and dk, dv written.
    bwd_attention = 2.5
    bwd = {
        "combine": (3 * q + n * hq * 3 * E + q + 3 * q + n * hq * 3 * E, 0),
        "swa": (4 * q + lse + 4 * kv, bwd_attention * attention * window),
        "slc attn": (4 * q + lse + 4 * kv + HKV * n * K * 4, bwd_attention * attention * selected),
        "cmp attn": (4 * q + lse + 4 * kv_cmp, bwd_attention * attention * visible),
        "compress k+v": (2 * kv + 2 * weights + 2 * kv_cmp + 4 * kv + 2 * weights, 2 * 2 * 2 * n_cmp * HKV * L * D * D),
    }
    model = {f"fwd: {p}": v for p, v in fwd.items()}
    model.update({f"bwd: {p}": v for p, v in bwd.items()})
    return model


def measured(path):
    """(caption lines, {(config, phase): ms}) of a results file."""
    lines = Path(path).read_text().splitlines()
    caption = [line[1:].strip() for line in lines if line.startswith("#")]
    rows = {(row["config"], row["phase"]): float(row["ms"])
            for row in csv.DictReader(line for line in lines if not line.startswith("#"))}
    return caption, rows


def table(configs):
    caption, rows = measured(RESULTS)
    lines = ["| config | phase | measured ms | MB | GFLOP | floor ms | bound | measured / floor |",
             "|---|---|---|---|---|---|---|---|"]
    for config in configs:
        shape = tokens_of(config)
        if shape is None:
            raise SystemExit(f"--config: expected S<thousands>-G<G> (e.g. S64-G4), got {config}")
        n, group = shape
        total_floor = {"fwd": 0.0, "bwd": 0.0}
        total_ms = {"fwd": 0.0, "bwd": 0.0}
        for phase, (nbytes, flops) in phase_model(n, group).items():
            ms = rows.get((config, phase))
            memory_ms, compute_ms = nbytes / HBM_BYTES_PER_S * 1e3, flops / TENSOR_FLOP_PER_S * 1e3
            floor = max(memory_ms, compute_ms)
            direction = phase.split(":")[0]
            total_floor[direction] += floor
            total_ms[direction] += ms or 0.0
            lines.append(f"| {config} | {phase} | {'-' if ms is None else f'{ms:.3f}'} | {nbytes / 1e6:.0f} | "
                         f"{flops / 1e9:.0f} | {floor:.3f} | {'memory' if memory_ms >= compute_ms else 'compute'} | "
                         f"{'-' if ms is None else f'{ms / floor:.1f}x'} |")
        for direction in ("fwd", "bwd"):
            lines.append(f"| {config} | {direction}: sum of the phases | {total_ms[direction]:.3f} | | | "
                         f"{total_floor[direction]:.3f} | | {total_ms[direction] / total_floor[direction]:.1f}x |")
    source = next((c for c in caption if c.startswith("commit")), "").split(" (")[0]
    note = (f"Measured: `bench/results/h100-layer.csv` ({source}). Floors: max(bytes / 3.35 TB/s, FLOPs / "
            f"989 TFLOP/s), H100 SXM. Generated by `tools/layer_floors.py`.")
    return note + "\n\n" + "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print the table instead of updating docs/layer.md")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when docs/layer.md's table is not what the results make it (CI)")
    parser.add_argument("--config", action="append", help="a configuration (repeatable; default: "
                        + ", ".join(DEFAULT_CONFIGS) + ")")
    args = parser.parse_args()
    text = table(args.config or DEFAULT_CONFIGS)
    if args.print:
        print(text)
        return 0
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc[doc.index(BEGIN):]:
        print(f"{DOC}: markers {BEGIN!r} ... {END!r} not found", file=sys.stderr)
        return 1
    start = doc.index(BEGIN) + len(BEGIN)
    stop = doc.index(END, start)
    updated = doc[:start] + "\n" + text + "\n" + doc[stop:]
    if args.check:
        if updated != doc:
            print(f"{DOC.relative_to(ROOT)}: the floors table differs from bench/results "
                  "(run python3 tools/layer_floors.py)", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(updated)
    print(f"{DOC.relative_to(ROOT)}: floors of {len(args.config or DEFAULT_CONFIGS)} configurations written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
