"""The data stage: Alpaca rows -> keyword domains and labels -> CAL/TRAIN/VALID/TEST.

Faithful to the seed notebook: the same four keyword domains in the same order,
the same labelling rule, one ``RandomState(seed)`` stream consumed in the same
order (bucket shuffles in domain x label order, then the final per-split
shuffles), and the same slice of each bucket for each split. Given the same
rows and seed, :func:`build_splits` selects the prompts the seed would.

Differences, all visible to the user: rows with missing or non-string fields
are skipped and counted (the seed would crash or mis-read them); buckets that
cannot fill a split are reported as shortfalls; a split with no example of a
class is an error.

Sample ids are ``r<row index>`` (the row's position in the source), stable for
a given source.
"""

from __future__ import annotations

import gzip
import json
import lzma
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import write_json, write_text

# Ordered: classify() returns the first domain whose keywords match.
DOMAIN_KEYWORDS: dict[str, tuple[str, ...]] = {
    "math": ("calculate", "compute", "solve", "equation", "sum", "average",
             "percentage", "convert", "ratio", "divide", "multiply"),
    "code": ("write a program", "code", "function", "algorithm", "implement",
             "script", "debug", "compile", "class", "method"),
    "search": ("search", "find", "look up", "latest", "current", "news",
               "recent", "who is", "what happened", "when did"),
    "translation": ("translate", "translation", "say in", "convert to",
                    "how do you say", "in french", "in spanish", "in german",
                    "in japanese", "in chinese"),
}
DOMAINS = tuple(DOMAIN_KEYWORDS)
OUTPUT_TOOL_WORDS = ("result", "output", "answer", "return")
SPLITS = ("cal", "train", "valid", "test")
LABELS = ("tool", "non_tool")  # order of the seed's per-bucket loops


class DataError(ValueError):
    """The data cannot make usable splits; the message says what to change."""


@dataclass
class Sample:
    id: str
    split: str
    domain: str
    label: int  # 1 = needs a tool
    idx: int  # row index in the source
    text: str


@dataclass
class SplitResult:
    samples: dict[str, list[Sample]]
    bucket_sizes: dict[str, dict[str, int]]  # domain -> label -> rows available
    shortfalls: list[dict[str, Any]]  # rows that could not be filled
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    rows_read: int = 0

    def counts(self) -> list[dict[str, Any]]:
        """One row per split x domain x label with its count (zeros included)."""
        out = []
        for s in SPLITS:
            for d in DOMAINS:
                for lab in (1, 0):
                    n = sum(1 for x in self.samples[s] if x.domain == d and x.label == lab)
                    out.append({"split": s, "domain": d, "label": LABELS[1 - lab], "n": n})
        return out


def classify(text: str) -> str | None:
    """The seed's keyword rule: first domain with a keyword in ``text`` (lower-cased)."""
    t = text.lower()
    for domain, keywords in DOMAIN_KEYWORDS.items():
        if any(k in t for k in keywords):
            return domain
    return None


def label_for(domain: str, output: str) -> str:
    """The seed's label: 'tool' if the output is in the same domain or mentions a result."""
    if classify(output) == domain or any(k in output.lower() for k in OUTPUT_TOOL_WORDS):
        return "tool"
    return "non_tool"


def prompt_text(row: dict[str, Any]) -> str:
    """instruction + ' ' + input, exactly as the seed builds it."""
    return row.get("instruction", "") + " " + row.get("input", "")


def check_row(row: Any) -> str | None:
    """None for a usable row, else the reason it is skipped.

    ``instruction`` and ``output`` must be strings; ``input`` may be absent (the
    seed reads it with a default of "") but, when present, must be a string.
    """
    if not isinstance(row, dict):
        return "not an object"
    for key in ("instruction", "output"):
        if key not in row:
            return f"missing '{key}'"
        if not isinstance(row[key], str):
            return f"non-string '{key}'"
    if "input" in row and not isinstance(row["input"], str):
        return "non-string 'input'"
    return None


# ----------------------------------------------------------------------------- loading


def _open_text(path: Path):
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def read_local_rows(path: str | Path, skipped: dict[str, int] | None = None) -> list[Any]:
    """Rows of a local JSON (a list) or JSONL file, optionally .gz/.xz.

    Lines that are not valid JSON are skipped and counted in ``skipped``.
    The returned list keeps a placeholder (None) for such lines so that row
    indices (and so sample ids) stay those of the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    skipped = skipped if skipped is not None else {}
    name = path.name.removesuffix(".gz").removesuffix(".xz")
    with _open_text(path) as f:
        if name.endswith(".json"):
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: not valid JSON ({e})") from None
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of rows")
            return data
        rows: list[Any] = []
        for line in f:
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                skipped["invalid JSON line"] = skipped.get("invalid JSON line", 0) + 1
                rows.append(None)
        return rows


def load_rows(source: str, local_path: Path | None, hub_split: str = "train",
              skipped: dict[str, int] | None = None) -> Iterable[Any]:
    """Rows from a local file (``local_path``) or from the hub dataset ``source``."""
    if local_path is not None:
        return read_local_rows(local_path, skipped)
    from datasets import load_dataset  # the real path for users with network access

    try:
        return load_dataset(source, split=hub_split)
    except Exception as e:  # noqa: BLE001 - many offline/hub error types
        raise DataError(
            f"could not load hub dataset {source!r} (split {hub_split!r}): {type(e).__name__}: {e}. "
            "Without network access, point data.source at a local .jsonl file "
            "(e.g. data/alpaca_subset.jsonl.xz)."
        ) from None


# ----------------------------------------------------------------------------- splitting


def build_splits(rows: Iterable[Any], per_split_per_class: int = 40, test_multiplier: int = 2,
                 seed: int = 42, skipped: dict[str, int] | None = None) -> SplitResult:
    """Bucket, shuffle and slice exactly as the seed notebook does."""
    skipped = dict(skipped or {})
    rng = np.random.RandomState(seed)  # same stream as the seed's np.random.seed(seed)
    buckets: dict[str, dict[str, list[int]]] = {d: {"tool": [], "non_tool": []} for d in DOMAINS}
    texts: dict[int, str] = {}
    n_read = 0
    for i, row in enumerate(rows):
        n_read += 1
        if row is None:  # invalid JSON line, already counted
            continue
        reason = check_row(row)
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        text = prompt_text(row)
        dom = classify(text)
        if dom is None:
            continue
        buckets[dom][label_for(dom, row["output"])].append(i)
        texts[i] = text

    for dom in buckets:  # math/tool, math/non_tool, code/tool, ...
        for lbl in buckets[dom]:
            rng.shuffle(buckets[dom][lbl])

    samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    shortfalls = []
    for dom in DOMAINS:
        for lbl in LABELS:
            pool = buckets[dom][lbl]  # buckets are disjoint, so the seed's `used` filter is a no-op
            for sidx, sname in enumerate(SPLITS):
                n = per_split_per_class * (test_multiplier if sname == "test" else 1)
                start = sidx * per_split_per_class
                chosen = pool[start:start + n]
                if len(chosen) < n:
                    shortfalls.append({"domain": dom, "label": lbl, "split": sname,
                                       "needed": n, "got": len(chosen), "available": len(pool)})
                for idx in chosen:
                    samples[sname].append(Sample(id=f"r{idx}", split=sname, domain=dom,
                                                 label=1 if lbl == "tool" else 0, idx=int(idx),
                                                 text=texts[idx]))
    for s in SPLITS:
        rng.shuffle(samples[s])

    result = SplitResult(samples=samples,
                         bucket_sizes={d: {lb: len(buckets[d][lb]) for lb in LABELS} for d in DOMAINS},
                         shortfalls=shortfalls, skipped=skipped, rows_read=n_read)
    _check_splits(result)
    return result


def _check_splits(result: SplitResult) -> None:
    for s in SPLITS:
        labels = {x.label for x in result.samples[s]}
        for lab, name in ((1, "tool"), (0, "non-tool")):
            if lab not in labels:
                raise DataError(
                    f"split {s!r} has no {name} example (bucket sizes: {result.bucket_sizes}). "
                    "Use a larger data source or lower data.per_split_per_class."
                )
    if result.shortfalls:
        lines = ", ".join(f"{r['domain']}/{r['label']}/{r['split']} {r['got']}/{r['needed']}"
                          for r in result.shortfalls)
        warnings.warn(f"some buckets could not fill their split (got/needed): {lines}", stacklevel=3)


# ----------------------------------------------------------------------------- files


def write_splits(run_dir: str | Path, result: SplitResult) -> Path:
    """Write ``data/splits.jsonl`` (one sample a line, split order) and ``data/summary.json``."""
    run_dir = Path(run_dir)
    lines = [json.dumps(asdict(x), ensure_ascii=False) for s in SPLITS for x in result.samples[s]]
    path = write_text(run_dir / "data" / "splits.jsonl", "\n".join(lines) + "\n")
    write_json(run_dir / "data" / "summary.json", {
        "rows_read": result.rows_read,
        "skipped": result.skipped,
        "bucket_sizes": result.bucket_sizes,
        "shortfalls": result.shortfalls,
        "split_sizes": {s: len(result.samples[s]) for s in SPLITS},
    })
    return path


def read_splits(run_dir: str | Path) -> dict[str, list[Sample]]:
    """The splits written by :func:`write_splits`, in their stored order."""
    out: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    path = Path(run_dir) / "data" / "splits.jsonl"
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                x = Sample(**json.loads(line))
                out[x.split].append(x)
    return out


def make_splits_from_params(params) -> SplitResult:
    """Load the rows named by ``params.data`` and build the splits."""
    skipped: dict[str, int] = {}
    rows = load_rows(params.data.source, params.data_path(), params.data.hub_split, skipped)
    return build_splits(rows, params.data.per_split_per_class, params.data.test_multiplier,
                        params.data.seed, skipped=skipped)
