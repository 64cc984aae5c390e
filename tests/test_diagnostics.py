"""Issue 22: the knowing-doing diagnostics per layer and ``vector: behaviour``.

Every number is checked against a plain computation written here (loops over
rows and coordinates, sharing no helper with :mod:`asa_lib.method.diagnostics`);
the bundle, the gate and the one-pass adapter are checked to steer along the
behaviour directions, and the params to accept ``behaviour`` but never default to it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from asa_lib.method import diagnostics, probing
from asa_lib.method.bundle import BundleError, load_bundle, save_bundle
from asa_lib.method.gate import compute_gates, steering_deltas
from asa_lib.params import ParamsError, SweepConfig, load_params
from asa_lib.run import analysis


def plain_mean_diff_unit(rows, flags):
    """unit(mean of rows with flag 1 - mean of rows with flag 0), with plain loops."""
    H = len(rows[0])
    s1, s0, n1, n0 = [0.0] * H, [0.0] * H, 0, 0
    for r, f in zip(rows, flags):
        for j in range(H):
            if f == 1:
                s1[j] += float(r[j])
            else:
                s0[j] += float(r[j])
        n1 += f == 1
        n0 += f != 1
    v = [s1[j] / n1 - s0[j] / n0 for j in range(H)]
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def plain_dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a, b))


def plain_auc(y, score):
    """P(score of a positive > score of a negative), ties counting 1/2: the Mann-Whitney AUC."""
    pos = [s for s, t in zip(score, y) if t == 1]
    neg = [s for s, t in zip(score, y) if t == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def synthetic(seed=0, n=60, L=3, H=6):
    """States of L layers where layer 1 carries the label along e0 and the call along -e0 + e1."""
    rng = np.random.default_rng(seed)
    y = np.array([i % 2 for i in range(n)])
    called = np.array([(i // 2) % 2 if i % 5 else 1 - i % 2 for i in range(n)])
    X = rng.standard_normal((n, L, H))
    X[:, 1, 0] += 2.0 * y
    X[:, 1, 0] -= 1.5 * called
    X[:, 1, 1] += 1.0 * called
    X[:, 2, 2] += 3.0 * called  # layer 2: the call is plain to see
    return X, y, called


def test_per_layer_cosines_and_behaviour_auc_against_plain_loops():
    Xc, yc, cc = synthetic(0)
    Xv, yv, cv = synthetic(1)
    label_auc = [0.5, 0.9, 0.6]
    rows = diagnostics.layer_diagnostics(Xc, yc, cc, Xv, cv, label_auc)
    assert [r["layer"] for r in rows] == [0, 1, 2]
    for layer, r in enumerate(rows):
        label_dir = plain_mean_diff_unit(Xc[:, layer].tolist(), yc.tolist())
        call_dir = plain_mean_diff_unit(Xc[:, layer].tolist(), cc.tolist())
        assert r["cos"] == pytest.approx(plain_dot(label_dir, call_dir), abs=1e-12)
        assert r["label_auc"] == label_auc[layer]
        # the behaviour probe: scaler + logistic regression on CAL calls, AUC on VALID calls
        sc = StandardScaler().fit(Xc[:, layer])
        lr = LogisticRegression(max_iter=2000, C=1.0).fit(sc.transform(Xc[:, layer]), cc)
        score = lr.decision_function(sc.transform(Xv[:, layer])).tolist()
        assert r["behaviour_auc"] == pytest.approx(plain_auc(cv.tolist(), score), abs=1e-12)
    # the planted structure shows: anti-aligned at layer 1, the call readable at layer 2
    assert rows[1]["cos"] < -0.3
    assert rows[2]["behaviour_auc"] > 0.9 > rows[0]["behaviour_auc"]


def test_no_call_direction_without_both_kinds_of_call():
    Xc, yc, _ = synthetic(0)
    Xv, _, cv = synthetic(1)
    rows = diagnostics.layer_diagnostics(Xc, yc, np.zeros(len(yc)), Xv, cv, [0.6] * 3)
    assert all(r["cos"] is None and r["behaviour_auc"] is None for r in rows)
    v, notes = diagnostics.behaviour_vectors(Xc[:, 1], np.ones(len(yc)), ["a"] * len(yc), ["a"])
    assert v == {} and "no behaviour direction" in notes[0] and "refused" in notes[0]
    assert diagnostics.verdict(None, 0, 60).startswith(
        "no call direction: the unsteered model called a tool on 0 of 60 of the CAL prompts"
    )


def test_the_two_by_two_at_l_star_against_a_plain_count():
    Xc, yc, _ = synthetic(0)
    Xv, yv, cv = synthetic(1)
    rows = diagnostics.gap_table(Xc[:, 1], yc, Xv[:, 1], yv, cv)
    sc = StandardScaler().fit(Xc[:, 1])
    lr = LogisticRegression(max_iter=2000, C=1.0).fit(sc.transform(Xc[:, 1]), yc)
    p = lr.predict_proba(sc.transform(Xv[:, 1]))[:, 1]
    want = {}
    for i in range(len(yv)):
        k = 1 if p[i] >= 0.5 else 0
        c = int(cv[i])
        n, t = want.get((k, c), (0, 0))
        want[(k, c)] = (n + 1, t + int(yv[i] == 1))
    got = {(r["knows"], r["calls"]): (r["n"], r["labelled tool"]) for r in rows}
    assert got == {kc: want.get(kc, (0, 0)) for kc in got}
    assert [r["cell"] for r in rows] == [
        "knows, calls",
        "knows, does not call",
        "does not know, calls",
        "does not know, does not call",
    ]
    assert sum(r["n"] for r in rows) == len(yv)
    # the reader's two-by-two: the probe's verdict down, the behaviour across
    m = diagnostics.gap_matrix(rows)
    assert list(m.index) == ["knows (p(tool) ≥ 0.5)", "does not know"]
    assert list(m.columns) == ["calls", "does not call"]
    for (k, c), (n, t) in want.items():
        row = "knows (p(tool) ≥ 0.5)" if k else "does not know"
        assert m.loc[row, "calls" if c else "does not call"] == f"{n} ({t} labelled tool)"


@pytest.mark.parametrize(
    "cos, want",
    [
        (0.94, "label direction aligned with the model's call direction (cos 0.94)"),
        (
            -0.59,
            "label direction anti-aligned with the model's call direction (cos -0.59): "
            "steering along the label vector will push against the model's calls",
        ),
        (0.3, "label direction weakly aligned with the model's call direction (cos 0.30)"),
        (
            -0.3,
            "label direction weakly anti-aligned with the model's call direction (cos -0.30): "
            "steering along the label vector will push against the model's calls",
        ),
        (
            0.05,
            "label direction not aligned with the model's call direction (cos 0.05): "
            "the label vector is nearly orthogonal to the model's calls",
        ),
    ],
)
def test_the_verdict_sentence(cos, want):
    assert diagnostics.verdict(cos) == want


def test_verdict_bands_at_their_thresholds():
    a = diagnostics.alignment
    assert (a(0.5), a(0.4999), a(0.2), a(0.1999), a(-0.1999), a(-0.2), a(-0.5)) == (
        "aligned",
        "weakly aligned",
        "weakly aligned",
        "not aligned",
        "not aligned",
        "weakly anti-aligned",
        "anti-aligned",
    )


def _bundle_with_behaviour(seed=0):
    """A bundle fitted by the project's code with behaviour directions from planted calls."""
    rng = np.random.default_rng(seed)
    H, n = 8, 48
    h = {s: rng.standard_normal((n, H)) for s in ("cal", "train")}
    y = {s: np.array([i % 2 for i in range(n)]) for s in h}
    d = {s: ["a", "b", "c"] * (n // 3) for s in h}
    for s in h:
        h[s][:, 0] += 2 * y[s]
    called = (h["cal"][:, 1] > 0).astype(int)
    called[np.array(d["cal"]) == "c"] = 1  # domain c: every CAL prompt called
    bv, notes = diagnostics.behaviour_vectors(h["cal"], called, d["cal"], ["a", "b", "c"])
    bundle, _ = probing.fit_bundle(
        h, y, d, 1, ["a", "b", "c"], model_id="m", num_layers=3, behaviour_vectors=bv
    )
    return bundle, h, d, called, bv, notes


def test_behaviour_directions_and_their_beta_mixture_against_a_plain_loop():
    bundle, h, d, called, bv, notes = _bundle_with_behaviour()
    rows = h["cal"].tolist()
    want = {"global": plain_mean_diff_unit(rows, called.tolist())}
    for dom in ("a", "b"):
        idx = [i for i, x in enumerate(d["cal"]) if x == dom]
        want[dom] = plain_mean_diff_unit([rows[i] for i in idx], [int(called[i]) for i in idx])
    assert sorted(bv) == sorted(want)  # c has no not-called CAL prompt: no direction of its own
    assert notes == [
        "c: no behaviour direction (CAL has 16 called and 0 not-called rows); the gate falls "
        "back to the global behaviour direction"
    ]
    for k, v in want.items():
        np.testing.assert_allclose(bv[k], v, atol=1e-6)
        np.testing.assert_allclose(bundle.behaviour_vectors[k], v, atol=1e-6)
    for beta in (0.0, 0.3, 1.0):
        cfg = SweepConfig("beh", tau=0.5, alpha=1.0, beta=beta, vector="behaviour")
        g = compute_gates(bundle, h["cal"], cfg)
        deltas = steering_deltas(bundle, g, 2.5, cfg)
        assert set(g.gate.tolist()) - {0}
        for i, (dom, gate) in enumerate(zip(g.routed, g.gate)):
            if gate == 0:
                assert not deltas[i].any()
                continue
            if dom in want:
                mix = [beta * x + (1 - beta) * z for x, z in zip(want["global"], want[dom])]
            else:  # no behaviour direction of its own: the global one
                mix = list(want["global"])
            n = math.sqrt(sum(x * x for x in mix))
            np.testing.assert_allclose(deltas[i], [gate * 2.5 * x / n for x in mix], atol=1e-5)
        # the label vector's deltas are other deltas (same gates, other direction)
        lab = steering_deltas(bundle, g, 2.5, SweepConfig("lab", tau=0.5, alpha=1.0, beta=beta))
        assert not np.allclose(lab, deltas)


def test_a_bundle_without_behaviour_directions_refuses_vector_behaviour(tmp_path):
    bundle, h, *_ = _bundle_with_behaviour()
    bundle.behaviour_vectors = {}
    cfg = SweepConfig("beh", tau=0.99, alpha=1.0, vector="behaviour")
    with pytest.raises(BundleError, match="vector 'behaviour' needs the bundle's behaviour"):
        steering_deltas(bundle, compute_gates(bundle, h["cal"], cfg), 1.0, cfg)


def test_the_bundle_file_carries_the_behaviour_directions(tmp_path):
    import json

    bundle, *_, bv, _ = _bundle_with_behaviour()
    save_bundle(bundle, tmp_path / "b")
    back = load_bundle(tmp_path / "b")
    assert sorted(back.behaviour_vectors) == sorted(bv)
    for k in bv:
        np.testing.assert_array_equal(back.behaviour_vectors[k], bundle.behaviour_vectors[k])
    # a bundle written before them (no field, no tensors) loads with none
    save_bundle(
        type(bundle)(**{**bundle.__dict__, "behaviour_vectors": {}, "sha256": ""}),
        tmp_path / "old",
    )
    meta = json.loads((tmp_path / "old" / "adapter.json").read_text())
    assert meta["behaviour_vectors"] == []
    assert load_bundle(tmp_path / "old").behaviour_vectors == {}


def test_params_accept_behaviour_refuse_unknown_and_never_default(params_file):
    base = {"name": "p", "model": {"kind": "tiny"}, "data": {"source": "x.jsonl"}}

    def sweep(**c):
        return {**base, "sweep": [{"name": "c", "tau": 0.6, "alpha": 0.5, **c}]}

    p = load_params(params_file(sweep(vector="behaviour")), check_files=False)
    assert p.sweep[0].vector == "behaviour"
    assert load_params(params_file(sweep()), check_files=False).sweep[0].vector == "mixture"
    assert SweepConfig("x").vector == "mixture"
    with pytest.raises(ParamsError, match=r"sweep\[0\]\.vector: 'behavior' is not one of"):
        load_params(params_file(sweep(vector="behavior")), check_files=False)


def test_the_presets_list_behaviour_configs_beside_the_label_vector():
    from conftest import PARAMS

    want = {
        "demo.yaml": {"t75_a25_beh": "t75_a25"},
        "bfcl.yaml": {f"t{t}_a{a}_beh": f"t{t}_a{a}" for t in (50, 75) for a in (25, 50, 100)},
        "ablations.yaml": {"behaviour": "asa"},
    }
    for f, pairs in want.items():
        p = load_params(PARAMS / f, check_files=False)
        by = {c.name: c for c in p.sweep}
        for b, a in pairs.items():
            assert by[b].vector == "behaviour" and by[a].vector == "mixture"
            assert (by[b].gate, by[b].tau, by[b].alpha, by[b].beta) == (
                by[a].gate,
                by[a].tau,
                by[a].alpha,
                by[a].beta,
            )
        # at L* (the label vector is only there); other blocks come on top
        assert sum(c.vector == "behaviour" and c.layer is None for c in p.sweep) == len(pairs)


def test_the_bfcl_grid_is_the_pre_registered_one():
    """tau x alpha, the behaviour vector at L*, auto1 and auto2, the label vector at L*."""
    from conftest import PARAMS

    p = load_params(PARAMS / "bfcl.yaml", check_files=False)
    got = {(c.tau, c.alpha, c.vector, c.layer) for c in p.sweep}
    want = {
        (t, a, v, layer)
        for t in (0.5, 0.75)
        for a in (0.25, 0.5, 1.0)
        for v, layer in (
            ("behaviour", None),
            ("behaviour", "auto1"),
            ("behaviour", "auto2"),
            ("mixture", None),
        )
    }
    assert got == want and len(p.sweep) == len(want)
    assert (p.steering.blocks.count, p.steering.blocks.min_distance) == (2, 4)
    assert p.data.per_split_per_class == 48 and p.data.test_multiplier == 2


def _res(name, cfg, triggered, labels):
    recs = [
        {"id": f"x{i}", "split": s, "label": y, "triggered": bool(t)}
        for s in ("valid", "test")
        for i, (y, t) in enumerate(zip(labels, triggered))
    ]
    return {
        "name": name,
        "tau": cfg.get("tau"),
        "alpha": cfg.get("alpha"),
        "beta": cfg.get("beta"),
        "config": cfg,
        "records": recs,
        "splits": {"valid": {"metrics": {"f1": sum(triggered) / 100, "fpr": 0.1}}},
    }


def test_behaviour_configs_are_eligible_and_compared_with_their_label_vector():
    labels = [1, 0] * 20
    lab = {"gate": "probe", "vector": "mixture", "tau": 0.75, "alpha": 0.25, "beta": 0.0}
    res = {
        "baseline": _res("baseline", {"gate": "none"}, [1] * 40, labels),
        "t75": _res("t75", lab, [1, 1, 0, 1] * 10, labels),
        "t75_beh": _res("t75_beh", {**lab, "vector": "behaviour"}, [1, 0, 0, 0] * 10, labels),
    }
    assert analysis.ablation_kind(res["t75_beh"]["config"]) == analysis.BEHAVIOUR_KIND
    assert analysis.behaviour_pairs(res) == [("t75_beh", "t75")]
    # chosen on VALID like any config: here the label vector has the higher VALID F1
    assert analysis.choose_config(res) == "t75"
    res["t75_beh"]["splits"]["valid"]["metrics"]["f1"] = 0.9
    assert analysis.choose_config(res) == "t75_beh"
    t = analysis.behaviour_vs_label(res, "test", [("t75_beh", "t75")])
    row = t.iloc[0]

    def f1_fpr(pred):
        tp = sum(p and y for p, y in zip(pred, labels))
        fp = sum(p and not y for p, y in zip(pred, labels))
        fn = sum((not p) and y for p, y in zip(pred, labels))
        return 2 * tp / (2 * tp + fp + fn), fp / labels.count(0)

    (fb, pb), (fa, pa) = f1_fpr([1, 0, 0, 0] * 10), f1_fpr([1, 1, 0, 1] * 10)
    assert row["d_f1"] == pytest.approx(fb - fa) and row["d_fpr"] == pytest.approx(pb - pa)
    assert row["d_f1_lo"] <= row["d_f1"] <= row["d_f1_hi"]


def test_the_one_pass_adapter_steers_along_the_behaviour_directions(tiny_lm, tiny_params, tmp_path):
    """ASA.load of a chosen behaviour config: its one-pass outputs equal the two-pass sweep's."""
    import json

    from helpers_online import write_adapter

    from asa_lib import ASA
    from asa_lib.engine.generate import GenerationSettings, generate_all
    from asa_lib.method.online import OnlineGate

    folder, f, config = write_adapter(tmp_path, tiny_lm, tiny_params, alpha=2.0)
    rng = np.random.default_rng(3)
    # directions unlike the label vectors (the tiny model never calls a tool, so no real ones)
    bv = {}
    for k in ("global", *f.bundle.vectors):
        v = rng.standard_normal(f.bundle.hidden_size)
        bv[k] = (v / np.linalg.norm(v)).astype(np.float32)
    f.bundle.behaviour_vectors = bv
    save_bundle(f.bundle, folder, extra={"config": {**config, "vector": "behaviour"}})
    asa = ASA.load(folder)
    assert asa.vector == "behaviour" and asa.config["vector"] == "behaviour"
    cfg = SweepConfig("beh", tau=asa.tau, alpha=asa.alpha, beta=asa.beta, vector="behaviour")
    two = compute_gates(asa.bundle, f.h_eval, cfg)
    deltas = steering_deltas(asa.bundle, two, asa.alpha_eff, cfg)
    assert set(two.gate.tolist()) - {0}
    settings = GenerationSettings(max_new_tokens=6, batch_size=8, markers=tiny_params.prompt)
    want, _ = generate_all(tiny_lm, f.eval_prompts, settings, deltas, layer=asa.bundle.layer)
    got = asa.generate(tiny_lm, None, f.eval_texts, max_new_tokens=6, batch_size=8)
    assert [g.decision.gate for g in got] == two.gate.tolist()
    assert [g.output for g in got] == want
    # the tabulated deltas are the behaviour directions, not the label vectors
    gate = OnlineGate(asa.bundle, asa.tau, asa.alpha_eff, asa.beta, "behaviour")
    label = OnlineGate(asa.bundle, asa.tau, asa.alpha_eff, asa.beta)
    assert not np.allclose(gate._deltas.numpy(), label._deltas.numpy())
    # an adapter whose config says behaviour, on a bundle without the directions: refused
    f.bundle.behaviour_vectors = {}
    save_bundle(f.bundle, folder, extra={"config": {**config, "vector": "behaviour"}})
    with pytest.raises(Exception, match="behaviour directions"):
        ASA.load(folder)
    assert json.loads((folder / "adapter.json").read_text())["behaviour_vectors"] == []


def test_the_index_states_the_verdict_escaped(tmp_path, tiny_params):
    from asa_lib.files import write_json
    from asa_lib.layout import RunDir
    from asa_lib.report.index import write_index

    run = RunDir(tmp_path)
    metrics = {m: 0.5 for m in ("f1", "recall", "fpr", "precision")}
    metrics["ci95"] = {m: [0.4, 0.6] for m in ("f1", "recall", "fpr")}
    verdict = diagnostics.verdict(-0.59) + " <b>"
    write_json(
        run.results,
        {
            "chosen": {"name": "c", "tau": 0.75, "alpha": 0.25, "beta": 0.0, "alpha_eff": 1.0}
            | {"test": metrics},
            "L_star": 3,
            "L_star_valid_auc": 0.7,
            "configs": {},
            "diagnostics": {"verdict": verdict},
        },
    )
    page = write_index(tiny_params, tmp_path, []).read_text()
    assert (
        "<b>Diagnostics at L*:</b> label direction anti-aligned with the model&#x27;s call "
        "direction (cos -0.59): steering along the label vector will push against the "
        "model&#x27;s calls" in page
    )
    assert "&lt;b&gt;" in page and "<b> (see" not in page
