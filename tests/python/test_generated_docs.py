"""The figures in README.md and docs/layer.md, and the plots beside the results, are generated from
bench/results (one source of truth): regenerating them changes nothing. A result file added or
edited without running the generators, or a number edited by hand in a generated section, fails
here. Runs where the
repository is checked out; a copy of the tests alone (the device machine's) skips it."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (ROOT / "bench" / "results").is_dir() or not (ROOT / "tools").is_dir(),
                                reason="needs the repository checkout (bench/results, tools)")


@pytest.mark.parametrize("generator", ["tools/update_readme.py", "tools/layer_floors.py", "tools/plot_results.py"])
def test_generated_sections_match_the_results(generator):
    run = subprocess.run([sys.executable, str(ROOT / generator), "--check"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr + run.stdout


def test_the_check_sees_a_hand_edited_figure(tmp_path):
    """--check is not vacuous: a copy of the README with one generated figure changed fails it."""
    copy = copy_of_results(tmp_path)
    readme = (ROOT / "README.md").read_text()
    marker = "<!-- BEGIN GENERATED SUMMARY"
    start = readme.index(marker)
    digit = next(i for i in range(start, len(readme)) if readme[i].isdigit())
    edited = readme[:digit] + str((int(readme[digit]) + 1) % 10) + readme[digit + 1:]
    (copy / "README.md").write_text(edited)
    run = subprocess.run([sys.executable, str(copy / "tools/update_readme.py"), "--check"], capture_output=True,
                         text=True, cwd=copy, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr


def copy_of_results(tmp_path):
    copy = tmp_path / "repo"
    for part in ("tools", "bench/results"):
        (copy / part).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-r", str(ROOT / part), str(copy / part)], check=True)
    return copy


def test_the_plot_check_sees_a_changed_result_file(tmp_path):
    """A plot drawn from a result file that changed since (one timing edited) fails the check, as
    does a missing plot; the untouched copy passes it."""
    copy = copy_of_results(tmp_path)
    check = [sys.executable, str(copy / "tools/plot_results.py"), "--check"]
    assert subprocess.run(check, capture_output=True, cwd=copy, timeout=120).returncode == 0
    layer = copy / "bench/results/h100-layer.csv"
    text = layer.read_text()
    row = text.index("SWEEP-G4-8K,layer fwd+bwd,")
    layer.write_text(text[:row] + text[row:].replace("layer fwd+bwd,", "layer fwd+bwd,1", 1))
    run = subprocess.run(check, capture_output=True, text=True, cwd=copy, timeout=120)
    assert run.returncode == 1 and "h100-layer-sweep.png" in run.stderr, run.stderr
    layer.write_text(text)
    (copy / "bench/results/h100-peers.png").unlink()
    run = subprocess.run(check, capture_output=True, text=True, cwd=copy, timeout=120)
    assert run.returncode == 1 and "h100-peers.png" in run.stderr, run.stderr
