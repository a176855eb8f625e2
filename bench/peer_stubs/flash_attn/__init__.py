"""Stand-in for FA2's `flash_attn` package on fsa's sliding-window kernels (see ../README.md and
../_fsa_window.py): flash_attn_func (batch-first) and flash_attn_varlen_func, both differentiable
through fsa's autograd formula. Only causal sliding-window (or dense causal) attention is served.
It has no `flash_attn_interface` submodule and no `flash_attn_2_cuda`, so code that needs FA2's
internals finds it missing and takes another path."""
import torch

from _fsa_window import USAGE, _unsupported, check_offsets, config_for, differentiable

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "USAGE"]
__version__ = "0.0.0+fsa-window-stub"
FSA_STUB = True


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    if dropout_p or softcap or alibi_slopes is not None or return_attn_probs or block_table is not None:
        _unsupported("dropout / softcap / alibi / return_attn_probs / block_table")
    cu = check_offsets(cu_seqlens_q, cu_seqlens_k)
    config = config_for(window_size, causal, softmax_scale, max_seqlen_k or q.shape[0], q.shape[-1])
    return differentiable(q, k, v, cu, config)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q [B, T, Hq, D], k, v [B, T, Hkv, D]: the B sequences packed as rows, one call."""
    if dropout_p or softcap or alibi_slopes is not None or return_attn_probs:
        _unsupported("dropout / softcap / alibi / return_attn_probs")
    b, t = q.shape[0], q.shape[1]
    if k.shape[1] != t:
        _unsupported("different query and key lengths")
    cu = torch.arange(0, (b + 1) * t, t, dtype=torch.int32, device=q.device)
    config = config_for(window_size, causal, softmax_scale, t, q.shape[-1])
    o = differentiable(q.reshape(b * t, *q.shape[2:]), k.reshape(b * t, *k.shape[2:]),
                       v.reshape(b * t, *v.shape[2:]), cu, config)
    return o.view(b, t, *o.shape[1:])
