"""Prints what CMake needs to build against the installed torch, one item per line:
version, include dirs (comma-separated), library dir, _GLIBCXX_USE_CXX11_ABI, CUDA version or none.
"""
import os

import torch

torch_dir = os.path.dirname(torch.__file__)
include_dir = os.path.join(torch_dir, "include")
include_dirs = [include_dir, os.path.join(include_dir, "torch", "csrc", "api", "include")]
print(torch.__version__)
print(",".join(d for d in include_dirs if os.path.isdir(d)))
print(os.path.join(torch_dir, "lib"))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(torch.version.cuda or "none")
