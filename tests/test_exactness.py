"""Every generation path against an independent oracle.

The oracle is written for this test and shares nothing with the code under
test: one prompt at a time, no KV cache, no batching, no padding, a full
forward pass per new token, greedy argmax, and the steering delta added by its
own minimal hook at the last prompt position on every pass (with no cache the
steered state has to be recomputed each time; with a cache it lives on in the
cached states). It stops where a single greedy generation stops: after an EOS
token, or once a tool call is complete.
"""

from __future__ import annotations

import json
import lzma

import numpy as np
import pytest
import torch

from asa_lib.engine.cache import GenerationCache
from asa_lib.engine.decode import generate_batch
from asa_lib.engine.generate import GenerationSettings, generate_all, share_prefix_for
from asa_lib.engine.prefix import needs_equal_suffix_lengths, shared_prefix, token_ids
from asa_lib.model.load import LoadedModel
from asa_lib.prompts import render_prompts
from conftest import ROOT

LAYER = 1


@torch.no_grad()
def oracle(model, tok, prompt: str, delta, layer: int, max_new: int, start: str, end: str) -> str:
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    last = len(ids) - 1
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
    device = next(model.parameters()).device
    handle = None
    if delta is not None and bool(np.any(np.asarray(delta) != 0)):
        d = torch.as_tensor(np.asarray(delta, dtype=np.float32), device=device)

        def add_at_last_prompt_token(_m, _i, out):
            h = (out[0] if isinstance(out, tuple) else out).clone()
            h[0, last] += d.to(h.dtype)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        handle = model.model.layers[layer].register_forward_hook(add_at_last_prompt_token)
    try:
        new: list[int] = []
        for _ in range(max_new):
            x = torch.tensor([ids + new], device=device)
            nxt = int(model(input_ids=x, use_cache=False).logits[0, -1].argmax())
            new.append(nxt)
            if nxt in eos:
                break
            text = tok.decode(new, skip_special_tokens=False)
            s = text.find(start)
            if s >= 0 and text.find(end, s + len(start)) >= 0:
                break
    finally:
        if handle is not None:
            handle.remove()
    return tok.decode(new, skip_special_tokens=False)


def instructions(n: int, max_chars: int = 70) -> list[str]:
    """``n`` short Alpaca instructions of mixed lengths, in file order (deterministic)."""
    out = []
    with lzma.open(ROOT / "data" / "alpaca_subset.jsonl.xz", "rt", encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)["instruction"]
            if len(t) <= max_chars:
                out.append(t)
            if len(out) == n:
                break
    return out


def mixed_deltas(n: int, hidden: int, scale: float, seed: int) -> np.ndarray:
    """Rows of +, - and zero steering (every third row unsteered)."""
    g = np.random.default_rng(seed)
    d = g.standard_normal((n, hidden)).astype(np.float32) * scale
    d[::3] = 0
    return d


def cache_tensors(prefix) -> list[torch.Tensor]:
    """Every tensor the shared prefix cache holds (keys, values, LFM2 conv states)."""
    out = []
    for layer in prefix.cache.layers:
        for v in vars(layer).values():
            stack = [v]
            while stack:
                x = stack.pop()
                if isinstance(x, torch.Tensor):
                    out.append(x)
                elif isinstance(x, (list, tuple)):
                    stack.extend(x)
                elif isinstance(x, dict):
                    stack.extend(x.values())
    return out


def snapshot(prefix) -> list[torch.Tensor]:
    return [t.detach().clone() for t in cache_tensors(prefix)]


def assert_unchanged(prefix, snap) -> None:
    now = cache_tensors(prefix)
    assert len(now) == len(snap)
    assert all(torch.equal(a, b) for a, b in zip(now, snap)), (
        "the shared prefix cache was written to"
    )


def check_all_paths(
    lm: LoadedModel,
    pp,
    prompts: list[str],
    deltas: np.ndarray,
    max_new: int,
    batch_size: int,
    tmp_path,
) -> None:
    want_plain = [
        oracle(
            lm.model, lm.tokenizer, p, None, LAYER, max_new, pp.tool_call_start, pp.tool_call_end
        )
        for p in prompts
    ]
    want_steer = [
        oracle(lm.model, lm.tokenizer, p, d, LAYER, max_new, pp.tool_call_start, pp.tool_call_end)
        for p, d in zip(prompts, deltas)
    ]
    prefix = shared_prefix(lm, token_ids(lm, prompts))  # what generate_all shares
    assert prefix is not None and prefix.length > 0
    snap = snapshot(prefix)

    for share in (False, True):  # plain batched, then prefix-shared
        for deltas_, want in ((None, want_plain), (deltas, want_steer)):
            got, _ = generate_all(
                lm,
                prompts,
                GenerationSettings(
                    max_new_tokens=max_new, batch_size=batch_size, markers=pp, share_prefix=share
                ),
                deltas_,
                layer=LAYER,
            )
            bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
            assert not bad, (
                f"share_prefix={share} steered={deltas_ is not None}: {len(bad)} differ, first {bad[0]}: {got[bad[0]]!r} != {want[bad[0]]!r}"
            )
    assert_unchanged(prefix, snap)

    # Cache reused across configs: config B shares half of its deltas with config A.
    cache = GenerationCache(tmp_path / "gen.sqlite", {"model": lm.model_id})
    other = mixed_deltas(len(prompts), lm.hidden_size, float(np.abs(deltas).max()), seed=99)
    deltas_b = np.where(np.arange(len(prompts))[:, None] % 2 == 0, deltas, other)
    want_b = [
        w
        if i % 2 == 0
        else oracle(
            lm.model, lm.tokenizer, p, d, LAYER, max_new, pp.tool_call_start, pp.tool_call_end
        )
        for i, (p, d, w) in enumerate(zip(prompts, deltas_b, want_steer))
    ]
    assert (
        generate_all(
            lm,
            prompts,
            GenerationSettings(max_new_tokens=max_new, batch_size=batch_size, markers=pp),
            None,
            layer=LAYER,
            cache=cache,
        )[0]
        == want_plain
    )
    assert (
        generate_all(
            lm,
            prompts,
            GenerationSettings(max_new_tokens=max_new, batch_size=batch_size, markers=pp),
            deltas,
            layer=LAYER,
            cache=cache,
        )[0]
        == want_steer
    )
    got_b, n_new = generate_all(
        lm,
        prompts,
        GenerationSettings(max_new_tokens=max_new, batch_size=batch_size, markers=pp),
        deltas_b,
        layer=LAYER,
        cache=cache,
    )
    assert got_b == want_b and n_new < len(prompts)
    cache.close()

    # One-row batches right after a multi-row batch on the same prefix, repeated.
    ids = lm.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    by_len: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_len.setdefault(len(x), []).append(i)
    group = max(by_len.values(), key=len)
    if needs_equal_suffix_lengths(lm.model):
        assert len(group) >= 2, "the prompt set needs two prompts of equal length"
    multi = group[:4] if len(group) >= 2 else [0, 1]  # attention-only models take any lengths
    for _ in range(2):
        got = generate_batch(
            lm, [prompts[i] for i in multi], deltas[multi], LAYER, max_new, pp, prefix=prefix
        )
        assert got == [want_steer[i] for i in multi]
        for i in (multi[0], multi[1], multi[0]):
            assert (
                generate_batch(
                    lm, [prompts[i]], deltas[i : i + 1], LAYER, max_new, pp, prefix=prefix
                )[0]
                == want_steer[i]
            )
            assert (
                generate_batch(lm, [prompts[i]], None, LAYER, max_new, pp, prefix=prefix)[0]
                == want_plain[i]
            )
    assert_unchanged(prefix, snap)


def test_tiny_lfm2_every_generation_path_equals_the_oracle(tiny_lm, tiny_params, tmp_path):
    texts = instructions(60)
    prompts = render_prompts(tiny_lm.tokenizer, tiny_params.prompt, texts)
    n_tok = {len(x) for x in tiny_lm.tokenizer(prompts, add_special_tokens=False)["input_ids"]}
    assert len(n_tok) >= 20  # mixed suffix lengths: many equal-length groups of one row
    deltas = mixed_deltas(len(prompts), tiny_lm.hidden_size, 50.0, seed=1)
    check_all_paths(tiny_lm, tiny_params.prompt, prompts, deltas, 6, 8, tmp_path)


def test_issue_13_repro_one_row_batch_repeats(tiny_lm, tiny_params):
    pp = tiny_params.prompt
    p = render_prompts(
        tiny_lm.tokenizer, pp, ["Calculate the circumference of a circle with a radius of 4 cm. "]
    )
    # the prefix this prompt shares with every other prompt of the format
    pref = shared_prefix(
        tiny_lm, token_ids(tiny_lm, p + render_prompts(tiny_lm.tokenizer, pp, ["Zulu?"]))
    )
    snap = snapshot(pref)
    outs = [generate_batch(tiny_lm, p, None, 1, 6, pp, prefix=pref)[0] for _ in range(3)]
    assert outs[0] == outs[1] == outs[2]
    assert outs[0] == oracle(
        tiny_lm.model, tiny_lm.tokenizer, p[0], None, 1, 6, pp.tool_call_start, pp.tool_call_end
    )
    assert_unchanged(pref, snap)


@pytest.mark.slow
def test_smollm2_every_generation_path_equals_the_oracle(smol_lm, demo_params, tmp_path):
    texts = ["Hi", "Compute 2+2", "Name a colour.", "Say yes"]
    prompts = render_prompts(smol_lm.tokenizer, demo_params.prompt, texts)
    deltas = mixed_deltas(len(prompts), smol_lm.hidden_size, 2.0, seed=2)
    check_all_paths(smol_lm, demo_params.prompt, prompts, deltas, 5, 3, tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_auto_path_equals_the_oracle(tiny_params, tmp_path):
    from asa_lib.model.load import build_tiny_lfm2

    model, tok = build_tiny_lfm2(seed=0)
    lm = LoadedModel(model.to("cuda"), tok, "tiny-lfm2", torch.device("cuda"))
    pp = tiny_params.prompt
    prompts = render_prompts(tok, pp, instructions(24))
    deltas = mixed_deltas(len(prompts), lm.hidden_size, 50.0, seed=1)
    share = share_prefix_for("auto", lm)  # whole-prompt batches for conv models on a GPU
    got, _ = generate_all(
        lm,
        prompts,
        GenerationSettings(max_new_tokens=6, batch_size=8, markers=pp, share_prefix=share),
        deltas,
        layer=LAYER,
    )
    want = [
        oracle(model, tok, p, d, LAYER, 6, pp.tool_call_start, pp.tool_call_end)
        for p, d in zip(prompts, deltas)
    ]
    assert got == want
