"""Hyperparameters of an NSA layer (docs/semantics.md section 0), mirroring fsa::NsaConfig in config.hpp.

The ops take them as plain scalars named after the attributes here, nested configs flattened with
'_' (`rope.theta` -> `rope_theta`): fsa/_schema.py fills an op's arguments from a config by those
names, and the tests check that the fields and their defaults are the schema's.
"""
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class RopeConfig:
    """GPT-NeoX rotate-half RoPE with optional llama3 frequency scaling (docs/semantics.md section 2)."""

    enabled: bool = True
    theta: float = 10000.0
    llama3_scaling: bool = False
    llama3_factor: float = 8.0
    llama3_low_freq_factor: float = 1.0
    llama3_high_freq_factor: float = 4.0
    llama3_original_max_position: int = 8192


@dataclass(frozen=True)
class NsaConfig:
    """l, s, B, K, I, L, w and the modes of the layer; the C++ API validates them."""

    cmp_len: int = 32  # l: compression window
    cmp_stride: int = 16  # s: compression stride
    block_size: int = 64  # B: selection block, 32, 64 or 128
    topk: int = 16  # K: selected blocks per query, forced ones included
    init_blocks: int = 1  # I: leading blocks always selected
    local_blocks: int = 2  # L: trailing blocks always selected
    window: int = 512  # w: sliding window, keys [t - w, t]
    scale: Optional[float] = None  # softmax scale; None means 1/sqrt(Dqk)
    compression: str = "linear"  # "linear" (learned projection) or "mean"
    aggregation: str = "group_sum"  # "group_sum" (NSA paper) or "first_head"
    rope: RopeConfig = field(default_factory=RopeConfig)


def max_compressed_tokens(total_tokens, cmp_stride: int):
    """Rows of a compressed tensor of a packed batch of `total_tokens` tokens, from shapes alone.

    Same bound as fsa::max_compressed_tokens (config.hpp), written here so that fake tensors can use
    it on symbolic sizes; the opcheck tests compare fake and real output shapes.
    """
    return total_tokens // cmp_stride
