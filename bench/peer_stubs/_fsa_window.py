"""Sliding-window causal attention for the flash-attn stand-ins, on this library's kernels.

Every function here computes with fsa's own window kernels (torch.ops.fsa.swa_forward /
swa_backward through fsa.functional and fsa._schema); none of it is flash-attn's code. The
semantics mapped (flash-attn's, as its callers use it -> fsa's, docs/semantics.md section 6):

* flash-attn's `window_size = (left, right)` with `causal=True`: query t attends keys
  [t - left, t] of its sequence; fsa's `NsaConfig.window = left` attends the same keys.
  `left < 0` (no window) is dense causal attention: fsa's window set to the longest sequence.
* flash-attn's softmax_lse of a varlen call is fp32 [Hq, total_q] in natural log; so is fsa's lse.
* q [total, Hq, D], k, v [total, Hkv, D] packed rows with int32 cu_seqlens: fsa's layout.

USAGE counts the calls, so that bench/peers.py can print that a peer ran through this module.
"""
import torch

import fsa
from fsa._schema import call

USAGE = {"forward": 0, "backward": 0, "buffers_adopted": 0, "buffers_copied": 0}


def _unsupported(what):
    raise NotImplementedError(f"bench/peer_stubs (flash-attn stand-in on fsa's window kernel): {what} is not supported")


def config_for(window_size, causal, softmax_scale, max_seqlen, head_dim):
    """fsa.NsaConfig for flash-attn's (window_size, causal, softmax_scale)."""
    if not causal:
        _unsupported("causal=False")
    left, right = (int(window_size[0]), int(window_size[1])) if window_size is not None else (-1, -1)
    if right > 0:
        _unsupported(f"a right window of {right}")
    window = left if left >= 0 else max(int(max_seqlen), 1)
    scale = float(softmax_scale) if softmax_scale is not None else head_dim ** -0.5
    return fsa.NsaConfig(window=window, scale=scale)


def check_offsets(cu_seqlens_q, cu_seqlens_k):
    if cu_seqlens_q is None:
        _unsupported("cu_seqlens_q=None")
    if cu_seqlens_k is not None and cu_seqlens_k is not cu_seqlens_q and not torch.equal(cu_seqlens_q, cu_seqlens_k):
        _unsupported("different query and key offsets")
    return cu_seqlens_q if cu_seqlens_q.dtype == torch.int32 else cu_seqlens_q.to(torch.int32)


def forward(q, k, v, cu_seqlens, config):
    """(o, lse) without autograd (the FA3-style internal forward)."""
    USAGE["forward"] += 1
    with torch.no_grad():
        return call("swa_forward", q, k, v, cu_seqlens, config=config)


def backward(q, k, v, cu_seqlens, o, lse, d_o, config):
    USAGE["backward"] += 1
    with torch.no_grad():
        return call("swa_backward", q, k, v, cu_seqlens, o, lse, d_o.contiguous(), config=config)


def differentiable(q, k, v, cu_seqlens, config):
    """o through fsa's autograd formula (the FA2-style public functions)."""
    USAGE["forward"] += 1
    o, _ = fsa.sliding_window_attention(q, k, v, cu_seqlens, config)
    return o


def write_into(dst, src):
    """Puts src into the caller's buffer dst: dst takes src's storage when it is a whole,
    contiguous, freshly allocated tensor of the same kind (no copy), else src is copied."""
    if dst is None:
        return src
    whole = (dst.shape == src.shape and dst.dtype == src.dtype and dst.device == src.device
             and dst.is_contiguous() and src.is_contiguous() and dst.storage_offset() == 0
             and dst.untyped_storage().nbytes() == dst.numel() * dst.element_size() and not dst.requires_grad)
    if whole:
        try:
            dst.set_(src)
            USAGE["buffers_adopted"] += 1
            return dst
        except RuntimeError:
            pass
    dst.copy_(src)
    USAGE["buffers_copied"] += 1
    return dst
