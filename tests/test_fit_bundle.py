"""``probing.fit_bundle`` / ``fit_from_states`` (stages 03-05 from states) against plain computations.

The reference fits are written out here with numpy and scikit-learn directly
(no helper of ``asa_lib.method.probing``): the layer sweep, the unit mean
differences, the scaler, the router over the sorted domains, the per-domain
probes (at least 4 TRAIN rows of both classes) and the mean CAL norm.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from asa_lib.data import make_splits_from_params
from asa_lib.engine.extract import extract_states
from asa_lib.layout import RunDir
from asa_lib.method import probing
from asa_lib.method.bundle import save_bundle
from asa_lib.prompts import render_prompts

SPLITS = ("cal", "train", "valid")


def _lr(X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(max_iter=2000, C=1.0).fit(X, y)


@pytest.fixture(scope="module")
def tiny_states(tiny_lm, tiny_params):
    params = copy.deepcopy(tiny_params)
    params.data.per_split_per_class = 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = make_splits_from_params(params)
    xs = result.samples
    states = {
        s: extract_states(
            tiny_lm, render_prompts(tiny_lm.tokenizer, params.prompt, [x.text for x in xs[s]])
        )
        for s in SPLITS
    }
    y = {s: np.array([x.label for x in xs[s]]) for s in SPLITS}
    d = {s: [x.domain for x in xs[s]] for s in SPLITS}
    return states, y, d, result.domains


def test_fit_from_states_equals_a_plain_computation_on_the_tiny_model(tiny_lm, tiny_states):
    states, y, d, run_domains = tiny_states
    bundle, report = probing.fit_from_states(
        states, y, d, run_domains, model_id=tiny_lm.model_id, model_fingerprint="fp"
    )

    # 03: per layer, scaler + probe on CAL, AUC on VALID; L* = first best
    aucs = []
    for layer in range(states["cal"].shape[1]):
        Xc, Xv = (states[s][:, layer].astype(np.float64) for s in ("cal", "valid"))
        sc = StandardScaler().fit(Xc)
        lr = _lr(sc.transform(Xc), y["cal"])
        aucs.append(roc_auc_score(y["valid"], lr.predict_proba(sc.transform(Xv))[:, 1]))
    L = int(np.flatnonzero(np.array(aucs) == max(aucs))[0])
    assert bundle.layer == report.layers.best_layer == L
    np.testing.assert_allclose(report.layers.auc, aucs, rtol=0, atol=1e-12)

    hc = states["cal"][:, L].astype(np.float64)
    ht = states["train"][:, L].astype(np.float64)
    yc, yt = y["cal"], y["train"]
    dc, dt = np.array(d["cal"]), np.array(d["train"])

    # the class order: the run's domains, sorted by name
    names = sorted(run_domains)
    assert bundle.domains == report.domains == names
    assert bundle.router_classes == [n for n in names if (dt == n).any()]

    # 04: unit mean differences on raw CAL states (the stage averages float32 states: float32 noise)
    def unit(v):
        return v / np.sqrt((v * v).sum())

    want = {"global": unit(hc[yc == 1].mean(0) - hc[yc == 0].mean(0))}
    for n in names:
        t, f = (dc == n) & (yc == 1), (dc == n) & (yc == 0)
        if t.any() and f.any():
            want[n] = unit(hc[t].mean(0) - hc[f].mean(0))
    assert list(bundle.vectors) == sorted(want)
    for k, v in want.items():
        assert bundle.vectors[k].dtype == np.float32
        np.testing.assert_allclose(bundle.vectors[k], v, rtol=0, atol=1e-5)

    # 05: scaler on CAL, router and probes on TRAIN
    mean, std = hc.mean(0), hc.std(0)
    np.testing.assert_allclose(bundle.scaler_mean, mean, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(bundle.scaler_scale, std, rtol=1e-9)
    sc = StandardScaler().fit(hc)
    X = sc.transform(ht)
    router = _lr(X, np.array([bundle.router_classes.index(v) for v in dt]))
    np.testing.assert_allclose(bundle.router_coef, router.coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bundle.router_intercept, router.intercept_, rtol=1e-9, atol=1e-12)
    with_probe = []
    for n in names:
        m = dt == n
        if m.sum() >= 4 and 0 < yt[m].sum() < m.sum():
            with_probe.append(n)
            p = _lr(X[m], yt[m])
            coef, b = bundle.probes[n]
            np.testing.assert_allclose(coef, p.coef_[0], rtol=1e-9, atol=1e-12)
            assert b == pytest.approx(p.intercept_[0], rel=1e-9, abs=1e-12)
    assert sorted(bundle.probes) == with_probe and with_probe

    # the relative alpha unit, and what the bundle says it was built on
    norm = np.sqrt((hc * hc).sum(1)).mean()
    assert bundle.cal_mean_norm == report.cal_mean_norm == pytest.approx(norm, rel=1e-6)
    assert (bundle.model_id, bundle.model_fingerprint) == (tiny_lm.model_id, "fp")
    assert (bundle.num_layers, bundle.hidden_size) == (tiny_lm.num_layers, tiny_lm.hidden_size)


def test_stage_04_vectors_read_back_give_the_same_bundle_files(tiny_states, tmp_path):
    """Stages 04 -> 05 through ``vectors/`` (the notebooks) equal one in-memory fit (tests, benchmarks)."""
    states, y, d, run_domains = tiny_states
    layer = 2
    h = {s: states[s][:, layer] for s in SPLITS}
    kw = dict(model_id="tiny", num_layers=states["cal"].shape[1])
    b_mem, r_mem = probing.fit_bundle(h, y, d, layer, run_domains, **kw)

    run = RunDir(tmp_path / "run")
    vectors, notes = probing.steering_vectors(
        h["cal"], y["cal"], d["cal"], probing.class_order(run_domains)
    )
    probing.save_vectors(run, vectors, layer, notes)
    b_run, r_run = probing.fit_bundle(
        h, y, d, layer, run_domains, vectors=probing.load_vectors(run), **kw
    )
    assert r_mem.vector_notes == notes and r_run.vector_notes == []
    a, b = save_bundle(b_mem, tmp_path / "mem"), save_bundle(b_run, tmp_path / "run_bundle")
    for f in ("adapter.safetensors", "adapter.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def synthetic(n=120, H=6, seed=0):
    rng = np.random.default_rng(seed)
    d = np.array(["math", "code", "search"])[rng.integers(0, 3, n)]
    y = rng.integers(0, 2, n)
    h = rng.normal(size=(n, H)).astype(np.float32)
    h[:, 0] += 2.0 * y
    for i, dom in enumerate(("math", "code", "search")):
        h[d == dom, 1 + i] += 3.0
    return h, y, list(d)


def test_a_domain_missing_from_cal_and_train_keeps_its_place_in_the_class_order():
    """One rule: the run's domains sorted, also one with no rows (where sorted(set(CAL)) drops it)."""
    h, y, d = synthetic()
    run_domains = ["search", "math", "translation", "code"]  # the data stage's order
    b, report = probing.fit_bundle(
        {"cal": h, "train": h},
        {"cal": y, "train": y},
        {"cal": d, "train": d},
        0,
        run_domains,
        model_id="synthetic",
        num_layers=1,
    )
    assert b.domains == ["code", "math", "search", "translation"]
    assert b.router_classes == ["code", "math", "search"]  # the router never picks it
    assert "translation" not in b.vectors and "translation" not in b.probes
    assert any(n.startswith("translation: no steering vector") for n in report.notes)
    assert any(n.startswith("translation: no probe") for n in report.notes)
    assert probing.class_order(run_domains) == b.domains


def test_validation_accuracy_and_router_confusion():
    h, y, d = synthetic()
    hv, yv, dv = synthetic(seed=1)
    dv = np.array(dv)
    yt = y.copy()
    yt[np.array(d) == "search"] = 0  # search: no probe
    b, report = probing.fit_bundle(
        {"cal": h, "train": h},
        {"cal": y, "train": yt},
        {"cal": d, "train": d},
        0,
        ["math", "code", "search"],
        model_id="synthetic",
        num_layers=1,
    )
    rows = probing.validation_accuracy(b, hv, yv, list(dv))
    fit = report.fit
    X = fit.scaler.transform(hv.astype(np.float64))
    routed = np.array(fit.router_classes)[fit.router.predict(X)]
    assert rows[0] == {
        "model": "router",
        "domain": "all",
        "n": len(dv),
        "accuracy": float((routed == dv).mean()),
    }
    by_dom = {r["domain"]: r for r in rows[1:]}
    assert list(by_dom) == ["code", "math", "search"]
    for dom in ("code", "math"):
        m = dv == dom
        acc = (fit.probes[dom].predict(X[m]) == yv[m]).mean()
        assert by_dom[dom]["n"] == m.sum() and by_dom[dom]["accuracy"] == pytest.approx(acc)
    assert np.isnan(by_dom["search"]["accuracy"]) and "none: p = 0.5" in by_dom["search"]["model"]
    cm = probing.router_confusion(b, hv, list(dv))
    for i, t in enumerate(b.domains):
        for j, r in enumerate(b.domains):
            assert cm[i, j] == ((dv == t) & (routed == r)).sum()


def test_one_domain_has_no_router_row_and_its_confusion_warns_nothing():
    """#34 item 3: no single-label metric on a one-domain router (sklearn warned on the page)."""
    import warnings

    h, y, _ = synthetic()
    d = ["all"] * len(y)
    b, _ = probing.fit_bundle(
        {"cal": h, "train": h},
        {"cal": y, "train": y},
        {"cal": d, "train": d},
        0,
        ["all"],
        model_id="synthetic",
        num_layers=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = probing.validation_accuracy(b, h, y, d)
        cm = probing.router_confusion(b, h, d)
    assert [r["model"] for r in rows] == ["probe all"]
    assert cm.tolist() == [[len(d)]]
