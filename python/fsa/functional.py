"""Functional API: one function per NSA op and one for the whole layer, differentiable where
docs/semantics.md says gradients flow. Every function takes the layer's `NsaConfig` and reads the
fields it needs. Layouts (docs/semantics.md section 0): packed varlen rows, q [N, Hq, Dqk],
k [N, Hkv, Dqk], v [N, Hkv, Dv], cu_seqlens [nseq + 1] (int32; other integer tensors and lists of
ints are converted once their values are known to fit, floating ones refused: see _int32).

Each function passes its tensors and options; the op's config scalars are filled from `config` by
name (fsa/_schema.py), so adding a field to the layer needs no edit here.
"""
from typing import Hashable, Optional, Sequence, Tuple, Union

import torch

from ._library import ops
from ._schema import call
from .cache import MAX_DECODE_TOKENS, NsaCache
from .config import NsaConfig

Tensor = torch.Tensor
DEFAULT_CONFIG = NsaConfig()


_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
# Integer dtypes whose every value is an int32 value: converted without looking at the values.
_FITS_INT32 = (torch.int8, torch.int16, torch.uint8)


def _int32(value, name: str, like: Optional[Tensor] = None) -> Tensor:
    """`value` (argument `name`: offsets such as cu_seqlens, or topk_idx's block indices) as the
    int32 tensor the ops take, else an error naming it.

    An int32 tensor passes as it is. Other integer tensors are converted once their values are
    known to fit in int32: a value that wrapped around would read as another, valid-looking offset
    or block (2**32 as block 0). The check reads the values, which on the GPU waits for them;
    int32 inputs skip it. A list or tuple of ints is converted the same way, onto the device of
    `like`. Floating, complex and bool tensors and other objects are a TypeError: indices are
    integers, and truncating 12.7 to 12 would hide the bug that produced it.
    """
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{name}: expected a list of ints, got {[type(v).__name__ for v in value]}")
        for v in value:
            if not _INT32_MIN <= v <= _INT32_MAX:
                raise ValueError(f"{name}: value {v} does not fit in int32 (the ops take int32 {name})")
        return torch.tensor(value, dtype=torch.int32, device=like.device if like is not None else None)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected an int32 tensor (or a list of ints), got {type(value).__name__}")
    if value.dtype == torch.int32:
        return value
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor (int32; other integer dtypes are converted), "
                        f"got dtype {value.dtype}")
    if value.dtype not in _FITS_INT32 and value.numel() > 0:
        outside = (value < _INT32_MIN) | (value > _INT32_MAX)
        if torch.compiler.is_compiling():
            # No data-dependent branch in a traced graph: the check runs inside it.
            torch._assert_async(~outside.any(), f"{name}: a value does not fit in int32")
        elif outside.any():
            first = value[outside][0].item()
            raise ValueError(f"{name}: value {first} does not fit in int32 (the ops take int32 {name}; "
                             f"got dtype {value.dtype})")
    return value.to(torch.int32)


def check_workspace_cap(workspace_cap: Optional[int]) -> Optional[int]:
    """workspace_cap as the ops take it: None (the library's cap) or an int >= 0, else an error
    naming it."""
    if workspace_cap is None:
        return None
    if isinstance(workspace_cap, bool) or not isinstance(workspace_cap, int):
        raise TypeError(f"workspace_cap: expected None or an int (bytes), got {type(workspace_cap).__name__}")
    if workspace_cap < 0:
        raise ValueError(f"workspace_cap: expected a byte count >= 0, got {workspace_cap}")
    return workspace_cap


def compressed_cu_seqlens(cu_seqlens: Tensor, config: NsaConfig = DEFAULT_CONFIG) -> Tensor:
    """Row offsets of each sequence's compressed tokens: cu_cmp[b+1] = cu_cmp[b] + n_cmp(n_b)."""
    return call("compressed_cu_seqlens", _int32(cu_seqlens, "cu_seqlens"), config=config)


def _cu_cmp(cu_seqlens: Tensor, cu_cmp: Optional[Tensor], config: NsaConfig) -> Tensor:
    return compressed_cu_seqlens(cu_seqlens, config) if cu_cmp is None else _int32(cu_cmp, "cu_cmp", cu_seqlens)


def compress(x: Tensor, cu_seqlens: Tensor, weight: Optional[Tensor] = None, pos_emb: Optional[Tensor] = None,
             config: NsaConfig = DEFAULT_CONFIG, cu_cmp: Optional[Tensor] = None) -> Tensor:
    """Compresses x [N, Hkv, D] into [N // s, Hkv, Dout] (rows past cu_cmp[-1] are zero).

    `weight` [Hkv, l*D, Dout] selects the linear compression, None the mean; `pos_emb` [Hkv, l, D]
    is added to every window (the layer passes it for keys only).
    """
    cu_seqlens = _int32(cu_seqlens, "cu_seqlens", x)
    return call("compress_forward", x, cu_seqlens, _cu_cmp(cu_seqlens, cu_cmp, config), weight, pos_emb,
                config=config)


def rope(x: Tensor, cu: Tensor, position_stride: int = 1, config: NsaConfig = DEFAULT_CONFIG) -> Tensor:
    """Rotates x [rows, H, D]; row r of sequence b is at position (r - cu[b]) * position_stride
    (1 for q and k; s for compressed keys, with cu = cu_cmp). Ignores config.rope.enabled."""
    return call("rope_forward", x, _int32(cu, "cu", x), position_stride, config=config)


def compressed_attention(q: Tensor, k_cmp: Tensor, v_cmp: Tensor, cu_seqlens: Tensor,
                         config: NsaConfig = DEFAULT_CONFIG, cu_cmp: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """(o [N, Hq, Dv], lse fp32 [Hq, N]) of attention over the compressed tokens each query sees
    whole (i*s + l - 1 <= t). lse is not differentiable: it only feeds the block selection."""
    cu_seqlens = _int32(cu_seqlens, "cu_seqlens", q)
    return call("cmp_attn_forward", q, k_cmp, v_cmp, cu_seqlens, _cu_cmp(cu_seqlens, cu_cmp, config), config=config)


def select_blocks(q: Tensor, k_cmp: Tensor, lse_cmp: Tensor, cu_seqlens: Tensor, config: NsaConfig = DEFAULT_CONFIG,
                  cu_cmp: Optional[Tensor] = None) -> Tensor:
    """topk_idx int32 [Hkv, N, K]: forced plus highest-scoring blocks per token and kv group,
    ascending, -1 padded. Not differentiable."""
    cu_seqlens = _int32(cu_seqlens, "cu_seqlens", q)
    return call("select_blocks", q, k_cmp, lse_cmp, cu_seqlens, _cu_cmp(cu_seqlens, cu_cmp, config), config=config)


def selected_attention_plan(q: Tensor, k: Tensor, v: Tensor, topk_idx: Tensor, cu_seqlens: Tensor,
                            config: NsaConfig = DEFAULT_CONFIG, path: str = "auto", dense_threshold: int = 0,
                            deterministic: bool = False, workspace_cap: Optional[int] = None) -> Tensor:
    """The plan of selected attention (uint8; per query chunk, the key blocks' query rows and the
    dense/sparse split), built on the device from topk_idx and cu_seqlens; empty on the CPU. Pass
    it to selected_attention with the same arguments and options to skip building it there (the
    forward and the backward then share it). The options are selected_attention's."""
    return call("slc_plan", q, k, v, _int32(topk_idx, "topk_idx", q), _int32(cu_seqlens, "cu_seqlens", q),
                config=config, path=path, dense_threshold=dense_threshold, deterministic=deterministic,
                workspace_cap=check_workspace_cap(workspace_cap))


def selected_attention(q: Tensor, k: Tensor, v: Tensor, topk_idx: Tensor, cu_seqlens: Tensor,
                       config: NsaConfig = DEFAULT_CONFIG, path: str = "auto",
                       dense_threshold: int = 0, deterministic: bool = False, workspace_cap: Optional[int] = None,
                       plan: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """(o, lse) of attention over the union of each query's selected blocks of config.block_size
    keys (topk_idx int32 [Hkv, N, any width]; -1, future and duplicate entries are ignored).

    `path` forces the GPU forward's loop order ("auto", "kv-outer", "split", "query-outer") and
    `dense_threshold` the split's threshold (0: the library's); every path computes the same
    function, the CPU ignores both (docs/kernels/slc_attn.md). `deterministic` makes the GPU
    backward bitwise reproducible (per-slot partials reduced in a fixed order, more memory); the
    CPU backward always is.

    `workspace_cap` (bytes; None: the library's, 8 GiB) caps the GPU scratch that grows with
    N * Hq * topk (the plan, partial outputs, dQ slots): longer problems run in query chunks inside
    the same call, with the same results. Every workspace comes from torch's allocator, so
    torch.cuda.memory_allocated() and max_memory_allocated() include it. The CPU ignores it.

    `plan`: one from selected_attention_plan for the same arguments and options, or None: one is
    built here, and the forward and the backward share it."""
    topk_idx, cu_seqlens = _int32(topk_idx, "topk_idx", q), _int32(cu_seqlens, "cu_seqlens", q)
    options = dict(path=path, dense_threshold=dense_threshold, deterministic=deterministic,
                   workspace_cap=check_workspace_cap(workspace_cap))
    if plan is None:
        plan = call("slc_plan", q, k, v, topk_idx, cu_seqlens, config=config, **options)
    return call("slc_attn_forward", q, k, v, topk_idx, cu_seqlens, plan, config=config, **options)


def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor,
                             config: NsaConfig = DEFAULT_CONFIG) -> Tuple[Tensor, Tensor]:
    """(o, lse) of causal attention over keys [t - config.window, t] of the query's sequence."""
    return call("swa_forward", q, k, v, _int32(cu_seqlens, "cu_seqlens", q), config=config)


def combine(gates: Tensor, o_cmp: Tensor, o_slc: Tensor, o_swa: Tensor) -> Tensor:
    """g0 * o_cmp + g1 * o_slc + g2 * o_swa with gates [N, Hq, 3] (per head) or [N, 3] (shared)."""
    return ops.combine_forward(gates, o_cmp, o_slc, o_swa)


def nsa_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, gates: Tensor, w_k: Optional[Tensor] = None,
                  w_v: Optional[Tensor] = None, pe_k: Optional[Tensor] = None,
                  config: NsaConfig = DEFAULT_CONFIG, workspace_cap: Optional[int] = None) -> Tensor:
    """The whole NSA attention (docs/semantics.md sections 1-7) on pre-RoPE q, k, v: o [N, Hq, Dv].

    w_k [Hkv, l*Dqk, Dqk] and w_v [Hkv, l*Dv, Dv] for config.compression == "linear" (None for
    "mean"), pe_k [Hkv, l, Dqk] optional, gates already activated ([N, Hq, 3] or [N, 3]).

    `workspace_cap` (bytes; None: the library's, 8 GiB) caps the GPU scratch of the layer's
    selected attention (see selected_attention), in the forward and, with the same value, the
    backward; a smaller cap runs more query chunks, with the same results. Every workspace and the
    saved activations come from torch's allocator, so torch's memory statistics include them.
    """
    o, _ = call("nsa_forward", q, k, v, _int32(cu_seqlens, "cu_seqlens", q), w_k, pe_k, w_v, gates, config=config,
                workspace_cap=check_workspace_cap(workspace_cap))
    return o


def _cache_call(name: str, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Union[Tensor, Sequence[int]],
                cache: NsaCache, seq_ids: Sequence[Hashable], gates: Tensor, w_k: Optional[Tensor],
                w_v: Optional[Tensor], pe_k: Optional[Tensor], config: Optional[NsaConfig]) -> Tensor:
    if not isinstance(cache, NsaCache):
        raise TypeError(f"cache: expected an fsa.NsaCache, got {type(cache).__name__}")
    if config is not None and config != cache.config:
        raise ValueError(f"config: {config} is not the cache's config {cache.config} (the cache holds keys "
                         "compressed and rotated under its own)")
    if isinstance(seq_ids, (str, bytes)) or not hasattr(seq_ids, "__iter__"):
        raise TypeError(f"seq_ids: expected a sequence of the cache's sequence ids (one per sequence of "
                        f"cu_seqlens), got {type(seq_ids).__name__}")
    seq_ids = list(seq_ids)
    cu_seqlens = _int32(cu_seqlens, "cu_seqlens", q)
    cu_host = cu_seqlens.to("cpu", torch.int64)  # the new tokens' counts, on the host
    if cu_host.dim() != 1 or cu_host.numel() != len(seq_ids) + 1:
        raise ValueError(f"cu_seqlens: expected {len(seq_ids) + 1} offsets (one sequence per id of seq_ids), "
                         f"got shape {tuple(cu_host.shape)}")
    new_tokens = (cu_host[1:] - cu_host[:-1]).tolist()
    if name == "nsa_decode":
        for seq_id, count in zip(seq_ids, new_tokens):
            if count > MAX_DECODE_TOKENS:
                raise ValueError(f"cu_seqlens: nsa_decode takes at most {MAX_DECODE_TOKENS} new tokens per sequence, "
                                 f"sequence {seq_id!r} brings {count} (use nsa_prefill)")
    batch = cache.batch(seq_ids, new_tokens)

    def detached(t):
        return None if t is None else t.detach()

    # Inference only: no gradient flows into the cache or out of the outputs.
    o = call(name, *map(detached, (q, k, v)), cu_seqlens, *map(detached, (w_k, pe_k, w_v, gates)),
             *cache.pools, *batch, config=cache.config)
    cache.advance(seq_ids, new_tokens)
    return o


def nsa_prefill(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Union[Tensor, Sequence[int]], cache: NsaCache,
                seq_ids: Sequence[Hashable], *, gates: Tensor, w_k: Optional[Tensor] = None,
                w_v: Optional[Tensor] = None, pe_k: Optional[Tensor] = None,
                config: Optional[NsaConfig] = None) -> Tensor:
    """nsa_attention for new tokens appended to sequences held in `cache` (chunked prefill, prefix
    reuse): o [N, Hq, Dv], each new token attending to its sequence's cached tokens and the chunk
    causally, equal to the rows of nsa_attention over the whole sequences.

    q, k, v, gates: the new tokens' rows (pre-RoPE), packed by `cu_seqlens` [len(seq_ids) + 1]
    (any count per sequence, 0 included); sequence i of the chunk is appended to cache sequence
    seq_ids[i]. w_k, w_v, pe_k, config: the layer's, as nsa_attention takes them (config: the
    cache's; None means the cache's). The call hands out the pages the sequences grow into (an
    error naming num_pages when the cache is full), writes the new keys, values, compressed tokens
    and key tail into the cache and advances the sequences' lengths. It reads cu_seqlens on the
    host. Not differentiable.
    """
    return _cache_call("nsa_prefill", q, k, v, cu_seqlens, cache, seq_ids, gates, w_k, w_v, pe_k, config)


def nsa_decode(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Union[Tensor, Sequence[int]], cache: NsaCache,
               seq_ids: Sequence[Hashable], *, gates: Tensor, w_k: Optional[Tensor] = None,
               w_v: Optional[Tensor] = None, pe_k: Optional[Tensor] = None,
               config: Optional[NsaConfig] = None) -> Tensor:
    """nsa_prefill for 1..MAX_DECODE_TOKENS (8) new tokens per sequence, ragged across the batch
    (0: the sequence is skipped): one decode step, or the draft tokens of speculative decoding,
    each with its own selection (NsaCache.truncate drops the rejected ones afterwards)."""
    return _cache_call("nsa_decode", q, k, v, cu_seqlens, cache, seq_ids, gates, w_k, w_v, pe_k, config)
