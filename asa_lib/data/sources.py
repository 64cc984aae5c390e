"""Where rows come from: local JSONL/JSON/CSV files (optionally .gz/.xz) and hub datasets.

Files are UTF-8 text (a byte-order mark at the start is dropped, in every format), read
streaming, one row at a time, within limits (``data.max_rows``,
``data.max_bytes``: the decompressed bytes read, which also bounds one CSV
field; a ``.json`` file, one document, is parsed whole within the byte limit);
JSON nesting is capped (:data:`asa_lib.files.MAX_JSON_DEPTH`). Past a limit the
stage stops with a :class:`DataError` naming it. A line that is not JSON, not
valid UTF-8 or nested too deeply is skipped and counted; a damaged compressed
file stops with its path.
"""

from __future__ import annotations

import csv
import gzip
import io
import lzma
import sys
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asa_lib.data.splits import DataError
from asa_lib.files import MAX_JSON_DEPTH, JSONDepthError, loads_json
from asa_lib.params import MAX_DATA_BYTES, MAX_DATA_ROWS


class _CappedBytes(io.RawIOBase):
    """The bytes of ``raw``; reading more than ``cap`` of them raises :class:`DataError`."""

    def __init__(self, raw, cap: int, path: Path):
        self._raw, self._left, self._cap, self._path = raw, cap, cap, path

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._raw.read(min(len(b), self._left + 1))
        if len(data) > self._left:
            raise DataError(
                f"{self._path}: more than {self._cap:,} bytes of data (decompressed); the limit "
                f"is data.max_bytes ({self._cap}): raise it in params, or use a smaller file"
            )
        self._left -= len(data)
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_text(
    path: Path,
    newline: str | None = None,
    encoding: str = "utf-8-sig",
    errors: str = "strict",
    max_bytes: int = MAX_DATA_BYTES,
):
    """A data file (plain, .xz, .gz) as text within ``max_bytes``; utf-8-sig: a byte-order mark
    (Windows editors, spreadsheet exports) is not part of the first row or column name."""
    if path.suffix == ".xz":
        raw = lzma.open(path, "rb")
    elif path.suffix == ".gz":
        raw = gzip.open(path, "rb")
    else:
        raw = path.open("rb")
    capped = io.BufferedReader(_CappedBytes(raw, max_bytes, path))
    return io.TextIOWrapper(capped, encoding=encoding, errors=errors, newline=newline)


# A damaged compressed file: lzma and gzip raise these (gzip.BadGzipFile is an OSError).
_DAMAGED = (lzma.LZMAError, EOFError, zlib.error, gzip.BadGzipFile)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn a damaged compressed file or text that is not UTF-8 into one DataError."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    except _DAMAGED as e:
        raise DataError(
            f"{path}: cannot be read, the compressed file is damaged or incomplete ({e})"
        ) from None


def _too_many_rows(where: str, max_rows: int) -> DataError:
    return DataError(
        f"{where}: more than {max_rows:,} rows; the limit is data.max_rows ({max_rows}): "
        "raise it in params, or use a smaller file"
    )


def _json_rows(f, path: Path, max_rows: int = MAX_DATA_ROWS) -> list[Any]:
    """The rows of a JSON file that holds one list of rows (read whole, within the byte limit)."""
    try:
        data = loads_json(f.read())
    except JSONDepthError as e:
        raise DataError(f"{path}: {e}") from None
    except ValueError as e:  # json.JSONDecodeError
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows")
    if len(data) > max_rows:
        raise _too_many_rows(str(path), max_rows)
    return data


def _valid_utf8(line: str) -> bool:
    """False for a line read with errors='surrogateescape' that held bytes which are not UTF-8."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


INVALID_JSON = "invalid JSON line"
INVALID_UTF8 = "invalid UTF-8 line"
TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"


class Unreadable:
    """The placeholder of a JSONL line that gives no record, with the reason it is skipped."""

    def __init__(self, reason: str):
        self.reason = reason


def _jsonl_records(path: Path, max_rows: int, max_bytes: int) -> Iterator[tuple[int, Any]]:
    """(line number, record or :class:`Unreadable`) per non-blank line of a JSONL file."""
    n_rows = 0
    with _open_text(path, errors="surrogateescape", max_bytes=max_bytes) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            n_rows += 1
            if n_rows > max_rows:
                raise _too_many_rows(f"{path}, line {n}", max_rows)
            if not _valid_utf8(line):
                yield n, Unreadable(INVALID_UTF8)
                continue
            try:
                yield n, loads_json(line)
            except JSONDepthError:
                yield n, Unreadable(TOO_DEEP)
            except ValueError:  # json.JSONDecodeError
                yield n, Unreadable(INVALID_JSON)


def iter_local_rows(
    path: str | Path,
    skipped: dict[str, int] | None = None,
    max_rows: int = MAX_DATA_ROWS,
    max_bytes: int = MAX_DATA_BYTES,
) -> Iterator[Any]:
    """The rows of a local JSON (a list) or JSONL file, optionally .gz/.xz, one at a time.

    A JSONL line that is not valid JSON (or UTF-8, or is nested too deeply) is
    counted in ``skipped`` and yields a placeholder (None), so that row indices
    (and so sample ids) stay those of the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    skipped = skipped if skipped is not None else {}
    name = path.name.removesuffix(".gz").removesuffix(".xz")
    with _reading(path):
        if name.endswith(".json"):
            with _open_text(path, errors="surrogateescape", max_bytes=max_bytes) as f:
                yield from _json_rows(f, path, max_rows)
            return
        for _, rec in _jsonl_records(path, max_rows, max_bytes):
            if isinstance(rec, Unreadable):
                skipped[rec.reason] = skipped.get(rec.reason, 0) + 1
                rec = None
            yield rec


def read_local_rows(
    path: str | Path,
    skipped: dict[str, int] | None = None,
    max_rows: int = MAX_DATA_ROWS,
    max_bytes: int = MAX_DATA_BYTES,
) -> list[Any]:
    """:func:`iter_local_rows` as a list."""
    return list(iter_local_rows(path, skipped, max_rows, max_bytes))


def load_rows(
    source: str,
    local_path: Path | None,
    hub_split: str = "train",
    skipped: dict[str, int] | None = None,
    max_rows: int = MAX_DATA_ROWS,
    max_bytes: int = MAX_DATA_BYTES,
) -> Iterable[Any]:
    """Rows from a local file (``local_path``, read streaming) or from the hub dataset ``source``.

    ``skipped`` is filled as the rows are read.
    """
    if local_path is not None:
        if not Path(local_path).is_file():
            raise DataError(f"data file not found: {local_path}")
        return iter_local_rows(local_path, skipped, max_rows, max_bytes)
    return load_hub(source, hub_split, max_rows)


def load_hub(source: str, hub_split: str, max_rows: int = MAX_DATA_ROWS):
    from datasets import load_dataset  # the real path for users with network access

    try:
        ds = load_dataset(source, split=hub_split)
    except Exception as e:  # noqa: BLE001 - many offline/hub error types
        raise DataError(
            f"could not load hub dataset {source!r} (split {hub_split!r}): {type(e).__name__}: {e}. "
            "Without network access, point data.source at a local .jsonl file "
            "(e.g. data/alpaca_subset.jsonl.xz)."
        ) from None
    if len(ds) > max_rows:
        raise _too_many_rows(f"hub dataset {source!r} (split {hub_split!r})", max_rows)
    return ds


def _csv_header(path: Path, max_bytes: int) -> tuple[list[str], str]:
    """The header of a CSV file and where it is; a missing or duplicated column name is refused."""
    with _open_text(path, newline="", max_bytes=max_bytes) as f:
        reader = csv.reader(f)
        with _csv_fields(path, reader, max_bytes):
            header = next(reader, None)
        where = f"{path}, line {reader.line_num} (header)"
    if not header:
        raise DataError(f"{path}: the file is empty (a CSV file needs a header line)")
    for i, col in enumerate(header):
        if col and col in header[:i]:
            raise DataError(
                f"{where}: column {col!r} appears more than once (columns "
                f"{header.index(col) + 1} and {i + 1}); rename or remove one of them"
            )
    return header, where


@contextmanager
def _csv_fields(path: Path, reader, max_bytes: int) -> Iterator[None]:
    """Fields as large as the byte limit (csv's own limit is 128 KiB); a csv error names its line."""
    old = csv.field_size_limit(min(max_bytes, sys.maxsize))  # a C long
    try:
        yield
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({e})") from None
    finally:
        csv.field_size_limit(old)


def _csv_records(
    path: Path, header: list[str], max_rows: int, max_bytes: int
) -> Iterator[tuple[str, Any]]:
    """(where, record) per CSV record, ``where`` naming the line the record starts on.

    Records are mapped as :class:`csv.DictReader` maps them (blank lines skipped,
    missing fields None, extra fields under the key None).
    """
    with _open_text(path, newline="", max_bytes=max_bytes) as f:
        reader = csv.reader(f)
        with _csv_fields(path, reader, max_bytes):
            next(reader)  # the header
            end, n_rows = reader.line_num, 0
            for row in reader:
                start, end = end + 1, reader.line_num
                if not row:
                    continue
                n_rows += 1
                if n_rows > max_rows:
                    raise _too_many_rows(f"{path}, line {start}", max_rows)
                rec: dict[Any, Any] = dict(zip(header, row))
                if len(row) > len(header):
                    rec[None] = row[len(header) :]
                for col in header[len(row) :]:
                    rec[col] = None
                yield f"{path}, line {start}", rec


def labelled_file(
    path: Path, max_rows: int = MAX_DATA_ROWS, max_bytes: int = MAX_DATA_BYTES
) -> tuple[Iterator[tuple[str, Any]], list[str] | None, str]:
    """(where, record) per row, read streaming (a :class:`Unreadable` for a JSONL line that
    gives none), the CSV header (None for JSON), and where the header is."""
    name = path.name.removesuffix(".gz").removesuffix(".xz")
    if name.endswith(".csv"):
        with _reading(path):
            header, where = _csv_header(path, max_bytes)
        return _within(path, _csv_records(path, header, max_rows, max_bytes)), header, where
    if name.endswith(".json"):

        def json_records() -> Iterator[tuple[str, Any]]:
            with _open_text(path, errors="surrogateescape", max_bytes=max_bytes) as f:
                data = _json_rows(f, path, max_rows)
            for i, r in enumerate(data):
                yield f"{path}, row {i + 1}", r

        return _within(path, json_records()), None, ""
    jsonl = ((f"{path}, line {n}", r) for n, r in _jsonl_records(path, max_rows, max_bytes))
    return _within(path, jsonl), None, ""


def _within(path: Path, records: Iterator[Any]) -> Iterator[Any]:
    """``records``, with a damaged compressed file or text that is not UTF-8 one DataError."""
    with _reading(path):
        yield from records


def hub_records(
    ds: Any, origin: str
) -> tuple[Iterator[tuple[str, Any]], list[str], dict[str, list[str]]]:
    """(where, record) per row (one at a time), the column names and each ClassLabel column's
    names."""
    features = getattr(ds, "features", None) or {}
    names = {c: list(f.names) for c, f in features.items() if hasattr(f, "int2str")}
    return (
        ((f"{origin}, row {i}", r) for i, r in enumerate(ds)),
        list(getattr(ds, "column_names", None) or features),
        names,
    )
