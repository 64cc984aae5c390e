"""Stage 07: configs side by side, selection on VALID, results.json and the chosen adapter."""

from __future__ import annotations

import datetime as _dt
import subprocess
from pathlib import Path

import pandas as pd

from .artifacts import library_versions, read_json, write_json
from .bundle import load_bundle, save_bundle
from .params import Params
from .sweep import BASELINE, sweep_path

METRICS = ("precision", "recall", "f1", "fpr", "accuracy")


def config_names(params: Params) -> list[str]:
    return [BASELINE] + [c.name for c in params.sweep]


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
        raise FileNotFoundError(f"{sweep_path(run_dir, BASELINE)} is missing: run stage 06_sweep "
                                "for the baseline first (`asa run` does).")
    if missing:
        print(f"NOTE: no results for {missing} (their sweep notebooks failed or were not run); "
              "they are left out of the comparison.")
    return out


def split_frame(res: dict[str, dict], split: str) -> pd.DataFrame:
    rows = []
    for name, r in res.items():
        m = r["splits"][split]["metrics"]
        row = {"config": name, "tau": r["tau"], "alpha": r["alpha"], "beta": r["beta"],
               **{k: m[k] for k in METRICS}, "triggers": m["triggers"],
               "format_valid_rate": m["format_valid_rate"], "valid_call_rate": m["valid_call_rate"]}
        for k, (lo, hi) in m["ci95"].items():
            row[f"{k}_lo"], row[f"{k}_hi"] = lo, hi
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(res: dict[str, dict]) -> pd.DataFrame:
    """One row per config: VALID metrics (used to choose) and TEST metrics (reported only)."""
    v = split_frame(res, "valid").set_index("config")
    t = split_frame(res, "test").set_index("config")
    cols = ["f1", "precision", "recall", "fpr"]
    out = pd.concat([v[["tau", "alpha", "beta"]], v[cols].add_prefix("valid_"), t[cols].add_prefix("test_")], axis=1)
    return out.reset_index()


def choose_config(res: dict[str, dict]) -> str:
    """Best VALID F1 among the steered configs, ties to lower VALID FPR, then the earlier config.

    Falls back to the baseline when no steered config has results.
    """
    candidates = [n for n in res if n != BASELINE] or [BASELINE]
    def key(n):
        m = res[n]["splits"]["valid"]["metrics"]
        return (-m["f1"], m["fpr"], candidates.index(n))
    return min(candidates, key=key)


def git_commit(path: str | Path = ".") -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_results(params: Params, run_dir: str | Path, res: dict[str, dict], chosen: str) -> dict:
    run_dir = Path(run_dir)
    probing = read_json(run_dir / "probing" / "layers.json")
    bundle = load_bundle(run_dir / "bundle")
    c = res[chosen]
    chosen_info = {"name": chosen, "tau": c["tau"], "alpha": c["alpha"], "beta": c["beta"],
                   "alpha_unit": c["alpha_unit"], "alpha_eff": c["alpha_eff"],
                   "selected_on": "valid: best F1, ties to lower FPR",
                   "valid": c["splits"]["valid"]["metrics"], "test": c["splits"]["test"]["metrics"]}
    results = {
        "params": params.to_dict(),
        "versions": library_versions(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "model_id": bundle.model_id,
        "trust_remote_code": params.model.trust_remote_code,
        "L_star": probing["best_layer"],
        "L_star_valid_auc": probing["layers"][probing["best_layer"]]["auc"],
        "domains": bundle.domains,
        "chosen": chosen_info,
        "configs": {n: {"tau": r["tau"], "alpha": r["alpha"], "beta": r["beta"], "alpha_eff": r["alpha_eff"],
                        "splits": {s: v["metrics"] for s, v in r["splits"].items()}}
                    for n, r in res.items()},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(run_dir / "results.json", results)
    if chosen != BASELINE:
        save_bundle(bundle, run_dir / "chosen_adapter",
                    extra={"config": {k: chosen_info[k] for k in ("name", "tau", "alpha", "beta", "alpha_unit", "alpha_eff")}})
    return results
