"""Prompt rendering: a request and its tools, in the run's prompt format.

A request is one user text or a conversation (chat messages, :mod:`asa_lib.chat`). A
prompt is ``[system, *demonstrations, *conversation]`` rendered through the tokenizer's
chat template with the generation prompt appended; a user text is a conversation of one
user turn. The system text is ``prompt.system_template`` with ``{tools_json}`` replaced by
the tool list (``tools_in: system_text``), or the template as it is with the tools given to
the chat template (``tools_in: chat_template``). A conversation's own system message
follows the format's system text in the same system turn, after a blank line. Earlier
assistant turns keep their tool calls: the chat template renders them
(``chat_template``), or they are written the way the format writes a call, each as
``tool_call_start`` + ``{"name": ..., "arguments": {...}}`` + ``tool_call_end`` after the
turn's text (``system_text``). Recognising a tool call in the output is :mod:`asa_lib.tools`.

Control tokens stay the template's. A request's messages and its tools are data: a
control token written in them (``<|im_end|>``, ``<|im_start|>assistant``: a
forged turn) must not become that token. Rendering wraps each one in two
private-use characters (:data:`MARK_START`, :data:`MARK_END`), and
:func:`prompt_token_ids`, the one place prompts are tokenized, encodes a
wrapped token as plain text; the chat template's own control tokens, the system
template's and the demonstrations' (the params' author's) stay tokens. A prompt
without such text renders and tokenizes exactly as without this step.
"""

from __future__ import annotations

import json
import re
import weakref
from functools import lru_cache
from typing import Any

from asa_lib.chat import Messages
from asa_lib.params import ParamsError, PromptParams
from asa_lib.provenance import canonical_json, digest

Tools = list[dict[str, Any]]
# What a prompt is made from: one user turn's text, or a checked conversation.
Request = str | Messages

# A control token that came from a request or a tool list is wrapped in these two characters
# (Unicode private use; the two transformers' ``apply_chat_template(sanitize_control_tokens=True)``
# uses, so either encoder reads the other's marks).
MARK_START, MARK_END = "\U000f0000", "\U000f0001"


def _same(text: str) -> str:
    return text


def tools_for(pp: PromptParams, tools: Tools | None) -> Tools:
    """A request's tools: its own (``tools``), else the prompt format's (``prompt.tools``).

    The one rule, for rendering a prompt and for scoring its output.
    """
    return pp.tools if tools is None else tools


def system_text(pp: PromptParams, tools: Tools | None = None, mark=_same) -> str:
    """The system text: the template with ``{tools_json}`` filled by ``tools`` (default: ``pp.tools``).

    With ``prompt.tools_in: chat_template`` the template holds no placeholder and is used as is.
    ``mark`` is applied to the tool list's JSON (see :func:`control_token_marker`).
    """
    if pp.tools_in == "chat_template":
        return pp.system_template
    return pp.system_template.replace("{tools_json}", mark(json.dumps(tools_for(pp, tools))))


def messages_for(
    pp: PromptParams, request: Request, tools: Tools | None = None, mark=_same
) -> list[dict[str, Any]]:
    """``[system, *demonstrations, *conversation]`` (see the module docstring); ``mark`` is
    applied to the request's messages and its tools. ``request``: a user text, or messages
    already checked (:func:`asa_lib.chat.check_messages`)."""
    turns = [{"role": "user", "content": request}] if isinstance(request, str) else request
    system = system_text(pp, tools, mark)
    if turns and turns[0]["role"] == "system":  # the row's own: after the format's, one turn
        own = mark(turns[0]["content"])
        system = f"{system}\n\n{own}" if system else own
        turns = turns[1:]
    return [
        {"role": "system", "content": system},
        *[dict(t) for t in pp.demonstrations],
        *[_turn(pp, m, mark) for m in turns],
    ]


def call_text(pp: PromptParams, call: dict[str, Any], mark=_same) -> str:
    """An earlier tool call as the format writes one (``tools_in: system_text``):
    ``tool_call_start`` + ``{"name": ..., "arguments": {...}}`` + ``tool_call_end``; the
    markers are the format's, the call itself is data (``mark``)."""
    fn = call["function"]
    body = json.dumps({"name": fn["name"], "arguments": fn["arguments"]}, ensure_ascii=False)
    return pp.tool_call_start + mark(body) + pp.tool_call_end


def _turn(pp: PromptParams, m: dict[str, Any], mark) -> dict[str, Any]:
    """One message of a conversation as the chat template is given it."""
    out = {k: _mark_values(v, mark) for k, v in m.items() if k != "role"}
    out = {"role": m["role"], **out}
    if m.get("tool_calls") and pp.tools_in != "chat_template":  # the format writes the calls
        out.pop("tool_calls")
        out["content"] = mark(m["content"]) + "".join(
            call_text(pp, c, mark) for c in m["tool_calls"]
        )
    return out


def request_key(request: Request) -> str:
    """A request as one string, for digests and de-duplication: a text as it is, a
    conversation as its canonical JSON (key order kept) after a marker no text starts with."""
    if isinstance(request, str):
        return request
    return "\0messages\0" + canonical_json(request, sort_keys=False).decode("utf-8")


def control_tokens(tokenizer) -> tuple[str, ...]:
    """The tokenizer's control tokens: its special tokens, and the added tokens its chat template
    writes (transformers' rule for ``sanitize_control_tokens``; whitespace tokens excepted)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # named templates
        template = "\0".join(str(t) for t in template.values())
    return tuple(
        t.content
        for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
        if t.special or (t.content in template and not t.content.isspace())
    )


@lru_cache(maxsize=16)
def _control_re(tokens: tuple[str, ...]) -> re.Pattern:
    longest_first = sorted(tokens, key=len, reverse=True)  # a token before the tokens it contains
    return re.compile("|".join(map(re.escape, longest_first)) or "(?!)")


def control_token_marker(tokenizer):
    """``mark(text)``: ``text`` with each control token wrapped in :data:`MARK_START` /
    :data:`MARK_END` (and any of those two characters it held dropped, so none can be forged)."""
    rx = _control_re(control_tokens(tokenizer))

    def mark(text: str) -> str:
        text = text.replace(MARK_START, "").replace(MARK_END, "")
        return rx.sub(lambda m: MARK_START + m.group(0) + MARK_END, text)

    return mark


def _mark_values(obj: Any, mark) -> Any:
    """``mark`` applied to every string value of a JSON-like ``obj`` (not to dict keys)."""
    if isinstance(obj, str):
        return mark(obj)
    if isinstance(obj, dict):
        return {k: _mark_values(v, mark) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_mark_values(v, mark) for v in obj]
    return obj


def render_prompt(tokenizer, pp: PromptParams, request: Request, tools: Tools | None = None) -> str:
    """The full prompt text of one request (a user text or checked messages) with its tools
    (default: ``pp.tools``), ending with the chat template's generation prompt; control tokens
    in the request and the tools are marked as text (see the module docstring)."""
    mark = control_token_marker(tokenizer)
    kw = {}
    if pp.tools_in == "chat_template":
        kw["tools"] = _mark_values(tools_for(pp, tools), mark)
    return tokenizer.apply_chat_template(
        messages_for(pp, request, tools, mark), tokenize=False, add_generation_prompt=True, **kw
    )


# The tool that shows whether a chat template writes the tools it is given (a name no
# template writes by itself): see check_template_renders_tools.
SENTINEL_TOOL: dict[str, Any] = {
    "name": "asa_sentinel_tool_4f1c",
    "description": "Shows that the chat template writes the tools it is given.",
    "parameters": {"type": "object", "properties": {}},
}

# tokenizer -> the (chat template, prompt format sha256) pairs that passed the check
_TOOLS_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_template_renders_tools(tokenizer, pp: PromptParams) -> None:
    """Refuse ``prompt.tools_in: chat_template`` with a chat template that ignores ``tools=``.

    Such a template (SmolLM2's, the tiny model's ChatML) drops every tool without a word:
    rows with different tools render one prompt, with no tool in it. :data:`SENTINEL_TOOL`
    is rendered once per tokenizer, template and prompt format, and its name must be in the
    prompt; else :class:`~asa_lib.params.ParamsError`, one line naming
    ``tools_in: system_text``. Nothing is checked with ``tools_in: system_text``.
    """
    if pp.tools_in != "chat_template":
        return
    key = (str(getattr(tokenizer, "chat_template", None)), prompt_format_sha256(pp))
    try:
        seen = _TOOLS_CHECKED.setdefault(tokenizer, set())
    except TypeError:  # not weakly referenceable: checked every time
        seen = set()
    if key in seen:
        return
    if SENTINEL_TOOL["name"] not in render_prompt(tokenizer, pp, "Hi", [SENTINEL_TOOL]):
        raise ParamsError(
            "prompt.tools_in: chat_template, but this tokenizer's chat template ignores tools= "
            "(a tool given to it is not in the prompt), so every tool would be dropped; use "
            "prompt.tools_in: system_text with {tools_json} in prompt.system_template"
        )
    seen.add(key)


def render_messages(tokenizer, messages: list[dict[str, Any]]) -> str:
    """Chat messages rendered by the tokenizer's chat template with the generation prompt; the
    messages are data: control tokens in their values are marked as text."""
    return tokenizer.apply_chat_template(
        _mark_values(messages, control_token_marker(tokenizer)),
        tokenize=False,
        add_generation_prompt=True,
    )


@lru_cache(maxsize=16)
def _marks_re(tokens: tuple[str, ...]) -> re.Pattern:
    inner = _control_re(tokens).pattern
    return re.compile(f"{MARK_START}({inner}){MARK_END}|[{MARK_START}{MARK_END}]")


def prompt_token_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of rendered prompts (no special tokens added: the template has them).

    The one tokenizer of prompts. A prompt holding marks (:func:`control_token_marker`) is
    encoded piece by piece: each marked control token as plain text, the rest as usual; a lone
    mark is dropped but still separates the text around it. Other prompts are encoded in one batch,
    as the tokenizer would.
    """
    prompts = list(prompts)
    out: list[list[int] | None] = [None] * len(prompts)
    marked = [i for i, p in enumerate(prompts) if MARK_START in p or MARK_END in p]
    plain = sorted(set(range(len(prompts))) - set(marked))
    if plain:
        ids = tokenizer([prompts[i] for i in plain], add_special_tokens=False)["input_ids"]
        for i, x in zip(plain, ids):
            out[i] = list(x)
    if marked:
        marks = _marks_re(tuple(sorted(tokenizer.added_tokens_encoder)))
        newline = tokenizer.encode("\n", add_special_tokens=False)
        for i in marked:
            out[i] = _encode_marked(tokenizer, prompts[i], marks, newline)
    return out  # type: ignore[return-value]


def _encode_marked(tokenizer, text: str, marks: re.Pattern, newline: list[int]) -> list[int]:
    # split: [text, marked token, text, marked token, ..., text]; None for a lone mark
    pieces = marks.split(text)
    ids = tokenizer.encode(pieces[0], add_special_tokens=False)
    for k, piece in enumerate(pieces[1:], start=1):
        if not piece:
            continue
        as_text = k % 2 == 1
        piece_ids = _encode_piece(tokenizer, piece, as_text, newline)
        if as_text and tokenizer.convert_tokens_to_ids(piece) in piece_ids:
            raise ValueError(
                f"cannot keep {piece!r} as text: this tokenizer makes the token from plain text"
            )
        ids += piece_ids
    return ids


def _as_text(tokenizer, text: str) -> list[int]:
    """``text`` encoded without matching any added token, special or not."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python tokenizer: its special tokens split, as transformers does
        return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    splits = [text]
    if backend.pre_tokenizer is not None:
        splits = [s for s, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
    return [t.id for s in splits for t in backend.model.tokenize(s)]


def _encode_piece(tokenizer, piece: str, as_text: bool, newline: list[int]) -> list[int]:
    """A piece from inside a prompt. Encoded after a newline that is then removed, so that
    SentencePiece does not add the space it adds at the start of a text (transformers' way)."""

    def encode(t: str) -> list[int]:
        return _as_text(tokenizer, t) if as_text else tokenizer.encode(t, add_special_tokens=False)

    ids = encode("\n" + piece)
    if newline and ids[: len(newline)] == newline:
        return ids[len(newline) :]
    return encode(piece)


def render_prompts(
    tokenizer, pp: PromptParams, requests: list[Request], tools: list[Tools | None] | None = None
) -> list[str]:
    """:func:`render_prompt` of each request (a text or checked messages); ``tools[i]`` is
    request ``i``'s own tool list (None: ``pp.tools``)."""
    if tools is not None and len(tools) != len(requests):
        raise ValueError(f"{len(requests)} requests but {len(tools)} tool lists")
    return [
        render_prompt(tokenizer, pp, t, None if tools is None else tools[i])
        for i, t in enumerate(requests)
    ]


# How prompts become tokens; part of the prompt format's sha256. Change it with the tokenization.
PROMPT_TOKENIZATION = "control tokens in requests and tools are text"


def prompt_format_sha256(pp: PromptParams) -> str:
    """A stable sha256 of the prompt format: system template, default tools, where tools go,
    call markers, demonstrations (a row's own tools are named per record, by tool-set id), and
    how prompts are tokenized (:data:`PROMPT_TOKENIZATION`).

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
        "tokenization": PROMPT_TOKENIZATION,
    }
    return digest(canonical_json(fmt, sort_keys=False))
