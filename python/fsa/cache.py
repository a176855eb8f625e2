"""NsaCache: the key/value cache of one NSA layer for inference with a cache (fsa/cache.hpp,
docs/inference.md), its pools allocated with torch, a host-side page allocator and the bookkeeping
of the sequences it holds.

The pools (what fsa.nsa_prefill and fsa.nsa_decode write):
  k_pages, v_pages          [num_pages, page_size, Hkv, D]: raw keys (rotated) and values
  k_cmp_pages, v_cmp_pages  [num_cmp_pages, cmp_page_size, Hkv, D]: compressed keys and values
  k_tail                    [max_seqs, tail_rows, Hkv, Dqk]: pre-RoPE keys of each slot's last tokens

Each sequence has a slot (its row of k_tail), its raw pages and compressed pages (handed out on
demand from free lists as it grows) and its length. `batch()` turns a list of sequence ids into
the tensors one call takes (block tables, cached lengths, slots) and `advance()` adds the new
tokens to the lengths; the functional calls do both. A model keeps one NsaCache per layer and adds
and frees its sequences in every layer's cache under the same ids.

Building the batch reads the lengths on the host and copies small tables to the device on every
call. A serving engine that replays a step from a CUDA graph instead keeps fixed-size device
tables for its maximum batch and advances cache_seqlens in place on the device after each step
(the C++ API takes the tables as they are); this class is the simple host-driven form of the same
bookkeeping.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, Hashable, List, NamedTuple, Optional, Sequence, Tuple

import torch

from ._schema import call
from .config import NsaConfig

# The most new tokens a sequence brings to one nsa_decode call: fsa::kMaxDecodeTokens
# (fsa/cache.hpp); tests/python/test_inference.py checks it against the C++ tail rows.
MAX_DECODE_TOKENS = 8


class CacheBatch(NamedTuple):
    """One call's tables (int32, on the cache's device), in the ops' argument order."""

    block_table: torch.Tensor  # [nseq, max_pages]: pool page of each sequence's j-th page (unused: 0)
    cmp_block_table: torch.Tensor  # [nseq, max_cmp_pages]: the same for the compressed pool
    cache_seqlens: torch.Tensor  # [nseq]: tokens already in the cache
    slots: torch.Tensor  # [nseq]: row of k_tail


@dataclass
class _Sequence:
    slot: int
    length: int = 0
    pages: List[int] = field(default_factory=list)
    cmp_pages: List[int] = field(default_factory=list)
    last_added: int = 0  # new tokens of the latest call (truncate may drop up to that many)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


class NsaCache:
    """The cache of one NSA layer for up to `max_seqs` sequences at once.

    config, num_kv_heads, head_dim, head_dim_v: the layer's (NsaCache.for_layer takes them from a
    NativeSparseAttention). num_pages: raw pages of `page_size` tokens (default 4 selection blocks;
    a multiple of config.block_size). num_cmp_pages: compressed pages of `cmp_page_size`
    compressed tokens (default page_size / s, and enough pages that the compressed pool never runs
    out before the raw one). dtype (default torch's) and device: the layer's activations'.
    layout: how the four page pools lie in memory: "token-major" (default; each page [rows, Hkv, D])
    or "head-major" (each page [Hkv, rows, D], a kv head's rows contiguous); the pools are
    [pages, rows, Hkv, D] views either way (head-major ones through their strides).
    """

    def __init__(self, config: NsaConfig, num_kv_heads: int, head_dim: int, head_dim_v: Optional[int] = None, *,
                 max_seqs: int, num_pages: int, page_size: Optional[int] = None, num_cmp_pages: Optional[int] = None,
                 cmp_page_size: Optional[int] = None, dtype: Optional[torch.dtype] = None, device=None,
                 layout: str = "token-major"):
        head_dim_v = head_dim if head_dim_v is None else head_dim_v
        if layout not in ("token-major", "head-major"):
            raise ValueError(f"layout: expected 'token-major' or 'head-major', got {layout!r}")
        self.layout = layout
        for value, name in ((num_kv_heads, "num_kv_heads"), (head_dim, "head_dim"), (head_dim_v, "head_dim_v"),
                            (max_seqs, "max_seqs"), (num_pages, "num_pages")):
            _positive_int(value, name)
        page_size = 4 * config.block_size if page_size is None else _positive_int(page_size, "page_size")
        if page_size % config.block_size != 0:
            raise ValueError(f"page_size: expected a multiple of config.block_size ({config.block_size}), so that "
                             f"a selected block never straddles two pages, got {page_size}")
        if cmp_page_size is None:
            cmp_page_size = max(1, page_size // config.cmp_stride)
        _positive_int(cmp_page_size, "cmp_page_size")
        self.config = config
        self.page_size, self.cmp_page_size = page_size, cmp_page_size
        self.max_seqs = max_seqs
        if num_cmp_pages is None:
            # The compressed tokens of all raw pages, plus each sequence's partly filled last page.
            num_cmp_pages = self.pages_needed(num_pages * page_size)[1] + max_seqs
        _positive_int(num_cmp_pages, "num_cmp_pages")
        self.tail_rows = self._sizes(0)[2]
        self.dtype = torch.get_default_dtype() if dtype is None else dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        factory = dict(dtype=self.dtype, device=self.device)
        shapes = {"k_pages": (num_pages, page_size, num_kv_heads, head_dim),
                  "v_pages": (num_pages, page_size, num_kv_heads, head_dim_v),
                  "k_cmp_pages": (num_cmp_pages, cmp_page_size, num_kv_heads, head_dim),
                  "v_cmp_pages": (num_cmp_pages, cmp_page_size, num_kv_heads, head_dim_v),
                  "k_tail": (max_seqs, self.tail_rows, num_kv_heads, head_dim)}
        for pool, shape in shapes.items():
            # Head-major page pools: allocated [pages, Hkv, rows, D], kept as their [pages, rows, Hkv, D] view.
            head_major = layout == "head-major" and pool != "k_tail"
            allocated = (shape[0], shape[2], shape[1], shape[3]) if head_major else shape
            try:
                tensor = torch.zeros(allocated, **factory)
                setattr(self, pool, tensor.transpose(1, 2) if head_major else tensor)
            except RuntimeError as e:
                # Only a failed allocation: torch.OutOfMemoryError on the GPU, the CPU allocator's own words.
                if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
                    raise
                nbytes = math.prod(shape) * torch.empty((), dtype=self.dtype).element_size()
                argument = "max_seqs" if pool == "k_tail" else "num_cmp_pages" if "cmp" in pool else "num_pages"
                raise MemoryError(f"{argument}: the cache's {pool} {list(shape)} needs {nbytes} bytes, which "
                                  f"{self.device} could not allocate") from e
        expected = self.pool_bytes()
        if sum(expected.values()) == 0:
            raise ValueError(f"config: the library takes no cache for this config, dtype {self.dtype} on "
                             f"{self.device.type} (fsa.nsa_attention with the same config and dtype names the "
                             f"field), config={config}")
        for name, nbytes in expected.items():
            pool = getattr(self, name)
            assert pool.numel() * pool.element_size() == nbytes, f"{name}: the C++ library expects {nbytes} bytes"

        self._free_pages = list(range(num_pages - 1, -1, -1))  # pop() hands out page 0 first
        self._free_cmp_pages = list(range(num_cmp_pages - 1, -1, -1))
        self._free_slots = list(range(max_seqs - 1, -1, -1))
        self._sequences: Dict[Hashable, _Sequence] = {}
        self._next_id = 0

    @classmethod
    def for_layer(cls, layer, **kwargs) -> "NsaCache":
        """A cache for NativeSparseAttention `layer`: its config, heads, head dims, dtype and device
        (from its parameters); kwargs as the constructor's (max_seqs, num_pages, ...)."""
        weight = layer.k_proj.weight
        kwargs.setdefault("dtype", weight.dtype)
        kwargs.setdefault("device", weight.device)
        return cls(layer.config, layer.num_kv_heads, layer.head_dim, layer.head_dim_v, **kwargs)

    # ---- sizes, from the C++ queries ------------------------------------------------------------

    def _sizes(self, tokens: int) -> Tuple[int, int, int]:
        return call("nsa_cache_pages", tokens, self.page_size, self.cmp_page_size, config=self.config)

    def pages_needed(self, tokens: int) -> Tuple[int, int]:
        """(raw pages, compressed pages) a sequence of `tokens` tokens occupies."""
        pages, cmp_pages, _ = self._sizes(tokens)
        return pages, cmp_pages

    def pool_bytes(self) -> Dict[str, int]:
        """Bytes of each pool, as the C++ library computes them from the shapes (fsa::nsa_cache_bytes)."""
        sizes = (self.k_pages.shape[2], self.k_pages.shape[3], self.v_pages.shape[3], self.k_pages.shape[0],
                 self.page_size, self.k_cmp_pages.shape[0], self.cmp_page_size, self.max_seqs, self.dtype,
                 self.device)
        names = ("k_pages", "v_pages", "k_cmp_pages", "v_cmp_pages", "k_tail")
        return dict(zip(names, call("nsa_cache_bytes", *sizes, config=self.config)))

    @property
    def pools(self) -> Tuple[torch.Tensor, ...]:
        """(k_pages, v_pages, k_cmp_pages, v_cmp_pages, k_tail), in the ops' argument order."""
        return self.k_pages, self.v_pages, self.k_cmp_pages, self.v_cmp_pages, self.k_tail

    @property
    def free_pages(self) -> int:
        return len(self._free_pages)

    @property
    def free_cmp_pages(self) -> int:
        return len(self._free_cmp_pages)

    # ---- sequences ------------------------------------------------------------------------------

    @property
    def sequences(self) -> Tuple[Hashable, ...]:
        """Ids of the sequences the cache holds, in the order they were added."""
        return tuple(self._sequences)

    def add_sequence(self, seq_id: Optional[Hashable] = None) -> Hashable:
        """Starts an empty sequence and returns its id: `seq_id` when given (the same id in every
        layer's cache), else the next int not yet given out. Takes a slot; pages come as the
        sequence grows."""
        if seq_id is None:
            while self._next_id in self._sequences:
                self._next_id += 1
            seq_id = self._next_id
            self._next_id += 1  # never reuse an id: a stale id then names no sequence
        elif seq_id in self._sequences:
            raise ValueError(f"seq_id: sequence {seq_id!r} is already in the cache")
        if not self._free_slots:
            raise RuntimeError(f"max_seqs: all {self.max_seqs} slots of the cache are in use "
                               "(free_sequence() a finished sequence first)")
        self._sequences[seq_id] = _Sequence(slot=self._free_slots.pop())
        return seq_id

    def free_sequence(self, seq_id: Hashable) -> None:
        """Ends sequence `seq_id`: its slot and pages go back to the free lists."""
        seq = self._sequence(seq_id, "seq_id")
        self._free_pages.extend(reversed(seq.pages))
        self._free_cmp_pages.extend(reversed(seq.cmp_pages))
        self._free_slots.append(seq.slot)
        del self._sequences[seq_id]

    def length(self, seq_id: Hashable) -> int:
        """Tokens of sequence `seq_id` in the cache."""
        return self._sequence(seq_id, "seq_id").length

    def truncate(self, seq_id: Hashable, length: int) -> None:
        """Keeps the first `length` tokens of sequence `seq_id` (speculative decoding: drop the
        rejected tail of the latest call). Only the latest call's tokens can be dropped, and only
        when it brought at most MAX_DECODE_TOKENS (fsa/cache.hpp: the key ring holds what the next
        compression windows need for that many); its pages stay with the sequence."""
        seq = self._sequence(seq_id, "seq_id")
        kept_from = seq.length - (seq.last_added if seq.last_added <= MAX_DECODE_TOKENS else 0)
        if isinstance(length, bool) or not isinstance(length, int) or not kept_from <= length <= seq.length:
            raise ValueError(f"length: expected an int in [{kept_from}, {seq.length}] for sequence {seq_id!r} "
                             f"(the latest call's tokens, when it brought at most {MAX_DECODE_TOKENS}), got {length!r}")
        seq.last_added -= seq.length - length
        seq.length = length

    def _sequence(self, seq_id: Hashable, name: str) -> _Sequence:
        try:
            return self._sequences[seq_id]
        except (KeyError, TypeError):
            raise KeyError(f"{name}: no sequence {seq_id!r} in the cache (add_sequence() starts one)") from None

    # ---- one call -------------------------------------------------------------------------------

    def batch(self, seq_ids: Sequence[Hashable], new_tokens: Sequence[int]) -> CacheBatch:
        """The tables of a call that appends new_tokens[i] tokens to sequence seq_ids[i]; first hands
        out the pages the sequences grow into (all or none: when a pool runs out nothing changes)."""
        seqs = [self._sequence(seq_id, "seq_ids") for seq_id in seq_ids]
        if len(set(map(id, seqs))) != len(seqs):
            raise ValueError(f"seq_ids: a sequence appears more than once in {list(seq_ids)}")
        if len(new_tokens) != len(seqs):
            raise ValueError(f"cu_seqlens: {len(new_tokens)} sequences of new tokens for {len(seqs)} seq_ids")
        grow = []
        for seq_id, seq, count in zip(seq_ids, seqs, new_tokens):
            if count < 0:
                raise ValueError(f"cu_seqlens: sequence {seq_id!r} gets {count} new tokens")
            pages, cmp_pages = self.pages_needed(seq.length + count)
            grow.append((max(0, pages - len(seq.pages)), max(0, cmp_pages - len(seq.cmp_pages))))
        need_pages, need_cmp = sum(g[0] for g in grow), sum(g[1] for g in grow)
        if need_pages > len(self._free_pages):
            raise RuntimeError(f"num_pages: the call needs {need_pages} more pages of {self.page_size} tokens, the "
                               f"cache has {len(self._free_pages)} free of {self.k_pages.shape[0]} (free finished "
                               "sequences or allocate a larger cache)")
        if need_cmp > len(self._free_cmp_pages):
            raise RuntimeError(f"num_cmp_pages: the call needs {need_cmp} more compressed pages, the cache has "
                               f"{len(self._free_cmp_pages)} free of {self.k_cmp_pages.shape[0]}")
        for seq, (pages, cmp_pages) in zip(seqs, grow):
            seq.pages.extend(self._free_pages.pop() for _ in range(pages))
            seq.cmp_pages.extend(self._free_cmp_pages.pop() for _ in range(cmp_pages))

        def table(rows):
            width = max([len(r) for r in rows], default=0)
            return torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.int32).view(len(rows), width)

        host = CacheBatch(table([s.pages for s in seqs]), table([s.cmp_pages for s in seqs]),
                          torch.tensor([s.length for s in seqs], dtype=torch.int32),
                          torch.tensor([s.slot for s in seqs], dtype=torch.int32))
        return CacheBatch(*(t.to(self.device) for t in host))

    def advance(self, seq_ids: Sequence[Hashable], new_tokens: Sequence[int]) -> None:
        """Adds new_tokens[i] to the length of sequence seq_ids[i], after a call wrote them."""
        for seq_id, count in zip(seq_ids, new_tokens):
            seq = self._sequence(seq_id, "seq_ids")
            seq.length += count
            seq.last_added = count

    def extra_repr(self) -> str:
        return (f"pages={self.k_pages.shape[0]}x{self.page_size}, cmp_pages={self.k_cmp_pages.shape[0]}x"
                f"{self.cmp_page_size}, max_seqs={self.max_seqs}, tail_rows={self.tail_rows}, "
                f"layout={self.layout}, dtype={self.dtype}, device={self.device}")

    def __repr__(self) -> str:
        return f"NsaCache({self.extra_repr()}, sequences={len(self._sequences)})"
