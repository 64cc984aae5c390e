"""Tool calls in a model's output: detection, parsing and post-trigger validity.

A generation *triggered* a tool when the start marker (``prompt.tool_call_start``)
occurs in the decoded output (decoded with special tokens kept). A trigger is
*valid* when its payload parses (the Liquid Python-style list ``[name(arg="v")]``
or the JSON style ``{"name": ..., "arguments": {...}}``), every called tool is
one of the listed tools, and each call has its required arguments, non-empty.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any

from asa_lib.params import PromptParams


def triggered(output: str, pp: PromptParams) -> bool:
    return pp.tool_call_start in output


def call_payload(output: str, pp: PromptParams) -> str | None:
    """The text between the first start marker and the end marker (or the end of output)."""
    start = output.find(pp.tool_call_start)
    if start < 0:
        return None
    rest = output[start + len(pp.tool_call_start) :]
    end = rest.find(pp.tool_call_end)
    return (rest if end < 0 else rest[:end]).strip()


def call_complete(output: str, pp: PromptParams) -> bool:
    """True once a start marker has been followed by an end marker."""
    start = output.find(pp.tool_call_start)
    return start >= 0 and output.find(pp.tool_call_end, start + len(pp.tool_call_start)) >= 0


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


def call_validity(output: str, pp: PromptParams) -> dict[str, bool]:
    """``format_valid``: the payload parses; ``valid``: plus known tools with required args."""
    payload = call_payload(output, pp)
    if payload is None:
        return {"format_valid": False, "valid": False}
    calls = parse_calls(payload)
    if calls is None:
        return {"format_valid": False, "valid": False}
    tools = {t["name"]: t for t in pp.tools}
    ok = True
    for c in calls:
        tool = tools.get(c.name)
        if tool is None:
            ok = False
            break
        required = tool.get("parameters", {}).get("required", [])
        if not all(_non_empty(c.arguments.get(r)) for r in required):
            ok = False
            break
    return {"format_valid": True, "valid": ok}
