"""Branch by branch, the Triton NSA library's ops against ours on the same random inputs: why its
whole layer DISAGREES with `ours-matched` in bench/peers.py (bench/peers.md, "nsa-lib's check").

For one sequence at G 4 and 16 (mean compression, no RoPE, the defaults of bench/peers.py) it
prints the relative error of the compressed keys and values, the compressed branch's output and
lse (theirs in log2), the fraction of (kv head, token) rows whose sorted top-k lists are identical,
the selected branch's output with each side's own top-k and with theirs fed to ours, and the
window branch. Run on the device as bench/peers.md says for peers.py (our package installed, the
Triton NSA library in peers/, stubs for its window branch):

    python3 bench/nsa_lib_branches.py [--tokens 8192]
"""
import argparse
import math
import sys
import traceback
from pathlib import Path

import torch

import fsa

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (the peer loader and its stubs)

D, HKV, CMP_LEN, CMP_STRIDE, BLOCK, TOPK, WINDOW = 128, 4, 32, 16, 64, 16, 512


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    args = parser.parse_args()
    bench = peers.Bench(torch, fsa, argparse.Namespace(csv="/dev/null", no_stubs=False), ["layer"])
    flash_nsa = bench.peer("nsa-lib")
    from flash_nsa.modules.megatron_level_nsa import compress_kv_fwd
    from flash_nsa.ops.compress_attn import cmp_attn_fwd
    from flash_nsa.ops.select_attn import slc_attn_fwd
    from flash_nsa.ops.sliding_window_attention import swa_fwd
    from flash_nsa.ops.topk import slc_topk_indices
    from flash_nsa.utils import NSAHelper

    n, scale = args.tokens, D ** -0.5
    print(f"Triton NSA library {bench.versions.get('Triton NSA library')}, fsa {peers.our_commit()}, "
          f"{torch.cuda.get_device_name()}; N={n}, Hkv={HKV}, D={D}, bf16")
    for group in (4, 16):
        hq = HKV * group
        gen = torch.Generator(device="cuda").manual_seed(1)

        def randn(*shape):
            return torch.randn(*shape, device="cuda", generator=gen).to(torch.bfloat16)

        q, k, v = randn(n, hq, D), randn(n, HKV, D), randn(n, HKV, D)
        core = flash_nsa.NSACore(flash_nsa.NSAConfig(
            head_dim=D, num_heads=hq, num_kv_heads=HKV, kernel_size=CMP_LEN, stride=CMP_STRIDE, cmp_k_method="mean",
            cmp_v_method="mean", block_size=BLOCK, top_n=TOPK, num_init_blocks=1, num_local_blocks=2,
            window_size=WINDOW))
        cu = torch.tensor([0, n], dtype=torch.int32, device="cuda")
        NSAHelper.init_cu_seqlens(cu, cp_mode=core.cp_mode)
        ours = fsa.NsaConfig(compression="mean", rope=fsa.RopeConfig(enabled=False), cmp_len=CMP_LEN,
                             cmp_stride=CMP_STRIDE, block_size=BLOCK, topk=TOPK, window=WINDOW, scale=scale)
        print(f"== G={group}", flush=True)
        try:
            _, _, k_cmp = compress_kv_fwd(k, None, "mean")
            _, _, v_cmp = compress_kv_fwd(v, None, "mean")
            o_cmp, lse_cmp = cmp_attn_fwd(q, k_cmp, v_cmp, sm_scale=scale)
            topk, _ = slc_topk_indices(q, k_cmp, lse_cmp, sm_scale=scale, maybe_efficient_version=True,
                                       scale_slc_p=True)
            o_slc, _ = slc_attn_fwd(q, k, v, topk, sm_scale=scale)
            o_swa, _ = swa_fwd(q, k, v, sm_scale=scale)

            our_k_cmp = fsa.compress(k, cu, None, None, ours)
            our_v_cmp = fsa.compress(v, cu, None, None, ours)
            our_o_cmp, our_lse_cmp = fsa.compressed_attention(q, our_k_cmp, our_v_cmp, cu, ours)
            our_topk = fsa.select_blocks(q, our_k_cmp, our_lse_cmp, cu, ours)
            rows = min(k_cmp.shape[0], our_k_cmp.shape[0])  # ours has spare rows (max_compressed_tokens)
            print(f"compressed k, v        {rel(k_cmp[:rows], our_k_cmp[:rows]):.2e}, "
                  f"{rel(v_cmp[:rows], our_v_cmp[:rows]):.2e}")
            print(f"compressed branch o    {rel(o_cmp, our_o_cmp):.2e}")
            theirs_ln = lse_cmp.float().reshape(our_lse_cmp.shape) * math.log(2)  # log2 -> natural log
            finite = torch.isfinite(theirs_ln) & torch.isfinite(our_lse_cmp)
            print(f"compressed branch lse  {rel(theirs_ln[finite], our_lse_cmp[finite]):.2e} (theirs x ln 2)")
            same = (torch.sort(topk.int(), -1).values == torch.sort(our_topk, -1).values).all(-1)
            print(f"top-k rows identical   {float(same.float().mean()):.3f} of (kv head, token)")
            o_slc_own, _ = fsa.selected_attention(q, k, v, our_topk, cu, ours)
            o_slc_theirs, _ = fsa.selected_attention(q, k, v, topk.int(), cu, ours)
            print(f"selected branch o      {rel(o_slc, o_slc_own):.2e} (each its own top-k), "
                  f"{rel(o_slc, o_slc_theirs):.2e} (theirs fed to ours)")
            our_o_swa, _ = fsa.sliding_window_attention(q, k, v, cu, ours)
            print(f"window branch o        {rel(o_swa, our_o_swa):.2e} (theirs runs our window kernel: stub)")
        except Exception:  # one group failing still reports the other
            traceback.print_exc()


if __name__ == "__main__":
    main()
