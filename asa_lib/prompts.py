"""Prompt rendering: a user request and its tools, in the run's prompt format.

A prompt is ``[system, *demonstrations, user]`` rendered through the
tokenizer's chat template with the generation prompt appended. The system text
is ``prompt.system_template`` with ``{tools_json}`` replaced by the tool list.
Recognising a tool call in the output is :mod:`asa_lib.tools`.
"""

from __future__ import annotations

import hashlib
import json

from asa_lib.params import PromptParams


def system_text(pp: PromptParams) -> str:
    return pp.system_template.replace("{tools_json}", json.dumps(pp.tools))


def messages_for(pp: PromptParams, user_text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system_text(pp)},
        *[dict(t) for t in pp.demonstrations],
        {"role": "user", "content": user_text},
    ]


def render_prompt(tokenizer, pp: PromptParams, user_text: str) -> str:
    """The full prompt text, ending with the chat template's generation prompt."""
    return tokenizer.apply_chat_template(
        messages_for(pp, user_text), tokenize=False, add_generation_prompt=True
    )


def render_prompts(tokenizer, pp: PromptParams, texts: list[str]) -> list[str]:
    return [render_prompt(tokenizer, pp, t) for t in texts]


def prompt_format_sha256(pp: PromptParams) -> str:
    """A stable sha256 of the prompt format: system template, tools, call markers, demonstrations.

    Of canonical JSON (keys sorted, no spaces, UTF-8), so it does not depend on
    the key order of the YAML it came from; it changes with any of the four.
    """
    fmt = {
        "system_template": pp.system_template,
        "tools": pp.tools,
        "tool_call_start": pp.tool_call_start,
        "tool_call_end": pp.tool_call_end,
        "demonstrations": pp.demonstrations,
    }
    text = json.dumps(fmt, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
