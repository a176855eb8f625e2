"""Loads the compiled extension, which registers the `torch.ops.fsa` ops."""
import os

import torch

from . import _build_info

if torch.__version__ != _build_info.TORCH_VERSION:
    raise ImportError(
        f"fsa was compiled against torch {_build_info.TORCH_VERSION} but torch {torch.__version__} is "
        "installed; the C++ ABI of torch changes between versions: reinstall fsa "
        "(pip install --no-build-isolation .) with this torch"
    )

torch.ops.load_library(os.path.join(os.path.dirname(__file__), "_fsa_ops.so"))

ops = torch.ops.fsa
CUDA_DISPATCH = _build_info.CUDA_DISPATCH
