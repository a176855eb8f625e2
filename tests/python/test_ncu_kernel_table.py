"""tools/ncu_kernel_table.py: a step's per-kernel table from Nsight Compute's metrics CSV (the program's
own output mixed in), in launch order, with names shortened and the times summed."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "ncu_kernel_table.py"
pytestmark = pytest.mark.skipif(not TOOL.is_file(), reason="needs the repository checkout (tools)")

HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
          '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')


def row(launch, kernel, grid, metric, value):
    return (f'"{launch}","1","fsa","h","{kernel}","1","13","(128, 1, 1)","{grid}","0","9.0","m",'
            f'"{metric}","x","{value}"')


def run(tmp_path, lines, *args):
    path = tmp_path / "ncu.csv"
    path.write_text("\n".join(lines) + "\n")
    return subprocess.run([sys.executable, str(TOOL), str(path), *args], capture_output=True, text=True, timeout=60)


def test_table_in_launch_order_with_short_names_and_sum(tmp_path):
    kernels = [  # launch ids out of order in the file; namespaces, void and arguments to drop
        (1, "void fsa::cuda::decode::decode_attn_kernel<__nv_bfloat16, 128, 128>(decode::AttnParams)", "(20, 4, 12)",
         "125,824", "70.11"),
        (0, "decode::<unnamed>::stage_offsets_kernel(decode::AppendParams)", "(1, 1, 1)", "3,840", "0.08"),
        (2, "void unnamed>::combine_forward_kernel<__nv_bfloat16>(unnamed>::CombineParams)", "(64, 1, 1)", "3,872", "6.2"),
    ]
    lines = ["==PROF== Connected", "device: H100", HEADER]
    for launch, name, grid, ns, dram in kernels:
        lines.append(row(launch, name, grid, "gpu__time_duration.sum", ns))
        lines.append(row(launch, name, grid, "dram__throughput.avg.pct_of_peak_sustained_elapsed", dram))
    lines.append("# a line of the bench's own output")
    out = run(tmp_path, lines, "--title", "one step")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "# one step",
        "kernel,grid,us,dram_pct",
        'stage_offsets_kernel,"(1, 1, 1)",3.8,0.08',
        'decode_attn_kernel<__nv_bfloat16, 128, 128>,"(20, 4, 12)",125.8,70.11',
        'combine_forward_kernel<__nv_bfloat16>,"(64, 1, 1)",3.9,6.2',
        f"# sum {(3840 + 125824 + 3872) / 1000:.1f} us",
    ]
    step = run(tmp_path, lines + [row(3, kernels[1][1], "(1, 1, 1)", "gpu__time_duration.sum", "3,000"),
                                  row(4, kernels[0][1], "(20, 4, 12)", "gpu__time_duration.sum", "9,000")], "--step")
    assert step.returncode == 0, step.stderr
    assert step.stdout.splitlines() == out.stdout.splitlines()[1:]  # the next step's launches dropped
    first = run(tmp_path, lines, "--first", "2")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1] == f"# sum {(3840 + 125824) / 1000:.1f} us"


def test_input_without_ncu_rows_is_an_error_naming_the_file(tmp_path):
    out = run(tmp_path, ["==ERROR== the program does not exist"])
    assert out.returncode != 0
    assert "ncu.csv" in out.stderr and "no ncu CSV rows" in out.stderr
