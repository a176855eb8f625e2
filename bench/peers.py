#!/usr/bin/env python3
"""Our selected attention and layer next to every public NSA implementation importable here, in one
process, on the same inputs and the same topk_idx. bench/peers.md says how to
run it on the device machine; docs/measuring.md how result files reach the README.

Implementations (each optional: one that cannot be imported is skipped with the reason printed and
written to the CSV caption):

  selected attention (--part selected), o = attention over each query's selected blocks:
    ours           fsa.selected_attention (plan built inside the call, as `fsa bench selected`)
    fsa-nsa-order  the FSA repository's NSA-order Triton kernel (nsa_ref TopkSparseAttention)
    fsa-fsa-order  the FSA repository's FSA-order Triton kernels (FSATopkSparseAttention)
    fla            FLA's parallel NSA kernel (fla-core wheel, fla.ops.nsa; G >= 16, a power of 2)
  whole layer (--part layer), q, k, v and gate logits in, o out:
    ours           fsa.nsa_attention, the library's canonical layer (linear compression with PE, RoPE)
    ours-matched   fsa.nsa_attention as the Triton NSA library computes it (mean compression, no RoPE)
    nsa-lib        the Triton NSA library's layer (flash_nsa.NSACore, Megatron level, mean compression)
    fla-layer      FLA's parallel_nsa with its three branches (G >= 16; its own compression)
    sdpa           torch SDPA, dense causal (flash backend forced where it accepts the call)

Locations (never committed; bench/peers.md): FSA_PEER_FSA_REPO (a checkout of the FSA repository
holding nsa_ref/ and fsa/ops/; default peers/Flash-Sparse-Attention), FSA_PEER_NSA_REPO (a
checkout of the Triton NSA library holding flash_nsa/; default
peers/Scalable-Flash-Native-Sparse-Attention). Their commits come from `git rev-parse` in the
checkout, a PEER_COMMIT file in it, or FSA_PEER_FSA_COMMIT / FSA_PEER_NSA_COMMIT. Our commit from
FSA_COMMIT, else `git rev-parse`. FLA is whatever `import fla` finds (its version is recorded).

Layouts and conversions (done once, outside the timed region, except free views):
  * ours, fsa-nsa-order, fsa-fsa-order: packed rows q [N, Hq, D], k, v [N, Hkv, D], int32
    cu_seqlens, topk_idx int32 [Hkv, N, K] ascending and -1 padded. The same tensors go to all
    three; the FSA repository's kernels take exactly this layout (softmax scale passed explicitly).
  * fla: batch-first q [1, N, Hq, D] (a view, unsqueeze(0)), block_indices [1, N, Hkv, K] int64 =
    topk_idx.permute(1, 0, 2) (a copy), block_counts = K (every entry read; its kernels skip
    negative and future blocks, as ours ignores them), cu_seqlens None (one sequence, batch 1).
    Its output [1, N, Hq, D] is squeezed back (a view). Its lse (natural log) is not compared.
  * nsa-lib: our layout; gate logits [N, Hq, 3] to which it applies a sigmoid itself; ours gets
    sigmoid(logits) inside the timed function (the same work). Its window branch imports FA3's
    flash_attn_interface, which the device lacks: bench/peer_stubs provides it on fsa's
    sliding-window kernel (printed, and noted in the CSV).
  * fla-layer: batch-first; gates g_cmp, g_slc, g_swa [1, N, Hq] = sigmoid(logits[..., i]); its
    window branch calls FA2's flash_attn_func, provided by bench/peer_stubs on fsa's window kernel.
    FLA compresses k, v by mean pooling of non-overlapping blocks of B tokens and selects from
    those scores: another function than ours, so its output is not compared.
  * sdpa: [1, H, N, D] contiguous copies of q, k, v (made once), enable_gqa=True, is_causal=True.

Checks before timing: every peer's output (and dq, dk, dv) against ours on the same inputs,
relative Frobenius error ||peer - ours|| / ||ours||, printed; above --tolerance (bf16: 1e-2,
docs/semantics.md section 10) or non-finite, the peer is reported as DISAGREES in the output and
the CSV and is still timed. Layer peers computing another function are marked "not compared".

Timing: CUDA events on the current stream, 2 warm-ups, then --iters runs; median (the middle of the
sorted times), min, max; ms. fwd runs under torch.no_grad(); bwd times torch.autograd.grad of a
fresh forward's output (the forward runs before the start event, untimed), so no implementation
reuses a graph; fwd+bwd (layer) times both. Ratios: ours / peer (< 1: ours faster).

Output: a progress log, a summary table, and a CSV (--csv; default $OUT/<device>-peers.csv when
$OUT is set, else bench/results/<device>-peers.csv) rewritten after every configuration, so that
a call stopped at its time limit keeps what it measured. `--merge OUT IN...` joins the CSVs of
several calls (no GPU needed); `--check-setup` says what would run, without torch.
"""
import argparse
import csv
import datetime
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUBS = ROOT / "bench" / "peer_stubs"
PKG_RESOURCES_SHIM = STUBS / "pkg_resources_shim"

HKV, D, TOPK, BLOCK, CMP_LEN, CMP_STRIDE, WINDOW = 4, 128, 16, 64, 32, 16, 512
WARMUPS = 2

SELECTED_CONFIGS = {f"S64-G{g}": (65536, g) for g in (1, 2, 4, 8, 16)}
LAYER_CONFIGS = {}
for _n, _name in ((8192, "S8K"), (16384, "S16K"), (32768, "S32K"), (65536, "S64")):
    for _g in (1, 4, 16):
        LAYER_CONFIGS[f"{_name}-G{_g}"] = (_n, _g)

SELECTED_IMPLS = ["ours", "fsa-nsa-order", "fsa-fsa-order", "fla"]
LAYER_IMPLS = ["ours", "ours-matched", "nsa-lib", "fla-layer", "sdpa"]
COLUMNS = ["part", "config", "impl", "phase", "ms", "min", "max", "ours_ms", "ours_over_peer", "vs", "check", "note"]


class Skip(Exception):
    """An implementation that cannot run here; the message says why."""


# ---- helpers without torch ------------------------------------------------------------------------

def git_commit(path: Path):
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            # Only a checkout of its own: a folder inside our work tree would report our commit.
            top = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True,
                                 text=True, timeout=10).stdout.strip()
            if top and Path(top).resolve() == path.resolve():
                return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def peer_commit(path: Path, env_name: str) -> str:
    found = git_commit(path)
    if found:
        return found
    marker = path / "PEER_COMMIT"
    if marker.is_file():
        text = marker.read_text().strip()
        if text:
            return text[:12]
    return os.environ.get(env_name, "unknown")


def our_commit() -> str:
    # FSA_COMMIT first: the device machine's copy of the tree may carry a .git of an older commit
    # (seen: it reported the last landed commit under newer, uncommitted-there files).
    return os.environ.get("FSA_COMMIT") or git_commit(ROOT) or "unknown"


def fsa_repo_path() -> Path:
    return Path(os.environ.get("FSA_PEER_FSA_REPO", ROOT / "peers" / "Flash-Sparse-Attention")).resolve()


def nsa_repo_path() -> Path:
    return Path(os.environ.get("FSA_PEER_NSA_REPO", ROOT / "peers" / "Scalable-Flash-Native-Sparse-Attention")).resolve()


def device_slug(name: str) -> str:
    found = re.search(r"(h100|h200|h800|h20|a100|a800|b200|gb200|l40s|l40|l4|a10g?)", name.lower())
    return found.group(1) if found else (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu")


def write_csv(path: Path, caption, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        for line in caption:
            f.write("# " + line.replace("\n", " ") + "\n")
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in COLUMNS})
    os.replace(tmp, path)


def merge(out: Path, inputs):
    """Joins result files of several calls: the caption lines of all (each once, in order), one
    header, every row."""
    caption, rows = [], []
    for name in inputs:
        lines = Path(name).read_text().splitlines()
        for line in lines:
            if line.startswith("#"):
                text = line.lstrip("# ").strip()
                if text not in caption:
                    caption.append(text)
        body = [l for l in lines if l and not l.startswith("#")]
        reader = csv.DictReader(body)
        if reader.fieldnames != COLUMNS:
            sys.exit(f"peers.py --merge: {name} has columns {reader.fieldnames}, expected {COLUMNS}")
        rows += list(reader)
    write_csv(out, caption, rows)
    print(f"peers.py: {len(rows)} rows from {len(inputs)} files -> {out}")


def check_setup():
    """What would run, from files and import specs alone (no torch needed)."""
    print(f"repository: {ROOT} (commit {our_commit()})")
    for label, path, probe, env in (
            ("FSA repository (NSA-order and FSA-order kernels)", fsa_repo_path(),
             "nsa_ref/ops/topk_sparse_attention.py", "FSA_PEER_FSA_COMMIT"),
            ("Triton NSA library (whole layer)", nsa_repo_path(), "flash_nsa/__init__.py", "FSA_PEER_NSA_COMMIT")):
        ok = (path / probe).is_file()
        print(f"{label}: {path} -> {'found' if ok else 'MISSING ' + probe}, commit {peer_commit(path, env)}")
    for name in ("torch", "triton", "fla", "einops", "numpy", "pandas", "packaging", "pkg_resources", "flash_attn",
                 "flash_attn_interface"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        where = spec.origin if spec is not None and spec.origin else (
            "namespace" if spec is not None else "not importable")
        print(f"  module {name}: {where}")
    print(f"stubs: {STUBS} ({'present' if (STUBS / 'flash_attn_interface.py').is_file() else 'MISSING'})")


# ---- the run ---------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["selected", "layer", "all"], default="all")
    parser.add_argument("--config", action="append",
                        help="configuration (repeatable; default every one of the part): "
                             + ", ".join(SELECTED_CONFIGS) + " (selected); " + ", ".join(LAYER_CONFIGS) + " (layer)")
    parser.add_argument("--impl", action="append",
                        help="implementation (repeatable; default all; 'ours' is always run as the reference): "
                             + ", ".join(sorted(set(SELECTED_IMPLS + LAYER_IMPLS))))
    parser.add_argument("--iters", type=int, default=10, help="timed runs per phase after 2 warm-ups (default 10)")
    parser.add_argument("--tolerance", type=float, default=1e-2,
                        help="relative Frobenius error above which a peer DISAGREES (default 1e-2, bf16)")
    parser.add_argument("--csv", help="result file (default $OUT/<device>-peers.csv or bench/results/<device>-peers.csv)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-stubs", action="store_true",
                        help="do not provide the flash-attn stand-ins (peers whose window branch needs it are skipped)")
    parser.add_argument("--merge", nargs="+", metavar="FILE", help="OUT IN...: join result files and exit")
    parser.add_argument("--check-setup", action="store_true", help="print what is found and exit (no torch needed)")
    args = parser.parse_args()

    if args.merge:
        if len(args.merge) < 2:
            parser.error("--merge OUT IN...")
        merge(Path(args.merge[0]), args.merge[1:])
        return 0
    if args.check_setup:
        check_setup()
        return 0
    if args.iters < 1:
        parser.error("--iters must be >= 1")
    parts = ["selected", "layer"] if args.part == "all" else [args.part]
    known = dict(SELECTED_CONFIGS, **LAYER_CONFIGS)
    for name in args.config or []:
        if name not in known:
            parser.error(f"unknown --config {name}; known: {', '.join(known)}")
    for name in args.impl or []:
        if name not in SELECTED_IMPLS + LAYER_IMPLS:
            parser.error(f"unknown --impl {name}")

    try:
        import torch
    except ImportError as e:
        print(f"peers.py: torch not available ({e})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("peers.py: no CUDA device", file=sys.stderr)
        return 2
    try:
        import fsa
    except Exception as e:  # noqa: BLE001  (an ABI mismatch raises ImportError, a missing .so OSError)
        print(f"peers.py: our package `fsa` cannot be imported ({type(e).__name__}: {e}); build and install it "
              "first (bench/peers.md)", file=sys.stderr)
        return 2
    bench = Bench(torch, fsa, args, parts)
    return bench.run()


class Bench:
    def __init__(self, torch, fsa, args, parts):
        self.torch, self.fsa, self.args, self.parts = torch, fsa, args, parts
        self.rows, self.notes, self.skipped, self.versions = [], [], {}, {}
        self.device_name = torch.cuda.get_device_name()
        self.slug = device_slug(self.device_name)
        if args.csv:
            self.csv_path = Path(args.csv)
        elif os.environ.get("OUT"):
            self.csv_path = Path(os.environ["OUT"]) / f"{self.slug}-peers.csv"
        else:
            self.csv_path = ROOT / "bench" / "results" / f"{self.slug}-peers.csv"
        self.stub_modules = self.install_stubs()
        self.peers = {}

    # -- environment --------------------------------------------------------------------------------

    def install_stubs(self):
        """Appends bench/peer_stubs to sys.path where a flash-attn module is missing (appended: a real
        flash-attn, where installed, is found first), and the pkg_resources shim where setuptools
        has none. Returns the names that the stubs will serve."""
        served = []
        if self.args.no_stubs:
            return served
        for name in ("flash_attn", "flash_attn_interface"):
            if importlib.util.find_spec(name) is None:
                served.append(name)
        if served and str(STUBS) not in sys.path:
            sys.path.append(str(STUBS))
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            sys.path.append(str(PKG_RESOURCES_SHIM))
            self.notes.append("pkg_resources (for the Triton NSA library) from bench/peer_stubs/pkg_resources_shim")
        return served

    def stub_used(self, module_name):
        module = sys.modules.get(module_name)
        return module is not None and getattr(module, "FSA_STUB", False)

    def peer(self, name):
        """The loaded peer `name` (cached), or raises Skip."""
        if name not in self.peers:
            try:
                self.peers[name] = getattr(self, "load_" + name.replace("-", "_"))()
            except Skip as e:
                self.peers[name] = e
            except Exception as e:  # noqa: BLE001  (an import of third-party code may raise anything)
                self.peers[name] = Skip(f"import failed: {type(e).__name__}: {e}")
                traceback.print_exc()
            if isinstance(self.peers[name], Skip):
                self.skipped[name] = str(self.peers[name])
                print(f"[skip] {name}: {self.peers[name]}", flush=True)
        if isinstance(self.peers[name], Skip):
            raise self.peers[name]
        return self.peers[name]

    def load_fsa_repo(self):
        root = fsa_repo_path()
        probe = root / "nsa_ref" / "ops" / "topk_sparse_attention.py"
        fsa_order = root / "fsa" / "ops" / "FSA_topk_sparse_attention.py"
        if not probe.is_file() or not fsa_order.is_file():
            raise Skip(f"FSA repository not found at {root} (set FSA_PEER_FSA_REPO to a checkout holding nsa_ref/ "
                       "and fsa/ops/; bench/peers.md)")
        if str(root) not in sys.path:
            sys.path.append(str(root))
        nsa_order = importlib.import_module("nsa_ref.ops.topk_sparse_attention")
        # Loaded by path under another name: the repository's folder `fsa` would clash with ours.
        spec = importlib.util.spec_from_file_location("fsa_peer_repo_fsa_order", fsa_order)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        self.versions["FSA repository"] = peer_commit(root, "FSA_PEER_FSA_COMMIT")
        return nsa_order.TopkSparseAttention, module.FSATopkSparseAttention

    def load_fsa_nsa_order(self):
        return self.peer("fsa-repo")[0]

    def load_fsa_fsa_order(self):
        return self.peer("fsa-repo")[1]

    def load_fla_module(self):
        try:
            fla = importlib.import_module("fla")
        except ImportError as e:
            raise Skip(f"fla not importable ({e}); install the fla-core wheel (bench/peers.md)")
        try:
            parallel = importlib.import_module("fla.ops.nsa.parallel")
        except ImportError as e:
            raise Skip(f"fla.ops.nsa.parallel not importable ({e})")
        self.versions["FLA (fla-core)"] = getattr(fla, "__version__", "unknown")
        return parallel

    def load_fla(self):
        parallel = self.peer("fla-module")
        function = getattr(parallel, "ParallelNSAFunction", None)
        expected = ["ctx", "q", "k", "v", "block_indices", "block_counts", "block_size", "scale", "cu_seqlens"]
        if function is not None and list(inspect.signature(function.forward).parameters) == expected:
            return ("function", function)
        if hasattr(parallel, "parallel_nsa"):
            self.notes.append("fla: ParallelNSAFunction has another signature in this version; timed through "
                              "parallel_nsa, which also mean-pools k and v")
            return ("parallel_nsa", parallel.parallel_nsa)
        raise Skip("fla.ops.nsa.parallel has neither ParallelNSAFunction(q, k, v, block_indices, block_counts, "
                   "block_size, scale, cu_seqlens) nor parallel_nsa")

    def load_fla_layer(self):
        parallel = self.peer("fla-module")
        if not hasattr(parallel, "parallel_nsa"):
            raise Skip("fla.ops.nsa.parallel has no parallel_nsa")
        if getattr(parallel, "flash_attn_func", None) is None:
            raise Skip("FLA's window branch needs flash_attn (none importable, stubs off)")
        if self.stub_used("flash_attn"):
            self.notes.append("fla-layer: its window branch (flash_attn_func) runs fsa's sliding-window kernel "
                              "through bench/peer_stubs/flash_attn")
        return parallel.parallel_nsa

    def load_nsa_lib(self):
        root = nsa_repo_path()
        if not (root / "flash_nsa" / "__init__.py").is_file():
            raise Skip(f"Triton NSA library not found at {root} (set FSA_PEER_NSA_REPO to a checkout holding "
                       "flash_nsa/; bench/peers.md)")
        if str(root) not in sys.path:
            sys.path.append(str(root))
        flash_nsa = importlib.import_module("flash_nsa")
        swa = importlib.import_module("flash_nsa.ops.sliding_window_attention")
        if not (getattr(swa, "HAVE_FA3", False) or getattr(swa, "HAVE_FA2", False)):
            raise Skip("its window branch needs flash_attn_interface (FA3) or flash_attn (FA2): none importable")
        if getattr(swa, "HAVE_FA3", False) and self.stub_used("flash_attn_interface"):
            self.notes.append("nsa-lib: its window branch (FA3 _flash_attn_forward / _flash_attn_backward) runs "
                              "fsa's sliding-window kernel through bench/peer_stubs/flash_attn_interface")
        utils = importlib.import_module("flash_nsa.utils")
        helper = getattr(utils, "NSAHelper", None)
        if helper is not None and hasattr(helper, "is_triton34") and not helper.is_triton34():
            self.notes.append("nsa-lib: triton < 3.4, its NSACore falls back to the HF-level layer")
        self.versions["Triton NSA library"] = peer_commit(root, "FSA_PEER_NSA_COMMIT")
        return flash_nsa

    # -- measurement --------------------------------------------------------------------------------

    def event_time(self, body, setup=None):
        """(median, min, max) ms of body(setup()) over --iters runs after 2 warm-ups; setup runs
        before the start event."""
        torch = self.torch
        times = []
        for i in range(WARMUPS + self.args.iters):
            state = setup() if setup is not None else None
            torch.cuda.synchronize()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = body(state)
            stop.record()
            stop.synchronize()
            del result, state
            if i >= WARMUPS:
                times.append(start.elapsed_time(stop))
        times.sort()
        return times[len(times) // 2], times[0], times[-1]

    def rel_error(self, a, b):
        """||a - b||_F / ||b||_F in fp32, in row chunks (a, b are large bf16 tensors)."""
        torch = self.torch
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        if a.shape != b.shape:
            return float("inf"), f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        num = den = 0.0
        finite = True
        step = max(1, (1 << 26) // max(1, a.shape[1]))
        for i in range(0, a.shape[0], step):
            x, y = a[i:i + step].float(), b[i:i + step].float()
            finite = finite and bool(torch.isfinite(x).all())
            num += float(((x - y) ** 2).sum())
            den += float((y ** 2).sum())
        if not finite:
            return float("inf"), "non-finite values"
        return (num ** 0.5) / max(den ** 0.5, 1e-30), ""

    def compare(self, label, outputs, reference):
        """'ok (...)' or 'DISAGREES (...)' for outputs (o, dq, dk, dv) against ours."""
        parts, bad = [], False
        for name, x, y in zip(("o", "dq", "dk", "dv"), outputs, reference):
            if x is None or y is None:
                parts.append(f"{name} missing")
                bad = True
                continue
            err, why = self.rel_error(x, y)
            parts.append(f"{name} {err:.2e}" + (f" [{why}]" if why else ""))
            bad = bad or not (err <= self.args.tolerance)
        text = ("DISAGREES" if bad else "ok") + " (rel err " + "; ".join(parts) + ")"
        print(f"  check {label}: {text}", flush=True)
        if bad:
            print(f"  WARNING: {label} disagrees with ours beyond {self.args.tolerance:g}; its times are reported "
                  "with check=DISAGREES", flush=True)
        return text

    def finite_check(self, label, outputs):
        bad = [n for n, x in zip(("o", "dq", "dk", "dv"), outputs) if x is None or not bool(self.torch.isfinite(x).all())]
        text = "not compared" + (f"; NON-FINITE {','.join(bad)}" if bad else "")
        print(f"  check {label}: {text}", flush=True)
        return text

    def run_impl(self, part, config, impl, forward, inputs, d_o, reference, phases, vs, note, comparable=True,
                 role="peer"):
        """Checks then times one implementation. role "reference" (ours): no check, its outputs
        (o, dq, dk, dv) are returned, and a failure of the canonical "ours" row (vs == "") is raised;
        role "peer": compared with `reference` (o, dq, dk, dv) when comparable, else only checked
        for non-finite values; a failure is recorded and the run goes on."""
        torch = self.torch
        print(f"- {part} {config} {impl}", flush=True)
        try:
            o = forward()
            grads = torch.autograd.grad(o, inputs, d_o, allow_unused=True)
            outputs = (o.detach(),) + tuple(grads[:3])
            if role == "reference":
                check = "reference"
            elif comparable and reference is not None:
                check = self.compare(impl, outputs, reference)
            else:
                check = self.finite_check(impl, outputs)
            del o, grads
            if role != "reference":
                outputs = None

            def fwd(_):
                with torch.no_grad():
                    return forward()

            def make_graph():
                return forward()

            def bwd(out):
                return torch.autograd.grad(out, inputs, d_o, allow_unused=True)

            def fwd_bwd(_):
                return torch.autograd.grad(forward(), inputs, d_o, allow_unused=True)

            bodies = {"fwd": (fwd, None), "bwd": (bwd, make_graph), "fwd+bwd": (fwd_bwd, None)}
            for phase in phases:
                body, setup = bodies[phase]
                ms, lo, hi = self.event_time(body, setup)
                print(f"  {phase:8s} {ms:9.3f} ms (min {lo:.3f}, max {hi:.3f})", flush=True)
                self.rows.append(dict(part=part, config=config, impl=impl, phase=phase, ms=f"{ms:.3f}",
                                      min=f"{lo:.3f}", max=f"{hi:.3f}", vs=vs, check=check, note=note))
            return outputs
        except Skip as e:
            print(f"  [skip] {impl}: {e}", flush=True)
            self.rows.append(dict(part=part, config=config, impl=impl, phase="-", vs=vs, check="skipped",
                                  note=str(e)))
        except Exception as e:  # noqa: BLE001  (a peer's failure must not stop the others)
            message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            print(f"  [error] {impl}: {message}", flush=True)
            traceback.print_exc()
            self.rows.append(dict(part=part, config=config, impl=impl, phase="-", vs=vs, check="error",
                                  note=message))
            if role == "reference" and not vs:
                raise
        finally:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        return None

    def wanted(self, impl):
        return impl == "ours" or not self.args.impl or impl in self.args.impl

    # -- selected attention ---------------------------------------------------------------------------

    def selected(self, config, n, group):
        torch, fsa = self.torch, self.fsa
        hq, scale = HKV * group, D ** -0.5
        gen = torch.Generator(device="cuda").manual_seed(self.args.seed)

        def randn(*shape):
            return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=gen)

        q, k, v, d_o = randn(n, hq, D), randn(n, HKV, D), randn(n, HKV, D), randn(n, hq, D)
        q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
        cu = torch.tensor([0, n], dtype=torch.int32, device="cuda")
        cfg = fsa.NsaConfig(cmp_len=CMP_LEN, cmp_stride=CMP_STRIDE, block_size=BLOCK, topk=TOPK, window=WINDOW,
                            scale=scale, compression="mean", rope=fsa.RopeConfig(enabled=False))
        with torch.no_grad():
            k_cmp, v_cmp = fsa.compress(k, cu, config=cfg), fsa.compress(v, cu, config=cfg)
            _, lse_cmp = fsa.compressed_attention(q, k_cmp, v_cmp, cu, cfg)
            topk = fsa.select_blocks(q, k_cmp, lse_cmp, cu, cfg)
            del k_cmp, v_cmp, lse_cmp
        valid = float((topk >= 0).sum()) / (topk.shape[0] * topk.shape[1])
        print(f"== selected {config}: N={n} Hq={hq} Hkv={HKV} D={D} topk_idx {tuple(topk.shape)} int32 from "
              f"fsa.select_blocks, {valid:.2f} valid entries per row", flush=True)
        inputs = (q, k, v)
        phases = ("fwd", "bwd")
        reference = self.run_impl("selected", config, "ours", lambda: fsa.selected_attention(q, k, v, topk, cu, cfg)[0],
                                  inputs, d_o, None, phases, "", "fsa.selected_attention, path auto, plan in the call",
                                  role="reference")
        if reference is None:
            return

        def fsa_repo(name):
            function = self.peer(name)
            return lambda: function.apply(q, k, v, topk, BLOCK, cu, cu, n, n, scale)

        for impl in ("fsa-nsa-order", "fsa-fsa-order"):
            if self.wanted(impl):
                self.timed_peer("selected", config, impl, lambda impl=impl: fsa_repo(impl), inputs, d_o, reference,
                                phases, "ours", "same tensors as ours (layout [N, H, D], topk_idx [Hkv, N, K])")
        if self.wanted("fla"):
            def fla():
                if group < 16 or group & (group - 1):
                    raise Skip(f"FLA's kernel needs G >= 16 and a power of 2 (G = {group})")
                kind, function = self.peer("fla")
                indices = topk.permute(1, 0, 2).unsqueeze(0).to(torch.int64).contiguous()
                if kind == "function":
                    return lambda: function.apply(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), indices, TOPK,
                                                  BLOCK, scale, None).squeeze(0)
                return lambda: function(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), block_indices=indices,
                                        block_counts=TOPK, block_size=BLOCK, scale=scale).squeeze(0)

            self.timed_peer("selected", config, "fla", fla, inputs, d_o, reference, phases, "ours",
                            "batch-first views; block_indices = topk_idx.permute(1, 0, 2) int64, block_counts = K")
        del reference

    def timed_peer(self, part, config, impl, build, inputs, d_o, reference, phases, vs, note, comparable=True):
        """run_impl for a peer whose forward `build()` returns (raising Skip when unavailable)."""
        try:
            forward = build()
        except Skip as e:
            print(f"- {part} {config} {impl}\n  [skip] {e}", flush=True)
            self.rows.append(dict(part=part, config=config, impl=impl, phase="-", vs=vs, check="skipped", note=str(e)))
            return
        self.run_impl(part, config, impl, forward, inputs, d_o, reference, phases, vs, note, comparable)

    # -- the layer ------------------------------------------------------------------------------------

    def layer(self, config, n, group):
        torch, fsa = self.torch, self.fsa
        hq, scale = HKV * group, D ** -0.5
        gen = torch.Generator(device="cuda").manual_seed(self.args.seed)

        def randn(*shape, std=1.0):
            return (torch.randn(*shape, device="cuda", dtype=torch.float32, generator=gen) * std).to(torch.bfloat16)

        q, k, v, d_o = randn(n, hq, D), randn(n, HKV, D), randn(n, HKV, D), randn(n, hq, D)
        logits = randn(n, hq, 3)
        w_std = (CMP_LEN * D) ** -0.5
        w_k, w_v, pe_k = randn(HKV, CMP_LEN * D, D, std=w_std), randn(HKV, CMP_LEN * D, D, std=w_std), \
            randn(HKV, CMP_LEN, D, std=w_std)
        for t in (q, k, v, logits, w_k, w_v, pe_k):
            t.requires_grad_(True)
        cu = torch.tensor([0, n], dtype=torch.int32, device="cuda")
        base = dict(cmp_len=CMP_LEN, cmp_stride=CMP_STRIDE, block_size=BLOCK, topk=TOPK, window=WINDOW, scale=scale)
        canonical = fsa.NsaConfig(compression="linear", **base)
        matched = fsa.NsaConfig(compression="mean", rope=fsa.RopeConfig(enabled=False), **base)
        print(f"== layer {config}: N={n} Hq={hq} Hkv={HKV} D={D}, gate logits [N, Hq, 3]", flush=True)
        phases = ("fwd", "bwd", "fwd+bwd")
        qkvg = (q, k, v, logits)

        self.run_impl("layer", config, "ours", lambda: fsa.nsa_attention(
            q, k, v, cu, torch.sigmoid(logits), w_k, w_v, pe_k, canonical), qkvg + (w_k, w_v, pe_k), d_o, None, phases,
            "", "fsa.nsa_attention: linear compression with PE, RoPE, per-head sigmoid gates", role="reference")
        matched_ref = None
        if self.wanted("ours-matched") or self.wanted("nsa-lib"):
            matched_ref = self.run_impl("layer", config, "ours-matched", lambda: fsa.nsa_attention(
                q, k, v, cu, torch.sigmoid(logits), None, None, None, matched), qkvg, d_o, None, phases, "-",
                "fsa.nsa_attention: mean compression, no RoPE (the Triton NSA library's function)", role="reference")
        if self.wanted("nsa-lib"):
            def nsa_lib():
                flash_nsa = self.peer("nsa-lib")
                nsa_config = flash_nsa.NSAConfig(
                    head_dim=D, num_heads=hq, num_kv_heads=HKV, kernel_size=CMP_LEN, stride=CMP_STRIDE,
                    cmp_k_method="mean", cmp_v_method="mean", block_size=BLOCK, top_n=TOPK, num_init_blocks=1,
                    num_local_blocks=2, window_size=WINDOW)
                core = flash_nsa.NSACore(nsa_config)
                return lambda: core(q, k, v, logits, cu)

            note = "flash_nsa.NSACore (mean compression, no RoPE, sigmoid gates inside)"
            if self.stub_used("flash_attn_interface") or "flash_attn_interface" in self.stub_modules:
                note += "; window branch = fsa's window kernel via bench/peer_stubs"
            if matched_ref is None:
                self.timed_peer("layer", config, "nsa-lib", nsa_lib, qkvg, d_o, None, phases, "ours-matched",
                                note + "; ours-matched failed: not compared", comparable=False)
            else:
                self.timed_peer("layer", config, "nsa-lib", nsa_lib, qkvg, d_o, matched_ref, phases, "ours-matched",
                                note)
        del matched_ref
        if self.wanted("fla-layer"):
            def fla_layer():
                if group < 16 or group & (group - 1):
                    raise Skip(f"FLA's parallel_nsa needs G >= 16 and a power of 2 (G = {group})")
                function = self.peer("fla-layer")

                def forward():
                    g = torch.sigmoid(logits).unsqueeze(0)
                    return function(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), g[..., 0], g[..., 1], g[..., 2],
                                    block_counts=TOPK, block_size=BLOCK, window_size=WINDOW, scale=scale).squeeze(0)
                return forward

            self.timed_peer("layer", config, "fla-layer", fla_layer, qkvg, d_o, None, phases, "ours",
                            "FLA parallel_nsa (mean pooling of B-token blocks, its own selection; window via "
                            "fsa's kernel through bench/peer_stubs): another function, not compared",
                            comparable=False)
        if self.wanted("sdpa"):
            def sdpa():
                import torch.nn.functional as F
                q4, k4, v4 = (t.detach().transpose(0, 1).unsqueeze(0).contiguous().requires_grad_(True)
                              for t in (q, k, v))
                d_o4 = d_o.transpose(0, 1).unsqueeze(0).contiguous()
                try:
                    from torch.nn.attention import SDPBackend, sdpa_kernel
                    context = lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)  # noqa: E731
                    with context():
                        F.scaled_dot_product_attention(q4[:, :, :64], k4[:, :, :64], v4[:, :, :64], is_causal=True,
                                                       enable_gqa=True)
                    backend = "flash"
                except Exception:  # noqa: BLE001  (flash refused: let torch choose)
                    import contextlib
                    context, backend = contextlib.nullcontext, "auto (flash refused)"

                def forward():
                    with context():
                        return F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, enable_gqa=True)
                return forward, (q4, k4, v4), d_o4, backend

            try:
                forward, inputs4, d_o4, backend = sdpa()
                self.run_impl("layer", config, "sdpa", forward, inputs4, d_o4, None, phases, "ours",
                              f"torch SDPA dense causal, backend {backend}, [1, H, N, D] copies", comparable=False)
                del inputs4, d_o4
            except Exception as e:  # noqa: BLE001
                print(f"  [error] sdpa: {type(e).__name__}: {e}", flush=True)
                self.rows.append(dict(part="layer", config=config, impl="sdpa", phase="-", vs="ours", check="error",
                                      note=f"{type(e).__name__}: {e}"[:300]))

    # -- the whole run --------------------------------------------------------------------------------

    def fill_ratios(self):
        ours = {(r["part"], r["config"], r["impl"], r["phase"]): r["ms"] for r in self.rows if r.get("ms")}
        for r in self.rows:
            if r.get("vs") in (None, "", "-") or not r.get("ms"):
                continue
            mine = ours.get((r["part"], r["config"], r["vs"], r["phase"]))
            if mine:
                r["ours_ms"] = mine
                r["ours_over_peer"] = f"{float(mine) / float(r['ms']):.2f}"

    def caption(self):
        torch = self.torch
        try:
            import triton
            triton_version = triton.__version__
        except ImportError:
            triton_version = "none"
        driver = "?"
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                driver_line = out.stdout.strip().splitlines()[0].split(",")
                driver = f"driver {driver_line[0].strip()}, SM clock max {driver_line[1].strip()}"
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
        command = "python3 bench/peers.py " + " ".join(a for a in sys.argv[1:])
        peers = "; ".join(f"{k} {v}" for k, v in sorted(self.versions.items())) or "none loaded"
        skipped = "; ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        lines = [
            f"{command.strip()} on {self.device_name} ({driver}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"triton {triton_version}), {datetime.date.today().isoformat()}",
            f"commit {our_commit()}; peers: {peers}" + (f"; skipped: {skipped}" if skipped else ""),
            f"bf16, D={D}, Hkv={HKV}, K={TOPK}, B={BLOCK}, l={CMP_LEN}, s={CMP_STRIDE}, w={WINDOW}, one sequence; "
            "selected: topk_idx from fsa.select_blocks (mean compression, no RoPE) on random q, k, the same for every "
            "implementation; median of "
            f"{self.args.iters} after {WARMUPS} warm-ups, CUDA events; ms; bwd = autograd of a fresh untimed forward; "
            "ours_over_peer = ours (the row named in vs) / this row, below 1: ours faster; check = relative Frobenius "
            f"error of o, dq, dk, dv against ours (tolerance {self.args.tolerance:g})",
        ]
        lines += [f"note: {n}" for n in dict.fromkeys(self.notes)]
        return lines

    def save(self):
        self.fill_ratios()
        write_csv(self.csv_path, self.caption(), self.rows)

    def summary(self):
        print("\n== summary (ms; ours / peer in brackets, below 1: ours faster)")
        for r in self.rows:
            if r.get("ms"):
                ratio = f" [{r['ours_over_peer']}]" if r.get("ours_over_peer") else ""
                print(f"{r['part']:8s} {r['config']:9s} {r['impl']:14s} {r['phase']:8s} {r['ms']:>10s}{ratio}  "
                      f"{r['check']}")
            else:
                print(f"{r['part']:8s} {r['config']:9s} {r['impl']:14s} {r['check']}: {r['note']}")
        for n in dict.fromkeys(self.notes):
            print(f"note: {n}")
        print(f"written: {self.csv_path}")

    def run(self):
        torch = self.torch
        print(f"peers.py on {self.device_name}, torch {torch.__version__}, our commit {our_commit()}; "
              f"stubs for {', '.join(self.stub_modules) or 'nothing'}; results -> {self.csv_path}", flush=True)
        failed = False
        for part in self.parts:
            table = SELECTED_CONFIGS if part == "selected" else LAYER_CONFIGS
            for config, (n, group) in table.items():
                if self.args.config and config not in self.args.config:
                    continue
                try:
                    (self.selected if part == "selected" else self.layer)(config, n, group)
                except Exception as e:  # noqa: BLE001  (ours failed: nothing to compare in this config)
                    failed = True
                    print(f"[error] {part} {config}: ours failed ({type(e).__name__}: {e}); configuration skipped",
                          flush=True)
                    self.rows.append(dict(part=part, config=config, impl="ours", phase="-", check="error",
                                          note=f"{type(e).__name__}: {e}"[:300]))
                torch.cuda.empty_cache()
                self.save()
        self.save()
        self.summary()
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
