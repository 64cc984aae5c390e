"""Layer probe sweep, steering vectors, router and per-domain probes (as the seed).

- :func:`layer_sweep`: per layer, StandardScaler + logistic regression on CAL,
  AUC and accuracy on VALID; L* = best AUC, ties to the earlier layer.
- :func:`steering_vectors`: at L*, on raw CAL states, mean(tool) - mean(non-tool)
  globally and per domain, each L2-normalized; a domain without both classes
  gets no vector.
- :func:`fit_router_and_probes`: scaler on CAL at L*, multinomial router over
  the domains and one binary probe per domain on TRAIN. A domain whose TRAIN
  rows lack a class (or number fewer than 4, the seed's floor) gets no probe;
  the gate then uses p = 0.5 for it.
- :func:`fit_bundle`: stages 04-05 from states at L* (vectors, router, probes,
  :func:`cal_mean_norm`) -> the adapter :class:`Bundle`; :func:`fit_from_states`:
  stages 03-05 from states of every block (the layer sweep picks L*). The
  notebooks, the tests and the benchmarks all fit through these.
- The router's class order has one rule, :func:`class_order`: the run's
  domains (``data.read_domains(run)``: every domain the data stage knows, also
  one with no CAL or TRAIN rows), sorted by name, as scikit-learn sorts string
  classes.
- What the notebooks show: :func:`vector_rows` (stage 04),
  :func:`validation_accuracy` and :func:`router_confusion` (stage 05, on VALID).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from asa_lib.files import atomic_path, read_json, write_json
from asa_lib.layout import RunDir
from asa_lib.method.bundle import BlockVectors, Bundle

LR_KW = {"max_iter": 2000, "C": 1.0}
CHANCE_AUC = 0.5  # a probe at or below it separates nothing (below: the wrong way round on VALID)


class ProbingError(ValueError):
    """The labels give nothing to steer with: no layer separates them, or the classes have one mean."""


@dataclass
class LayerSweep:
    auc: list[float]
    accuracy: list[float]
    best_layer: int

    def table(self) -> list[dict]:
        return [
            {"layer": i, "auc": a, "accuracy": c, "best": i == self.best_layer}
            for i, (a, c) in enumerate(zip(self.auc, self.accuracy))
        ]


def fit_lr(X: np.ndarray, y: np.ndarray) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        return LogisticRegression(**LR_KW).fit(X, y)


def probe_layer(
    h_cal: np.ndarray, y_cal: np.ndarray, h_valid: np.ndarray, y_valid: np.ndarray
) -> tuple[float, float]:
    """(AUC, accuracy) on VALID of a probe trained on standardized CAL states of one layer."""
    h_cal, h_valid = np.asarray(h_cal, np.float64), np.asarray(h_valid, np.float64)
    scaler = StandardScaler().fit(h_cal)
    probe = fit_lr(scaler.transform(h_cal), y_cal)
    Xv = scaler.transform(h_valid)
    auc = roc_auc_score(y_valid, probe.predict_proba(Xv)[:, 1])
    return float(auc), float(probe.score(Xv, y_valid))


def layer_sweep(
    h_cal: np.ndarray, y_cal: np.ndarray, h_valid: np.ndarray, y_valid: np.ndarray
) -> LayerSweep:
    """``h_*``: (N, L, H) states. Returns AUC/accuracy per layer and L*.

    Raises :class:`ProbingError` where no layer's VALID AUC is above chance
    (0.5): there is then no layer to steer at (the first layer would be picked
    for nothing, and its steering vector could be zero).
    """
    aucs, accs = [], []
    for layer in range(h_cal.shape[1]):
        auc, acc = probe_layer(h_cal[:, layer], y_cal, h_valid[:, layer], y_valid)
        aucs.append(auc)
        accs.append(acc)
    best = int(np.argmax(aucs))  # argmax takes the first maximum: ties go to the earlier layer
    if not aucs[best] > CHANCE_AUC:
        raise ProbingError(
            f"no layer separates the tool and non-tool labels: the VALID AUC is at most "
            f"{CHANCE_AUC} at every one of the {len(aucs)} layers (best {aucs[best]:.4f}, layer "
            f"{best}), so there is no layer to steer at. Check the labels and the data "
            "(are the two classes' prompts alike?), or use more rows (data.per_split_per_class)."
        )
    return LayerSweep(aucs, accs, best)


def class_order(domains: Sequence[str]) -> list[str]:
    """The router's classes and the bundle's domains, in order: ``domains`` sorted by name.

    ``domains``: the run's domains, ``data.read_domains(run)`` (or a
    ``SplitResult``'s ``domains``), every domain the data stage knows,
    whether or not CAL or TRAIN has rows of it. The one rule for the
    notebooks, the tests and the benchmarks (a domain missing from CAL stays
    in the bundle's domains, without a vector or probe).
    """
    return sorted(domains)


def cal_mean_norm(h_cal: np.ndarray) -> float:
    """The unit of a relative alpha: the mean L2 norm of the raw CAL states at L* (``(N, H)``)."""
    return float(np.linalg.norm(h_cal, axis=1).mean())


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-8)


def steering_vectors(
    h: np.ndarray,
    y: np.ndarray,
    domains: list[str],
    domain_names: list[str],
    classes: tuple[str, str] = ("tool", "non-tool"),
    what: str = "steering vector",
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Unit mean-difference vectors at one layer. Returns (vectors, notes on skipped domains).

    ``y``: 1 for the first class, 0 for the second (``classes`` and ``what``
    only name them in the messages: the label vectors' tool/non-tool, the
    behaviour directions' called/not called).
    """
    y = np.asarray(y)
    d = np.asarray(domains)
    pos, neg = classes
    if not ((y == 1).any() and (y == 0).any()):
        raise ProbingError(
            f"CAL has {int((y == 1).sum())} {pos} and {int((y == 0).sum())} {neg} rows: "
            f"a {what} needs both"
        )
    g = _difference(h[y == 1], h[y == 0])
    if g is None:
        raise ProbingError(
            f"the {pos} and {neg} CAL states have the same mean: there is no {what} "
            "(are the two classes' prompts the same?)"
        )
    vecs = {"global": _unit(g)}
    notes = []
    for dom in domain_names:
        t, n = (d == dom) & (y == 1), (d == dom) & (y == 0)
        v = _difference(h[t], h[n]) if t.sum() > 0 and n.sum() > 0 else None
        if v is not None:
            vecs[dom] = _unit(v)
        elif t.sum() > 0 and n.sum() > 0:
            notes.append(
                f"{dom}: no {what} (its {pos} and {neg} CAL states have the same "
                f"mean); the gate falls back to the global {what}"
            )
        else:
            notes.append(
                f"{dom}: no {what} (CAL has {int(t.sum())} {pos} and "
                f"{int(n.sum())} {neg} rows); the gate falls back to the global {what}"
            )
    return vecs, notes


def _difference(tool: np.ndarray, non_tool: np.ndarray) -> np.ndarray | None:
    """mean(tool) - mean(non_tool), or None where it is zero (float rounding) against the states' norm."""
    v = tool.mean(axis=0) - non_tool.mean(axis=0)
    rows = np.concatenate([tool, non_tool]).astype(np.float64)
    scale = float(np.linalg.norm(rows, axis=1).mean())
    norm = float(np.linalg.norm(np.asarray(v, np.float64)))
    return v if np.isfinite(norm) and norm > 1e-5 * scale else None


def vector_rows(vectors: dict[str, np.ndarray], y: np.ndarray, domains: list[str]) -> list[dict]:
    """Stage 04's table: each vector's cosine with the global one and its CAL rows (tool/non-tool)."""
    y, d = np.asarray(y), np.asarray(domains)
    return [
        {
            "vector": k,
            "cos with global": float(v @ vectors["global"]),
            "CAL rows (tool/non-tool)": "all"
            if k == "global"
            else f"{int(((d == k) & (y == 1)).sum())}/{int(((d == k) & (y == 0)).sum())}",
        }
        for k, v in vectors.items()
    ]


def cosine_matrix(vectors: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    names = list(vectors)
    M = np.stack([vectors[n] / np.linalg.norm(vectors[n]) for n in names])
    return names, M @ M.T


@dataclass
class RouterFit:
    scaler: StandardScaler
    router: LogisticRegression | None  # None for one domain: no router
    router_classes: list[str]
    probes: dict[str, LogisticRegression]
    notes: list[str]


def fit_router_and_probes(
    h_cal: np.ndarray,
    h_train: np.ndarray,
    y_train: np.ndarray,
    d_train: list[str],
    domain_names: list[str],
) -> RouterFit:
    """Scaler on CAL; router and per-domain probes on TRAIN (all at L*), fitted in float64."""
    h_cal, h_train = np.asarray(h_cal, np.float64), np.asarray(h_train, np.float64)
    scaler = StandardScaler().fit(h_cal)
    X = scaler.transform(h_train)
    d = np.asarray(d_train)
    y = np.asarray(y_train)
    present = [dom for dom in domain_names if (d == dom).any()]
    if len(present) < 2 and len(domain_names) > 1:
        raise ValueError(f"the router needs TRAIN rows of at least two domains; found {present}")
    # one domain: no router, every prompt is that domain's
    router = fit_lr(X, np.array([present.index(x) for x in d])) if len(present) > 1 else None
    notes = [f"{present[0]}: the only domain, so there is no router"] if router is None else []
    notes += [
        f"{dom}: not in TRAIN, the router never picks it"
        for dom in domain_names
        if dom not in present
    ]
    probes = {}
    for dom in domain_names:
        m = d == dom
        n_tool, n_non = int((y[m] == 1).sum()), int((y[m] == 0).sum())
        if m.sum() < 4 or n_tool == 0 or n_non == 0:
            notes.append(
                f"{dom}: no probe (TRAIN has {n_tool} tool and {n_non} non-tool rows); "
                "the gate uses p(tool) = 0.5 for it, so it never steers"
            )
            continue
        probes[dom] = fit_lr(X[m], y[m])
    return RouterFit(scaler, router, present, probes, notes)


def make_bundle(
    fit: RouterFit,
    vectors: dict[str, np.ndarray],
    layer: int,
    domain_names: list[str],
    model_id: str,
    num_layers: int,
    cal_mean_norm: float,
    model_fingerprint: str = "",
    model_weights: str = "",
    behaviour_vectors: dict[str, np.ndarray] | None = None,
    blocks: dict[int, BlockVectors] | None = None,
) -> Bundle:
    """Plain arrays from the fitted scikit-learn objects (no pickle)."""
    return Bundle(
        layer=layer,
        domains=list(domain_names),
        router_classes=fit.router_classes,
        scaler_mean=fit.scaler.mean_.astype(np.float64),
        scaler_scale=fit.scaler.scale_.astype(np.float64),
        router_coef=(
            fit.router.coef_.astype(np.float64)
            if fit.router is not None
            else np.zeros((0, fit.scaler.mean_.shape[0]))
        ),
        router_intercept=(
            fit.router.intercept_.astype(np.float64) if fit.router is not None else np.zeros(0)
        ),
        probes={
            dm: (p.coef_[0].astype(np.float64), float(p.intercept_[0]))
            for dm, p in fit.probes.items()
        },
        vectors={k: v.astype(np.float32) for k, v in vectors.items()},
        model_id=model_id,
        hidden_size=int(fit.scaler.mean_.shape[0]),
        num_layers=num_layers,
        cal_mean_norm=float(cal_mean_norm),
        model_fingerprint=model_fingerprint,
        model_weights=model_weights,
        behaviour_vectors={
            k: v.astype(np.float32) for k, v in sorted((behaviour_vectors or {}).items())
        },
        blocks={k: v for k, v in sorted((blocks or {}).items()) if k != layer},
    )


@dataclass
class FitReport:
    """What :func:`fit_bundle` fitted, beside the bundle: for the notebooks, tests and benchmarks."""

    domains: list[str]  # the class order (:func:`class_order`): the bundle's domains
    vectors: dict[str, np.ndarray]  # the unit vectors in the bundle, by name
    vector_notes: list[str]  # domains without a vector ([] where the vectors were given)
    fit: RouterFit  # the scikit-learn scaler, router and probes the bundle's arrays come from
    cal_mean_norm: float
    layers: LayerSweep | None = None  # the layer sweep, where :func:`fit_from_states` ran it
    notes: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.notes = [*self.vector_notes, *self.fit.notes]


def fit_bundle(
    h: Mapping[str, np.ndarray],
    y: Mapping[str, np.ndarray],
    d: Mapping[str, Sequence[str]],
    layer: int,
    domains: Sequence[str],
    *,
    model_id: str,
    num_layers: int,
    model_fingerprint: str = "",
    model_weights: str = "",
    vectors: dict[str, np.ndarray] | None = None,
    behaviour_vectors: dict[str, np.ndarray] | None = None,
    prompt_format_sha256: str = "",
    tokenizer_sha256: str = "",
    run_rows: Mapping[str, list[str]] | None = None,
    blocks: dict[int, BlockVectors] | None = None,
) -> tuple[Bundle, FitReport]:
    """Stages 04-05: the adapter bundle from raw states at L*.

    ``h``, ``y``, ``d``: per split (``"cal"``, ``"train"``; others are
    ignored) the ``(N, H)`` states at ``layer``, the labels and the domains,
    in row order. ``domains``: the run's domains (``data.read_domains(run)``),
    put in :func:`class_order`. ``vectors``: stage 04's vectors (as
    :func:`load_vectors` reads them back); None computes them here, as stage
    04 does (:func:`steering_vectors` on CAL). Either way the bundle holds
    them by name, the order in which stage 05 reads ``vectors/`` back, so an
    in-memory fit gives the files a run writes. ``behaviour_vectors``: stage
    04's behaviour directions (:func:`asa_lib.method.diagnostics.load_behaviour_vectors`),
    for ``vector: behaviour``; None: the bundle carries none.
    ``prompt_format_sha256``, ``tokenizer_sha256``, ``run_rows``: what the states were read
    from and the run's rows, recorded in the bundle as they are (see
    :class:`~asa_lib.method.bundle.Bundle`; empty: not recorded).
    for ``vector: behaviour``; None: the bundle carries none. ``blocks``: stage 04's vectors at
    the other blocks (:func:`load_block_vectors`), for configs with their own ``layer``; None:
    the bundle steers at L* only.
    """
    classes = class_order(domains)
    notes: list[str] = []
    if vectors is None:
        vectors, notes = steering_vectors(h["cal"], y["cal"], list(d["cal"]), classes)
    vectors = {k: vectors[k] for k in sorted(vectors)}
    fit = fit_router_and_probes(h["cal"], h["train"], y["train"], list(d["train"]), classes)
    norm = cal_mean_norm(h["cal"])
    bundle = make_bundle(
        fit,
        vectors,
        layer,
        classes,
        model_id,
        num_layers,
        cal_mean_norm=norm,
        model_fingerprint=model_fingerprint,
        model_weights=model_weights,
        behaviour_vectors=behaviour_vectors,
        blocks=blocks,
    )
    bundle.prompt_format_sha256, bundle.tokenizer_sha256 = prompt_format_sha256, tokenizer_sha256
    bundle.run_rows = {s: list(v) for s, v in (run_rows or {}).items()}
    return bundle, FitReport(classes, dict(bundle.vectors), notes, fit, norm)


def fit_from_states(
    states: Mapping[str, np.ndarray],
    y: Mapping[str, np.ndarray],
    d: Mapping[str, Sequence[str]],
    domains: Sequence[str],
    *,
    model_id: str,
    num_layers: int | None = None,
    model_fingerprint: str = "",
    model_weights: str = "",
) -> tuple[Bundle, FitReport]:
    """Stages 03-05: L* by the layer sweep (CAL -> VALID), then :func:`fit_bundle` at L*.

    ``states``: per split (``"cal"``, ``"train"``, ``"valid"``) the
    ``(N, L, H)`` states of every block; ``num_layers`` defaults to ``L``.
    The report's ``layers`` holds the sweep.
    """
    sweep = layer_sweep(states["cal"], y["cal"], states["valid"], y["valid"])
    layer = sweep.best_layer
    bundle, report = fit_bundle(
        {s: states[s][:, layer] for s in ("cal", "train")},
        y,
        d,
        layer,
        domains,
        model_id=model_id,
        num_layers=states["cal"].shape[1] if num_layers is None else num_layers,
        model_fingerprint=model_fingerprint,
        model_weights=model_weights,
    )
    report.layers = sweep
    return bundle, report


def validation_accuracy(
    bundle: Bundle, h: np.ndarray, y: np.ndarray, domains: Sequence[str]
) -> list[dict]:
    """Stage 05's table on VALID: the router's accuracy, then each domain's probe's.

    One row for the router (all rows; none with one domain), then one per domain of the bundle that
    has VALID rows: its probe's accuracy at p >= 0.5 on its own rows (the true
    domain, not the routed one); NaN for a domain without a probe (p = 0.5).
    """
    y, d = np.asarray(y), np.asarray(domains)
    routed = np.array(bundle.route(h))
    rows = []
    if len(bundle.domains) > 1:  # one domain has no router
        rows.append(
            {
                "model": "router",
                "domain": "all",
                "n": len(d),
                "accuracy": float((routed == d).mean()),
            }
        )
    for dom in bundle.domains:
        m = d == dom
        if not m.any():
            continue
        if dom in bundle.probes:
            acc = float(((bundle.probe_proba(dom, h[m]) >= 0.5).astype(int) == y[m]).mean())
        else:
            acc = float("nan")
        rows.append(
            {
                "model": f"probe {dom}" + ("" if dom in bundle.probes else " (none: p = 0.5)"),
                "domain": dom,
                "n": int(m.sum()),
                "accuracy": acc,
            }
        )
    return rows


def router_confusion(bundle: Bundle, h: np.ndarray, domains: Sequence[str]) -> np.ndarray:
    """(C, C) counts of true domain (rows) against routed domain (columns), both in
    ``bundle.domains`` (counted here: sklearn's ``confusion_matrix`` warns on one domain)."""
    index = {d: i for i, d in enumerate(bundle.domains)}
    out = np.zeros((len(index), len(index)), dtype=int)
    for true, routed in zip(domains, bundle.route(h)):
        if true in index and routed in index:
            out[index[true], index[routed]] += 1
    return out


def save_layers(run_dir, sweep: LayerSweep, num_layers: int) -> None:
    """Stage 03's output: per-layer AUC/accuracy and L* (``probing/layers.json``)."""
    write_json(
        RunDir(run_dir).layers,
        {"best_layer": sweep.best_layer, "layers": sweep.table(), "num_layers": int(num_layers)},
    )


def load_layers(run_dir) -> dict:
    """``{"best_layer", "layers": [{"layer", "auc", "accuracy"}...], "num_layers"}``."""
    return read_json(RunDir(run_dir).layers)


def save_vectors(run_dir, vectors: dict[str, np.ndarray], layer: int, notes: list[str]) -> None:
    """Stage 04's output: unit steering vectors (safetensors) and what they are (JSON)."""
    from safetensors.numpy import save_file

    run = RunDir(run_dir)
    with atomic_path(run.vectors) as tmp:
        save_file({k: v.astype(np.float32) for k, v in vectors.items()}, str(tmp))
    write_json(
        run.vectors_meta,
        {
            "layer": layer,
            "vectors": list(vectors),
            "notes": notes,
            "unit": "L2-normalized mean difference of raw CAL states",
        },
    )


def load_vectors(run_dir) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(RunDir(run_dir).vectors))


def resolve_blocks(rule, aucs: Sequence[float | None], best: int) -> list[int]:
    """The blocks ``steering.blocks`` (a :class:`~asa_lib.params.BlockRule`) picks beyond L*.

    ``top_valid_auc``: blocks by VALID probe AUC (``aucs[l]``, stage 03's), highest first,
    ties to the lower block; a block is taken when it is at least ``rule.min_distance``
    blocks from L* (``best``) and from every block taken before it; at most ``rule.count``.
    Fewer where the model has too few blocks far enough apart. Blocks without a finite AUC
    are never taken.
    """
    if rule is None:
        return []
    if rule.rule != "top_valid_auc":
        raise ValueError(f"unknown steering.blocks rule {rule.rule!r}")
    ok = [(float(a), i) for i, a in enumerate(aucs) if a is not None and np.isfinite(a)]
    picked: list[int] = []
    for _, i in sorted(ok, key=lambda t: (-t[0], t[1])):
        if len(picked) >= rule.count:
            break
        if all(abs(i - j) >= rule.min_distance for j in (best, *picked)):
            picked.append(i)
    return picked


def block_vectors_of(
    h_cal: np.ndarray,
    y: np.ndarray,
    domains: list[str],
    domain_names: list[str],
    behaviour: Mapping[int, dict[str, np.ndarray]] | None = None,
    skip: int | None = None,
) -> dict[int, BlockVectors]:
    """Per block ``l`` of ``h_cal`` ((N, L, H): the CAL states of every block), except ``skip``
    (L*): the unit label vectors (:func:`steering_vectors`, as stage 04 at L*), the behaviour
    directions given for it (``behaviour[l]``) and the mean |h| there (:func:`cal_mean_norm`).
    A block where the label vector does not exist (the tool and non-tool CAL states have the
    same mean there: an early block of a short-window model) is left out: no config can steer
    there."""
    out = {}
    for layer in range(h_cal.shape[1]):
        if layer == skip:
            continue
        h = np.asarray(h_cal[:, layer])
        try:
            vecs, _ = steering_vectors(h, y, domains, domain_names)
        except ProbingError:
            continue
        out[layer] = BlockVectors(
            {k: vecs[k].astype(np.float32) for k in sorted(vecs)},
            {k: v.astype(np.float32) for k, v in sorted((behaviour or {}).get(layer, {}).items())},
            cal_mean_norm(h),
        )
    return out


def save_block_vectors(run_dir, blocks: dict[int, BlockVectors]) -> None:
    """``vectors/blocks.safetensors``: each block's vectors (``<l>.vector.<name>``,
    ``<l>.behaviour.<name>``) and its mean CAL norm (``<l>.cal_mean_norm``, float64 (1,))."""
    from safetensors.numpy import save_file

    t: dict[str, np.ndarray] = {}
    for layer, b in sorted(blocks.items()):
        for k, v in b.vectors.items():
            t[f"{layer}.vector.{k}"] = np.asarray(v, np.float32)
        for k, v in b.behaviour_vectors.items():
            t[f"{layer}.behaviour.{k}"] = np.asarray(v, np.float32)
        t[f"{layer}.cal_mean_norm"] = np.array([b.cal_mean_norm], np.float64)
    with atomic_path(RunDir(run_dir).block_vectors) as tmp:
        save_file(t, str(tmp))


def load_block_vectors(run_dir) -> dict[int, BlockVectors]:
    """What :func:`save_block_vectors` wrote ({} for a run from before it)."""
    from safetensors.numpy import load_file

    p = RunDir(run_dir).block_vectors
    if not p.is_file():
        return {}
    t = load_file(str(p))
    out: dict[int, BlockVectors] = {}
    for name in sorted(k for k in t if k.endswith(".cal_mean_norm")):
        layer = int(name.split(".", 1)[0])

        def part(kind: str, layer: int = layer) -> dict[str, np.ndarray]:
            pre = f"{layer}.{kind}."
            return {k[len(pre) :]: t[k] for k in sorted(t) if k.startswith(pre)}

        out[layer] = BlockVectors(part("vector"), part("behaviour"), float(t[name][0]))
    return dict(sorted(out.items()))
