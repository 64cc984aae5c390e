"""Conversations as rows: chat messages checked once, in the format of transformers and OpenAI.

A row (or an API request) may carry ``messages`` instead of one user ``text``: a list of
``{"role": "system"|"user"|"assistant"|"tool", "content": str}``. An assistant turn may
carry ``tool_calls`` (``[{"type": "function", "function": {"name": str, "arguments":
{...}}}]``, the arguments an object or its JSON text; ``[{"name", "arguments"}]`` is read
the same) and then ``content`` may be empty or ``None``. A tool turn may name its call
(``tool_call_id``, ``name``). ASA decides after the last message, which must be a user or a
tool turn: that is where the model answers.

:func:`check_messages` is the one check, used by the data readers (a bad row is skipped and
counted with its file, line and reason), by :class:`~asa_lib.api.ASA` and by
``asa generate`` (one ``ValueError`` naming the input, the message and the field). It
returns the messages in one normal form: every message with a string ``content``, tool
calls as ``{"type": "function", "function": {"name", "arguments": {...}}}`` (plus their
``id`` where given). Rendering is :func:`asa_lib.prompts.messages_for`.
"""

from __future__ import annotations

import json
from typing import Any

from asa_lib.params import short_repr

ROLES = ("system", "user", "assistant", "tool")
# A conversation longer than this is refused before it is rendered (its tokens are capped
# later by generation.max_prompt_tokens; this bounds the work of getting there).
MAX_MESSAGES = 1000
_KEYS = {
    "system": {"role", "content"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "tool_calls", "name"},
    "tool": {"role", "content", "tool_call_id", "name"},
}
ENDS = ("user", "tool")  # the roles a conversation may end on: the model answers next

Messages = list[dict[str, Any]]


class MessagesError(ValueError):
    """A conversation that cannot be used; the message names where and why."""


def _call(c: Any, where: str) -> dict[str, Any]:
    """One tool call in the normal form, or :class:`MessagesError`."""
    if not isinstance(c, dict):
        raise MessagesError(f"{where}: a tool call is an object, not {type(c).__name__}")
    fn = c.get("function", c) if c.get("type", "function") == "function" else None
    if not isinstance(fn, dict):
        raise MessagesError(f"{where}: a tool call is {{'type': 'function', 'function': {{...}}}}")
    name, args = fn.get("name"), fn.get("arguments", {})
    if not isinstance(name, str) or not name.strip():
        raise MessagesError(f"{where}: the call has no function name")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            raise MessagesError(
                f"{where}: arguments of {name!r} are not JSON ({short_repr(args)})"
            ) from None
    if not isinstance(args, dict):
        raise MessagesError(f"{where}: arguments of {name!r} are not an object")
    out: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": args}}
    if isinstance(c.get("id"), str):
        out["id"] = c["id"]
    return out


def check_messages(messages: Any, where: str = "messages") -> Messages:
    """``messages`` checked and in the normal form (a new list), or :class:`MessagesError`
    (a ``ValueError``) naming ``where``, the message (index and role) and the field.

    Refused: not a non-empty list, more than :data:`MAX_MESSAGES`, a message that is not an
    object, an unknown role or field, a ``content`` that is not a string (``None`` only on
    an assistant turn with tool calls), a system message after the first, tool calls that
    are not a list of calls, no user turn, and a last message that is not a user or tool
    turn. Control tokens in a message are not refused: they stay text when rendered
    (:mod:`asa_lib.prompts`).
    """
    if not isinstance(messages, list):
        raise MessagesError(f"{where}: messages are a list, not {type(messages).__name__}")
    if not messages:
        raise MessagesError(f"{where}: no messages")
    if len(messages) > MAX_MESSAGES:
        raise MessagesError(
            f"{where}: {len(messages)} messages, more than the limit of {MAX_MESSAGES}"
        )
    out: Messages = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise MessagesError(f"{where}, message {i}: an object, not {type(m).__name__}")
        role = m.get("role")
        at = f"{where}, message {i} (role {short_repr(role)})"
        if role not in ROLES:
            raise MessagesError(f"{at}: unknown role (expected one of {', '.join(ROLES)})")
        unknown = sorted(set(m) - _KEYS[role], key=str)
        if unknown:
            raise MessagesError(
                f"{at}: unknown field(s) {unknown} (a {role} message has "
                f"{', '.join(sorted(_KEYS[role]))})"
            )
        if role == "system" and i > 0:
            raise MessagesError(f"{at}: a system message may only be the first")
        calls = m.get("tool_calls")
        content = m.get("content")
        if content is None and role == "assistant" and calls:
            content = ""
        if "content" not in m and content is None:
            raise MessagesError(f"{at}: no 'content' (a chat message is {{'role', 'content'}})")
        if not isinstance(content, str):
            raise MessagesError(f"{at}: 'content' is {type(content).__name__}, not a string")
        msg: dict[str, Any] = {"role": role, "content": content}
        if calls is not None:
            if not isinstance(calls, list) or not calls:
                raise MessagesError(f"{at}: 'tool_calls' is a non-empty list of calls")
            msg["tool_calls"] = [_call(c, f"{at}, tool call {k}") for k, c in enumerate(calls)]
        for key in ("name", "tool_call_id"):
            if key in m:
                if not isinstance(m[key], str):
                    raise MessagesError(f"{at}: {key!r} is not a string")
                msg[key] = m[key]
        out.append(msg)
    if not any(m["role"] == "user" for m in out):
        raise MessagesError(f"{where}: no user message")
    last = out[-1]["role"]
    if last not in ENDS:
        raise MessagesError(
            f"{where}: the last message is {'an' if last[0] in 'aeiou' else 'a'} {last} turn; "
            "ASA decides where the model answers, "
            "after a user or tool turn"
        )
    return out


def parse_messages(value: Any, where: str = "messages") -> Messages:
    """:func:`check_messages` of a cell: a list, or its JSON text (a CSV cell)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise MessagesError(f"{where}: not JSON ({short_repr(value)})") from None
    return check_messages(value, where)


def last_turn(messages: Messages) -> str:
    """The content of the last message (the user's or the tool's turn the model answers):
    what a report shows of a conversation."""
    return messages[-1]["content"]


__all__ = [
    "ENDS",
    "MAX_MESSAGES",
    "ROLES",
    "Messages",
    "MessagesError",
    "check_messages",
    "last_turn",
    "parse_messages",
]
