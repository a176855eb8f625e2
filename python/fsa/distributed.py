"""Context parallelism: one NSA layer over a packed varlen batch whose token rows are sharded across
the ranks of a torch.distributed process group (NCCL on GPUs, gloo on CPUs). docs/distributed.md
describes the design, the bytes it moves and what is tested.

Sharding of the N = cu_seqlens[-1] rows of the packed batch over the P ranks of the group:

- "contiguous": N % P == 0; rank r holds the global rows [r*N/P, (r+1)*N/P).
- "zigzag": N % (2P) == 0; the rows are cut into 2P chunks of N/(2P) and rank r holds chunk r
  followed by chunk 2P-1-r, so the early (cheap) and late (expensive) causal rows are spread evenly.
- "auto": `choose_sharding(cu_seqlens, P)`, a function of the global cu_seqlens alone, so the caller
  who splits its rows (`shard_rows`) and the layer agree.

Every rank passes its own rows of q, k, v and the gates in that order, the global cu_seqlens (the
same tensor on every rank; kept on the host, see below) and the replicated compression parameters.
It gets back its rows of the output and, in the backward, the gradients of its rows of q, k, v
and the gates (each key's gradient summed over the queries of every rank). The gradients of the
replicated w_k, w_v and pe_k are this rank's contributions, like those of every other replicated
weight: sum them over the group as data parallelism does (torch DDP over the group does).

The ops position a row by its offset from its sequence's first row, so a rank's queries must sit at
their positions inside a sequence that starts at position 0. Each rank therefore runs the branches
on its "prefix batch": for every sequence that holds some of its rows, that sequence's rows from its
start to the rank's last row in it, with the keys and values all-gathered and the other ranks'
query rows zero. Those zero rows cost compressed attention and selection their full work (docs:
"Cost"); selected attention skips them (their selection rows are -1) and the window branch runs on
the rank's own rows plus the w rows before each run of them.

The layer is separable over kv heads (every branch, the selection's group scores and the
compression are per kv head), so the work runs in slices of kv heads: the all-gather of slice i+1
is in flight while slice i computes, and in the backward the fp32 reduce-scatter of slice i's dK /
dV is in flight while slice i+1's backward runs. With NCCL the collectives run on the process
group's own stream and `wait()` makes the compute stream wait for them: no host synchronisation.
With gloo the same code runs with the collectives on gloo's threads.
"""
import bisect
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from . import functional as F
from .config import NsaConfig

Tensor = torch.Tensor
SHARDINGS = ("auto", "contiguous", "zigzag")


def _dist():
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("fsa.distributed: this torch build has no torch.distributed")
    return dist


def _lengths(cu_seqlens) -> List[int]:
    """cu_seqlens as a host list of ints (a CUDA tensor is copied once, before any work)."""
    cu = cu_seqlens.tolist() if isinstance(cu_seqlens, Tensor) else list(cu_seqlens)
    if not cu or cu[0] != 0 or any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens: expected non-decreasing offsets starting at 0, got {cu[:8]}...")
    return cu


def _check_divisible(total: int, world_size: int, sharding: str) -> None:
    parts = world_size if sharding == "contiguous" else 2 * world_size
    if total % parts != 0:
        raise ValueError(f"cu_seqlens: {sharding} sharding over {world_size} ranks needs the token count to be a "
                         f"multiple of {parts}, got {total} (pad the batch with a sequence of the missing rows)")


def local_runs(total: int, world_size: int, rank: int, sharding: str) -> List[Tuple[int, int]]:
    """The global row ranges [begin, end) that `rank` holds, in the order of its local rows."""
    if sharding not in ("contiguous", "zigzag"):
        raise ValueError(f"sharding: expected 'contiguous' or 'zigzag' here, got {sharding!r}")
    _check_divisible(total, world_size, sharding)
    if sharding == "contiguous":
        share = total // world_size
        return [(rank * share, (rank + 1) * share)]
    chunk = total // (2 * world_size)
    last = 2 * world_size - 1 - rank
    return [(rank * chunk, (rank + 1) * chunk), (last * chunk, (last + 1) * chunk)]


def _causal_work(cu: List[int], runs: Sequence[Tuple[int, int]]) -> int:
    """Sum over the rows of `runs` of (position + 1): the work of the branches that reach the whole
    past (compressed attention, selection) once each row costs what its own position needs."""
    work = 0
    for begin, end in runs:
        b = bisect.bisect_right(cu, begin) - 1
        while begin < end:
            stop = min(end, cu[b + 1])
            p0, p1 = begin - cu[b], stop - cu[b]
            work += (p1 * (p1 + 1) - p0 * (p0 + 1)) // 2
            begin, b = stop, b + 1
    return work


def choose_sharding(cu_seqlens, world_size: int) -> str:
    """"zigzag" when it lowers the largest rank's causal work by more than 10% and the token count
    allows it, else "contiguous" (many short sequences: both balance; one long sequence: zig-zag)."""
    cu = _lengths(cu_seqlens)
    total = cu[-1]
    if world_size == 1 or total % (2 * world_size) != 0:
        return "contiguous"
    worst = {s: max(_causal_work(cu, local_runs(total, world_size, r, s)) for r in range(world_size))
             for s in ("contiguous", "zigzag")}
    return "zigzag" if worst["zigzag"] < 0.9 * worst["contiguous"] else "contiguous"


def _resolve(cu: List[int], world_size: int, sharding: str) -> str:
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding: expected one of {SHARDINGS}, got {sharding!r}")
    return choose_sharding(cu, world_size) if sharding == "auto" else sharding


def _group_size_rank(group) -> Tuple[int, int]:
    dist = _dist()
    return dist.get_world_size(group), dist.get_rank(group)


def shard_rows(x: Tensor, cu_seqlens, group=None, sharding: str = "auto") -> Tensor:
    """This rank's rows of a tensor of the whole packed batch (rows first), in the order
    nsa_attention_cp expects them."""
    world_size, rank = _group_size_rank(group)
    cu = _lengths(cu_seqlens)
    runs = local_runs(cu[-1], world_size, rank, _resolve(cu, world_size, sharding))
    return torch.cat([x[begin:end] for begin, end in runs])


def _aranges(pieces: Sequence[Tuple[int, int]]) -> Tensor:
    if not pieces:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(begin, end, dtype=torch.long) for begin, end in pieces])


def _offsets(lengths: Sequence[int]) -> Tensor:
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32)


@dataclass
class CpPlan:
    """Index tensors of one rank's step, built on the host from cu_seqlens alone.

    prefix batch: for each sequence b holding rows of this rank, its rows [cu[b], cu[b] + e_b), e_b
    one past the rank's last position in b. halo batch: for each run of this rank's rows inside one
    sequence, the run and the up to `window` rows before it (rows of the prefix batch)."""

    sharding: str
    world_size: int
    rank: int
    local_rows: int
    prefix_src: Tensor  # [prefix rows] row of the all-gathered buffer (rank-major) for each prefix row
    cu_prefix: Tensor  # int32 [sequences + 1]
    local_in_prefix: Tensor  # [local rows] prefix row of each local row, in local order
    prefix_is_local: Tensor  # bool [prefix rows]
    halo_in_prefix: Tensor  # [halo rows]
    cu_halo: Tensor  # int32 [runs + 1]
    local_in_halo: Tensor  # [local rows]

    def to(self, device) -> "CpPlan":
        """The plan on `device`. To a GPU the copies start from pinned memory, so that they do not
        wait for the work already queued on the stream (a pageable copy would)."""
        device = torch.device(device)

        def move(t: Tensor) -> Tensor:
            if t.device == device:
                return t
            return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)

        moved = {name: move(getattr(self, name))
                 for name in ("prefix_src", "cu_prefix", "local_in_prefix", "prefix_is_local", "halo_in_prefix",
                              "cu_halo", "local_in_halo")}
        return CpPlan(self.sharding, self.world_size, self.rank, self.local_rows, **moved)


def plan_cp(cu_seqlens, world_size: int, rank: int, sharding: str = "auto", config: NsaConfig = F.DEFAULT_CONFIG
            ) -> CpPlan:
    """The plan of `rank`'s step (host tensors; CpPlan.to moves them)."""
    cu = _lengths(cu_seqlens)
    total = cu[-1]
    sharding = _resolve(cu, world_size, sharding)
    all_runs = [local_runs(total, world_size, r, sharding) for r in range(world_size)]
    # Row g of the global batch sits at gathered_pos[g] of the rank-major all-gathered buffer.
    gathered_pos = torch.empty(total, dtype=torch.long)
    gathered_pos[_aranges([run for runs in all_runs for run in runs])] = torch.arange(total, dtype=torch.long)

    # The rank's runs cut at sequence boundaries, in local order: (sequence, begin, end), global rows.
    pieces = []
    for begin, end in all_runs[rank]:
        b = bisect.bisect_right(cu, begin) - 1
        while begin < end:
            while cu[b + 1] <= begin:  # skip empty sequences
                b += 1
            stop = min(end, cu[b + 1])
            pieces.append((b, begin, stop))
            begin = stop
    prefix_end = {}
    for b, _, stop in pieces:
        prefix_end[b] = max(prefix_end.get(b, 0), stop - cu[b])
    seqs = sorted(prefix_end)
    prefix_start = {}
    rows = 0
    for b in seqs:
        prefix_start[b] = rows
        rows += prefix_end[b]
    prefix_global = _aranges([(cu[b], cu[b] + prefix_end[b]) for b in seqs])
    local_in_prefix = _aranges([(prefix_start[b] + begin - cu[b], prefix_start[b] + stop - cu[b])
                                for b, begin, stop in pieces])
    prefix_is_local = torch.zeros(rows, dtype=torch.bool)
    prefix_is_local[local_in_prefix] = True

    halo_pieces, halo_lengths, local_in_halo, halo_rows = [], [], [], 0
    for b, begin, stop in pieces:
        first = max(cu[b], begin - config.window)
        halo_pieces.append((prefix_start[b] + first - cu[b], prefix_start[b] + stop - cu[b]))
        halo_lengths.append(stop - first)
        local_in_halo.append((halo_rows + begin - first, halo_rows + stop - first))
        halo_rows += stop - first
    return CpPlan(
        sharding=sharding, world_size=world_size, rank=rank, local_rows=total // world_size,
        prefix_src=gathered_pos[prefix_global], cu_prefix=_offsets([prefix_end[b] for b in seqs]),
        local_in_prefix=local_in_prefix, prefix_is_local=prefix_is_local, halo_in_prefix=_aranges(halo_pieces),
        cu_halo=_offsets(halo_lengths), local_in_halo=_aranges(local_in_halo))


# ---- communication -------------------------------------------------------------------------------

class _Pending:
    """A collective in flight; result() makes the caller's stream wait for it (NCCL: no host wait)."""

    def __init__(self, work, output: Tensor, rows: Optional[slice] = None):
        self.work, self.output, self.rows = work, output, rows

    def result(self) -> Tensor:
        self.work.wait()
        return self.output if self.rows is None else self.output[self.rows]


class _Comm:
    def __init__(self, group):
        dist = _dist()
        self.dist, self.group = dist, group
        self.world_size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        # gloo has no reduce-scatter: it all-reduces and keeps this rank's rows.
        self.reduce_scatter_by_all_reduce = dist.get_backend(group) == "gloo"

    def all_gather(self, x: Tensor) -> _Pending:
        x = x.contiguous()
        out = x.new_empty((self.world_size * x.shape[0],) + tuple(x.shape[1:]))
        return _Pending(self.dist.all_gather_into_tensor(out, x, group=self.group, async_op=True), out)

    def reduce_scatter(self, x: Tensor) -> _Pending:
        """Sums x [P * rows, ...] over the ranks and hands rank r its rows [r*rows, (r+1)*rows)."""
        x = x.contiguous()
        rows = x.shape[0] // self.world_size
        if self.reduce_scatter_by_all_reduce:
            work = self.dist.all_reduce(x, group=self.group, async_op=True)
            return _Pending(work, x, slice(self.rank * rows, (self.rank + 1) * rows))
        out = x.new_empty((rows,) + tuple(x.shape[1:]))
        return _Pending(self.dist.reduce_scatter_tensor(out, x, group=self.group, async_op=True), out)


# ---- one slice of kv heads -----------------------------------------------------------------------

def _slice_forward(plan: CpPlan, config: NsaConfig, q: Tensor, k_all: Tensor, v_all: Tensor, gates: Tensor,
                   w_k: Optional[Tensor], w_v: Optional[Tensor], pe_k: Optional[Tensor],
                   workspace_cap: Optional[int]) -> Tensor:
    """The layer (the order of docs/semantics.md section 2, as nsa_forward composes it) for this rank's
    rows of one slice of kv heads; k_all, v_all: the slice's all-gathered pre-RoPE rows (rank-major)."""
    cu = plan.cu_prefix
    k = k_all.index_select(0, plan.prefix_src)
    v = v_all.index_select(0, plan.prefix_src)
    rows = k.shape[0]
    q = q.new_zeros((rows,) + tuple(q.shape[1:])).index_copy(0, plan.local_in_prefix, q)
    cu_cmp = F.compressed_cu_seqlens(cu, config)
    k_cmp = F.compress(k, cu, w_k, pe_k, config, cu_cmp)
    v_cmp = F.compress(v, cu, w_v, None, config, cu_cmp)
    if config.rope.enabled:
        q = F.rope(q, cu, 1, config)
        k = F.rope(k, cu, 1, config)
        k_cmp = F.rope(k_cmp, cu_cmp, config.cmp_stride, config)
    o_cmp, lse_cmp = F.compressed_attention(q, k_cmp, v_cmp, cu, config, cu_cmp)
    topk = F.select_blocks(q, k_cmp, lse_cmp, cu, config, cu_cmp)
    # Other ranks' rows select nothing: selected attention then does no work for them.
    topk = topk.masked_fill(~plan.prefix_is_local.view(1, -1, 1), -1)
    o_slc, _ = F.selected_attention(q, k, v, topk, cu, config, workspace_cap=workspace_cap)
    halo = plan.halo_in_prefix
    o_swa, _ = F.sliding_window_attention(q.index_select(0, halo), k.index_select(0, halo), v.index_select(0, halo),
                                          plan.cu_halo, config)
    local = plan.local_in_prefix
    return F.combine(gates, o_cmp.index_select(0, local), o_slc.index_select(0, local),
                     o_swa.index_select(0, plan.local_in_halo))


def _head_slices(heads_kv: int, slice_heads: int) -> List[slice]:
    if slice_heads <= 0 or heads_kv % slice_heads != 0:
        raise ValueError(f"slice_heads: expected a positive divisor of the kv heads ({heads_kv}), got {slice_heads}")
    return [slice(h, h + slice_heads) for h in range(0, heads_kv, slice_heads)]


def _optional_slice(t: Optional[Tensor], kv: slice) -> Optional[Tensor]:
    return None if t is None else t[kv]


class _ContextParallelNsa(torch.autograd.Function):
    """Forward: per kv-head slice, the all-gather of the next slice under this slice's branches, each
    slice's graph kept (its gathered K / V included) for the backward. Backward: per slice, the
    branches' backwards, then the slice's dK / dV in fp32 reduce-scattered to their owners while the
    next slice's backward runs."""

    @staticmethod
    def forward(ctx, q, k, v, gates, w_k, w_v, pe_k, plan, config, comm, slice_heads, workspace_cap, keep_graph):
        group_size = q.shape[1] // k.shape[1]
        slices = _head_slices(k.shape[1], slice_heads)
        shared_gates = gates.dim() == 2
        pending = (comm.all_gather(k[:, slices[0]]), comm.all_gather(v[:, slices[0]]))
        outputs, graphs = [], []
        for i, kv in enumerate(slices):
            k_all, v_all = (p.result() for p in pending)
            if i + 1 < len(slices):
                pending = (comm.all_gather(k[:, slices[i + 1]]), comm.all_gather(v[:, slices[i + 1]]))
            qh = slice(kv.start * group_size, kv.stop * group_size)
            with torch.set_grad_enabled(keep_graph):
                leaves = [None if t is None else t.detach().requires_grad_(keep_graph and t.is_floating_point())
                          for t in (q[:, qh], k_all, v_all, gates if shared_gates else gates[:, qh],
                                    _optional_slice(w_k, kv), _optional_slice(w_v, kv), _optional_slice(pe_k, kv))]
                o = _slice_forward(plan, config, *leaves, workspace_cap=workspace_cap)
            outputs.append(o.detach())
            if keep_graph:
                graphs.append((o, leaves))
        ctx.graphs, ctx.slices, ctx.group_size, ctx.comm = graphs, slices, group_size, comm
        ctx.shared_gates = shared_gates
        ctx.shapes = [None if t is None else (t.shape, t.dtype) for t in (q, k, v, gates, w_k, w_v, pe_k)]
        return torch.cat(outputs, dim=1)

    @staticmethod
    def backward(ctx, d_o):
        (q_meta, k_meta, v_meta, gates_meta, *weight_meta) = ctx.shapes
        dq = d_o.new_zeros(q_meta[0], dtype=q_meta[1])
        d_gates = d_o.new_zeros(gates_meta[0], dtype=gates_meta[1])
        d_weights = [None if m is None else d_o.new_zeros(m[0], dtype=m[1]) for m in weight_meta]
        dk_parts, dv_parts = [], []
        for (o, leaves), kv in zip(ctx.graphs, ctx.slices):
            qh = slice(kv.start * ctx.group_size, kv.stop * ctx.group_size)
            wanted = [t for t in leaves if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(o, wanted, d_o[:, qh], allow_unused=True))
            g_q, g_k, g_v, g_gates, *g_weights = [next(grads) if t is not None and t.requires_grad else None
                                                  for t in leaves]
            # Each key row is used by the queries of every rank: sum in fp32, then each owner keeps its rows.
            dk_parts.append(ctx.comm.reduce_scatter(_zero_if_none(g_k, leaves[1]).float()))
            dv_parts.append(ctx.comm.reduce_scatter(_zero_if_none(g_v, leaves[2]).float()))
            _add(dq[:, qh], g_q)
            _add(d_gates if ctx.shared_gates else d_gates[:, qh], g_gates)
            for full, g in zip(d_weights, g_weights):
                if full is not None:
                    _add(full[kv], g)
        dk = torch.cat([p.result() for p in dk_parts], dim=1).to(k_meta[1])
        dv = torch.cat([p.result() for p in dv_parts], dim=1).to(v_meta[1])
        ctx.graphs = None
        return (dq, dk, dv, d_gates, *d_weights) + (None,) * 6


def _zero_if_none(grad: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _add(into: Tensor, grad: Optional[Tensor]) -> None:
    if grad is not None:
        into.add_(grad)


def nsa_attention_cp(q: Tensor, k: Tensor, v: Tensor, cu_seqlens, gates: Tensor, w_k: Optional[Tensor] = None,
                     w_v: Optional[Tensor] = None, pe_k: Optional[Tensor] = None,
                     config: NsaConfig = F.DEFAULT_CONFIG, group=None, sharding: str = "auto", slice_heads: int = 1,
                     workspace_cap: Optional[int] = None, plan: Optional[CpPlan] = None) -> Tensor:
    """fsa.nsa_attention over a packed batch sharded across the ranks of `group` (None: the default
    group): this rank's rows of o [rows, Hq, Dv], differentiable in q, k, v, gates, w_k, w_v, pe_k.

    q, k, v, gates: this rank's rows (module docstring: which rows, in which order; `shard_rows`
    cuts them from a whole batch). cu_seqlens: the global offsets, the same on every rank; a host
    tensor or list (a CUDA tensor is copied to the host once, before any work). `sharding`:
    "auto", "contiguous" or "zigzag". `slice_heads`: kv heads per communication slice (a divisor of
    Hkv; smaller slices overlap more and hold less gathered K / V at a time). `plan`: one from
    plan_cp for the same cu_seqlens, group and sharding, to skip building it.
    Every rank must call it with the same cu_seqlens, config, sharding and slice_heads."""
    comm = _Comm(group)
    if plan is None:
        plan = plan_cp(cu_seqlens, comm.world_size, comm.rank, sharding, config)
    if (plan.world_size, plan.rank) != (comm.world_size, comm.rank):
        raise ValueError(f"plan: built for rank {plan.rank} of {plan.world_size}, called on rank {comm.rank} of "
                         f"{comm.world_size}")
    for name, t in (("q", q), ("k", k), ("v", v), ("gates", gates)):
        if t.shape[0] != plan.local_rows:
            raise ValueError(f"{name}: expected this rank's {plan.local_rows} rows ({plan.sharding} sharding of "
                             f"{plan.local_rows * plan.world_size} tokens over {plan.world_size} ranks), got "
                             f"{t.shape[0]}")
    plan = plan.to(q.device)
    # Without autograd (inference) no slice keeps its graph or its gathered K / V.
    keep_graph = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                 for t in (q, k, v, gates, w_k, w_v, pe_k))
    return _ContextParallelNsa.apply(q, k, v, gates, w_k, w_v, pe_k, plan, config, comm, slice_heads,
                                     F.check_workspace_cap(workspace_cap), keep_graph)
