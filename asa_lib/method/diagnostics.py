"""Will ASA work on this model? The knowing-doing gap per layer, and the behaviour directions.

ASA rests on one premise: the hidden state knows whether a tool is needed, the
model's behaviour does not follow, and pushing the state along the *label*
direction moves the behaviour the right way. These diagnostics measure that
premise from what stage 04 has: the states of every block (stage 02), the
labels, and the unsteered model's own decisions ("called": its greedy output
on the prompt starts a tool call, as the sweep scores it) on CAL and VALID
(generated once by stage 04 through the sweep's generation driver and cache:
:func:`asa_lib.run.sweep.baseline_calls`; the sweep's baseline then reuses the
VALID outputs).

Per layer (:func:`layer_diagnostics`):

- ``label_auc``: the label probe's VALID AUC (stage 03's layer sweep).
- ``behaviour_auc``: the behaviour probe's AUC. The same probe as stage 03
  (StandardScaler + logistic regression, :func:`asa_lib.method.probing.probe_layer`),
  fitted on CAL states against the unsteered model's CAL calls, scored on
  VALID states against its VALID calls (held-out prompts, as the label probe).
  None where CAL or VALID lacks a called or a not-called prompt.
- ``cos``: the cosine between the label direction (the unit mean difference of
  CAL states, tool minus non-tool: the global vector ASA steers with at L*) and
  the model's call direction (the unit mean difference of CAL states, called
  minus not called). None where CAL lacks a called or a not-called prompt.

At L* (:func:`gap_table`): a two-by-two table on VALID of the label probe's
verdict (stage 03's probe at L*, p(tool) >= 0.5: "knows a tool is needed")
against the model's behaviour (called or not), each cell with how many of its
prompts are labelled tool. "Knows but does not call" and "calls but does not
know" are the gap steering along the label vector can close.

The verdict (:func:`verdict`) reads the cosine at L*: ``cos >= ALIGNED``
aligned; ``WEAK <= cos < ALIGNED`` weakly aligned; ``|cos| < WEAK`` not aligned
(nearly orthogonal); ``-ALIGNED < cos <= -WEAK`` weakly anti-aligned;
``cos <= -ALIGNED`` anti-aligned. Anti-aligned means a +1 gate pushes the state
*away* from the model's calls.

``vector: behaviour`` (a documented variant beyond the paper, never the
default): :func:`behaviour_vectors` is the unit mean difference of the CAL
states at L* between called and not-called prompts, globally and per domain,
exactly as the label vectors are built (:func:`asa_lib.method.probing.steering_vectors`,
with the model's calls in place of the labels), and mixed with beta as they
are (:meth:`asa_lib.method.bundle.Bundle.steering_vector`). A domain whose CAL
prompts are all called or all not called gets no direction of its own and
falls back to the global behaviour direction (as a domain without a label
vector falls back to the global label vector); where CAL has no called or no
not-called prompt at all there is no behaviour direction, stage 04 says so, and
a ``vector: behaviour`` config is refused when it runs.

Files (stage 04): ``vectors/behaviour.safetensors`` (the directions, float32,
by name) and ``vectors/diagnostics.json`` (everything above, plus the CAL
generation's count and seconds: the diagnostics' cost).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from asa_lib.files import atomic_path, read_json, write_json
from asa_lib.layout import RunDir
from asa_lib.method.probing import ProbingError, fit_lr, probe_layer, steering_vectors

ALIGNED = 0.5  # |cos| at or above: aligned / anti-aligned
WEAK = 0.2  # |cos| below: not aligned (nearly orthogonal); between: weakly (anti-)aligned


def _unit_difference(h: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """unit(mean(h[y == 1]) - mean(h[y == 0])) in float64, or None without both classes."""
    y = np.asarray(y)
    if not ((y == 1).any() and (y == 0).any()):
        return None
    h = np.asarray(h, np.float64)
    v = h[y == 1].mean(axis=0) - h[y == 0].mean(axis=0)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else None


def _both(y: np.ndarray) -> bool:
    y = np.asarray(y)
    return bool((y == 1).any() and (y == 0).any())


def layer_diagnostics(
    states_cal: np.ndarray,
    y_cal: np.ndarray,
    called_cal: np.ndarray,
    states_valid: np.ndarray,
    called_valid: np.ndarray,
    label_auc: Sequence[float],
) -> list[dict]:
    """One row per layer: ``layer``, ``label_auc``, ``behaviour_auc``, ``cos`` (module docstring).

    ``states_*``: (N, L, H); ``y_cal``: the labels; ``called_*``: 1 where the
    unsteered model called a tool; ``label_auc``: stage 03's VALID AUC per layer.
    """
    rows = []
    fit_ok = _both(called_cal) and _both(called_valid)
    for layer in range(states_cal.shape[1]):
        h = states_cal[:, layer]
        label_dir, call_dir = _unit_difference(h, y_cal), _unit_difference(h, called_cal)
        cos = (
            float(label_dir @ call_dir) if label_dir is not None and call_dir is not None else None
        )
        auc = (
            probe_layer(h, called_cal, states_valid[:, layer], called_valid)[0] if fit_ok else None
        )
        rows.append(
            {"layer": layer, "label_auc": float(label_auc[layer]), "behaviour_auc": auc, "cos": cos}
        )
    return rows


GAP_CELLS = (
    ("knows, calls", 1, 1),
    ("knows, does not call", 1, 0),
    ("does not know, calls", 0, 1),
    ("does not know, does not call", 0, 0),
)


def gap_table(
    h_cal: np.ndarray,
    y_cal: np.ndarray,
    h_valid: np.ndarray,
    y_valid: np.ndarray,
    called_valid: np.ndarray,
) -> list[dict]:
    """The two-by-two at L* on VALID: the label probe's verdict against the model's behaviour.

    "Knows": stage 03's probe at L* (StandardScaler + logistic regression on
    CAL labels) gives p(tool) >= 0.5. One row per cell (:data:`GAP_CELLS`):
    ``cell``, ``knows``, ``calls``, ``n``, ``labelled tool`` (of those n).
    """
    from sklearn.preprocessing import StandardScaler

    h_cal, h_valid = np.asarray(h_cal, np.float64), np.asarray(h_valid, np.float64)
    scaler = StandardScaler().fit(h_cal)
    probe = fit_lr(scaler.transform(h_cal), np.asarray(y_cal))
    knows = (probe.predict_proba(scaler.transform(h_valid))[:, 1] >= 0.5).astype(int)
    calls, y = np.asarray(called_valid).astype(int), np.asarray(y_valid).astype(int)
    rows = []
    for name, k, c in GAP_CELLS:
        m = (knows == k) & (calls == c)
        rows.append(
            {
                "cell": name,
                "knows": k,
                "calls": c,
                "n": int(m.sum()),
                "labelled tool": int((m & (y == 1)).sum()),
            }
        )
    return rows


def gap_matrix(rows: list[dict]):
    """:func:`gap_table`'s rows as the two-by-two a reader reads: the label probe's verdict
    down (knows, does not know), the model's behaviour across (calls, does not call), each cell
    ``"n (k labelled tool)"``."""
    import pandas as pd

    cell = {
        (r["knows"], r["calls"]): f"{r['n']} ({r['labelled tool']} labelled tool)" for r in rows
    }
    return pd.DataFrame(
        [[cell[(k, c)] for c in (1, 0)] for k in (1, 0)],
        index=pd.Index(["knows (p(tool) ≥ 0.5)", "does not know"], name="label probe at L*"),
        columns=["calls", "does not call"],
    )


def alignment(cos: float | None) -> str:
    """The band of a cosine (module docstring): aligned ... anti-aligned, or "undefined"."""
    if cos is None:
        return "undefined"
    if cos >= ALIGNED:
        return "aligned"
    if cos >= WEAK:
        return "weakly aligned"
    if cos > -WEAK:
        return "not aligned"
    if cos > -ALIGNED:
        return "weakly anti-aligned"
    return "anti-aligned"


def verdict(cos: float | None, n_called: int | None = None, n: int | None = None) -> str:
    """The plain sentence for the index and the reports, from the cosine at L*."""
    band = alignment(cos)
    if band == "undefined":
        counts = f"{n_called} of {n}" if n is not None else "all or none"
        return (
            f"no call direction: the unsteered model called a tool on {counts} of the CAL "
            "prompts (a call direction needs called and not-called prompts), so the label "
            "direction cannot be compared with its calls"
        )
    s = f"label direction {band} with the model's call direction (cos {cos:.2f})"
    if band.endswith("anti-aligned"):
        s += ": steering along the label vector will push against the model's calls"
    elif band == "not aligned":
        s += ": the label vector is nearly orthogonal to the model's calls"
    return s


def behaviour_vectors(
    h: np.ndarray, called: np.ndarray, domains: Sequence[str], domain_names: Sequence[str]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """``vector: behaviour``'s directions at L*: unit mean(called) - mean(not called) on CAL.

    Global and per domain, as :func:`asa_lib.method.probing.steering_vectors`
    builds the label vectors; ``({}, [note])`` where CAL lacks a called or a
    not-called prompt (no behaviour direction at all).
    """
    try:
        return steering_vectors(
            h,
            np.asarray(called).astype(int),
            list(domains),
            list(domain_names),
            classes=("called", "not-called"),
            what="behaviour direction",
        )
    except ProbingError as e:
        return {}, [f"no behaviour direction: {e}; a `vector: behaviour` config is refused"]


def diagnostics(
    states_cal: np.ndarray,
    y_cal: np.ndarray,
    d_cal: Sequence[str],
    called_cal: np.ndarray,
    states_valid: np.ndarray,
    y_valid: np.ndarray,
    called_valid: np.ndarray,
    label_auc: Sequence[float],
    best_layer: int,
    label_vectors: dict[str, np.ndarray],
    behaviour: dict[str, np.ndarray],
) -> dict:
    """Everything ``vectors/diagnostics.json`` holds but the cost (stage 04 adds it).

    ``label_vectors``/``behaviour``: stage 04's unit vectors at L* (for the
    per-domain cosines).
    """
    layers = layer_diagnostics(states_cal, y_cal, called_cal, states_valid, called_valid, label_auc)
    at = layers[best_layer]
    called_cal, called_valid = np.asarray(called_cal).astype(int), np.asarray(called_valid)
    return {
        "L_star": int(best_layer),
        "cos_at_L_star": at["cos"],
        "behaviour_auc_at_L_star": at["behaviour_auc"],
        "label_auc_at_L_star": at["label_auc"],
        "alignment": alignment(at["cos"]),
        "verdict": verdict(at["cos"], int(called_cal.sum()), len(called_cal)),
        "thresholds": {"aligned": ALIGNED, "weak": WEAK},
        "layers": layers,
        "gap_table": gap_table(
            states_cal[:, best_layer],
            y_cal,
            states_valid[:, best_layer],
            y_valid,
            called_valid,
        ),
        "calls": {
            "cal": {"n": len(called_cal), "called": int(called_cal.sum())},
            "valid": {"n": len(called_valid), "called": int(np.asarray(called_valid).sum())},
            "cal_per_domain": {
                dom: {
                    "n": int((np.asarray(d_cal) == dom).sum()),
                    "called": int(called_cal[np.asarray(d_cal) == dom].sum()),
                }
                for dom in sorted(set(d_cal))
            },
        },
        "vector_cos": {
            k: float(np.asarray(v, np.float64) @ np.asarray(behaviour[k], np.float64))
            for k, v in label_vectors.items()
            if k in behaviour
        },
    }


def save_diagnostics(run_dir, diag: dict) -> None:
    write_json(RunDir(run_dir).diagnostics, diag)


def load_diagnostics(run_dir) -> dict | None:
    """``vectors/diagnostics.json``, or None where the run has none (a run from before it)."""
    p = RunDir(run_dir).diagnostics
    return read_json(p) if p.is_file() else None


def save_behaviour_vectors(run_dir, vectors: dict[str, np.ndarray]) -> None:
    """``vectors/behaviour.safetensors``: the unit behaviour directions by name (may be empty)."""
    from safetensors.numpy import save_file

    run = RunDir(run_dir)
    with atomic_path(run.behaviour_vectors) as tmp:
        save_file({k: np.asarray(v, np.float32) for k, v in vectors.items()}, str(tmp))


def load_behaviour_vectors(run_dir) -> dict[str, np.ndarray]:
    """The behaviour directions stage 04 wrote ({} where it found none or the run has no file)."""
    from safetensors.numpy import load_file

    p = RunDir(run_dir).behaviour_vectors
    return dict(load_file(str(p))) if p.is_file() else {}
