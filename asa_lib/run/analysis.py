"""Stage 07: configs side by side, selection on VALID, results.json and the chosen adapter.

:func:`run` does the stage's reads and writes; ``notebooks/07_analysis.py`` shows them.

Also stage 07's one-pass agreement check (:func:`one_pass_agreement`): the
chosen adapter applied in one pass (online ASA, through the public API) to a
few TEST prompts, against the outputs the two-pass sweep stored for them.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from asa_lib.data.splits import Sample, read_splits, read_tool_sets
from asa_lib.files import git_commit, library_versions, read_json, write_json
from asa_lib.layout import RunDir
from asa_lib.method.bundle import clear_stale, load_bundle, save_bundle
from asa_lib.method.probing import load_layers
from asa_lib.metrics import METRICS as metric_registry
from asa_lib.metrics import validity_shares
from asa_lib.params import BASELINE, Params
from asa_lib.report.verdict import AIMED, BACKFIRED, FLIP_KINDS, HELD, decision_advice
from asa_lib.run.core import vs_baseline
from asa_lib.run.stages import require
from asa_lib.run.sweep import steering_blocks, sweep_path

METRICS = tuple(metric_registry)  # every metric, in the registry's order


def config_names(params: Params) -> list[str]:
    return [c.name for c in params.configs()]


def collect(params: Params, run_dir: str | Path) -> dict[str, dict]:
    """The sweep results of the baseline and every config in ``params`` (in that order)."""
    run_dir = Path(run_dir)
    out, missing = {}, []
    for name in config_names(params):
        p = sweep_path(run_dir, name)
        if p.is_file():
            out[name] = read_json(p)
        else:
            missing.append(name)
    if BASELINE in missing:
        raise FileNotFoundError(
            f"{sweep_path(run_dir, BASELINE)} is missing: run stage 06_sweep "
            "for the baseline first (`asa run` does)."
        )
    if missing:
        print(
            f"NOTE: no results for {missing} (their sweep notebooks failed or were not run); "
            "they are left out of the comparison."
        )
    return out


def steered_configs(res: dict[str, dict]) -> list[str]:
    """The configs with results other than the baseline, in order ([] for ``sweep: []``)."""
    return [n for n in res if n != BASELINE]


def split_frame(res: dict[str, dict], split: str) -> pd.DataFrame:
    rows = []
    for name, r in res.items():
        m = r["splits"][split]["metrics"]
        cfg = r.get("config", {})
        row = {
            "config": name,
            "tau": r["tau"],
            "alpha": r["alpha"],
            "beta": r["beta"],
            "gate": cfg.get("gate", "none" if name == BASELINE else "probe"),
            "vector": cfg.get("vector", "mixture"),
            "layer": r.get("layer"),  # the steering block (L* unless the config sets its own)
            **{k: m[k] for k in METRICS},
            "triggers": m["triggers"],
            "format_valid_rate": m["format_valid_rate"],
            "valid_call_rate": m["valid_call_rate"],
            **validity_shares(m),
        }
        for k, (lo, hi) in m["ci95"].items():
            row[f"{k}_lo"], row[f"{k}_hi"] = lo, hi
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(res: dict[str, dict]) -> pd.DataFrame:
    """One row per config: VALID metrics (used to choose) and TEST metrics (reported only)."""
    v = split_frame(res, "valid").set_index("config")
    t = split_frame(res, "test").set_index("config")
    cols = ["f1", "precision", "recall", "fpr"]
    out = pd.concat(
        [v[["tau", "alpha", "beta"]], v[cols].add_prefix("valid_"), t[cols].add_prefix("test_")],
        axis=1,
    )
    return out.reset_index()


def flips(
    base: dict, res: dict, tool_sets: dict | None = None, prompts: dict | None = None
) -> pd.DataFrame:
    """Prompts whose decision (tool call or not) differs from the baseline, one row each.

    With ``tool_sets`` (the run's ``data/tools.json``, where rows bring their own
    tools) a ``tools`` column names each prompt's tools; with ``prompts`` (id -> the
    request's text) a ``prompt`` column shows it.

    ``kind``: gained a call under a +1 gate, lost one under a -1 gate, or changed
    in the other direction than its gate pushed (a gate of 0 reuses the
    baseline output, so it never changes). Outputs are raw text: display them
    escaped (pandas' HTML does).
    """
    before = {(r["split"], r["id"]): r for r in base["records"]}
    rows = []
    for r in res["records"]:
        b = before[(r["split"], r["id"])]
        if r["triggered"] == b["triggered"]:
            continue
        if r["triggered"] and r["gate"] == 1:
            kind = FLIP_KINDS[0]
        elif not r["triggered"] and r["gate"] == -1:
            kind = FLIP_KINDS[1]
        else:
            kind = FLIP_KINDS[2]
        rows.append(
            {
                "split": r["split"],
                "id": r["id"],
                "prompt": (prompts or {}).get(r["id"], ""),
                "domain": r["domain"],
                "label": r["label"],
                "tools": ", ".join(t["name"] for t in (tool_sets or {}).get(r.get("tools"), [])),
                "p_tool": round(r["p_tool"], 3),
                "gate": r["gate"],
                "kind": kind,
                "baseline output": b["output"],
                "steered output": r["output"],
            }
        )
    cols = [
        "split",
        "id",
        *(["prompt"] if prompts else []),
        "domain",
        "label",
        *(["tools"] if tool_sets else []),
        "p_tool",
        "gate",
        "kind",
        "baseline output",
        "steered output",
    ]
    return pd.DataFrame(rows, columns=cols)


def flip_counts(base: dict, res: dict) -> pd.DataFrame:
    """Per split: prompts steered, outputs changed, decision flips of each kind, and whether the
    gate's decision happened (:data:`AIMED`, :data:`HELD`, :data:`BACKFIRED`)."""
    f = flips(base, res)
    before = {(r["split"], r["id"]): r for r in base["records"]}
    rows = []
    for split in res["splits"]:
        recs = [r for r in res["records"] if r["split"] == split]
        pairs = [(r, before[(split, r["id"])]) for r in recs]
        row = {
            "split": split,
            "prompts": len(recs),
            "steered": sum(r["gate"] != 0 for r in recs),
            "output changed": sum(r["output"] != b["output"] for r, b in pairs),
            "decision flips": int((f["split"] == split).sum()),
        }
        for k in FLIP_KINDS:
            row[k] = int(((f["split"] == split) & (f["kind"] == k)).sum())
        for j, g in enumerate((-1, 1)):
            other = [(r, b) for r, b in pairs if r["gate"] == g and bool(b["triggered"]) == (g < 0)]
            row[AIMED[j]] = len(other)
            row[HELD[j]] = sum(bool(r["triggered"]) == bool(b["triggered"]) for r, b in other)
            row[BACKFIRED[j]] = sum(
                r["gate"] == g
                and bool(r["triggered"]) != bool(b["triggered"])
                and bool(r["triggered"]) == (g < 0)
                for r, b in pairs
            )
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(
    res: dict[str, dict], split: str, seed: int = 0, metrics: tuple[str, ...] = ("f1", "fpr")
) -> pd.DataFrame:
    """Every config minus the baseline on ``split``: point difference and paired bootstrap 95% CI."""
    base = [r for r in res[BASELINE]["records"] if r["split"] == split]
    rows = []
    for name, r in res.items():
        if name == BASELINE:
            continue
        recs = [x for x in r["records"] if x["split"] == split]
        d = vs_baseline(base, recs, seed, metrics)
        row = {"config": name, "tau": r["tau"], "alpha": r["alpha"], "beta": r["beta"], **d}
        for m in metrics:
            row[f"d_{m} beyond noise"] = d[f"d_{m}_lo"] > 0 or d[f"d_{m}_hi"] < 0
        rows.append(row)
    return pd.DataFrame(rows)


def grid(df: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """``metric`` as a tau x alpha table when the steered configs form a grid (>= 2 x 2, one per cell)."""
    d = df[df["config"] != BASELINE]
    if d["tau"].nunique() < 2 or d["alpha"].nunique() < 2 or d.duplicated(["tau", "alpha"]).any():
        return None
    return d.pivot(index="tau", columns="alpha", values=metric).sort_index(ascending=False)


def family_grids(
    df: pd.DataFrame, metrics: tuple[str, ...] = ("f1", "fpr")
) -> list[tuple[str, dict[str, pd.DataFrame]]]:
    """The tau x alpha grids of each family of steered configs (same gate, vector, block and
    beta), as ``(label, {metric: table})``, for the families whose configs form a grid
    (:func:`grid`); a sweep of one family gives one, labelled ``""``."""
    d = df[df["config"] != BASELINE]
    keys = [k for k in ("gate", "vector", "layer", "beta") if k in d.columns]
    if d.empty:
        return []
    parts = list(d.groupby(keys, dropna=False, sort=True)) if keys else [((), d)]
    out = []
    for key, part in parts:
        key = key if isinstance(key, tuple) else (key,)
        g = {m: grid(part, m) for m in metrics}
        if all(v is not None for v in g.values()):
            label = ", ".join(
                f"{'block' if k == 'layer' else k} {v}"
                for k, v in zip(keys, key)
                if len(parts) > 1 and d[k].nunique(dropna=False) > 1
            )
            out.append((label, g))
    return out


# The paper's ablations (arXiv 2602.04935 v2, Qwen2.5-1.5B, alpha = 4, its own test set):
# figures of *another model*, shown beside ours for orientation only.
PAPER_ABLATIONS = {
    "ASA (router + probe, mixed vector)": {"f1": 0.504, "fpr": 0.052},
    "no gate (always +1)": {"f1": 0.391, "fpr": 0.500},
    "global vector only": {"f1": 0.535, "fpr": 0.083},
    "domain vectors only": {"f1": 0.186, "fpr": 0.219},
    "oracle router": {"f1": 0.519, "fpr": 0.010},
    "random vector": {"f1": 0.175, "fpr": 0.083},
}


# ``vector: behaviour`` (asa_lib.method.diagnostics): not in the paper, so no paper row.
BEHAVIOUR_KIND = "behaviour direction (beyond the paper)"


def ablation_kind(config: dict) -> str:
    """Which of the paper's ablation rows a config corresponds to (by its gate, vector and beta)."""
    if config.get("gate") == "none":
        return "baseline (no steering)"
    if config.get("vector") == "random":
        return "random vector"
    if config.get("vector") == "behaviour":
        return BEHAVIOUR_KIND
    if config.get("gate") == "always":
        return "no gate (always +1)"
    if config.get("gate") == "oracle":
        return "oracle router"
    if config.get("beta") == 1.0:
        return "global vector only"
    if config.get("beta") == 0.0:
        return "domain vectors only"
    return "ASA (router + probe, mixed vector)"


def ablation_table(res: dict[str, dict]) -> pd.DataFrame:
    """Each config's ablation row: our VALID/TEST F1 and FPR beside the paper's (another model)."""
    rows = []
    for name, r in res.items():
        kind = ablation_kind(r.get("config", {"gate": "none"} if name == BASELINE else {}))
        v, t = r["splits"]["valid"]["metrics"], r["splits"]["test"]["metrics"]
        paper = PAPER_ABLATIONS.get(kind, {})
        rows.append(
            {
                "config": name,
                "ablation": kind,
                "VALID F1": v["f1"],
                "VALID FPR": v["fpr"],
                "TEST F1": t["f1"],
                "TEST FPR": t["fpr"],
                "paper F1 (Qwen2.5-1.5B)": paper.get("f1"),
                "paper FPR (Qwen2.5-1.5B)": paper.get("fpr"),
            }
        )
    return pd.DataFrame(rows)


def reference_row(params: Params) -> dict | None:
    """The published reference row, only where the params say it applies to this run's model."""
    r = params.reference
    if r is None or params.model.id not in r.applies_to:
        return None
    return {k: v for k, v in r.__dict__.items() if k != "applies_to"}


def choose_config(res: dict[str, dict]) -> str:
    """Best VALID F1 among the steered ASA configs, ties to lower VALID FPR, then the earlier config.

    Ablations (``gate: oracle`` uses the true domain, ``always`` and ``vector: random``
    are not the method) are reported but never chosen: the chosen adapter must be
    one that can be applied to new prompts. ``vector: behaviour`` (the probe gate,
    the model's own call direction) can be, and is chosen on VALID like any
    config where the params list one. Falls back to the baseline when no such
    config has results.
    """

    def applicable(r: dict) -> bool:
        c = r.get("config", {})
        return c.get("gate", "probe") == "probe" and c.get("vector", "mixture") in (
            "mixture",
            "behaviour",
        )

    candidates = [n for n, r in res.items() if n != BASELINE and applicable(r)] or [BASELINE]

    def key(n):
        m = res[n]["splits"]["valid"]["metrics"]
        return (-m["f1"], m["fpr"], candidates.index(n))

    return min(candidates, key=key)


def diagnostics_summary(run_dir: str | Path) -> dict | None:
    """Stage 04's diagnostics for results.json and the index: the verdict, the cosine and AUCs at
    L*, the two-by-two at L* and the calls (None for a run from before them)."""
    from asa_lib.method.diagnostics import load_diagnostics

    d = load_diagnostics(run_dir)
    if d is None:
        return None
    keys = (
        "verdict",
        "alignment",
        "cos_at_L_star",
        "behaviour_auc_at_L_star",
        "label_auc_at_L_star",
    )
    return {k: d.get(k) for k in (*keys, "gap_table", "calls")}  # the cost (seconds) stays there


def behaviour_vs_label(
    res: dict[str, dict], split: str, pairs: Sequence[tuple[str, str]], seed: int = 0
) -> pd.DataFrame:
    """Each (behaviour config, label config) pair: paired bootstrap ΔF1/ΔFPR, behaviour minus label."""
    rows = []
    for b, a in pairs:
        rb = {r["id"]: r for r in res[b]["records"] if r["split"] == split}
        ra = [r for r in res[a]["records"] if r["split"] == split]
        d = vs_baseline(ra, [rb[r["id"]] for r in ra], seed, ("f1", "fpr"))
        rows.append({"behaviour config": b, "label config": a, **d})
    return pd.DataFrame(rows)


def behaviour_pairs(res: dict[str, dict]) -> list[tuple[str, str]]:
    """(behaviour config, label config) with the same gate, tau, alpha and beta, both with results."""
    out = []
    for b, rb in res.items():
        cb = rb.get("config", {})
        if cb.get("vector") != "behaviour":
            continue
        for a, ra in res.items():
            ca = ra.get("config", {})
            same = all(ca.get(k) == cb.get(k) for k in ("gate", "tau", "alpha", "beta"))
            if a != BASELINE and ca.get("vector", "mixture") == "mixture" and same:
                out.append((b, a))
                break
    return out


def write_results(params: Params, run_dir: str | Path, res: dict[str, dict], chosen: str) -> dict:
    run = RunDir(run_dir)
    probing = load_layers(run)
    bundle = load_bundle(run.bundle)
    c = res[chosen]
    # the chosen config's steering block, where it is not L* (older sweep results: L*)
    steer_at = c.get("layer", bundle.layer)
    chosen_info = {
        "name": chosen,
        "tau": c["tau"],
        "alpha": c["alpha"],
        "beta": c["beta"],
        "alpha_unit": c["alpha_unit"],
        "alpha_eff": c["alpha_eff"],
        "layer": steer_at,
        "selected_on": "valid: best F1, ties to lower FPR",
        "valid": c["splits"]["valid"]["metrics"],
        "test": c["splits"]["test"]["metrics"],
    }
    flip_table = {
        n: flip_counts(res[BASELINE], r).to_dict("records") for n, r in res.items() if n != BASELINE
    }
    results = {
        "params": params.to_dict(),
        "versions": library_versions(),
        "git_commit": git_commit(Path(__file__).resolve().parents[1]) or "unknown",
        "model_id": bundle.model_id,
        "trust_remote_code": params.model.trust_remote_code,
        "L_star": probing["best_layer"],
        "L_star_valid_auc": probing["layers"][probing["best_layer"]]["auc"],
        # steering.blocks resolved on this run, and each config's steering block
        "steering_blocks": steering_blocks(params, run),
        "domains": bundle.domains,
        "chosen": chosen_info,
        "configs": {
            n: {
                "tau": r["tau"],
                "alpha": r["alpha"],
                "beta": r["beta"],
                "alpha_eff": r["alpha_eff"],
                "layer": r.get("layer", bundle.layer),
                "vector": r.get("config", {}).get("vector", "mixture"),
                "splits": {s: v["metrics"] for s, v in r["splits"].items()},
            }
            for n, r in res.items()
        },
        "vs_baseline": {
            s: {
                row["config"]: {
                    k: row[k]
                    for k in ("d_f1", "d_f1_lo", "d_f1_hi", "d_fpr", "d_fpr_lo", "d_fpr_hi")
                }
                for row in paired_differences(res, s, seed=params.data.seed).to_dict("records")
            }
            for s in ("valid", "test")
        },
        "diagnostics": diagnostics_summary(run),
        # vector: behaviour against the label vector at the same gate (paired, behaviour - label)
        "behaviour_vs_label": {
            s: behaviour_vs_label(res, s, behaviour_pairs(res), seed=params.data.seed).to_dict(
                "records"
            )
            for s in ("valid", "test")
        },
        "flips": flip_table,
        # did the gate's decision happen? plain sentences from the flips (decision_advice)
        "advice": {
            n: [a for row in rows for a in decision_advice(row, n)]
            for n, rows in flip_table.items()
        },
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(run.results, results)
    if (
        chosen == BASELINE
    ):  # no steered config: no adapter to hand out (and none left from a previous run)
        shutil.rmtree(run.chosen_adapter, ignore_errors=True)
    else:
        save_bundle(
            bundle,
            run.chosen_adapter,
            extra={
                "config": {
                    **{
                        k: chosen_info[k]
                        for k in ("name", "tau", "alpha", "beta", "alpha_unit", "alpha_eff")
                    },
                    **{
                        k: v
                        for k, v in c.get("config", {}).items()
                        if k in ("gate", "vector", "seed")
                    },
                    # its steering block, where it is not L* (the API applies it there)
                    **({"layer": steer_at} if steer_at != bundle.layer else {}),
                }
            },
        )
        clear_stale(run.chosen_adapter)  # the adapter of these inputs: no longer stale
    return results


@dataclass
class AnalysisResult:
    """What stage 07 read and wrote: every config's sweep results, the choice, ``results.json``."""

    res: dict[str, dict]  # config name -> its sweep/<config>.json (baseline first)
    chosen: str  # chosen on VALID (:func:`choose_config`)
    steered: list[str]  # the configs with results other than the baseline
    results: dict  # what results.json holds


def run(params: Params, run_dir: str | Path) -> AnalysisResult:
    """Stage 07: collect the sweep's results, choose on VALID, write ``results.json`` and
    ``chosen_adapter/`` (:func:`write_results`)."""
    require(run_dir, "07_analysis")
    res = collect(params, run_dir)
    chosen = choose_config(res)
    return AnalysisResult(
        res, chosen, steered_configs(res), write_results(params, run_dir, res, chosen)
    )


# ---------------------------------------------------------------- the one-pass agreement check


def chosen_adapter(run_dir: str | Path, chosen: str) -> Path | None:
    """``chosen_adapter/`` of the run, or None where the baseline was chosen (nothing to apply)."""
    folder = RunDir(run_dir).chosen_adapter
    if chosen == BASELINE or not (folder / "adapter.json").is_file():
        return None
    return folder


def agreement_prompts(samples: Sequence[Sample], n: int = 3) -> list[Sample]:
    """The first ``n`` tool and the first ``n`` non-tool samples, in that order."""
    return [x for x in samples if x.label == 1][:n] + [x for x in samples if x.label == 0][:n]


@dataclass
class Agreement:
    """One-pass outputs against the sweep's, per prompt (``table``), and how many are equal."""

    table: pd.DataFrame
    same: int
    n: int

    @property
    def summary(self) -> str:
        return f"one-pass outputs equal to the sweep's: {self.same}/{self.n}"


def one_pass_agreement(
    run_dir: str | Path,
    res: dict[str, dict],
    chosen: str,
    generate: Callable[[list[str | dict]], Sequence[Any]],
    n: int = 3,
    split: str = "test",
) -> Agreement:
    """Apply the chosen config in one pass to a few ``split`` prompts; compare with the sweep.

    ``generate``: user requests (a text, or ``{"text", "tools"}`` for a row with its
    own tools) -> one result per request with ``output`` and
    ``decision`` (``routed``, ``p_tool``, ``gate``), e.g. ``ASA.generate`` of
    the chosen adapter with the run's generation settings. The prompts are
    :func:`agreement_prompts` of the split (the first ``n`` tool and ``n``
    non-tool rows); each row shows the baseline's and the chosen config's
    sweep output (``res``, from :func:`collect`) beside the one-pass output,
    and ``= sweep`` whether the one-pass output equals the chosen config's.
    """
    picked = agreement_prompts(read_splits(run_dir)[split], n)
    tool_sets = read_tool_sets(run_dir)  # a row with its own tools is asked with them
    asked = [  # a row is asked as it was rendered: its text or conversation, its own tools
        x.text
        if x.messages is None and not x.tools
        else {"text" if x.messages is None else "messages": x.request}
        | ({"tools": tool_sets[x.tools]} if x.tools else {})
        for x in picked
    ]
    gens = list(generate(asked))
    if len(gens) != len(picked):
        raise ValueError(f"generate gave {len(gens)} results for {len(picked)} prompts")

    def outputs(name: str) -> dict[str, str]:
        return {r["id"]: r["output"] for r in res[name]["records"] if r["split"] == split}

    base, swept = outputs(BASELINE), outputs(chosen)
    rows = [
        {
            "id": x.id,
            "label": "tool" if x.label else "non-tool",
            "prompt": x.text[:80],
            "routed": g.decision.routed,
            "p(tool)": round(g.decision.p_tool, 3),
            "gate": g.decision.gate,
            "baseline output": base[x.id][:200],
            "steered output": g.output[:200],
            "= sweep": g.output == swept[x.id],
        }
        for x, g in zip(picked, gens)
    ]
    same = sum(g.output == swept[x.id] for x, g in zip(picked, gens))
    return Agreement(pd.DataFrame(rows), int(same), len(picked))
