"""The data stage: where rows come from, how they get domains and labels, and the splits.

- :mod:`.sources`: reading local files (JSONL/JSON/CSV, .gz/.xz) and hub datasets;
- :mod:`.alpaca`: the seed's keyword domains and labelling rule over Alpaca-style rows;
- :mod:`.labelled`: rows that carry their own text, label and domain;
- :mod:`.splits`: the sample type, the split protocol and ``data/splits.jsonl``.

The public names of all four are importable from here (``from asa_lib import data``), but for
the helpers the four share: ``splits.check_splits``, ``splits.slice_buckets`` and the readers
``sources.load_hub``, ``sources.hub_records``, ``sources.labelled_file`` (``sources.Unreadable``).
"""

from __future__ import annotations

from asa_lib.data.alpaca import (
    OUTPUT_TOOL_WORDS,
    KeywordDomains,
    build_splits,
    check_row,
    classify,
    label_for,
    prompt_text,
)
from asa_lib.data.labelled import (
    LABEL_VALUES,
    LabelledData,
    LabelledRow,
    build_labelled_splits,
    describe_skipped,
    parse_label,
    read_labelled,
)
from asa_lib.data.sources import (
    iter_local_rows,
    load_rows,
    read_local_rows,
)
from asa_lib.data.splits import (
    LABELS,
    MAX_EXAMPLES,
    SPLIT_ALIASES,
    SPLITS,
    DataError,
    LabelledSet,
    Sample,
    SplitResult,
    read_domains,
    read_splits,
    read_tool_sets,
    render_samples,
    sample_tools,
    tool_set_id,
    write_splits,
)

__all__ = [
    "render_samples",
    "read_tool_sets",
    "sample_tools",
    "tool_set_id",
    "DataError",
    "KeywordDomains",
    "LABELS",
    "LABEL_VALUES",
    "LabelledData",
    "LabelledRow",
    "MAX_EXAMPLES",
    "OUTPUT_TOOL_WORDS",
    "SPLITS",
    "SPLIT_ALIASES",
    "Sample",
    "SplitResult",
    "build_labelled_splits",
    "describe_skipped",
    "build_splits",
    "check_row",
    "classify",
    "label_for",
    "load_rows",
    "make_splits_from_params",
    "read_all_samples",
    "LabelledSet",
    "parse_label",
    "prompt_text",
    "read_domains",
    "read_labelled",
    "read_local_rows",
    "iter_local_rows",
    "read_splits",
    "write_splits",
]


def _labelled_rows(d, source: str, local_path) -> LabelledData:
    """The labelled rows of ``source`` as ``d`` (a params' data section) says: its columns
    and hub split, within its limits (``max_rows``, ``max_bytes``, ``max_domains``)."""
    return read_labelled(
        source, local_path, d.columns, d.hub_split, d.max_rows, d.max_bytes, d.max_domains
    )


def _alpaca_rows(d, source: str, local_path, skipped: dict[str, int]):
    """The rows of ``source`` (read streaming) within ``d``'s limits (``max_rows``,
    ``max_bytes``); ``skipped`` is filled as they are read."""
    return load_rows(source, local_path, d.hub_split, skipped, d.max_rows, d.max_bytes)


def make_splits_from_params(params) -> SplitResult:
    """Load the rows named by ``params.data`` and build the splits (either kind)."""
    d = params.data
    if d.kind == "labelled":
        rows = _labelled_rows(d, d.source, params.data_path())
        return build_labelled_splits(rows, d.per_split_per_class, d.test_multiplier, d.seed)
    skipped: dict[str, int] = {}  # filled as the rows are read
    rows = _alpaca_rows(d, d.source, params.data_path(), skipped)
    return build_splits(
        rows,
        d.per_split_per_class,
        d.test_multiplier,
        d.seed,
        skipped=skipped,
        domains=d.keyword_domains(),
    )


def read_all_samples(params, source: str, local_path) -> LabelledSet:
    """Every usable row of ``source`` as one labelled set: nothing is split, nothing dropped but bad rows.

    The rows get their domains and labels the way ``params.data`` says (its
    ``kind``, ``columns`` or keyword domains), as the data stage would; a row's own
    tools come with it. ``local_path``: the file (None for a hub dataset id). The rows
    are read within the params' limits, as the data stage reads them.
    Raises :class:`DataError` when no row is usable.
    """
    d = params.data
    if d.kind == "labelled":
        data = _labelled_rows(d, source, local_path)
        tool_sets: dict = {}
        samples = []
        for r in data.rows:
            tid = None
            if r.tools is not None:
                tid = tool_set_id(r.tools)
                tool_sets.setdefault(tid, r.tools)
            samples.append(
                Sample(
                    id=r.id,
                    split="eval",
                    domain=r.domain,
                    label=r.label,
                    idx=r.idx,
                    text=r.text,
                    tools=tid,
                    messages=r.messages,
                )
            )
        out = LabelledSet(
            samples,
            tool_sets,
            data.rows_read,
            dict(data.skipped),
            list(data.skipped_examples),
            data.origin,
        )
    else:
        skipped: dict[str, int] = {}
        domains = d.keyword_domains()
        samples, n_read = [], 0
        for i, row in enumerate(_alpaca_rows(d, source, local_path, skipped)):
            n_read += 1
            if row is None:  # an invalid JSON line, already counted
                continue
            reason = check_row(row)
            if reason is not None:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            text = prompt_text(row)
            dom = classify(text, domains)
            if dom is None:  # the seed's rule: a prompt without a keyword domain is not used
                skipped["no keyword domain"] = skipped.get("no keyword domain", 0) + 1
                continue
            label = int(label_for(dom, row["output"], domains) == "tool")
            samples.append(Sample(f"r{i}", "eval", dom, label, i, text))
        origin = str(local_path) if local_path is not None else f"hub dataset {source!r}"
        out = LabelledSet(samples, {}, n_read, skipped, [], origin)
    if not out.samples:
        raise DataError(
            f"{out.origin}: no usable rows ({out.rows_read} read; skipped: {out.skipped or 'none'})"
        )
    return out
