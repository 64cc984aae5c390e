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

from asa_lib.engine.batching import CHUNK_BATCHES, gen_batches, shard_units
from asa_lib.engine.cache import GenerationCache, context_hash, make_key
from asa_lib.engine.decode import GenerationStats, clean_row, eos_ids, finished, generate_rows
from asa_lib.engine.draft import (
    accept,
    draft_for,
    draft_min_acceptance_for,
    greedy_is_argmax,
)
from asa_lib.engine.prefix import (
    check_prompt_lengths,
    needs_equal_suffix_lengths,
    shared_prefix,
    token_ids,
)
from asa_lib.engine.promptmajor import PromptBatch, decode_forks, mergeable
from asa_lib.model.load import LoadedModel, tokenizer_digest
from asa_lib.params import GenerationParams, check_batch_size
from asa_lib.progress import progress
from asa_lib.provenance import digest
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


def generation_context(
    lm: LoadedModel, settings: GenerationSettings, cache: GenerationCache | None
) -> str:
    """The part of every cache key that is not the row's: the cache's context and
    :func:`output_context` ("" without a cache)."""
    if cache is None:
        return ""
    return f"{cache.context}:{context_hash(output_context(lm, settings))}"


def generation_keys(
    lm: LoadedModel,
    settings: GenerationSettings,
    prompts: list[str],
    deltas: np.ndarray | None,
    layer: int,
    cache: GenerationCache | None,
) -> list[str]:
    """The cache key of each row: :func:`generation_context`, the prompt, the steering.

    Without a cache the keys only tell equal rows apart (each is generated once).
    """
    ctx = generation_context(lm, settings, cache)
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


@dataclass(frozen=True)
class ConfigDeltas:
    """One config to generate: its name and each prompt's steering (``deltas[i]``, (N, H); None:
    unsteered), added at block ``layer`` (None: the call's ``layer``, L*). A row whose delta is
    all zeros is the unsteered row."""

    name: str
    deltas: np.ndarray | None = None
    layer: int | None = None


@dataclass
class ConfigOutputs:
    """What :func:`generate_configs` returns.

    ``outputs[name][i]``: config ``name``'s output for prompt ``i`` (None only for
    a row another data-parallel worker generates). ``generated[name]``: how many of
    that config's rows were generated by this call (a row two configs share, such
    as an unsteered one, counts for each); ``generated_total``: distinct (prompt,
    steering) rows generated by this call. ``states[i]``: block L*'s output at
    prompt ``i``'s last token, read on its unsteered pass where one ran here
    (``read_states``).
    """

    outputs: dict[str, list[str | None]]
    generated: dict[str, int]
    generated_total: int
    states: dict[int, np.ndarray]


def generate_configs(
    lm: LoadedModel,
    prompts: list[str],
    settings: GenerationSettings,
    configs: list[ConfigDeltas],
    layer: int = 0,
    cache: GenerationCache | None = None,
    *,
    desc: str = "generate",
    drafts: list[str | list[int] | None] | None = None,
    stats: GenerationStats | None = None,
    shard: tuple[int, int] | None = None,
    sync: Callable[[], None] | None = None,
    on_batch: Callable[[list[int]], None] | None = None,
    read_states: bool = False,
) -> ConfigOutputs:
    """Outputs of every config for every prompt, prompt-major: the one generation planner.

    The sweep (all its configs at once), ``asa evaluate`` (the baseline and every
    override), ``asa generate``, the online adapter and the demo model's training
    call it (:func:`generate_all` is one config). Each config's ``deltas[i]`` is
    added at block ``layer`` (or the config's own ``ConfigDeltas.layer``) to prompt ``i``'s
    last token on the prefill pass.

    - Each distinct (prompt, delta) pair is generated at most once (equal deltas of
      two configs are one row), and not at all where ``cache`` has it. Outputs are
      written to the cache after each batch, so an interrupted call loses at most
      one batch.
    - Prompts are sorted by token length (longest first) and cut into batches of
      ``settings.batch_size`` (equal suffix lengths where padding would leak into
      LFM2's conv states), so padding stays small (``stats.padded_tokens``); the
      tokens every prompt starts with are computed once (``settings.share_prefix``).
    - A prompt with more than one row to generate (several configs, or a row to
      verify against a draft) is prefilled once, positions ``0 .. n-2``
      (:class:`~asa_lib.engine.promptmajor.PromptBatch`); then each of its rows
      runs the last position with its own delta and decodes, or verifies its
      draft, from a fork of that state. A prompt with one row and no draft is
      generated whole, as one ``generate`` call (the plain path; not with
      ``read_states``).
    - The unsteered rows of a batch run first; with ``settings.draft`` a steered
      row then verifies the unsteered output of its prompt (generated here, or
      from the cache) in one pass over the last prompt token and that draft; the
      longest prefix on which the greedy argmax agrees is accepted, plus the
      argmax after it; a row that has not ended by then continues greedily from
      there (see the module docstring). ``drafts`` gives drafts explicitly (one
      per prompt: token ids, a text, or None; any row may use one). Drafts are
      not used where the model's generation config changes greedy decoding
      (:func:`~asa_lib.engine.draft.greedy_is_argmax`). Once at least a batch of
      rows of a chunk has been verified and they accepted less than
      ``settings.draft_min_acceptance`` of their draft tokens, the chunk's other
      steered rows decode plainly.
    - Configs at different blocks share each prompt's prefill of positions ``0 .. n-2`` (it
      does not depend on the block); rows decoded together may steer at different blocks
      (:func:`~asa_lib.model.hooks.steer_rows_at`: one hook per block). The block is part of
      every steered row's cache key (:func:`delta_key`).
    - ``read_states``: keep block ``layer``'s output at each prompt's last token,
      read on its unsteered pass (``ConfigOutputs.states``).
    - The prompts are cut into chunks of ``CHUNK_BATCHES`` batches (longest first);
      ``shard=(rank, world)`` generates every ``world``-th chunk from ``rank`` (a
      data-parallel worker, :mod:`asa_lib.run.parallel`); workers sharing a cache
      pass ``sync``, a barrier called after the cache has been read and before
      anything is written to it, so that every worker sees the same rows to
      generate and deals out the same chunks (a pure function of the inputs).
    - ``on_batch(rows)`` is called after each decoding batch (not after verify
      passes), with the prompt indices of its rows; ``stats`` collects counts.
    """
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"config names must be distinct, got {names}")
    block = {c.name: layer if c.layer is None else int(c.layer) for c in configs}
    keys = {
        c.name: generation_keys(lm, settings, prompts, c.deltas, block[c.name], cache)
        for c in configs
    }
    plain = generation_keys(lm, settings, prompts, None, layer, cache)
    wanted = list(dict.fromkeys(k for c in configs for k in keys[c.name]))
    results: dict[str, str] = cache.get_many(wanted) if cache is not None else {}
    # key -> (prompt, its delta or None), in config order, then prompt order
    todo: dict[str, tuple[int, np.ndarray | None]] = {}
    at: dict[str, int] = {}  # key -> the block its delta is added at
    for c in configs:
        for i, k in enumerate(keys[c.name]):
            if k not in results and k not in todo:
                d = None if c.deltas is None or k == plain[i] else c.deltas[i]
                todo[k] = (i, d)
                at[k] = block[c.name] if d is not None else layer
    if sync is not None:
        sync()
    states: dict[int, np.ndarray] = {}
    made: set[str] = set()

    def outputs() -> ConfigOutputs:
        out = {n: [results.get(k) for k in keys[n]] for n in names}
        if shard is None and any(o is None for v in out.values() for o in v):
            raise RuntimeError("a row was not generated")  # a bug, not a user error
        gen = {n: sum(k in made for k in dict.fromkeys(keys[n])) for n in names}
        return ConfigOutputs(out, gen, len(made), states)

    if not todo:
        return outputs()
    ids = token_ids(lm, prompts)
    check_prompt_lengths(lm, ids, settings.max_prompt_tokens, settings.max_new_tokens)
    prefix = shared_prefix(lm, ids) if settings.share_prefix else None
    P = prefix.length if prefix is not None else 0
    tok, eos = lm.tokenizer, eos_ids(lm)
    row_tasks: dict[int, list[str]] = {}
    for k, (i, _) in todo.items():
        row_tasks.setdefault(i, []).append(k)

    # Chunks of prompts (longest first): a data-parallel worker takes every world-th one, and
    # every batch is then the batch one process would have run.
    order = sorted(row_tasks, key=lambda i: (-len(ids[i]), i))
    chunk_rows = settings.batch_size * CHUNK_BATCHES
    chunks = [order[s : s + chunk_rows] for s in range(0, len(order), chunk_rows)]
    if shard is not None:
        chunks = shard_units(chunks, *shard)
    mine = [k for c in chunks for i in c for k in row_tasks[i]]
    if stats is not None:
        stats.generated += len(mine)

    # Drafts: explicit ones (any row), else the cached unsteered output of a steered row's prompt
    # (its token ids where the cache has them, else its text re-encoded), else the one made here.
    use_drafts = settings.draft and greedy_is_argmax(lm.model)
    explicit: dict[int, list[int]] = {}
    found: dict[int, list[int]] = {}
    mine_rows = [i for c in chunks for i in c]
    if use_drafts and drafts is not None:
        explicit = _as_ids(lm, {i: drafts[i] for i in mine_rows if drafts[i] is not None})
    elif use_drafts and cache is not None:
        need = {i: plain[i] for i in mine_rows if any(todo[k][1] is not None for k in row_tasks[i])}
        base_ids = cache.get_tokens_many(list(dict.fromkeys(need.values())))
        base_text = cache.get_many([k for k in dict.fromkeys(need.values()) if k not in base_ids])
        found = _as_ids(
            lm,
            {
                i: base_ids.get(k, base_text.get(k))
                for i, k in need.items()
                if k in base_ids or k in base_text
            },
        )
    cut = settings.max_new_tokens

    fresh: dict[str, list[int]] = {}  # token ids of the rows generated here

    def done(new: dict[str, list[int]], bar) -> None:
        texts = {k: tok.decode(r, skip_special_tokens=False) for k, r in new.items()}
        results.update(texts)
        made.update(texts)
        fresh.update(new)
        if cache is not None:
            cache.put_many(texts, dict(new))
        bar.update(len(new))

    def stack(ds: list[np.ndarray | None]) -> np.ndarray | None:
        if all(d is None for d in ds):
            return None
        H = next(d for d in ds if d is not None).shape[-1]
        return np.stack([np.zeros(H, np.float32) if d is None else d for d in ds])

    def blocks(ks: list[str]) -> int | list[int]:
        """The steering block of rows ``ks``: one int where their steered rows share it."""
        used = {at[k] for k in ks if todo[k][1] is not None}
        if len(used) <= 1:
            return used.pop() if used else layer
        return [at[k] for k in ks]

    def draft_of(k: str) -> list[int] | None:
        i, d = todo[k]
        if explicit:
            return explicit.get(i)
        if d is None:
            return None
        return found.get(i)

    with progress(len(mine), desc) as bar:
        for chunk in chunks:
            offered = accepted = verified = 0  # this chunk's drafts so far
            # The plain path: prompts with one row to generate and nothing to verify.
            single = [
                i
                for i in chunk
                if len(row_tasks[i]) == 1 and draft_of(row_tasks[i][0]) is None and not read_states
            ]
            for b in gen_batches(lm, ids, single, P, settings.batch_size):
                ks = [row_tasks[i][0] for i in b]
                rows = generate_rows(
                    lm,
                    [ids[i] for i in b],
                    [0] * len(b),
                    stack([todo[k][1] for k in ks]),
                    blocks(ks),
                    cut,
                    settings.markers,
                    prefix,
                    stats,
                )
                done(dict(zip(ks, rows)), bar)
                if on_batch is not None:
                    on_batch(b)
            alone = set(single)
            multi = [i for i in chunk if i not in alone]
            # The chunk's prompts, prefilled once (positions 0 .. n-2) in padding-capped batches;
            # their rows decode together across batches where the forks can be merged.
            pbs: list[tuple[list[int], PromptBatch]] = []
            where: dict[int, tuple[PromptBatch, int]] = {}
            for R in gen_batches(lm, ids, multi, P, settings.batch_size):
                pb = PromptBatch(lm, [ids[i] for i in R], prefix, stats)
                pbs.append((R, pb))
                where.update({i: (pb, j) for j, i in enumerate(R)})
            merge = mergeable([pb for _, pb in pbs])

            def decode(ks: list[str], accs=None, where=where, merge=merge) -> None:
                accs = accs if accs is not None else [[] for _ in ks]
                parts: list[tuple[PromptBatch, list[int], list[list[int]], list[str]]] = []
                for k, a in zip(ks, accs):  # runs of rows of one prompt batch, in order
                    pb, j = where[todo[k][0]]
                    if not parts or parts[-1][0] is not pb:
                        parts.append((pb, [], [], []))
                    parts[-1][1].append(j)
                    parts[-1][2].append(a)
                    parts[-1][3].append(k)
                for g in [parts] if merge else [[x] for x in parts]:
                    gk = [k for x in g for k in x[3]]
                    unsteered = all(todo[k][1] is None for k in gk) and not any(
                        any(x[2]) for x in g
                    )
                    seen: list | None = [] if read_states and unsteered else None
                    out = decode_forks(
                        [(pb, rows, a) for pb, rows, a, _ in g],
                        stack([todo[k][1] for k in gk]),
                        blocks(gk),
                        cut,
                        settings.markers,
                        stats,
                        read_state=seen,
                    )
                    if seen:
                        for k, h in zip(gk, seen[0]):
                            states[todo[k][0]] = h
                    done(dict(zip(gk, out)), bar)
                    if on_batch is not None:
                        on_batch([todo[k][0] for k in gk])

            tasks = [k for R, _ in pbs for i in R for k in row_tasks[i]]
            # 1. the unsteered rows (the drafts of the steered ones)
            first = [k for k in tasks if todo[k][1] is None and draft_of(k) is None]
            for s in range(0, len(first), settings.batch_size):
                decode(first[s : s + settings.batch_size])
            if use_drafts and not explicit:  # drafts made here: the unsteered output's ids
                for i in multi:
                    if i not in found and fresh.get(plain[i]):
                        found[i] = fresh[plain[i]]
            # 2. verify drafts, one prompt batch at a time
            cont: list[tuple[str, list[int]]] = []
            dropped: set[str] = set()
            for R, pb in pbs:
                verify = sorted(
                    (k for i in R for k in row_tasks[i] if k not in results and draft_of(k)),
                    key=lambda k: -len(draft_of(k)[:cut]),
                )
                for s in range(0, len(verify), settings.batch_size):
                    if (
                        verified >= settings.batch_size
                        and accepted < settings.draft_min_acceptance * offered
                    ):
                        if stats is not None:
                            stats.drafts_dropped += len(verify) - s
                        dropped.update(verify[s:])
                        break  # drafts do not pay here: the chunk's remaining rows decode plainly
                    ks = verify[s : s + settings.batch_size]
                    ds = [draft_of(k)[:cut] for k in ks]
                    greedy = pb.verify(
                        [where[todo[k][0]][1] for k in ks],
                        ds,
                        stack([todo[k][1] for k in ks]),
                        blocks(ks),
                        stats,
                    )
                    new: dict[str, list[int]] = {}
                    verified += len(ks)
                    for k, d, g in zip(ks, ds, greedy):
                        acc = accept(d, g)
                        offered += len(d)
                        accepted += len(acc) - 1
                        if stats is not None:
                            stats.drafted += 1
                            stats.draft_tokens += len(d)
                            stats.accepted_tokens += len(acc) - 1
                        acc = acc[:cut]  # a fully accepted draft of max_new_tokens: no extra token
                        if len(acc) >= cut or finished(acc, eos, tok, settings.markers):
                            new[k] = clean_row(acc, eos, tok.pad_token_id, tok, settings.markers)
                            if stats is not None:
                                stats.done_by_draft += 1
                        else:
                            cont.append((k, acc))
                    if new:
                        done(new, bar)
            # 3. the other steered rows, then the rows continuing from accepted tokens
            plain_rows = [
                k for k in tasks if k not in results and (k in dropped or not draft_of(k))
            ]
            for s in range(0, len(plain_rows), settings.batch_size):
                decode(plain_rows[s : s + settings.batch_size])
            groups: dict[tuple, list[tuple[str, list[int]]]] = {}
            for k, acc in sorted(cont, key=lambda x: -len(x[1])):
                # one accepted length per decode (no padding inside a row); LFM2's conv layers
                # also one prompt batch
                key = (len(acc),) if merge else (id(where[todo[k][0]][0]), len(acc))
                groups.setdefault(key, []).append((k, acc))
            for g in groups.values():
                for s in range(0, len(g), settings.batch_size):
                    part = g[s : s + settings.batch_size]
                    decode([k for k, _ in part], [a for _, a in part])
    return outputs()


def _as_ids(lm: LoadedModel, drafts: dict[int, str | list[int]]) -> dict[int, list[int]]:
    """Drafts as token ids (a text is encoded as a prompt is); empty drafts are dropped."""
    texts = [i for i, d in drafts.items() if isinstance(d, str)]
    out = {i: list(d) for i, d in drafts.items() if not isinstance(d, str)}
    for i, d in zip(texts, token_ids(lm, [drafts[i] for i in texts]) if texts else []):
        out[i] = d
    return {i: d for i, d in out.items() if len(d) > 0}


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
    """One config's outputs for every prompt (:func:`generate_configs`); returns (outputs,
    number generated now). ``deltas`` None: unsteered (an online gate steers ``generate``
    itself). With ``shard``, the other workers' rows are None."""
    res = generate_configs(
        lm,
        prompts,
        settings,
        [ConfigDeltas("config", deltas)],
        layer,
        cache,
        desc=desc,
        drafts=drafts,
        stats=stats,
        shard=shard,
        sync=sync,
        on_batch=on_batch,
    )
    return res.outputs["config"], res.generated_total
