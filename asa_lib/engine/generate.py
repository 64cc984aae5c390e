"""ASA at generation time: steer once at prefill, then greedy decode, batched and prefix-shared.

Each prompt's ``delta = gate * alpha_eff * v`` (computed by :mod:`asa_lib.method.gate`)
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

import numpy as np

from asa_lib.engine.batching import CHUNK_BATCHES, _gen_batches, shard_units
from asa_lib.engine.cache import GenerationCache, make_key
from asa_lib.engine.decode import GenerationStats, _clean, _eos_ids, _finished, _generate_rows
from asa_lib.engine.draft import accept, greedy_is_argmax, verify_drafts
from asa_lib.engine.prefix import (
    PrefixCache,
    cached_prefix,
    common_prefix_len,
    needs_equal_suffix_lengths,
    token_ids,
)
from asa_lib.model.load import LoadedModel
from asa_lib.params import PromptParams
from asa_lib.progress import progress
from asa_lib.prompts import render_prompts
from asa_lib.tools import triggered


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
    worker, :mod:`asa_lib.run.parallel`); the outputs of the other chunks are then
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
