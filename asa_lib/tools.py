"""Tool calls in a model's output: detection, parsing and post-trigger validity.

A generation *triggered* a tool when the start marker (:class:`CallMarkers`,
``prompt.tool_call_start``) occurs in the decoded output (decoded with special
tokens kept). A trigger is *valid* when its payload parses (the Liquid
Python-style list ``[name(arg="v")]`` or the JSON style
``{"name": ..., "arguments": {...}}``), every called tool is one of the listed
tools, and each call has its required arguments, non-empty. :func:`score_output`
is the one scoring of an output (the sweep, ``asa generate`` and the demo
model's evaluation).

The functions take the markers (a :class:`CallMarkers`, or anything with
``tool_call_start``/``tool_call_end`` such as a ``PromptParams``) and, for
validity, the tool list: generation needs only the markers.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any, Protocol


class HasMarkers(Protocol):
    """Anything that carries the call markers (``PromptParams``)."""

    tool_call_start: str
    tool_call_end: str


@dataclass(frozen=True)
class CallMarkers:
    """The text that opens and the text that closes a tool call in a model's output."""

    start: str
    end: str

    @classmethod
    def of(cls, source: CallMarkers | HasMarkers) -> CallMarkers:
        """The markers of ``source``: a ``CallMarkers`` as it is, else its ``tool_call_start/_end``."""
        if isinstance(source, CallMarkers):
            return source
        return cls(source.tool_call_start, source.tool_call_end)


@dataclass(frozen=True)
class Score:
    """One output, scored: a tool call was started; its payload parses; it is a valid call;
    it was closed by the end marker (``complete``: False for a call cut at max_new_tokens)."""

    triggered: bool
    format_valid: bool
    valid: bool
    complete: bool = False


def triggered(output: str, markers: CallMarkers | HasMarkers) -> bool:
    return CallMarkers.of(markers).start in output


def call_payload(output: str, markers: CallMarkers | HasMarkers) -> str | None:
    """The text between the first start marker and the end marker (or the end of output)."""
    m = CallMarkers.of(markers)
    start = output.find(m.start)
    if start < 0:
        return None
    rest = output[start + len(m.start) :]
    end = rest.find(m.end)
    return (rest if end < 0 else rest[:end]).strip()


def call_complete(output: str, markers: CallMarkers | HasMarkers) -> bool:
    """True once a start marker has been followed by an end marker."""
    m = CallMarkers.of(markers)
    start = output.find(m.start)
    return start >= 0 and output.find(m.end, start + len(m.start)) >= 0


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


def _literal(node: ast.AST) -> Any:
    return ast.literal_eval(node)


def parse_python_calls(payload: str) -> list[ToolCall] | None:
    """``[name(arg="v"), other(x=1)]`` (Liquid style) -> calls; None if it does not parse."""
    try:
        tree = ast.parse(payload.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # untrusted text: never crash
        return None
    body = tree.body
    items = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
    calls = []
    for item in items:
        if not (isinstance(item, ast.Call) and isinstance(item.func, ast.Name)) or item.args:
            return None
        try:
            args = {kw.arg: _literal(kw.value) for kw in item.keywords if kw.arg is not None}
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            return None
        calls.append(ToolCall(item.func.id, args))
    return calls or None


def parse_json_calls(payload: str) -> list[ToolCall] | None:
    """``{"name": ..., "arguments": {...}}`` or a list of them -> calls; None if invalid."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; deep nesting recurses
        return None
    items = obj if isinstance(obj, list) else [obj]
    calls = []
    for it in items:
        if not isinstance(it, dict) or not isinstance(it.get("name"), str):
            return None
        args = it.get("arguments", it.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except (ValueError, RecursionError):
                return None
        if not isinstance(args, dict):
            return None
        calls.append(ToolCall(it["name"], args))
    return calls or None


def parse_calls(payload: str) -> list[ToolCall] | None:
    return parse_json_calls(payload) or parse_python_calls(payload)


def _non_empty(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, str):
        return bool(v.strip())
    if isinstance(v, (list, dict)):
        return len(v) > 0
    return True


# Why a started call could or could not run (:func:`call_problem`), in the order checked.
CALL_PROBLEMS = (
    "cut",
    "does not parse",
    "names an unlisted tool",
    "lacks a required argument",
    "valid",
)


def _calls_problem(calls: list[ToolCall], tools: list[dict[str, Any]]) -> str | None:
    """None where every call names a listed tool and gives its required arguments, non-empty;
    else what the first call that does not is missing."""
    by_name = {t["name"]: t for t in tools}
    for c in calls:
        tool = by_name.get(c.name)
        if tool is None:
            return "names an unlisted tool"
        required = tool.get("parameters", {}).get("required", [])
        if not all(_non_empty(c.arguments.get(r)) for r in required):
            return "lacks a required argument"
    return None


def call_problem(
    output: str, markers: CallMarkers | HasMarkers, tools: list[dict[str, Any]]
) -> str | None:
    """Why the call ``output`` starts could or could not run: one of :data:`CALL_PROBLEMS`
    (``cut``: no end marker, whatever it holds, as :func:`~asa_lib.metrics.validity_split`
    counts it), None where no call was started."""
    payload = call_payload(output, markers)
    if payload is None:
        return None
    if not call_complete(output, markers):
        return "cut"
    calls = parse_calls(payload)
    if calls is None:
        return "does not parse"
    return _calls_problem(calls, tools) or "valid"


def score_output(
    output: str, markers: CallMarkers | HasMarkers, tools: list[dict[str, Any]]
) -> Score:
    """``triggered``: a start marker occurs; ``format_valid``: its payload parses;
    ``valid``: plus every call names one of ``tools`` with its required arguments."""
    payload = call_payload(output, markers)
    if payload is None:
        return Score(triggered=False, format_valid=False, valid=False)
    complete = call_complete(output, markers)
    calls = parse_calls(payload)
    if calls is None:
        return Score(triggered=True, format_valid=False, valid=False, complete=complete)
    return Score(
        triggered=True,
        format_valid=True,
        valid=_calls_problem(calls, tools) is None,
        complete=complete,
    )
