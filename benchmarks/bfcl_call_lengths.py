"""How many new tokens a complete, valid call to a BFCL function takes (sets ``generation.max_new_tokens``).

For every label-1 row of ``data/bfcl_relevance.jsonl.xz`` (BFCL ``simple_python`` and
``multiple``), the call BFCL accepts (its ``possible_answer`` file: the first accepted
value of each argument; an argument whose only accepted value is ``""`` is optional and
left out) is written as the demo model is taught to write it,
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, and counted with the
params' tokenizer. Prints a table and writes ``benchmarks/RESULTS_call_lengths.md``.

    python benchmarks/bfcl_call_lengths.py [--params params/bfcl.yaml]
"""

from __future__ import annotations

import argparse
import json
import lzma
import platform
from datetime import date
from pathlib import Path

import numpy as np

from asa_lib.model.load import load_tokenizer
from asa_lib.params import load_params

ROOT = Path(__file__).resolve().parents[1]
ANSWERS = {
    "simple_python": ROOT / "data/bfcl/bfcl_v4_possible_answer_simple_python.json.xz",
    "multiple": ROOT / "data/bfcl/bfcl_v4_possible_answer_multiple.json.xz",
}
PERCENTILES = (50, 90, 95, 99, 100)


def accepted_call(ground_truth: list[dict]) -> dict:
    """The first call of a BFCL ground truth, each argument at its first accepted value."""
    ((name, args),) = ground_truth[0].items()
    out = {}
    for k, values in args.items():
        kept = [v for v in values if v != ""]
        if kept:
            out[k] = kept[0]
    return {"name": name, "arguments": out}


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def call_lengths(params_path: str) -> tuple[list[int], list[str]]:
    params = load_params(params_path, check_files=False)
    tok = load_tokenizer(params.model)
    pp = params.prompt
    answers = {}
    for path in ANSWERS.values():
        with lzma.open(path, "rt", encoding="utf-8") as f:
            for e in _jsonl(f.read()):
                answers[e["id"]] = e["ground_truth"]
    with lzma.open(params.data_path(), "rt", encoding="utf-8") as f:
        rows = [r for r in _jsonl(f.read()) if r["label"] == 1]
    lengths, ids = [], []
    for r in rows:
        call = accepted_call(answers[r["id"]])
        text = pp.tool_call_start + json.dumps(call) + pp.tool_call_end
        lengths.append(len(tok(text, add_special_tokens=False)["input_ids"]))
        ids.append(r["id"])
    return lengths, ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params/bfcl.yaml"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/RESULTS_call_lengths.md"))
    args = ap.parse_args()
    lengths, ids = call_lengths(args.params)
    arr = np.array(lengths)
    pct = {p: int(np.ceil(np.percentile(arr, p))) for p in PERCENTILES}
    longest = sorted(zip(lengths, ids), reverse=True)[:5]
    lines = [
        "# BFCL: new tokens of a complete, valid call",
        "",
        f"- date: {date.today().isoformat()}; machine: {platform.machine()}, {platform.system()}",
        f"- params: `{Path(args.params).name}` (its tokenizer and call markers)",
        f"- rows: {len(arr)} label-1 rows of the params' data (BFCL simple_python + multiple); "
        "the call BFCL accepts, first accepted value per argument, optional ones left out",
        "",
        "| percentile | tokens |",
        "|---:|---:|",
        *[f"| {p} | {pct[p]} |" for p in PERCENTILES],
        "",
        f"- mean {arr.mean():.1f}; share that fits in 32 tokens: {np.mean(arr <= 32):.1%}",
        "- longest: " + ", ".join(f"{i} ({n})" for n, i in longest),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
