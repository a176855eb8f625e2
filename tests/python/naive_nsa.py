"""A pure-PyTorch composition of the NSA spec (docs/semantics.md sections 1-8), written from the spec alone:
dense masks, Python loops over sequences and tokens, differentiable by autograd. Small sizes only.
It is the independent computation the tests compare the library against.
"""
import math

import torch


def bounds(cu):
    cu = [int(c) for c in cu]
    return list(zip(cu[:-1], cu[1:]))


def n_cmp(n, l, s):
    return (n - l) // s + 1 if n >= l else 0


def cu_cmp_of(cu_seqlens, l, s):
    out = [0]
    for start, end in bounds(cu_seqlens):
        out.append(out[-1] + n_cmp(end - start, l, s))
    return torch.tensor(out, dtype=torch.int32)


# ---- section 1: compression --------------------------------------------------------------------

def compress(x, cu_seqlens, weight, pos_emb, l, s):
    """x [N, H, D] -> [N // s, H, Dout]; rows past the last compressed token are zero."""
    n_total, heads, dim = x.shape
    out_dim = weight.shape[2] if weight is not None else dim
    rows = []
    for start, end in bounds(cu_seqlens):
        for i in range(n_cmp(end - start, l, s)):
            window = x[start + i * s: start + i * s + l]  # [l, H, D]
            if pos_emb is not None:
                window = window + pos_emb.transpose(0, 1)
            if weight is None:
                rows.append(window.mean(0))
            else:
                w = weight.view(heads, l, dim, out_dim)
                rows.append(torch.einsum("jhd,hjde->he", window, w))
    pad = n_total // s - len(rows)
    zeros = x.new_zeros(pad, heads, out_dim)
    return torch.cat([torch.stack(rows), zeros]) if rows else zeros


# ---- section 2: rotary embedding ---------------------------------------------------------------

def rope_frequencies(dim, rope):
    freqs = []
    for i in range(dim // 2):
        w = rope.theta ** (-2.0 * i / dim)
        if rope.llama3_scaling:
            wavelength = 2 * math.pi / w
            original = rope.llama3_original_max_position
            low, high = rope.llama3_low_freq_factor, rope.llama3_high_freq_factor
            if wavelength > original / low:
                w = w / rope.llama3_factor
            elif wavelength >= original / high:
                smooth = (original / wavelength - low) / (high - low)
                w = (1 - smooth) * w / rope.llama3_factor + smooth * w
        freqs.append(w)
    # The spec computes angles in fp32.
    return torch.tensor(freqs, dtype=torch.float64).float()


def rope(x, cu, position_stride, rope_config):
    rows, _, dim = x.shape
    half = dim // 2
    positions = torch.zeros(rows, dtype=torch.float32)
    rotated = torch.zeros(rows, dtype=torch.bool)
    for start, end in bounds(cu):
        positions[start:end] = torch.arange(end - start, dtype=torch.float32) * position_stride
        rotated[start:end] = True
    angles = (positions[:, None] * rope_frequencies(dim, rope_config)[None, :]).to(x.dtype)  # fp32 product
    cos, sin = torch.cos(angles)[:, None, :], torch.sin(angles)[:, None, :]
    first, second = x[..., :half], x[..., half:]
    y = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
    return torch.where(rotated[:, None, None], y, x)


# ---- attention with a dense mask (sections 3, 5, 6) --------------------------------------------

def masked_attention(q, k, v, mask, scale):
    """q [n, Hq, D], k/v [m, Hkv, D], mask [Hq, n, m] -> o [n, Hq, Dv], lse [Hq, n] (-inf when empty)."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,mhd->hnm", q, k) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    safe_lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    p = torch.exp(scores - safe_lse[..., None])
    return torch.einsum("hnm,mhd->nhd", p, v), lse


def _per_sequence(q, kv_bounds_of, mask_of, k, v, cu_seqlens, scale):
    """Attention of each sequence's queries over its keys (the sequences cover q's rows in order)."""
    o_blocks, lse_blocks = [], []
    for b, (start, end) in enumerate(bounds(cu_seqlens)):
        if end == start:
            continue
        k_start, k_end = kv_bounds_of(b, start, end)
        mask = mask_of(b, start, end, k_end - k_start)
        o, lse = masked_attention(q[start:end], k[k_start:k_end], v[k_start:k_end], mask, scale)
        o_blocks.append(o)
        lse_blocks.append(lse)
    return torch.cat(o_blocks), torch.cat(lse_blocks, dim=1)


def compressed_attention(q, k_cmp, v_cmp, cu_seqlens, cu_cmp, l, s, scale):
    cmp = bounds(cu_cmp)
    heads_q = q.shape[1]

    def mask_of(b, start, end, m):
        t = torch.arange(end - start)[:, None]
        i = torch.arange(m)[None, :]
        return (i * s + l - 1 <= t).expand(heads_q, -1, -1)

    return _per_sequence(q, lambda b, start, end: cmp[b], mask_of, k_cmp, v_cmp, cu_seqlens, scale)


def selection_mask(topk_row_sets, n, block_size, heads_q, heads_kv):
    """[Hq, n, n] union-of-blocks mask from per (kv group, token) sets of block indices."""
    group = heads_q // heads_kv
    mask = torch.zeros(heads_kv, n, n, dtype=torch.bool)
    for g in range(heads_kv):
        for t in range(n):
            for j in topk_row_sets[g][t]:
                if 0 <= j <= t // block_size and j < math.ceil(n / block_size):
                    mask[g, t, j * block_size: min((j + 1) * block_size, n, t + 1)] = True
    return mask.repeat_interleave(group, dim=0)


def selected_attention(q, k, v, topk_idx, cu_seqlens, block_size, scale):
    heads_q, heads_kv = q.shape[1], k.shape[1]

    def mask_of(b, start, end, m):
        sets = [[set(topk_idx[g, t].tolist()) for t in range(start, end)] for g in range(heads_kv)]
        return selection_mask(sets, end - start, block_size, heads_q, heads_kv)

    return _per_sequence(q, lambda b, start, end: (start, end), mask_of, k, v, cu_seqlens, scale)


def sliding_window_attention(q, k, v, cu_seqlens, window, scale):
    heads_q = q.shape[1]

    def mask_of(b, start, end, m):
        t = torch.arange(end - start)[:, None]
        p = torch.arange(m)[None, :]
        return ((p <= t) & (p >= t - window)).expand(heads_q, -1, -1)

    return _per_sequence(q, lambda b, start, end: (start, end), mask_of, k, v, cu_seqlens, scale)


# ---- section 4: block selection ----------------------------------------------------------------

def select_blocks(q, k_cmp, lse_cmp, cu_seqlens, cu_cmp, config, scale):
    l, s, B, K = config.cmp_len, config.cmp_stride, config.block_size, config.topk
    heads_q, heads_kv = q.shape[1], k_cmp.shape[1]
    group = heads_q // heads_kv
    topk = torch.full((heads_kv, q.shape[0], K), -1, dtype=torch.int32)
    for (start, end), (c_start, c_end) in zip(bounds(cu_seqlens), bounds(cu_cmp)):
        for t in range(end - start):
            row = start + t
            bq = t // B
            candidates = list(range(bq + 1))
            forced = {j for j in candidates if j < config.init_blocks or j > bq - config.local_blocks}
            for g in range(heads_kv):
                heads = [g * group] if config.aggregation == "first_head" else range(g * group, (g + 1) * group)
                pg = torch.zeros(c_end - c_start, dtype=torch.float64)
                for h in heads:
                    for i in range(c_end - c_start):
                        if i * s + l - 1 <= t:
                            logit = scale * float(q[row, h].double() @ k_cmp[c_start + i, g].double())
                            pg[i] += math.exp(logit - float(lse_cmp[h, row]))
                score = {}
                for j in candidates:
                    score[j] = sum(max(0, min(i * s + l, (j + 1) * B) - max(i * s, j * B)) / s * float(pg[i])
                                   for i in range(c_end - c_start))
                free = sorted((j for j in candidates if j not in forced), key=lambda j: (-score[j], j))
                chosen = sorted(forced | set(free[: min(K, bq + 1) - len(forced)]))
                topk[g, row, : len(chosen)] = torch.tensor(chosen, dtype=torch.int32)
    return topk


# ---- section 7: gated combination, and the layer ------------------------------------------------

def combine(gates, o_cmp, o_slc, o_swa):
    g = gates if gates.dim() == 3 else gates[:, None, :]
    return g[..., 0:1] * o_cmp + g[..., 1:2] * o_slc + g[..., 2:3] * o_swa


def nsa_attention(q, k, v, cu_seqlens, gates, w_k, w_v, pe_k, config):
    l, s = config.cmp_len, config.cmp_stride
    scale = config.scale or 1 / math.sqrt(q.shape[2])
    cu_cmp = cu_cmp_of(cu_seqlens, l, s)
    k_cmp = compress(k, cu_seqlens, w_k, pe_k, l, s)
    v_cmp = compress(v, cu_seqlens, w_v, None, l, s)
    if config.rope.enabled:
        q = rope(q, cu_seqlens, 1, config.rope)
        k = rope(k, cu_seqlens, 1, config.rope)
        k_cmp = rope(k_cmp, cu_cmp, s, config.rope)
    o_cmp, lse_cmp = compressed_attention(q, k_cmp, v_cmp, cu_seqlens, cu_cmp, l, s, scale)
    with torch.no_grad():
        topk = select_blocks(q, k_cmp, lse_cmp, cu_seqlens, cu_cmp, config, scale)
    o_slc, _ = selected_attention(q, k, v, topk, cu_seqlens, config.block_size, scale)
    o_swa, _ = sliding_window_attention(q, k, v, cu_seqlens, config.window, scale)
    return combine(gates, o_cmp, o_slc, o_swa)


def nsa_module(module, x, cu_seqlens):
    """NativeSparseAttention.forward per docs/semantics.md section 8, from the module's parameters."""
    n = x.shape[0]
    q = (x @ module.q_proj.weight.T).view(n, module.num_heads, module.head_dim)
    k = (x @ module.k_proj.weight.T).view(n, module.num_kv_heads, module.head_dim)
    v = (x @ module.v_proj.weight.T).view(n, module.num_kv_heads, module.head_dim_v)
    gates = torch.sigmoid(x @ module.gate_proj.weight.T)
    if not module.shared_gates:
        gates = gates.view(n, module.num_heads, 3)
    o = nsa_attention(q, k, v, cu_seqlens, gates, module.w_k, module.w_v, module.pe_k, module.config)
    return o.reshape(n, -1) @ module.o_proj.weight.T
