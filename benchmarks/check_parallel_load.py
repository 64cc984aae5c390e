"""Check: a run with 2 data-parallel workers on a busy machine gives the one-process results.

    python benchmarks/check_parallel_load.py --trials 3      # tiny preset, about 4 min a trial on 2 cores

Runs the tiny preset once with one process, then ``--trials`` times from scratch with
``--processes 2`` while a CPU hog (a busy loop, bounded in time) keeps one core busy
beside it, and compares each run with the first (``compare_runs.py``: results.json and
every sweep/<config>.json, timestamps aside) and the states files byte for byte.
Prints a table and writes ``benchmarks/RESULTS_parallel_load.md`` (round 4, b5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import compare_runs  # noqa: E402

from asa_lib.run.runner import run  # noqa: E402


def hog(seconds: float) -> subprocess.Popen:
    loop = f"import time\nt = time.time()\nwhile time.time() - t < {seconds}: pass"
    return subprocess.Popen([sys.executable, "-c", loop])


def same_states(a: Path, b: Path) -> bool:
    files = sorted(p.name for p in (a / "states").iterdir())
    return files == sorted(p.name for p in (b / "states").iterdir()) and all(
        (a / "states" / f).read_bytes() == (b / "states" / f).read_bytes() for f in files
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS_parallel_load.md")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="asa-parallel-load-"))
    d = yaml.safe_load((ROOT / "params" / "tiny.yaml").read_text())
    d["data"]["source"] = str(ROOT / "data" / "alpaca_subset.jsonl.xz")
    params = tmp / "tiny.yaml"
    params.write_text(yaml.safe_dump(d, sort_keys=False))
    quiet = lambda *_: None  # noqa: E731
    t0 = time.time()
    code, _ = run(params, tmp / "one", log=quiet)
    assert code == 0, "the one-process run failed"
    rows = [("one process, no hog", f"{time.time() - t0:.0f}", "-", "-")]
    print(f"one process: {rows[0][1]} s", flush=True)
    agree = 0
    for i in range(args.trials):
        h = hog(900)
        try:
            t0 = time.time()
            code, _ = run(params, tmp / f"two{i}", log=quiet, processes=2)
            secs = time.time() - t0
        finally:
            h.kill()
            h.wait()
        assert code == 0, f"trial {i}: the two-process run failed"
        differ = compare_runs.main([str(tmp / "one"), str(tmp / f"two{i}")]) != 0
        commits = [  # compare_runs ignores it (runs of two checkouts); here it must agree
            json.loads((tmp / r / "results.json").read_text())["git_commit"]
            for r in ("one", f"two{i}")
        ]
        differ = differ or commits[0] != commits[1]
        states = same_states(tmp / "one", tmp / f"two{i}")
        agree += not differ and states
        rows.append(
            (
                f"2 processes + a CPU hog, trial {i + 1}",
                f"{secs:.0f}",
                "differ" if differ else "identical",
                "identical" if states else "differ",
            )
        )
        print(" | ".join(rows[-1]), flush=True)
    lines = [
        "# Check: two data-parallel processes on a busy machine (round 4, b5)",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}",
        f"- machine: {len(os.sched_getaffinity(0))} CPU cores ({platform.machine()}), "
        f"{platform.system()}, no GPU; a busy-loop process beside every two-process run",
        "- run: the tiny preset (tiny random LFM2, bundled Alpaca rows), from scratch each time",
        "",
        "| run | seconds | results.json and sweep/*.json | states files |",
        "|---|---:|---|---|",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
        f"- identical to the one-process run: {agree} of {args.trials} trials",
        "",
    ]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if agree == args.trials else 1


if __name__ == "__main__":
    raise SystemExit(main())
