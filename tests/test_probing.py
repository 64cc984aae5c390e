import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from asa_lib.method import probing
from asa_lib.method.bundle import BundleError, load_bundle, save_bundle

DOMS = ["code", "math", "search", "translation"]


def synthetic(n=160, L=3, H=12, seed=0):
    """States where layer 1 separates tool/non-tool and domains shift the mean."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    d = np.array(DOMS)[rng.integers(0, 4, n)]
    h = rng.normal(size=(n, L, H)).astype(np.float32)
    h[:, 1, 0] += 2.0 * y
    h[:, 0, 0] += 0.3 * y
    for i, dom in enumerate(DOMS):
        h[d == dom, :, 1 + i] += 3.0
    return h, y, list(d)


def test_layer_sweep_matches_a_direct_computation():
    h, y, _ = synthetic()
    hv, yv, _ = synthetic(seed=1)
    sweep = probing.layer_sweep(h, y, hv, yv)
    for layer in range(3):
        sc = StandardScaler().fit(h[:, layer])
        lr = LogisticRegression(max_iter=2000, C=1.0).fit(sc.transform(h[:, layer]), y)
        auc = roc_auc_score(yv, lr.predict_proba(sc.transform(hv[:, layer]))[:, 1])
        assert sweep.auc[layer] == pytest.approx(auc, abs=1e-12)
    assert sweep.best_layer == 1


def test_ties_go_to_the_earlier_layer():
    h, y, _ = synthetic()
    h[:, 2] = h[:, 1]
    hv, yv, _ = synthetic(seed=1)
    hv[:, 2] = hv[:, 1]
    assert probing.layer_sweep(h, y, hv, yv).best_layer == 1


def test_steering_vectors_are_unit_mean_differences():
    h, y, d = synthetic()
    h1 = h[:, 1]
    d = np.array(d)
    d[(d == "translation") & (y == 1)] = "code"  # translation now has no tool rows
    vecs, notes = probing.steering_vectors(h1, y, list(d), DOMS)
    g = h1[y == 1].mean(0) - h1[y == 0].mean(0)
    np.testing.assert_allclose(vecs["global"], g / np.linalg.norm(g), rtol=1e-5)
    m = d == "math"
    v = h1[m & (y == 1)].mean(0) - h1[m & (y == 0)].mean(0)
    np.testing.assert_allclose(vecs["math"], v / np.linalg.norm(v), rtol=1e-5)
    assert "translation" not in vecs and "translation" in notes[0]
    assert all(abs(np.linalg.norm(v) - 1) < 1e-6 for v in vecs.values())


def _fit(h, y, d, drop_probe_class=None):
    y = y.copy()
    if drop_probe_class:
        y[np.array(d) == drop_probe_class] = 0
    split = {"cal": h[:, 1], "train": h[:, 1]}
    b, report = probing.fit_bundle(
        split,
        {"cal": y, "train": y},
        {"cal": d, "train": d},
        1,
        DOMS,
        model_id="synthetic",
        num_layers=3,
    )
    return report.fit, b


def test_bundle_round_trip_matches_sklearn_predict_proba(tmp_path):
    h, y, d = synthetic()
    fit, b = _fit(h, y, d, drop_probe_class="search")
    assert "search" not in fit.probes and any("search: no probe" in n for n in fit.notes)
    save_bundle(b, tmp_path)
    assert not list(tmp_path.glob("*.pkl"))
    lb = load_bundle(tmp_path)
    held, _, _ = synthetic(seed=5)
    X = held[:, 1].astype(np.float64)
    Xs = fit.scaler.transform(X)
    np.testing.assert_allclose(lb.router_proba(X), fit.router.predict_proba(Xs), atol=1e-9, rtol=0)
    for dom, p in fit.probes.items():
        np.testing.assert_allclose(
            lb.probe_proba(dom, X), p.predict_proba(Xs)[:, 1], atol=1e-9, rtol=0
        )
    assert np.all(lb.probe_proba("search", X) == 0.5)
    assert lb.route(X) == [lb.router_classes[i] for i in fit.router.predict(Xs)]
    for k in b.vectors:
        np.testing.assert_array_equal(lb.vectors[k], b.vectors[k])


def test_bundle_refuses_another_model_and_tampered_files(tmp_path):
    h, y, d = synthetic()
    _, b = _fit(h, y, d)
    save_bundle(b, tmp_path)
    lb = load_bundle(tmp_path)
    with pytest.raises(
        BundleError, match=r"hidden size 12, 3 blocks\); the model has hidden size 64"
    ):
        lb.check_model(64, 3)
    with pytest.raises(BundleError, match="steers block 1 .* only 1 blocks"):
        lb.check_model(12, 1)
    import json

    meta = json.loads((tmp_path / "adapter.json").read_text())
    meta["tensors"]["scaler.mean"]["shape"] = [13]
    (tmp_path / "adapter.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="scaler.mean"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="missing"):
        load_bundle(tmp_path / "nowhere")
