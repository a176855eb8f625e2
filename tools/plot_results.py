#!/usr/bin/env python3
"""Draws the plots of bench/results that a reader would rather look at than read: the layer's time
against sequence length by G next to dense attention (h100-layer.csv), the layer against the
public NSA implementations and torch SDPA at S64 (h100-peers.csv), and decode against its floor and
dense attention with chunked prefill against nsa_forward (h100-decode.csv). The PNGs sit beside their
result files and the README shows them (tools/update_readme.py).

Each PNG carries two text chunks: "fsa-source", the SHA-256 of the result file it was drawn from,
and "fsa-caption", the README's caption. `--check` (CI, no matplotlib needed) fails when a plot is
missing or its result file changed since it was drawn; without it, the plots are drawn (needs
matplotlib: `pip install matplotlib`).
"""
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from update_readme import RESULTS, png_text, read_rows  # noqa: E402

SOURCE_KEY = "fsa-source"
CAPTION_KEY = "fsa-caption"


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def layer_sweep(axes_row, rows):
    """Per G: the layer's forward and forward + backward and the library's dense forward + backward
    (causal, same run) against the sequence length, from the SWEEP-G<g>-<n>K rows and S64-G<g>."""
    ms = {(r["config"], r["phase"]): float(r["ms"]) for r in rows if r["ms"]}
    for ax, group in zip(axes_row, (4, 16)):
        lengths = [2, 4, 8, 16, 32, 64]
        configs = [f"SWEEP-G{group}-{n}K" if n < 64 else f"S64-G{group}" for n in lengths]
        for phase, label, style in (("layer fwd+bwd", "NSA layer, forward + backward", "o-"),
                                    ("dense fwd+bwd", "dense causal attention (the library's), forward + backward", "s--"),
                                    ("layer fwd", "NSA layer, forward", "o:")):
            points = [(n, ms[(c, phase)]) for n, c in zip(lengths, configs) if (c, phase) in ms]
            ax.plot([n for n, _ in points], [v for _, v in points], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(lengths, [f"{n}K" for n in lengths])
        ax.set_xlabel("tokens (one sequence)")
        ax.set_ylabel("ms")
        ax.set_title(f"G = {group} (Hq {4 * group}, Hkv 4)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)


def peers(axes_row, rows):
    """Per G: the layer's forward and forward + backward at S64, each implementation that ran."""
    layer = [r for r in rows if r["part"] == "layer" and r["ms"] and r["impl"] != "ours-matched"]
    palette = "tab:blue tab:orange tab:green tab:red tab:purple tab:brown".split()
    colour = {impl: palette[k % len(palette)] for k, impl in enumerate(dict.fromkeys(r["impl"] for r in layer))}
    for ax, group in zip(axes_row, (4, 16)):
        config = f"S64-G{group}"
        found = [r for r in layer if r["config"] == config]
        impls = list(dict.fromkeys(r["impl"] for r in found))
        phases = ["fwd", "fwd+bwd"]
        width = 0.8 / max(len(impls), 1)
        for k, impl in enumerate(impls):
            values = {r["phase"]: float(r["ms"]) for r in found if r["impl"] == impl}
            xs = [p + k * width for p in range(len(phases)) if phases[p] in values]
            ys = [values[ph] for ph in phases if ph in values]
            bars = ax.bar(xs, ys, width, label=impl, color=colour[impl])
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks([p + 0.4 - width / 2 for p in range(len(phases))], ["forward", "forward + backward"])
        ax.set_ylabel("ms")
        ax.set_title(f"S64-G{group}: the whole layer")
        ax.legend(fontsize=8)


def decode(axes_row, rows):
    """Left: each decode configuration's step (graph replay) against its HBM floor and dense
    attention over the same cache; right: the chunked prefill against one nsa_forward."""
    steps = [r for r in rows if r["mode"] == "graph"]
    ax = axes_row[0]
    names = [r["config"] for r in steps]
    for k, (column, label, colour) in enumerate((("floor_ms", "HBM floor of its bytes", "tab:gray"),
                                                 ("ms", "NSA decode step", "tab:blue"),
                                                 ("dense_ms", "dense attention over the cache", "tab:orange"))):
        bars = ax.bar([i + (k - 1) * 0.27 for i in range(len(steps))], [float(r[column]) for r in steps], 0.27,
                      label=label, color=colour)
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
    ax.set_xticks(range(len(steps)), names, fontsize=7, rotation=12)
    ax.set_ylabel("ms per step")
    ax.set_title("decode step (CUDA graph replay)")
    ax.legend(fontsize=8)
    ax = axes_row[1]
    prefill = [r for r in rows if r["mode"] not in ("graph", "eager")]
    bars = ax.bar([r["mode"] for r in prefill], [float(r["ms"]) for r in prefill], 0.5,
                  color=["tab:blue", "tab:green"][:len(prefill)])
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title(f"{prefill[0]['config']}: one sequence of {prefill[0]['context']} tokens" if prefill else "prefill")


# (png, result file, drawing function, caption)
PLOTS = [
    ("h100-layer-sweep.png", "h100-layer.csv", layer_sweep,
     "The layer against dense causal attention by sequence length, G = 4 and 16 (H100, from h100-layer.csv)"),
    ("h100-peers.png", "h100-peers.csv", peers,
     "The layer against the public NSA layers and torch SDPA at S64 (H100, from h100-peers.csv; "
     "FLA's layer runs at G >= 16 only; the window branches of nsa-lib and FLA ran on our sliding-window kernel)"),
    ("h100-decode.png", "h100-decode.csv", decode,
     "Decode over a paged cache against its HBM floor and dense attention, and chunked prefill against "
     "nsa_forward (H100, from h100-decode.csv)"),
]


def draw():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for png, source, body, caption in PLOTS:
        path = RESULTS / source
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        body(axes, read_rows(path))
        fig.suptitle(caption, fontsize=9)
        fig.tight_layout()
        # No date or version in the file: the same results draw the same bytes on one matplotlib.
        fig.savefig(RESULTS / png, dpi=110,
                    metadata={"Software": None, SOURCE_KEY: source_hash(path), CAPTION_KEY: caption})
        plt.close(fig)


def check() -> int:
    stale = []
    for png, source, _, caption in PLOTS:
        path = RESULTS / png
        text = png_text(path) if path.exists() else {}
        if text.get(SOURCE_KEY) != source_hash(RESULTS / source) or text.get(CAPTION_KEY) != caption:
            stale.append(f"{png} (from {source})")
    if stale:
        print("plots missing or older than their results: " + ", ".join(stale) +
              " (run python3 tools/plot_results.py with matplotlib installed)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(check() if "--check" in sys.argv[1:] else (draw() or 0))
