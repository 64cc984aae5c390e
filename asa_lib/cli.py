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
    t = sub.add_parser("train-demo-model",
                       help="train the LoRA adapter that makes the demo's model call tools (synthetic data)")
    t.add_argument("--params", default="params/demo.yaml",
                   help="params whose base model and prompt format to train for (model.adapter is ignored)")
    t.add_argument("--out", default="models/smollm2-135m-tools-lora", help="adapter folder to write")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "train-demo-model":
            return _train_demo_model(args.params, args.out)
        code, _ = run(args.params, args.run_dir, progress=args.progress)
    except (ParamsError, DataError, ModelLoadError, BundleError, RunError) as e:
        print(f"asa: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("asa: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as e:  # a read-only or full disk, a folder that cannot be created ...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"asa: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    return code


def _train_demo_model(params_path: str, out: str) -> int:
    from .demo_model import train_adapter
    from .models import load_model
    from .params import load_params

    params = load_params(params_path, check_files=False)
    lm = load_model(params.model, seed=params.data.seed)  # the base model, without any adapter
    rec = train_adapter(lm, params.prompt, out, base_description=params.model.id or lm.model_id)
    v = rec["synthetic_validation"]
    print(f"adapter written to {out} ({rec['trainable_parameters']:,} trainable parameters, "
          f"{rec['seconds']['total']:.0f} s)")
    for who in ("base_model", "with_adapter"):
        m = v[who]
        print(f"  {who:>12}: triggers on {m['trigger_rate_tool']:.0%} of tool requests, "
              f"{m['trigger_rate_plain']:.0%} of plain ones; valid calls {m['valid_call_rate_tool']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
