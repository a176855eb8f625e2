"""fsa: Native Sparse Attention for PyTorch (ops in torch.ops.fsa, functional API, module).

Every op runs on the CPU reference backend of the C++ library and, where a CUDA kernel exists,
on the GPU; an op without a CUDA kernel raises NotImplementedError on CUDA tensors.
"""
from . import _autograd, _fake  # noqa: F401  (registrations)
from ._library import CUDA_DISPATCH, ops
from .config import NsaConfig, RopeConfig
from .functional import (
    combine,
    compress,
    compressed_attention,
    compressed_cu_seqlens,
    nsa_attention,
    rope,
    select_blocks,
    selected_attention,
    sliding_window_attention,
)
from .module import NativeSparseAttention

__version__ = "0.1.0"

__all__ = [
    "CUDA_DISPATCH",
    "NativeSparseAttention",
    "NsaConfig",
    "RopeConfig",
    "combine",
    "compress",
    "compressed_attention",
    "compressed_cu_seqlens",
    "nsa_attention",
    "ops",
    "rope",
    "select_blocks",
    "selected_attention",
    "sliding_window_attention",
]
