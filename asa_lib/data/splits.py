"""The data stage: rows -> domains and labels -> CAL/TRAIN/VALID/TEST.

Two kinds of data (``data.kind``):

- ``alpaca_keywords`` (the default) is faithful to the seed notebook: Alpaca
  rows, keyword domains (``data.domains``, by default the seed's four in the
  seed's order), the same labelling rule, one ``RandomState(seed)`` stream
  consumed in the same order (bucket shuffles in domain x label order, then
  the final per-split shuffles), and the same slice of each bucket for each
  split. Given the same rows, domains and seed, :func:`build_splits` selects
  the prompts the seed would.
- ``labelled``: rows that carry their own ``text``, ``label`` and ``domain``
  (column names in ``data.columns``), from a local JSONL/JSON/CSV file or a hub
  dataset (:func:`read_labelled`). A ``split`` column, when present, is
  respected as given; otherwise :func:`build_labelled_splits` applies the
  seed's protocol to the domain x label buckets (domains in order of first
  appearance).

Differences from the seed, all visible to the user: rows with missing or
unusable fields are skipped and counted (the seed would crash or mis-read
them); buckets that cannot fill a split are reported as shortfalls; a split
with no example of a class, or a TRAIN split with one domain where the data
has several (the router needs two), is an error. Data of one domain has no
router: every prompt uses that domain's probe and vector.

Sample ids are ``r<row index>`` (the row's position in the source), stable for
a given source, or a labelled data set's own ``id`` column.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asa_lib.files import read_json, write_json, write_text
from asa_lib.layout import RunDir
from asa_lib.provenance import canonical_json, digest

SPLITS = ("cal", "train", "valid", "test")


LABELS = ("tool", "non_tool")  # order of the seed's per-bucket loops


SPLIT_ALIASES = {"validation": "valid"}


MAX_EXAMPLES = 5  # skipped rows listed per reason in the summary


class DataError(ValueError):
    """The data cannot make usable splits; the message says what to change."""


@dataclass
class Sample:
    id: str
    split: str
    domain: str
    label: int  # 1 = needs a tool
    idx: int  # row index in the source
    # The request's user text; of a conversation, its last turn (what reports show).
    text: str
    # The row's own tools: the id of its tool set in data/tools.json (``tool_set_id``);
    # None: the prompt format's tools (``prompt.tools``). Left out of splits.jsonl when None.
    tools: str | None = None
    # A conversation (checked chat messages, :mod:`asa_lib.chat`) instead of one user text;
    # None: ``text`` is the request. Left out of splits.jsonl when None.
    messages: list[dict[str, Any]] | None = None

    @property
    def request(self) -> str | list[dict[str, Any]]:
        """What the prompt is rendered from: the conversation, else the user text."""
        return self.text if self.messages is None else self.messages


@dataclass
class SplitResult:
    samples: dict[str, list[Sample]]
    bucket_sizes: dict[str, dict[str, int]]  # domain -> label -> rows available
    shortfalls: list[dict[str, Any]]  # rows that could not be filled
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    rows_read: int = 0
    domains: list[str] = field(default_factory=list)  # in order; default: bucket_sizes' order
    kind: str = "alpaca_keywords"
    split_column: str = ""  # labelled: the split column that was respected, "" if none
    skipped_examples: list[dict[str, Any]] = field(default_factory=list)  # where and why
    tool_sets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # id -> tools

    def __post_init__(self) -> None:
        if not self.domains:
            self.domains = list(self.bucket_sizes)

    def counts(self) -> list[dict[str, Any]]:
        """One row per split x domain x label with its count (zeros included)."""
        out = []
        for s in SPLITS:
            for d in self.domains:
                for lab in (1, 0):
                    n = sum(1 for x in self.samples[s] if x.domain == d and x.label == lab)
                    out.append({"split": s, "domain": d, "label": LABELS[1 - lab], "n": n})
        return out


@dataclass
class LabelledSet:
    """Every usable row of a data set, unsplit (``asa evaluate``): samples of split ``eval``."""

    samples: list[Sample]
    tool_sets: dict[str, list[dict[str, Any]]]  # id -> tools, for the rows that bring their own
    rows_read: int
    skipped: dict[str, int]  # reason -> count
    skipped_examples: list[dict[str, Any]]
    origin: str  # the file or hub dataset, for messages

    @property
    def domains(self) -> list[str]:
        """The rows' domains, in order of first appearance."""
        return list(dict.fromkeys(x.domain for x in self.samples))

    def labels(self) -> list[int]:
        return [x.label for x in self.samples]


def slice_buckets(
    buckets: dict[str, dict[str, list[int]]],
    items: dict[int, tuple[str, str]],
    per_split_per_class: int,
    test_multiplier: int,
    seed: int,
) -> tuple[dict[str, list[Sample]], list[dict[str, Any]]]:
    """The seed's protocol on domain -> label -> row indices; ``items``: index -> (id, text).

    One ``RandomState(seed)`` stream (the seed's ``np.random.seed(seed)``): every
    bucket shuffled in domain x label order, CAL/TRAIN/VALID/TEST slices of each
    (TEST x ``test_multiplier``), then each split shuffled. Shuffles ``buckets``
    in place.
    """
    rng = np.random.RandomState(seed)
    for dom in buckets:  # math/tool, math/non_tool, code/tool, ...
        for lbl in LABELS:
            rng.shuffle(buckets[dom][lbl])

    samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    shortfalls = []
    for dom in buckets:
        for lbl in LABELS:
            pool = buckets[dom][lbl]  # buckets are disjoint, so the seed's `used` filter is a no-op
            for sidx, sname in enumerate(SPLITS):
                n = per_split_per_class * (test_multiplier if sname == "test" else 1)
                start = sidx * per_split_per_class
                chosen = pool[start : start + n]
                if len(chosen) < n:
                    shortfalls.append(
                        {
                            "domain": dom,
                            "label": lbl,
                            "split": sname,
                            "needed": n,
                            "got": len(chosen),
                            "available": len(pool),
                        }
                    )
                for idx in chosen:
                    sid, text = items[idx]
                    samples[sname].append(
                        Sample(
                            id=sid,
                            split=sname,
                            domain=dom,
                            label=1 if lbl == "tool" else 0,
                            idx=int(idx),
                            text=text,
                        )
                    )
    for s in SPLITS:
        rng.shuffle(samples[s])
    return samples, shortfalls


def check_splits(result: SplitResult) -> None:
    for s in SPLITS:
        labels = {x.label for x in result.samples[s]}
        for lab, name in ((1, "tool"), (0, "non-tool")):
            if lab not in labels:
                raise DataError(
                    f"split {s!r} has no {name} example (bucket sizes: {result.bucket_sizes}). "
                    + (
                        "Give that split rows of both classes in the data's split column."
                        if result.split_column
                        else "Use a larger data source or lower data.per_split_per_class."
                    )
                )
    train_domains = list(dict.fromkeys(x.domain for x in result.samples["train"]))
    if len(result.domains) > 1 and len(train_domains) < 2:
        raise DataError(
            f"split 'train' has rows of {len(train_domains)} domain(s) {train_domains} of "
            f"{result.domains}; the router needs TRAIN rows of at least two. Add rows of another "
            "domain, or give every row one domain (then there is no router)."
        )
    if result.shortfalls:
        lines = ", ".join(
            f"{r['domain']}/{r['label']}/{r['split']} {r['got']}/{r['needed']}"
            for r in result.shortfalls
        )
        warnings.warn(
            f"some buckets could not fill their split (got/needed): {lines}", stacklevel=3
        )


def tool_set_id(tools: list[dict[str, Any]]) -> str:
    """A tool list's id: the first 12 hex digits of the sha256 of its compact JSON, in its own
    key order.

    The key order counts (as in :func:`~asa_lib.prompts.prompt_format_sha256`): a tool list
    renders in that order, so two lists that differ only in key order are two tool sets, and
    each row is rendered from its own (one id, one rendering).
    """
    return "t" + digest(canonical_json(tools, sort_keys=False), length=12)


def _sample_json(x: Sample) -> str:
    d = asdict(x)
    for key in ("tools", "messages"):
        if d[key] is None:  # a user text with the prompt format's tools: the line stays as before
            del d[key]
    return json.dumps(d, ensure_ascii=False)


def write_splits(run_dir: str | Path, result: SplitResult) -> Path:
    """Write ``data/splits.jsonl`` (one sample a line, split order), ``data/summary.json``
    and, where rows bring their own tools, ``data/tools.json`` (tool-set id -> tools)."""
    run_dir = Path(run_dir)
    lines = [_sample_json(x) for s in SPLITS for x in result.samples[s]]
    path = write_text(RunDir(run_dir).splits, "\n".join(lines) + "\n")
    used = {x.tools for s in SPLITS for x in result.samples[s] if x.tools is not None}
    tools_file = RunDir(run_dir).tool_sets
    if used:
        write_json(tools_file, {k: result.tool_sets[k] for k in sorted(used)})
    else:
        tools_file.unlink(missing_ok=True)
    write_json(
        RunDir(run_dir).data_summary,
        {
            "kind": result.kind,
            "domains": result.domains,
            "split_column": result.split_column,
            "rows_read": result.rows_read,
            "skipped": result.skipped,
            "skipped_examples": result.skipped_examples,
            "bucket_sizes": result.bucket_sizes,
            "shortfalls": result.shortfalls,
            "split_sizes": {s: len(result.samples[s]) for s in SPLITS},
            **({"tool_sets": len(used)} if used else {}),
        },
    )
    return path


def read_tool_sets(run_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The run's tool sets (``data/tools.json``); empty when every row uses ``prompt.tools``."""
    path = RunDir(run_dir).tool_sets
    return read_json(path) if path.is_file() else {}


def render_samples(tokenizer, pp, samples: list[Sample], run_dir: str | Path) -> list[str]:
    """The prompts of ``samples``, each rendered with its own tools (the run's tool sets)."""
    from asa_lib.prompts import render_prompts

    tools = sample_tools(samples, read_tool_sets(run_dir))
    return render_prompts(tokenizer, pp, [x.request for x in samples], tools)


def sample_tools(
    samples: list[Sample], tool_sets: dict[str, list[dict[str, Any]]]
) -> list[list[dict[str, Any]] | None]:
    """Each sample's own tool list (None: the prompt format's), for rendering and scoring."""
    return [None if x.tools is None else tool_sets[x.tools] for x in samples]


def read_domains(run_dir: str | Path) -> list[str]:
    """The data stage's domains, in its order (the configured or first-seen order)."""
    summary = read_json(RunDir(run_dir).data_summary)
    if "domains" in summary:
        return list(summary["domains"])
    return sorted({x.domain for xs in read_splits(run_dir).values() for x in xs})  # older runs


def read_splits(run_dir: str | Path) -> dict[str, list[Sample]]:
    """The splits written by :func:`write_splits`, in their stored order."""
    out: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    path = RunDir(run_dir).splits
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                x = Sample(**json.loads(line))
                out[x.split].append(x)
    return out
