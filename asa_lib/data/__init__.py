"""The data stage: where rows come from, how they get domains and labels, and the splits.

- :mod:`.sources`: reading local files (JSONL/JSON/CSV, .gz/.xz) and hub datasets;
- :mod:`.alpaca`: the seed's keyword domains and labelling rule over Alpaca-style rows;
- :mod:`.labelled`: rows that carry their own text, label and domain;
- :mod:`.splits`: the sample type, the split protocol and ``data/splits.jsonl``.

The public names of all four are importable from here (``from asa_lib import data``).
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
    "build_splits",
    "check_row",
    "classify",
    "label_for",
    "load_rows",
    "make_splits_from_params",
    "parse_label",
    "prompt_text",
    "read_domains",
    "read_labelled",
    "read_local_rows",
    "iter_local_rows",
    "read_splits",
    "write_splits",
]


def make_splits_from_params(params) -> SplitResult:
    """Load the rows named by ``params.data`` and build the splits (either kind)."""
    d = params.data
    if d.kind == "labelled":
        rows = read_labelled(
            d.source,
            params.data_path(),
            d.columns,
            d.hub_split,
            d.max_rows,
            d.max_bytes,
            d.max_domains,
        )
        return build_labelled_splits(rows, d.per_split_per_class, d.test_multiplier, d.seed)
    skipped: dict[str, int] = {}  # filled as the rows are read
    rows = load_rows(d.source, params.data_path(), d.hub_split, skipped, d.max_rows, d.max_bytes)
    return build_splits(
        rows,
        d.per_split_per_class,
        d.test_multiplier,
        d.seed,
        skipped=skipped,
        domains=d.keyword_domains(),
    )
