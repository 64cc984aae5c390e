"""Prompt rendering: a user request and its tools, in the run's prompt format.

A prompt is ``[system, *demonstrations, user]`` rendered through the
tokenizer's chat template with the generation prompt appended. The system text
is ``prompt.system_template`` with ``{tools_json}`` replaced by the tool list.
Recognising a tool call in the output is :mod:`asa_lib.tools`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from asa_lib.params import PromptParams

Tools = list[dict[str, Any]]


def system_text(pp: PromptParams, tools: Tools | None = None) -> str:
    """The system text: the template with ``{tools_json}`` filled by ``tools`` (default: ``pp.tools``).

    With ``prompt.tools_in: chat_template`` the template holds no placeholder and is used as is.
    """
    if pp.tools_in == "chat_template":
        return pp.system_template
    return pp.system_template.replace(
        "{tools_json}", json.dumps(pp.tools if tools is None else tools)
    )


def messages_for(
    pp: PromptParams, user_text: str, tools: Tools | None = None
) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system_text(pp, tools)},
        *[dict(t) for t in pp.demonstrations],
        {"role": "user", "content": user_text},
    ]


def render_prompt(tokenizer, pp: PromptParams, user_text: str, tools: Tools | None = None) -> str:
    """The full prompt text of one request with its tools (default: ``pp.tools``), ending with
    the chat template's generation prompt."""
    kw = {}
    if pp.tools_in == "chat_template":
        kw["tools"] = pp.tools if tools is None else tools
    return tokenizer.apply_chat_template(
        messages_for(pp, user_text, tools), tokenize=False, add_generation_prompt=True, **kw
    )


def render_prompts(
    tokenizer, pp: PromptParams, texts: list[str], tools: list[Tools | None] | None = None
) -> list[str]:
    """:func:`render_prompt` of each text; ``tools[i]`` is text ``i``'s own tool list (None: ``pp.tools``)."""
    if tools is not None and len(tools) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(tools)} tool lists")
    return [
        render_prompt(tokenizer, pp, t, None if tools is None else tools[i])
        for i, t in enumerate(texts)
    ]


def prompt_format_sha256(pp: PromptParams) -> str:
    """A stable sha256 of the prompt format: system template, default tools, where tools go,
    call markers, demonstrations (a row's own tools are named per record, by tool-set id).

    Of compact JSON (UTF-8) that keeps the key order *inside* the tool schemas and
    demonstrations: ``{tools_json}`` renders them in that order, so two tool lists
    that differ only in key order render different prompts and hash differently.
    It changes with any field above; the order of the fields in the YAML does not matter.
    """
    fmt = {
        "system_template": pp.system_template,
        "tools": pp.tools,
        "tool_call_start": pp.tool_call_start,
        "tool_call_end": pp.tool_call_end,
        "demonstrations": pp.demonstrations,
        "tools_in": pp.tools_in,
    }
    text = json.dumps(fmt, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
