"""Greedy generation with an NSA key/value cache (fsa.NsaCache), checked against recomputing the
whole prefix without a cache at every step.

A small randomly initialised language model (embedding, a few pre-norm blocks of
NativeSparseAttention and an MLP, an output head) continues a batch of random prompts of different
lengths: each prompt is prefilled in a few chunks whose ends fall anywhere (fsa.nsa_prefill
through the module), then every step decodes one token per unfinished sequence (fsa.nsa_decode); a
sequence that has all its tokens leaves the batch and its pages go back to the caches. After every
call the logits of each sequence's last token are compared with those of the model run over the
sequence's whole prefix without a cache: the greedy tokens must be the same and the logits close.
The NSA hyperparameters are small so that a few hundred tokens cover many compression windows and
selection blocks, with a window shorter than the sequences. Exits with status 1 on a mismatch.

    python examples/generate.py                 # CPU reference, fp32
    python examples/generate.py --new-tokens 200 150
"""
import argparse
import sys
import time
from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn

import fsa

# l, s, B, K, I, L, w: compression windows every 8 tokens, 32-token blocks of which 4 are
# selected, a 32-token window.
CONFIG = fsa.NsaConfig(cmp_len=16, cmp_stride=8, block_size=32, topk=4, init_blocks=1, local_blocks=1, window=32)


@dataclass
class GenerateArgs:
    prompt_lengths: tuple = (150, 97)
    new_tokens: tuple = (120, 80)  # tokens to generate per prompt
    chunks: int = 3  # prefill calls per prompt
    vocab: int = 64
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    layers: int = 2
    seed: int = 0
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    atol: float = 1e-4  # on the logits, cached against recomputed
    verbose: bool = True


class Block(nn.Module):
    def __init__(self, args: GenerateArgs):
        super().__init__()
        self.norm_attn = nn.LayerNorm(args.hidden)
        self.attn = fsa.NativeSparseAttention(args.hidden, args.heads, args.kv_heads, args.head_dim, config=CONFIG)
        self.norm_mlp = nn.LayerNorm(args.hidden)
        self.mlp = nn.Sequential(nn.Linear(args.hidden, 4 * args.hidden), nn.GELU(),
                                 nn.Linear(4 * args.hidden, args.hidden))

    def forward(self, h, cu_seqlens, cache=None, seq_ids=None, decode=False):
        h = h + self.attn(self.norm_attn(h), cu_seqlens, cache, seq_ids, decode)
        return h + self.mlp(self.norm_mlp(h))


class TinyLM(nn.Module):
    def __init__(self, args: GenerateArgs):
        super().__init__()
        self.embed = nn.Embedding(args.vocab, args.hidden)
        self.blocks = nn.ModuleList(Block(args) for _ in range(args.layers))
        self.norm_out = nn.LayerNorm(args.hidden)
        self.head = nn.Linear(args.hidden, args.vocab, bias=False)

    def forward(self, tokens, cu_seqlens, caches=None, seq_ids=None, decode=False):
        """Logits [N, vocab] of packed tokens [N]; with `caches` (one NsaCache per block) the
        tokens are new tokens of the cached sequences seq_ids."""
        h = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            h = block(h, cu_seqlens, caches[i] if caches is not None else None, seq_ids, decode)
        return self.head(self.norm_out(h))


def packed(sequences: List[torch.Tensor]):
    """Packed tokens and cu_seqlens (int32, on the tokens' device) of a list of sequences."""
    lengths = torch.tensor([0] + [len(s) for s in sequences])
    return torch.cat(sequences), lengths.cumsum(0).to(torch.int32).to(sequences[0].device)


def last_rows(cu_seqlens: torch.Tensor) -> torch.Tensor:
    return cu_seqlens[1:].long() - 1


def generate(args: GenerateArgs) -> Dict[str, object]:
    """Runs the generation; returns the tokens, the largest logit difference and the mismatches."""
    torch.manual_seed(args.seed)
    model = TinyLM(args).to(device=args.device, dtype=args.dtype).eval()
    nseq = len(args.prompt_lengths)
    sequences = [torch.randint(0, args.vocab, (n,), device=args.device) for n in args.prompt_lengths]
    # Room for every whole sequence, in pages of one selection block so that they span many pages.
    page_size = CONFIG.block_size
    pages = sum(-(-(p + g) // page_size) for p, g in zip(args.prompt_lengths, args.new_tokens))
    caches = [fsa.NsaCache.for_layer(block.attn, max_seqs=nseq, num_pages=pages, page_size=page_size)
              for block in model.blocks]
    seq_ids = list(range(nseq))
    for cache in caches:
        for seq_id in seq_ids:
            cache.add_sequence(seq_id)

    result = {"tokens": [], "max_logit_diff": 0.0, "mismatches": [], "calls": 0}

    def check(logits: torch.Tensor, active: List[int], what: str) -> torch.Tensor:
        """Greedy tokens of the cached logits of the active sequences' last tokens, compared with the
        model run on their whole prefixes without a cache."""
        reference = model(*packed([sequences[b] for b in active]))
        reference = reference[last_rows(packed([sequences[b] for b in active])[1])]
        result["max_logit_diff"] = max(result["max_logit_diff"], (logits - reference).abs().max().item())
        chosen, expected = logits.argmax(-1), reference.argmax(-1)
        for i, b in enumerate(active):
            if chosen[i] != expected[i] or not torch.allclose(logits[i], reference[i], rtol=0, atol=args.atol):
                result["mismatches"].append(f"{what}, sequence {b} at length {len(sequences[b])}: token "
                                            f"{chosen[i].item()} (recomputed: {expected[i].item()}), logits differ "
                                            f"by {(logits[i] - reference[i]).abs().max().item():.3g}")
        result["calls"] += 1
        return chosen

    start = time.time()
    with torch.no_grad():
        # Prefill: chunk c of every prompt in one call; chunk ends anywhere, not on s, l or B.
        bounds = [[round(n * c / args.chunks) for c in range(args.chunks + 1)] for n in args.prompt_lengths]
        for c in range(args.chunks):
            chunk = [sequences[b][bounds[b][c]:bounds[b][c + 1]] for b in range(nseq)]
            tokens, cu = packed(chunk)
            logits = model(tokens, cu, caches, seq_ids)
        # The last prefill chunk's last rows predict the first new tokens (no prompt is shorter
        # than `chunks` tokens, so every sequence has rows in the last chunk).
        next_tokens = check(logits[last_rows(cu)], seq_ids, "prefill")

        active = list(seq_ids)
        while active:
            for i, b in enumerate(active):
                sequences[b] = torch.cat([sequences[b], next_tokens[i:i + 1]])
            finished = [b for b in active if len(sequences[b]) == args.prompt_lengths[b] + args.new_tokens[b]]
            for b in finished:
                for cache in caches:
                    cache.free_sequence(b)
            kept = [i for i, b in enumerate(active) if b not in finished]
            active = [active[i] for i in kept]
            if not active:
                break
            # One decode step: the newest token of every unfinished sequence.
            tokens, cu = packed([sequences[b][-1:] for b in active])
            logits = model(tokens, cu, caches, active, decode=True)
            next_tokens = check(logits, active, "decode")
    result["tokens"] = [s.tolist() for s in sequences]
    result["seconds"] = time.time() - start
    if args.verbose:
        print(f"{nseq} sequences, prompts {list(args.prompt_lengths)} in {args.chunks} prefill calls, "
              f"{list(args.new_tokens)} new tokens; {result['calls']} checked calls in {result['seconds']:.1f} s; "
              f"largest logit difference {result['max_logit_diff']:.3g}")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=list(GenerateArgs.prompt_lengths))
    parser.add_argument("--new-tokens", type=int, nargs="+", default=list(GenerateArgs.new_tokens))
    parser.add_argument("--chunks", type=int, default=GenerateArgs.chunks)
    parser.add_argument("--layers", type=int, default=GenerateArgs.layers)
    parser.add_argument("--seed", type=int, default=GenerateArgs.seed)
    cli = parser.parse_args()
    if len(cli.prompt_lengths) != len(cli.new_tokens):
        parser.error("--new-tokens: one count per prompt of --prompt-lengths")
    if min(cli.prompt_lengths) < cli.chunks or min(cli.new_tokens) < 1:
        parser.error("every prompt needs at least --chunks tokens and every sequence at least one new token")
    result = generate(GenerateArgs(prompt_lengths=tuple(cli.prompt_lengths), new_tokens=tuple(cli.new_tokens),
                                   chunks=cli.chunks, layers=cli.layers, seed=cli.seed))
    for line in result["mismatches"]:
        print("mismatch:", line, file=sys.stderr)
    if result["mismatches"]:
        print(f"FAILED: {len(result['mismatches'])} mismatches against recomputing the prefix", file=sys.stderr)
        sys.exit(1)
    print("OK: the cached generation matches recomputing the whole prefix at every step")


if __name__ == "__main__":
    main()
