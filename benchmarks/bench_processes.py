"""One process against two data-parallel processes on a real preset: time per stage, same results.

    python benchmarks/bench_processes.py                        # BFCL preset, 12 rows/split/class
    python benchmarks/bench_processes.py --params params/demo.yaml --per-split-per-class 8

Runs the preset from scratch into a temporary folder twice, with ``--processes 1`` and
then ``--processes 2`` (stage 02's extraction and stage 06's generation in torchrun
workers), on fewer rows than the preset (``--per-split-per-class``; its grid unchanged).
Prints and writes (``benchmarks/RESULTS_processes.md``) each run's seconds per stage
(the 24 or so per-config ``06_sweep`` notebooks summed), and whether the two runs' results
(``compare_runs.py``: results.json and every sweep/<config>.json, timestamps aside) and
states files are the same byte for byte. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
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

DONE = re.compile(r"\] (\S+): done in ([0-9.]+) s")


def stage_group(stage: str) -> str:
    """A stage's row in the table: the per-config sweep notebooks are one row."""
    return "06_sweep (all configs)" if stage.startswith("06_sweep") else stage


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


def timed_run(params: Path, run_dir: Path, processes: int) -> tuple[float, dict[str, float]]:
    stages: dict[str, float] = defaultdict(float)

    def log(line: str, *_) -> None:
        m = DONE.search(str(line))
        if m:
            stages[stage_group(m.group(1))] += float(m.group(2))

    t0 = time.time()
    code, _ = run(params, run_dir, log=log, processes=processes)
    if code != 0:
        raise SystemExit(f"the {processes}-process run failed (see {run_dir})")
    return time.time() - t0, dict(stages)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", type=Path, default=ROOT / "params" / "bfcl.yaml")
    ap.add_argument("--per-split-per-class", type=int, default=12)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS_processes.md")
    args = ap.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        ap.error("two processes need at least two usable CPU cores")
    tmp = Path(tempfile.mkdtemp(prefix="asa-processes-"))
    params = preset(args.params, args.per_split_per_class, tmp)
    runs = {}
    for n in (1, 2):
        runs[n] = timed_run(params, tmp / f"p{n}", n)
        print(f"{n} process(es): {runs[n][0]:.0f} s", flush=True)
    same = compare_runs.main([str(tmp / "p1"), str(tmp / "p2")]) == 0
    states = same_states(tmp / "p1", tmp / "p2")
    names = list(dict.fromkeys([*runs[1][1], *runs[2][1]]))
    rows = [
        f"| {s} | {runs[1][1].get(s, 0):.0f} | {runs[2][1].get(s, 0):.0f} | "
        f"{runs[1][1].get(s, 0) / max(runs[2][1].get(s, 0), 1e-9):.2f}x |"
        for s in names
        if max(runs[1][1].get(s, 0), runs[2][1].get(s, 0)) >= 1
    ]
    lines = [
        "# One process against two data-parallel processes on a real preset",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}; machine: {len(os.sched_getaffinity(0))} CPU "
        f"cores ({platform.machine()}, {platform.processor() or 'cpu'}), {platform.system()}, "
        "no GPU",
        f"- preset: `{args.params.name}` with {args.per_split_per_class} rows per split and "
        "class (its grid unchanged), from scratch each time, one run after the other",
        "- 1 process: the notebooks' process with all cores' threads; 2 processes: stage 02 "
        "and stage 06_generate in 2 torchrun workers with one core's threads each (the other "
        "stages run in one process either way)",
        "",
        "| stage (seconds) | 1 process | 2 processes | speed-up |",
        "|---|---:|---:|---:|",
        *rows,
        f"| **whole run** | **{runs[1][0]:.0f}** | **{runs[2][0]:.0f}** | "
        f"**{runs[1][0] / runs[2][0]:.2f}x** |",
        "",
        "- results.json and every sweep/<config>.json (timestamps aside): "
        + ("identical" if same else "**differ**"),
        "- states files: " + ("identical, byte for byte" if states else "**differ**"),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text, encoding="utf-8")
    return 0 if same and states else 1


if __name__ == "__main__":
    raise SystemExit(main())
