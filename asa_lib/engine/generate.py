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

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from asa_lib.engine.batching import CHUNK_BATCHES, _gen_batches, shard_units
from asa_lib.engine.cache import GenerationCache, context_hash, make_key
from asa_lib.engine.decode import GenerationStats, _clean, _eos_ids, _finished, _generate_rows
from asa_lib.engine.draft import (
    accept,
    draft_for,
    draft_min_acceptance_for,
    greedy_is_argmax,
    verify_drafts,
)
from asa_lib.engine.prefix import (
    check_prompt_lengths,
    needs_equal_suffix_lengths,
    shared_prefix,
    token_ids,
)
from asa_lib.model.load import LoadedModel, tokenizer_digest
from asa_lib.params import GenerationParams, check_batch_size
from asa_lib.progress import progress
from asa_lib.tools import CallMarkers, triggered


def share_prefix_for(setting: str, lm: LoadedModel) -> bool:
    """Resolve ``generation.share_prefix`` for this model and device."""
    if setting == "auto":
        return not (needs_equal_suffix_lengths(lm.model) and lm.device.type == "cuda")
    return setting == "always"


@dataclass(frozen=True)
class GenerationSettings:
    """How generation decodes, resolved once for one model: the driver's only settings.

    ``markers``: the tool-call markers, all generation needs of the prompt format
    (a :class:`~asa_lib.tools.CallMarkers`; a ``PromptParams`` is turned into
    one); a row stops once its call is complete. Build it from
    params (plus CLI or API overrides) with :meth:`resolve`; tests and
    benchmarks may set fields directly.
    """

    max_new_tokens: int
    batch_size: int
    markers: CallMarkers
    share_prefix: bool = True
    draft: bool = False
    draft_min_acceptance: float = 0.0
    # the longest prompt run (None: only the model's context less max_new_tokens limits it)
    max_prompt_tokens: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "markers", CallMarkers.of(self.markers))
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens > 0):
            raise ValueError(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}"
            )
        object.__setattr__(self, "batch_size", check_batch_size(self.batch_size))
        m = self.max_prompt_tokens
        if m is not None and not (isinstance(m, int) and not isinstance(m, bool) and m > 0):
            raise ValueError(f"max_prompt_tokens must be a positive integer or None, got {m!r}")

    @classmethod
    def resolve(
        cls,
        generation: GenerationParams,
        markers: Any,
        lm: LoadedModel,
        *,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        share_prefix: str | None = None,
        draft: str | None = None,
    ) -> GenerationSettings:
        """The settings of ``params.generation`` for ``lm``; keyword arguments override it."""
        draft_setting = generation.draft if draft is None else draft
        return cls(
            max_new_tokens=generation.max_new_tokens if max_new_tokens is None else max_new_tokens,
            batch_size=generation.batch_size if batch_size is None else batch_size,
            markers=markers,
            share_prefix=share_prefix_for(
                generation.share_prefix if share_prefix is None else share_prefix, lm
            ),
            draft=draft_for(draft_setting, lm),
            draft_min_acceptance=draft_min_acceptance_for(draft_setting, lm),
            max_prompt_tokens=generation.max_prompt_tokens,
        )

    def without_drafts(self) -> GenerationSettings:
        return replace(self, draft=False, draft_min_acceptance=0.0)


def delta_key(delta: np.ndarray | None, layer: int) -> str:
    """Cache key part for a signed steering: 'none' for no steering, else a hash of the block and the exact delta.

    The same delta added at another block is another output (a ``vector: random``
    config with an absolute alpha has the same delta at every L*).
    """
    if delta is None or not np.any(delta):
        return "none"
    from asa_lib.provenance import digest

    values = np.ascontiguousarray(delta, dtype=np.float32).tobytes()
    return digest(f"block {int(layer)};", values, length=32)


def output_context(lm: LoadedModel, settings: GenerationSettings) -> dict[str, Any]:
    """What decides an output besides its prompt and its steering: part of every cache key.

    The model's weights (:func:`~asa_lib.model.load.weights_digest`: the tiny
    model's seed, a checkpoint, an adapter, the dtype), its tokenizer and
    generation config, the device, and the settings' ``max_new_tokens`` and
    call markers (a row stops at its end marker). Not the batch size, the
    shared prefix or drafts: they change how an output is computed, not which
    (the plain greedy output; tests/test_exactness.py, tests/test_draft.py).
    """
    gen_cfg = getattr(lm.model, "generation_config", None)
    gen = gen_cfg.to_diff_dict() if gen_cfg is not None else {}
    gen.pop("transformers_version", None)
    return {
        "weights": lm.weights,
        "tokenizer": tokenizer_digest(lm.tokenizer),
        "generation_config": gen,
        "device": lm.device.type,
        "max_new_tokens": settings.max_new_tokens,
        "markers": [settings.markers.start, settings.markers.end],
    }


def generation_keys(
    lm: LoadedModel,
    settings: GenerationSettings,
    prompts: list[str],
    deltas: np.ndarray | None,
    layer: int,
    cache: GenerationCache | None,
) -> list[str]:
    """The cache key of each row: the cache's context, :func:`output_context`, the prompt, the steering.

    Without a cache the keys only tell equal rows apart (each is generated once).
    """
    ctx = (
        f"{cache.context}:{context_hash(output_context(lm, settings))}" if cache is not None else ""
    )
    return [
        make_key(ctx, prompts[i], delta_key(None if deltas is None else deltas[i], layer))
        for i in range(len(prompts))
    ]


def identity(a: list[str], b: list[str], markers: Any) -> dict[str, float]:
    """Output identity and decision (tool call triggered or not) identity of two output lists."""
    if len(a) != len(b):
        raise ValueError("the two output lists differ in length")
    n = len(a)
    same = sum(x == y for x, y in zip(a, b))
    dec = sum(triggered(x, markers) == triggered(y, markers) for x, y in zip(a, b))
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
    settings: GenerationSettings,
    deltas: np.ndarray | None = None,
    layer: int = 0,
    cache: GenerationCache | None = None,
    *,
    desc: str = "generate",
    drafts: list[str | list[int] | None] | None = None,
    stats: GenerationStats | None = None,
    shard: tuple[int, int] | None = None,
    sync: Callable[[], None] | None = None,
    on_batch: Callable[[list[int]], None] | None = None,
) -> tuple[list[str], int]:
    """Outputs for every prompt, reusing ``cache``; returns (outputs, number generated now).

    The one generation driver: the sweep, ``asa generate``, the online adapter
    (:func:`asa_lib.method.online.generate_online`) and the demo model's
    training all call it, with one :class:`GenerationSettings`. ``deltas[i]``
    is added at block ``layer`` to prompt ``i``'s last token on the prefill
    pass (None: no precomputed steering; an online gate steers ``generate``
    itself).

    Each distinct (prompt, delta) pair is generated at most once; batches are
    sorted by prompt length, and the tokens every prompt starts with are
    computed once (``settings.share_prefix``, :func:`asa_lib.engine.prefix.shared_prefix`).
    Results are written to the cache after each batch, so an interrupted run
    loses at most one batch. ``on_batch(rows)`` is called after each batch
    that ``generate`` decoded (not after verify passes), with the indices of its rows.

    With ``settings.draft``, a steered row whose prompt has an unsteered (baseline)
    output in ``cache`` is verified against that output first (see the module
    docstring); ``drafts`` gives the drafts explicitly instead (one per
    prompt: token ids, a text, or None; any row may use one). Drafts are
    not used where the model's generation config changes greedy decoding
    (a repetition penalty, suppressed tokens, ...: :func:`greedy_is_argmax`),
    since a verify pass takes the plain argmax. Once the
    batches verified so far in a chunk accepted less than
    ``settings.draft_min_acceptance`` of their draft tokens, the chunk's remaining rows
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
    keys = generation_keys(lm, settings, prompts, deltas, layer, cache)
    results: dict[str, str] = cache.get_many(keys) if cache is not None else {}
    todo: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k not in results and k not in todo:
            todo[k] = i
    if sync is not None:
        sync()
    if not todo:
        return [results[k] for k in keys], 0
    ids = token_ids(lm, prompts)
    check_prompt_lengths(lm, ids, settings.max_prompt_tokens, settings.max_new_tokens)
    prefix = shared_prefix(lm, ids) if settings.share_prefix else None
    P = prefix.length if prefix is not None else 0
    tok, eos = lm.tokenizer, _eos_ids(lm)

    # The work is cut into chunks of rows (longest prompts first), each decoded on its own:
    # with ``shard`` a worker takes every ``world``-th chunk, and every batch is then the
    # batch one process would have run, so sharded results equal one process's bit for bit.
    order = sorted(todo.values(), key=lambda i: -len(ids[i]))
    chunk_rows = settings.batch_size * CHUNK_BATCHES
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
    draft = settings.draft and greedy_is_argmax(lm.model)
    if draft and drafts is not None:
        found = {i: drafts[i] for i in mine if drafts[i] is not None}
    elif draft and cache is not None and deltas is not None:
        plain = generation_keys(lm, settings, prompts, None, layer, cache)
        base = {i: plain[i] for i in mine if keys[i] != plain[i]}
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
    draft_ids = {i: list(d)[: settings.max_new_tokens] for i, d in found.items() if len(d) > 0}

    full: dict[int, list[int]] = {i: ids[i] for i in mine}  # prompt + tokens accepted so far
    n_gen: dict[int, int] = dict.fromkeys(mine, 0)
    with progress(len(mine), desc) as bar:
        for chunk in chunks:
            verify = sorted(
                (i for i in chunk if i in draft_ids),
                key=lambda i: -(len(ids[i]) + len(draft_ids[i])),
            )
            offered = accepted = 0
            for s in range(0, len(verify), settings.batch_size):
                if offered and accepted < settings.draft_min_acceptance * offered:
                    if stats is not None:
                        stats.drafts_dropped += len(verify) - s
                    break  # drafts do not pay here: the chunk's remaining rows decode plainly
                b = verify[s : s + settings.batch_size]
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
                    # a fully accepted draft of settings.max_new_tokens: no extra token
                    acc = acc[: settings.max_new_tokens]
                    if len(acc) >= settings.max_new_tokens or _finished(
                        acc, eos, tok, settings.markers
                    ):
                        new[i] = _clean(acc, eos, tok.pad_token_id, tok, settings.markers)
                        if stats is not None:
                            stats.done_by_draft += 1
                    else:
                        full[i], n_gen[i] = ids[i] + acc, len(acc)
                if new:
                    done(new, bar)
            rest = [i for i in chunk if keys[i] not in results]
            for b in _gen_batches(lm, full, rest, P, settings.batch_size):
                d = None if deltas is None else deltas[b]
                rows = _generate_rows(
                    lm,
                    [full[i] for i in b],
                    [n_gen[i] for i in b],
                    d,
                    layer,
                    settings.max_new_tokens,
                    settings.markers,
                    prefix,
                    stats,
                )
                done(dict(zip(b, rows)), bar)
                if on_batch is not None:
                    on_batch(b)
    if shard is not None:
        return [results.get(k) for k in keys], len(mine)
    return [results[k] for k in keys], len(mine)
