"""One process against two data-parallel processes on a real preset: time per stage, same results.

    python benchmarks/bench_processes.py                        # BFCL preset, 32 rows/split/class
    python benchmarks/bench_processes.py --params params/demo.yaml --per-split-per-class 8
    python benchmarks/bench_processes.py --runs reports/bfcl_p1 reports/bfcl  # two finished runs

Runs the preset from scratch into a temporary folder twice, with ``--processes 1`` and
then ``--processes 2`` (stage 02's extraction and stage 06's generation in torchrun
workers), on fewer rows than the preset (``--per-split-per-class``; its grid unchanged;
generation deals out chunks of 64 prompts, so fewer than about 4 chunks leave a worker
idle). Or, with ``--runs``, reads two finished runs of the same params (the first run
with one process, the second with two). Prints and writes
(``benchmarks/RESULTS_processes.md``) each run's seconds per stage (from its
``stages/*.json``; the per-config ``06_sweep`` notebooks summed), and whether the two
runs' results (``compare_runs.py``: results.json and every sweep/<config>.json record's
decision and score, timestamps aside), generated texts and states files are the same. Nothing else should run
on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import compare_runs  # noqa: E402
from check_parallel_load import same_states  # noqa: E402

from asa_lib.run.runner import run  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def stage_group(stage: str) -> str:
    """A stage's row in the table: the per-config sweep notebooks are one row."""
    return "06_sweep (all configs)" if stage.startswith("06_sweep") else stage


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds per stage (grouped) of a finished run, from its stage records."""
    out: dict[str, float] = defaultdict(float)
    for f in sorted((run_dir / "stages").glob("*.json")):
        out[stage_group(f.stem)] += float(json.loads(f.read_text())["seconds"])
    return dict(out)


def output_differences(a: Path, b: Path) -> tuple[list[str], int]:
    """The records (config/split/id) whose generated text differs between two runs, and the
    records compared."""
    differ, n = [], 0
    for f in sorted((a / "sweep").glob("*.json")):
        ra = json.loads(f.read_text())["records"]
        rb = json.loads((b / "sweep" / f.name).read_text())["records"]
        n += len(ra)
        differ += [
            f"{f.stem}/{x['split']}/{x['id']}" for x, y in zip(ra, rb) if x["output"] != y["output"]
        ]
    return differ, n


def preset(params: Path, per_class: int, tmp: Path) -> Path:
    """The preset with fewer rows and its relative paths made absolute, written into ``tmp``."""
    d = yaml.safe_load(params.read_text())
    base = params.resolve().parent
    for section, key in (("data", "source"), ("model", "adapter")):
        v = d.get(section, {}).get(key)
        if isinstance(v, str) and (v.startswith(".") or (base / v).exists()):
            d[section][key] = str((base / v).resolve())
    d["data"]["per_split_per_class"] = per_class
    out = tmp / params.name
    out.write_text(yaml.safe_dump(d, sort_keys=False))
    return out


def fresh_run(params: Path, run_dir: Path, processes: int) -> None:
    code, _ = run(params, run_dir, log=lambda *_: None, processes=processes)
    if code != 0:
        raise SystemExit(f"the {processes}-process run failed (see {run_dir})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", type=Path, default=ROOT / "params" / "bfcl.yaml")
    ap.add_argument("--per-split-per-class", type=int, default=32)
    ap.add_argument("--runs", type=Path, nargs=2, metavar=("ONE", "TWO"))
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS_processes.md")
    args = ap.parse_args(argv)
    if args.runs:
        dirs = {1: args.runs[0], 2: args.runs[1]}
        for d in dirs.values():
            if not (d / "results.json").is_file():
                ap.error(f"{d}: no results.json (a finished asa run's folder)")
        what = f"two finished runs of `{args.runs[1].name}`'s params, one after the other"
    else:
        if len(os.sched_getaffinity(0)) < 2:
            ap.error("two processes need at least two usable CPU cores")
        tmp = Path(tempfile.mkdtemp(prefix="asa-processes-"))
        params = preset(args.params, args.per_split_per_class, tmp)
        dirs = {n: tmp / f"p{n}" for n in (1, 2)}
        for n, d in dirs.items():
            fresh_run(params, d, n)
            print(f"{n} process(es): {sum(stage_seconds(d).values()):.0f} s", flush=True)
        what = (
            f"`{args.params.name}` with {args.per_split_per_class} rows per split and class "
            "(its grid unchanged), from scratch each time, one run after the other"
        )
    runs = {n: stage_seconds(d) for n, d in dirs.items()}
    # everything but the generated texts: results.json, every record's decision and score
    same = compare_runs.main([str(dirs[1]), str(dirs[2]), "--ignore", "output"]) == 0
    texts, n_records = output_differences(dirs[1], dirs[2])
    states = same_states(dirs[1], dirs[2])
    names = list(dict.fromkeys([*runs[1], *runs[2]]))
    rows = [
        f"| {s} | {runs[1].get(s, 0):.0f} | {runs[2].get(s, 0):.0f} | "
        f"{runs[1].get(s, 0) / max(runs[2].get(s, 0), 1e-9):.2f}x |"
        for s in names
        if max(runs[1].get(s, 0), runs[2].get(s, 0)) >= 1
    ]
    total = {n: sum(r.values()) for n, r in runs.items()}
    lines = [
        "# One process against two data-parallel processes on a real preset",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}; machine: {len(os.sched_getaffinity(0))} CPU "
        f"cores ({platform.machine()}, {cpu_name()}), {platform.system()}, "
        "no GPU",
        f"- runs: {what}",
        "- 1 process: the notebooks' process with all cores' threads; 2 processes: stage 02 "
        "and stage 06_generate in 2 torchrun workers with one core's threads each (the other "
        "stages run in one process either way)",
        "",
        "| stage (seconds) | 1 process | 2 processes | speed-up |",
        "|---|---:|---:|---:|",
        *rows,
        f"| **all stages** | **{total[1]:.0f}** | **{total[2]:.0f}** | "
        f"**{total[1] / total[2]:.2f}x** |",
        "",
        "- results.json and every sweep/<config>.json record's decision and score "
        "(timestamps aside): " + ("identical" if same else "**differ**"),
        f"- generated texts: {len(texts)} of {n_records} records differ"
        + (f" ({', '.join(texts[:6])}{', ...' if len(texts) > 6 else ''})" if texts else ""),
        "- states files: " + ("identical, byte for byte" if states else "**differ**"),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text, encoding="utf-8")
    return 0 if same and states else 1


if __name__ == "__main__":
    raise SystemExit(main())
