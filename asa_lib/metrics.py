"""Tool-call metrics: plain functions over labels (1 = needs a tool) and triggers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, int]:
    t, p = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    return {
        "tp": int(((t == 1) & (p == 1)).sum()),
        "fp": int(((t == 0) & (p == 1)).sum()),
        "fn": int(((t == 1) & (p == 0)).sum()),
        "tn": int(((t == 0) & (p == 0)).sum()),
    }


def _ratio(a, b):
    """a / b, 0 where b == 0 (sklearn's zero_division=0); scalars or arrays."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.where(b > 0, a / np.where(b > 0, b, 1.0), 0.0)


def precision(tp, fp, fn, tn):
    return _ratio(tp, tp + fp)


def recall(tp, fp, fn, tn):
    return _ratio(tp, tp + fn)


def f1(tp, fp, fn, tn):
    p, r = precision(tp, fp, fn, tn), recall(tp, fp, fn, tn)
    return _ratio(2 * p * r, p + r)


def fpr(tp, fp, fn, tn):
    """Share of non-tool prompts that triggered a tool call."""
    return _ratio(fp, fp + tn)


def accuracy(tp, fp, fn, tn):
    return _ratio(tp + tn, tp + fp + fn + tn)


# The one place a metric is defined: name -> fn(tp, fp, fn, tn), on scalars or arrays of counts.
# Point estimates, bootstrap intervals, paired differences, tables and plots all read it.
METRICS = {"precision": precision, "recall": recall, "f1": f1, "fpr": fpr, "accuracy": accuracy}


def binary_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """Every metric of :data:`METRICS` (0 where undefined), ``n`` and the confusion counts."""
    c = confusion(y_true, y_pred)
    return {**{m: float(fn(**c)) for m, fn in METRICS.items()}, "n": int(sum(c.values())), **c}


def _resampled_metrics(t: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of each resample: ``t``, ``p`` are (n_boot, n) labels and predictions."""
    c = {
        "tp": ((t == 1) & (p == 1)).sum(1),
        "fp": ((t == 0) & (p == 1)).sum(1),
        "fn": ((t == 1) & (p == 0)).sum(1),
        "tn": ((t == 0) & (p == 0)).sum(1),
    }
    return {m: fn(**c) for m, fn in METRICS.items()}


def bootstrap_ci(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    metrics=("f1", "recall", "fpr"),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals (resampling prompts with replacement), seeded."""
    t, p = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    idx = np.random.default_rng(seed).integers(0, len(t), size=(n_boot, len(t)))
    vals = _resampled_metrics(t[idx], p[idx])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {
        m: [float(np.percentile(vals[m], lo)), float(np.percentile(vals[m], hi))] for m in metrics
    }


def paired_bootstrap_diff(
    y_true: Sequence[int],
    y_base: Sequence[int],
    y_new: Sequence[int],
    metrics=("f1", "fpr"),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """``metric(new) - metric(base)`` on the same prompts, with a paired percentile bootstrap interval.

    Both predictions are scored on the *same* resampled prompts, so the
    interval reflects the change steering made, not the spread of the prompt
    set. Returns ``{metric: {"diff", "lo", "hi"}}``.
    """
    t = np.asarray(y_true, dtype=int)
    a, b = np.asarray(y_base, dtype=int), np.asarray(y_new, dtype=int)
    if not len(t) == len(a) == len(b):
        raise ValueError("labels and both predictions must cover the same prompts")
    idx = np.random.default_rng(seed).integers(0, len(t), size=(n_boot, len(t)))
    va, vb = _resampled_metrics(t[idx], a[idx]), _resampled_metrics(t[idx], b[idx])
    pa, pb = binary_metrics(t, a), binary_metrics(t, b)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {
        m: {
            "diff": pb[m] - pa[m],
            "lo": float(np.percentile(vb[m] - va[m], lo)),
            "hi": float(np.percentile(vb[m] - va[m], hi)),
        }
        for m in metrics
    }


def evaluate_records(records: list[dict], seed: int = 0, n_boot: int = 1000) -> dict:
    """Overall and per-domain metrics, bootstrap CIs and validity rates for one split's records."""
    y = [r["label"] for r in records]
    p = [int(r["triggered"]) for r in records]
    out = binary_metrics(y, p)
    out["ci95"] = bootstrap_ci(y, p, seed=seed, n_boot=n_boot) if records else {}
    n_trig = sum(p)
    out["triggers"] = n_trig
    out["format_valid_rate"] = float(_ratio(sum(r["format_valid"] for r in records), n_trig))
    out["valid_call_rate"] = float(_ratio(sum(r["valid"] for r in records), n_trig))
    out["validity_split"] = validity_split(records)
    out["tool_row_calls"] = tool_row_calls(records)
    out["per_domain"] = {}
    for d in sorted({r["domain"] for r in records}):
        rs = [r for r in records if r["domain"] == d]
        out["per_domain"][d] = binary_metrics(
            [r["label"] for r in rs], [int(r["triggered"]) for r in rs]
        )
    return out


# The calls by why they are valid or not: each call is one of the three.
VALIDITY_SPLIT = ("complete valid", "complete invalid", "cut")


def validity_split(records: list[dict]) -> dict[str, int]:
    """The calls (triggered outputs) counted by why: ``complete valid`` (closed by the end
    marker, parses, names a listed tool with its required arguments), ``complete invalid``
    (closed, but does not parse, names an unlisted tool or lacks a required argument) and
    ``cut`` (no end marker: cut at max_new_tokens, whatever it holds). The three add up to
    the calls."""
    calls = [r for r in records if r["triggered"]]
    done = [r for r in calls if r.get("complete")]
    return {
        "complete valid": sum(bool(r["valid"]) for r in done),
        "complete invalid": sum(not r["valid"] for r in done),
        "cut": len(calls) - len(done),
    }


def tool_row_calls(records: list[dict]) -> dict[str, int]:
    """The calls on the rows labelled tool (label 1) and how many of them are valid (parse,
    name a listed tool, carry its required arguments): whether the calls the model should make
    could run. The valid share of all calls mixes in the calls on rows that need none."""
    calls = [r for r in records if r["triggered"] and r.get("label") == 1]
    return {"calls": len(calls), "valid": sum(bool(r["valid"]) for r in calls)}


# the columns of the three shares (of the calls), in VALIDITY_SPLIT's order
VALIDITY_SHARES = ("complete_valid_share", "complete_invalid_share", "cut_share")


def validity_shares(metrics: dict) -> dict[str, float]:
    """The three :func:`validity_split` counts of a split's metrics as shares of its calls
    (NaN where there was no call, or the metrics predate the split)."""
    split, n = metrics.get("validity_split"), metrics.get("triggers", 0)
    if not split or not n:
        return dict.fromkeys(VALIDITY_SHARES, float("nan"))
    return {k: split[v] / n for k, v in zip(VALIDITY_SHARES, VALIDITY_SPLIT)}


def bootstrap_mean_ci(
    values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> list[float]:
    """Percentile bootstrap interval of a mean (e.g. the valid share of the calls), seeded;
    [0, 0] for no values."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return [0.0, 0.0]
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))
    boot = v[idx].mean(1)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return [float(np.percentile(boot, lo)), float(np.percentile(boot, hi))]


def interval_table(records: list[dict], seed: int = 0) -> dict:
    """Each metric and post-trigger validity with a 95% bootstrap interval, overall and per
    domain: ``{"overall": {"n", "tool", "ci95"}, "per_domain": {domain: ...}}``."""

    def one(rs: list[dict]) -> dict:
        y = [r["label"] for r in rs]
        p = [int(r["triggered"]) for r in rs]
        ci = bootstrap_ci(y, p, metrics=tuple(METRICS), seed=seed)
        ci["valid_call_rate"] = bootstrap_mean_ci(
            [r["valid"] for r in rs if r["triggered"]], seed=seed
        )
        return {"n": len(rs), "tool": sum(y), "ci95": ci}

    return {
        "overall": one(records),
        "per_domain": {
            d: one([r for r in records if r["domain"] == d])
            for d in sorted({r["domain"] for r in records})
        },
    }


def auc(y_true: Sequence[int], score: Sequence[float]) -> float | None:
    """The ROC AUC of ``score`` for ``y_true`` (1 = positive): the chance that a random
    positive scores above a random negative, ties counted half (Mann-Whitney). None where
    one class is missing."""
    y, s = np.asarray(y_true, dtype=int), np.asarray(score, dtype=float)
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties (1-based)
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_auc_ci(
    y_true: Sequence[int],
    score: Sequence[float],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[float] | None:
    """Percentile bootstrap interval of :func:`auc` (rows resampled with replacement, seeded;
    a resample with one class is drawn again). None where one class is missing."""
    y, s = np.asarray(y_true, dtype=int), np.asarray(score, dtype=float)
    if auc(y, s) is None:
        return None
    rng = np.random.default_rng(seed)
    vals: list[float] = []
    while len(vals) < n_boot:
        idx = rng.integers(0, len(y), size=len(y))
        a = auc(y[idx], s[idx])
        if a is not None:
            vals.append(a)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return [float(np.percentile(vals, lo)), float(np.percentile(vals, hi))]
