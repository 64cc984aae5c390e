"""Read MTU-Bench, the ASA paper's benchmark, as labelled conversations.

MTU-Bench (MTU-Bench-Team/MTU-Bench, ``MTU-Eval/benchmark/``, Apache-2.0) ships five
evaluation files, JSON Lines: ``S-S`` (single turn, single call), ``S-M`` (single turn,
several calls), ``M-S`` (multi-turn, single call), ``M-M`` (multi-turn, several calls)
and ``OOD`` (out of distribution). An entry is ``{"id", "question", "answer"}``:

- ``question`` is one text: an instruction block (how to answer: ``Thought``, ``Action``,
  ``Action Input``), the line "The following is a list of APIs and their parameters that
  you can use:", a list of APIs (a Python literal or JSON: ``name``, ``description``,
  ``required_parameters``, ``optional_parameters``, ``result_parameters``), then the
  dialogue (optionally after "History Dialog:"): ``User:`` / ``Assistant:`` lines, and in
  the history of multi-turn files the assistant's ``Thought:`` / ``Action:`` /
  ``Action Input:`` lines and the APIs' results (``observation:``), some lower-case;
- ``answer`` is ``{api_name: arguments}`` when the gold turn calls an API, and ``{}`` or
  ``{"": {}}`` when the assistant must not call (a mandatory argument is missing, or no
  listed API fits).

:func:`read_mtu_bench` turns each entry into one row
``{"id", "messages", "tools", "label", "domain", "subset"}``:

- ``messages``: the instruction block as the row's system message, then the dialogue as
  user, assistant and tool turns. An assistant's ``Thought`` is its turn's text, its
  ``Action``/``Action Input`` a tool call (``Action: {}`` or an empty action: no call), an
  ``observation`` a tool turn; lines without a prefix continue the line before. The
  conversation ends on the user turn the gold answer replies to.
- ``tools``: each API as a JSON-Schema tool (``{"name", "description", "parameters"}``):
  the required parameters required, the optional ones optional with their defaults
  (``optional_parameters`` is a ``{name: default}`` mapping in some files and a list of
  ``{name, type, description, default}`` in others; ``required_parameters`` a list of names
  or of such objects, or a ``{name: format hint}`` mapping, the hint kept as the
  parameter's description). ``OOD`` wraps its list as ``{"apis": [...]}``, in 17 entries
  with ``"available_parameters"``: one list of parameters for APIs that list none of
  their own, which become those APIs' optional parameters. Types are mapped to JSON Schema
  (``float`` -> ``number``, ``str`` -> ``string``, ``list`` -> ``array``, ...); a type not in
  :data:`TYPE_MAP` leaves the parameter untyped. ``result_parameters`` (what an API
  returns) are not part of a call and are left out.
- ``label``: 1 if the answer calls an API, else 0.
- ``domain``: ``all`` (one domain: no router; never derived from the file or the label).
- ``id``: the entry's ``id``; an id that several entries of one file share (3 in M-M, 8
  in OOD: different entries) gets ``@<line>`` appended on each of them, so ids are unique.
- ``subset``: the file it came from (``S-S`` ...). The issue that asked for this reader
  named the field ``split``; that name is the data stage's split column, which accepts
  only cal/train/valid/test, so the file is ``subset``.

An entry that does not parse (a line that is not JSON, no API list, a list that is not a
literal, a dialogue that does not end on a user turn, an action input that is not JSON,
tools the data stage would refuse) is skipped and recorded with its file, line, field and
reason, never raised. ``python -m asa_lib.data.mtu_bench OUT.jsonl[.xz] FILE...`` writes
the rows under every converter's rules (:mod:`asa_lib.data.convert`) and prints the row
count per file and label.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asa_lib.chat import MessagesError, check_messages
from asa_lib.data.convert import (
    ConvertError,
    check_input,
    check_output,
    entries,
    one_line_errors,
    refused_tools,
    write_rows,
)

__all__ = [
    "DOMAIN",
    "ROW_KEYS",
    "SUBSETS",
    "TYPE_MAP",
    "MTUResult",
    "MTUShapeError",
    "convert_api",
    "main",
    "parse_dialogue",
    "read_mtu_bench",
    "write_labelled",
]

#: The five evaluation files, by the name in ``<subset>_eval.jsonl``.
SUBSETS = ("S-S", "S-M", "M-S", "M-M", "OOD")
DOMAIN = "all"
ROW_KEYS = ("domain", "id", "label", "messages", "subset", "tools")

#: MTU-Bench parameter type -> JSON Schema type (lower-cased before lookup).
TYPE_MAP: dict[str, str] = {
    "string": "string",
    "str": "string",
    "integer": "integer",
    "int": "integer",
    "number": "number",
    "float": "number",
    "double": "number",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "object": "object",
    "dict": "object",
}

MARKER = re.compile(r"The following is a list of APIs and their parameters that you can use:\s*")
_FILE_NAME = re.compile(r"^(?P<subset>S-S|S-M|M-S|M-M|OOD)(_eval)?\.jsonl?$", re.IGNORECASE)
_LINE = re.compile(
    r"^\s*(?P<key>User|Assistant|Thought|Action Input|Action|function|observation)\s*:\s?(?P<v>.*)$",
    re.IGNORECASE | re.DOTALL,
)


class MTUShapeError(ValueError):
    """An entry that does not have the expected shape; ``field`` names the part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass
class MTUResult:
    """Rows read from MTU-Bench files, and the entries that were skipped."""

    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def subset_of(path: str | Path) -> str:
    """``S-S`` ... from a file name like ``S-S_eval.jsonl.xz``; else :class:`ConvertError`."""
    name = Path(path).name
    for suffix in (".xz", ".gz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    m = _FILE_NAME.match(name)
    if m is None:
        raise ConvertError(
            f"cannot tell the MTU-Bench file from its name {Path(path).name!r}; expected "
            f"<subset>_eval.jsonl[.xz] with subset one of {', '.join(SUBSETS)}"
        )
    return m.group("subset").upper()


def _literal_end(text: str, start: int) -> int:
    """The index just after the bracketed literal that starts at ``text[start]`` ('[' or
    '{'), skipping brackets inside quoted strings; -1 if it does not close."""
    depth, quote, i = 0, "", start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _literal(text: str) -> Any:
    """JSON, else a Python literal (MTU-Bench writes both); ValueError if neither."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise ValueError(f"neither JSON nor a Python literal ({type(e).__name__})") from None


def split_question(question: Any) -> tuple[str, list, str]:
    """``(instructions, apis, dialogue)`` of an entry's question, or :class:`MTUShapeError`."""
    if not isinstance(question, str):
        raise MTUShapeError("question", f"must be a string, got {type(question).__name__}")
    m = MARKER.search(question)
    if m is None:
        raise MTUShapeError("question", "no line 'The following is a list of APIs ...'")
    start = m.end()
    if start >= len(question) or question[start] not in "[{":
        raise MTUShapeError("question", "the API list does not follow its line")
    end = _literal_end(question, start)
    if end < 0:
        raise MTUShapeError("question", "the API list does not close")
    try:
        apis = _literal(question[start:end])
    except ValueError as e:
        raise MTUShapeError("question", f"the API list is {e}") from None
    if isinstance(apis, dict) and isinstance(apis.get("apis"), list):  # OOD: {"apis": [...]}
        shared = apis.get("available_parameters")  # and, in some entries, one parameter list
        if set(apis) - {"apis", "available_parameters"} or not isinstance(
            shared, (list, type(None))
        ):
            raise MTUShapeError("question", f"the API object has keys {sorted(apis)}")
        apis = [
            {**a, "optional_parameters": shared}
            if shared
            and isinstance(a, dict)
            and not a.get("required_parameters")
            and not a.get("optional_parameters")
            else a
            for a in apis["apis"]
        ]
    if not isinstance(apis, list) or not apis:
        raise MTUShapeError("question", "the API list is not a non-empty list")
    return question[: m.start()].strip(), apis, question[end:]


def _schema_type(raw: Any) -> str | None:
    return TYPE_MAP.get(raw.strip().lower()) if isinstance(raw, str) else None


def _param(p: Any, where: str) -> tuple[str, dict]:
    """A parameter given as a name, or as ``{name, type, description, default, ...}``."""
    if isinstance(p, str):
        return p, {}
    if not isinstance(p, dict) or not isinstance(p.get("name"), str):
        raise MTUShapeError(where, "a parameter is a name or an object with a name")
    out: dict[str, Any] = {}
    t = _schema_type(p.get("type"))
    if t:
        out["type"] = t
    if isinstance(p.get("description"), str):
        out["description"] = p["description"]
    if "default" in p:
        out["default"] = p["default"]
    if isinstance(p.get("enum"), list):
        out["enum"] = p["enum"]
    return p["name"], out


def convert_api(api: Any, where: str = "api") -> dict:
    """One MTU-Bench API as a JSON-Schema tool ``{"name", "description", "parameters"}``."""
    if not isinstance(api, dict) or not isinstance(api.get("name"), str):
        raise MTUShapeError(where, "an API is an object with a string name")
    props: dict[str, dict] = {}
    required: list[str] = []
    req = api.get("required_parameters") or []
    if isinstance(req, dict):  # {name: a format hint or ""}: the hint is its description
        req = [
            {"name": k, **({"description": v} if isinstance(v, str) and v else {})}
            for k, v in req.items()
        ]
    if not isinstance(req, list):
        raise MTUShapeError(f"{where}.required_parameters", "must be a list or a mapping")
    for i, p in enumerate(req):
        name, schema = _param(p, f"{where}.required_parameters[{i}]")
        props[name] = schema
        required.append(name)
    opt = api.get("optional_parameters") or []
    if isinstance(opt, dict):  # {name: default}
        items = [{"name": k, "default": v} for k, v in opt.items()]
    elif isinstance(opt, list):
        items = opt
    else:
        raise MTUShapeError(f"{where}.optional_parameters", "must be a list or a mapping")
    for i, p in enumerate(items):
        name, schema = _param(p, f"{where}.optional_parameters[{i}]")
        if name in props:
            raise MTUShapeError(f"{where}.optional_parameters[{i}]", f"{name!r} is also required")
        props[name] = schema
    desc = api.get("description")
    parameters: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        parameters["required"] = required
    return {
        "name": api["name"],
        "description": desc if isinstance(desc, str) else "",
        "parameters": parameters,
    }


def _value(v: str) -> str:
    """A line's value without MTU-Bench's stray leading ``": "`` (``observation: : {...}``)."""
    return re.sub(r"^\s*:\s?", "", v).strip()


def parse_dialogue(dialogue: str) -> list[dict[str, Any]]:
    """The dialogue's lines as chat messages (not yet checked); :class:`MTUShapeError` for an
    action input that is not JSON or text before the first prefixed line."""
    text = re.sub(r"^\s*History Dialog:\s*", "", dialogue, flags=re.IGNORECASE)
    pieces: list[list[str]] = []  # [key, value] per prefixed line; continuations appended
    for line in text.split("\n"):
        m = _LINE.match(line)
        if m:
            pieces.append([m.group("key").lower(), m.group("v")])
        elif pieces:
            pieces[-1][1] += "\n" + line
        elif line.strip():
            raise MTUShapeError("question", f"dialogue text before any 'User:' line: {line[:40]!r}")
    msgs: list[dict[str, Any]] = []

    def assistant() -> dict[str, Any]:
        if not msgs or msgs[-1]["role"] != "assistant":
            msgs.append({"role": "assistant", "content": ""})
        return msgs[-1]

    pending: str | None = None  # an Action's name, waiting for its Action Input
    for key, raw in pieces:
        v = _value(raw)
        if key == "action input":
            if pending is None:
                continue  # the input of "Action: {}" (no call)
            try:
                args = _literal(v) if v else {}
            except ValueError as e:
                raise MTUShapeError("question", f"Action Input of {pending!r} is {e}") from None
            a = assistant()
            a.setdefault("tool_calls", []).append(
                {"type": "function", "function": {"name": pending, "arguments": args}}
            )
            pending = None
            continue
        if pending is not None:  # an Action without its input: a call with no arguments
            a = assistant()
            call = {"type": "function", "function": {"name": pending, "arguments": {}}}
            a.setdefault("tool_calls", []).append(call)
            pending = None
        if key == "user":
            msgs.append({"role": "user", "content": v})
        elif key in ("assistant", "thought"):
            a = assistant()
            a["content"] = f"{a['content']}\n{v}".strip() if a["content"] else v
        elif key == "action":
            pending = v if v and v not in ("{}", "None") else None
        elif key == "observation":
            msgs.append({"role": "tool", "content": v})
        # "function:" only opens the assistant's call lines
    if pending is not None:
        assistant().setdefault("tool_calls", []).append(
            {"type": "function", "function": {"name": pending, "arguments": {}}}
        )
    # an assistant turn with nothing in it (only "Action: {}") says nothing: not a message
    return [m for m in msgs if m["role"] != "assistant" or m["content"] or m.get("tool_calls")]


def _label(answer: Any) -> int:
    if not isinstance(answer, dict):
        raise MTUShapeError("answer", f"must be an object, got {type(answer).__name__}")
    return int(any(isinstance(k, str) and k.strip() for k in answer))


def read_mtu_bench(path: str | Path) -> MTUResult:
    """Read one MTU-Bench file (.jsonl, optionally .xz/.gz) into rows (see the module
    docstring). File-level problems raise :class:`~asa_lib.data.convert.ConvertError`."""
    path = check_input(path)
    subset = subset_of(path)
    result = MTUResult()

    def skip(line: int, field_name: str, reason: str) -> None:
        result.skipped.append(
            {"file": str(path), "line": line, "field": field_name, "reason": reason}
        )

    seen: Counter = Counter()  # upstream ids, which repeat in M-M and OOD
    lines: list[int] = []  # the line of each row
    for line_no, entry in entries(path, skip):
        entry_id = entry["id"]
        seen[entry_id] += 1
        try:
            label = _label(entry.get("answer"))
            instructions, apis, dialogue = split_question(entry.get("question"))
            tools = [convert_api(a, f"question.apis[{i}]") for i, a in enumerate(apis)]
            turns = parse_dialogue(dialogue)
            system = [{"role": "system", "content": instructions}] if instructions else []
            messages = check_messages(system + turns, "question.dialogue")
        except MTUShapeError as exc:
            skip(line_no, exc.field, exc.message)
            continue
        except MessagesError as exc:
            where, _, reason = str(exc).partition(": ")
            skip(line_no, where, reason)
            continue
        if refused_tools(tools, "question.apis", line_no, skip):
            continue
        result.rows.append(
            {
                "id": entry_id,
                "messages": messages,
                "tools": tools,
                "label": label,
                "domain": DOMAIN,
                "subset": subset,
            }
        )
        lines.append(line_no)
    for row, line_no in zip(result.rows, lines):  # an id that repeats: each with its line
        if seen[row["id"]] > 1:
            row["id"] = f"{row['id']}@{line_no}"
    return result


def labelled_rows(paths: list[str | Path]) -> MTUResult:
    """The rows of several MTU-Bench files, in file order (every name checked first)."""
    for p in paths:
        subset_of(check_input(p))
    out = MTUResult()
    for p in paths:
        r = read_mtu_bench(p)
        out.rows += r.rows
        out.skipped += r.skipped
    return out


def write_labelled(out: str | Path, paths: list[str | Path]) -> MTUResult:
    """Write :func:`labelled_rows` as JSONL (``.xz`` when ``out`` ends so), reproducibly,
    under the converters' rules (:func:`asa_lib.data.convert.check_output`)."""
    check_output(out, paths, ROW_KEYS)
    result = labelled_rows(paths)
    write_rows(out, result.rows)
    return result


def counts(result: MTUResult) -> list[dict[str, Any]]:
    """Rows per subset and label, in file order (what the command prints)."""
    c = Counter((r["subset"], r["label"]) for r in result.rows)
    subsets = list(dict.fromkeys(r["subset"] for r in result.rows))
    return [{"subset": s, "label 1": c[(s, 1)], "label 0": c[(s, 0)]} for s in subsets]


def main(argv: list[str] | None = None) -> int:
    """``python -m asa_lib.data.mtu_bench OUT.jsonl[.xz] FILE...``: the exit code."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m asa_lib.data.mtu_bench",
        description="MTU-Bench evaluation files (<subset>_eval.jsonl) -> labelled "
        "conversations with their own tools (JSONL, .xz when OUT says so). OUT comes first; "
        "it is never one of the inputs, nor an existing file the converter did not write.",
    )
    ap.add_argument("out", metavar="OUT.jsonl[.xz]")
    ap.add_argument("files", nargs="+", metavar="MTU_FILE")
    a = ap.parse_args(argv)

    def command() -> int:
        res = write_labelled(a.out, a.files)
        print(f"wrote {len(res.rows)} rows to {a.out}; skipped {len(res.skipped)}")
        for row in counts(res):
            print(f"  {row['subset']}: {row['label 1']} label 1, {row['label 0']} label 0")
        for s in res.skipped[:10]:
            print(f"  skipped {s['file']}, line {s['line']}, field {s['field']}: {s['reason']}")
        return 0

    return one_line_errors(command)


if __name__ == "__main__":
    sys.exit(main())
