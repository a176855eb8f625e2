"""Random packed-varlen problems for the tests: fresh random inputs on every call (docs/semantics.md section 10)."""
import math
from dataclasses import dataclass, replace
from typing import Optional

import torch

import fsa
import naive_nsa

# Small hyperparameters that still exercise every rule: several compressed tokens per block
# (l=8, s=4, B=32), a free top-k choice once a query is past block 2 (K=3, I=1, L=1), a window
# shorter than the sequences.
SMALL = fsa.NsaConfig(cmp_len=8, cmp_stride=4, block_size=32, topk=3, init_blocks=1, local_blocks=1, window=12,
                      rope=fsa.RopeConfig(theta=500.0))
# Sequence lengths: one past 4 blocks with a ragged last block, one shorter than a block, one
# shorter than a compression window, and an empty one.
LENGTHS = (130, 37, 5, 0)
TINY_LENGTHS = (70, 5)  # for finite differences


@dataclass
class Problem:
    config: fsa.NsaConfig
    cu_seqlens: torch.Tensor
    cu_cmp: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    w_k: Optional[torch.Tensor]
    w_v: Optional[torch.Tensor]
    pe_k: torch.Tensor
    gates: torch.Tensor

    @property
    def scale(self):
        return self.config.scale or 1 / math.sqrt(self.q.shape[2])

    def to(self, device=None, dtype=None):
        def move(t):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return replace(self, **{f: move(getattr(self, f)) for f in
                                ("cu_seqlens", "cu_cmp", "q", "k", "v", "w_k", "w_v", "pe_k", "gates")})


def cu_seqlens_of(lengths, device="cpu"):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=device)


def make_problem(lengths=LENGTHS, heads_q=4, heads_kv=2, dim_qk=8, dim_v=6, config=SMALL, dtype=torch.float64,
                 shared_gates=False, generator_seed=None):
    gen = torch.Generator().manual_seed(generator_seed) if generator_seed is not None else None
    n = sum(lengths)
    l = config.cmp_len

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * std).to(dtype)

    cu = cu_seqlens_of(lengths)
    linear = config.compression == "linear"
    gates_shape = (n, 3) if shared_gates else (n, heads_q, 3)
    return Problem(
        config=config,
        cu_seqlens=cu,
        cu_cmp=naive_nsa.cu_cmp_of(cu, config.cmp_len, config.cmp_stride),
        q=randn(n, heads_q, dim_qk),
        k=randn(n, heads_kv, dim_qk),
        v=randn(n, heads_kv, dim_v),
        # Scaled like xavier so that compressed keys stay O(1) and the softmax is not saturated.
        w_k=randn(heads_kv, l * dim_qk, dim_qk, std=1 / math.sqrt(l * dim_qk)) if linear else None,
        w_v=randn(heads_kv, l * dim_v, dim_v, std=1 / math.sqrt(l * dim_v)) if linear else None,
        pe_k=randn(heads_kv, l, dim_qk, std=0.5),
        gates=torch.sigmoid(randn(*gates_shape)),
    )


def random_topk(heads_kv, cu_seqlens, width, block_size, gen=None):
    """Arbitrary producer's topk_idx (docs/semantics.md section 5's input contract): valid, -1, future,
    out-of-range and duplicate entries in any order."""
    n = int(cu_seqlens[-1])
    topk = torch.randint(-1, 6, (heads_kv, n, width), generator=gen, dtype=torch.int32)
    topk[:, :, 0] = topk[:, :, 1]  # duplicates
    return topk


def relative_error(actual, expected):
    return float((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30))
