"""One-pass (online) ASA against the two-pass path the sweep uses, and against hand computations.

Two-pass (the reference): states from extraction -> compute_gates -> steering_deltas
-> generate_all. One-pass: asa_lib.method.online computes the gate inside the prefill.
The bundles are fitted by the project's own code (stages 03-05) on a few prompts;
p(tool) is also checked against scikit-learn's predict_proba on the same states.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_online import fit_bundle, pick_tau

from asa_lib.engine.generate import (
    GenerationSettings,
    generate_all,
)
from asa_lib.method.bundle import Bundle
from asa_lib.method.gate import alpha_effective, compute_gates, steering_deltas
from asa_lib.method.online import (
    OnlineGate,
    SteeringError,
    decide_prompts,
    generate_online,
    online_steering,
)
from asa_lib.model.load import decoder_blocks

# model -> (L*, rows per split per class for fitting, eval prompts, relative alpha, beta, new tokens)
SETUPS = {
    "tiny": (2, 3, 40, 0.5, 0.5, 6),
    "smol": (6, 2, 12, 0.5, 0.5, 8),
    "demo": (6, 2, 12, 1.0, 0.5, 8),  # the second stand-in needs alpha 1 to change an output
}
LM_FIXTURE = {
    "tiny": "tiny_lm",
    "smol": "smol_lm",
    "demo": "demo_lm",
}  # demo: SmolLM2 + the LoRA adapter
_CACHE: dict = {}


def setup(which: str, request):
    """Model, params, fitted bundle, eval prompts, their stage-02 states and a tau with mixed gates."""
    if which not in _CACHE:
        lm = request.getfixturevalue(LM_FIXTURE[which])
        params = request.getfixturevalue("tiny_params" if which == "tiny" else "demo_params")
        layer, per_split, n_eval, alpha, beta, max_new = SETUPS[which]
        f = fit_bundle(lm, params, layer, per_split, n_eval)
        prompts, h = f.eval_prompts, f.h_eval  # h: the states stage 02 stores
        tau = pick_tau(compute_gates(f.bundle, h, 0.5).p_tool)
        a_eff = alpha_effective(alpha, "relative", f.bundle)
        _CACHE[which] = dict(
            lm=lm,
            params=params,
            f=f,
            prompts=prompts,
            h=h,
            tau=tau,
            a_eff=a_eff,
            beta=beta,
            max_new=max_new,
            layer=layer,
        )
    return _CACHE[which]


def near_threshold(p: np.ndarray, tau: float, eps: float = 1e-5) -> list[int]:
    return [i for i, q in enumerate(p) if min(abs(q - tau), abs(q - (1 - tau))) <= eps]


@pytest.mark.parametrize(
    "which", ["tiny", *(pytest.param(w, marks=pytest.mark.slow) for w in ("smol", "demo"))]
)
def test_one_pass_equals_the_two_pass_sweep_path(which, request):
    s = setup(which, request)
    lm, pp, f, prompts, h, tau = s["lm"], s["params"].prompt, s["f"], s["prompts"], s["h"], s["tau"]
    b = f.bundle
    # two-pass: the sweep's path
    two = compute_gates(b, h, tau)
    deltas = steering_deltas(b, two, s["a_eff"], s["beta"])
    want, _ = generate_all(
        lm,
        prompts,
        GenerationSettings(max_new_tokens=s["max_new"], batch_size=8, markers=pp),
        deltas,
        layer=s["layer"],
    )
    baseline, _ = generate_all(
        lm,
        prompts,
        GenerationSettings(max_new_tokens=s["max_new"], batch_size=8, markers=pp),
        None,
        layer=s["layer"],
    )
    # one pass
    gate = OnlineGate(b, tau, s["a_eff"], s["beta"])
    got, dec = generate_online(
        lm, prompts, gate, GenerationSettings(max_new_tokens=s["max_new"], batch_size=8, markers=pp)
    )
    p1 = np.array([d.p_tool for d in dec])
    # independent reference: the scikit-learn objects the bundle was made from
    X = f.fit.scaler.transform(h.astype(np.float64))
    routed_sk = [f.fit.router_classes[i] for i in f.fit.router.predict(X)]
    p_sk = np.array(
        [
            f.fit.probes[d].predict_proba(X[i : i + 1])[0, 1] if d in b.probes else 0.5
            for i, d in enumerate(routed_sk)
        ]
    )

    near = near_threshold(p1, tau) + near_threshold(two.p_tool, tau)
    print(
        f"\n{which}: tau={tau:.6f}, max |p_one - p_two| = {np.abs(p1 - two.p_tool).max():.2e}, "
        f"max |p_one - p_sklearn| = {np.abs(p1 - p_sk).max():.2e}, gates {np.bincount(two.gate + 1, minlength=3)} "
        f"(-1/0/+1); prompts with p within 1e-5 of a threshold: "
        + (", ".join(f"#{i} p={p1[i]:.8f}" for i in sorted(set(near))) or "none")
    )
    assert [d.routed for d in dec] == two.routed == routed_sk
    np.testing.assert_allclose(p1, two.p_tool, atol=1e-5, rtol=0)
    np.testing.assert_allclose(p1, p_sk, atol=1e-5, rtol=0)
    assert [d.gate for d in dec] == two.gate.tolist()
    bad = [i for i, (x, y) in enumerate(zip(got, want)) if x != y]
    assert not bad, (
        f"{len(bad)} outputs differ, first #{bad[0]}: {got[bad[0]]!r} != {want[bad[0]]!r}"
    )
    # the comparison means something: every gate value occurs and steering changed outputs
    assert set(two.gate.tolist()) == {-1, 0, 1}
    assert any(x != y for x, y in zip(want, baseline))
    assert all(o == base for o, base, g in zip(got, baseline, two.gate) if g == 0)
    if f.no_probe is not None:  # the routed domain without a probe: p = 0.5, never steered
        rows = [i for i, d in enumerate(dec) if d.routed == f.no_probe]
        assert rows and all(dec[i].p_tool == 0.5 and dec[i].gate == 0 for i in rows)
    # tau = 0.5: every row with a probe is steered, rows without one never are (p = 0.5 >= tau)
    half = compute_gates(b, h, 0.5)
    got_half = [
        d.gate for d in decide_prompts(lm, prompts, OnlineGate(b, 0.5, s["a_eff"], s["beta"]))
    ]
    far = [i for i in range(len(prompts)) if i not in near_threshold(half.p_tool, 0.5)]
    assert [got_half[i] for i in far] == [int(half.gate[i]) for i in far]
    # deciding without generating gives the same decisions
    only = decide_prompts(lm, prompts, gate, batch_size=5)
    assert [d.routed for d in only] == two.routed and [d.gate for d in only] == two.gate.tolist()
    np.testing.assert_allclose([d.p_tool for d in only], two.p_tool, atol=1e-5, rtol=0)


def _raw(o):
    return (o[0] if isinstance(o, tuple) else o).detach().clone()


def expected_delta(b: Bundle, domain: str, gate: int, alpha_eff: float, beta: float) -> np.ndarray:
    """gate * alpha_eff * normalize(beta * v_global + (1 - beta) * v_domain), written out here."""
    vg = b.vectors["global"].astype(np.float64)
    v = (
        vg
        if domain not in b.vectors
        else beta * vg + (1 - beta) * b.vectors[domain].astype(np.float64)
    )
    return gate * alpha_eff * v / np.linalg.norm(v)


def test_each_prefill_is_steered_by_its_rows_delta_and_decode_steps_are_not(tiny_lm, request):
    s = setup("tiny", request)
    b, model, tok = s["f"].bundle, tiny_lm.model, tiny_lm.tokenizer
    two = compute_gates(b, s["h"], s["tau"])
    # rows of every gate value, and the domain without a vector where it is steered
    pick = [int(np.flatnonzero(two.gate == g)[0]) for g in (1, 0, -1)]
    pick += [
        i for i, (d, g) in enumerate(zip(two.routed, two.gate)) if d == s["f"].no_vector and g != 0
    ][:1]
    enc = tok(
        [s["prompts"][i] for i in pick], return_tensors="pt", padding=True, add_special_tokens=False
    )
    gate = OnlineGate(b, s["tau"], s["a_eff"], s["beta"])
    block = decoder_blocks(model)[b.layer]
    raw, seen = [], []
    h1 = block.register_forward_hook(
        lambda m, i, o: raw.append(_raw(o))
    )  # runs before the ASA hook
    try:
        with online_steering(model, gate) as session:
            h2 = block.register_forward_hook(lambda m, i, o: seen.append(_raw(o)))  # after it
            for _ in range(2):  # two generate calls in one `with`: each prefill is steered
                model.generate(
                    **enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
                )
            h2.remove()
    finally:
        h1.remove()
    prefills = [k for k, t in enumerate(raw) if t.shape[1] > 1]
    assert len(prefills) == 2 and len(session.calls) == 2 and session.calls[0] == session.calls[1]
    assert [d.gate for d in session.last] == two.gate[pick].tolist()
    assert [d.routed for d in session.last] == [two.routed[i] for i in pick]
    want = np.stack(
        [expected_delta(b, two.routed[i], int(two.gate[i]), s["a_eff"], s["beta"]) for i in pick]
    )
    for k in prefills:
        assert torch.equal(seen[k][:, :-1], raw[k][:, :-1])  # only the last prompt position moves
        np.testing.assert_allclose(
            (seen[k][:, -1] - raw[k][:, -1]).numpy(), want, rtol=0, atol=1e-5 * s["a_eff"]
        )
    decode = [k for k in range(len(raw)) if k not in prefills]
    assert len(decode) == 6 and all(torch.equal(seen[k], raw[k]) for k in decode)


def test_no_state_leaks_between_rows_or_calls(tiny_lm, request):
    s = setup("tiny", request)
    lm, pp, b = tiny_lm, s["params"].prompt, s["f"].bundle
    prompts = s["prompts"][:10]
    gate = OnlineGate(b, s["tau"], s["a_eff"], s["beta"])
    other = OnlineGate(b, 0.5, 3 * s["a_eff"], 0.0)  # another config: steers every row, harder
    block = decoder_blocks(lm.model)[b.layer]
    n_hooks = len(block._forward_hooks)
    baseline, _ = generate_all(
        lm,
        prompts,
        GenerationSettings(max_new_tokens=s["max_new"], batch_size=8, markers=pp),
        None,
        layer=b.layer,
    )

    batch = generate_online(
        lm, prompts, gate, GenerationSettings(max_new_tokens=s["max_new"], batch_size=8, markers=pp)
    )
    alone = [
        generate_online(
            lm, [p], gate, GenerationSettings(max_new_tokens=s["max_new"], batch_size=1, markers=pp)
        )
        for p in prompts
    ]
    generate_online(
        lm,
        prompts[::-1],
        other,
        GenerationSettings(max_new_tokens=s["max_new"], batch_size=3, markers=pp),
    )  # a call with other gates in between
    after = generate_online(
        lm, prompts, gate, GenerationSettings(max_new_tokens=s["max_new"], batch_size=4, markers=pp)
    )
    for i in range(len(prompts)):
        for out, dec in ((alone[i][0][0], alone[i][1][0]), (after[0][i], after[1][i])):
            assert out == batch[0][i]
            assert (dec.routed, dec.gate) == (batch[1][i].routed, batch[1][i].gate)
            assert abs(dec.p_tool - batch[1][i].p_tool) <= 1e-5
    gates = [d.gate for d in batch[1]]
    assert 0 in gates and any(g != 0 for g in gates)
    # a row left alone keeps its unsteered output, whatever its neighbours get
    assert all(o == base for o, base, g in zip(batch[0], baseline, gates) if g == 0)
    # one session, two calls: each call's decisions are its own rows only
    with online_steering(lm.model, gate) as session:
        for rows in ([0, 1, 2], [5]):
            enc = lm.tokenizer(
                [prompts[i] for i in rows],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            lm.model.generate(
                **enc, max_new_tokens=2, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id
            )
    assert [len(c) for c in session.calls] == [3, 1]
    assert (session.calls[1][0].routed, session.calls[1][0].gate) == (
        batch[1][5].routed,
        batch[1][5].gate,
    )
    # nothing is left behind, also after an exception inside the block
    with pytest.raises(RuntimeError, match="boom"), online_steering(lm.model, gate):
        raise RuntimeError("boom")
    assert len(block._forward_hooks) == n_hooks and "generate" not in vars(lm.model)
    assert (
        generate_all(
            lm,
            prompts,
            GenerationSettings(max_new_tokens=s["max_new"], batch_size=8, markers=pp),
            None,
            layer=b.layer,
        )[0]
        == baseline
    )


def test_misuse_is_refused(tiny_lm, request):
    s = setup("tiny", request)
    model, tok = tiny_lm.model, tiny_lm.tokenizer
    gate = OnlineGate(s["f"].bundle, s["tau"], s["a_eff"], s["beta"])
    texts = s["prompts"][:3]
    with online_steering(model, gate):
        with pytest.raises(SteeringError, match="already active"), online_steering(model, gate):
            pass
        tok.padding_side = "right"
        try:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = "left"
        assert (enc["attention_mask"][:, -1] == 0).any()
        with pytest.raises(SteeringError, match="left-pad"):
            model.generate(**enc, max_new_tokens=2, pad_token_id=tok.pad_token_id)
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with pytest.raises(SteeringError, match="chunked prefill"):
            model.generate(
                **enc, max_new_tokens=2, prefill_chunk_size=4, pad_token_id=tok.pad_token_id
            )
    assert "generate" not in vars(model)


def _toy(classes=("a", "b"), router_coef=((0.0, 0.0, 10.0),), router_b=(0.0,)) -> Bundle:
    H = 3
    return Bundle(
        layer=0,
        domains=list(classes),
        router_classes=list(classes),
        scaler_mean=np.zeros(H),
        scaler_scale=np.ones(H),
        router_coef=np.array(router_coef, dtype=np.float64),
        router_intercept=np.array(router_b, dtype=np.float64),
        probes={"a": (np.array([1.0, 0.0, 0.0]), 0.0)},
        vectors={"global": np.array([1, 0, 0], np.float32), "a": np.array([0, 1, 0], np.float32)},
        model_id="toy",
        hidden_size=H,
        num_layers=1,
        cal_mean_norm=2.0,
    )


def test_gate_rule_by_hand():
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    g = OnlineGate(_toy(), tau=0.6, alpha_eff=4.0, beta=0.0)
    h = torch.tensor(
        [[logit(0.7), 0, -1], [0.0, 0, -1], [logit(0.3), 0, -1], [logit(0.4), 0, -1], [5.0, 0, 1]]
    )
    idx, p, gate = g.decide(h)
    assert [g.classes[i] for i in idx] == ["a", "a", "a", "a", "b"]
    np.testing.assert_allclose(
        p.numpy(), [0.7, 0.5, 0.3, 0.4, 0.5], atol=1e-7
    )  # "b" has no probe: 0.5
    assert gate.tolist() == [1, 0, -1, -1, 0]
    d = g.delta(idx, gate, torch.device("cpu"), torch.float32)
    np.testing.assert_allclose(d.numpy(), [[0, 4, 0], [0, 0, 0], [0, -4, 0], [0, -4, 0], [0, 0, 0]])
    at_half = OnlineGate(_toy(), tau=0.5, alpha_eff=1.0, beta=0.0).decide(h[[1, 4]])[2].tolist()
    assert at_half == [1, 0]  # p >= tau wins at 0.5; a domain without a probe is never steered
    # float64: a p 1e-12 above tau gates +1, 1e-12 below does not
    x = torch.tensor([[0.3, 0.0, -1.0]])
    p0 = 1 / (1 + np.exp(-np.float64(np.float32(0.3))))
    assert OnlineGate(_toy(), tau=p0 - 1e-12, alpha_eff=1.0, beta=0.0).decide(x)[2].tolist() == [1]
    assert OnlineGate(_toy(), tau=p0 + 1e-12, alpha_eff=1.0, beta=0.0).decide(x)[2].tolist() == [0]
    # the domain without a vector is steered along the global vector; beta mixes
    b = _toy()
    b.probes["b"] = (np.array([1.0, 0.0, 0.0]), 0.0)
    g = OnlineGate(b, tau=0.6, alpha_eff=2.0, beta=0.5)
    idx, p, gate = g.decide(torch.tensor([[3.0, 0, 1], [3.0, 0, -1]]))
    np.testing.assert_allclose(
        g.delta(idx, gate, torch.device("cpu"), torch.float32).numpy(),
        [[2, 0, 0], [2**0.5, 2**0.5, 0]],
        atol=1e-6,
    )


def test_multiclass_router_matches_the_bundle_and_breaks_ties_to_the_first_class():
    b = _toy(
        classes=("a", "b", "c"),
        router_coef=((1.0, 0, 0), (0, 1.0, 0), (0, 0, 1.0)),
        router_b=(0, 0, 0),
    )
    g = OnlineGate(b, tau=0.6, alpha_eff=1.0, beta=0.0)
    rng = np.random.default_rng(0)
    h = rng.normal(size=(50, 3)).astype(np.float32)
    h[0] = [1.0, 1.0, 0.0]  # a tie between a and b: the first wins, as numpy's argmax
    idx, p, _ = g.decide(torch.from_numpy(h))
    assert [g.classes[i] for i in idx] == b.route(h) and g.classes[idx[0]] == "a"
    want = np.array([b.probe_proba(d, row[None])[0] for d, row in zip(b.route(h), h)])
    np.testing.assert_allclose(p.numpy(), want, atol=1e-12, rtol=0)
