#!/usr/bin/env python3
"""Regenerates the "Measured" tables of README.md from bench/results/*.csv.

Each CSV starts with '#' comment lines (what was run, machine, commit, date) and then a header
row; the table shows the comment lines as a caption and the rows as they are.
"""
import csv
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


def main():
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    tables = [table(p) for p in sorted((ROOT / "bench" / "results").glob("*.csv"))]
    body = "\n\n".join(tables) if tables else "No results recorded yet."
    readme.write_text(text[:start] + "\n" + body + "\n" + text[end:])


if __name__ == "__main__":
    main()
