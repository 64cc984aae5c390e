"""What every data converter shares (BFCL now, MTU-Bench later): its output and its errors.

A converter reads files of another project's format and writes labelled rows
(JSON Lines, one row a line, xz-compressed when OUT ends in ``.xz``). Its rules:

- **OUT is never an input, nor a file it did not write.** :func:`check_output`
  refuses an OUT that is one of the input files (by path or as the same file), a
  folder, a path in a folder that does not exist, a name that does not end in
  ``.jsonl`` or ``.jsonl.xz``, and an existing file that is not a converter's
  output. A converter's output is recognised by its first line
  (:func:`is_converter_output`): one row written as :func:`row_line` writes it
  (sorted keys), with exactly the converter's keys. An empty file counts as one
  (a converter writes it for no rows). So a forgotten OUT (the first input taken
  as OUT) or a data file of one's own is left untouched, and re-running a
  converter onto its own earlier output still works.
- **File-level errors are one line.** A missing input, a damaged compressed
  file, an unsupported file name or a bad count raise :class:`ConvertError`
  (a :class:`~asa_lib.data.splits.DataError`); :func:`one_line_errors` runs a
  converter's command and prints it as ``asa: error: ...`` (exit 2; an
  ``OSError``, e.g. a read-only folder: exit 1), never a traceback.
"""

from __future__ import annotations

import gzip
import json
import lzma
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from asa_lib.data.splits import DataError
from asa_lib.files import JSONDepthError, atomic_path, loads_json
from asa_lib.params import tool_list_problem

__all__ = [
    "OUTPUT_SUFFIXES",
    "ConvertError",
    "check_count",
    "check_input",
    "check_output",
    "entries",
    "is_converter_output",
    "one_line_errors",
    "refused_tools",
    "open_input",
    "row_line",
    "write_rows",
]

#: The names a converter's output may have: JSON Lines, plain or xz-compressed.
OUTPUT_SUFFIXES = (".jsonl", ".jsonl.xz")

# The first line of an existing OUT is read up to this many characters to recognise it.
_FIRST_LINE_CHARS = 16 * 2**20

# A damaged compressed file: lzma and gzip raise these (gzip.BadGzipFile is an OSError).
_DAMAGED = (lzma.LZMAError, EOFError, zlib.error, gzip.BadGzipFile)


class ConvertError(DataError):
    """A converter's input or output that cannot be used; the message says which and why."""


def row_line(row: dict) -> str:
    """One output row as a converter writes it: JSON, sorted keys, non-ASCII as is."""
    return json.dumps(row, ensure_ascii=False, sort_keys=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def is_converter_output(path: str | Path, keys: Iterable[str]) -> bool:
    """True when ``path`` holds a converter's rows: its first line is a row with exactly
    ``keys`` (or one of several such key lists: rows of several shapes), written as :func:`row_line` writes it (or the file is empty). A file that
    cannot be read (a damaged ``.xz``, not UTF-8) is not one."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return True
        opener = lzma.open if path.name.endswith(".xz") else open
        with opener(path, "rb") as f:
            first = f.readline(_FIRST_LINE_CHARS).decode("utf-8")
    except (OSError, UnicodeDecodeError, *_DAMAGED):
        return False
    if not first:
        return True
    try:
        row = json.loads(first)
    except ValueError:
        return False
    shapes = [set(k) for k in _shapes(keys)]
    return isinstance(row, dict) and set(row) in shapes and row_line(row) == first.rstrip("\n")


def _shapes(keys) -> list:
    """``keys`` as a list of row shapes: one shape (strings) or several (lists of strings)."""
    keys = list(keys)
    return [keys] if not keys or isinstance(keys[0], str) else keys


def check_output(out: str | Path, inputs: Sequence[str | Path], keys: Iterable[str]) -> Path:
    """Refuse an OUT the converter must not write (see the module's rules); returns it.

    ``keys``: the keys of the converter's rows (how its earlier output is recognised).
    """
    out = Path(out)
    again = "OUT is the first argument: a new .jsonl or .jsonl.xz file"
    for inp in map(Path, inputs):
        if _same_file(out, inp):
            raise ConvertError(f"OUT {out} is one of the input files; {again}")
    if out.is_dir():
        raise ConvertError(f"OUT {out} is a folder; {again}")
    if out.exists() and not is_converter_output(out, keys):
        raise ConvertError(
            f"OUT {out} exists and is not a file the converter wrote (its first line is not "
            f"a converted row), so it is left as it is; {again}, or the converter's own output"
        )
    if not out.parent.is_dir():
        raise ConvertError(f"OUT {out}: no such folder {out.parent}")
    if not out.name.endswith(OUTPUT_SUFFIXES):
        raise ConvertError(
            f"OUT {out.name!r} does not end in .jsonl or .jsonl.xz: the rows are JSON Lines "
            "(xz-compressed when OUT ends in .xz), and the data stage reads a file by its name"
        )
    return out


def write_rows(out: str | Path, rows: Iterable[dict]) -> Path:
    """Write ``rows`` to ``out`` (one :func:`row_line` a line; xz when ``out`` ends in .xz),
    reproducibly and atomically (a failed write leaves no half file). Check ``out`` first
    (:func:`check_output`)."""
    out = Path(out)
    data = "".join(row_line(r) + "\n" for r in rows).encode("utf-8")
    with atomic_path(out) as tmp:
        tmp.write_bytes(lzma.compress(data, preset=9) if out.name.endswith(".xz") else data)
    return out


def check_input(path: str | Path) -> Path:
    """Refuse an input that is not a file (missing, a folder); returns it as a Path."""
    path = Path(path)
    if path.is_dir():
        raise ConvertError(f"{path} is a folder, not an input file")
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    return path


@contextmanager
def open_input(path: str | Path) -> Iterator[IO[bytes]]:
    """A converter's input (plain, ``.xz`` or ``.gz``) open for reading bytes, for the body
    of a ``with`` block: a missing file (:func:`check_input`), or a damaged compressed one
    (found while reading), raises :class:`ConvertError` naming it."""
    path = check_input(path)
    suffix = path.suffix.lower()
    opener = lzma.open if suffix == ".xz" else gzip.open if suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            yield handle
    except _DAMAGED as e:
        raise ConvertError(
            f"{path}: cannot be read, the compressed file is damaged or incomplete ({e})"
        ) from None


#: How a converter records a skipped entry: ``skip(line, field, reason)``.
Skip = Callable[[int, str, str], None]


def entries(path: str | Path, skip: Skip) -> Iterator[tuple[int, dict]]:
    """The entries of a JSON Lines input (plain, ``.xz`` or ``.gz``), as ``(line, entry)``.

    Every converter reads its files through this loop. Blank lines are passed over.
    A line that is not UTF-8 (a byte-order mark on line 1 is allowed), not JSON, nested
    too deeply, not a JSON object, or without a non-empty string ``id`` is handed to
    ``skip(line, field, reason)`` and not yielded; file-level problems raise
    :class:`ConvertError` (:func:`open_input`).
    """
    with open_input(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:  # utf-8-sig on line 1: a byte-order mark is not part of the first entry
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                skip(line_no, "line", f"not UTF-8: {exc}")
                continue
            if not line.strip():
                continue
            try:
                entry = loads_json(line)
            except JSONDepthError as exc:
                skip(line_no, "line", str(exc))
                continue
            except ValueError as exc:  # JSONDecodeError, or an integer too long to read
                skip(line_no, "line", f"not JSON: {exc}")
                continue
            if not isinstance(entry, dict):
                skip(line_no, "line", f"not a JSON object: {type(entry).__name__}")
                continue
            entry_id = entry.get("id")
            if not isinstance(entry_id, str) or not entry_id:
                skip(line_no, "id", "must be a non-empty string")
                continue
            yield line_no, entry


def refused_tools(tools: list, field: str, line: int, skip: Skip) -> bool:
    """Whether the data stage would refuse this converted tool list (two tools of one name,
    a bad schema: :func:`~asa_lib.params.tool_list_problem`); if so it is handed to
    ``skip(line, where, reason)``."""
    problem = tool_list_problem(tools, field)
    if problem is None:
        return False
    where, _, reason = problem.partition(": ")
    skip(line, where, reason)
    return True


def check_count(value: Any, name: str) -> None:
    """Refuse a count (``--per-file``, ``--max-chars``) that is not a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConvertError(f"{name}: needs a whole number >= 1, got {value!r}")


def one_line_errors(command: Callable[[], int]) -> int:
    """Run a converter's command: its exit code, or a :class:`ConvertError` (exit 2) or an
    ``OSError`` (exit 1) as one ``asa: error: ...`` line on stderr."""
    try:
        return command()
    except ConvertError as e:
        print(f"asa: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder, a full disk ...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"asa: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
