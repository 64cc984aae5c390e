"""The prompt-major planner (:func:`asa_lib.engine.generate.generate_configs`) against an
independent reference: a plain per-config greedy loop, one prompt at a time, no KV cache,
with its own steering hook (``oracle`` of tests/test_exactness.py, written for the tests and
sharing nothing with the code under test).

Each prompt is prefilled once (positions 0 .. n-2) and every config continues from a fork of
that state: the outputs must equal the reference's token for token, on the tiny LFM2 (conv
layers: forks must copy the conv states) and on the demo model (attention only; rows
continuing from drafts of different lengths share a batch), with and without the shared
prefix and drafts. The state at L* read on the way must equal the extraction stage's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asa_lib.engine.cache import GenerationCache
from asa_lib.engine.decode import GenerationStats
from asa_lib.engine.extract import extract_states
from asa_lib.engine.generate import ConfigDeltas, GenerationSettings, generate_configs
from asa_lib.engine.prefix import shared_prefix, token_ids
from asa_lib.engine.promptmajor import PromptBatch
from asa_lib.prompts import render_prompts
from test_exactness import cache_tensors, instructions, mixed_deltas, oracle

LAYER = 1


def reference(lm, pp, prompts, deltas, max_new):
    return [
        oracle(
            lm.model,
            lm.tokenizer,
            p,
            None if deltas is None else deltas[i],
            LAYER,
            max_new,
            pp.tool_call_start,
            pp.tool_call_end,
        )
        for i, p in enumerate(prompts)
    ]


def three_configs(n: int, hidden: int, scale: float):
    a = mixed_deltas(n, hidden, scale, seed=1)
    other = mixed_deltas(n, hidden, scale, seed=7)
    b = np.where(np.arange(n)[:, None] % 2 == 0, a, other)  # half of its rows equal a's
    return [ConfigDeltas("baseline"), ConfigDeltas("a", a), ConfigDeltas("b", b)]


def check_against_reference(lm, pp, prompts, configs, max_new, batch_size, tmp_path):
    want = {c.name: reference(lm, pp, prompts, c.deltas, max_new) for c in configs}
    for share in (False, True):
        for draft in (False, True):
            stats = GenerationStats()
            cache = GenerationCache(tmp_path / f"g{share}{draft}.sqlite", {"m": lm.model_id})
            s = GenerationSettings(
                max_new_tokens=max_new,
                batch_size=batch_size,
                markers=pp,
                share_prefix=share,
                draft=draft,
            )
            res = generate_configs(lm, prompts, s, configs, LAYER, cache, stats=stats)
            cache.close()
            for c in configs:
                bad = [
                    i for i, (x, y) in enumerate(zip(res.outputs[c.name], want[c.name])) if x != y
                ]
                assert not bad, (
                    f"share_prefix={share} draft={draft} config {c.name}: {len(bad)} differ, "
                    f"first {bad[0]}: {res.outputs[c.name][bad[0]]!r} != {want[c.name][bad[0]]!r}"
                )
            distinct = {
                (i, None if c.deltas is None or not c.deltas[i].any() else c.deltas[i].tobytes())
                for c in configs
                for i in range(len(prompts))
            }
            assert res.generated_total == stats.generated == len(distinct)
            # every prompt with several rows prefilled once for all of them; the others whole
            rows_of = [sum(1 for j, _ in distinct if j == i) for i in range(len(prompts))]
            assert stats.prompt_prefills == sum(n > 1 for n in rows_of) > 0
            if draft:
                assert stats.drafted > 0
                # one prompt's configs verified its draft with the blocks below the delta shared
                assert stats.verified_from_block > 0
    return want


def test_tiny_lfm2_prompt_major_equals_a_plain_per_config_loop(tiny_lm, tiny_params, tmp_path):
    prompts = render_prompts(tiny_lm.tokenizer, tiny_params.prompt, instructions(24))
    configs = three_configs(len(prompts), tiny_lm.hidden_size, 50.0)
    check_against_reference(tiny_lm, tiny_params.prompt, prompts, configs, 6, 8, tmp_path)


def test_rows_continuing_from_drafts_of_different_lengths(tiny_lm, tiny_params, tmp_path):
    """Explicit drafts that go wrong at different tokens: rows continue from accepted prefixes
    of different lengths (grouped by length for LFM2's conv layers)."""
    pp = tiny_params.prompt
    prompts = render_prompts(tiny_lm.tokenizer, pp, instructions(16))
    deltas = mixed_deltas(len(prompts), tiny_lm.hidden_size, 50.0, seed=3)
    want = reference(tiny_lm, pp, prompts, deltas, 8)
    ids = token_ids(tiny_lm, want)
    drafts = []
    for i, d in enumerate(ids):
        d = list(d)
        if d:
            d[i % len(d)] = (d[i % len(d)] + 1) % tiny_lm.tokenizer.vocab_size  # wrong from there
        drafts.append(d)
    stats = GenerationStats()
    s = GenerationSettings(max_new_tokens=8, batch_size=4, markers=pp, draft=True)
    res = generate_configs(
        tiny_lm,
        prompts,
        s,
        [ConfigDeltas("x", deltas)],
        LAYER,
        drafts=drafts,
        stats=stats,
    )
    assert res.outputs["x"] == want
    assert stats.drafted == len(prompts) and stats.done_by_draft < len(prompts)


def test_the_state_at_l_star_read_on_the_way_equals_extraction(tiny_lm, tiny_params):
    prompts = render_prompts(tiny_lm.tokenizer, tiny_params.prompt, instructions(20))
    configs = three_configs(len(prompts), tiny_lm.hidden_size, 50.0)
    s = GenerationSettings(max_new_tokens=3, batch_size=6, markers=tiny_params.prompt)
    res = generate_configs(tiny_lm, prompts, s, configs, LAYER, read_states=True)
    want = extract_states(tiny_lm, prompts, batch_size=1)[:, LAYER]
    assert sorted(res.states) == list(range(len(prompts)))
    got = np.stack([res.states[i] for i in range(len(prompts))])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_forks_never_write_into_the_shared_prefill(tiny_lm, tiny_params):
    pp = tiny_params.prompt
    prompts = render_prompts(tiny_lm.tokenizer, pp, instructions(30))
    ids = token_ids(tiny_lm, prompts)
    by_len: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_len.setdefault(len(x), []).append(i)
    rows = max(by_len.values(), key=len)[:3]  # equal lengths: the prefix may be shared (LFM2)
    assert len(rows) >= 2
    prefix = shared_prefix(tiny_lm, ids)
    pb = PromptBatch(tiny_lm, [ids[i] for i in rows], prefix)
    snap = [t.clone() for t in cache_tensors(pb)]  # every tensor of pb.cache
    d = mixed_deltas(4, tiny_lm.hidden_size, 50.0, seed=5)
    d[0] = d[1]  # the same row twice, once per config
    first = pb.decode([0, 0, 1, 1], d, LAYER, 5, pp)
    again = pb.decode([0, 0, 1, 1], d, LAYER, 5, pp)
    assert first == again
    now = cache_tensors(pb)
    assert len(now) == len(snap) and all(torch.equal(a, b) for a, b in zip(now, snap))
    want = reference(tiny_lm, pp, [prompts[rows[j]] for j in (0, 0, 1, 1)], d, 5)
    got = [tiny_lm.tokenizer.decode(r, skip_special_tokens=False) for r in first]
    assert got == want


def test_padding_is_counted_and_small_when_lengths_are_grouped(tiny_lm, tiny_params):
    prompts = render_prompts(tiny_lm.tokenizer, tiny_params.prompt, instructions(24))
    steer = np.random.default_rng(0).standard_normal((len(prompts), tiny_lm.hidden_size))
    configs = [ConfigDeltas("baseline"), ConfigDeltas("a", 50.0 * steer.astype(np.float32))]
    stats = GenerationStats()
    s = GenerationSettings(
        max_new_tokens=2, batch_size=4, markers=tiny_params.prompt, share_prefix=False
    )
    generate_configs(tiny_lm, prompts, s, configs, LAYER, stats=stats)
    ids = token_ids(tiny_lm, prompts)
    # the padding of length-sorted batches of 4, counted by hand over positions 0 .. n-2
    lengths = sorted((len(x) for x in ids), reverse=True)
    pads = sum(
        sum(max(b) - n for n in b) for b in (lengths[s : s + 4] for s in range(0, len(lengths), 4))
    )
    assert stats.padded_tokens == pads
    assert stats.padded_tokens < 0.2 * sum(lengths)


@pytest.mark.slow
def test_demo_model_prompt_major_equals_a_plain_per_config_loop(demo_lm, demo_params, tmp_path):
    pp = demo_params.prompt
    texts = ["What is 17 times 23?", "Write a haiku about rain.", "Weather in Oslo?", "Hi"]
    prompts = render_prompts(demo_lm.tokenizer, pp, texts)
    n, h = len(prompts), demo_lm.hidden_size
    a = np.zeros((n, h), np.float32)
    g = np.random.default_rng(0).standard_normal((n, h)).astype(np.float32)
    a[:2] = 30.0 * g[:2] / np.linalg.norm(g[:2], axis=1, keepdims=True)
    configs = [ConfigDeltas("baseline"), ConfigDeltas("a", a), ConfigDeltas("b", -a)]
    check_against_reference(demo_lm, pp, prompts, configs, 12, 3, tmp_path)


def tiny_model(kind: str, **config):
    """A tiny random model of a transformers family (``kind``: its config and model class
    prefix, e.g. "Llama"), on the tiny tokenizer, seeded: 64 wide, 4 heads, 2 KV heads."""
    import transformers

    from asa_lib.model.load import LoadedModel, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    cfg = getattr(transformers, f"{kind}Config")(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        initializer_range=0.1,
        **config,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(transformers, f"{kind}ForCausalLM")(cfg)
    model.eval()
    return LoadedModel(model, tok, f"tiny-{kind.lower()}", torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_llama():
    """A tiny random Llama (attention only): forks of prompt batches of different widths are
    merged into one decoding batch there (LFM2's conv states cannot be)."""
    return tiny_model("Llama", num_hidden_layers=3)


def test_forks_of_several_prompt_batches_decode_as_one_batch(tiny_llama, tiny_params, tmp_path):
    pp = tiny_params.prompt
    prompts = render_prompts(tiny_llama.tokenizer, pp, instructions(24))
    ids = token_ids(tiny_llama, prompts)
    assert len({len(x) for x in ids}) > 5  # prompt batches of different widths
    configs = three_configs(len(prompts), tiny_llama.hidden_size, 50.0)
    check_against_reference(tiny_llama, pp, prompts, configs, 6, 8, tmp_path)


def test_decode_forks_merges_prompt_batches_of_different_widths(tiny_llama, tiny_params):
    from asa_lib.engine.promptmajor import decode_forks, mergeable

    pp = tiny_params.prompt
    prompts = render_prompts(tiny_llama.tokenizer, pp, instructions(30))
    ids = token_ids(tiny_llama, prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    short, long_ = order[:3], order[-3:]
    assert len(ids[long_[0]]) > len(ids[short[-1]])
    prefix = shared_prefix(tiny_llama, ids)
    a = PromptBatch(tiny_llama, [ids[i] for i in long_], prefix)
    b = PromptBatch(tiny_llama, [ids[i] for i in short], prefix)
    assert a.cached != b.cached and mergeable([a, b])
    rows = [long_[0], long_[2], short[1], short[1]]  # a row twice: two configs
    d = mixed_deltas(len(rows), tiny_llama.hidden_size, 50.0, seed=11)
    want = reference(tiny_llama, pp, [prompts[i] for i in rows], d, 6)
    first = decode_forks([(a, [0, 2], [[], []]), (b, [1, 1], [[], []])], d, LAYER, 6, pp)
    assert [tiny_llama.tokenizer.decode(r, skip_special_tokens=False) for r in first] == want
    # rows continuing from accepted prefixes (of one length: the planner groups them so)
    accs = [r[:2] for r in first]
    got = decode_forks([(a, [0, 2], accs[:2]), (b, [1, 1], accs[2:])], d, LAYER, 6, pp)
    assert [tiny_llama.tokenizer.decode(r, skip_special_tokens=False) for r in got] == want


def test_configs_at_two_blocks_from_one_call_equal_a_per_config_loop(
    tiny_lm, tiny_params, tmp_path
):
    """Issue 32: configs steering at different blocks (``ConfigDeltas.layer``) in one call share
    each prompt's prefill and decode together; each equals the plain loop with its own hook at
    its own block, token for token, and a config's cache key names its block."""
    pp = tiny_params.prompt
    prompts = render_prompts(tiny_lm.tokenizer, pp, instructions(12))
    n, H = len(prompts), tiny_lm.hidden_size
    a = mixed_deltas(n, H, 1.0, seed=1)  # small: a large delta swamps the block it is added at
    configs = [
        ConfigDeltas("baseline"),
        ConfigDeltas("at1", a),  # the call's block (LAYER = 1)
        ConfigDeltas("at2", a, layer=2),  # the same deltas at block 2
        ConfigDeltas("at0", mixed_deltas(n, H, 1.0, seed=5), layer=0),
    ]
    blocks = {"baseline": LAYER, "at1": LAYER, "at2": 2, "at0": 0}
    want = {}
    for c in configs:
        want[c.name] = [
            oracle(
                tiny_lm.model,
                tiny_lm.tokenizer,
                p,
                None if c.deltas is None else c.deltas[i],
                blocks[c.name],
                6,
                pp.tool_call_start,
                pp.tool_call_end,
            )
            for i, p in enumerate(prompts)
        ]
    assert want["at1"] != want["at2"]  # the block matters for these deltas
    for share in (False, True):
        for draft in (False, True):
            stats = GenerationStats()
            cache = GenerationCache(tmp_path / f"b{share}{draft}.sqlite", {"m": "tiny"})
            s = GenerationSettings(
                max_new_tokens=6, batch_size=5, markers=pp, share_prefix=share, draft=draft
            )
            res = generate_configs(tiny_lm, prompts, s, configs, LAYER, cache, stats=stats)
            cache.close()
            for c in configs:
                assert res.outputs[c.name] == want[c.name], (share, draft, c.name)
            # each prompt with steered rows prefilled once for the rows of every block
            steered = (a != 0).any(axis=1)
            assert stats.prompt_prefills == int(steered.sum())
            # at1 and at2 have the same deltas, yet distinct rows (the block is in the key)
            assert res.generated["at2"] == res.generated["at1"] == n  # own rows + unsteered
            assert res.generated_total == stats.generated
            assert res.generated_total >= n + 2 * int(steered.sum())


@pytest.fixture(scope="module")
def tiny_qwen2():
    """A tiny random Qwen2 (the ASA paper's model family): its blocks may be skipped."""
    return tiny_model("Qwen2", num_hidden_layers=4)


def teacher_forced(model, ids: list[int], draft: list[int], delta, layer: int) -> list[int]:
    """The test's own reference for a verify pass: one plain forward over prompt + draft, no
    cache, with its own hook adding ``delta`` to block ``layer``'s output at the last prompt
    token; the argmax after the prompt and after each draft token."""
    last = len(ids) - 1

    def add(_m, _i, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[0, last] += torch.as_tensor(delta).to(h.dtype)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = model.model.layers[layer].register_forward_hook(add)
    try:
        logits = model(input_ids=torch.tensor([ids + draft]), use_cache=False).logits[0]
    finally:
        handle.remove()
    return logits[last : last + len(draft) + 1].argmax(-1).tolist()


@pytest.fixture(scope="module")
def tiny_mistral():
    """A tiny random Mistral with a sliding window shorter than the prompts: the sliding mask
    must be sized the same in both halves of a split verify pass."""
    return tiny_model("Mistral", num_hidden_layers=4, sliding_window=8)


def check_verify(lm, pp, blocks_of, no_deltas: bool = False):
    """Three prompts, each verified three times (three configs at the blocks ``blocks_of(N)``),
    against :func:`teacher_forced`; returns the verify pass's stats."""
    from asa_lib.engine.promptmajor import PromptBatch

    prompts = render_prompts(lm.tokenizer, pp, instructions(3))
    ids = token_ids(lm, prompts)
    assert len({len(x) for x in ids}) > 1  # left-padded: the prompts are of different lengths
    pb = PromptBatch(lm, ids, None)
    snap = [t.clone() for t in cache_tensors(pb)]
    N = len(lm.model.model.layers)
    H = lm.hidden_size
    rows = [j for j in range(3) for _ in range(3)]  # each prompt three times: three configs
    layers = list(blocks_of(N)) * 3
    deltas = mixed_deltas(len(rows), H, 1.0, seed=2)
    deltas[::3] = np.random.default_rng(4).standard_normal((3, H)) * 1.0
    zero = np.zeros(H, np.float32)
    drafts = []
    for j in range(3):  # each prompt's draft: its first unsteered greedy tokens
        d = teacher_forced(lm.model, ids[j], [], zero, 0)
        for _ in range(5):
            d = teacher_forced(lm.model, ids[j], d, zero, 0)
        if j == 2:
            d[1] = (d[1] + 1) % len(lm.tokenizer)  # wrong from its second token
        drafts.append(d[: 4 + j])  # drafts of different lengths: right-padded windows
    row_drafts = [drafts[j] for j in rows]
    stats = GenerationStats()
    got = pb.verify(rows, row_drafts, None if no_deltas else deltas, layers, stats)
    want = [
        teacher_forced(lm.model, ids[j], row_drafts[r], zero if no_deltas else deltas[r], layers[r])
        for r, j in enumerate(rows)
    ]
    assert got == want
    if not no_deltas:
        assert len({tuple(g) for g in got}) > 3  # the configs' deltas changed what they verify
    now = cache_tensors(pb)
    assert len(now) == len(snap) and all(torch.equal(a, b) for a, b in zip(now, snap))
    # the model is left as it was: no block still skipped
    assert all("forward" not in vars(b) for b in lm.model.model.layers)
    return stats


@pytest.mark.parametrize("name", ["tiny_lm", "tiny_llama", "tiny_qwen2", "tiny_mistral"])
@pytest.mark.parametrize(
    "blocks_of", [lambda N: (1, 2, N - 1), lambda N: (0, 1, N - 1)], ids=["low1", "low0"]
)
def test_verify_runs_the_blocks_below_the_delta_once_and_equals_a_plain_forward(
    name, blocks_of, request, tiny_params
):
    """One prompt's configs verify the same draft: blocks 0 .. l (l the lowest steering block)
    run once per prompt, each config only the blocks above (``verified_from_block``). Every
    config, at its own block, gets the argmax a plain forward with its own hook gives, for
    drafts that are right and drafts that go wrong; the shared prefill is never written.
    Block 0 as the lowest puts the blocks the masks are sized on among the shared ones."""
    from asa_lib.model.load import blocks_can_be_skipped

    lm = request.getfixturevalue(name)
    assert blocks_can_be_skipped(lm.model)
    stats = check_verify(lm, tiny_params.prompt, blocks_of)
    assert stats.verified_from_block == 9


def test_a_split_verify_without_deltas_and_the_unsplit_fallback(tiny_lm, tiny_params, monkeypatch):
    """No deltas (explicit drafts of unsteered rows): still split, still the plain argmax. A
    model whose blocks cannot be skipped verifies through every block, with the same result."""
    from asa_lib.engine import promptmajor

    pp = tiny_params.prompt
    assert check_verify(tiny_lm, pp, lambda N: (1, 2, 3), no_deltas=True).verified_from_block == 9
    monkeypatch.setattr(promptmajor, "blocks_can_be_skipped", lambda model: False)
    assert check_verify(tiny_lm, pp, lambda N: (1, 2, 3)).verified_from_block == 0


def test_skipped_blocks_pass_their_input_through_and_are_restored_after_an_error(tiny_llama):
    from asa_lib.model.hooks import skip_blocks

    blocks = tiny_llama.model.model.layers
    x = torch.tensor([[5, 9, 13, 2]])
    want = tiny_llama.model(input_ids=x, use_cache=False).logits
    with skip_blocks(blocks, range(len(blocks))):
        # every block skipped: the final norm and LM head on the embeddings alone
        got = tiny_llama.model(input_ids=x, use_cache=False).logits
        emb = tiny_llama.model.model.embed_tokens(x)
        direct = tiny_llama.model.lm_head(tiny_llama.model.model.norm(emb))
        assert torch.allclose(got, direct)
    with pytest.raises(RuntimeError, match="boom"), skip_blocks(blocks, [0, 2]):
        raise RuntimeError("boom")
    assert all("forward" not in vars(b) for b in blocks)
    assert torch.equal(tiny_llama.model(input_ids=x, use_cache=False).logits, want)
    # a block's own instance forward (accelerate's device wrapper is one) is put back
    own = blocks[1].forward
    blocks[1].forward = own
    try:
        with skip_blocks(blocks, [1]):
            assert vars(blocks[1])["forward"] is not own
        assert vars(blocks[1])["forward"] is own
    finally:
        vars(blocks[1]).pop("forward", None)


def test_blocks_dispatched_by_accelerate_are_not_skipped(tiny_llama):
    from asa_lib.model.load import blocks_can_be_skipped

    block = tiny_llama.model.model.layers[2]
    assert blocks_can_be_skipped(tiny_llama.model)
    block._hf_hook = object()  # what accelerate's dispatch sets on a block of a device map
    try:
        assert not blocks_can_be_skipped(tiny_llama.model)
    finally:
        del block._hf_hook
