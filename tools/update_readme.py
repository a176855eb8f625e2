#!/usr/bin/env python3
"""Regenerates the "Measured" tables of README.md from bench/results/*.csv.

Each CSV starts with '#' comment lines (what was run, machine, commit, date) and then a header
row; the table shows the comment lines as a caption and the rows as they are.
"""
import csv
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- BEGIN GENERATED: tools/update_readme.py from bench/results -->"
END = "<!-- END GENERATED -->"


def table(path: Path) -> str:
    lines = path.read_text().splitlines()
    caption = [l.lstrip("# ").strip() for l in lines if l.startswith("#")]
    rows = list(csv.reader(l for l in lines if l and not l.startswith("#")))
    out = [f"**{path.name}**: " + "; ".join(caption), ""]
    out.append("| " + " | ".join(rows[0]) + " |")
    out.append("|" + "---|" * len(rows[0]))
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


LAYER_COLUMNS = ["layer fwd", "layer bwd", "layer fwd+bwd", "dense fwd", "dense fwd+bwd", "sdpa fwd", "sdpa fwd+bwd"]


def layer_tables(path: Path) -> str:
    """`fsa bench layer` rows (config, phase, ms, ...) pivoted: one row per configuration with the
    layer's and the dense paths' times, the break-even lines, and the phase split of S64-G4."""
    lines = path.read_text().splitlines()
    caption = [l.lstrip("# ").strip() for l in lines if l.startswith("#")]
    rows = list(csv.reader(l for l in lines if l and not l.startswith("#")))[1:]
    ms, order, verdicts, phases = {}, [], [], []
    for r in rows:
        config, phase, value = r[0], r[1], r[2]
        if config.startswith("BREAK-EVEN"):
            verdicts.append(f"{config}: {phase}")
            continue
        if config not in order:
            order.append(config)
        ms[(config, phase)] = value
        if config == "S64-G4" and (phase.startswith("fwd:") or phase.startswith("bwd:")):
            phases.append((phase, value))
    out = [f"**{path.name}** (pivoted; ms): " + "; ".join(caption), ""]
    out.append("| config | " + " | ".join(LAYER_COLUMNS) + " |")
    out.append("|" + "---|" * (len(LAYER_COLUMNS) + 1))
    for config in order:
        out.append(f"| {config} | " + " | ".join(ms.get((config, c), "-") for c in LAYER_COLUMNS) + " |")
    if verdicts:
        out += ["", "Break-even against the library's dense path (from `fsa bench layer`): " + "; ".join(verdicts) + "."]
    sdpa = [break_even(ms, g, "sdpa fwd+bwd") for g in (4, 16)]
    if any(sdpa):
        out += ["", "Break-even against torch SDPA (the sweep plus S64 at 65536 tokens): " +
                "; ".join(f"G={g}: {v}" for g, v in zip((4, 16), sdpa) if v) + "."]
    if phases:
        out += ["", "S64-G4 by phase (ms): " + ", ".join(f"{p} {v}" for p, v in phases) + "."]
    return "\n".join(out)


BEFORE_AFTER_LAYER_PHASES = ["layer fwd", "layer bwd", "layer fwd+bwd", "fwd: slc attn", "bwd: slc attn"]


def before_after_table(path: Path) -> str:
    """Rows (call, build, bench, config, phase, ms, ...) pivoted: one row per (bench, config, phase)
    with a column per (call, build); of the layer, its totals and its selected-attention phases."""
    lines = path.read_text().splitlines()
    caption = [l.lstrip("# ").strip() for l in lines if l.startswith("#")]
    rows = list(csv.DictReader(l for l in lines if l and not l.startswith("#")))
    columns, keys, ms = [], [], {}
    for r in rows:
        if r["bench"] == "layer" and r["phase"] not in BEFORE_AFTER_LAYER_PHASES:
            continue
        column, key = f"call {r['call']}: {r['build']}", (r["bench"], r["config"], r["phase"])
        if column not in columns:
            columns.append(column)
        if key not in keys:
            keys.append(key)
        ms[(key, column)] = r["ms"]
    out = [f"**{path.name}** (pivoted; ms): " + "; ".join(caption), ""]
    out.append("| bench | config | phase | " + " | ".join(columns) + " |")
    out.append("|" + "---|" * (len(columns) + 3))
    out += ["| " + " | ".join(key) + " | " + " | ".join(ms.get((key, c), "-") for c in columns) + " |" for key in keys]
    return "\n".join(out)


def break_even(ms, group, dense_phase):
    """First length where the layer's forward + backward beats `dense_phase`, geometrically
    interpolated between the swept lengths (SWEEP-G{g}-{n}K, then S64-G{g} as 65536 tokens)."""
    points = [(k * 1024, f"SWEEP-G{group}-{k}K") for k in (2, 4, 8, 16, 32)] + [(65536, f"S64-G{group}")]
    ratios = [(n, float(ms[(c, "layer fwd+bwd")]) / float(ms[(c, dense_phase)])) for n, c in points
              if (c, "layer fwd+bwd") in ms and (c, dense_phase) in ms]
    for i, (n, r) in enumerate(ratios):
        if r < 1:
            if i == 0:
                return f"NSA faster already at {n} tokens"
            n0, r0 = ratios[i - 1]
            t = math.log(r0) / (math.log(r0) - math.log(r))
            return f"~{round(math.exp(math.log(n0) + t * (math.log(n) - math.log(n0))))} tokens"
    return "NSA slower at every measured length" if ratios else ""


def main():
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    tables = [layer_tables(p) if p.name.endswith("-layer.csv")
              else before_after_table(p) if p.name.endswith("-before-after.csv") else table(p)
              for p in sorted((ROOT / "bench" / "results").glob("*.csv"))]
    body = "\n\n".join(tables) if tables else "No results recorded yet."
    readme.write_text(text[:start] + "\n" + body + "\n" + text[end:])


if __name__ == "__main__":
    main()
