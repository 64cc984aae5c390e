"""Prompt-major execution: a batch of prompts is prefilled once, every config continues from it.

ASA steers only the last prompt position, at block L*, on the prefill pass. So
the keys, values (and LFM2 conv states) of positions ``0 .. n-2`` are the same
for the baseline, for every sweep config and for every draft verification.
:class:`PromptBatch` runs those positions once for a batch of left-padded
prompts (after the shared prefix, when there is one) and hands out *forks*:
copies of that state for any selection of its rows (a row may be taken
several times, once per config), each continued by :func:`decode_rows`
(the last prompt token with the row's delta, then greedy decoding) or by a
verify pass over the last prompt token and a draft.

A fork copies the state of the rows it takes (``index_select``: new storage),
so nothing a continuation writes (attention appends, LFM2's in-place conv
state updates) reaches the shared state or another fork. Exactness: one
prefill over ``n - 1`` positions plus one step sums in another order than one
prefill over ``n``; outputs are the plain greedy ones up to that (tested
against an independent oracle, ``tests/test_promptmajor.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from asa_lib.engine.decode import GenerationStats, decode_rows
from asa_lib.engine.prefix import (
    PrefixCache,
    cache_kwarg,
    left_padded,
    needs_equal_suffix_lengths,
)
from asa_lib.model.hooks import read_first_pass, skip_blocks, steer_rows_at
from asa_lib.model.load import (
    LoadedModel,
    accepts_logits_to_keep,
    blocks_can_be_skipped,
    decoder_blocks,
)
from asa_lib.params import PromptParams


def _select(t, idx: torch.Tensor, b: int):
    """``t`` (a cache layer's attribute) for the rows ``idx`` of a batch of ``b``, in new storage."""
    if isinstance(t, torch.Tensor) and t.ndim >= 2 and t.shape[0] == b:
        return t.index_select(0, idx.to(t.device))
    if isinstance(t, torch.Tensor):
        return t.clone()
    if isinstance(t, (list, tuple)):
        return type(t)(_select(x, idx, b) for x in t)
    if isinstance(t, dict):
        return {k: _select(v, idx, b) for k, v in t.items()}
    return copy.deepcopy(t)


def fork_cache(cache, rows: list[int], batch: int, layers: Sequence[int] | None = None):
    """A copy of ``cache`` (a batch of ``batch`` rows) holding the rows ``rows``, in that order.

    Every tensor is new storage, so the copy may be appended to or updated in
    place (LFM2's conv states) without touching ``cache``. ``layers``: copy only these
    cache layers; the others are ``cache``'s own objects, for a pass that skips their
    blocks (:func:`~asa_lib.model.hooks.skip_blocks`) and so never writes them.
    """
    idx = torch.tensor(rows, dtype=torch.long)
    keep = set(range(len(cache.layers))) if layers is None else set(layers)
    c = copy.copy(cache)
    new_layers = []
    for i, layer in enumerate(cache.layers):
        if i not in keep:
            new_layers.append(layer)
            continue
        new = copy.copy(layer)
        for k, v in vars(layer).items():
            setattr(new, k, _select(v, idx, batch))
        new_layers.append(new)
    c.layers = new_layers
    return c


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows, as ``generate`` derives them from the attention mask."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


class PromptBatch:
    """Left-padded prompts whose positions ``0 .. n-2`` are computed once.

    ``ids``: each row's prompt tokens (all starting with ``prefix.ids`` when a
    prefix is given; with LFM2's conv layers and a prefix, all of one length:
    padding between prefix and suffix would leak into the conv state).
    Columns ``0 .. T-2`` of the padded batch are in :attr:`cache` (the
    prefix's from its cache), column ``T - 1`` holds every prompt's last token.
    """

    @torch.no_grad()
    def __init__(
        self,
        lm: LoadedModel,
        ids: list[list[int]],
        prefix: PrefixCache | None,
        stats: GenerationStats | None = None,
    ):
        self.lm = lm
        P = prefix.length if prefix is not None else 0
        if prefix is not None and any(x[:P] != prefix.ids for x in ids):
            raise ValueError("a prompt does not start with the shared prefix")
        if any(len(x) <= P for x in ids):
            raise ValueError("every prompt needs a token after the shared prefix")
        self.input_ids, self.mask = left_padded(
            [x[P:] for x in ids],
            lm.tokenizer.pad_token_id,
            prefix.ids if prefix is not None else [],
            lm.device,
        )
        self.B, self.T = self.input_ids.shape
        self.cached = self.T - 1
        self.cache = prefix.expand(self.B) if prefix is not None else None
        if self.cached > P:  # the rows' own tokens before their last one
            if self.cache is None:
                self.cache = DynamicCache(config=lm.model.config)
            kw = {cache_kwarg(lm.model): self.cache, "use_cache": True}
            if accepts_logits_to_keep(lm.model):
                kw["logits_to_keep"] = 1  # no logits are read: keep the LM head's work minimal
            lm.model(
                input_ids=self.input_ids[:, P : self.cached],
                attention_mask=self.mask[:, : self.cached],
                position_ids=position_ids(self.mask)[:, P : self.cached],
                **kw,
            )
            if stats is not None:
                stats.tokens_forwarded += self.B * (self.cached - P)
                stats.forward_passes += 1
                stats.padded_tokens += int((self.mask[:, P : self.cached] == 0).sum())
        elif self.cache is None:
            self.cached = 0  # one-token prompts and no prefix: nothing to share
        if stats is not None:
            stats.prompt_prefills += self.B

    def fork(self, rows: list[int]):
        """The shared state of ``rows`` (indices into this batch; repeats allowed), or None."""
        return None if self.cache is None else fork_cache(self.cache, rows, self.B)

    def decode(
        self,
        rows: list[int],
        deltas: np.ndarray | None,
        layer: int,
        max_new_tokens: int,
        pp: PromptParams,
        stats: GenerationStats | None = None,
        accepted: list[list[int]] | None = None,
        read_state: list | None = None,
    ) -> list[list[int]]:
        """Greedy outputs of ``rows`` from a fork of the shared state: :func:`decode_forks`
        of this batch alone."""
        acc = accepted if accepted is not None else [[] for _ in rows]
        return decode_forks(
            [(self, rows, acc)], deltas, layer, max_new_tokens, pp, stats, read_state
        )

    def _window(self, rows: list[int], drafts: list[list[int]], W: int):
        """Inputs of a verify pass over ``rows``: (ids, attention mask, position ids), each row's
        last prompt token then its draft, right-padded to ``W`` columns."""
        lm, n = self.lm, len(rows)
        win = torch.full((n, W), lm.tokenizer.pad_token_id, dtype=torch.long)
        win_mask = torch.zeros((n, W), dtype=torch.long)
        last = self.input_ids[rows, -1].cpu()
        for j, d in enumerate(drafts):
            win[j, 0] = last[j]
            win[j, 1 : 1 + len(d)] = torch.tensor(list(d), dtype=torch.long)
            win_mask[j, : 1 + len(d)] = 1
        mask = torch.cat([self.mask[rows, : self.cached], win_mask.to(lm.device)], 1)
        first = self.mask[rows].long().sum(-1, keepdim=True) - 1  # the last prompt token's position
        return win.to(lm.device), mask, first + torch.arange(W, device=lm.device)

    @torch.no_grad()
    def verify(
        self,
        rows: list[int],
        drafts: list[list[int]],
        deltas: np.ndarray | None,
        layer: int | Sequence[int],
        stats: GenerationStats | None = None,
    ) -> list[list[int]]:
        """One forward pass over the last prompt token + draft of each row, from a fork.

        Returns ``len(drafts[j]) + 1`` greedy tokens per row: the argmax after the
        prompt (steered by ``deltas[j]`` at block ``layer``, or ``layer[j]``, as a prefill is) and
        after each draft token. The drafts are right-padded: a real token never
        sees the padding after it.

        Where a row and its draft come several times (one prompt's configs verify its baseline
        output) and the model's blocks can be skipped
        (:func:`~asa_lib.model.load.blocks_can_be_skipped`), the pass is split at the lowest
        steering block ``l``: below the delta every config computes the same thing, so blocks
        ``0 .. l`` run once per distinct window, and each row runs only blocks ``l + 1 ..``
        on that output (plus its delta). The greedy tokens are the same up to rounding that
        depends on the batch a block sees (blocks 0 .. l see one row per prompt).
        """
        lm = self.lm
        n = len(rows)
        W = 1 + max(len(d) for d in drafts)
        blocks = decoder_blocks(lm.model)
        N = len(blocks)
        layers = (
            [int(layer)] * n if isinstance(layer, (int, np.integer)) else [int(x) for x in layer]
        )
        keys = [(r, tuple(d)) for r, d in zip(rows, drafts)]
        distinct = list(dict.fromkeys(keys))
        delta = None if deltas is None else torch.from_numpy(np.asarray(deltas, dtype=np.float32))
        win, mask, pos = self._window(rows, drafts, W)
        if self.cache is not None and len(distinct) < n and blocks_can_be_skipped(lm.model):
            low = min(layers)
            # 1. blocks 0 .. low, once per distinct window; the LM head on one position only
            drows = [r for r, _ in distinct]
            dwin, dmask, dpos = self._window(drows, [list(d) for _, d in distinct], W)
            kw: dict = {
                "use_cache": True,
                cache_kwarg(lm.model): fork_cache(self.cache, drows, self.B, range(low + 1)),
            }
            if accepts_logits_to_keep(lm.model):
                kw["logits_to_keep"] = 1
            with skip_blocks(blocks, range(low + 1, N)), read_first_pass(blocks[low]) as seen:
                lm.model(input_ids=dwin, attention_mask=dmask, position_ids=dpos, **kw)
            # 2. blocks low + 1 .., per row, on that output; the rows steered at ``low`` get their
            # delta added to it here (as the hook adds it to the block's output), the others by
            # the hooks at their own blocks
            at = {k: j for j, k in enumerate(distinct)}
            x = seen.state[torch.tensor([at[k] for k in keys], device=seen.state.device)]
            here = torch.tensor([x_ == low for x_ in layers])
            rest = None
            if delta is not None:
                d = delta.to(device=x.device, dtype=x.dtype)
                x[here.to(x.device), 0] += d[here.to(d.device)]
                rest = torch.where(here[:, None], torch.zeros_like(delta), delta)
            kw = {
                "use_cache": True,
                cache_kwarg(lm.model): fork_cache(self.cache, rows, self.B, range(low + 1, N)),
            }
            above = [x_ if x_ > low else min(low + 1, N - 1) for x_ in layers]  # zero rows there
            with (
                skip_blocks(blocks, range(low + 1)),
                steer_rows_at(blocks, rest, above, torch.zeros(n, dtype=torch.long)),
            ):
                logits = lm.model(
                    inputs_embeds=x, attention_mask=mask, position_ids=pos, **kw
                ).logits
            if stats is not None:
                # a FLOP proxy: a position run through k of the N blocks counts k / N
                stats.tokens_forwarded += round(
                    (len(distinct) * W * (low + 1) + n * W * (N - low - 1)) / N
                )
                stats.forward_passes += 2
                stats.verified_from_block += n
        else:
            kw = {"use_cache": self.cache is not None}
            if self.cache is not None:
                kw[cache_kwarg(lm.model)] = self.fork(rows)
            at_blocks = layers[0] if isinstance(layer, (int, np.integer)) else layers
            with steer_rows_at(blocks, delta, at_blocks, torch.zeros(n, dtype=torch.long)):
                logits = lm.model(input_ids=win, attention_mask=mask, position_ids=pos, **kw).logits
            if stats is not None:
                stats.tokens_forwarded += n * W
                stats.forward_passes += 1
        if stats is not None:
            stats.forks += n
        # float32 argmax, as generate takes it (first index on a tie)
        return [logits[j, : len(d) + 1].float().argmax(-1).tolist() for j, d in enumerate(drafts)]


def mergeable(batches: list[PromptBatch]) -> bool:
    """Whether forks of these batches can decode as one batch: every cache layer holds plain
    attention keys and values (``DynamicLayer``), which can be left-padded to one width;
    LFM2's conv states cannot (the padding would run through the convolution)."""
    return all(
        b.cache is not None
        and all(
            type(layer) is DynamicLayer and not needs_equal_suffix_lengths(b.lm.model)
            for layer in b.cache.layers
        )
        for b in batches
    )


def _left_pad_cache(cache, pad: int):
    """A fork's attention keys and values with ``pad`` empty (masked) positions in front."""
    if pad == 0:
        return cache
    for layer in cache.layers:
        layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, pad, 0))
        layer.values = torch.nn.functional.pad(layer.values, (0, 0, pad, 0))
    return cache


def _concat_caches(caches: list):
    if len(caches) == 1:
        return caches[0]
    out = caches[0]
    for j, layer in enumerate(out.layers):
        layer.keys = torch.cat([c.layers[j].keys for c in caches], 0)
        layer.values = torch.cat([c.layers[j].values for c in caches], 0)
    return out


def decode_forks(
    parts: list[tuple[PromptBatch, list[int], list[list[int]]]],
    deltas: np.ndarray | None,
    layer: int | Sequence[int],
    max_new_tokens: int,
    pp: PromptParams,
    stats: GenerationStats | None = None,
    read_state: list | None = None,
) -> list[list[int]]:
    """Greedy outputs of rows of one or more prompt batches, decoded as one batch.

    ``parts``: ``(batch, rows, accepted)``: rows of a :class:`PromptBatch` (indices into it;
    repeats allowed) and, per row, the tokens already generated for it (an accepted draft
    prefix, returned first; ``[]`` for none). Each row runs its last prompt token with its
    ``deltas`` row at block ``layer`` (or ``layer[b]``, one block per row; the rows in the
    order of ``parts``), then decodes,
    from a fork of its batch's shared state. Batches of different widths are merged by
    left-padding their forks' keys and values (masked out; only where :func:`mergeable`).
    Every row must have as many accepted tokens: padding inside a row (before its last
    prompt token) was not exact on a tiny Llama, so the planner groups rows by that length.
    ``read_state``: a list that receives block ``layer``'s output at each row's last prompt
    token, (rows, H), before any steering (``layer`` one int then).
    """
    if read_state is not None and not isinstance(layer, int):
        raise ValueError("read_state reads one block: give one layer")
    if len(parts) > 1 and not mergeable([b for b, _, _ in parts]):
        raise ValueError("these prompt batches cannot be decoded as one batch")
    if len({len(a) for _, _, accs in parts for a in accs}) > 1:
        raise ValueError("rows decoded together need as many accepted tokens each")
    first = parts[0][0]
    lm, dev, pad_id = first.lm, first.lm.device, first.lm.tokenizer.pad_token_id
    C = max(b.cached for b, _, _ in parts)
    W = max(len(a) for _, _, accs in parts for a in accs)
    ids_all, mask_all, caches, accs_all = [], [], [], []
    for b, rows, accs in parts:
        n = len(rows)
        # the window after the shared columns: the last prompt token, then the accepted tokens
        # (as many in every row); every row ends at the last column
        last = b.input_ids[rows, -1:].cpu()
        win = torch.cat([last, torch.tensor(accs, dtype=torch.long).reshape(n, W)], 1)
        win_mask = torch.ones((n, 1 + W), dtype=torch.long)
        front = C - b.cached  # a narrower batch's columns, left-padded to the widest
        head = torch.full((n, front), pad_id, dtype=torch.long, device=dev)
        ids_all.append(torch.cat([head, b.input_ids[rows, : b.cached], win.to(dev)], 1))
        mask_all.append(
            torch.cat([torch.zeros_like(head), b.mask[rows, : b.cached], win_mask.to(dev)], 1)
        )
        fork = b.fork(rows)
        caches.append(_left_pad_cache(fork, front) if fork is not None else None)
        accs_all += accs
    ids, mask = torch.cat(ids_all, 0), torch.cat(mask_all, 0)
    cache = _concat_caches(caches) if caches[0] is not None else None
    T = ids.shape[1]
    starts = [T - len(a) for a in accs_all]
    block = decoder_blocks(lm.model)[layer] if isinstance(layer, int) else None
    with read_first_pass(block, enabled=read_state is not None) as seen:
        out = decode_rows(lm, ids, mask, cache, C, starts, deltas, layer, max_new_tokens, pp, stats)
    if read_state is not None:
        at = torch.tensor([st - 1 - C for st in starts])  # the window's last prompt token
        read_state.append(seen.state[torch.arange(len(starts)), at].float().cpu().numpy())
    if stats is not None:
        stats.forks += len(starts)
    return out
