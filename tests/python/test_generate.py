"""examples/generate.py: greedy generation with the cache gives the tokens and logits of recomputing
the whole prefix at every step (small sizes), and its check catches a cache that goes wrong."""
import fsa

from examples_loader import load_example


def small_args(example):
    # past several selection blocks (B = 32) and the window (w = 32); ragged prompts and lengths
    return example.GenerateArgs(prompt_lengths=(75, 41), new_tokens=(30, 12), chunks=3, verbose=False)


def test_cached_generation_matches_recomputing_the_prefix():
    example = load_example("generate")
    result = example.generate(small_args(example))
    assert result["mismatches"] == []
    assert [len(t) for t in result["tokens"]] == [105, 53]
    assert result["calls"] == 1 + 29  # the prefill's last chunk, then one decode step per new token but the last


def test_a_cache_that_forgets_its_lengths_is_caught(monkeypatch):
    """With lengths that never advance, every call overwrites the first tokens: the check reports it."""
    example = load_example("generate")
    monkeypatch.setattr(fsa.NsaCache, "advance", lambda self, seq_ids, new_tokens: None)
    assert example.generate(small_args(example))["mismatches"]
