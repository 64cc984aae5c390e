"""Compare two run folders' results, ignoring timestamps and named new fields.

    python benchmarks/compare_runs.py reports/before reports/after --ignore config,generation

Prints every difference in results.json and in each sweep/<config>.json (records
and metrics) and exits 1 if there is one; prints nothing and exits 0 when the
runs agree. Used to show that a refactor left results byte-identical.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ALWAYS_IGNORED = {"created", "git_commit"}


def _strip(x, ignore: set[str]):
    if isinstance(x, dict):
        return {k: _strip(v, ignore) for k, v in x.items() if k not in ignore}
    if isinstance(x, list):
        return [_strip(v, ignore) for v in x]
    return x


def _diff(a, b, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'after' if k not in a else 'before'}")
            else:
                _diff(a[k], b[k], f"{path}/{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path}: {json.dumps(a)[:80]} != {json.dumps(b)[:80]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument(
        "--ignore", default="", help="comma-separated keys to ignore at any depth (new fields)"
    )
    args = ap.parse_args(argv)
    ignore = ALWAYS_IGNORED | {k for k in args.ignore.split(",") if k}
    out: list[str] = []
    files = ["results.json"] + sorted(
        p.relative_to(args.before).as_posix() for p in (args.before / "sweep").glob("*.json")
    )
    for rel in files:
        a, b = args.before / rel, args.after / rel
        if not b.is_file():
            out.append(f"{rel}: missing in {args.after}")
            continue
        _diff(
            _strip(json.loads(a.read_text()), ignore),
            _strip(json.loads(b.read_text()), ignore),
            rel,
            out,
        )
    print("\n".join(out), end="\n" if out else "")
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())
