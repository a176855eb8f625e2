#!/usr/bin/env python3
"""Where a kernel's instructions and stall samples go, from Nsight Compute's source page.

Input: the CSV of `ncu -i REPORT --page source --print-source sass --csv` (a report taken with the
SourceCounters section), optionally xz-compressed. Output: the executed warp instructions and
warp-stall samples by opcode, then the hottest runs of straight-line code (consecutive instructions
executed equally often: a basic block), each with its opcode mix, so that a tile loop's parts
(copies, products, softmax, stores) can be told apart by their instructions.

usage: tools/sass_profile.py SOURCE_CSV[.xz] [--blocks N]
"""
import argparse
import csv
import io
import lzma
import sys
from collections import Counter


def read_rows(path):
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", newline="") as f:
        text = f.read()
    rows = list(csv.reader(io.StringIO(text)))
    header_at = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    header = rows[header_at]
    col = {name: i for i, name in enumerate(header)}
    out = []
    for r in rows[header_at + 1:]:
        if len(r) < len(header):
            continue
        source = r[col["Source"]].strip()
        executed = int(r[col["Instructions Executed"]].replace(",", "") or 0)
        samples = int(r[col["Warp Stall Sampling (All Samples)"]].replace(",", "") or 0)
        out.append((source, executed, samples))
    return out


def opcode(source):
    words = source.split()
    if not words:
        return ""
    word = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
    return word.split(".")[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("--blocks", type=int, default=20, help="hottest straight-line runs to list")
    args = parser.parse_args()
    rows = read_rows(args.csv)
    total = sum(e for _, e, _ in rows) or 1
    total_samples = sum(s for _, _, s in rows) or 1
    print(f"executed warp instructions: {total}; stall samples: {total_samples}")
    by_op = Counter()
    samples_by_op = Counter()
    for source, executed, samples in rows:
        by_op[opcode(source)] += executed
        samples_by_op[opcode(source)] += samples
    print("\nopcode        executed   share  samples")
    for op, n in by_op.most_common(25):
        print(f"{op:12s} {n:10d} {100 * n / total:6.1f}% {100 * samples_by_op[op] / total_samples:6.1f}%")

    runs = []  # (first index, last index, executions per instruction)
    for i, (_, executed, _) in enumerate(rows):
        if runs and runs[-1][2] == executed and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i, executed])
    runs.sort(key=lambda r: -(r[1] - r[0] + 1) * r[2])
    print(f"\nhottest straight-line runs (instruction indices in the listing; share of executed instructions)")
    for first, last, executed in runs[: args.blocks]:
        if executed == 0:
            break
        count = last - first + 1
        mix = Counter(opcode(rows[i][0]) for i in range(first, last + 1))
        samples = sum(rows[i][2] for i in range(first, last + 1))
        print(f"  [{first}, {last}] {count} instructions x {executed}: {100 * count * executed / total:.1f}%, "
              f"{100 * samples / total_samples:.1f}% of samples; "
              + ", ".join(f"{op} {n}" for op, n in mix.most_common(8)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
