"""Trains a tiny language model with one NativeSparseAttention layer on synthetic data.

In each sequence of a packed varlen batch, token t is token t - lag plus one (mod vocab), from
random first tokens: the next token is predictable only by attending `lag` tokens back, so the
loss can fall below the uniform guess log(vocab) only through the attention layer.

    python examples/train_tiny_lm.py                   # CPU reference (small sizes, about a minute)
    python examples/train_tiny_lm.py --device cuda     # GPU, bf16 (head dim 64, the smallest the kernels serve)
"""
import argparse
import math
import time
from dataclasses import dataclass, fields
from typing import List

import torch
from torch import nn

import fsa


@dataclass
class TrainArgs:
    steps: int = 100
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    vocab: int = 32
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 0  # 0: 64 on CUDA (the smallest head dim the kernels serve), 16 on the CPU
    lag: int = 2
    seq_lengths: tuple = (160, 96, 64)
    lr: float = 1e-2
    seed: int = 0
    log_every: int = 10


# Small NSA hyperparameters, so that compression, selection and the window all matter at these
# sequence lengths.
CONFIG = fsa.NsaConfig(cmp_len=16, cmp_stride=8, block_size=32, topk=3, init_blocks=1, local_blocks=1, window=32)


class TinyLM(nn.Module):
    """Embedding -> pre-norm NSA block with an MLP -> tied output head."""

    def __init__(self, args: TrainArgs):
        super().__init__()
        self.embed = nn.Embedding(args.vocab, args.hidden)
        self.norm_attn = nn.LayerNorm(args.hidden)
        head_dim = args.head_dim or (64 if str(args.device).startswith("cuda") else 16)
        self.attn = fsa.NativeSparseAttention(args.hidden, args.heads, args.kv_heads, head_dim, config=CONFIG)
        self.norm_mlp = nn.LayerNorm(args.hidden)
        self.mlp = nn.Sequential(nn.Linear(args.hidden, 4 * args.hidden), nn.GELU(),
                                 nn.Linear(4 * args.hidden, args.hidden))
        self.norm_out = nn.LayerNorm(args.hidden)
        # Small embeddings: the tied head then starts near the uniform guess instead of confident.
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + self.attn(self.norm_attn(h), cu_seqlens)
        h = h + self.mlp(self.norm_mlp(h))
        return self.norm_out(h) @ self.embed.weight.T


def synthetic_batch(args: TrainArgs, generator: torch.Generator):
    """Packed tokens [N] and cu_seqlens: in each sequence, token t is token t - lag plus one
    (mod vocab), from `lag` random first tokens."""
    sequences = []
    for n in args.seq_lengths:
        start = torch.randint(0, args.vocab, (args.lag,), generator=generator)
        steps = torch.arange(math.ceil(n / args.lag)).repeat_interleave(args.lag)[:n]
        sequences.append((start.repeat(math.ceil(n / args.lag))[:n] + steps) % args.vocab)
    cu = torch.tensor([0] + list(args.seq_lengths)).cumsum(0).to(torch.int32)
    return torch.cat(sequences), cu


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting token t+1 from position t, within each sequence."""
    last_of_sequence = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    last_of_sequence[cu_seqlens[1:].long() - 1] = True
    targets = torch.roll(tokens, -1)
    keep = ~last_of_sequence
    return nn.functional.cross_entropy(logits[keep].float(), targets[keep])


def train(args: TrainArgs) -> List[float]:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = TinyLM(args).to(device=args.device, dtype=args.dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    losses = []
    start = time.time()
    for step in range(args.steps):
        tokens, cu = synthetic_batch(args, generator)
        tokens, cu = tokens.to(args.device), cu.to(args.device)
        loss = next_token_loss(model(tokens, cu), tokens, cu)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if args.log_every and (step % args.log_every == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.time() - start:.1f} s)")
    return losses


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=TrainArgs.steps)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    dtype_name = cli.dtype or ("bfloat16" if cli.device.startswith("cuda") else "float32")
    args = TrainArgs(steps=cli.steps, device=cli.device, dtype=getattr(torch, dtype_name), seed=cli.seed)
    print("training", ", ".join(f"{f.name}={getattr(args, f.name)}" for f in fields(args)))
    losses = train(args)
    print(f"loss: {losses[0]:.3f} -> {losses[-1]:.3f} (uniform guess: {math.log(args.vocab):.3f})")


if __name__ == "__main__":
    main()
