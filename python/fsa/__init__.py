"""fsa: Native Sparse Attention for PyTorch (ops in torch.ops.fsa, functional API, module).

Every op runs on the CPU reference backend of the C++ library for CPU tensors and on the CUDA
kernels for CUDA tensors; a shape the kernels do not serve raises NotImplementedError.
"""
from . import _autograd, _fake  # noqa: F401  (registrations)
from . import distributed  # noqa: F401  (fsa.distributed: context parallelism)
from ._library import CUDA_DISPATCH, ops
from .cache import MAX_DECODE_TOKENS, CacheBatch, NsaCache
from .config import NsaConfig, RopeConfig
from .functional import (
    combine,
    compress,
    compressed_attention,
    compressed_cu_seqlens,
    nsa_attention,
    nsa_decode,
    nsa_prefill,
    rope,
    select_blocks,
    selected_attention,
    selected_attention_plan,
    sliding_window_attention,
)
from .module import NativeSparseAttention

__version__ = "0.1.0"

__all__ = [
    "CUDA_DISPATCH",
    "CacheBatch",
    "MAX_DECODE_TOKENS",
    "NativeSparseAttention",
    "NsaCache",
    "NsaConfig",
    "RopeConfig",
    "combine",
    "compress",
    "compressed_attention",
    "compressed_cu_seqlens",
    "distributed",
    "nsa_attention",
    "nsa_decode",
    "nsa_prefill",
    "ops",
    "rope",
    "select_blocks",
    "selected_attention",
    "selected_attention_plan",
    "sliding_window_attention",
]
