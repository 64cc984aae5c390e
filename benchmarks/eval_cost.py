"""What a whole ``asa evaluate`` of a large file costs on this machine, before running it.

A whole evaluation of BFCL live (2,207 rows) or of MTU-Bench (997 conversations) takes
hours on 2 CPU cores: their prompts are long (median 755 and 1,372 tokens), and each is
run at least twice (the states at L\\*, then generation). This script checks the whole
file against the prompt cap as ``asa evaluate`` does, runs the real ``asa evaluate``
(:func:`asa_lib.run.evaluate.evaluate`: the adapter's config and the baseline) on a seeded
sample of the file, ``--rows`` per label, and scales the sample's measured seconds by the
file's prompt tokens over the sample's.

That projection is an estimate, not a measurement, and the results file says so: a long
prompt costs more per token than a short one (attention), a small sample pads its
batches more, and its outputs may stop earlier or later than the file's. Prints a table
and writes ``benchmarks/RESULTS_eval_cost_<data>.md`` (``--out`` for another file).

    python benchmarks/eval_cost.py --adapter reports/bfcl/chosen_adapter \\
        --params params/bfcl.yaml --data data/bfcl_live.jsonl.xz --max-prompt-tokens 8192
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from asa_lib.data import read_local_rows
from asa_lib.data.splits import sample_tools
from asa_lib.engine.generate import GenerationSettings
from asa_lib.engine.prefix import PromptTooLongError, check_prompt_lengths, token_ids
from asa_lib.model.load import load_params_model
from asa_lib.params import load_params
from asa_lib.prompts import render_prompts
from asa_lib.run.evaluate import evaluate, read_eval_data

ROOT = Path(__file__).resolve().parents[1]


def draw(labels: list[int], per_label: int, seed: int) -> list[int]:
    """``per_label`` positions of each label, drawn with ``random.Random(seed)``, in order."""
    by: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by.setdefault(y, []).append(i)
    if any(len(v) < per_label for v in by.values()):
        counts = {k: len(v) for k, v in by.items()}
        raise SystemExit(f"--rows {per_label}: a label has fewer rows ({counts})")
    rng = random.Random(seed)
    return sorted(i for v in by.values() for i in rng.sample(v, per_label))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--params", required=True)
    ap.add_argument("--data", required=True, help="the whole file an evaluation would read")
    ap.add_argument("--rows", type=int, default=16, help="sample rows per label (default 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-prompt-tokens", type=int, default=None, help="raise the params' cap")
    ap.add_argument("--out", default=None, help="default: benchmarks/RESULTS_eval_cost_<data>.md")
    a = ap.parse_args()

    params = load_params(a.params)
    if a.max_prompt_tokens is not None:
        params.generation.max_prompt_tokens = a.max_prompt_tokens
    data = Path(a.data)
    if params.data.kind != "labelled" or not data.name.endswith((".jsonl", ".jsonl.xz")):
        raise SystemExit("eval_cost.py reads a labelled JSONL file (.jsonl or .jsonl.xz)")
    lm = load_params_model(params)
    out = Path(a.out or ROOT / "benchmarks" / f"RESULTS_eval_cost_{data.name.split('.')[0]}.md")
    # the rows and prompts as asa evaluate reads and renders them
    ds, _ = read_eval_data(params, str(data))
    xs = ds.samples
    tools = sample_tools(xs, ds.tool_sets)
    prompts = render_prompts(lm.tokenizer, params.prompt, [x.request for x in xs], tools)
    ids = token_ids(lm, prompts)
    settings = GenerationSettings.resolve(params.generation, params.prompt, lm)
    try:  # the whole file must be one that asa evaluate accepts
        check_prompt_lengths(
            lm,
            ids,
            settings.max_prompt_tokens,
            settings.max_new_tokens,
            name=lambda i: f"row {xs[i].id!r}",
        )
    except PromptTooLongError as e:
        raise SystemExit(f"{data}: {e}") from None
    whole = [len(i) for i in ids]
    rows = read_local_rows(data)  # indexed as the samples' idx
    picked = draw([x.label for x in xs], a.rows, a.seed)
    some = [whole[k] for k in picked]
    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp) / "sample.jsonl"
        part.write_text("".join(json.dumps(rows[xs[k].idx]) + "\n" for k in picked), "utf-8")
        t0 = time.perf_counter()
        res = evaluate(params, a.adapter, str(part), Path(tmp) / "eval", lm=lm)
        seconds = time.perf_counter() - t0
    ratio = sum(whole) / sum(some)
    projected = seconds * ratio
    W, S = np.array(whole), np.array(some)
    labels = sorted({x.label for x in xs})
    counts = ", ".join(f"{sum(x.label == y for x in xs):,} of label {y}" for y in labels)
    rows = [
        ("rows", f"{len(W):,}", f"{len(S):,}"),
        ("prompt tokens", f"{W.sum():,}", f"{S.sum():,}"),
        (
            "tokens a row: median / p90 / max",
            *(f"{np.median(x):.0f} / {np.percentile(x, 90):.0f} / {x.max()}" for x in (W, S)),
        ),
        (
            "rows x (baseline + each config)",
            f"{len(W) * (1 + len(res['configs_evaluated'])):,}",
            f"{len(S) * (1 + len(res['configs_evaluated'])):,}",
        ),
        (
            "seconds",
            f"~{projected:,.0f} (~{projected / 3600:.1f} h), projected",
            f"{seconds:,.0f}, measured",
        ),
    ]
    lines_out = [
        f"# What a whole `asa evaluate` costs: `{data.name}`",
        "",
        f"- date: {date.today().isoformat()}; machine: {platform.machine()}, {platform.system()}, "
        f"{torch.get_num_threads()} torch threads, {'CUDA' if torch.cuda.is_available() else 'CPU'}",
        f"- model: `{lm.model_id}`; params `{Path(a.params).name}`"
        + (f" with `max_prompt_tokens: {a.max_prompt_tokens}`" if a.max_prompt_tokens else "")
        + f"; adapter `{a.adapter}` ({res['adapter_config']['name']}); up to {res['max_new_tokens']} new tokens",
        f"- sample: {a.rows} rows per label (the file: {counts}), `random.Random({a.seed})`, "
        "the real `asa evaluate` on them",
        "",
        "| | whole file | sample |",
        "|---|---:|---:|",
        *(f"| {k} | {w} | {s} |" for k, w, s in rows),
        "",
        f"The whole file's seconds are the sample's, times its prompt tokens over the sample's "
        f"({ratio:.1f}x): an estimate, not a measurement, and its error is not measured. Long prompts cost more "
        "per token than short ones; a small sample pads its batches more than the whole file; "
        "and the sample's outputs may stop earlier or later than the file's. The whole run may "
        "take longer or less long.",
        "",
    ]
    text = "\n".join(lines_out)
    print(text)
    out.write_text(text, "utf-8")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
