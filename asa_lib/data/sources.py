"""Where rows come from: local JSONL/JSON/CSV files (optionally .gz/.xz) and hub datasets.

A line that is not JSON or not valid UTF-8 is skipped and counted; a damaged
compressed file stops with its path.
"""

from __future__ import annotations

import csv
import gzip
import json
import lzma
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from asa_lib.data.splits import DataError


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


_INVALID_JSON = object()  # placeholder record for a line that is not JSON


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
