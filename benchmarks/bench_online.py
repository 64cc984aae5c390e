"""Benchmark: online ASA (one pass) against the sweep's two-pass path, time per prompt.

- two-pass (what stage 02 + stage 06 do for a prompt): extract the prompt's
  states (prefix-cached, batched forward over every block), gate them in
  numpy (``compute_gates`` + ``steering_deltas``), then generate with the
  deltas (``generate_all``, no generation cache);
- one-pass (``asa_lib.method.online.generate_online``, what ``ASA.generate`` and
  ``asa generate`` run): the gate is computed inside the generation's prefill.

Both use the same model, prompts, bundle, config, batches and shared-prefix
cache, and must give the same gates and outputs (checked). Also timed: the
decision alone, from extraction (two-pass) against ``decide_prompts`` (a pass
stopped at block L*). The bundle is fitted by the project's code (stages 04-05,
``probing.fit_bundle``, at the given L*) on a few CAL/TRAIN prompts, outside
the timings. Each path runs once to warm up, then ``--repeats`` times
alternately; the table gives the median and the minimum, and the file records
the machine's load average before and after.

    python benchmarks/bench_online.py                 # SmolLM2 (params/demo.yaml), about 5 minutes
    python benchmarks/bench_online.py --params P.yaml # another model (e.g. the LoRA demo model)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore")

from asa_lib.data import make_splits_from_params  # noqa: E402
from asa_lib.engine.extract import extract_states  # noqa: E402
from asa_lib.engine.generate import (  # noqa: E402
    GenerationSettings,
    generate_all,  # noqa: E402
)
from asa_lib.method import probing  # noqa: E402
from asa_lib.method.gate import alpha_effective, compute_gates, steering_deltas  # noqa: E402
from asa_lib.method.online import OnlineGate, decide_prompts, generate_online  # noqa: E402
from asa_lib.model.load import load_params_model  # noqa: E402
from asa_lib.params import load_params  # noqa: E402
from asa_lib.prompts import render_prompts  # noqa: E402


def fit(lm, params, layer: int):
    """Bundle from CAL/TRAIN at ``layer`` (``probing.fit_bundle``); returns (bundle, VALID + TEST texts)."""
    result = make_splits_from_params(params)
    splits = result.samples
    h = {
        s: extract_states(
            lm, render_prompts(lm.tokenizer, params.prompt, [x.text for x in splits[s]])
        )[:, layer]
        for s in ("cal", "train")
    }
    y = {s: np.array([x.label for x in splits[s]]) for s in ("cal", "train")}
    d = {s: [x.domain for x in splits[s]] for s in ("cal", "train")}
    bundle, _ = probing.fit_bundle(
        h,
        y,
        d,
        layer,
        result.domains,
        model_id=lm.model_id,
        num_layers=lm.num_layers,
        model_weights=lm.weights,  # the model check compares the weights digest
    )
    return bundle, [x.text for x in splits["valid"] + splits["test"]]


NOTES_MARKER = "## Analysis"


def _mm(xs: list[float], n: int) -> str:
    return f"{statistics.median(xs) / n:.3f} ({min(xs) / n:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", default=str(ROOT / "params" / "demo.yaml"))
    ap.add_argument("--layer", type=int, default=6, help="L* (the demo's is 6)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tau", type=float, default=0.6)
    ap.add_argument("--alpha", type=float, default=0.4, help="relative to the mean CAL state norm")
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--new-tokens", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--note", default="", help="a line about the machine's state, written into the results"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_online.md"))
    args = ap.parse_args()

    import torch

    load_before = os.getloadavg()
    params = load_params(args.params)
    params.data.per_split_per_class = 2
    lm = load_params_model(params)
    bundle, texts = fit(lm, params, args.layer)
    prompts = render_prompts(lm.tokenizer, params.prompt, texts[: args.prompts])
    a_eff = alpha_effective(args.alpha, "relative", bundle)
    gate = OnlineGate(bundle, args.tau, a_eff, args.beta)
    pp, L, B, n = params.prompt, args.layer, args.batch_size, len(prompts)

    def two_pass(max_new: int):
        t0 = time.perf_counter()
        h = extract_states(lm, prompts, batch_size=B)[:, L]
        g = compute_gates(bundle, h, args.tau)
        deltas = steering_deltas(bundle, g, a_eff, args.beta)
        t1 = time.perf_counter()
        outs, _ = generate_all(
            lm,
            prompts,
            GenerationSettings(max_new_tokens=max_new, batch_size=B, markers=pp),
            deltas,
            layer=L,
        )
        return time.perf_counter() - t0, t1 - t0, outs, g.gate.tolist()

    def one_pass(max_new: int):
        t0 = time.perf_counter()
        outs, dec = generate_online(
            lm, prompts, gate, GenerationSettings(max_new_tokens=max_new, batch_size=B, markers=pp)
        )
        return time.perf_counter() - t0, outs, [d.gate for d in dec]

    def decide_two():
        t0 = time.perf_counter()
        compute_gates(bundle, extract_states(lm, prompts, batch_size=B)[:, L], args.tau)
        return time.perf_counter() - t0

    def decide_one():
        t0 = time.perf_counter()
        decide_prompts(lm, prompts, gate, batch_size=B)
        return time.perf_counter() - t0

    rows, same = [], True
    for max_new in args.new_tokens:
        two_pass(max_new), one_pass(max_new)  # warm-up
        t2, te, t1 = [], [], []
        for _ in range(args.repeats):
            a, e, outs2, g2 = two_pass(max_new)
            b, outs1, g1 = one_pass(max_new)
            t2.append(a)
            te.append(e)
            t1.append(b)
            same = same and outs1 == outs2 and g1 == g2
        rows.append((f"gate + generate, {max_new} new tokens", t2, t1, te))
        print(rows[-1][0], "two-pass", _mm(t2, n), "one-pass", _mm(t1, n), flush=True)
    decide_two(), decide_one()
    d2, d1 = [], []
    for _ in range(args.repeats):
        d2.append(decide_two())
        d1.append(decide_one())
    rows.append(("decision only (no generation)", d2, d1, d2))

    gates = np.bincount(np.array(two_pass(1)[3]) + 1, minlength=3)
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Benchmark: online ASA (one pass) vs the two-pass sweep path",
        "",
        f"- date: {dt.date.today().isoformat()}",
        f"- machine: {os.cpu_count()} CPU cores ({cpu}), {platform.system()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), no GPU",
        f"- load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, "
        f"after: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}",
        *([f"- note: {args.note}"] if args.note else []),
        f"- model: {lm.model_id}, {params.model.dtype}; L* = {L}",
        f"- prompts: {n} VALID/TEST prompts of the bundled Alpaca rows, batch size {B}; greedy; "
        f"config tau={args.tau}, alpha={args.alpha} relative (alpha_eff={a_eff:.4g}), beta={args.beta}; "
        f"gates -1/0/+1: {gates[0]}/{gates[1]}/{gates[2]}",
        f"- {args.repeats} alternating runs of each path after a warm-up; seconds per prompt, "
        "median (min); on a shared machine the min is the better estimate of the cost",
        "",
        "| what | two-pass | of which extraction + gate | one-pass | saved, median (min) |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {name} | {_mm(a, n)} | {_mm(e, n)} | {_mm(b, n)} | "
            f"{100 * (1 - statistics.median(b) / statistics.median(a)):.0f}% ({100 * (1 - min(b) / min(a)):.0f}%) |"
            for name, a, b, e in rows
        ],
        "",
        f"- identical gates and outputs on every run: {'yes' if same else 'NO'}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    path = Path(args.out)
    old = path.read_text() if path.is_file() else ""
    notes = (
        old[old.index(NOTES_MARKER) :] if NOTES_MARKER in old else ""
    )  # a hand-written section is kept
    path.write_text(text + ("\n" + notes if notes else ""))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
