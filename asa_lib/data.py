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
with no example of a class, or a TRAIN split with fewer than two domains (the
router needs two), is an error.

Sample ids are ``r<row index>`` (the row's position in the source), stable for
a given source, or a labelled data set's own ``id`` column.
"""

from __future__ import annotations

import csv
import gzip
import json
import lzma
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import RunDir, read_json, write_json, write_text
from .params import SEED_DOMAINS, ColumnMap

OUTPUT_TOOL_WORDS = ("result", "output", "answer", "return")
SPLITS = ("cal", "train", "valid", "test")
LABELS = ("tool", "non_tool")  # order of the seed's per-bucket loops
SPLIT_ALIASES = {"validation": "valid"}
# Accepted label values of labelled data (strings compared stripped and lower-cased).
LABEL_VALUES = {"1": 1, "0": 0, "true": 1, "false": 0, "tool": 1, "non_tool": 0, "non-tool": 0}
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
    text: str


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


KeywordDomains = Mapping[str, Sequence[str]]


def classify(text: str, domains: KeywordDomains | None = None) -> str | None:
    """The seed's keyword rule: first domain with a keyword in ``text`` (lower-cased).

    ``domains``: ordered name -> lower-case keywords (``DataParams.keyword_domains()``);
    None: the seed's four.
    """
    t = text.lower()
    for domain, keywords in (SEED_DOMAINS if domains is None else domains).items():
        if any(k in t for k in keywords):
            return domain
    return None


def label_for(domain: str, output: str, domains: KeywordDomains | None = None) -> str:
    """The seed's label: 'tool' if the output is in the same domain or mentions a result."""
    if classify(output, domains) == domain or any(k in output.lower() for k in OUTPUT_TOOL_WORDS):
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


def _open_text(
    path: Path, newline: str | None = None, encoding: str = "utf-8", errors: str = "strict"
):
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding=encoding, newline=newline, errors=errors)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline=newline, errors=errors)
    return path.open("r", encoding=encoding, newline=newline, errors=errors)


# A damaged compressed file: lzma and gzip raise these (gzip.BadGzipFile is an OSError).
_DAMAGED = (lzma.LZMAError, EOFError, zlib.error, gzip.BadGzipFile)


def _json_rows(f, path: Path) -> list[Any]:
    """The rows of a JSON file that holds one list of rows."""
    try:
        data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows")
    return data


def _valid_utf8(line: str) -> bool:
    """False for a line read with errors='surrogateescape' that held bytes which are not UTF-8."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    try:
        with _open_text(path, errors="surrogateescape") as f:
            if name.endswith(".json"):
                return _json_rows(f, path)
            rows: list[Any] = []
            for line in f:
                if not line.strip():
                    continue
                if not _valid_utf8(line):  # one bad line is skipped and counted, like bad JSON
                    skipped["invalid UTF-8 line"] = skipped.get("invalid UTF-8 line", 0) + 1
                    rows.append(None)
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    skipped["invalid JSON line"] = skipped.get("invalid JSON line", 0) + 1
                    rows.append(None)
            return rows
    except _DAMAGED as e:
        raise DataError(
            f"{path}: cannot be read, the compressed file is damaged or incomplete ({e})"
        ) from None


def load_rows(
    source: str,
    local_path: Path | None,
    hub_split: str = "train",
    skipped: dict[str, int] | None = None,
) -> Iterable[Any]:
    """Rows from a local file (``local_path``) or from the hub dataset ``source``."""
    if local_path is not None:
        return read_local_rows(local_path, skipped)
    return _load_hub(source, hub_split)


def _load_hub(source: str, hub_split: str):
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


def build_splits(
    rows: Iterable[Any],
    per_split_per_class: int = 40,
    test_multiplier: int = 2,
    seed: int = 42,
    skipped: dict[str, int] | None = None,
    domains: KeywordDomains | None = None,
) -> SplitResult:
    """Bucket, shuffle and slice exactly as the seed notebook does.

    ``domains``: ordered name -> lower-case keywords; None: the seed's four.
    """
    domains = SEED_DOMAINS if domains is None else domains
    skipped = dict(skipped or {})
    buckets: dict[str, dict[str, list[int]]] = {d: {"tool": [], "non_tool": []} for d in domains}
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
        dom = classify(text, domains)
        if dom is None:
            continue
        buckets[dom][label_for(dom, row["output"], domains)].append(i)
        texts[i] = text

    samples, shortfalls = _slice_buckets(
        buckets,
        {i: (f"r{i}", t) for i, t in texts.items()},
        per_split_per_class,
        test_multiplier,
        seed,
    )
    result = SplitResult(
        samples=samples,
        bucket_sizes={d: {lb: len(buckets[d][lb]) for lb in LABELS} for d in buckets},
        shortfalls=shortfalls,
        skipped=skipped,
        rows_read=n_read,
        domains=list(buckets),
    )
    _check_splits(result)
    return result


def _slice_buckets(
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


def _check_splits(result: SplitResult) -> None:
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
    if len(train_domains) < 2:
        raise DataError(
            f"split 'train' has rows of {len(train_domains)} domain(s) {train_domains}; the router "
            "needs at least two. Add rows of another domain (e.g. a catch-all domain such as 'none')."
        )
    if result.shortfalls:
        lines = ", ".join(
            f"{r['domain']}/{r['label']}/{r['split']} {r['got']}/{r['needed']}"
            for r in result.shortfalls
        )
        warnings.warn(
            f"some buckets could not fill their split (got/needed): {lines}", stacklevel=3
        )


# ----------------------------------------------------------------------------- labelled data


@dataclass
class LabelledRow:
    idx: int  # position in the source (0-based, blank lines not counted)
    id: str
    text: str
    label: int  # 1 = needs a tool
    domain: str
    split: str | None  # from the split column, or None
    where: str  # "<file>, line <n>" or "hub dataset ..., row <i>"


@dataclass
class LabelledData:
    rows: list[LabelledRow]
    origin: str  # the file or hub dataset the rows came from
    rows_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    skipped_examples: list[dict[str, Any]] = field(default_factory=list)  # first few per reason
    split_column: str = ""  # the split column in use, "" if none
    id_column: str = ""  # the id column in use, "" if none


_INVALID_JSON = object()  # placeholder record for a line that is not JSON


def parse_label(value: Any) -> int | None:
    """1 (needs a tool), 0, or None for a value that is not a label.

    Accepted: 0/1 (int, a float equal to 0 or 1, or string), true/false (bool or
    string), tool/non_tool (also non-tool); strings compare stripped and
    case-insensitively.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value) if value in (0, 1) else None
    if isinstance(value, str):
        return LABEL_VALUES.get(value.strip().lower())
    return None


def _read_labelled_file(path: Path) -> tuple[list[tuple[str, Any]], list[str] | None, str]:
    """(where, record) per row, the CSV header (None for JSON), and where the header is."""
    name = path.name.removesuffix(".gz").removesuffix(".xz")
    records: list[tuple[str, Any]] = []
    try:
        if name.endswith(".csv"):
            # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column's name
            with _open_text(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                try:
                    header = reader.fieldnames
                    if not header:
                        raise DataError(
                            f"{path}: the file is empty (a CSV file needs a header line)"
                        )
                    for rec in reader:
                        records.append((f"{path}, line {reader.line_num}", rec))
                except csv.Error as e:
                    raise DataError(
                        f"{path}, line {reader.line_num}: not valid CSV ({e})"
                    ) from None
            return records, list(header), f"{path}, line 1 (header)"
        with _open_text(path, errors="surrogateescape") as f:
            if name.endswith(".json"):
                data = _json_rows(f, path)
                return [(f"{path}, row {i + 1}", r) for i, r in enumerate(data)], None, ""
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if not _valid_utf8(line):
                    records.append((f"{path}, line {n}", _INVALID_JSON))
                    continue
                try:
                    records.append((f"{path}, line {n}", json.loads(line)))
                except json.JSONDecodeError:
                    records.append((f"{path}, line {n}", _INVALID_JSON))
            return records, None, ""
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    except _DAMAGED as e:
        raise DataError(
            f"{path}: cannot be read, the compressed file is damaged or incomplete ({e})"
        ) from None


def _hub_records(
    ds: Any, origin: str
) -> tuple[list[tuple[str, Any]], list[str], dict[str, list[str]]]:
    """(where, record) per row, the column names and each ClassLabel column's names."""
    features = getattr(ds, "features", None) or {}
    names = {c: list(f.names) for c, f in features.items() if hasattr(f, "int2str")}
    return (
        [(f"{origin}, row {i}", r) for i, r in enumerate(ds)],
        list(getattr(ds, "column_names", None) or features),
        names,
    )


def _short(value: Any, n: int = 60) -> str:
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


def read_labelled(
    source: str, local_path: Path | None, columns: ColumnMap | None = None, hub_split: str = "train"
) -> LabelledData:
    """Rows of a labelled data set: a local JSONL/JSON/CSV file (.gz/.xz too) or a hub dataset.

    Rows with no text, an unknown label or an empty domain are skipped and
    counted (the first few of each reason are kept with their row and field).
    Errors (:class:`DataError`) name the file, the row and the field: a column
    missing from the data, a reserved domain name, an empty or duplicate id,
    an unknown split.
    """
    cols = columns or ColumnMap()
    defaults = ColumnMap()
    class_names: dict[str, list[str]] = {}
    if local_path is not None:
        local_path = Path(local_path)
        if not local_path.is_file():
            raise DataError(f"data file not found: {local_path}")
        origin = str(local_path)
        records, header, header_where = _read_labelled_file(local_path)
    else:
        origin = f"hub dataset {source!r} (split {hub_split!r})"
        records, header, class_names = _hub_records(_load_hub(source, hub_split), origin)
        header_where = f"{origin}, columns"
    if header is not None:
        available = set(header)
    else:
        available = {k for _, r in records if isinstance(r, dict) for k in r}
        header_where = records[0][0] if records else origin

    def missing_column(fname: str, col: str) -> DataError:
        found = ", ".join(repr(c) for c in sorted(available, key=str)) or "none"
        where = "" if header is not None else "no row has it; "
        return DataError(
            f"{header_where}, field '{fname}': no column {col!r} in the data "
            f"({where}set data.columns.{fname}); columns found: {found}"
        )

    for fname in ("text", "label", "domain"):
        col = getattr(cols, fname)
        if col not in available:
            raise missing_column(fname, col)
    used: dict[str, str] = {}
    for fname in ("id", "split"):
        col = getattr(cols, fname)
        if col and col in available:
            used[fname] = col
        elif col and col != getattr(defaults, fname):
            raise missing_column(fname, col)

    def value(rec: dict, fname: str) -> Any:
        col = used.get(fname) or getattr(cols, fname)
        v = rec.get(col)
        if (
            col in class_names
            and isinstance(v, int)
            and not isinstance(v, bool)
            and 0 <= v < len(class_names[col])
        ):
            v = class_names[col][v]  # a hub ClassLabel column: its name, not its index
        return v

    out = LabelledData(
        rows=[],
        origin=origin,
        rows_read=len(records),
        split_column=used.get("split", ""),
        id_column=used.get("id", ""),
    )
    per_reason: dict[str, int] = {}

    def skip(reason: str, where: str, fname: str = "", v: Any = None) -> None:
        out.skipped[reason] = out.skipped.get(reason, 0) + 1
        if per_reason.get(reason, 0) < MAX_EXAMPLES:
            per_reason[reason] = per_reason.get(reason, 0) + 1
            out.skipped_examples.append(
                {
                    "reason": reason,
                    "where": where,
                    "field": fname,
                    "column": getattr(cols, fname) if fname else "",
                    "value": _short(v) if fname else "",
                }
            )

    first_seen: dict[str, str] = {}
    for idx, (where, rec) in enumerate(records):
        if rec is _INVALID_JSON:
            skip("invalid JSON line", where)
            continue
        if not isinstance(rec, dict):
            skip("not an object", where)
            continue
        text = value(rec, "text")
        if not isinstance(text, str) or not text.strip():
            skip("missing text", where, "text", text)
            continue
        raw_label = value(rec, "label")
        label = parse_label(raw_label)
        if label is None:
            skip("unknown label", where, "label", raw_label)
            continue
        raw_domain = value(rec, "domain")
        domain = (
            raw_domain.strip()
            if isinstance(raw_domain, str)
            else (
                str(raw_domain)
                if isinstance(raw_domain, int) and not isinstance(raw_domain, bool)
                else ""
            )
        )
        if not domain:
            skip("empty domain", where, "domain", raw_domain)
            continue
        if domain == "global":
            raise DataError(
                f"{where}, field 'domain' (column {cols.domain!r}): 'global' is reserved "
                "(it names the all-domain steering vector); rename that domain"
            )
        split = None
        if "split" in used:
            raw = value(rec, "split")
            split = raw.strip().lower() if isinstance(raw, str) else ""
            split = SPLIT_ALIASES.get(split, split)
            if split not in SPLITS:
                raise DataError(
                    f"{where}, field 'split' (column {used['split']!r}): {_short(raw)} is not "
                    f"one of {', '.join(SPLITS)} (or validation); every row needs one when "
                    "the split column is used"
                )
        sid = f"r{idx}"
        if "id" in used:
            raw = value(rec, "id")
            sid = (
                raw.strip()
                if isinstance(raw, str)
                else (str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else "")
            )
            if not sid:
                raise DataError(
                    f"{where}, field 'id' (column {used['id']!r}): {_short(raw)} is not a "
                    "usable id (a non-empty string or an integer)"
                )
            if sid in first_seen:
                raise DataError(
                    f"{where}, field 'id' (column {used['id']!r}): duplicate id {sid!r} "
                    f"(first at {first_seen[sid]})"
                )
            first_seen[sid] = where
        out.rows.append(
            LabelledRow(
                idx=idx, id=sid, text=text, label=label, domain=domain, split=split, where=where
            )
        )
    return out


def build_labelled_splits(
    data: LabelledData, per_split_per_class: int = 40, test_multiplier: int = 2, seed: int = 42
) -> SplitResult:
    """CAL/TRAIN/VALID/TEST from labelled rows.

    With a split column the rows keep their split (in file order; the sizes in
    params do not apply). Without one, the seed's protocol: domain x label
    buckets (domains in order of first appearance, tool before non-tool)
    shuffled with ``RandomState(seed)``, sliced and shuffled as for the seed.
    """
    if not data.rows:
        raise DataError(
            f"{data.origin}: no usable rows ({data.rows_read} read; skipped: "
            f"{data.skipped or 'none'})"
        )
    domains = list(dict.fromkeys(r.domain for r in data.rows))
    buckets: dict[str, dict[str, list[int]]] = {d: {"tool": [], "non_tool": []} for d in domains}
    for r in data.rows:
        buckets[r.domain][LABELS[1 - r.label]].append(r.idx)
    bucket_sizes = {d: {lb: len(buckets[d][lb]) for lb in LABELS} for d in domains}
    if data.split_column:
        samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
        for r in data.rows:
            samples[r.split].append(
                Sample(
                    id=r.id, split=r.split, domain=r.domain, label=r.label, idx=r.idx, text=r.text
                )
            )
        shortfalls: list[dict[str, Any]] = []
    else:
        items = {r.idx: (r.id, r.text) for r in data.rows}
        samples, shortfalls = _slice_buckets(
            buckets, items, per_split_per_class, test_multiplier, seed
        )
    result = SplitResult(
        samples=samples,
        bucket_sizes=bucket_sizes,
        shortfalls=shortfalls,
        skipped=dict(data.skipped),
        rows_read=data.rows_read,
        domains=domains,
        kind="labelled",
        split_column=data.split_column,
        skipped_examples=list(data.skipped_examples),
    )
    if data.skipped:
        shown = "; ".join(
            f"{e['where']}"
            + (
                f", field '{e['field']}' (column {e['column']!r}) = {e['value']}"
                if e["field"]
                else ""
            )
            + f": {e['reason']}"
            for e in data.skipped_examples
        )
        warnings.warn(
            f"skipped {sum(data.skipped.values())} of {data.rows_read} rows of {data.origin} "
            f"({data.skipped}); e.g. {shown}",
            stacklevel=2,
        )
    _check_splits(result)
    seen: dict[str, str] = {}
    leaks = 0
    for s in SPLITS:
        for x in result.samples[s]:
            if seen.setdefault(x.text, s) != s:
                leaks += 1
    if leaks:
        warnings.warn(
            f"{leaks} prompt(s) appear in more than one split (identical text); "
            "de-duplicate the data to keep VALID and TEST unseen",
            stacklevel=2,
        )
    return result


# ----------------------------------------------------------------------------- files


def write_splits(run_dir: str | Path, result: SplitResult) -> Path:
    """Write ``data/splits.jsonl`` (one sample a line, split order) and ``data/summary.json``."""
    run_dir = Path(run_dir)
    lines = [json.dumps(asdict(x), ensure_ascii=False) for s in SPLITS for x in result.samples[s]]
    path = write_text(RunDir(run_dir).splits, "\n".join(lines) + "\n")
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
        },
    )
    return path


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


def make_splits_from_params(params) -> SplitResult:
    """Load the rows named by ``params.data`` and build the splits (either kind)."""
    d = params.data
    if d.kind == "labelled":
        rows = read_labelled(d.source, params.data_path(), d.columns, d.hub_split)
        return build_labelled_splits(rows, d.per_split_per_class, d.test_multiplier, d.seed)
    skipped: dict[str, int] = {}
    rows = load_rows(d.source, params.data_path(), d.hub_split, skipped)
    return build_splits(
        rows,
        d.per_split_per_class,
        d.test_multiplier,
        d.seed,
        skipped=skipped,
        domains=d.keyword_domains(),
    )
