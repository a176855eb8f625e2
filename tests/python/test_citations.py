"""Every file the repository cites exists in it: repository paths (docs/..., src/..., bench/...) named
in the README, the documents, code comments, help texts and scripts, and every relative link of the
Markdown files. A renamed or removed file must take its citations with it (a newcomer following a
dead path is the failure this guards against). Runs where the repository is checked out; a copy of
the tests alone (the device machine's) skips it."""
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (ROOT / "docs").is_dir() or not (ROOT / "src").is_dir(),
                                reason="needs the repository checkout (docs/, src/)")

_TOP = r"(?:docs|bench|src|tests|tools|scripts|examples|include|python|cmake)"
_EXT = r"(?:md|py|cpp|hpp|h|cu|cuh|sh|csv|txt|png|toml|cmake|json)"
# A repository path: a top-level folder, then a file name with one of the extensions; not part of a
# longer path, word or name (so build/gpu/tests/..., URLs and fsaConfig.cmake.in's prefix do not match).
_PATH = re.compile(r"(?<![\w./-])(" + _TOP + r"/[\w./+-]*\." + _EXT + r")(?![\w/]|\.\w)")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_SCANNED = ["README.md", "docs/**/*.md", "bench/*.md", "bench/*.py", "examples/**/*.py", "src/**/*", "include/**/*",
            "tools/**/*", "python/**/*", "scripts/*", "tests/**/*", ".ci/*", "CMakeLists.txt"]
_SUFFIXES = {".md", ".py", ".cpp", ".hpp", ".h", ".cu", ".cuh", ".sh", ".txt", ".cmake", ""}


def _scanned_files():
    seen = set()
    for pattern in _SCANNED:
        for path in ROOT.glob(pattern):
            if path.is_file() and path.suffix in _SUFFIXES and "__pycache__" not in path.parts and path not in seen \
                    and path != Path(__file__).resolve():  # this file's own examples are dead on purpose
                seen.add(path)
                yield path


def _dead_citations():
    dead = []
    for path in _scanned_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        where = path.relative_to(ROOT)
        for match in _PATH.finditer(text):
            cited = match.group(1).rstrip(".")
            if any(c in cited for c in "<*{$"):  # a pattern or placeholder, not a file
                continue
            if not (ROOT / cited).exists():
                dead.append(f"{where}: {cited}")
        if path.suffix == ".md":
            for match in _LINK.finditer(text):
                target = match.group(1).split("#")[0]
                if target and "://" not in target and not target.startswith("mailto:") \
                        and not (path.parent / target).exists():
                    dead.append(f"{where}: link {target}")
    return dead


def test_every_cited_file_exists():
    dead = _dead_citations()
    assert not dead, "citations of files that do not exist:\n" + "\n".join(sorted(dead))


def test_the_check_sees_a_dead_citation(tmp_path, monkeypatch):
    """The scan is not vacuous: a document citing a missing file and a dead link are both found."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "docs" / "a.md").write_text("see `src/kernels/gone.cu` and [b](b.md) and [ok](a.md)\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert sorted(_dead_citations()) == ["docs/a.md: link b.md", "docs/a.md: src/kernels/gone.cu"]
