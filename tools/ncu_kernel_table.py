#!/usr/bin/env python3
"""Each kernel's time in one step, from Nsight Compute's metrics CSV.

Input: what `ncu --csv --metrics gpu__time_duration.sum[,dram__throughput.avg.pct_of_peak_sustained_elapsed]
[,launch__grid_size] --launch-count N PROGRAM ...` prints (the program's own output may be mixed in:
only the quoted CSV rows are read). Output: one row per launch in launch order, `kernel,grid,us,dram_pct`
(kernel names without namespaces, `void` and arguments; grid as ncu gives it), then `# sum U us`,
the format of bench/results/*-decode-kernels-*.txt. `--first K` keeps launches [0, K); `--step`
keeps the launches before the first kernel's next launch (one step of a bench whose later launches
repeat it); `--title LINE` (repeatable) writes comment lines first.

usage: tools/ncu_kernel_table.py NCU_CSV [--first K | --step] [--title LINE]... [-o OUT]
"""
import argparse
import csv
import io
import re
import sys

TIME = "gpu__time_duration.sum"
DRAM = "dram__throughput.avg.pct_of_peak_sustained_elapsed"


def short_name(name):
    """`void ns::<unnamed>::kernel<T>(Params)` -> `kernel<T>`."""
    # Anonymous namespaces as ncu prints them ("<unnamed>::", sometimes "unnamed>::").
    name = re.sub(r"<?unnamed>::|\(anonymous namespace\)::", "", re.sub(r"^void ", "", name))
    depth, cut = 0, len(name)
    for i, c in enumerate(name):  # the argument list: the first '(' outside template brackets
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0:
            cut = i
            break
    name = name[:cut]
    head, sep, args = name.partition("<")
    return head.split("::")[-1] + sep + args


def read_launches(text):
    rows = list(csv.reader(io.StringIO("".join(line + "\n" for line in text.splitlines() if line.startswith('"')))))
    if not rows:
        raise ValueError("no ncu CSV rows (run ncu with --csv)")
    col = {name: i for i, name in enumerate(rows[0])}
    for needed in ("ID", "Kernel Name", "Metric Name", "Metric Value"):
        if needed not in col:
            raise ValueError(f"ncu CSV without a '{needed}' column")
    launches = {}
    for r in rows[1:]:
        launch = launches.setdefault(int(r[col["ID"]]), {"kernel": short_name(r[col["Kernel Name"]]),
                                                         "grid": r[col["Grid Size"]] if "Grid Size" in col else ""})
        launch[r[col["Metric Name"]]] = r[col["Metric Value"]]
    return [launches[k] for k in sorted(launches)]


def number(value):
    return float(value.replace(",", ""))


def table(launches, titles=()):
    lines = [f"# {t}" for t in titles] + ["kernel,grid,us,dram_pct"]
    total = 0.0
    for launch in launches:
        if TIME not in launch:
            raise ValueError(f"launch of {launch['kernel']} without {TIME}")
        us = number(launch[TIME]) / 1000.0
        total += us
        dram = launch.get(DRAM, "")
        lines.append(f"{launch['kernel']},\"{launch['grid']}\",{us:.1f},{dram}")
    lines.append(f"# sum {total:.1f} us")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv")
    parser.add_argument("--first", type=int, default=0, help="keep launches [0, K) only")
    parser.add_argument("--step", action="store_true", help="keep one step: up to the first kernel's next launch")
    parser.add_argument("--title", action="append", default=[], help="a comment line before the table")
    parser.add_argument("-o", "--out", help="write here instead of stdout")
    args = parser.parse_args()
    if args.first < 0:
        parser.error(f"--first must be >= 0, got {args.first}")
    with open(args.csv, newline="") as f:
        try:
            launches = read_launches(f.read())
        except ValueError as e:
            sys.exit(f"ncu_kernel_table: {args.csv}: {e}")
    if args.first and args.step:
        parser.error("--first and --step exclude each other")
    if args.first:
        launches = launches[: args.first]
    if args.step and launches:
        again = next((i for i in range(1, len(launches)) if launches[i]["kernel"] == launches[0]["kernel"]), len(launches))
        launches = launches[:again]
    out = table(launches, args.title)
    if args.out:
        with open(args.out, "w") as f:
            f.write(out)
    else:
        sys.stdout.write(out)


if __name__ == "__main__":
    main()
