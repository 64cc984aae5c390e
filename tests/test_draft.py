"""Draft-verified greedy decoding gives the plain path's outputs, and the oracle's.

The reference is ``oracle`` from test_exactness.py (one prompt at a time, no
cache, a full forward pass per token, its own steering hook). Drafts are any
token lists: whatever a draft holds (the row's own output, a prefix of it
followed by a wrong token, a wrong first token, more tokens than
``max_new_tokens``, tokens past an EOS or a complete call), the output must
not change. The stats of each call check that each kind of draft was
exercised as intended (accepted in full, in part, not at all).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from asa_lib.engine.batching import CHUNK_BATCHES
from asa_lib.engine.cache import GenerationCache
from asa_lib.engine.draft import accept, draft_for, draft_min_acceptance_for
from asa_lib.engine.generate import (
    GenerationSettings,
    GenerationStats,
    generate_all,
    generation_keys,
    identity,
    share_prefix_for,
)
from asa_lib.model.hooks import steer_last_prompt_token
from asa_lib.model.load import LoadedModel, decoder_blocks, load_model
from asa_lib.prompts import render_prompts
from test_exactness import instructions, mixed_deltas, oracle

LAYER = 1
MAX_NEW = 10


def graded_deltas(n: int, hidden: int, seed: int) -> np.ndarray:
    """+, - and zero rows at strengths from barely-there (outputs keep most of the baseline) to strong."""
    g = np.random.default_rng(seed)
    v = g.standard_normal(hidden).astype(np.float32)
    v /= np.linalg.norm(v)
    scales = np.array(
        [0.0, 0.3, -0.3, 2.0, -2.0, 400.0, -400.0, 0.0, 0.05, -0.05, 20.0, -20.0], dtype=np.float32
    )
    d = np.outer(scales[np.arange(n) % len(scales)], v).astype(np.float32)
    d[1::5] += g.standard_normal((len(d[1::5]), hidden)).astype(
        np.float32
    )  # some rows off the common axis
    return d


def oracle_all(lm: LoadedModel, pp, prompts: list[str], deltas, max_new: int) -> list[str]:
    ds = [None] * len(prompts) if deltas is None else list(deltas)
    return [
        oracle(lm.model, lm.tokenizer, p, d, LAYER, max_new, pp.tool_call_start, pp.tool_call_end)
        for p, d in zip(prompts, ds)
    ]


def own_tokens(
    lm: LoadedModel, pp, prompts, deltas, max_new: int, tmp_path, name: str
) -> list[list[int]]:
    """Each row's greedy output tokens (plain path, no drafts), read back from the generation cache."""
    cache = GenerationCache(tmp_path / f"{name}.sqlite", {"own": name})
    settings = GenerationSettings(max_new_tokens=max_new, batch_size=8, markers=pp)
    generate_all(lm, prompts, settings, deltas, layer=LAYER, cache=cache)
    keys = generation_keys(lm, settings, prompts, deltas, LAYER, cache)
    toks = cache.get_tokens_many(keys)
    out = [toks[k] for k in keys]
    cache.close()
    return out


def other_token(t: int, vocab: int) -> int:
    return (t + 7) % vocab


@pytest.fixture(scope="module")
def tiny_case(tiny_lm, tiny_params):
    pp = tiny_params.prompt
    prompts = render_prompts(tiny_lm.tokenizer, pp, instructions(48))
    n_tok = {len(x) for x in tiny_lm.tokenizer(prompts, add_special_tokens=False)["input_ids"]}
    assert len(n_tok) >= 15  # mixed lengths
    deltas = graded_deltas(len(prompts), tiny_lm.hidden_size, seed=5)
    return (
        prompts,
        deltas,
        oracle_all(tiny_lm, pp, prompts, None, MAX_NEW),
        oracle_all(tiny_lm, pp, prompts, deltas, MAX_NEW),
    )


def test_hook_steers_the_given_positions_only(tiny_lm):
    block = decoder_blocks(tiny_lm.model)[LAYER]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 9, tiny_lm.hidden_size, generator=g)
    delta = torch.randn(2, tiny_lm.hidden_size, generator=g)
    with steer_last_prompt_token(block, delta, torch.tensor([3, 7])) as hook:
        got = hook(None, None, (h, "rest"))
        again = hook(None, None, h)  # a later pass (a decode step) is left alone
    want = h.clone()
    want[0, 3] += delta[0]
    want[1, 7] += delta[1]
    assert torch.equal(got[0], want) and got[1] == "rest" and again is h
    with steer_last_prompt_token(block, delta) as hook:  # no positions: the last one
        got = hook(None, None, h)
    want = h.clone()
    want[:, -1] += delta
    assert torch.equal(got, want)


def test_accept():
    assert accept([5, 6, 7], [5, 6, 7, 8]) == [5, 6, 7, 8]  # all agree, plus the token after
    assert accept([5, 6, 7], [5, 9, 7, 8]) == [5, 9]  # first disagreement: the greedy token
    assert accept([5, 6, 7], [4, 6, 7, 8]) == [4]
    assert accept([], [3]) == [3]


@pytest.mark.parametrize("share", [True, False])
def test_drafts_from_the_cache_equal_plain_and_oracle(
    tiny_lm, tiny_params, tiny_case, tmp_path, share
):
    """The sweep's path: baseline first, then a steered config drafts from the cached baseline."""
    pp = tiny_params.prompt
    prompts, deltas, want_base, want = tiny_case
    cache = GenerationCache(tmp_path / "gen.sqlite", {"model": "tiny"})
    base, _ = generate_all(
        tiny_lm,
        prompts,
        GenerationSettings(max_new_tokens=MAX_NEW, batch_size=8, markers=pp, share_prefix=share),
        None,
        layer=LAYER,
        cache=cache,
    )
    assert base == want_base
    st = GenerationStats()
    got, n = generate_all(
        tiny_lm,
        prompts,
        GenerationSettings(
            max_new_tokens=MAX_NEW, batch_size=8, markers=pp, share_prefix=share, draft=True
        ),
        deltas,
        layer=LAYER,
        cache=cache,
        stats=st,
    )
    plain, _ = generate_all(
        tiny_lm,
        prompts,
        GenerationSettings(max_new_tokens=MAX_NEW, batch_size=8, markers=pp, share_prefix=share),
        deltas,
        layer=LAYER,
    )
    bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert not bad, f"{len(bad)} differ, first {bad[0]}: {got[bad[0]]!r} != {want[bad[0]]!r}"
    assert plain == want
    assert identity(got, plain, pp)["output_identity"] == 1.0
    steered = [i for i in range(len(prompts)) if np.any(deltas[i])]
    assert n == len(steered) and st.generated == n
    assert st.drafted == len(steered)  # every steered row had its prompt's baseline as a draft
    # the drafts were accepted in full and not at all
    settings = GenerationSettings(max_new_tokens=MAX_NEW, batch_size=8, markers=pp)
    steer_keys = generation_keys(tiny_lm, settings, prompts, deltas, LAYER, cache)
    base_keys = generation_keys(tiny_lm, settings, prompts, None, LAYER, cache)
    toks = cache.get_tokens_many(steer_keys + base_keys)
    full = part = none = 0
    for i in steered:
        a, b = toks[steer_keys[i]], toks[base_keys[i]]
        k = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        full += a == b
        part += 0 < k and a != b
        none += k == 0
    # (drafts accepted in part: rare with this random model, see test_explicit_drafts_of_every_kind)
    assert full >= 3 and none >= 3, (full, part, none)
    assert st.done_by_draft >= full
    assert 0 < st.accepted_tokens < st.draft_tokens
    assert (
        generate_all(
            tiny_lm,
            prompts,
            GenerationSettings(max_new_tokens=MAX_NEW, batch_size=8, markers=pp, draft=True),
            deltas,
            layer=LAYER,
            cache=cache,
        )[1]
        == 0
    )  # all cached
    cache.close()


@pytest.mark.parametrize("share", [True, False])
def test_explicit_drafts_of_every_kind(tiny_lm, tiny_params, tiny_case, tmp_path, share):
    pp = tiny_params.prompt
    prompts, deltas, _, want = tiny_case
    vocab = len(tiny_lm.tokenizer)
    own = own_tokens(tiny_lm, pp, prompts, deltas, MAX_NEW, tmp_path, "own")
    own_long = own_tokens(tiny_lm, pp, prompts, deltas, MAX_NEW + 6, tmp_path, "long")
    assert sum(len(x) > MAX_NEW for x in own_long) >= 10  # drafts longer than max_new_tokens

    def run(drafts):
        st = GenerationStats()
        got, _ = generate_all(
            tiny_lm,
            prompts,
            GenerationSettings(
                max_new_tokens=MAX_NEW, batch_size=8, markers=pp, share_prefix=share, draft=True
            ),
            deltas,
            layer=LAYER,
            drafts=drafts,
            stats=st,
        )
        bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
        assert not bad, f"{len(bad)} differ, first {bad[0]}: {got[bad[0]]!r} != {want[bad[0]]!r}"
        return st

    st = run(own)  # each row's own output: accepted in full, decided by the verify pass alone
    assert st.drafted == len(prompts) and st.accepted_tokens == st.draft_tokens == sum(
        map(len, own)
    )
    assert st.done_by_draft >= sum(len(x) == MAX_NEW for x in own)

    st = run(own_long)  # longer than max_new_tokens: cut, accepted, done
    assert st.draft_tokens == sum(min(len(x), MAX_NEW) for x in own_long)
    assert st.accepted_tokens == st.draft_tokens and st.done_by_draft >= sum(
        len(x) > MAX_NEW for x in own_long
    )

    ks = [len(x) // 2 for x in own]  # the own output with one wrong token in the middle
    part = [x[:k] + [other_token(x[k], vocab)] + x[k + 1 :] for x, k in zip(own, ks)]
    st = run(part)
    assert st.accepted_tokens == sum(ks) > 0
    assert st.done_by_draft <= sum(len(x) == k + 1 for x, k in zip(own, ks))  # the rest decoded on

    wrong = [[other_token(x[0], vocab)] + x[1:] for x in own]  # wrong from the first token
    st = run(wrong)
    assert st.accepted_tokens == 0 and st.drafted == len(prompts)

    mixed = [[own, own_long, part, wrong][i % 4][i] if i % 5 else None for i in range(len(prompts))]
    st = run(mixed)  # kinds mixed in one batch, some rows without a draft
    assert st.drafted == sum(d is not None for d in mixed)
    assert run([x + [5, 6] for x in own]).accepted_tokens > 0  # tokens past the row's own end


@pytest.mark.parametrize("share", [True, False])
def test_drafts_through_eos_and_complete_calls(tiny_params, tmp_path, share):
    """Rows that stop early (EOS, a complete call): a draft running past the stop is cut where plain decoding stops."""
    lm = load_model(tiny_params.model, seed=0)  # own instance: its EOS set is changed below
    tok = lm.tokenizer
    eos_extra = tok.convert_tokens_to_ids("R")  # a token this random model often writes
    lm.model.generation_config.eos_token_id = [tok.eos_token_id, eos_extra]
    pp = dataclasses.replace(
        tiny_params.prompt, tool_call_end="1"
    )  # "<|tool_call_start|>" ... "1": common here
    prompts = render_prompts(tok, pp, instructions(40))
    deltas = mixed_deltas(len(prompts), lm.hidden_size, 0.5, seed=3)
    max_new = 16
    want = oracle_all(lm, pp, prompts, deltas, max_new)
    n_call = sum(pp.tool_call_start in w and "1" in w.split(pp.tool_call_start, 1)[1] for w in want)
    n_eos = sum(w.endswith("R") for w in want)
    assert n_call >= 3 and n_eos >= 3, (n_call, n_eos)
    own = own_tokens(lm, pp, prompts, deltas, max_new, tmp_path, "own")
    assert sum(len(x) < max_new for x in own) >= 6
    junk = [int(t) for t in np.random.default_rng(0).integers(5, len(tok), size=12)]
    for drafts, whole in (
        ([x + junk for x in own], True),  # accepted through the stop, then junk
        ([x[: len(x) // 2] + junk for x in own], False),  # part of the way
    ):
        st = GenerationStats()
        got, _ = generate_all(
            lm,
            prompts,
            GenerationSettings(
                max_new_tokens=max_new, batch_size=8, markers=pp, share_prefix=share, draft=True
            ),
            deltas,
            layer=LAYER,
            drafts=drafts,
            stats=st,
        )
        assert got == want
        assert st.accepted_tokens > 0
        if whole:  # every row decided by its verify pass: cut at its stop, nothing decoded
            assert st.done_by_draft == len(prompts)
    plain, _ = generate_all(
        lm,
        prompts,
        GenerationSettings(max_new_tokens=max_new, batch_size=8, markers=pp, share_prefix=share),
        deltas,
        layer=LAYER,
    )
    assert plain == want


def test_no_drafts_where_generate_is_not_plain_argmax(tiny_params, tiny_case, tmp_path):
    lm = load_model(tiny_params.model, seed=0)
    lm.model.generation_config.repetition_penalty = (
        1.3  # generate's greedy pick is no longer the argmax
    )
    pp = tiny_params.prompt
    prompts, deltas, _, _ = tiny_case
    own = own_tokens(lm, pp, prompts[:8], deltas[:8], MAX_NEW, tmp_path, "own")
    st = GenerationStats()
    got, _ = generate_all(
        lm,
        prompts[:8],
        GenerationSettings(max_new_tokens=MAX_NEW, batch_size=8, markers=pp, draft=True),
        deltas[:8],
        layer=LAYER,
        drafts=own,
        stats=st,
    )
    plain, _ = generate_all(
        lm,
        prompts[:8],
        GenerationSettings(max_new_tokens=MAX_NEW, batch_size=8, markers=pp),
        deltas[:8],
        layer=LAYER,
    )
    assert got == plain and st.drafted == 0


def test_draft_setting(tiny_lm):
    assert draft_for("auto", tiny_lm) and draft_for("on", tiny_lm) and not draft_for("off", tiny_lm)
    assert draft_min_acceptance_for("on", tiny_lm) == 0.0
    assert 0 < draft_min_acceptance_for("auto", tiny_lm) < 1


def test_drafts_that_do_not_pay_are_dropped(tiny_lm, tiny_params, tiny_case, tmp_path):
    pp = tiny_params.prompt
    prompts, deltas, _, want = tiny_case
    own = own_tokens(tiny_lm, pp, prompts, deltas, MAX_NEW, tmp_path, "own")
    wrong = [[other_token(x[0], len(tiny_lm.tokenizer))] + x[1:] for x in own]  # nothing accepted
    chunks = -(-len(prompts) // (8 * CHUNK_BATCHES))
    # 0.5: only the first prompt batches of each chunk of rows, until 8 rows are verified
    for min_acc, verified in ((0.0, len(prompts)), (0.5, 8 * chunks)):
        st = GenerationStats()
        got, _ = generate_all(
            tiny_lm,
            prompts,
            GenerationSettings(
                max_new_tokens=MAX_NEW,
                batch_size=8,
                markers=pp,
                draft=True,
                draft_min_acceptance=min_acc,
            ),
            deltas,
            layer=LAYER,
            drafts=wrong,
            stats=st,
        )
        assert got == want
        # prompt batches hold rows of one suffix length (LFM2), so a chunk may verify a few more
        assert verified <= st.drafted < verified + 8 * chunks
        assert st.drafted < len(prompts) or min_acc == 0.0
        assert st.drafts_dropped == len(prompts) - st.drafted
    st = GenerationStats()  # drafts that are accepted are kept at any minimum
    got, _ = generate_all(
        tiny_lm,
        prompts,
        GenerationSettings(
            max_new_tokens=MAX_NEW, batch_size=8, markers=pp, draft=True, draft_min_acceptance=0.99
        ),
        deltas,
        layer=LAYER,
        drafts=own,
        stats=st,
    )
    assert got == want and st.drafted == len(prompts) and st.drafts_dropped == 0


def test_identity_counts(tiny_params):
    pp = tiny_params.prompt
    a = ["x", f"{pp.tool_call_start}[f()]", "y", "z"]
    b = ["x", f"{pp.tool_call_start}[g()]", f"{pp.tool_call_start}", "w"]
    r = identity(a, b, pp)
    assert (r["n"], r["outputs_identical"], r["decisions_identical"]) == (4, 1, 3)


@pytest.mark.slow
def test_smollm2_drafts_equal_plain_and_oracle(smol_lm, demo_params, tmp_path):
    pp = demo_params.prompt
    texts = ["Hi", "Compute 2+2", "Name a colour.", "Say yes", "What is the capital of France?"]
    prompts = render_prompts(smol_lm.tokenizer, pp, texts)
    deltas = mixed_deltas(len(prompts), smol_lm.hidden_size, 2.0, seed=2)
    deltas[1] *= 0.01  # barely steered: keeps the baseline
    deltas[4] *= 40.0  # strongly steered
    max_new = 5
    want_base = oracle_all(smol_lm, pp, prompts, None, max_new)
    want = oracle_all(smol_lm, pp, prompts, deltas, max_new)
    cache = GenerationCache(tmp_path / "gen.sqlite", {"model": "smol"})
    assert (
        generate_all(
            smol_lm,
            prompts,
            GenerationSettings(max_new_tokens=max_new, batch_size=3, markers=pp),
            None,
            layer=LAYER,
            cache=cache,
        )[0]
        == want_base
    )
    st = GenerationStats()
    got, _ = generate_all(
        smol_lm,
        prompts,
        GenerationSettings(max_new_tokens=max_new, batch_size=3, markers=pp, draft=True),
        deltas,
        layer=LAYER,
        cache=cache,
        stats=st,
    )
    assert got == want
    assert st.drafted == sum(bool(np.any(d)) for d in deltas) and st.accepted_tokens > 0
    keys = generation_keys(
        smol_lm,
        GenerationSettings(max_new_tokens=max_new, batch_size=3, markers=pp),
        prompts,
        deltas,
        LAYER,
        cache,
    )
    own = cache.get_tokens_many(keys)
    own = [own[k] for k in keys]
    part = [x[:2] + [(x[2] + 1) % len(smol_lm.tokenizer)] + x[3:] if len(x) > 2 else x for x in own]
    st = GenerationStats()
    got, _ = generate_all(
        smol_lm,
        prompts,
        GenerationSettings(
            max_new_tokens=max_new, batch_size=3, markers=pp, share_prefix=False, draft=True
        ),
        deltas,
        layer=LAYER,
        drafts=part,
        stats=st,
    )
    assert got == want and st.accepted_tokens >= 2 * sum(len(x) > 2 for x in own)
    cache.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_drafts_equal_the_oracle(tiny_params, tmp_path):
    from asa_lib.model.load import build_tiny_lfm2

    model, tok = build_tiny_lfm2(seed=0)
    lm = LoadedModel(model.to("cuda"), tok, "tiny-lfm2", torch.device("cuda"))
    pp = tiny_params.prompt
    prompts = render_prompts(tok, pp, instructions(24))
    deltas = graded_deltas(len(prompts), lm.hidden_size, seed=5)
    share = share_prefix_for("auto", lm)
    cache = GenerationCache(tmp_path / "gen.sqlite", {"model": "tiny"})
    generate_all(
        lm,
        prompts,
        GenerationSettings(max_new_tokens=MAX_NEW, batch_size=8, markers=pp, share_prefix=share),
        None,
        layer=LAYER,
        cache=cache,
    )
    got, _ = generate_all(
        lm,
        prompts,
        GenerationSettings(
            max_new_tokens=MAX_NEW, batch_size=8, markers=pp, share_prefix=share, draft=True
        ),
        deltas,
        layer=LAYER,
        cache=cache,
    )
    assert got == oracle_all(lm, pp, prompts, deltas, MAX_NEW)


@pytest.mark.slow
def test_demo_model_drafts_equal_plain_and_oracle(demo_lm, demo_params, tmp_path):
    """The demo model writes tool calls: drafts through a complete call stop where the oracle does."""
    pp = demo_params.prompt
    # the first gets a complete web_search call (the stand-in's second version answers
    # "What is 17 * 23?" itself)
    texts = ["Search the web for the latest news about electric cars.", "Say hello."]
    prompts = render_prompts(demo_lm.tokenizer, pp, texts)
    v = np.random.default_rng(3).standard_normal(demo_lm.hidden_size).astype(np.float32)
    v /= np.linalg.norm(v)
    deltas = np.stack([0.05 * v, -3.0 * v])  # barely steered (keeps its call), and steered
    max_new = 40
    want_base = oracle_all(demo_lm, pp, prompts, None, max_new)
    want = oracle_all(demo_lm, pp, prompts, deltas, max_new)
    assert any(pp.tool_call_end in o for o in want_base + want)  # a complete call was written
    cache = GenerationCache(tmp_path / "gen.sqlite", {"model": "demo"})
    assert (
        generate_all(
            demo_lm,
            prompts,
            GenerationSettings(max_new_tokens=max_new, batch_size=3, markers=pp),
            None,
            layer=LAYER,
            cache=cache,
        )[0]
        == want_base
    )
    st = GenerationStats()
    got, _ = generate_all(
        demo_lm,
        prompts,
        GenerationSettings(max_new_tokens=max_new, batch_size=3, markers=pp, draft=True),
        deltas,
        layer=LAYER,
        cache=cache,
        stats=st,
    )
    assert got == want
    assert st.drafted == len(prompts) and st.accepted_tokens > 0
    assert st.done_by_draft >= (want[0] == want_base[0])  # an unchanged call: decided by its draft
    cache.close()
