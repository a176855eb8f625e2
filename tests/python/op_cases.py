"""One set of valid arguments per op of torch.ops.fsa (forward and backward), on fresh random
inputs, for the generic checks (opcheck, gradcheck) and the GPU runs. Each op's scalars come from
the config by name (fsa._schema.op_args)."""
import torch

import fsa
import naive_nsa
from problems import SMALL, make_problem, random_topk
from fsa._schema import op_args

ops = torch.ops.fsa


def _grad_like(t):
    return torch.randn_like(t)


def op_cases(lengths, dtype=torch.float64, heads_q=4, heads_kv=2, dim_qk=8, dim_v=6, config=SMALL):
    """{name: (op, args, differentiable argument positions)} for every op."""
    p = make_problem(lengths=lengths, heads_q=heads_q, heads_kv=heads_kv, dim_qk=dim_qk, dim_v=dim_v, config=config,
                     dtype=dtype)
    l, s = config.cmp_len, config.cmp_stride
    cu, cu_cmp = p.cu_seqlens, p.cu_cmp

    def case(name, *leading, differentiable=(), **options):
        op_name = name.removesuffix("_mean").removesuffix("_compressed").removesuffix("_unplanned")  # variants
        return getattr(ops, op_name), op_args(op_name, *leading, config=config, **options), differentiable

    with torch.no_grad():
        k_cmp = naive_nsa.compress(p.k.double(), cu, p.w_k.double(), p.pe_k.double(), l, s).to(dtype)
        v_cmp = naive_nsa.compress(p.v.double(), cu, p.w_v.double(), None, l, s).to(dtype)
    topk = random_topk(heads_kv, cu, width=4, block_size=config.block_size)
    slc_options = dict(path="auto", dense_threshold=0, deterministic=False, workspace_cap=None)
    plan = ops.slc_plan(*op_args("slc_plan", p.q, p.k, p.v, topk, cu, config=config, **slc_options))
    o_cmp, lse_cmp = ops.cmp_attn_forward(*op_args("cmp_attn_forward", p.q, k_cmp, v_cmp, cu, cu_cmp, config=config))
    o_slc, lse_slc = ops.slc_attn_forward(*op_args("slc_attn_forward", p.q, p.k, p.v, topk, cu, plan, config=config,
                                                   **slc_options))
    o_swa, lse_swa = ops.swa_forward(*op_args("swa_forward", p.q, p.k, p.v, cu, config=config))
    layer = (p.q, p.k, p.v, cu, p.w_k, p.pe_k, p.w_v, p.gates)
    layer_options = dict(workspace_cap=1 << 30)  # not the default: the fakes and autograd must pass it on
    _, saved = ops.nsa_forward(*op_args("nsa_forward", *layer, config=config, **layer_options))

    # The cache calls: a prefill of the whole problem into a fresh cache, then a decode step of
    # 3, 8, 1 and 0 tokens onto a cache holding it. The cases leave cache_seqlens where it is, so
    # running one again rewrites the same rows with the same values.
    def cache_for(problem):
        cache = fsa.NsaCache(config, heads_kv, dim_qk, dim_v, max_seqs=len(lengths) + 1, num_pages=24,
                             page_size=config.block_size, dtype=dtype)
        seq_ids = [cache.add_sequence() for _ in lengths]
        return cache, seq_ids

    def cache_case(name, problem, cache, seq_ids):
        new_tokens = (problem.cu_seqlens[1:] - problem.cu_seqlens[:-1]).tolist()
        tensors = (problem.q, problem.k, problem.v, problem.cu_seqlens, problem.w_k, problem.pe_k, problem.w_v,
                   problem.gates)
        return case(name, *tensors, *cache.pools, *cache.batch(seq_ids, new_tokens))

    prefill_cache, prefill_ids = cache_for(p)
    decode_cache, decode_ids = cache_for(p)
    fsa.nsa_prefill(p.q, p.k, p.v, cu, decode_cache, decode_ids, gates=p.gates, w_k=p.w_k, w_v=p.w_v, pe_k=p.pe_k)
    step = make_problem(lengths=(3, 8, 1, 0)[:len(lengths)], heads_q=heads_q, heads_kv=heads_kv, dim_qk=dim_qk,
                        dim_v=dim_v, config=config, dtype=dtype)
    step.w_k, step.w_v, step.pe_k = p.w_k, p.w_v, p.pe_k  # the layer's parameters

    return {
        "nsa_prefill": cache_case("nsa_prefill", p, prefill_cache, prefill_ids),
        "nsa_decode": cache_case("nsa_decode", step, decode_cache, decode_ids),
        "compressed_cu_seqlens": case("compressed_cu_seqlens", cu),
        "compress_forward": case("compress_forward", p.k, cu, cu_cmp, p.w_k, p.pe_k, differentiable=(0, 3, 4)),
        "compress_forward_mean": case("compress_forward_mean", p.v, cu, cu_cmp, None, None, differentiable=(0,)),
        "compress_backward": case("compress_backward", p.k, cu, cu_cmp, p.w_k, p.pe_k, _grad_like(k_cmp)),
        "rope_forward": case("rope_forward", p.q, cu, 1, differentiable=(0,)),
        "rope_forward_compressed": case("rope_forward_compressed", k_cmp, cu_cmp, s, differentiable=(0,)),
        "rope_backward": case("rope_backward", p.q, cu, 1),
        "cmp_attn_forward": case("cmp_attn_forward", p.q, k_cmp, v_cmp, cu, cu_cmp, differentiable=(0, 1, 2)),
        "cmp_attn_backward": case("cmp_attn_backward", p.q, k_cmp, v_cmp, cu, cu_cmp, o_cmp, lse_cmp,
                                  _grad_like(o_cmp)),
        "select_blocks": case("select_blocks", p.q, k_cmp, lse_cmp, cu, cu_cmp),
        "slc_plan": case("slc_plan", p.q, p.k, p.v, topk, cu, **slc_options),
        "slc_attn_forward": case("slc_attn_forward", p.q, p.k, p.v, topk, cu, plan, differentiable=(0, 1, 2),
                                 **slc_options),
        "slc_attn_forward_unplanned": case("slc_attn_forward_unplanned", p.q, p.k, p.v, topk, cu, None,
                                           differentiable=(0, 1, 2), **slc_options),
        "slc_attn_backward": case("slc_attn_backward", p.q, p.k, p.v, topk, cu, plan, o_slc, lse_slc,
                                  _grad_like(o_slc), **slc_options),
        "swa_forward": case("swa_forward", p.q, p.k, p.v, cu, differentiable=(0, 1, 2)),
        "swa_backward": case("swa_backward", p.q, p.k, p.v, cu, o_swa, lse_swa, _grad_like(o_swa)),
        "combine_forward": case("combine_forward", p.gates, o_cmp, o_slc, o_swa, differentiable=(0, 1, 2, 3)),
        "combine_backward": case("combine_backward", p.gates, o_cmp, o_slc, o_swa, _grad_like(o_cmp)),
        "nsa_forward": case("nsa_forward", *layer, differentiable=(0, 1, 2, 4, 5, 6, 7), **layer_options),
        "nsa_backward": case("nsa_backward", *layer, saved, _grad_like(o_cmp), **layer_options),
    }


ALL_OPS = sorted(op_cases((40, 3)).keys())
