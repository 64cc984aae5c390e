"""Shared-prefix caching and batch padding, one owner for extraction and generation.

Every prompt of a run starts with the same system text (tool list) and
demonstration turns; that prefix is most of its tokens. :class:`PrefixCache`
runs the prefix once (batch 1) and hands out copies expanded to a batch, so a
forward pass only processes each prompt's own suffix.

Exactness:
- Extraction uses *right*-padded suffixes and reads each row at its own last
  real position. In a causal model a real token never sees the padding after
  it (attention is causal, LFM2's short convolutions are causal), so this is
  exact for every architecture.
- Generation needs the prompt's end aligned at the last position, so suffixes
  are *left*-padded and the padding sits between prefix and suffix. Attention
  masks it out, but LFM2's convolutions carry it into their state, so for
  models with conv layers batches hold suffixes of equal length only
  (:func:`needs_equal_suffix_lengths`).

:func:`right_padded` (extraction, draft verification) and :func:`left_padded`
(generation) build those batches.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable

import torch
from transformers import DynamicCache

from asa_lib.model.load import LoadedModel
from asa_lib.prompts import prompt_token_ids


def token_ids(lm: LoadedModel, prompts: list[str]) -> list[list[int]]:
    """Token ids of rendered prompts: :func:`asa_lib.prompts.prompt_token_ids` (control tokens
    from a request or its tools stay text)."""
    return prompt_token_ids(lm.tokenizer, prompts)


# A context length above this is no real one (transformers' "unset" model_max_length is 1e30).
_NO_REAL_CONTEXT = 10**9


class PromptTooLongError(ValueError):
    """A prompt with more tokens than ``generation.max_prompt_tokens`` or the model's context allows."""


def context_length(lm: LoadedModel) -> tuple[int, str] | None:
    """The model's context in tokens and where it is read: the config's
    ``max_position_embeddings`` or the tokenizer's ``model_max_length``, whichever is a real
    number (the smaller where both are); None where neither is."""
    found = []
    for value, source in (
        (getattr(lm.model.config, "max_position_embeddings", None), "max_position_embeddings"),
        (getattr(lm.tokenizer, "model_max_length", None), "the tokenizer's model_max_length"),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _NO_REAL_CONTEXT:
            found.append((value, source))
    return min(found) if found else None


def check_prompt_lengths(
    lm: LoadedModel,
    ids: list[list[int]],
    max_prompt_tokens: int | None,
    max_new_tokens: int = 0,
    name=lambda i: f"prompt {i + 1}",
) -> None:
    """Raise :class:`PromptTooLongError` for the first prompt longer than the limit, naming it
    (``name(i)``), its length and the limit: ``max_prompt_tokens``
    (``generation.max_prompt_tokens``; None: none) or the model's context less
    ``max_new_tokens`` (:func:`context_length`), whichever is smaller. Checked before any
    forward pass, so a huge prompt costs its tokens, not the model's memory for them."""
    limit, why = max_prompt_tokens, f"generation.max_prompt_tokens is {max_prompt_tokens}"
    ctx = context_length(lm)
    if ctx is not None and (limit is None or ctx[0] - max_new_tokens < limit):
        limit = ctx[0] - max_new_tokens
        why = f"the model's context is {ctx[0]} tokens ({ctx[1]})" + (
            f", {max_new_tokens} of them for max_new_tokens" if max_new_tokens else ""
        )
    if limit is None:
        return
    for i, x in enumerate(ids):
        if len(x) > limit:
            raise PromptTooLongError(
                f"{name(i)} has {len(x)} tokens, more than the {max(limit, 0)} allowed: {why}"
            )


def lcp(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def right_padded(suffixes: list[list[int]], pad_id: int, prefix_len: int, device):
    """(input_ids, attention_mask incl. the prefix, position_ids, last real index) for suffixes.

    Suffixes start at column 0 and padding follows them; ``input_ids`` holds
    the suffix columns only (the prefix comes from its cache), the mask and
    the position ids count the ``prefix_len`` cached tokens first.
    """
    S = max(len(x) for x in suffixes)
    B = len(suffixes)
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    mask = torch.zeros((B, prefix_len + S), dtype=torch.long)
    mask[:, :prefix_len] = 1
    for i, x in enumerate(suffixes):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, prefix_len : prefix_len + len(x)] = 1
    pos = (prefix_len + torch.arange(S)).expand(B, S)
    last = torch.tensor([len(x) - 1 for x in suffixes])
    return ids.to(device), mask.to(device), pos.to(device), last


def left_padded(suffixes: list[list[int]], pad_id: int, prefix_ids: list[int], device):
    """(input_ids, attention_mask) of prefix + left-padded suffixes, every row ending at the last column.

    Both are (B, P + S): the prefix ``prefix_ids`` (P tokens, possibly none)
    in every row, then padding, then the row's suffix; the mask hides the
    padding between prefix and suffix (``generate`` derives positions from it).
    """
    P = len(prefix_ids)
    S, B = max(len(x) for x in suffixes), len(suffixes)
    ids = torch.full((B, P + S), pad_id, dtype=torch.long)
    mask = torch.zeros((B, P + S), dtype=torch.long)
    for i, x in enumerate(suffixes):
        ids[i, :P] = torch.tensor(prefix_ids, dtype=torch.long)
        ids[i, P + S - len(x) :] = torch.tensor(x)
        mask[i, :P] = 1
        mask[i, P + S - len(x) :] = 1
    return ids.to(device), mask.to(device)


def needs_equal_suffix_lengths(model) -> bool:
    """True for models whose padding between prefix and suffix would leak (conv/recurrent layers)."""
    types = getattr(model.config, "layer_types", None) or []
    return any(t not in ("full_attention", "sliding_attention", "attention") for t in types)


def cache_kwarg(model) -> str:
    """Name of the cache argument of ``model.forward`` (``cache`` in newer 5.x, else ``past_key_values``)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class PrefixCache:
    """The cache of one shared prefix, computed once, copied per batch."""

    def __init__(self, lm: LoadedModel, prefix_ids: list[int]):
        self.lm = lm
        self.ids = list(prefix_ids)
        self.length = len(self.ids)
        cache = DynamicCache(config=lm.model.config)
        with torch.no_grad():
            lm.model(
                input_ids=torch.tensor([self.ids], device=lm.device),
                use_cache=True,
                **{cache_kwarg(lm.model): cache},
            )
        self.cache = cache

    def expand(self, batch_size: int):
        """A fresh copy of the prefix cache for ``batch_size`` rows (the original stays untouched).

        The prefix cache is immutable once built: every call, for any batch size
        (one row included), returns tensors with their own storage, so a model
        that updates its cache in place (LFM2's conv states) never writes into
        the shared prefix.

        Every batch-1 tensor held by a cache layer (attention keys/values, LFM2
        conv states) is broadcast to the batch. ``expand(...).clone()`` is
        used rather than ``Cache.reorder_cache``, whose ``index_select`` was
        measured 50x slower on CPU.
        """
        c = copy.copy(self.cache)
        c.layers = [_expand_layer(layer, batch_size) for layer in self.cache.layers]
        return c


def _expand_tensor(t, b: int):
    if isinstance(t, torch.Tensor) and t.ndim >= 2 and t.shape[0] == 1:
        # Always new storage. ``expand(1, ...).contiguous()`` would return ``t`` itself,
        # and LFM2's conv-state update writes into its cache tensors in place: a one-row
        # batch would then corrupt the shared prefix for every later batch.
        return t.expand(b, *t.shape[1:]).clone(memory_format=torch.contiguous_format)
    if isinstance(t, torch.Tensor):
        return t.clone()
    if isinstance(t, (list, tuple)):
        return type(t)(_expand_tensor(x, b) for x in t)
    if isinstance(t, dict):
        return {k: _expand_tensor(v, b) for k, v in t.items()}
    return copy.deepcopy(t)


def _expand_layer(layer, b: int):
    new = copy.copy(layer)
    for k, v in vars(layer).items():
        setattr(new, k, _expand_tensor(v, b))
    return new


# Prefix caches kept per model (the most recently used ones): each holds the keys and
# values of a whole shared prefix, so a long-lived model must not collect one per call.
MAX_CACHED_PREFIXES = 8


def cached_prefix(lm, ids: list[int]) -> PrefixCache:
    """The prefix cache of ``ids`` for ``lm``, computed once per model and token prefix.

    ``lm.prefixes`` holds the last :data:`MAX_CACHED_PREFIXES` of them (cleared
    where the weights change).
    """
    key = tuple(ids)
    if key in lm.prefixes:
        lm.prefixes[key] = lm.prefixes.pop(key)  # most recently used last
    else:
        lm.prefixes[key] = PrefixCache(lm, list(key))
        while len(lm.prefixes) > MAX_CACHED_PREFIXES:
            lm.prefixes.pop(next(iter(lm.prefixes)))
    return lm.prefixes[key]


def shared_prefix_len(ids: Iterable[list[int]]) -> int:
    """How many leading tokens every row shares, leaving each row at least one token of its own.

    0 for fewer than two rows (a prefix run once for one row saves nothing).
    ``ids`` may be a stream of rows (extraction reads them in chunks).
    """
    prefix: list[int] | None = None
    shortest, n = None, 0
    for x in ids:
        n += 1
        prefix = list(x) if prefix is None else prefix[: lcp(prefix, x)]
        shortest = len(x) if shortest is None else min(shortest, len(x))
    if n < 2 or prefix is None:
        return 0
    return max(min(len(prefix), shortest - 1), 0)


def shared_prefix(lm, ids: list[list[int]]) -> PrefixCache | None:
    """The one way extraction and generation share a prefix: the cache of the tokens every row
    of ``ids`` starts with (:func:`shared_prefix_len`), or None when they share none.

    The prefix comes from the rows themselves, not from the prompt format, so rows that
    bring their own system text or tools still share what they have in common.
    """
    P = shared_prefix_len(ids)
    return cached_prefix(lm, ids[0][:P]) if P > 0 else None
