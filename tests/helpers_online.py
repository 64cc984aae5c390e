"""A real adapter bundle for the online-ASA tests, fitted by the project's own code on a few prompts."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import numpy as np

from asa_lib.data import make_splits_from_params
from asa_lib.engine.extract import extract_states
from asa_lib.method import probing
from asa_lib.method.bundle import Bundle
from asa_lib.prompts import render_prompts


@dataclass
class Fitted:
    bundle: Bundle
    fit: probing.RouterFit  # the scikit-learn objects the bundle was made from
    eval_texts: list[str]  # VALID + TEST user texts (never used to fit)
    eval_prompts: list[str]  # the same, rendered
    h_eval: np.ndarray  # their states at L*, extracted as stage 02 does
    no_probe: str | None  # a routed domain whose probe was removed (p = 0.5 for it)
    no_vector: str | None  # a domain whose vector was removed (the global vector is used)
    eval_domains: list[str] = field(default_factory=list)  # true domains of eval_texts


def fit_bundle(lm, params, layer: int, per_split: int, n_eval: int) -> Fitted:
    """Extract CAL/TRAIN states as stage 02 does, fit the bundle as stages 04-05 do (``probing.fit_bundle``)."""
    params = copy.deepcopy(params)
    params.data.per_split_per_class = per_split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = make_splits_from_params(params)
    splits = result.samples
    h = {
        s: extract_states(
            lm,
            render_prompts(lm.tokenizer, params.prompt, [x.text for x in splits[s]]),
            batch_size=8,
        )[:, layer]
        for s in ("cal", "train")
    }
    y = {s: np.array([x.label for x in splits[s]]) for s in ("cal", "train")}
    d = {s: [x.domain for x in splits[s]] for s in ("cal", "train")}
    bundle, report = probing.fit_bundle(
        h,
        y,
        d,
        layer,
        result.domains,  # the run's domains, as data.read_domains(run) gives them
        model_id=lm.model_id,
        num_layers=lm.num_layers,
        model_weights=lm.weights,
    )
    eval_rows = (splits["valid"] + splits["test"])[:n_eval]
    eval_texts = [x.text for x in eval_rows]
    # Exercise both fallbacks: the least-routed domain loses its probe, another its vector.
    eval_prompts = render_prompts(lm.tokenizer, params.prompt, eval_texts)
    h_eval = extract_states(lm, eval_prompts, batch_size=8)[:, layer]
    routed = bundle.route(h_eval)
    counts = {dm: routed.count(dm) for dm in bundle.probes if routed.count(dm) > 0}
    no_probe = no_vector = None
    if len(counts) >= 2:
        no_probe = min(counts, key=lambda dm: (counts[dm], dm))
        del bundle.probes[no_probe]
        others = [dm for dm in counts if dm != no_probe and dm in bundle.vectors]
        if others:
            no_vector = max(others, key=lambda dm: (counts[dm], dm))
            del bundle.vectors[no_vector]
    return Fitted(
        bundle,
        report.fit,
        eval_texts,
        eval_prompts,
        h_eval,
        no_probe,
        no_vector,
        [x.domain for x in eval_rows],
    )


def pick_tau(p: np.ndarray, min_gap: float = 1e-4) -> float:
    """A tau that gives +1, -1 and 0 gates where it can, as far as possible from every p."""
    m = np.unique(np.abs(np.asarray(p) - 0.5))
    best, best_score = None, (-1, -1.0)
    for a, b in zip(m[:-1], m[1:]):
        tau = 0.5 + (a + b) / 2
        if not 0.5 <= tau < 1 or (b - a) / 2 < min_gap:
            continue
        g = np.where(p >= tau, 1, np.where(p <= 1 - tau, -1, 0))
        score = (len(set(g.tolist())), float(b - a))
        if score > best_score:
            best, best_score = tau, score
    assert best is not None, f"no usable tau for p = {p}"
    return float(best)


def write_adapter(
    run_dir,
    lm,
    params,
    layer: int = 2,
    alpha: float = 0.5,
    beta: float = 0.5,
    model_id: str | None = None,
):
    """A run folder as stage 07 leaves it: ``chosen_adapter/`` (bundle + config) and ``params.yaml``.

    Returns (adapter folder, Fitted, config). ``model_id`` replaces the bundle's model id.
    """
    from pathlib import Path

    import yaml

    from asa_lib.method.bundle import save_bundle
    from asa_lib.method.gate import alpha_effective, compute_gates

    f = fit_bundle(lm, params, layer, per_split=3, n_eval=12)
    if model_id is not None:
        f.bundle.model_id = model_id
    tau = pick_tau(compute_gates(f.bundle, f.h_eval, 0.5).p_tool)
    config = {
        "name": "mine",
        "tau": tau,
        "alpha": alpha,
        "beta": beta,
        "alpha_unit": "relative",
        "alpha_eff": alpha_effective(alpha, "relative", f.bundle),
    }
    run_dir = Path(run_dir)
    folder = save_bundle(f.bundle, run_dir / "chosen_adapter", extra={"config": config})
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    return folder, f, config
