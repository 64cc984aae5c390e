"""ASA at generation time: steer once at prefill, then greedy decode, batched and prefix-shared.

Each prompt's ``delta = gate * alpha_eff * v`` (computed by :mod:`asa_lib.gate`)
is added to the output of block L* at the last prompt position on the prefill
pass only (never on decode steps).

Generation is batched greedy decoding with left padding; each row carries its
own delta, so rows with different gates and vectors share a batch. A row stops
at EOS, or as soon as its tool call is complete (the end marker follows the
start marker): the decision is then known.

Draft-verified decoding (``generation.draft``): a steered row often repeats a
long prefix of its prompt's baseline output. That output (the *draft*, from the
generation cache) is checked in one forward pass over prompt + draft, steered
exactly as a prefill is; the longest prefix on which the greedy argmax agrees
is accepted, plus the argmax after it (the token the model picks at the first
disagreement). A row whose accepted tokens already end (EOS, a complete tool
call, ``max_new_tokens``) is done; the others continue greedily from prompt +
accepted tokens, with the delta again at the prompt's last token only. The
result is the plain greedy output; only floating point (a verify pass and
stepwise decoding sum in different orders) can tell them apart, at a near-tie.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .cache import GenerationCache, make_key
from .hooks import steer_last_prompt_token
from .models import LoadedModel, accepts_logits_to_keep, decoder_blocks
from .parallel import shard_units
from .params import PromptParams
from .prefix import (
    PrefixCache,
    cache_kwarg,
    cached_prefix,
    common_prefix_len,
    left_padded,
    needs_equal_suffix_lengths,
    right_padded,
    token_ids,
)
from .progress import progress
from .prompts import call_complete, render_prompts, triggered

# Rows are decoded in chunks of this many batches: the unit a data-parallel worker takes.
CHUNK_BATCHES = 4


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
        self.window = len(pp.tool_call_end) + 8  # tokens: every token decodes to >= 1 character

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
                    self.pp.tool_call_end in tail
                    and call_complete(
                        self.tok.decode(row[start:], skip_special_tokens=False), self.pp
                    )
                )
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _clean(
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


def _eos_ids(lm: LoadedModel) -> set[int]:
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
        0  # token positions run through the model, padding included, cached prefix not
    )
    forward_passes: int = 0  # model forward calls (prefills, decode steps, verify passes)

    def add(self, other: GenerationStats) -> None:
        """Add another call's counts (a data-parallel worker's) to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _finished(ids: list[int], eos_ids: set[int], tok, pp: PromptParams) -> bool:
    """Would one greedy generation have stopped within ``ids`` (EOS or a complete call)?"""
    return any(t in eos_ids for t in ids) or call_complete(
        tok.decode(ids, skip_special_tokens=False), pp
    )


@torch.no_grad()
def _generate_rows(
    lm: LoadedModel,
    ids: list[list[int]],
    n_gen: list[int],
    deltas: np.ndarray | None,
    layer: int,
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
    B, S = input_ids.shape[0], input_ids.shape[1] - P
    kw = {cache_kwarg(lm.model): prefix.expand(B)} if prefix is not None else {}
    eos = _eos_ids(lm)
    delta = None if deltas is None else torch.from_numpy(np.asarray(deltas, dtype=np.float32))
    # None: position -1 for every row (plain rows), bit-identical to the plain path
    positions = None if not any(n_gen) else torch.tensor([S - n - 1 for n in n_gen])
    starts = [P + S - n for n in n_gen]
    limits = [st + max_new_tokens for st in starts]
    with steer_last_prompt_token(decoder_blocks(lm.model)[layer], delta, positions):
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
        steps = out.shape[1] - (P + S)
        stats.tokens_forwarded += B * S + B * max(steps - 1, 0)
        stats.forward_passes += steps
    rows = out.tolist()
    return [
        _clean(row[st:lim], eos, tok.pad_token_id, tok, pp)
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
    rows = _generate_rows(lm, ids, [0] * len(ids), deltas, layer, max_new_tokens, pp, prefix)
    return [lm.tokenizer.decode(r, skip_special_tokens=False) for r in rows]


@torch.no_grad()
def verify_drafts(
    lm: LoadedModel,
    ids: list[list[int]],
    drafts: list[list[int]],
    deltas: np.ndarray | None,
    layer: int,
    prefix: PrefixCache | None = None,
    stats: GenerationStats | None = None,
) -> list[list[int]]:
    """One forward pass over prompt + draft per row; the greedy token at the prompt's end and after each draft token.

    Returns ``g`` with ``len(drafts[b]) + 1`` tokens per row: ``g[b][j]`` is
    the argmax after ``ids[b] + drafts[b][:j]``, with ``deltas[b]`` added to
    the output of block ``layer`` at the prompt's last token (as a steered
    prefill does). Rows are right-padded, so a real token never sees padding
    (exact for attention and LFM2's causal convolutions alike), with the
    shared ``prefix`` cache when given.
    """
    P = prefix.length if prefix is not None else 0
    if prefix is not None and any(x[:P] != prefix.ids for x in ids):
        raise ValueError("a prompt does not start with the shared prefix")
    B = len(ids)
    seqs = [x[P:] + list(d) for x, d in zip(ids, drafts)]
    input_ids, mask, pos, _ = right_padded(seqs, lm.tokenizer.pad_token_id, P, lm.device)
    ends = [len(x) - P - 1 for x in ids]  # the prompt's last token, in the window's columns
    W, first = input_ids.shape[1], min(ends)
    kw = (
        {cache_kwarg(lm.model): prefix.expand(B), "use_cache": True}
        if prefix is not None
        else {"use_cache": False}
    )
    if accepts_logits_to_keep(lm.model):
        kw["logits_to_keep"] = W - first
    else:
        first = 0
    delta = None if deltas is None else torch.from_numpy(np.asarray(deltas, dtype=np.float32))
    with steer_last_prompt_token(decoder_blocks(lm.model)[layer], delta, torch.tensor(ends)):
        logits = lm.model(input_ids=input_ids, attention_mask=mask, position_ids=pos, **kw).logits
    if stats is not None:
        stats.tokens_forwarded += B * W
        stats.forward_passes += 1
    out = []
    for b, (e, d) in enumerate(zip(ends, drafts)):
        # float32 argmax, as generate takes it (first index on a tie)
        out.append(logits[b, e - first : e - first + len(d) + 1].float().argmax(-1).tolist())
    return out


def accept(draft: list[int], greedy: list[int]) -> list[int]:
    """The accepted tokens: the draft's prefix that agrees with ``greedy``, then greedy's next token."""
    k = 0
    while k < len(draft) and greedy[k] == draft[k]:
        k += 1
    return list(draft[:k]) + [greedy[k]]


def _gen_batches(lm: LoadedModel, ids, idx: list[int], P: int, batch_size: int) -> list[list[int]]:
    """Batches of prompt indices, longest first; equal suffix lengths only where padding would leak."""
    order = sorted(idx, key=lambda i: -len(ids[i]))
    if P > 0 and needs_equal_suffix_lengths(lm.model):
        groups: dict[int, list[int]] = {}
        for i in order:
            groups.setdefault(len(ids[i]), []).append(i)
        return [
            g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)
        ]
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def share_prefix_for(setting: str, lm: LoadedModel) -> bool:
    """Resolve ``generation.share_prefix`` for this model and device."""
    if setting == "auto":
        return not (needs_equal_suffix_lengths(lm.model) and lm.device.type == "cuda")
    return setting == "always"


def shared_prefix(lm: LoadedModel, pp: PromptParams) -> PrefixCache | None:
    """The prefix every prompt of this format starts with (system text, demonstrations), cached."""
    probe = token_ids(lm, render_prompts(lm.tokenizer, pp, ["Alpha.", "Zulu?"]))
    P = common_prefix_len(probe)
    if P == 0:
        return None
    return cached_prefix(lm, probe[0][:P])  # computed once per model and format


def delta_key(delta: np.ndarray | None) -> str:
    """Cache key part for a signed steering: 'none' for no steering, else a hash of the exact delta."""
    if delta is None or not np.any(delta):
        return "none"
    return hashlib.sha256(np.ascontiguousarray(delta, dtype=np.float32).tobytes()).hexdigest()[:32]


# generation_config fields that make generate's greedy choice differ from the plain argmax
# a verify pass takes, with the values that leave it alone.
_ARGMAX_NEUTRAL = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
}


def greedy_is_argmax(model) -> bool:
    """True when the model's generation config adds nothing to greedy argmax (drafts can be verified)."""
    cfg = getattr(model, "generation_config", None)
    return cfg is None or all(getattr(cfg, k, None) in ok for k, ok in _ARGMAX_NEUTRAL.items())


def draft_for(setting: str, lm: LoadedModel) -> bool:
    """Resolve ``generation.draft``: "on" verifies drafts; "auto" only for float32 models.

    In float32 the verified outputs equal the plain path's in every test (and the
    oracle's). In bfloat16 on an H200 (benchmarks/RESULTS_gpu.md, random weights)
    a verify pass and stepwise decoding broke near-ties differently: 10 of 6,400
    decisions changed (99.8% identical) and the sweep was no faster (0.99x), so
    "auto" leaves drafts off for half-precision models.
    """
    if setting == "auto":
        return next(lm.model.parameters()).dtype == torch.float32
    return setting == "on"


def draft_min_acceptance_for(setting: str, lm: LoadedModel) -> float:
    """The share of draft tokens accepted below which a call stops verifying drafts.

    "on": 0 (always verify). "auto": a verify pass costs about as many token
    forwards as the draft is long, so where few draft tokens are accepted it
    only adds work; once the batches verified so far accepted less than 25%
    (CPU, where every forwarded token costs compute) or 5% (GPU, where a
    verify pass costs about one prefill) of their draft tokens, the rest of
    the call decodes plainly. These thresholds are estimates, not measured.
    """
    if setting != "auto":
        return 0.0
    return 0.05 if lm.device.type == "cuda" else 0.25


def identity(a: list[str], b: list[str], pp: PromptParams) -> dict[str, float]:
    """Output identity and decision (tool call triggered or not) identity of two output lists."""
    if len(a) != len(b):
        raise ValueError("the two output lists differ in length")
    n = len(a)
    same = sum(x == y for x, y in zip(a, b))
    dec = sum(triggered(x, pp) == triggered(y, pp) for x, y in zip(a, b))
    return {
        "n": n,
        "outputs_identical": same,
        "decisions_identical": dec,
        "output_identity": same / n if n else 1.0,
        "decision_identity": dec / n if n else 1.0,
    }


def generate_all(
    lm: LoadedModel,
    prompts: list[str],
    deltas: np.ndarray | None,
    layer: int,
    batch_size: int,
    max_new_tokens: int,
    pp: PromptParams,
    cache: GenerationCache | None = None,
    desc: str = "generate",
    share_prefix: bool = True,
    draft: bool = False,
    drafts: list[str | list[int] | None] | None = None,
    stats: GenerationStats | None = None,
    draft_min_acceptance: float = 0.0,
    shard: tuple[int, int] | None = None,
    sync: Callable[[], None] | None = None,
) -> tuple[list[str], int]:
    """Outputs for every prompt, reusing ``cache``; returns (outputs, number generated now).

    Each distinct (prompt, delta) pair is generated at most once; batches are
    sorted by prompt length, and the prompt format's shared prefix is computed
    once (``share_prefix``). Results are written to the cache after each batch,
    so an interrupted run loses at most one batch.

    With ``draft``, a steered row whose prompt has an unsteered (baseline)
    output in ``cache`` is verified against that output first (see the module
    docstring); ``drafts`` gives the drafts explicitly instead (one per
    prompt: token ids, a text, or None; any row may use one). Drafts are
    not used where the model's generation config changes greedy decoding
    (a repetition penalty, suppressed tokens, ...: :func:`greedy_is_argmax`),
    since a verify pass takes the plain argmax. Once the
    batches verified so far in a chunk accepted less than
    ``draft_min_acceptance`` of their draft tokens, the chunk's remaining rows
    decode plainly. ``stats`` collects counts. The cache keeps each output's
    token ids beside its text.

    The rows to generate are cut into chunks of ``CHUNK_BATCHES`` batches
    (longest prompts first), each decoded on its own. ``shard=(rank, world)``
    generates only every ``world``-th chunk from ``rank`` (a data-parallel
    worker, :mod:`asa_lib.parallel`); the outputs of the other chunks are then
    None in the returned list, and the count is of the rows generated here.
    Workers sharing a cache pass ``sync``, a barrier called after the cache
    has been read and before anything is written to it, so that every worker
    sees the same rows to generate and deals out the same chunks.
    """
    n = len(prompts)
    ctx = cache.context if cache is not None else ""
    keys = [
        make_key(ctx, prompts[i], delta_key(None if deltas is None else deltas[i]))
        for i in range(n)
    ]
    results: dict[str, str] = cache.get_many(keys) if cache is not None else {}
    todo: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k not in results and k not in todo:
            todo[k] = i
    if sync is not None:
        sync()
    if not todo:
        return [results[k] for k in keys], 0
    prefix = shared_prefix(lm, pp) if share_prefix else None
    ids = token_ids(lm, prompts)
    P = prefix.length if prefix is not None else 0
    if prefix is not None and any(ids[i][:P] != prefix.ids for i in todo.values()):
        prefix, P = None, 0  # a prompt that does not start with the format's prefix: no sharing
    tok, eos = lm.tokenizer, _eos_ids(lm)

    # The work is cut into chunks of rows (longest prompts first), each decoded on its own:
    # with ``shard`` a worker takes every ``world``-th chunk, and every batch is then the
    # batch one process would have run, so sharded results equal one process's bit for bit.
    order = sorted(todo.values(), key=lambda i: -len(ids[i]))
    chunk_rows = batch_size * CHUNK_BATCHES
    chunks = [order[s : s + chunk_rows] for s in range(0, len(order), chunk_rows)]
    if shard is not None:
        chunks = shard_units(chunks, *shard)
    mine = [i for c in chunks for i in c]
    if stats is not None:
        stats.generated += len(mine)

    def done(new: dict[int, list[int]], bar) -> None:
        texts = {keys[i]: tok.decode(r, skip_special_tokens=False) for i, r in new.items()}
        results.update(texts)
        if cache is not None:
            cache.put_many(texts, {keys[i]: r for i, r in new.items()})
        bar.update(len(new))

    # Drafts: explicit ones, else the cached baseline output of each steered row's prompt
    # (its token ids where the cache has them, else its text re-encoded).
    found: dict[int, str | list[int]] = {}
    draft = draft and greedy_is_argmax(lm.model)
    if draft and drafts is not None:
        found = {i: drafts[i] for i in mine if drafts[i] is not None}
    elif draft and cache is not None and deltas is not None:
        base = {
            i: make_key(ctx, prompts[i], "none") for i in mine if delta_key(deltas[i]) != "none"
        }
        base_ids = cache.get_tokens_many(list(base.values()))
        base_text = cache.get_many([k for k in base.values() if k not in base_ids])
        found = {
            i: base_ids.get(k, base_text.get(k))
            for i, k in base.items()
            if k in base_ids or k in base_text
        }
    as_text = [i for i, d in found.items() if isinstance(d, str)]
    for i, d in zip(as_text, token_ids(lm, [found[i] for i in as_text]) if as_text else []):
        found[i] = d
    draft_ids = {i: list(d)[:max_new_tokens] for i, d in found.items() if len(d) > 0}

    full: dict[int, list[int]] = {i: ids[i] for i in mine}  # prompt + tokens accepted so far
    n_gen: dict[int, int] = dict.fromkeys(mine, 0)
    with progress(len(mine), desc) as bar:
        for chunk in chunks:
            verify = sorted(
                (i for i in chunk if i in draft_ids),
                key=lambda i: -(len(ids[i]) + len(draft_ids[i])),
            )
            offered = accepted = 0
            for s in range(0, len(verify), batch_size):
                if offered and accepted < draft_min_acceptance * offered:
                    if stats is not None:
                        stats.drafts_dropped += len(verify) - s
                    break  # drafts do not pay here: the chunk's remaining rows decode plainly
                b = verify[s : s + batch_size]
                d = None if deltas is None else deltas[b]
                greedy = verify_drafts(
                    lm, [ids[i] for i in b], [draft_ids[i] for i in b], d, layer, prefix, stats
                )
                new: dict[int, list[int]] = {}
                for i, g in zip(b, greedy):
                    acc = accept(draft_ids[i], g)
                    offered += len(draft_ids[i])
                    accepted += len(acc) - 1
                    if stats is not None:
                        stats.drafted += 1
                        stats.draft_tokens += len(draft_ids[i])
                        stats.accepted_tokens += len(acc) - 1
                    # a fully accepted draft of max_new_tokens: no extra token
                    acc = acc[:max_new_tokens]
                    if len(acc) >= max_new_tokens or _finished(acc, eos, tok, pp):
                        new[i] = _clean(acc, eos, tok.pad_token_id, tok, pp)
                        if stats is not None:
                            stats.done_by_draft += 1
                    else:
                        full[i], n_gen[i] = ids[i] + acc, len(acc)
                if new:
                    done(new, bar)
            rest = [i for i in chunk if keys[i] not in results]
            for b in _gen_batches(lm, full, rest, P, batch_size):
                d = None if deltas is None else deltas[b]
                rows = _generate_rows(
                    lm,
                    [full[i] for i in b],
                    [n_gen[i] for i in b],
                    d,
                    layer,
                    max_new_tokens,
                    pp,
                    prefix,
                    stats,
                )
                done(dict(zip(b, rows)), bar)
    if shard is not None:
        return [results.get(k) for k in keys], len(mine)
    return [results[k] for k in keys], len(mine)
