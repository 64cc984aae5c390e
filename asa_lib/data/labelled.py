"""Rows that carry their own text, label and domain (``data.kind: labelled``).

Columns are mapped by ``data.columns``; bad rows are skipped and counted with
the file, the line and the field; errors name the file, the row and the field.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asa_lib.chat import MessagesError, last_turn, parse_messages
from asa_lib.data.sources import Unreadable, hub_records, labelled_file, load_hub
from asa_lib.data.splits import (
    LABELS,
    MAX_EXAMPLES,
    SPLIT_ALIASES,
    SPLITS,
    DataError,
    Sample,
    SplitResult,
    check_splits,
    slice_buckets,
    tool_set_id,
)
from asa_lib.files import loads_json
from asa_lib.params import (
    MAX_DATA_BYTES,
    MAX_DATA_ROWS,
    MAX_DOMAINS,
    ColumnMap,
    short_repr,
    tool_list_problem,
)
from asa_lib.prompts import request_key

# Accepted label values of labelled data (strings compared stripped and lower-cased).
LABEL_VALUES = {"1": 1, "0": 0, "true": 1, "false": 0, "tool": 1, "non_tool": 0, "non-tool": 0}


@dataclass
class LabelledRow:
    idx: int  # position in the source (0-based, blank lines not counted)
    id: str
    text: str
    label: int  # 1 = needs a tool
    domain: str
    split: str | None  # from the split column, or None
    where: str  # "<file>, line <n>" or "hub dataset ..., row <i>"
    tools: list[dict[str, Any]] | None = None  # the row's own tools (None: prompt.tools)
    # a conversation (checked, asa_lib.chat); then ``text`` is its last turn
    messages: list[dict[str, Any]] | None = None


@dataclass
class LabelledData:
    rows: list[LabelledRow]
    origin: str  # the file or hub dataset the rows came from
    rows_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    skipped_examples: list[dict[str, Any]] = field(default_factory=list)  # first few per reason
    split_column: str = ""  # the split column in use, "" if none
    id_column: str = ""  # the id column in use, "" if none


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


_NOT_AN_OBJECT = object()  # what is kept of a record that is not an object


def read_labelled(
    source: str,
    local_path: Path | None,
    columns: ColumnMap | None = None,
    hub_split: str = "train",
    max_rows: int = MAX_DATA_ROWS,
    max_bytes: int = MAX_DATA_BYTES,
    max_domains: int = MAX_DOMAINS,
) -> LabelledData:
    """Rows of a labelled data set: a local JSONL/JSON/CSV file (.gz/.xz too) or a hub dataset.

    The rows are read streaming, keeping only the mapped columns, within
    ``max_rows`` rows and ``max_bytes`` bytes (decompressed; see
    :mod:`asa_lib.data.sources`); more than ``max_domains`` distinct domains
    stop at the row that brings one too many.

    A row's request is its ``text`` or its ``messages`` (a conversation, checked by
    :func:`asa_lib.chat.check_messages`; a JSON string in a CSV cell), not both.
    Rows with no text or messages, bad messages, both, an unknown label or an empty
    domain are skipped and counted (the first few of each reason are kept with their
    row and field).
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
        stream, header, header_where = labelled_file(local_path, max_rows, max_bytes)
    else:
        origin = f"hub dataset {source!r} (split {hub_split!r})"
        stream, header, class_names = hub_records(load_hub(source, hub_split, max_rows), origin)
        header_where = f"{origin}, columns"
    # One pass over the rows, keeping of each record only the columns that can be mapped
    # (the columns of JSON rows are known only once every row is read).
    wanted = {c for c in dataclasses.astuple(cols) + dataclasses.astuple(defaults) if c}
    seen_keys: set[Any] = set()
    records: list[tuple[str, Any]] = []
    for where, rec in stream:
        if isinstance(rec, dict):
            seen_keys.update(rec)
            rec = {k: v for k, v in rec.items() if k in wanted}
        elif not isinstance(rec, Unreadable):
            rec = _NOT_AN_OBJECT
        records.append((where, rec))
    if header is not None:
        available = set(header)
    else:
        available = seen_keys
        header_where = records[0][0] if records else origin

    def missing_column(fname: str, col: str) -> DataError:
        found = ", ".join(repr(c) for c in sorted(available, key=str)) or "none"
        where = "" if header is not None else "no row has it; "
        return DataError(
            f"{header_where}, field '{fname}': no column {col!r} in the data "
            f"({where}set data.columns.{fname}); columns found: {found}"
        )

    used: dict[str, str] = {}
    if cols.messages and cols.messages in available:
        used["messages"] = cols.messages
    elif cols.messages and cols.messages != defaults.messages:  # named, so it must be there
        raise missing_column("messages", cols.messages)
    if cols.text in available:
        used["text"] = cols.text
    elif "messages" not in used:  # the request: a text or a conversation column
        raise missing_column("text", cols.text)
    for fname in ("label", "domain"):
        col = getattr(cols, fname)
        if col not in available:
            raise missing_column(fname, col)
    for fname in ("id", "split", "tools"):
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
                    "value": short_repr(v) if fname else "",
                }
            )

    first_seen: dict[str, str] = {}
    domains: set[str] = set()
    for idx, (where, rec) in enumerate(records):
        if isinstance(rec, Unreadable):
            skip(rec.reason, where)
            continue
        if not isinstance(rec, dict):
            skip("not an object", where)
            continue
        text = value(rec, "text") if "text" in used else None
        messages = value(rec, "messages") if "messages" in used else None
        if messages in (None, ""):
            messages = None
            if not isinstance(text, str) or not text.strip():
                skip("missing text", where, "text", text)
                continue
        elif text not in (None, ""):
            skip("both text and messages (a row has one of them)", where, "messages", messages)
            continue
        else:
            try:
                messages = parse_messages(messages, "messages")
            except MessagesError as e:
                skip(f"bad {e}", where, "messages", messages)
                continue
            text = last_turn(messages)
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
        if domain not in domains:
            if len(domains) >= max_domains:
                raise DataError(
                    f"{where}, field 'domain' (column {cols.domain!r}): {short_repr(domain)} is "
                    f"one domain more than data.max_domains ({max_domains}, the limit)"
                )
            domains.add(domain)
        split = None
        if "split" in used:
            raw = value(rec, "split")
            split = raw.strip().lower() if isinstance(raw, str) else ""
            split = SPLIT_ALIASES.get(split, split)
            if split not in SPLITS:
                raise DataError(
                    f"{where}, field 'split' (column {used['split']!r}): {short_repr(raw)} is not "
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
                    f"{where}, field 'id' (column {used['id']!r}): {short_repr(raw)} is not a "
                    "usable id (a non-empty string or an integer)"
                )
            if sid in first_seen:
                raise DataError(
                    f"{where}, field 'id' (column {used['id']!r}): duplicate id {sid!r} "
                    f"(first at {first_seen[sid]})"
                )
            first_seen[sid] = where
        tools = None
        if "tools" in used and value(rec, "tools") not in (None, ""):
            tools = value(rec, "tools")
            if isinstance(tools, str):  # a CSV cell (or a hub string column): the list as JSON
                try:
                    tools = loads_json(tools)
                except (ValueError, RecursionError):
                    skip("bad tools", where, "tools", tools)
                    continue
            problem = tool_list_problem(tools, "tools")
            if problem is not None:
                skip(f"bad tools ({problem})", where, "tools", tools)
                continue
        out.rows.append(
            LabelledRow(
                idx=idx,
                id=sid,
                text=text,
                label=label,
                domain=domain,
                split=split,
                where=where,
                tools=tools,
                messages=messages,
            )
        )
    return out


def describe_skipped(
    skipped: dict[str, int],
    examples: list[dict[str, Any]],
    rows_read: int,
    origin: str,
    first: int | None = None,
) -> str:
    """One line: how many rows were skipped and why, with where the first ones are
    (``first``: at most that many examples; None: all that were kept)."""
    shown = "; ".join(
        f"{e['where']}"
        + (f", field '{e['field']}' (column {e['column']!r}) = {e['value']}" if e["field"] else "")
        + f": {e['reason']}"
        for e in examples[:first]
    )
    return f"skipped {sum(skipped.values())} of {rows_read} rows of {origin} ({skipped})" + (
        f"; e.g. {shown}" if shown else ""
    )


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
        samples, shortfalls = slice_buckets(
            buckets, items, per_split_per_class, test_multiplier, seed
        )
    tool_sets: dict[str, list[dict[str, Any]]] = {}
    row_tools: dict[int, str] = {}
    for r in data.rows:
        if r.tools is not None:
            tid = tool_set_id(r.tools)
            tool_sets.setdefault(tid, r.tools)
            row_tools[r.idx] = tid
    row_messages = {r.idx: r.messages for r in data.rows if r.messages is not None}
    for xs in samples.values():
        for x in xs:
            x.tools = row_tools.get(x.idx)
            x.messages = row_messages.get(x.idx)
    result = SplitResult(
        tool_sets=tool_sets,
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
        warnings.warn(
            describe_skipped(data.skipped, data.skipped_examples, data.rows_read, data.origin),
            stacklevel=2,
        )
    check_splits(result)
    seen: dict[tuple[str, str | None], str] = {}
    leaks = 0
    for s in SPLITS:
        for x in result.samples[s]:  # a prompt is its request with its tools
            if seen.setdefault((request_key(x.request), x.tools), s) != s:
                leaks += 1
    if leaks:
        warnings.warn(
            f"{leaks} prompt(s) appear in more than one split (identical text and tools); "
            "de-duplicate the data to keep VALID and TEST unseen",
            stacklevel=2,
        )
    return result
