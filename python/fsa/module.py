"""NativeSparseAttention: the NSA layer as a torch module (docs/semantics.md section 8)."""
import math
from typing import Hashable, Optional, Sequence

import torch
from torch import nn

from .cache import NsaCache
from .config import NsaConfig
from .distributed import nsa_attention_cp
from .functional import check_workspace_cap, nsa_attention, nsa_decode, nsa_prefill


def _xavier_uniform_per_head(param: torch.Tensor) -> None:
    """xavier_uniform on each kv head's matrix [rows, cols]: the heads are independent maps, so
    the fans are those of one head, not of the stacked 3-D tensor."""
    rows, cols = param.shape[1], param.shape[2]
    bound = math.sqrt(6.0 / (rows + cols))
    with torch.no_grad():
        param.uniform_(-bound, bound)


class NativeSparseAttention(nn.Module):
    """y = W_o(combine(o_cmp, o_slc, o_swa)) on a packed varlen batch x [N, hidden_size].

    Projections q, k, v, o and the gate projection are bias-free linears (default torch init); the
    gates are sigmoid(x W_g^T), per head ([N, Hq, 3]) or shared over heads ([N, 3]). Compression
    parameters (linear: W_k [Hkv, l*Dqk, Dqk], W_v [Hkv, l*Dv, Dv]; both kinds: the key positional
    embedding PE [Hkv, l, Dqk]) are xavier-uniform initialised per kv head. RoPE follows
    config.rope.

    `workspace_cap` (bytes; None: the library's, 8 GiB) caps the GPU scratch of selected attention
    that grows with N * Hq * topk, forward and backward alike: longer batches run in query chunks,
    with the same results (fsa.nsa_attention). Workspaces and saved activations come from torch's
    allocator, so torch's memory statistics include them.

    Inference with a cache: forward(x, cu_seqlens, cache, seq_ids) takes x [N, hidden_size], the
    new tokens of the sequences seq_ids of `cache` (an NsaCache for this layer, see
    NsaCache.for_layer) packed by cu_seqlens, and returns their outputs, appending them to the
    cache (fsa.nsa_prefill); with decode=True every sequence brings at most MAX_DECODE_TOKENS (8)
    tokens and the step runs fsa.nsa_decode. Not differentiable.

    `process_group` (None: one process) runs the attention context-parallel over its ranks
    (fsa.distributed.nsa_attention_cp): x is then this rank's rows of the packed batch in the order
    of `cp_sharding`, cu_seqlens the whole batch's offsets, the same on every rank.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 head_dim_v: Optional[int] = None, config: NsaConfig = NsaConfig(), shared_gates: bool = False,
                 device=None, dtype=None, workspace_cap: Optional[int] = None, process_group=None,
                 cp_sharding: str = "auto"):
        super().__init__()
        self.workspace_cap = check_workspace_cap(workspace_cap)
        self.process_group, self.cp_sharding = process_group, cp_sharding
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        factory = {"device": device, "dtype": dtype}
        head_dim_v = head_dim if head_dim_v is None else head_dim_v
        self.config = config
        self.hidden_size = hidden_size
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim, self.head_dim_v = head_dim, head_dim_v
        self.shared_gates = shared_gates

        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False, **factory)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False, **factory)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim_v, bias=False, **factory)
        self.o_proj = nn.Linear(num_heads * head_dim_v, hidden_size, bias=False, **factory)
        self.gate_proj = nn.Linear(hidden_size, 3 if shared_gates else 3 * num_heads, bias=False, **factory)

        l = config.cmp_len
        if config.compression == "linear":
            self.w_k = nn.Parameter(torch.empty(num_kv_heads, l * head_dim, head_dim, **factory))
            self.w_v = nn.Parameter(torch.empty(num_kv_heads, l * head_dim_v, head_dim_v, **factory))
        elif config.compression == "mean":
            self.register_parameter("w_k", None)
            self.register_parameter("w_v", None)
        else:
            raise ValueError(f"config.compression: expected 'linear' or 'mean', got {config.compression!r}")
        self.pe_k = nn.Parameter(torch.empty(num_kv_heads, l, head_dim, **factory))
        self.reset_compression_parameters()

    def reset_compression_parameters(self) -> None:
        for param in (self.w_k, self.w_v, self.pe_k):
            if param is not None:
                _xavier_uniform_per_head(param)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Activated gates: [N, 3] when shared, else [N, Hq, 3] (last index: cmp, slc, swa)."""
        g = torch.sigmoid(self.gate_proj(x))
        return g if self.shared_gates else g.view(x.shape[0], self.num_heads, 3)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor, cache: Optional[NsaCache] = None,
                seq_ids: Optional[Sequence[Hashable]] = None, decode: bool = False) -> torch.Tensor:
        """x [N, hidden_size]: the batch's sequences packed one after another, sequence b in rows
        cu_seqlens[b] to cu_seqlens[b + 1] (int32 [nseq + 1]; see fsa.nsa_attention)."""
        self._check_layout(x)
        if cache is None and (seq_ids is not None or decode):
            raise ValueError("cache: seq_ids and decode=True need a cache (an fsa.NsaCache)")
        if cache is not None and seq_ids is None:
            raise ValueError("seq_ids: a forward with a cache needs the cache's ids of the sequences in x")
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim_v)
        if cache is not None:
            if self.process_group is not None:
                raise ValueError("cache: inference with a cache runs on one process (process_group must be None)")
            cached_call = nsa_decode if decode else nsa_prefill
            o = cached_call(q, k, v, cu_seqlens, cache, seq_ids, gates=self.gates(x), w_k=self.w_k, w_v=self.w_v,
                            pe_k=self.pe_k, config=self.config)
        elif self.process_group is None:
            o = nsa_attention(q, k, v, cu_seqlens, self.gates(x), self.w_k, self.w_v, self.pe_k, self.config,
                              workspace_cap=self.workspace_cap)
        else:
            o = nsa_attention_cp(q, k, v, cu_seqlens, self.gates(x), self.w_k, self.w_v, self.pe_k, self.config,
                                 group=self.process_group, sharding=self.cp_sharding,
                                 workspace_cap=self.workspace_cap)
        return self.o_proj(o.reshape(n, self.num_heads * self.head_dim_v))

    def _check_layout(self, x: torch.Tensor) -> None:
        """A padded batch [B, T, hidden] would otherwise fail deep inside with a reshape error."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a tensor [N, hidden_size={self.hidden_size}], got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"x: expected a packed varlen batch [N, hidden_size={self.hidden_size}] (the sequences "
                             f"one after another, with cu_seqlens marking where each starts), got shape "
                             f"{list(x.shape)}; a padded [B, T, hidden] batch must be packed first")
        if x.shape[1] != self.hidden_size:
            raise ValueError(f"x: expected [N, hidden_size={self.hidden_size}], got shape {list(x.shape)}")

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
                f"head_dim_v={self.head_dim_v}, shared_gates={self.shared_gates}, config={self.config}, "
                f"workspace_cap={self.workspace_cap}")
