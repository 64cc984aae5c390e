"""Read BFCL (Berkeley Function-Calling Leaderboard) relevance data.

BFCL ships each test category as a JSON Lines file (one JSON object per
line, despite the ``.json`` suffix). An entry looks like::

    {"id": "simple_python_0",
     "question": [[{"role": "user", "content": "Find the area of ..."}]],
     "function": [{"name": "...", "description": "...",
                   "parameters": {"type": "dict", "properties": {...},
                                  "required": [...]}}]}

``read_bfcl`` turns such a file into rows
``{"id", "text", "label", "tools", "category"}`` (or ``"messages"`` instead of
``"text"``, see below), where ``tools`` holds the entry's functions converted to
JSON-Schema-flavoured tool schemas.

Labels
------
``simple_python``, ``multiple`` and the live ``live_simple``, ``live_multiple``,
``live_relevance``: label 1 (one of the listed functions fits the request).
``irrelevance`` and ``live_irrelevance``: label 0 (none of them does). Any other
category is refused with :class:`~asa_lib.data.convert.ConvertError` (a
``ValueError``), as are a missing file and a damaged ``.xz``/``.gz``. BFCL's
``multi_turn_*`` categories are left out: their turns are scored by running the
calls in BFCL's executable environments (file systems, booking APIs), so a turn's
label depends on state this converter cannot reproduce. ``live_parallel*`` and
``parallel*`` (several calls in one answer) are left out too: they are label 1 by the
same rule and can be added to :data:`CATEGORY_LABELS`, but no preset uses them.

Entries kept
------------
``question`` must be a list holding exactly one turn, a non-empty list of messages.
A turn of one user message becomes a row with ``text`` (its content, non-empty), as
before. A turn of several messages (a system prompt first, earlier user and assistant
messages) becomes a row with ``messages``: the turn as chat messages, checked as the
data stage checks them (:func:`asa_lib.chat.check_messages`: known roles, string
contents, a system message only first, the last message a user turn). Nothing of a
message is dropped.

Anything else (a line that is not JSON, not an object, a bad ``id``,
several turns, messages the data stage would refuse, a missing or empty
function list, a malformed function, functions the data stage would refuse
as a row's tools, e.g. two of one name: :func:`asa_lib.params.tool_list_problem`)
is skipped. It is recorded in
``BFCLResult.skipped`` as ``{"file", "line", "field", "reason"}``, with a
1-based line number, and never raised. Blank lines are ignored without
being recorded.

Type conversion
---------------
BFCL uses Python-flavoured type names. ``BFCL_TYPE_MAP`` maps them to JSON
Schema types:

    dict -> object      float -> number      integer -> integer
    string -> string    boolean -> boolean   array -> array
    tuple -> array      list -> array        any -> (no "type" key)

``list`` does not occur in BFCL v4 single-turn data, but it is in the map
anyway. Any other type name (e.g. Java's ``HashMap``) raises
``BFCLShapeError``. Conversion recurses into ``properties`` and ``items``.
Note that BFCL's own converter (``bfcl_eval/constants/type_mappings.py``)
maps ``any`` to ``string``. We leave the type open instead.

Keywords kept: ``description``, ``enum``, ``default``, ``required``,
``format``, plus the scalar JSON Schema keywords in
``EXTRA_SCHEMA_KEYWORDS`` (``minimum``, ``maximum``, ``minItems``, ...)
when their value has the right JSON type. All other keys are dropped.
In the three supported files that means only BFCL's non-standard
``optional`` marker (41 occurrences, with values such as ``true``,
``"true"``, ``"yes"``, ``[]``). ``required`` is left as BFCL wrote it,
whatever ``optional`` says. ``default`` is copied unchanged, so it may not
match the declared type (BFCL writes e.g. ``"default": "None"``).

Only the standard library is used (and :func:`asa_lib.files.loads_json`, which caps
JSON nesting: a deeper line is skipped like one that is not JSON).

The command (``python -m asa_lib.data.bfcl OUT.jsonl[.xz] BFCL_FILE...``) follows
every converter's rules (:mod:`asa_lib.data.convert`): OUT is never one of the
inputs nor an existing file it did not write, and a file-level error is one line.
"""

from __future__ import annotations

import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asa_lib.chat import MessagesError, check_messages
from asa_lib.data.convert import (
    ConvertError,
    check_count,
    check_input,
    check_output,
    entries,
    one_line_errors,
    refused_tools,
    write_rows,
)

__all__ = [
    "BFCL_TYPE_MAP",
    "CATEGORY_LABELS",
    "MESSAGE_ROW_KEYS",
    "ROW_KEYS",
    "BFCLResult",
    "BFCLShapeError",
    "convert_function",
    "convert_schema",
    "infer_category",
    "labelled_rows",
    "main",
    "read_bfcl",
    "write_labelled",
]

#: BFCL type name -> JSON Schema type; ``None`` means "no type constraint".
BFCL_TYPE_MAP: dict[str, str | None] = {
    "dict": "object",
    "float": "number",
    "integer": "integer",
    "string": "string",
    "boolean": "boolean",
    "array": "array",
    "tuple": "array",
    "list": "array",
    "any": None,
}

#: Supported categories and their labels (1: a listed function fits).
CATEGORY_LABELS: dict[str, int] = {
    "simple_python": 1,
    "multiple": 1,
    "irrelevance": 0,
    # BFCL's "live" categories: user-contributed requests and functions (asa evaluate's
    # transfer example, data/bfcl_live_relevance.jsonl.xz; all of them: bfcl_live.jsonl.xz)
    "live_simple": 1,
    "live_multiple": 1,
    "live_relevance": 1,
    "live_irrelevance": 0,
}

#: Scalar JSON Schema keywords copied as is, with the JSON type their value needs.
EXTRA_SCHEMA_KEYWORDS: dict[str, str] = {
    "title": "string",
    "pattern": "string",
    "minimum": "number",
    "maximum": "number",
    "exclusiveMinimum": "number",
    "exclusiveMaximum": "number",
    "multipleOf": "number",
    "minLength": "integer",
    "maxLength": "integer",
    "minItems": "integer",
    "maxItems": "integer",
    "minProperties": "integer",
    "maxProperties": "integer",
    "uniqueItems": "boolean",
}

_FILE_NAME = re.compile(r"^bfcl_v\d+_(?P<category>[a-z0-9_]+)\.jsonl?$", re.IGNORECASE)


class BFCLShapeError(ValueError):
    """A BFCL function or schema does not have the expected shape.

    ``field`` is a dotted path to the bad part, e.g.
    ``"parameters.properties.coord1.type"``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class BFCLResult:
    """Rows read from one BFCL file, and the entries that were skipped."""

    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def _has_json_type(value: Any, json_type: str) -> bool:
    """True when ``value`` is a JSON ``json_type`` (bool is not a number)."""
    if json_type == "string":
        return isinstance(value, str)
    if json_type == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if json_type == "integer":
        return isinstance(value, int)
    return isinstance(value, (int, float))  # "number"


def convert_schema(schema: Any, path: str) -> dict:
    """Convert one BFCL (sub)schema to JSON Schema, recursively.

    ``path`` names the schema in error messages.
    """
    if not isinstance(schema, dict):
        raise BFCLShapeError(path, f"schema must be an object, got {type(schema).__name__}")
    if "type" not in schema:
        raise BFCLShapeError(f"{path}.type", "missing type")
    bfcl_type = schema["type"]
    if not isinstance(bfcl_type, str) or bfcl_type not in BFCL_TYPE_MAP:
        raise BFCLShapeError(
            f"{path}.type",
            f"unknown type {bfcl_type!r}; known: {sorted(BFCL_TYPE_MAP)}",
        )

    out: dict[str, Any] = {}
    json_type = BFCL_TYPE_MAP[bfcl_type]
    if json_type is not None:
        out["type"] = json_type

    if "description" in schema:
        if not isinstance(schema["description"], str):
            raise BFCLShapeError(f"{path}.description", "must be a string")
        out["description"] = schema["description"]

    if "properties" in schema:
        properties = schema["properties"]
        if not isinstance(properties, dict):
            raise BFCLShapeError(f"{path}.properties", "must be an object")
        out["properties"] = {
            name: convert_schema(sub, f"{path}.properties.{name}")
            for name, sub in properties.items()
        }

    if "items" in schema:
        out["items"] = convert_schema(schema["items"], f"{path}.items")

    if "required" in schema:
        required = schema["required"]
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise BFCLShapeError(f"{path}.required", "must be a list of strings")
        unknown = [r for r in required if r not in out.get("properties", {})]
        if unknown:
            raise BFCLShapeError(f"{path}.required", f"names no such property: {unknown}")
        out["required"] = list(required)

    if "enum" in schema:
        if not isinstance(schema["enum"], list):
            raise BFCLShapeError(f"{path}.enum", "must be a list")
        out["enum"] = list(schema["enum"])

    if "default" in schema:
        out["default"] = schema["default"]

    if "format" in schema:
        if not isinstance(schema["format"], str):
            raise BFCLShapeError(f"{path}.format", "must be a string")
        out["format"] = schema["format"]

    for keyword, json_type in EXTRA_SCHEMA_KEYWORDS.items():
        if keyword in schema and _has_json_type(schema[keyword], json_type):
            out[keyword] = schema[keyword]
    return out


def convert_function(fn: dict) -> dict:
    """Convert one BFCL function into a JSON-Schema-flavoured tool schema.

    Returns ``{"name", "description", "parameters": {"type": "object",
    "properties": {...}, "required": [...]}}``; ``properties`` and
    ``required`` are always present (empty when BFCL gives none).
    Raises ``BFCLShapeError`` when the function is malformed.
    """
    if not isinstance(fn, dict):
        raise BFCLShapeError("function", f"must be an object, got {type(fn).__name__}")
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BFCLShapeError("name", "must be a non-empty string")
    description = fn.get("description")
    if not isinstance(description, str):
        raise BFCLShapeError("description", "must be a string")
    parameters = fn.get("parameters")
    if not isinstance(parameters, dict):
        raise BFCLShapeError("parameters", "must be an object")
    if parameters.get("type") != "dict":
        raise BFCLShapeError("parameters.type", f"must be 'dict', got {parameters.get('type')!r}")

    converted = convert_schema(parameters, "parameters")
    converted.setdefault("properties", {})
    converted.setdefault("required", [])
    return {"name": name, "description": description, "parameters": converted}


def infer_category(path: str | Path) -> str:
    """Infer the category from a file name like ``BFCL_v4_multiple.json.xz``.

    Raises :class:`~asa_lib.data.convert.ConvertError` for a name that does not say.
    """
    name = Path(path).name
    for suffix in (".xz", ".gz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    match = _FILE_NAME.match(name)
    if match is None:
        raise ConvertError(
            f"cannot infer a BFCL category from file name {Path(path).name!r}; "
            "expected BFCL_v<N>_<category>.json[l][.xz|.gz] (read_bfcl: or pass category=)"
        )
    return match.group("category").lower()


def _request(question: Any) -> tuple[str | list | None, str, str]:
    """Return ``(request, field, reason)``: the user text of a one-message turn, or the
    checked messages of a longer one; ``request`` is None when unusable."""
    if not isinstance(question, list):
        return None, "question", "must be a list of turns"
    if len(question) != 1:
        return None, "question", f"expected exactly one turn, got {len(question)}"
    turn = question[0]
    if not isinstance(turn, list) or not turn:
        return None, "question[0]", "turn must be a non-empty list of messages"
    if len(turn) == 1 and isinstance(turn[0], dict) and turn[0].get("role") == "user":
        content = turn[0].get("content")
        if not isinstance(content, str):
            return None, "question[0][0].content", f"must be a string, got {type(content).__name__}"
        if not content.strip():
            return None, "question[0][0].content", "empty user message"
        return content, "", ""
    try:
        return check_messages(turn, "question[0]"), "", ""
    except MessagesError as e:
        where, _, reason = str(e).partition(": ")
        return None, where, reason


def _convert_functions(functions: list) -> list[dict]:
    """Convert an entry's functions; error fields get a ``function[i]`` prefix."""
    tools = []
    for i, fn in enumerate(functions):
        try:
            tools.append(convert_function(fn))
        except BFCLShapeError as exc:
            where = f"function[{i}]" if exc.field == "function" else f"function[{i}].{exc.field}"
            raise BFCLShapeError(where, exc.message) from None
    return tools


def _category(path: Path, category: str | None) -> str:
    """``category``, or the one in the file name; refused unless it has a label rule."""
    if category is None:
        category = infer_category(path)
    if category not in CATEGORY_LABELS:
        raise ConvertError(
            f"{path.name}: unsupported BFCL category {category!r}; supported: "
            f"{sorted(CATEGORY_LABELS)}"
        )
    return category


def read_bfcl(path: str | Path, category: str | None = None) -> BFCLResult:
    """Read one BFCL file (.json/.jsonl, optionally .xz/.gz) into rows.

    ``category`` defaults to the one in the file name. Raises
    :class:`~asa_lib.data.convert.ConvertError` (a ``ValueError``) for a category with
    no label rule, a missing file or a damaged compressed one. Bad entries are skipped
    and recorded in ``BFCLResult.skipped``, never raised.
    """
    path = check_input(path)
    category = _category(path, category)
    label = CATEGORY_LABELS[category]
    result = BFCLResult()

    def skip(line: int, field_name: str, reason: str) -> None:
        result.skipped.append(
            {"file": str(path), "line": line, "field": field_name, "reason": reason}
        )

    for line_no, entry in entries(path, skip):
        entry_id = entry["id"]
        request, field_name, reason = _request(entry.get("question"))
        if request is None:
            skip(line_no, field_name, reason)
            continue

        functions = entry.get("function")
        if not isinstance(functions, list) or not functions:
            skip(line_no, "function", "must be a non-empty list of functions")
            continue
        try:
            tools = _convert_functions(functions)
        except BFCLShapeError as exc:
            skip(line_no, exc.field, exc.message)
            continue
        if refused_tools(tools, "function", line_no, skip):  # what the data stage would refuse
            continue

        result.rows.append(
            {
                "id": entry_id,
                "text" if isinstance(request, str) else "messages": request,
                "label": label,
                "tools": tools,
                "category": category,
            }
        )
    return result


#: The one domain of converted BFCL rows. Domains are never derived from the category or
#: the label (either would hand the router the answer); with one domain there is no router.
BFCL_DOMAIN = "all"

#: The keys of a converted row (how the converter recognises its own earlier output); a
#: conversation's row has ``messages`` instead of ``text``.
ROW_KEYS = ("category", "domain", "id", "label", "text", "tools")
MESSAGE_ROW_KEYS = ("category", "domain", "id", "label", "messages", "tools")


def labelled_rows(
    paths: list[str | Path],
    domain: str = BFCL_DOMAIN,
    per_file: int | None = None,
    seed: int = 0,
    max_chars: int | None = None,
) -> BFCLResult:
    """The rows of several BFCL files as labelled rows (``data.kind: labelled``), in file order.

    Each row: ``{"id", "text", "label", "domain", "tools", "category"}``; the
    pipeline reads ``tools`` as the row's own tool list and ignores ``category``
    (kept for the reader). Skipped entries of every file are collected.
    ``per_file``: keep a seeded random sample of that many rows of each file
    (``random.Random(seed)``, one stream over the files in order), in file order.
    ``max_chars``: before sampling, leave out rows whose text and tools (as JSON)
    are longer than that together (a few BFCL "live" rows list tools of 20k
    characters; on a CPU one such prompt dominates a batch). Both, when given, are whole
    numbers >= 1 (else :class:`~asa_lib.data.convert.ConvertError`).
    """
    for value, name in ((per_file, "per_file"), (max_chars, "max_chars")):
        if value is not None:
            check_count(value, name)
    for p in paths:  # every file and its name, before any is read
        _category(check_input(p), None)
    rng = random.Random(seed)
    out = BFCLResult()
    for p in paths:
        r = read_bfcl(p)
        rows = r.rows
        if max_chars is not None:
            rows = [x for x in rows if _chars(x) <= max_chars]
        if per_file is not None and per_file < len(rows):
            rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), per_file))]
        out.rows += [{**row, "domain": domain} for row in rows]
        out.skipped += r.skipped
    return out


def _chars(row: dict) -> int:
    """A row's length for ``max_chars``: its text (or its messages' contents) and tools JSON."""
    text = row.get("text")
    if text is None:
        text = "".join(m["content"] for m in row["messages"])
    return len(text) + len(json.dumps(row["tools"]))


def write_labelled(
    out: str | Path,
    paths: list[str | Path],
    domain: str = BFCL_DOMAIN,
    per_file: int | None = None,
    seed: int = 0,
    max_chars: int | None = None,
) -> BFCLResult:
    """Write :func:`labelled_rows` as JSONL (``.xz`` compressed when ``out`` ends so), reproducibly.

    ``out`` is checked first (:func:`asa_lib.data.convert.check_output`): never one of
    ``paths``, nor an existing file that is not a converter's output; every input is read
    before anything is written.
    """
    check_output(out, paths, [ROW_KEYS, MESSAGE_ROW_KEYS])
    result = labelled_rows(paths, domain, per_file, seed, max_chars)
    write_rows(out, result.rows)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m asa_lib.data.bfcl OUT.jsonl[.xz] BFCL_FILE...``: the exit code; a
    file-level error is one line (:func:`asa_lib.data.convert.one_line_errors`)."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m asa_lib.data.bfcl",
        description="BFCL files -> labelled rows with their own tools (JSONL, .xz when OUT "
        "says so). OUT comes first; it is never one of the inputs, nor an existing file the "
        "converter did not write.",
    )
    ap.add_argument("out", metavar="OUT.jsonl[.xz]")
    ap.add_argument("files", nargs="+", metavar="BFCL_FILE")
    ap.add_argument(
        "--per-file", type=int, default=None, help="a seeded random sample of N rows of each file"
    )
    ap.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    ap.add_argument(
        "--max-chars",
        type=int,
        default=None,
        help="leave out rows whose text + tools JSON is longer (before sampling)",
    )
    a = ap.parse_args(argv)

    def command() -> int:
        for value, flag in ((a.per_file, "--per-file"), (a.max_chars, "--max-chars")):
            if value is not None:
                check_count(value, flag)
        res = write_labelled(
            a.out, a.files, per_file=a.per_file, seed=a.seed, max_chars=a.max_chars
        )
        print(f"wrote {len(res.rows)} rows to {a.out}; skipped {len(res.skipped)}")
        for s in res.skipped[:10]:
            print(f"  skipped {s['file']}, line {s['line']}, field {s['field']}: {s['reason']}")
        return 0

    return one_line_errors(command)


if __name__ == "__main__":
    sys.exit(main())
