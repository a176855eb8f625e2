"""One set of valid arguments per op of torch.ops.fsa (forward and backward), on fresh random
inputs, for the generic checks (opcheck, gradcheck) and the GPU runs."""
import torch

import fsa
import naive_nsa
from problems import SMALL, make_problem, random_topk
from fsa.config import layer_args, rope_args

ops = torch.ops.fsa


def _grad_like(t):
    return torch.randn_like(t)


def op_cases(lengths, dtype=torch.float64, heads_q=4, heads_kv=2, dim_qk=8, dim_v=6, config=SMALL):
    """{name: (op, args, differentiable argument positions)} for every op."""
    p = make_problem(lengths=lengths, heads_q=heads_q, heads_kv=heads_kv, dim_qk=dim_qk, dim_v=dim_v, config=config,
                     dtype=dtype)
    l, s, scale = config.cmp_len, config.cmp_stride, config.scale_arg
    cu, cu_cmp = p.cu_seqlens, p.cu_cmp
    with torch.no_grad():
        k_cmp = naive_nsa.compress(p.k.double(), cu, p.w_k.double(), p.pe_k.double(), l, s).to(dtype)
        v_cmp = naive_nsa.compress(p.v.double(), cu, p.w_v.double(), None, l, s).to(dtype)
    o_cmp, lse_cmp = ops.cmp_attn_forward(p.q, k_cmp, v_cmp, cu, cu_cmp, l, s, scale)
    topk = random_topk(heads_kv, cu, width=4, block_size=config.block_size)
    o_slc, lse_slc = ops.slc_attn_forward(p.q, p.k, p.v, topk, cu, config.block_size, scale)
    o_swa, lse_swa = ops.swa_forward(p.q, p.k, p.v, cu, config.window, scale)
    rope = rope_args(config.rope)
    layer = (p.q, p.k, p.v, cu, p.w_k, p.pe_k, p.w_v, p.gates)
    _, saved = ops.nsa_forward(*layer, *layer_args(config))
    return {
        "compressed_cu_seqlens": (ops.compressed_cu_seqlens, (cu, l, s), ()),
        "compress_forward": (ops.compress_forward, (p.k, cu, cu_cmp, p.w_k, p.pe_k, l, s), (0, 3, 4)),
        "compress_forward_mean": (ops.compress_forward, (p.v, cu, cu_cmp, None, None, l, s), (0,)),
        "compress_backward": (ops.compress_backward, (p.k, cu, cu_cmp, p.w_k, p.pe_k, _grad_like(k_cmp), l, s), ()),
        "rope_forward": (ops.rope_forward, (p.q, cu, 1) + rope, (0,)),
        "rope_forward_compressed": (ops.rope_forward, (k_cmp, cu_cmp, s) + rope, (0,)),
        "rope_backward": (ops.rope_backward, (p.q, cu, 1) + rope, ()),
        "cmp_attn_forward": (ops.cmp_attn_forward, (p.q, k_cmp, v_cmp, cu, cu_cmp, l, s, scale), (0, 1, 2)),
        "cmp_attn_backward": (ops.cmp_attn_backward, (p.q, k_cmp, v_cmp, cu, cu_cmp, o_cmp, lse_cmp,
                                                      _grad_like(o_cmp), l, s, scale), ()),
        "select_blocks": (ops.select_blocks, (p.q, k_cmp, lse_cmp, cu, cu_cmp, l, s, config.block_size, config.topk,
                                              config.init_blocks, config.local_blocks, scale, config.aggregation), ()),
        "slc_attn_forward": (ops.slc_attn_forward, (p.q, p.k, p.v, topk, cu, config.block_size, scale), (0, 1, 2)),
        "slc_attn_backward": (ops.slc_attn_backward, (p.q, p.k, p.v, topk, cu, o_slc, lse_slc, _grad_like(o_slc),
                                                      config.block_size, scale), ()),
        "swa_forward": (ops.swa_forward, (p.q, p.k, p.v, cu, config.window, scale), (0, 1, 2)),
        "swa_backward": (ops.swa_backward, (p.q, p.k, p.v, cu, o_swa, lse_swa, _grad_like(o_swa), config.window,
                                            scale), ()),
        "combine_forward": (ops.combine_forward, (p.gates, o_cmp, o_slc, o_swa), (0, 1, 2, 3)),
        "combine_backward": (ops.combine_backward, (p.gates, o_cmp, o_slc, o_swa, _grad_like(o_cmp)), ()),
        "nsa_forward": (ops.nsa_forward, layer + layer_args(config), (0, 1, 2, 4, 5, 6, 7)),
        "nsa_backward": (ops.nsa_backward, layer + (saved, _grad_like(o_cmp)) + layer_args(config), ()),
    }


ALL_OPS = sorted(op_cases((40, 3)).keys())
