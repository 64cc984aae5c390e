"""Why a run's calls on tool rows could or could not run, from the run's own records.

For each config of a finished ``asa run`` (default: the baseline and the config chosen on
VALID), the calls on one split's rows labelled tool (label 1) are re-scored against each
row's own tools (the run's ``data/tools.json``; the prompt format's tools for a row without)
and counted by :func:`asa_lib.tools.call_problem`: valid, lacks a required argument, names
an unlisted tool, does not parse, cut (no end marker within ``max_new_tokens``, whatever it
holds, as the run's validity split counts it). Every complete call's valid or not is checked
against the run's own record. Prints a table and writes
``benchmarks/RESULTS_call_validity.md``.

    python benchmarks/call_validity.py [reports/bfcl] [--split test] [--configs all]
"""

from __future__ import annotations

import argparse
import platform
from collections import Counter
from datetime import date
from pathlib import Path

from asa_lib.data import read_tool_sets
from asa_lib.files import read_json
from asa_lib.params import load_params
from asa_lib.prompts import tools_for
from asa_lib.tools import CALL_PROBLEMS, CallMarkers, call_problem

ROOT = Path(__file__).resolve().parents[1]
# the table's columns after the count of calls: valid, then why not (cut last)
COLUMNS = tuple(reversed(CALL_PROBLEMS))


def reasons(run: Path, config: str, split: str) -> Counter:
    """The calls of ``config`` on ``split``'s label-1 rows, counted by why they could or
    could not run; a complete call's valid or not must be the run's own record's."""
    pp = load_params(run / "params.yaml", check_files=False).prompt
    tool_sets = read_tool_sets(run)
    records = read_json(run / "sweep" / f"{config}.json")["records"]
    out: Counter = Counter()
    markers = CallMarkers.of(pp)
    for r in records:
        if r["split"] != split or r["label"] != 1 or not r["triggered"]:
            continue
        tools = tools_for(pp, tool_sets[r["tools"]] if r.get("tools") else None)
        why = call_problem(r["output"], markers, tools)
        if why != "cut" and (why == "valid") != bool(r["valid"]):
            raise SystemExit(
                f"{config} {r['id']}: re-scored {why!r}, the run's record says valid={r['valid']}"
            )
        out[why] += 1
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(ROOT / "reports" / "bfcl"))
    ap.add_argument("--split", default="test", choices=["valid", "test"])
    ap.add_argument(
        "--configs", default="", help="comma-separated configs, or all (default: baseline, chosen)"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_call_validity.md"))
    args = ap.parse_args()
    run = Path(args.run)
    if not (run / "results.json").is_file():
        ap.error(f"{run}: no results.json (a finished asa run's folder)")
    results = read_json(run / "results.json")
    chosen = (results.get("chosen") or {}).get("name")
    if args.configs == "all":
        configs = list(results["configs"])
    elif args.configs:
        configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    else:
        configs = ["baseline"] + ([chosen] if chosen else [])
    unknown = [c for c in configs if c not in results["configs"]]
    if unknown:
        ap.error(f"configs {unknown} are not in {run / 'results.json'}")
    rows = []
    for c in configs:
        n = reasons(run, c, args.split)
        total = sum(n.values())
        cells = [f"{n[k]} ({n[k] / total:.0%})" if total else "0" for k in COLUMNS]
        name = f"`{c}`" + (" (chosen)" if c == chosen else "")
        rows.append(f"| {name} | {total} | " + " | ".join(cells) + " |")
    lines = [
        f"# Why the calls on tool rows could or could not run: `{run.name}`, {args.split.upper()}",
        "",
        f"- date: {date.today().isoformat()}; machine: {platform.machine()}, {platform.system()}",
        f"- run: commit `{str(results.get('git_commit'))[:12]}`, finished "
        f"{results.get('created')}; model `{results.get('model_id')}`; up to "
        f"{results['params']['generation']['max_new_tokens']} new tokens",
        f"- rows: the {args.split.upper()} rows labelled tool (label 1) on which the config "
        "called; each call re-scored against the row's own tools "
        "(`asa_lib.tools.call_problem`), the valid count checked against the run's records",
        "",
        "| config | calls on tool rows | " + " | ".join(COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
