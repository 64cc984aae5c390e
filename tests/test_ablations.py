"""Every ablation mode's gate and vector arithmetic on the tiny model, and what it does to generation.

A bundle is fitted on the tiny LFM2 by the project's own code (stages 03-05,
``helpers_online.fit_bundle``), saved and loaded as stage 07 would. For each
mode (gate probe / oracle / always / none, vector random, beta 1 = global only,
beta 0 = domain only) :mod:`asa_lib.method.gate` computes gates and deltas on real
eval-prompt states; the test recomputes them in plain numpy from the tensors in
``adapter.safetensors`` (read directly, not through :class:`Bundle`) and
checks that a steered generation changes exactly the rows with a non-zero gate.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_online import fit_bundle, pick_tau
from safetensors.numpy import load_file

from asa_lib.engine.generate import (
    GenerationSettings,
    generate_all,
)
from asa_lib.method.bundle import load_bundle, save_bundle
from asa_lib.method.gate import alpha_effective, compute_gates, steering_deltas
from asa_lib.params import SweepConfig

LAYER, PER_SPLIT, N_EVAL = 2, 3, 12
ALPHA = 2.0  # relative to the mean CAL state norm: large enough to move the tiny model's outputs
MAX_NEW = 4
SEED = 11


@pytest.fixture(scope="module")
def tiny_setup(tiny_lm, tiny_params, tmp_path_factory):
    f = fit_bundle(tiny_lm, tiny_params, LAYER, PER_SPLIT, N_EVAL)
    folder = save_bundle(f.bundle, tmp_path_factory.mktemp("ablations") / "adapter")
    bundle = load_bundle(folder)  # the gate reads what stage 07 stores
    stored = load_file(str(folder / "adapter.safetensors"))
    meta = json.loads((folder / "adapter.json").read_text())
    tau = pick_tau(compute_gates(bundle, f.h_eval, 0.5).p_tool)
    base, _ = generate_all(
        tiny_lm,
        f.eval_prompts,
        GenerationSettings(max_new_tokens=MAX_NEW, batch_size=8, markers=tiny_params.prompt),
        None,
        layer=LAYER,
    )  # unsteered
    return dict(
        lm=tiny_lm,
        pp=tiny_params.prompt,
        f=f,
        bundle=bundle,
        stored=stored,
        meta=meta,
        h=f.h_eval,
        tau=tau,
        base=base,
    )


# ---------------------------------------------------------------- the expectations, in plain numpy


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _scaled(s, h):
    return (h.astype(np.float64) - s["stored"]["scaler.mean"]) / s["stored"]["scaler.scale"]


def _routed(s, h):
    """argmax of the router's scores (a single score is a sigmoid: class 1 above 0.5)."""
    t, classes = s["stored"], s["meta"]["router_classes"]
    z = _scaled(s, h) @ t["router.coef"].T + t["router.intercept"]
    if z.shape[1] == 1:
        return [classes[int(v > 0)] for v in z[:, 0]]
    return [classes[int(i)] for i in z.argmax(axis=1)]


def _p_tool(s, h, domains):
    """P(tool) from each row's domain's probe; 0.5 where the domain has no probe."""
    t, z = s["stored"], _scaled(s, h)
    out = []
    for d, row in zip(domains, z):
        if f"probe.{d}.coef" in t:
            out.append(_sigmoid(row @ t[f"probe.{d}.coef"] + t[f"probe.{d}.intercept"][0]))
        else:
            out.append(0.5)
    return np.array(out)


def _tau_gate(p, has_probe, tau):
    g = np.zeros(len(p), dtype=np.int64)
    g[p >= tau] = 1
    g[p <= 1 - tau] = -1
    g[~has_probe] = 0
    return g


def _alpha_eff(s):
    return ALPHA * s["meta"]["cal_mean_norm"]


def _vec(s, d, beta):
    """The mixture vector: normalize(beta * v_global + (1 - beta) * v_d), v_global without v_d."""
    t = s["stored"]
    vg = t["vector.global"].astype(np.float64)
    if f"vector.{d}" not in t:
        return vg
    v = beta * vg + (1 - beta) * t[f"vector.{d}"].astype(np.float64)
    return v / np.linalg.norm(v)


def _random_unit(hidden, seed):
    v = np.random.default_rng(seed).standard_normal(hidden)
    return v / np.linalg.norm(v)


def _expected(s, mode):
    """(routed domains, p_tool, gate, deltas) for ``mode``, from the stored tensors only."""
    h, tau, a = s["h"], s["tau"], _alpha_eff(s)
    true = s["f"].eval_domains
    domains = list(true) if mode == "oracle" else _routed(s, h)
    p = _p_tool(s, h, domains)
    has_probe = np.array([f"probe.{d}.coef" in s["stored"] for d in domains])
    if mode == "always":
        g = np.ones(len(h), dtype=np.int64)
    elif mode == "none":
        g = np.zeros(len(h), dtype=np.int64)
    else:  # probe, oracle, and the vector ablations under the probe gate
        g = _tau_gate(p, has_probe, tau)
    H = h.shape[1]
    deltas = np.zeros((len(h), H))
    for i, d in enumerate(domains):
        if g[i] == 0:
            continue
        if mode == "random":
            v = _random_unit(H, SEED)
        elif mode == "beta1":
            v = s["stored"]["vector.global"].astype(np.float64)  # global only, for every domain
        elif mode == "beta0":
            key = f"vector.{d}" if f"vector.{d}" in s["stored"] else "vector.global"
            v = s["stored"][key].astype(np.float64)  # the domain's own vector only
        else:
            v = _vec(s, d, 0.5)
        deltas[i] = g[i] * a * v
    return domains, p, g, deltas


CONFIGS = {
    "probe": lambda tau: SweepConfig("probe", tau=tau, alpha=ALPHA, beta=0.5),
    "oracle": lambda tau: SweepConfig("oracle", tau=tau, alpha=ALPHA, beta=0.5, gate="oracle"),
    "always": lambda tau: SweepConfig("always", alpha=ALPHA, beta=0.5, gate="always"),
    "none": lambda tau: SweepConfig("none", alpha=ALPHA, beta=0.5, gate="none"),
    "random": lambda tau: SweepConfig(
        "random", tau=tau, alpha=ALPHA, beta=0.5, vector="random", seed=SEED
    ),
    "beta1": lambda tau: SweepConfig("beta1", tau=tau, alpha=ALPHA, beta=1.0),
    "beta0": lambda tau: SweepConfig("beta0", tau=tau, alpha=ALPHA, beta=0.0),
}


def _computed(s, mode):
    config = CONFIGS[mode](s["tau"])
    gates = compute_gates(s["bundle"], s["h"], config, s["f"].eval_domains)
    a_eff = alpha_effective(config.alpha, "relative", s["bundle"])
    return config, gates, a_eff, steering_deltas(s["bundle"], gates, a_eff, config)


# ---------------------------------------------------------------- tests


def test_the_fitted_bundle_exercises_every_branch(tiny_setup):
    """The fixture is worth testing on: +1, -1 and 0 gates, routed domains without probe or vector."""
    s = tiny_setup
    domains, p, g, _ = _expected(s, "probe")
    assert set(g.tolist()) == {-1, 0, 1}
    no_probe = [i for i, d in enumerate(domains) if d == s["f"].no_probe]
    assert no_probe and np.all(p[no_probe] == 0.5)  # p = 0.5 recorded, never steered
    # a steered row whose domain has no vector of its own (the global vector stands in)
    assert any(g[i] != 0 and d == s["f"].no_vector for i, d in enumerate(domains))
    assert domains != list(s["f"].eval_domains)  # the oracle gate routes differently somewhere


@pytest.mark.parametrize("mode", list(CONFIGS))
def test_gates_and_deltas_match_plain_numpy(tiny_setup, mode):
    s = tiny_setup
    config, gates, a_eff, deltas = _computed(s, mode)
    domains, p, g, expected = _expected(s, mode)
    assert a_eff == pytest.approx(_alpha_eff(s), rel=1e-12)
    assert gates.routed == domains
    np.testing.assert_allclose(gates.p_tool, p, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(gates.gate, g)
    assert deltas.dtype == np.float32 and deltas.shape == expected.shape
    np.testing.assert_allclose(deltas, expected, rtol=1e-5, atol=1e-5 * _alpha_eff(s))
    assert not np.any(deltas[g == 0])  # a zero gate is exactly no steering
    norms = np.linalg.norm(deltas[g != 0].astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, a_eff, rtol=1e-5)  # unit vectors, scaled by alpha_eff
    if mode == "always":
        assert g.tolist() == [1] * len(g)
    if mode == "none":
        assert not config.steers and not np.any(deltas)
    if mode == "random":
        v = _random_unit(s["h"].shape[1], SEED)
        for i in np.flatnonzero(g):  # one vector for every domain, norm-matched to the others
            np.testing.assert_allclose(deltas[i], g[i] * a_eff * v, rtol=1e-5, atol=1e-5 * a_eff)
        for name, w in s["stored"].items():
            if name.startswith("vector."):
                assert abs(float(v @ w)) < 0.9  # not one of the bundle's vectors
    if mode == "beta1":
        # global only and domain only differ on steered rows whose domain has its own vector
        own = [i for i in np.flatnonzero(g) if f"vector.{domains[i]}" in s["stored"]]
        assert own and not np.allclose(deltas[own], _expected(s, "beta0")[3][own])


@pytest.mark.parametrize("mode", list(CONFIGS))
def test_steered_generation_changes_only_rows_with_a_gate(tiny_setup, mode):
    s = tiny_setup
    _, gates, _, deltas = _computed(s, mode)
    out, _ = generate_all(
        s["lm"],
        s["f"].eval_prompts,
        GenerationSettings(max_new_tokens=MAX_NEW, batch_size=8, markers=s["pp"]),
        deltas,
        layer=LAYER,
    )
    g = gates.gate
    for i, (o, b) in enumerate(zip(out, s["base"])):
        if g[i] == 0:
            assert o == b, f"row {i} has gate 0 but its output changed"
        else:
            assert o != b, f"row {i} has gate {g[i]} but its output did not change"
    if mode == "none":
        assert out == s["base"]
