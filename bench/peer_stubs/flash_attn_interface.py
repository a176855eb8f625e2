"""Stand-in for FA3's `flash_attn_interface` on fsa's sliding-window kernels (see README.md and
_fsa_window.py). Signatures follow the calls of the peers bench/peers.py times; only causal
sliding-window (or dense causal) varlen attention is served."""
from _fsa_window import USAGE, _unsupported, backward, check_offsets, config_for, differentiable, forward, write_into

__all__ = ["flash_attn_varlen_func", "_flash_attn_forward", "_flash_attn_backward", "flash_attn_with_kvcache", "USAGE"]
FSA_STUB = True


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                           seqused_q=None, seqused_k=None, softmax_scale=None, causal=False, qv=None,
                           q_descale=None, k_descale=None, v_descale=None, window_size=(-1, -1),
                           attention_chunk=0, softcap=0.0, num_splits=1, pack_gqa=None, deterministic=False,
                           sm_margin=0, return_attn_probs=False):
    for name, value in (("seqused_q", seqused_q), ("seqused_k", seqused_k), ("qv", qv)):
        if value is not None:
            _unsupported(name)
    if softcap:
        _unsupported("softcap")
    cu = check_offsets(cu_seqlens_q, cu_seqlens_k)
    config = config_for(window_size, causal, softmax_scale, max_seqlen_k or q.shape[0], q.shape[-1])
    return differentiable(q, k, v, cu, config)


def _flash_attn_forward(q, k, v, k_new=None, v_new=None, qv=None, out=None, cu_seqlens_q=None, cu_seqlens_k=None,
                        cu_seqlens_k_new=None, seqused_q=None, seqused_k=None, max_seqlen_q=None, max_seqlen_k=None,
                        page_table=None, kv_batch_idx=None, leftpad_k=None, rotary_cos=None, rotary_sin=None,
                        seqlens_rotary=None, q_descale=None, k_descale=None, v_descale=None, softmax_scale=None,
                        causal=False, window_size=(-1, -1), attention_chunk=0, softcap=0.0, rotary_interleaved=True,
                        scheduler_metadata=None, num_splits=1, pack_gqa=None, sm_margin=0, **unknown):
    """(out, softmax_lse, None, None): fsa's window forward; out, when given, receives the result."""
    for name, value in (("k_new", k_new), ("v_new", v_new), ("qv", qv), ("cu_seqlens_k_new", cu_seqlens_k_new),
                        ("seqused_q", seqused_q), ("seqused_k", seqused_k), ("page_table", page_table),
                        ("kv_batch_idx", kv_batch_idx), ("leftpad_k", leftpad_k), ("rotary_cos", rotary_cos)):
        if value is not None:
            _unsupported(name)
    if softcap or attention_chunk:
        _unsupported("softcap / attention_chunk")
    cu = check_offsets(cu_seqlens_q, cu_seqlens_k)
    config = config_for(window_size, causal, softmax_scale, max_seqlen_k or q.shape[0], q.shape[-1])
    o, lse = forward(q, k, v, cu, config)
    return write_into(out, o), lse, None, None


def _flash_attn_backward(dout, q, k, v, out, softmax_lse, cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None,
                         seqused_k=None, max_seqlen_q=None, max_seqlen_k=None, dq=None, dk=None, dv=None,
                         softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, deterministic=False,
                         sm_margin=0, **unknown):
    """Writes fsa's window backward into dq, dk, dv (allocated here when None); returns them."""
    if seqused_q is not None or seqused_k is not None:
        _unsupported("seqused_q / seqused_k")
    if softcap:
        _unsupported("softcap")
    cu = check_offsets(cu_seqlens_q, cu_seqlens_k)
    config = config_for(window_size, causal, softmax_scale, max_seqlen_k or q.shape[0], q.shape[-1])
    g_q, g_k, g_v = backward(q, k, v, cu, out, softmax_lse, dout, config)
    return write_into(dq, g_q), write_into(dk, g_k), write_into(dv, g_v)


def flash_attn_with_kvcache(*args, **kwargs):
    _unsupported("flash_attn_with_kvcache (decode with a paged cache)")
