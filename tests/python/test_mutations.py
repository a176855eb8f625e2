"""Every functional op and the layer on the CPU, called with one argument of a valid call mutated
at a time (dtype, rank, each size, strides, empty, NaN / inf, out-of-range index values, malformed
cu_seqlens, None) and with each config field pushed out of its range: the call either succeeds or
raises ValueError / TypeError / NotImplementedError whose message starts with the argument it
names ("cu_seqlens: ...", "config.cmp_len (l): ...") and carries no C++ source location. Any other
exception fails the test, and a crash or abort fails the whole run. Which mutations must be
refused is asserted one by one in test_errors.py and test_inputs.py; this sweep guards the rest
(about 700 calls, a few seconds)."""
import re

import pytest
import torch

import fsa

CONFIG = fsa.NsaConfig(cmp_len=16, cmp_stride=8, block_size=32, topk=4, window=32)
N, HQ, HKV, D = 100, 4, 2, 16
NAMED_ERROR = re.compile(r"^[A-Za-z_][\w.]*(?: \(\w+\))?: \S")


def _valid_arguments():
    gen = torch.Generator().manual_seed(7)

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=gen) * std

    a = dict(q=randn(N, HQ, D), k=randn(N, HKV, D), v=randn(N, HKV, D), gates=torch.rand(N, HQ, 3, generator=gen),
             w_k=randn(HKV, CONFIG.cmp_len * D, D, std=0.05), w_v=randn(HKV, CONFIG.cmp_len * D, D, std=0.05),
             pe_k=randn(HKV, CONFIG.cmp_len, D, std=0.1), cu=torch.tensor([0, 60, N], dtype=torch.int32))
    a["k_cmp"] = fsa.compress(a["k"], a["cu"], a["w_k"], a["pe_k"], CONFIG)
    a["v_cmp"] = fsa.compress(a["v"], a["cu"], a["w_v"], None, CONFIG)
    a["o"], a["lse"] = fsa.compressed_attention(a["q"], a["k_cmp"], a["v_cmp"], a["cu"], CONFIG)
    a["topk"] = fsa.select_blocks(a["q"], a["k_cmp"], a["lse"], a["cu"], CONFIG)
    return a


# op -> (call on the arguments dict, the arguments it takes)
OPS = {
    "compress": (lambda a: fsa.compress(a["k"], a["cu"], a["w_k"], a["pe_k"], a["config"]), ["k", "cu", "w_k", "pe_k"]),
    "rope": (lambda a: fsa.rope(a["q"], a["cu"], 1, a["config"]), ["q", "cu"]),
    "compressed_attention": (lambda a: fsa.compressed_attention(a["q"], a["k_cmp"], a["v_cmp"], a["cu"], a["config"]),
                             ["q", "k_cmp", "v_cmp", "cu"]),
    "select_blocks": (lambda a: fsa.select_blocks(a["q"], a["k_cmp"], a["lse"], a["cu"], a["config"]),
                      ["q", "k_cmp", "lse", "cu"]),
    "selected_attention": (lambda a: fsa.selected_attention(a["q"], a["k"], a["v"], a["topk"], a["cu"], a["config"]),
                           ["q", "k", "v", "topk", "cu"]),
    "sliding_window_attention": (lambda a: fsa.sliding_window_attention(a["q"], a["k"], a["v"], a["cu"], a["config"]),
                                 ["q", "k", "v", "cu"]),
    "combine": (lambda a: fsa.combine(a["gates"], a["o"], a["o"], a["o"]), ["gates", "o"]),
    "nsa_attention": (lambda a: fsa.nsa_attention(a["q"], a["k"], a["v"], a["cu"], a["gates"], a["w_k"], a["w_v"],
                                                  a["pe_k"], a["config"]),
                      ["q", "k", "v", "cu", "gates", "w_k", "w_v", "pe_k"]),
}

CONFIG_MUTATIONS = {
    "cmp_len 0": dict(cmp_len=0), "cmp_stride 0": dict(cmp_stride=0), "cmp_stride > cmp_len": dict(cmp_stride=32),
    "block_size 7": dict(block_size=7), "block_size 2^30": dict(block_size=2**30), "topk 0": dict(topk=0),
    "topk -1": dict(topk=-1), "topk 10^6": dict(topk=10**6), "init_blocks 10^6": dict(init_blocks=10**6),
    "local_blocks -1": dict(local_blocks=-1), "window -1": dict(window=-1), "window 2^31-1": dict(window=2**31 - 1),
    "scale nan": dict(scale=float("nan")), "scale -1": dict(scale=-1.0),
}


def _mutations(name, t):
    """(label, replacement) for argument `name` whose valid value is t."""
    floating = t.is_floating_point()
    yield "wider dtype", t.double() if floating else t.long()
    yield "narrower dtype", t.half() if floating else t.short()
    yield "integer <-> float", t.int() if floating else t.float()
    yield "flattened", t.reshape(-1)
    yield "extra dim", t.unsqueeze(0)
    yield "dim 0 - 1", t[:-1]
    yield "dim 0 + 7", torch.cat([t, t[:7]])
    yield "dim 0 empty", t[:0]
    if t.dim() >= 2:
        yield "dim 1 - 1", t[:, :-1]
        yield "dim 1 x 2", torch.cat([t, t], 1)
        yield "last dim strided", t[..., ::2]
        yield "rows padded", torch.cat([t, t], -1)[..., :t.shape[-1]]
    if t.dim() >= 3:
        yield "last dim - 1", t[..., :-1]
        yield "last dim x 2", torch.cat([t, t], -1)
    if floating:
        for value in (float("nan"), float("inf")):
            u = t.clone()
            u.view(-1)[0] = value
            yield f"a {value}", u
    else:
        for value in (2**30, -5, -1, 1000, 2**31 - 1, -(2**31)):
            u = t.clone()
            u.view(-1)[u.numel() // 2] = value
            yield f"value {value}", u
    if name == "cu":
        for label, values in {"decreasing": [0, N, 60], "not starting at 0": [1, 60, N], "one entry": [0],
                              "no entry": []}.items():
            yield "cu_seqlens " + label, torch.tensor(values, dtype=torch.int32)
        yield "cu_seqlens 2-D", torch.tensor([[0, 60, N]], dtype=torch.int32)
    yield "None", None


def _cases(op):
    call, names = OPS[op]
    valid = _valid_arguments()
    for name in names:
        for label, value in _mutations(name, valid[name]):
            yield f"{name}: {label}", call, {**valid, name: value}, {}
    for label, fields in CONFIG_MUTATIONS.items():
        yield f"config: {label}", call, valid, fields


@pytest.mark.parametrize("op", sorted(OPS))
def test_mutated_arguments_are_refused_by_name_or_run(op):
    problems = []
    count = 0
    for case, call, arguments, config_fields in _cases(op):
        count += 1
        try:  # a config the constructor refuses is one of the allowed outcomes too
            call({**arguments, "config": fsa.NsaConfig(**{**CONFIG.__dict__, **config_fields})})
        except (ValueError, TypeError, NotImplementedError) as e:
            message = str(e)
            if not NAMED_ERROR.match(message) or re.search(r"\.(cpp|cu|hpp|cuh):\d", message):
                problems.append(f"{case}: {type(e).__name__} does not start with the argument: {message[:200]}")
        except Exception as e:  # noqa: BLE001  (any other type is the failure this test looks for)
            problems.append(f"{case}: {type(e).__name__}: {str(e)[:200]}")
    assert count >= 8 * len(OPS[op][1]) + len(CONFIG_MUTATIONS), f"{op}: only {count} mutations ran"
    assert not problems, f"{op}: {len(problems)} of {count} mutated calls:\n" + "\n".join(problems)
