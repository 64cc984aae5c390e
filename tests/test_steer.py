import numpy as np
import pytest
import torch

from asa_lib.engine.cache import GenerationCache
from asa_lib.engine.decode import generate_batch
from asa_lib.engine.generate import (
    GenerationSettings,
    generate_all,
)
from asa_lib.method.bundle import Bundle
from asa_lib.method.gate import Gates, compute_gates, random_unit_vector, steering_deltas
from asa_lib.model.hooks import steer_last_prompt_token
from asa_lib.model.load import decoder_blocks
from asa_lib.params import SweepConfig
from asa_lib.prompts import render_prompts
from conftest import PROMPTS

LAYER = 1


def _full_capture(block, store):
    return block.register_forward_hook(
        lambda m, i, o: store.append((o[0] if isinstance(o, tuple) else o).detach().clone())
    )


def _prompts(lm, params, texts=PROMPTS):
    return render_prompts(lm.tokenizer, params.prompt, texts)


def _delta(lm, n, scale=30.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, lm.hidden_size, generator=g) * scale


def test_only_block_lstar_and_only_the_last_position_change_by_exactly_delta(tiny_lm, tiny_params):
    enc = tiny_lm.tokenizer(
        _prompts(tiny_lm, tiny_params), return_tensors="pt", padding=True, add_special_tokens=False
    )
    blocks = decoder_blocks(tiny_lm.model)
    delta = _delta(tiny_lm, len(PROMPTS))

    def run(steer):
        outs = {i: [] for i in range(len(blocks))}
        pre = []
        handles = [
            blocks[LAYER].register_forward_hook(lambda m, i, o: pre.append(o.detach().clone()))
        ]
        with torch.no_grad(), steer_last_prompt_token(blocks[LAYER], delta if steer else None):
            handles += [_full_capture(b, outs[i]) for i, b in enumerate(blocks)]
            tiny_lm.model(**enc, use_cache=False)
        for h in handles:
            h.remove()
        return {i: v[0] for i, v in outs.items()}, pre[0]

    plain, _ = run(False)
    steered, pre = run(True)
    for i in range(LAYER):
        assert torch.equal(plain[i], steered[i])
    s, p = steered[LAYER], plain[LAYER]
    assert torch.equal(s[:, :-1], p[:, :-1])  # every other position untouched
    assert torch.equal(s[:, -1], pre[:, -1] + delta)  # last position moved by exactly delta
    assert torch.equal(pre, p)
    for i in range(
        LAYER + 1, len(blocks)
    ):  # later blocks: the change propagates only forward in time
        assert torch.equal(steered[i][:, :-1], plain[i][:, :-1])
        assert not torch.allclose(steered[i][:, -1], plain[i][:, -1])


def test_decode_steps_are_not_touched(tiny_lm, tiny_params):
    enc = tiny_lm.tokenizer(
        _prompts(tiny_lm, tiny_params)[:2],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    block = decoder_blocks(tiny_lm.model)[LAYER]
    before, after = [], []
    h1 = block.register_forward_hook(lambda m, i, o: before.append(o.detach().clone()))
    with steer_last_prompt_token(block, _delta(tiny_lm, 2)) as hook:
        h2 = block.register_forward_hook(lambda m, i, o: after.append(o.detach().clone()))
        with torch.no_grad():
            tiny_lm.model.generate(
                **enc,
                max_new_tokens=5,
                do_sample=False,
                pad_token_id=tiny_lm.tokenizer.pad_token_id,
            )
    h1.remove()
    h2.remove()
    assert hook.fired and len(before) == len(after) == 5  # prefill + 4 decode steps
    assert not torch.equal(before[0], after[0])
    for b, a in zip(before[1:], after[1:]):
        assert b.shape[1] == 1 and torch.equal(b, a)


def test_zero_gate_rows_equal_unsteered_output(tiny_lm, tiny_params):
    prompts = _prompts(tiny_lm, tiny_params)
    plain = generate_batch(tiny_lm, prompts, None, LAYER, 8, tiny_params.prompt)
    d = _delta(tiny_lm, len(prompts), scale=200.0).numpy()
    d[[0, 2]] = 0
    mixed = generate_batch(tiny_lm, prompts, d, LAYER, 8, tiny_params.prompt)
    assert mixed[0] == plain[0] and mixed[2] == plain[2]
    assert mixed[1] != plain[1] or mixed[3] != plain[3]  # the steering does act on this model
    zero = generate_batch(tiny_lm, prompts, np.zeros_like(d), LAYER, 8, tiny_params.prompt)
    assert zero == plain


def test_batched_steered_generation_equals_one_at_a_time(tiny_lm, tiny_params):
    prompts = _prompts(tiny_lm, tiny_params)
    d = _delta(tiny_lm, len(prompts), scale=100.0, seed=3).numpy()
    d[1] = 0
    batched = generate_batch(tiny_lm, prompts, d, LAYER, 8, tiny_params.prompt)
    single = [
        generate_batch(tiny_lm, [p], d[i : i + 1], LAYER, 8, tiny_params.prompt)[0]
        for i, p in enumerate(prompts)
    ]
    assert batched == single


def _toy_bundle():
    H = 3
    return Bundle(
        layer=0,
        domains=["a", "b"],
        router_classes=["a", "b"],
        scaler_mean=np.zeros(H),
        scaler_scale=np.ones(H),
        router_coef=np.array([[0.0, 0.0, 10.0]]),
        router_intercept=np.zeros(1),
        probes={"a": (np.array([1.0, 0.0, 0.0]), 0.0)},
        vectors={"global": np.array([1, 0, 0], np.float32), "a": np.array([0, 1, 0], np.float32)},
        model_id="toy",
        hidden_size=H,
        num_layers=1,
        cal_mean_norm=2.0,
    )


def test_gate_rule_and_fallbacks():
    b = _toy_bundle()
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    h = np.array(
        [[logit(0.7), 0, -1], [0.0, 0, -1], [logit(0.3), 0, -1], [logit(0.4), 0, -1], [5.0, 0, 1]]
    )
    g = compute_gates(b, h, SweepConfig("x", tau=0.6))
    assert g.routed == ["a", "a", "a", "a", "b"]
    np.testing.assert_allclose(g.p_tool, [0.7, 0.5, 0.3, 0.4, 0.5])  # "b" has no probe: p = 0.5
    assert g.gate.tolist() == [1, 0, -1, -1, 0]
    assert compute_gates(b, h[1:2], SweepConfig("x", tau=0.5)).gate.tolist() == [
        1
    ]  # p >= tau wins at 0.5


def test_no_probe_no_steering_even_at_tau_one_half():
    b = _toy_bundle()
    g = compute_gates(b, np.array([[5.0, 0, 1], [0.0, 0, -1]]), SweepConfig("x", tau=0.5))
    assert g.routed == ["b", "a"] and g.p_tool.tolist() == [0.5, 0.5]
    assert g.gate.tolist() == [0, 1] and g.has_probe.tolist() == [False, True]


def test_vector_mixture_and_deltas():
    b = _toy_bundle()
    np.testing.assert_allclose(b.steering_vector("a", 0.0), [0, 1, 0], atol=1e-7)
    np.testing.assert_allclose(b.steering_vector("a", 1.0), [1, 0, 0], atol=1e-7)
    np.testing.assert_allclose(b.steering_vector("a", 0.5), [2**-0.5, 2**-0.5, 0], atol=1e-7)
    np.testing.assert_array_equal(b.steering_vector("b", 0.5), [1, 0, 0])  # no vector for b: global
    gates = Gates(["a", "a", "b"], np.array([0.9, 0.5, 0.1]), np.array([1, 0, -1]))
    d = steering_deltas(b, gates, alpha_eff=4.0, config=SweepConfig("x", tau=0.6, beta=0.0))
    np.testing.assert_allclose(d, [[0, 4, 0], [0, 0, 0], [-4, 0, 0]], atol=1e-6)


def test_ablation_gates_and_vectors():
    """gate: always / oracle / none and vector: random, on the toy bundle's arithmetic."""
    b = _toy_bundle()
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    h = np.array([[logit(0.9), 0, -1], [logit(0.2), 0, -1], [5.0, 0, 1]])  # routed a, a, b
    true = ["b", "a", "a"]
    assert compute_gates(b, h, SweepConfig("p", tau=0.6)).gate.tolist() == [1, -1, 0]
    always = compute_gates(b, h, SweepConfig("n", gate="always"))
    assert always.gate.tolist() == [1, 1, 1] and always.routed == ["a", "a", "b"]
    oracle = compute_gates(b, h, SweepConfig("o", tau=0.6, gate="oracle"), true_domains=true)
    # the true domain replaces the router: row 0 is "b" (no probe: p 0.5, never steered), row 2 is "a"
    assert oracle.routed == true and oracle.gate.tolist() == [0, -1, 1]
    np.testing.assert_allclose(oracle.p_tool, [0.5, 0.2, 1 / (1 + np.exp(-5.0))])
    assert compute_gates(b, h, SweepConfig("z", tau=0.6, gate="none")).gate.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="true domain"):
        compute_gates(b, h, SweepConfig("o", tau=0.6, gate="oracle"))
    rnd = SweepConfig("r", tau=0.6, vector="random", seed=7)
    g = Gates(["a", "a", "b"], np.zeros(3), np.array([1, 0, -1]))
    d = steering_deltas(b, g, 2.0, rnd)
    v = random_unit_vector(3, 7)
    assert abs(np.linalg.norm(v) - 1) < 1e-6 and not np.allclose(np.abs(v), [1, 0, 0])
    np.testing.assert_allclose(d, [2 * v, 0 * v, -2 * v], atol=1e-6)  # one vector for every domain
    np.testing.assert_array_equal(random_unit_vector(3, 7), v)  # recorded seed: reproducible
    glob = steering_deltas(b, g, 1.0, SweepConfig("g", tau=0.6, beta=1.0))  # global only
    np.testing.assert_allclose(glob, [[1, 0, 0], [0, 0, 0], [-1, 0, 0]], atol=1e-6)


def test_cache_reuses_outputs_and_equals_fresh_generation(tiny_lm, tiny_params, tmp_path):
    prompts = _prompts(tiny_lm, tiny_params) * 2  # duplicates are generated once
    d = _delta(tiny_lm, len(prompts), scale=100.0, seed=5).numpy()
    d[[0, 4]] = 0

    def gen(deltas, cache):
        return generate_all(
            tiny_lm,
            prompts,
            GenerationSettings(max_new_tokens=8, batch_size=3, markers=tiny_params.prompt),
            deltas,
            layer=LAYER,
            cache=cache,
        )

    fresh_base, n0 = gen(None, None)
    fresh_steer, _ = gen(d, None)
    assert n0 == 4
    cache = GenerationCache(tmp_path / "gen.sqlite", {"model": "tiny"})
    base, n1 = gen(None, cache)
    steer, n2 = gen(d, cache)
    assert base == fresh_base and steer == fresh_steer
    assert n1 == 4 and n2 == len(prompts) - 2  # zero-gate rows reuse the baseline
    again, n3 = gen(d, cache)
    assert again == steer and n3 == 0
    cache.close()
    reopened = GenerationCache(tmp_path / "gen.sqlite", {"model": "tiny"})
    assert len(reopened) == 4 + len(prompts) - 2
    other = GenerationCache(tmp_path / "gen.sqlite", {"model": "other"})
    assert gen(None, other)[1] == 4  # another context never reuses these outputs


@pytest.mark.parametrize("which", ["tiny", "smol"])
def test_prefix_shared_batched_generation_equals_the_simple_path(
    which, tiny_lm, tiny_params, request
):
    lm = tiny_lm if which == "tiny" else request.getfixturevalue("smol_lm")
    params = tiny_params if which == "tiny" else request.getfixturevalue("demo_params")
    texts = PROMPTS + ["Translate 'dog' into French.", "Compute 2+2"]
    prompts = _prompts(lm, params, texts)
    d = _delta(lm, len(prompts), scale=50.0 if which == "tiny" else 2.0, seed=7).numpy()
    d[0] = 0
    fast, n = generate_all(
        lm,
        prompts,
        GenerationSettings(max_new_tokens=12, batch_size=4, markers=params.prompt),
        d,
        layer=LAYER,
    )  # shared prefix, batched
    simple = [
        generate_batch(lm, [p], d[i : i + 1], LAYER, 12, params.prompt)[0]
        for i, p in enumerate(prompts)
    ]
    assert n == len(prompts) and fast == simple


def test_a_finished_row_is_cut_where_a_one_row_generation_stops(tiny_lm, tiny_params):
    from asa_lib.engine.decode import clean_row

    tok, pp = tiny_lm.tokenizer, tiny_params.prompt
    ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos, pad = tok.eos_token_id, tok.pad_token_id
    call = ids('ok <|tool_call_start|>[calculator(expression="1")]<|tool_call_end|>')
    # the batch padded the row after the call with the EOS token (pad == eos, as in SmolLM2)
    assert clean_row(call + [eos, eos], {eos}, eos, tok, pp) == call
    assert clean_row(call + [pad, pad], {eos}, pad, tok, pp) == call
    plain = ids("plain answer")
    assert clean_row(plain + [eos, pad, pad], {eos}, pad, tok, pp) == plain + [eos]
    assert clean_row(plain + [pad], {eos}, pad, tok, pp) == plain


def test_share_prefix_setting(tiny_lm, smol_lm):
    from asa_lib.engine.generate import share_prefix_for

    assert share_prefix_for("auto", tiny_lm) and share_prefix_for(
        "auto", smol_lm
    )  # CPU: always pays
    assert not share_prefix_for("never", smol_lm) and share_prefix_for("always", tiny_lm)
    gpu_lfm2 = type(tiny_lm)(
        tiny_lm.model, tiny_lm.tokenizer, tiny_lm.model_id, torch.device("cuda")
    )
    assert not share_prefix_for("auto", gpu_lfm2)  # conv layers on a GPU: whole-prompt batches
