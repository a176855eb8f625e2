#!/usr/bin/env python3
"""Regenerates the generated parts of README.md from bench/results/*.csv: the headline figures of
the status section and the "Measured" tables (docs/measuring.md describes the files).

Each CSV starts with '#' comment lines (what was run, machine, commit, date) and then a header
row; the table shows the comment lines as a caption and the rows as they are. `*-peers.csv` files
(bench/peers.py) are pivoted to a column per implementation, `*-decode.csv` files (`fsa bench decode`)
to a row per decode configuration; the plots beside them (`*.png`, tools/plot_results.py) come first,
with the captions stored in them. A comment line
"# status: ..." marks a file that no longer describes the current code (what supersedes it, what
it still shows): it is printed before the caption and the file's table comes after the others.
"""
import csv
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BEGIN = "<!-- BEGIN GENERATED: tools/update_readme.py from bench/results -->"
END = "<!-- END GENERATED -->"
SUMMARY_BEGIN = "<!-- BEGIN GENERATED SUMMARY: tools/update_readme.py from bench/results -->"
SUMMARY_END = "<!-- END GENERATED SUMMARY -->"
STATUS = "status:"


def comments(path: Path):
    """(caption lines, status lines) of a result file, without their leading '#'."""
    lines = [l.lstrip("# ").strip() for l in path.read_text().splitlines() if l.startswith("#")]
    status = [l[len(STATUS):].strip() for l in lines if l.startswith(STATUS)]
    return [l for l in lines if not l.startswith(STATUS)], status


def heading(path: Path, note: str = "") -> str:
    caption, status = comments(path)
    head = f"**{path.name}**{note}: "
    if status:
        head = f"**{path.name}** (status: " + "; ".join(status) + f"){note}: "
    return head + "; ".join(caption)


def table(path: Path) -> str:
    lines = path.read_text().splitlines()
    rows = list(csv.reader(l for l in lines if l and not l.startswith("#")))
    out = [heading(path), ""]
    out.append("| " + " | ".join(rows[0]) + " |")
    out.append("|" + "---|" * len(rows[0]))
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


LAYER_COLUMNS = ["layer fwd", "layer bwd", "layer fwd+bwd", "dense fwd", "dense fwd+bwd", "sdpa fwd", "sdpa fwd+bwd"]


def layer_tables(path: Path) -> str:
    """`fsa bench layer` rows (config, phase, ms, ...) pivoted: one row per configuration with the
    layer's and the dense paths' times, the break-even lines, and the phase split of S64-G4."""
    lines = path.read_text().splitlines()
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
    out = [heading(path, " (pivoted; ms)"), ""]
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
    rows = read_rows(path)
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
    out = [heading(path, " (pivoted; ms)"), ""]
    out.append("| bench | config | phase | " + " | ".join(columns) + " |")
    out.append("|" + "---|" * (len(columns) + 3))
    out += ["| " + " | ".join(key) + " | " + " | ".join(ms.get((key, c), "-") for c in columns) + " |" for key in keys]
    return "\n".join(out)


def decode_tables(path: Path) -> str:
    """`fsa bench decode` rows (config, batch, context, G, q_len, mode, ms, ..., speedup_vs_dense)
    pivoted: one row per configuration with the eager and graph times and the graph mode's floor and
    dense comparison, then the prefill comparison (nsa_prefill in chunks / nsa_forward)."""
    rows = read_rows(path)
    order, by_mode, prefill = [], {}, {}
    for r in rows:
        if r["mode"] in ("eager", "graph"):
            if r["config"] not in order:
                order.append(r["config"])
            by_mode[(r["config"], r["mode"])] = r
        else:
            prefill[r["mode"]] = r["ms"]
    columns = ["config", "eager ms", "graph ms", "MB moved", "floor ms", "floor / graph", "dense ms (graph)",
               "graph speedup vs dense"]
    out = [heading(path, " (pivoted)"), ""]
    out.append("| " + " | ".join(columns) + " |")
    out.append("|" + "---|" * len(columns))
    for config in order:
        eager, graph = by_mode.get((config, "eager"), {}), by_mode.get((config, "graph"), {})
        cells = [config, eager.get("ms", "-"), graph.get("ms", "-"), graph.get("bytes_mb", "-"),
                 graph.get("floor_ms", "-"), graph.get("floor_frac", "-"), graph.get("dense_ms", "-"),
                 graph.get("speedup_vs_dense") or "-"]
        out.append("| " + " | ".join(cells) + " |")
    chunks, forward = prefill.get("prefill 4 chunks"), prefill.get("nsa_forward")
    if chunks and forward:
        out += ["", f"S64-G4, nsa_prefill in 4 chunks: {chunks} ms; one nsa_forward: {forward} ms "
                    f"(chunks / forward = {float(chunks) / float(forward):.2f})."]
    return "\n".join(out)


def peers_table(path: Path) -> str:
    """bench/peers.py rows (part, config, impl, phase, ms, ..., ours_over_peer, vs, check, note)
    pivoted: one row per (part, config, phase), a column per implementation with its ms and, in
    brackets, ours / it (below 1: ours faster; "ours" there is the row named in its `vs` column);
    implementations skipped or failed, and checks that disagree, are listed under the table."""
    rows = read_rows(path)
    impls, keys, cells, remarks = [], [], {}, {}
    for r in rows:
        if r["impl"] not in impls:
            impls.append(r["impl"])
        if not r["ms"]:
            remarks.setdefault((r["impl"], r["check"], r["note"]), []).append(f"{r['part']} {r['config']}")
            continue
        key = (r["part"], r["config"], r["phase"])
        if key not in keys:
            keys.append(key)
        ratio = f" ({r['ours_over_peer']}x)" if r.get("ours_over_peer") else ""
        flag = " **DISAGREES**" if r["check"].startswith("DISAGREES") else ""
        cells[(key, r["impl"])] = r["ms"] + ratio + flag
    out = [heading(path, " (pivoted; ms, in brackets ours / that implementation)"), ""]
    out.append("| part | config | phase | " + " | ".join(impls) + " |")
    out.append("|" + "---|" * (len(impls) + 3))
    out += ["| " + " | ".join(key) + " | " + " | ".join(cells.get((key, i), "-") for i in impls) + " |" for key in keys]
    if remarks:
        out += [""] + [f"- {impl}: {check} in {', '.join(where)} ({note})" for (impl, check, note), where in remarks.items()]
    disagreements = sorted({f"{r['part']} {r['config']} {r['impl']}: {r['check']}" for r in rows
                            if r["check"].startswith("DISAGREES")})
    if disagreements:
        out += ["", "Checks against ours that failed: " + "; ".join(disagreements) + "."]
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
            # Truncated, as `fsa bench layer` writes its own BREAK-EVEN rows.
            return f"~{int(math.exp(math.log(n0) + t * (math.log(n) - math.log(n0))))} tokens"
    return "NSA slower at every measured length" if ratios else ""


def png_text(path: Path) -> dict:
    """The tEXt chunks of a PNG (keyword -> text): tools/plot_results.py stores each plot's caption
    and the hash of its result file there."""
    data = path.read_bytes()
    found, at = {}, 8  # past the PNG signature
    while at + 8 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        if kind == b"tEXt" and b"\0" in body:
            key, _, value = body.partition(b"\0")
            found[key.decode("latin-1")] = value.decode("latin-1")
        at += 12 + length  # length, type, data, CRC
    return found


def plots() -> str:
    """The plots beside the results (tools/plot_results.py), each with its stored caption."""
    shown = [(png_text(p).get("fsa-caption", p.name), p) for p in sorted(RESULTS.glob("*.png"))]
    return "\n\n".join(f"![{caption}](bench/results/{p.name})" for caption, p in shown)


def read_rows(path: Path):
    lines = path.read_text().splitlines()
    return list(csv.DictReader(l for l in lines if l and not l.startswith("#")))


# The status section's headline figures: (configuration, measure, file, the row's column values,
# the value's column). Each names the newest file that measures it; when a newer run replaces a
# file, point its rows here at the new file.
S64 = "S64-G4 (H100)"
S1M = "S1M-G4 (H100)"
S64G16 = "S64-G16 (H100)"
SELECTED_QO = "h100-selected-qo-dfdf531.csv"
LAYER_G16 = "h100-layer-s64g16-dfdf531.csv"
CPU = "CPU reference: one sequence of 8192 tokens, Hq 8, Hkv 2, D 128"
COMPRESSED = "h100-compressed-s64-5c80e3a.csv"
BEFORE_AFTER = "h100-s64-before-after.csv"
HEADLINES = [
    (S64, "compression of k and v, forward", COMPRESSED, {"config": "S64-G4", "phase": "compress k+v fwd"}, "ms"),
    (S64, "compressed attention forward + selection", COMPRESSED,
     {"config": "S64-G4", "phase": "cmp attn fwd + select"}, "ms"),
    (S64, "compressed attention + compression, backward", COMPRESSED,
     {"config": "S64-G4", "phase": "cmp attn bwd + compress bwd"}, "ms"),
    (S64, "selected attention forward, random selections", BEFORE_AFTER,
     {"build": "14d42a5", "bench": "selected", "config": "S64-G4", "phase": "random fwd"}, "ms"),
    (S64, "selected attention backward, random selections", BEFORE_AFTER,
     {"build": "14d42a5", "bench": "selected", "config": "S64-G4", "phase": "random bwd"}, "ms"),
    (S64, "selected attention forward, local selections", BEFORE_AFTER,
     {"build": "14d42a5", "bench": "selected", "config": "S64-G4", "phase": "local fwd"}, "ms"),
    (S64G16, "selected attention forward, random selections (Hopper query-outer, one K / V buffer)", SELECTED_QO,
     {"config": "S64-G16", "pattern": "random", "path": "auto"}, "fwd_ms"),
    (S64G16, "selected attention forward, local selections (Hopper query-outer, one K / V buffer)", SELECTED_QO,
     {"config": "S64-G16", "pattern": "local", "path": "auto"}, "fwd_ms"),
    (S64G16, "whole layer forward (`nsa_forward`; selected attention query-outer)", LAYER_G16,
     {"config": "S64-G16", "phase": "layer fwd"}, "ms"),
    (S64G16, "whole layer forward + backward", LAYER_G16, {"config": "S64-G16", "phase": "layer fwd+bwd"}, "ms"),
    (S64G16, "the library's dense causal attention, forward + backward (same run as the layer)", LAYER_G16,
     {"config": "S64-G16", "phase": "dense fwd+bwd"}, "ms"),
    (S64, "whole layer forward (`nsa_forward`)", BEFORE_AFTER,
     {"build": "c4685e5", "bench": "layer", "config": "S64-G4", "phase": "layer fwd"}, "ms"),
    (S64, "whole layer forward + backward", BEFORE_AFTER,
     {"build": "c4685e5", "bench": "layer", "config": "S64-G4", "phase": "layer fwd+bwd"}, "ms"),
    (S64, "the library's dense causal attention, forward + backward (same run as the layer)", BEFORE_AFTER,
     {"build": "c4685e5", "bench": "layer", "config": "S64-G4", "phase": "dense fwd+bwd"}, "ms"),
    (S64, "torch SDPA dense causal attention, forward + backward", "h100-layer.csv",
     {"config": "S64-G4", "phase": "sdpa fwd+bwd"}, "ms"),
    (S1M, "whole layer forward + backward, default 8 GiB cap", "h100-layer-long-8gib.csv",
     {"config": "S1M-G4", "workspace_cap": "8 GiB", "phase": "layer fwd+bwd"}, "ms"),
    (S1M, "peak GPU memory of that run, MiB", "h100-layer-long-8gib.csv",
     {"config": "S1M-G4", "workspace_cap": "8 GiB", "phase": "layer fwd+bwd"}, "peak_mib"),
    (CPU, "`nsa_forward`", "cpu-reference.csv", {"phase": "layer: nsa_forward"}, "ms"),
    (CPU, "`nsa_backward`", "cpu-reference.csv", {"phase": "layer: nsa_backward"}, "ms"),
]


def commit_of(path: Path, row) -> str:
    if row.get("build"):
        return row["build"]
    found = re.search(r"commit ([0-9a-f]{7,40})", " ".join(comments(path)[0]))
    return found.group(1) if found else "?"


def summary() -> str:
    """The headline table, and the break-even lengths of the layer file's sweep."""
    out = ["| configuration | measure | value | from (commit) |", "|---|---|---|---|"]
    for config, measure, name, match, column in HEADLINES:
        path = RESULTS / name
        if not path.exists():
            sys.exit(f"update_readme.py: headline '{measure}': {name} not in bench/results (update HEADLINES)")
        rows = [r for r in read_rows(path) if all(r.get(k) == v for k, v in match.items())]
        if len(rows) != 1 or column not in rows[0]:
            sys.exit(f"update_readme.py: headline '{measure}': {len(rows)} rows of {name} match {match} "
                     f"with a column {column} (update HEADLINES)")
        out.append(f"| {config} | {measure} | {rows[0][column]} | `{name}` ({commit_of(path, rows[0])}) |")
    layer = RESULTS / "h100-layer.csv"
    if layer.exists():
        ms = {(r["config"], r["phase"]): r["ms"] for r in read_rows(layer)}
        commit = commit_of(layer, {})
        for g in (4, 16):
            found = [(break_even(ms, g, phase), against) for phase, against in
                     (("dense fwd+bwd", "the library's dense path"), ("sdpa fwd+bwd", "torch SDPA"))]
            if any(value for value, _ in found):
                out.append(f"| SWEEP-G{g} (H100) | length from which the layer's forward + backward beats dense "
                           f"causal attention (interpolated between the swept lengths) | " +
                           "; ".join(f"{value} ({against})" for value, against in found if value) +
                           f" | `{layer.name}` ({commit}) |")
    return "\n".join(out)


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + "\n" + body + "\n" + text[stop:]


def generated_readme() -> str:
    """README.md as the results make it (the generated sections replaced, the rest as it is)."""
    text = (ROOT / "README.md").read_text()
    paths = sorted(RESULTS.glob("*.csv"), key=lambda p: (bool(comments(p)[1]), p.name))
    tables = [layer_tables(p) if p.name.endswith("-layer.csv")
              else before_after_table(p) if p.name.endswith("-before-after.csv")
              else decode_tables(p) if p.name.endswith("-decode.csv")
              else peers_table(p) if p.name.endswith("-peers.csv") else table(p)
              for p in paths]
    images = plots()
    if images:
        tables.insert(0, images)
    text = replace_between(text, BEGIN, END, "\n\n".join(tables) if tables else "No results recorded yet.")
    return replace_between(text, SUMMARY_BEGIN, SUMMARY_END, summary())


def main():
    # --check: exit 1 when README.md is not what the results make it (CI: no hand-edited figures).
    text = generated_readme()
    readme = ROOT / "README.md"
    if "--check" in sys.argv[1:]:
        if readme.read_text() != text:
            print("README.md: its generated sections differ from bench/results (run python3 tools/update_readme.py)",
                  file=sys.stderr)
            return 1
        return 0
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
