"""Tool-call metrics: plain functions over labels (1 = needs a tool) and triggers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, int]:
    t, p = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    return {"tp": int(((t == 1) & (p == 1)).sum()), "fp": int(((t == 0) & (p == 1)).sum()),
            "fn": int(((t == 1) & (p == 0)).sum()), "tn": int(((t == 0) & (p == 0)).sum())}


def _div(a: float, b: float) -> float:
    return float(a / b) if b > 0 else 0.0


def binary_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """precision, recall, f1, fpr, accuracy (0 where undefined, as sklearn's zero_division=0)."""
    c = confusion(y_true, y_pred)
    prec = _div(c["tp"], c["tp"] + c["fp"])
    rec = _div(c["tp"], c["tp"] + c["fn"])
    return {"precision": prec, "recall": rec, "f1": _div(2 * prec * rec, prec + rec),
            "fpr": _div(c["fp"], c["fp"] + c["tn"]),
            "accuracy": _div(c["tp"] + c["tn"], sum(c.values())), "n": int(sum(c.values())), **c}


def bootstrap_ci(y_true: Sequence[int], y_pred: Sequence[int], metrics=("f1", "recall", "fpr"),
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals (resampling prompts with replacement), seeded."""
    t, p = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    rng = np.random.default_rng(seed)
    n = len(t)
    idx = rng.integers(0, n, size=(n_boot, n))
    tb, pb = t[idx], p[idx]
    tp = ((tb == 1) & (pb == 1)).sum(1)
    fp = ((tb == 0) & (pb == 1)).sum(1)
    fn = ((tb == 1) & (pb == 0)).sum(1)
    tn = ((tb == 0) & (pb == 0)).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        vals = {"precision": prec, "recall": rec,
                "f1": np.where(prec + rec > 0, 2 * prec * rec / np.where(prec + rec > 0, prec + rec, 1), 0.0),
                "fpr": np.where(fp + tn > 0, fp / np.maximum(fp + tn, 1), 0.0),
                "accuracy": (tp + tn) / n}
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {m: [float(np.percentile(vals[m], lo)), float(np.percentile(vals[m], hi))] for m in metrics}


def evaluate_records(records: list[dict], seed: int = 0, n_boot: int = 1000) -> dict:
    """Overall and per-domain metrics, bootstrap CIs and validity rates for one split's records."""
    y = [r["label"] for r in records]
    p = [int(r["triggered"]) for r in records]
    out = binary_metrics(y, p)
    out["ci95"] = bootstrap_ci(y, p, seed=seed, n_boot=n_boot) if records else {}
    n_trig = sum(p)
    out["triggers"] = n_trig
    out["format_valid_rate"] = _div(sum(r["format_valid"] for r in records), n_trig)
    out["valid_call_rate"] = _div(sum(r["valid"] for r in records), n_trig)
    out["per_domain"] = {}
    for d in sorted({r["domain"] for r in records}):
        rs = [r for r in records if r["domain"] == d]
        out["per_domain"][d] = binary_metrics([r["label"] for r in rs], [int(r["triggered"]) for r in rs])
    return out
