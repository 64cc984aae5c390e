"""``asa`` command line: ``asa run --params params/demo.yaml``."""

from __future__ import annotations

import argparse
import sys

from .bundle import BundleError
from .data import DataError
from .models import ModelLoadError
from .params import ParamsError
from .runner import RunError, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="asa", description="ASA (Activation Steering Adapter) pipeline")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run all stages (skipping those that are up to date) and write the reports")
    r.add_argument("--params", required=True, help="params YAML file, e.g. params/demo.yaml")
    r.add_argument("--run-dir", default=None, help="run folder (default: reports/<params name>)")
    r.add_argument("--progress", action="store_true", help="show papermill's per-cell progress bars")
    args = ap.parse_args(argv)
    try:
        code, _ = run(args.params, args.run_dir, progress=args.progress)
    except (ParamsError, DataError, ModelLoadError, BundleError, RunError) as e:
        print(f"asa: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("asa: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
