"""Greedy decoding of one batch of rows, steered at the prompt's last token on the prefill pass.

Rows are left-padded so that every prompt ends at the last column; a row stops
at EOS or as soon as its tool call is complete (the end marker follows the
start marker). :mod:`asa_lib.engine.generate` drives it over all prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from asa_lib.engine.prefix import (
    PrefixCache,
    cache_kwarg,
    left_padded,
    token_ids,
)
from asa_lib.model.hooks import steer_rows_at
from asa_lib.model.load import LoadedModel, decoder_blocks
from asa_lib.params import PromptParams
from asa_lib.tools import CallMarkers, call_complete


class _StopAtCallEnd(StoppingCriteria):
    """Per-row stop once the generated text holds a complete tool call (or the row has its tokens).

    ``prompt_len``: the column where generated text begins, one for all rows or
    one per row (a row continued from accepted draft tokens starts earlier:
    its text includes them). ``limits[b]``: the sequence length at which row
    ``b`` has all its new tokens.

    A call completes on the step whose token ends its end marker, so each step
    first decodes only each row's last few tokens (enough to hold the marker)
    and decodes the whole row only where the marker is there: per step, the
    cost stays flat instead of growing with the row (256-row GPU batches
    decode every row on every step).
    """

    def __init__(
        self,
        tokenizer,
        prompt_len: int | list[int],
        pp: PromptParams,
        limits: list[int] | None = None,
    ):
        self.tok, self.prompt_len, self.pp, self.limits = tokenizer, prompt_len, pp, limits
        self.end = CallMarkers.of(pp).end
        self.window = len(self.end) + 8  # tokens: every token decodes to >= 1 character

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        n = input_ids.shape[1]
        starts = (
            self.prompt_len
            if isinstance(self.prompt_len, list)
            else [self.prompt_len] * len(input_ids)
        )
        rows = input_ids.tolist()  # one device-to-host copy per step, not one per row
        done = []
        for b, (row, start) in enumerate(zip(rows, starts)):
            if self.limits is not None and n >= self.limits[b]:
                done.append(True)
            else:
                tail = self.tok.decode(
                    row[max(start, n - self.window) :], skip_special_tokens=False
                )
                done.append(
                    self.end in tail
                    and call_complete(
                        self.tok.decode(row[start:], skip_special_tokens=False), self.pp
                    )
                )
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def clean_row(
    ids: list[int], eos_ids: set[int], pad_id: int | None, tok, pp: PromptParams
) -> list[int]:
    """A batch row cut where a one-row generation would have stopped.

    That is right after the first EOS, or right after the token that completed
    a tool call (the batch pads a finished row, and the pad may be the EOS
    token), whichever comes first; trailing padding is dropped.
    """
    for j, t in enumerate(ids):
        if t in eos_ids:
            ids = ids[: j + 1]
            break
    if call_complete(tok.decode(ids, skip_special_tokens=False), pp):
        for j in range(1, len(ids) + 1):
            if call_complete(tok.decode(ids[:j], skip_special_tokens=False), pp):
                return ids[:j]
    while ids and pad_id is not None and ids[-1] == pad_id and ids[-1] not in eos_ids:
        ids = ids[:-1]
    return ids


def eos_ids(lm: LoadedModel) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if lm.tokenizer.eos_token_id is not None:
        ids.add(lm.tokenizer.eos_token_id)
    return ids


@dataclass
class GenerationStats:
    """What a generation call did (summed over calls when the same object is passed again)."""

    generated: int = 0  # distinct (prompt, steering) rows produced now
    drafted: int = 0  # rows checked against a draft in a verify pass
    draft_tokens: int = 0  # draft tokens offered (cut at max_new_tokens)
    accepted_tokens: int = 0  # draft tokens the greedy argmax agreed with
    done_by_draft: int = 0  # rows finished by their verify pass alone (no decoding)
    drafts_dropped: int = (
        0  # rows with a draft left unverified (acceptance below the minimum so far)
    )
    tokens_forwarded: int = (
        0  # token positions run through the model, padding included, cached prefix not;
        # a position run through k of the N blocks counts k / N
    )
    forward_passes: int = 0  # model forward calls (prefills, decode steps, verify passes)
    padded_tokens: int = 0  # of tokens_forwarded: padding columns of a prompt's prefill
    prompt_prefills: int = 0  # prompt-major: prompts whose positions 0 .. n-2 were run once
    forks: int = 0  # prompt-major: rows continued from a prompt's shared prefill
    verified_from_block: int = (
        0  # rows whose verify pass ran only the blocks above their steering block
    )

    def add(self, other: GenerationStats) -> None:
        """Add another call's counts (a data-parallel worker's) to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def finished(ids: list[int], eos_ids: set[int], tok, pp: PromptParams) -> bool:
    """Would one greedy generation have stopped within ``ids`` (EOS or a complete call)?"""
    return any(t in eos_ids for t in ids) or call_complete(
        tok.decode(ids, skip_special_tokens=False), pp
    )


@torch.no_grad()
def generate_rows(
    lm: LoadedModel,
    ids: list[list[int]],
    n_gen: list[int],
    deltas: np.ndarray | None,
    layer: int | Sequence[int],
    max_new_tokens: int,
    pp: PromptParams,
    prefix: PrefixCache | None,
    stats: GenerationStats | None = None,
) -> list[list[int]]:
    """Greedy-continue each row; ``ids[b]`` is a prompt followed by ``n_gen[b]`` tokens already generated.

    Returns each row's generated tokens (the ``n_gen[b]`` given ones first),
    cut where one greedy generation would have stopped, at most
    ``max_new_tokens``. Rows are left-padded so that every row ends at the
    last column; the delta goes to the prompt's last token, ``n_gen[b] + 1``
    columns from the end, on the prefill pass only.
    """
    tok = lm.tokenizer
    P = prefix.length if prefix is not None else 0
    if prefix is not None and any(x[:P] != prefix.ids for x in ids):
        raise ValueError("a prompt does not start with the shared prefix")
    if any(not 0 <= n < max_new_tokens for n in n_gen):
        raise ValueError("every row needs at least one token left to generate")
    input_ids, mask = left_padded(
        [x[P:] for x in ids], tok.pad_token_id, prefix.ids if prefix is not None else [], lm.device
    )
    B, T = input_ids.shape
    cache = prefix.expand(B) if prefix is not None else None
    return decode_rows(
        lm,
        input_ids,
        mask,
        cache,
        P,
        [T - n for n in n_gen],
        deltas,
        layer,
        max_new_tokens,
        pp,
        stats,
    )


@torch.no_grad()
def decode_rows(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    cache,
    cached: int,
    starts: list[int],
    deltas: np.ndarray | None,
    layer: int | Sequence[int],
    max_new_tokens: int,
    pp: PromptParams,
    stats: GenerationStats | None = None,
) -> list[list[int]]:
    """Greedy-continue rows whose first ``cached`` columns are already in ``cache``.

    ``input_ids`` and ``mask`` are (B, T): every row ends at the last column. The
    generated text of row ``b`` begins at column ``starts[b]`` (tokens already
    generated, e.g. an accepted draft, sit in ``starts[b] .. T - 1``), so the
    prompt's last token is column ``starts[b] - 1``: that is where ``deltas[b]``
    is added to the output of block ``layer`` (or ``layer[b]``: one block per row), on the
    first forward pass only
    (the columns ``cached .. T - 1``). ``cache`` (None: none) is consumed: the
    model appends to it. Returns each row's generated tokens from ``starts[b]``,
    cut where one greedy generation would have stopped, at most
    ``max_new_tokens``.
    """
    tok = lm.tokenizer
    B, T = input_ids.shape
    W = T - cached  # the first forward pass's columns
    if W < 1 or any(not cached < st <= T for st in starts):
        raise ValueError("every row's prompt must end after the cached columns")
    n_gen = [T - st for st in starts]
    if any(not 0 <= n < max_new_tokens for n in n_gen):
        raise ValueError("every row needs at least one token left to generate")
    kw = {cache_kwarg(lm.model): cache} if cache is not None else {}
    eos = eos_ids(lm)
    delta = None if deltas is None else torch.from_numpy(np.asarray(deltas, dtype=np.float32))
    # None: position -1 for every row (plain rows), bit-identical to the plain path
    positions = None if not any(n_gen) else torch.tensor([st - 1 - cached for st in starts])
    limits = [st + max_new_tokens for st in starts]
    with steer_rows_at(decoder_blocks(lm.model), delta, layer, positions):
        out = lm.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens - min(n_gen),
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            min_p=None,
            pad_token_id=tok.pad_token_id,
            eos_token_id=sorted(eos),
            stopping_criteria=StoppingCriteriaList([_StopAtCallEnd(tok, starts, pp, limits)]),
            **kw,
        )
    if stats is not None:
        steps = out.shape[1] - T
        stats.tokens_forwarded += B * W + B * max(steps - 1, 0)
        stats.forward_passes += steps
        stats.padded_tokens += int((mask[:, cached:] == 0).sum())
    rows = out.tolist()
    return [
        clean_row(row[st:lim], eos, tok.pad_token_id, tok, pp)
        for row, st, lim in zip(rows, starts, limits)
    ]


@torch.no_grad()
def generate_batch(
    lm: LoadedModel,
    prompts: list[str],
    deltas: np.ndarray | None,
    layer: int,
    max_new_tokens: int,
    pp: PromptParams,
    prefix: PrefixCache | None = None,
    ids: list[list[int]] | None = None,
) -> list[str]:
    """Greedy outputs for one batch, each row steered by its own delta at block ``layer``.

    Rows are left-padded so that every prompt ends at position -1. With a
    ``prefix`` cache the shared prefix is not recomputed: the padding then sits
    between prefix and suffix, where the attention mask hides it.
    """
    ids = token_ids(lm, prompts) if ids is None else ids
    rows = generate_rows(lm, ids, [0] * len(ids), deltas, layer, max_new_tokens, pp, prefix)
    return [lm.tokenizer.decode(r, skip_special_tokens=False) for r in rows]
