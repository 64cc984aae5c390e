"""``asa`` command line.

- ``asa run --params params/demo.yaml``: run the notebook chain;
- ``asa generate --adapter reports/demo/chosen_adapter --params params/demo.yaml "prompt" ...``:
  apply a tuned adapter to prompts (or stdin, one per line): per prompt the
  routed domain, p(tool), gate, the output and whether it made a valid tool call;
- ``asa evaluate --adapter reports/bfcl/chosen_adapter --params params/bfcl.yaml --data FILE``:
  apply a tuned adapter, unchanged, to every row of a labelled set; baseline and
  steered metrics with bootstrap intervals, and an HTML report (``reports/<name>/``);
- ``asa summarize RUN_DIR...``: the measured figures of ``docs/results.md``, written from
  the runs' own ``results.json``/``evaluation.json`` (``--check``: are they current?);
- ``asa train-demo-model``: the demo model's LoRA adapter.
"""

from __future__ import annotations

import argparse
import sys

from asa_lib.data.splits import DataError
from asa_lib.method.bundle import BundleError
from asa_lib.method.online import SteeringError
from asa_lib.model.load import ModelLoadError
from asa_lib.params import ParamsError
from asa_lib.run.parallel import check_processes
from asa_lib.run.runner import RunError, run


class UsageError(ValueError):
    """A command line that cannot be run as given."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="asa", description="ASA (Activation Steering Adapter) pipeline"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser(
        "run", help="run all stages (skipping those that are up to date) and write the reports"
    )
    r.add_argument("--params", required=True, help="params YAML file, e.g. params/demo.yaml")
    r.add_argument("--run-dir", default=None, help="run folder (default: reports/<params name>)")
    r.add_argument(
        "--progress", action="store_true", help="show papermill's per-cell progress bars"
    )
    r.add_argument(
        "--reports",
        choices=["reader", "full"],
        default="reader",
        help="HTML reports for a reader (default: code folded, paths relative to the project) "
        "or in full (every cell as executed)",
    )
    r.add_argument(
        "--processes",
        type=_processes,
        default=1,
        metavar="N",
        help="data-parallel workers for extraction and generation (torchrun; one per GPU, "
        "or CPU processes sharing the cores), or auto (one per visible GPU; on CPUs 2 "
        "where 2 cores may be used); the same decisions and scores as with 1 (a generated "
        "text can differ at a near-tie: docs/speed.md)",
    )
    t = sub.add_parser(
        "train-demo-model",
        help="train the LoRA adapter that makes the demo's model call tools (synthetic data)",
    )
    t.add_argument(
        "--params",
        default="params/demo.yaml",
        help="params whose base model and prompt format to train for (model.adapter is ignored)",
    )
    t.add_argument(
        "--out", default="models/smollm2-135m-tools-lora", help="adapter folder to write"
    )
    g = sub.add_parser(
        "generate", help="apply a tuned adapter to prompts: decision, output, tool-call validity"
    )
    g.add_argument("prompts", nargs="*", help="user requests (default: stdin, one per line)")
    g.add_argument(
        "--adapter", required=True, help="adapter folder, e.g. reports/demo/chosen_adapter"
    )
    g.add_argument(
        "--params",
        required=True,
        help="params YAML of the run the adapter came from (model, prompt format)",
    )
    g.add_argument("--tau", type=float, default=None, help="override the adapter's tau")
    g.add_argument(
        "--alpha", type=float, default=None, help="override alpha (in the adapter's alpha unit)"
    )
    g.add_argument(
        "--alpha-unit", choices=["absolute", "relative"], default=None, help="unit of --alpha"
    )
    g.add_argument("--beta", type=float, default=None, help="override beta")
    g.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="load an adapter whose adapter.json has no sha256 (its edits cannot be detected)",
    )
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="default: the params' generation.max_new_tokens",
    )
    g.add_argument(
        "--baseline", action="store_true", help="also generate each prompt without steering"
    )
    g.add_argument(
        "--json", action="store_true", help="machine-readable output (one JSON document)"
    )
    g.add_argument(
        "--jsonl",
        action="store_true",
        help='stdin holds one request a line as JSON: {"text": ..., "tools": [...]} (tools optional)',
    )
    e_ = sub.add_parser(
        "evaluate",
        help="apply a tuned adapter, unchanged, to a labelled set: metrics, intervals, a report",
    )
    e_.add_argument(
        "--adapter", required=True, help="adapter folder, e.g. reports/bfcl/chosen_adapter"
    )
    e_.add_argument(
        "--params",
        required=True,
        help="params YAML of the run the adapter came from (model, prompt format, data columns)",
    )
    e_.add_argument(
        "--data",
        required=True,
        help="labelled rows: a JSONL/JSON/CSV file (.gz/.xz too) or a hub dataset id, read "
        "as the params' data section says (kind, columns, limits); every row is used",
    )
    e_.add_argument(
        "--name", default=None, help="evaluation name (default: <adapter run>-eval-<data name>)"
    )
    e_.add_argument("--out-dir", default=None, help="report folder (default: reports/<name>)")
    e_.add_argument(
        "--reports",
        choices=["reader", "full"],
        default="reader",
        help="the HTML report for a reader (default) or in full (every cell as executed)",
    )
    for flag, what in (
        ("tau", "tau"),
        ("alpha", "alpha (in the adapter's alpha unit)"),
        ("beta", "beta"),
    ):
        e_.add_argument(
            f"--{flag}",
            default=None,
            metavar="X[,Y...]",
            help=f"override {what}; several values, comma-separated, share one baseline",
        )
    s_ = sub.add_parser(
        "summarize",
        help="write the measured figures of docs/results.md from the runs' own results",
    )
    s_.add_argument(
        "runs",
        nargs="*",
        help="run folders (asa run) or evaluation folders (asa evaluate) to summarize first",
    )
    s_.add_argument("--summaries", default="docs/results", help="folder of the summary JSON files")
    s_.add_argument("--doc", default="docs/results.md", help="the Markdown file with the blocks")
    s_.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 where the doc's blocks differ from what the summaries write",
    )
    args = ap.parse_args(argv)
    try:
        if args.cmd == "summarize":
            return _summarize(args)
        if args.cmd == "evaluate":
            return _evaluate(args)
        if args.cmd == "train-demo-model":
            return _train_demo_model(args.params, args.out)
        if args.cmd == "generate":
            return _generate(args)
        code, _ = run(
            args.params,
            args.run_dir,
            progress=args.progress,
            processes=args.processes,
            reports=args.reports,
        )
    except (
        ParamsError,
        DataError,
        ModelLoadError,
        BundleError,
        RunError,
        SteeringError,
        UsageError,
    ) as e:
        print(f"asa: error: {_printable(' '.join(str(e).split()))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("asa: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as e:  # a read-only or full disk, a folder that cannot be created ...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"asa: error: {_printable(f'{e.strerror or e}{where}')}", file=sys.stderr)
        return 1
    return code


def _summarize(args: argparse.Namespace) -> int:
    from asa_lib.report.summary import SummaryError, update

    try:
        written, current = update(args.runs, args.summaries, args.doc, check=args.check)
    except SummaryError as e:
        raise UsageError(str(e)) from None
    for path in written:
        print(f"summary: {path}")
    if args.check:
        if not current:
            print(
                f"asa: {args.doc} differs from what the summaries in {args.summaries} write: "
                "run asa summarize",
                file=sys.stderr,
            )
            return 1
        print(f"{args.doc}: up to date")
        return 0
    print(f"{args.doc}: {'up to date' if current else 'written'}")
    return 0


def _processes(text: str) -> int | str:
    if text == "auto":
        return text  # resolved once the params name the device
    try:
        return check_processes(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"needs a whole number >= 1 or auto, got {text!r}"
        ) from None


def _train_demo_model(params_path: str, out: str) -> int:
    from asa_lib.demo.train import train_adapter
    from asa_lib.model.load import check_prompt_tokenizer, load_model
    from asa_lib.params import load_params

    params = load_params(params_path, check_files=False)
    lm = load_model(params.model, seed=params.data.seed)  # the base model, without any adapter
    check_prompt_tokenizer(params, lm.tokenizer)  # it trains for the prompt format
    rec = train_adapter(lm, params.prompt, out, base_description=params.model.id or lm.model_id)
    v = rec["synthetic_validation"]
    print(
        f"adapter written to {out} ({rec['trainable_parameters']:,} trainable parameters, "
        f"{rec['seconds']['total']:.0f} s)"
    )
    for group in v["with_adapter"]:
        for who in ("base_model", "with_adapter"):
            m = v[who][group]
            print(
                f"  {group:>18} {who:>12}: calls on {m['trigger_rate_tool']:.0%} of tool requests, "
                f"{m['trigger_rate_plain']:.0%} of plain ones; valid calls "
                f"{m['valid_call_rate_tool']:.0%}, exact {m['exact_call_rate']:.0%}"
            )
    return 0


def _evaluate(args) -> int:
    import re
    from pathlib import Path

    from asa_lib.run.evaluate import EvaluateError, console_lines, run_evaluation
    from asa_lib.run.runner import PROJECT_ROOT

    name = args.name
    if name is None:
        stem = re.sub(r"\.(jsonl|json|csv)(\.(gz|xz))?$", "", Path(args.data).name)
        name = f"{Path(args.adapter).resolve().parent.name}-eval-{stem}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
        raise UsageError(f"--name {name!r}: names are letters, digits, '_', '.', '-'")
    out = Path(args.out_dir) if args.out_dir else PROJECT_ROOT / "reports" / name
    try:
        res, report = run_evaluation(
            args.params,
            args.adapter,
            args.data,
            out,
            args.tau,
            args.alpha,
            args.beta,
            reports=args.reports,
        )
    except EvaluateError as e:
        raise UsageError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - the report notebook failed: say where to look
        if type(e).__module__.startswith("asa_lib") or isinstance(e, (ValueError, OSError)):
            raise
        print(
            f"asa: error: the report notebook failed ({type(e).__name__}: {e}); "
            f"see {out / 'notebooks' / '08_evaluate.ipynb'}",
            file=sys.stderr,
        )
        return 1
    for line in console_lines(res):
        print(_printable(line))
    print(f"report: {report}")
    return 0


def _generate(args) -> int:
    import json

    from asa_lib.api import ASA, request_of, run_prompt_format
    from asa_lib.chat import last_turn
    from asa_lib.data.splits import tool_set_id
    from asa_lib.engine.generate import GenerationSettings, generate_all
    from asa_lib.engine.prefix import PromptTooLongError
    from asa_lib.files import JSONDepthError, loads_json
    from asa_lib.model.load import load_params_model
    from asa_lib.params import load_params
    from asa_lib.prompts import render_prompts, tools_for
    from asa_lib.run.core import record
    from asa_lib.tools import CallMarkers, score_output

    params = load_params(args.params)
    asa = ASA.load(
        args.adapter,
        tau=args.tau,
        alpha=args.alpha,
        beta=args.beta,
        alpha_unit=args.alpha_unit,
        prompt=params.prompt,
        allow_model_mismatch=params.steering.allow_model_mismatch,
        allow_unsigned=args.allow_unsigned,
    )  # before the model: fails fast
    # an adapter that records its prompt format was checked against it by ASA.load; an
    # older one only against the params.yaml of the run folder it sits in
    run_prompt = None if asa.bundle.prompt_format_sha256 else run_prompt_format(asa.folder)
    if run_prompt is not None and run_prompt != params.prompt:
        print(
            "asa: warning: --params has another prompt format than the run the adapter came from "
            "(its params.yaml); the probes were fitted on that run's format",
            file=sys.stderr,
        )
    if asa.bundle.stale:
        print(_printable(f"asa: note: the adapter is stale: {asa.bundle.stale}"), file=sys.stderr)
    if args.max_new_tokens is not None and args.max_new_tokens <= 0:
        raise UsageError("--max-new-tokens must be > 0")
    prompts = args.prompts
    if args.jsonl and prompts:
        raise UsageError("--jsonl reads the requests from stdin: give no prompts as arguments")
    if not prompts:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("give prompts as arguments, or on stdin (one per line)")
        try:
            lines = list(sys.stdin)
        except UnicodeDecodeError as e:
            raise UsageError(f"stdin is not UTF-8 text ({e.reason} at byte {e.start})") from None
        if lines:  # a byte-order mark (a file saved by a Windows editor) is not a request's text
            lines[0] = lines[0].removeprefix("\ufeff")
        prompts = [line.strip() for line in lines if line.strip()]
        for n, line in enumerate(prompts, 1):
            _check_utf8(line, f"stdin, request {n}")
    else:
        for n, text in enumerate(prompts, 1):
            _check_utf8(text, f"prompt {n}")
    if not prompts or any(not p.strip() for p in prompts):
        raise UsageError(
            "no prompts: give non-empty prompts as arguments, or on stdin (one per line)"
        )
    own_tools: list[list | None] = [None] * len(prompts)
    bodies: list = list(prompts)  # each request's user text, or its conversation
    if args.jsonl:
        for n, line in enumerate(prompts, 1):
            try:
                body, tools = request_of(loads_json(line), f"stdin, request {n}")
            except JSONDepthError as e:
                raise UsageError(f"stdin, request {n}: {e}") from None
            except (ValueError, RecursionError) as e:
                msg = str(e) if str(e).startswith("stdin") else f"stdin, request {n}: not JSON"
                raise UsageError(msg) from None
            # JSON's "\udcff" escapes hold no UTF-8 either
            _check_utf8(
                json.dumps([body, tools], ensure_ascii=False), f"stdin, request {n}", at=False
            )
            bodies[n - 1], own_tools[n - 1] = body, tools
        # what the results show of a request: its text, of a conversation its last turn
        prompts = [b if isinstance(b, str) else last_turn(b) for b in bodies]
    lm = load_params_model(params)
    asa.check_model(lm)
    settings = GenerationSettings.resolve(
        params.generation, params.prompt, lm, max_new_tokens=args.max_new_tokens
    )
    max_new = settings.max_new_tokens
    try:  # a prompt too long for generation.max_prompt_tokens or the model: one line
        gens = asa.generate(
            lm,
            None,
            [
                {"text" if isinstance(b, str) else "messages": b, "tools": k}
                for b, k in zip(bodies, own_tools)
            ],
            settings=settings,
        )
        base = None
        if args.baseline:
            base, _ = generate_all(
                lm,
                render_prompts(lm.tokenizer, params.prompt, bodies, own_tools),
                settings,
                desc="baseline",
            )
    except PromptTooLongError as e:
        raise UsageError(f"{e} (see --params)") from None
    markers = CallMarkers.of(params.prompt)
    results = []
    for i, (text, g) in enumerate(zip(prompts, gens)):
        d = g.decision
        tools = tools_for(params.prompt, own_tools[i])  # valid against the request's tools
        rec = record(
            g.output,
            markers,
            tools,
            id=None,  # free prompts: no row of a split
            split=None,
            domain=None,
            label=None,
            tools=tool_set_id(own_tools[i]) if own_tools[i] else None,
            routed=d.routed,
            has_probe=d.routed in asa.bundle.probes,
            p_tool=d.p_tool,
            gate=d.gate,
        )
        r = {"prompt": text, **rec.to_dict(GENERATE_FIELDS)}
        if not isinstance(bodies[i], str):  # a conversation: "prompt" is its last turn
            r["turns"] = len(bodies[i])
        if own_tools[i]:
            r["tools"] = [t["name"] for t in own_tools[i]]
        if base is not None:
            b = score_output(base[i], markers, tools)
            r.update(
                baseline_output=base[i],
                baseline_triggered=b.triggered,
                baseline_format_valid=b.format_valid,
                baseline_valid=b.valid,
            )
        results.append(r)
    if args.json:
        doc = {
            "adapter": asa.config,
            "model_id": lm.model_id,
            "max_new_tokens": max_new,
            "results": results,
        }
        print(json_text(doc))
        return 0
    # The text report: one line per field, every value from a user, a data row, the adapter or
    # the model escaped (_printable), so none can write a line of its own or a terminal escape.
    c, e = asa.config, _printable
    print(
        f"adapter {e(c['folder'])}: config {e(c['name'])} (tau={c['tau']:g}, alpha={c['alpha']:g} "
        f"{c['alpha_unit']}, alpha_eff={c['alpha_eff']:.4g}, beta={c['beta']:g}), block "
        f"{c['layer']} of {e(c['model_id'])}"
    )
    for i, r in enumerate(results, 1):
        print(f"\n[{i}] {e(r['prompt'])}")
        if "tools" in r:
            print("    tools: " + ", ".join(e(t) for t in r["tools"]))
        print(
            f"    routed: {e(r['routed'])}   p(tool): {r['p_tool']:.4f}   "
            + f"gate: {r['gate']:+d} ({GATE_WORDS[r['gate']]})".replace("+0 ", "0 ")
        )
        print(f"    tool call: {_call_summary(r['triggered'], r['format_valid'], r['valid'])}")
        print("    output: " + e(r["output"]))
        if base is not None:
            print(
                f"    baseline tool call: {_call_summary(r['baseline_triggered'], r['baseline_format_valid'], r['baseline_valid'])}"
            )
            print("    baseline: " + e(r["baseline_output"]))
    return 0


GATE_WORDS = {1: "push towards a tool call", -1: "suppress a tool call", 0: "not steered"}

# The fields of a PromptRecord that ``asa generate --json`` prints per prompt (after "prompt";
# with --baseline, the baseline's output and score follow as baseline_<field>).
GENERATE_FIELDS = ("routed", "p_tool", "gate", "output", "triggered", "format_valid", "valid")


def _call_summary(trig: bool, format_valid: bool, valid: bool) -> str:
    if not trig:
        return "none"
    if valid:
        return "valid"
    return "invalid" + ("" if format_valid else " (does not parse)")


def _printable(text: object) -> str:
    """``text`` on one terminal line: every character that is not printable (newlines, tabs,
    ANSI / OSC escapes, other control and format characters, undecodable bytes) shown as its
    Python escape (``\\n``, ``\\x1b``, ``\\u202e``, ``\\udcff``)."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def _check_utf8(text: str, where: str, at: bool = True) -> None:
    """Refuse text that holds bytes that are not UTF-8 (Python keeps them as lone surrogates);
    ``at``: say which byte, at which character (else: which surrogate, for a JSON escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        if at and "\udc80" <= bad <= "\udcff":
            what = f"byte 0x{ord(bad) - 0xDC00:02x} at character {e.start}"
        else:
            what = f"the lone surrogate {ascii(bad)[1:-1]}"
        raise UsageError(f"{where} is not UTF-8 text ({what})") from None


def _finite(obj):
    """``obj`` with every non-finite float (NaN, infinities) replaced by None, recursively."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_text(doc) -> str:
    """``doc`` as ``asa generate --json`` prints it: valid JSON only (a non-finite number is
    ``null``), ASCII only (no byte of it is a terminal control)."""
    import json

    return json.dumps(_finite(doc), indent=2, ensure_ascii=True, allow_nan=False)


if __name__ == "__main__":
    sys.exit(main())
