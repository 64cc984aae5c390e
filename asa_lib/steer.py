"""ASA at generation time: gate from the stored L* state, steer once at prefill, greedy decode.

For each prompt, from its state at L* (the state stage 02 stored):
routed domain d = argmax router; p = P(tool) from d's probe;
gate = +1 if p >= tau, -1 if p <= 1 - tau, else 0 (0 when d has no probe: p = 0.5 is recorded);
v = normalize(beta * v_global + (1 - beta) * v_d), v_global where d has no vector;
delta = gate * alpha_eff * v is added to the output of block L* at the last
prompt position on the prefill pass only (never on decode steps).

Generation is batched greedy decoding with left padding; each row carries its
own delta, so rows with different gates and vectors share a batch. A row stops
at EOS, or as soon as its tool call is complete (the end marker follows the
start marker): the decision is then known.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .bundle import Bundle
from .cache import GenerationCache, make_key
from .hooks import steer_last_prompt_token
from .models import LoadedModel, decoder_blocks
from .params import PromptParams
from .prefix import (
    PrefixCache,
    cache_kwarg,
    common_prefix_len,
    needs_equal_suffix_lengths,
    token_ids,
)
from .progress import progress
from .prompts import call_complete, render_prompts


@dataclass
class Gates:
    routed: list[str]
    p_tool: np.ndarray  # (N,)
    gate: np.ndarray  # (N,) in {-1, 0, 1}
    has_probe: np.ndarray | None = None  # (N,) bool: the routed domain has a probe


def compute_gates(bundle: Bundle, h: np.ndarray, tau: float) -> Gates:
    """Gate decisions from (N, H) states at L*.

    No probe, no steering: a prompt routed to a domain without a probe gets
    p = 0.5 (recorded) and gate 0, whatever tau is.
    """
    routed = bundle.route(h)
    p = np.array([float(bundle.probe_proba(d, row[None])[0]) for d, row in zip(routed, h)])
    has_probe = np.array([d in bundle.probes for d in routed], dtype=bool)
    gate = np.where(p >= tau, 1, np.where(p <= 1 - tau, -1, 0)).astype(np.int64)
    gate[~has_probe] = 0
    return Gates(routed, p, gate, has_probe)


def alpha_effective(alpha: float, unit: str, bundle: Bundle) -> float:
    """alpha in the seed's absolute unit, or relative to the mean CAL state norm at L*."""
    return float(alpha) * (bundle.cal_mean_norm if unit == "relative" else 1.0)


def steering_deltas(bundle: Bundle, gates: Gates, alpha_eff: float, beta: float) -> np.ndarray:
    """(N, H) float32: gate * alpha_eff * v per prompt (zero rows where gate == 0)."""
    out = np.zeros((len(gates.gate), bundle.hidden_size), dtype=np.float32)
    for i, (d, g) in enumerate(zip(gates.routed, gates.gate)):
        if g != 0 and alpha_eff != 0:
            out[i] = np.float32(g * alpha_eff) * bundle.steering_vector(d, beta)
    return out


class _StopAtCallEnd(StoppingCriteria):
    """Per-row stop once the generated text holds a complete tool call."""

    def __init__(self, tokenizer, prompt_len: int, pp: PromptParams):
        self.tok, self.prompt_len, self.pp = tokenizer, prompt_len, pp

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        gen = input_ids[:, self.prompt_len:]
        done = [call_complete(self.tok.decode(row, skip_special_tokens=False), self.pp) for row in gen]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _clean(ids: list[int], eos_ids: set[int], pad_id: int | None, tok, pp: PromptParams) -> list[int]:
    """A batch row cut where a one-row generation would have stopped.

    That is right after the first EOS, or right after the token that completed
    a tool call (the batch pads a finished row, and the pad may be the EOS
    token), whichever comes first; trailing padding is dropped.
    """
    for j, t in enumerate(ids):
        if t in eos_ids:
            ids = ids[:j + 1]
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


@torch.no_grad()
def generate_batch(lm: LoadedModel, prompts: list[str], deltas: np.ndarray | None, layer: int,
                   max_new_tokens: int, pp: PromptParams, prefix: PrefixCache | None = None,
                   ids: list[list[int]] | None = None) -> list[str]:
    """Greedy outputs for one batch, each row steered by its own delta at block ``layer``.

    Rows are left-padded so that every prompt ends at position -1. With a
    ``prefix`` cache the shared prefix is not recomputed: the padding then sits
    between prefix and suffix, where the attention mask hides it.
    """
    tok = lm.tokenizer
    ids = token_ids(lm, prompts) if ids is None else ids
    P = prefix.length if prefix is not None else 0
    if prefix is not None and any(x[:P] != prefix.ids for x in ids):
        raise ValueError("a prompt does not start with the shared prefix")
    suffixes = [x[P:] for x in ids]
    S, B = max(len(x) for x in suffixes), len(prompts)
    input_ids = torch.full((B, P + S), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((B, P + S), dtype=torch.long)
    for i, x in enumerate(suffixes):
        input_ids[i, :P] = torch.tensor(prefix.ids if prefix is not None else [], dtype=torch.long)
        input_ids[i, P + S - len(x):] = torch.tensor(x)
        mask[i, :P] = 1
        mask[i, P + S - len(x):] = 1
    kw = {cache_kwarg(lm.model): prefix.expand(B)} if prefix is not None else {}
    eos = _eos_ids(lm)
    delta = None if deltas is None else torch.from_numpy(np.asarray(deltas, dtype=np.float32))
    with steer_last_prompt_token(decoder_blocks(lm.model)[layer], delta):
        out = lm.model.generate(
            input_ids=input_ids.to(lm.device), attention_mask=mask.to(lm.device),
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            temperature=None, top_p=None, top_k=None, min_p=None,
            pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos),
            stopping_criteria=StoppingCriteriaList([_StopAtCallEnd(tok, P + S, pp)]), **kw,
        )
    texts = []
    for row in out[:, P + S:].tolist():
        texts.append(tok.decode(_clean(row, eos, tok.pad_token_id, tok, pp), skip_special_tokens=False))
    return texts


def _gen_batches(lm: LoadedModel, ids: list[list[int]], idx: list[int], P: int, batch_size: int) -> list[list[int]]:
    """Batches of prompt indices, longest first; equal suffix lengths only where padding would leak."""
    order = sorted(idx, key=lambda i: -len(ids[i]))
    if P > 0 and needs_equal_suffix_lengths(lm.model):
        groups: dict[int, list[int]] = {}
        for i in order:
            groups.setdefault(len(ids[i]), []).append(i)
        return [g[s:s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


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
    key = tuple(probe[0][:P])
    if key not in lm.prefixes:  # computed once per model and format, not once per call
        lm.prefixes[key] = PrefixCache(lm, list(key))
    return lm.prefixes[key]


def delta_key(delta: np.ndarray | None) -> str:
    """Cache key part for a signed steering: 'none' for no steering, else a hash of the exact delta."""
    if delta is None or not np.any(delta):
        return "none"
    return hashlib.sha256(np.ascontiguousarray(delta, dtype=np.float32).tobytes()).hexdigest()[:32]


def generate_all(lm: LoadedModel, prompts: list[str], deltas: np.ndarray | None, layer: int,
                 batch_size: int, max_new_tokens: int, pp: PromptParams,
                 cache: GenerationCache | None = None, desc: str = "generate",
                 share_prefix: bool = True) -> tuple[list[str], int]:
    """Outputs for every prompt, reusing ``cache``; returns (outputs, number generated now).

    Each distinct (prompt, delta) pair is generated at most once; batches are
    sorted by prompt length, and the prompt format's shared prefix is computed
    once (``share_prefix``). Results are written to the cache after each batch,
    so an interrupted run loses at most one batch.
    """
    n = len(prompts)
    ctx = cache.context if cache is not None else ""
    keys = [make_key(ctx, prompts[i], delta_key(None if deltas is None else deltas[i])) for i in range(n)]
    results: dict[str, str] = cache.get_many(keys) if cache is not None else {}
    todo: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k not in results and k not in todo:
            todo[k] = i
    if not todo:
        return [results[k] for k in keys], 0
    prefix = shared_prefix(lm, pp) if share_prefix else None
    ids = token_ids(lm, prompts)
    P = prefix.length if prefix is not None else 0
    if prefix is not None and any(ids[i][:P] != prefix.ids for i in todo.values()):
        prefix, P = None, 0  # a prompt that does not start with the format's prefix: no sharing
    batches = _gen_batches(lm, ids, list(todo.values()), P, batch_size)
    with progress(len(todo), desc) as bar:
        for b in batches:
            d = None if deltas is None else deltas[b]
            outs = generate_batch(lm, [prompts[i] for i in b], d, layer, max_new_tokens, pp, prefix,
                                  ids=[ids[i] for i in b])
            new = {keys[i]: o for i, o in zip(b, outs)}
            results.update(new)
            if cache is not None:
                cache.put_many(new)
            bar.update(len(b))
    return [results[k] for k in keys], len(todo)
