"""Online ASA: the gate is computed and applied inside the prefill pass of ``generate``.

The sweep (:mod:`asa_lib.engine.generate`) takes two passes: stage 02 stores each
prompt's state at L*, the gate is computed from it in numpy, and generation
then adds the resulting delta. Here one pass does both. A forward hook on block
L* reads every row's state at the last prompt position (position -1: batches
are left-padded), and computes, in torch and float64:

    x = (h - scaler.mean) / scaler.scale
    d = argmax router(x)                  (the bundle's router classes; its one domain without a router)
    p = sigmoid(x . coef_d + b_d)         (0.5 where d has no probe)
    gate = +1 if p >= tau, -1 if p <= 1 - tau, else 0 (always 0 where d has no probe)

It then adds ``gate * alpha_eff * v_d`` to that row's state in the same forward
pass. ``v_d`` is the bundle's mixture ``normalize(beta * v_global + (1 - beta) * v_d)``
(of its behaviour directions for ``vector="behaviour"``);
it does not depend on the state, so the (+1 and -1) deltas of every routed domain
are tabulated once by :func:`asa_lib.method.gate.steering_deltas`. They are then
bit-identical to the two-pass path's.

Which pass is steered: inside :func:`online_steering`, ``model.generate`` is
wrapped so that the *first* pass through block L* of each ``generate`` call
(its prefill) is steered; its decode steps are not, and neither is a plain
``model(...)`` call. Each call's per-row decisions (routed domain, p, gate)
are recorded on the session. Nothing carries over between rows (every row
is computed from its own state) or between calls (each ``generate`` call has
its own state, held for the calling thread only, so calls from several
threads inside one ``with`` are each steered once; the decisions of a call
are a new list, and the hook and the wrapper are removed in ``finally``).
A call whose prefill did not pass block L* in its own thread, and a padded
batch without an ``attention_mask``, are refused (:class:`SteeringError`).

A config that steers at another block than L* (``layer``; the gate still reads L*):
at a later block, the hook on L* decides and a second hook adds the delta at that block
in the same pass; at an earlier block, the ``generate`` wrapper first runs the prompt up to
L* (a pass stopped there, as :func:`decide_prompts`), then the prefill adds the delta at
the earlier block (a call that brings its own ``past_key_values`` is refused: the pre-pass
could not see those positions). :func:`generate_online` takes two passes for such a
config (:func:`decide_prompts`, then the planner with the deltas at that block), as the
sweep does.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from asa_lib.engine.generate import GenerationSettings, generate_all
from asa_lib.engine.prefix import check_prompt_lengths, left_padded, token_ids
from asa_lib.method.bundle import Bundle
from asa_lib.method.gate import Gates, check_alpha_eff, steering_deltas
from asa_lib.model.hooks import block_output, with_block_output
from asa_lib.model.load import LoadedModel, decoder_blocks
from asa_lib.params import (
    GenerationParams,
    ParamsError,
    SweepConfig,
    check_batch_size,
    check_config_values,
)

ONLINE_VECTORS = ("mixture", "behaviour")  # the vectors an adapter applies online


class SteeringError(RuntimeError):
    """Online steering was used in a way it cannot steer correctly (the message says why)."""


@dataclass(frozen=True)
class Decision:
    """The gate decision for one prompt."""

    routed: str  # the router's domain
    p_tool: float  # P(tool) from that domain's probe (0.5 without one)
    gate: int  # +1 push, -1 suppress, 0 leave alone


class OnlineGate:
    """A bundle and one (tau, alpha_eff, beta) config, as torch tensors for the prefill hook.

    ``vector``: ``"mixture"`` (the label vectors, the method) or ``"behaviour"``
    (the bundle's behaviour directions, :mod:`asa_lib.method.diagnostics`).
    """

    def __init__(
        self,
        bundle: Bundle,
        tau: float,
        alpha_eff: float,
        beta: float,
        vector: str = "mixture",
        layer: int | None = None,
    ):
        check_config_values(tau=tau, alpha_eff=alpha_eff, beta=beta)  # a ParamsError (ValueError)
        # the steering block: L* (None), or another block the bundle has vectors for
        self.steer_layer = bundle.layer if layer is None else int(layer)
        at = None if self.steer_layer == bundle.layer else self.steer_layer
        bundle.block(at)  # a BundleError for a block the bundle lacks
        check_alpha_eff(alpha_eff, bundle, layer=at)
        if vector not in ONLINE_VECTORS:
            raise ParamsError(f"vector {vector!r} is not one of {ONLINE_VECTORS} (applied online)")
        self.vector = vector
        config = SweepConfig("online", tau=float(tau), beta=float(beta), vector=vector)
        self.bundle = bundle
        self.layer = bundle.layer
        self.tau, self.alpha_eff, self.beta = float(tau), float(alpha_eff), float(beta)
        self.classes = list(bundle.router_classes)
        C, H = len(self.classes), bundle.hidden_size
        f64 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
        self._mean, self._scale = f64(bundle.scaler_mean), f64(bundle.scaler_scale)
        self._router_coef, self._router_b = f64(bundle.router_coef), f64(bundle.router_intercept)
        coef, b, has = np.zeros((C, H)), np.zeros(C), np.zeros(C, dtype=bool)
        for i, d in enumerate(self.classes):
            if d in bundle.probes:
                coef[i], b[i], has[i] = bundle.probes[d][0], bundle.probes[d][1], True
        self._probe_coef, self._probe_b, self._has_probe = f64(coef), f64(b), torch.from_numpy(has)
        # deltas[c, g + 1] = g * alpha_eff * v_c for g in (-1, 0, +1), exactly as the two-pass path
        table = np.zeros((C, 3, H), dtype=np.float32)
        for i, d in enumerate(self.classes):
            two = steering_deltas(
                bundle, Gates([d, d], np.zeros(2), np.array([-1, 1])), self.alpha_eff, config, at
            )
            table[i, 0], table[i, 2] = two[0], two[1]
        self._deltas = torch.from_numpy(table)
        self._on: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._on:
            self._on[device] = tuple(
                t.to(device)
                for t in (
                    self._mean,
                    self._scale,
                    self._router_coef,
                    self._router_b,
                    self._probe_coef,
                    self._probe_b,
                    self._has_probe,
                    self._deltas,
                )
            )
        return self._on[device]

    @torch.no_grad()
    def decide(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(router class index, p(tool) float64, gate in {-1, 0, 1}) per row of ``h`` (B, H)."""
        mean, scale, rc, rb, pc, pb, has, _ = self._tensors(h.device)
        x = (h.to(torch.float64) - mean) / scale
        if rc.shape[0] == 0:  # one domain: no router, every row is that domain's
            idx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        else:
            z = x @ rc.T + rb
            if (
                rc.shape[0] == 1
            ):  # binary router: sigmoid of the single score (as Bundle.router_proba)
                p1 = 1.0 / (1.0 + torch.exp(-z[:, 0]))
                proba = torch.stack([1 - p1, p1], dim=1)
            else:
                e = torch.exp(z - z.max(dim=1, keepdim=True).values)
                proba = e / e.sum(dim=1, keepdim=True)
            idx = proba.argmax(dim=1)  # the first maximum on ties, as numpy
        p = 1.0 / (1.0 + torch.exp(-((x * pc[idx]).sum(dim=1) + pb[idx])))
        p = torch.where(has[idx], p, torch.full_like(p, 0.5))
        one = torch.ones_like(idx)
        zero = torch.zeros_like(idx)
        gate = torch.where(p >= self.tau, one, torch.where(p <= 1 - self.tau, -one, zero))
        gate = torch.where(has[idx], gate, zero)  # no probe, no steering (p = 0.5 is recorded)
        return idx, p, gate

    def delta(
        self, idx: torch.Tensor, gate: torch.Tensor, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """(B, H): ``gate * alpha_eff * v`` of each row's routed domain."""
        table = self._tensors(device)[-1]
        return table[idx, gate + 1].to(device=device, dtype=dtype)

    def deltas_of(self, decisions: Sequence[Decision]) -> np.ndarray:
        """(N, H) float32: the delta of each decision (its routed domain and gate), as the
        prefill hook adds it."""
        table = self._deltas.numpy()
        idx = [self.classes.index(d.routed) for d in decisions]
        return np.stack([table[i, d.gate + 1] for i, d in zip(idx, decisions)])

    def decisions(self, idx: torch.Tensor, p: torch.Tensor, gate: torch.Tensor) -> list[Decision]:
        return [
            Decision(self.classes[i], float(q), int(g))
            for i, q, g in zip(idx.tolist(), p.tolist(), gate.tolist())
        ]


class _Call:
    """One ``generate`` call's steering state: whether its prefill was steered, and its decisions."""

    __slots__ = ("decisions", "pending", "steered", "prepass")

    def __init__(self) -> None:
        self.decisions: list[Decision] | None = None  # set by its prefill pass
        self.pending: torch.Tensor | None = None  # the delta for a later/earlier steering block
        self.steered = False  # that delta was added (steering block other than L*)
        self.prepass = False  # a pass stopped at L* to decide before an earlier steering block


class _OnlineHook:
    """Forward hook on block L*: decide and steer every row, on a call's prefill pass only.

    The state is per call and per thread: each ``generate`` call registers a
    :class:`_Call` in the calling thread (the thread that runs its forward
    passes), so calls in other threads never arm, disarm or steer it.
    """

    def __init__(self, gate: OnlineGate, session: SteeringSession):
        self.gate, self.session = gate, session
        self._local = threading.local()

    @property
    def call(self) -> _Call | None:
        """The ``generate`` call running in this thread (None: none, or a plain forward call)."""
        return getattr(self._local, "call", None)

    @call.setter
    def call(self, call: _Call | None) -> None:
        self._local.call = call

    def __call__(self, _module, _inp, out):
        call = self.call
        if call is None or call.decisions is not None:  # plain forward calls, decode steps
            return out
        h = block_output(out)
        idx, p, gate = self.gate.decide(h[:, -1, :])
        call.decisions = self.gate.decisions(idx, p, gate)
        self.session._record(call.decisions)
        nothing = self.gate.alpha_eff == 0 or not bool((gate != 0).any())
        if self.gate.steer_layer != self.gate.layer:  # added at the steering block's hook
            call.pending = None if nothing else self.gate.delta(idx, gate, h.device, h.dtype)
            if call.prepass:
                raise _StopForward
            return out
        if nothing:
            return out  # nothing to add: the output stays bit-identical to an unhooked pass
        h = h.clone()
        h[:, -1, :] += self.gate.delta(idx, gate, h.device, h.dtype)
        return with_block_output(out, h)

    def steer(self, _module, _inp, out):
        """The hook on a steering block other than L*: add the call's delta on its prefill."""
        call = self.call
        if call is None or call.steered or call.decisions is None or call.prepass:
            return out  # plain calls, decode steps, and the pre-pass before an earlier block
        call.steered = True
        if call.pending is None:
            return out
        h = block_output(out).clone()
        h[:, -1, :] += call.pending.to(device=h.device, dtype=h.dtype)
        return with_block_output(out, h)


@dataclass
class SteeringSession:
    """What one ``with online_steering(...)`` block decided: one list of decisions per ``generate`` call.

    ``calls`` are in the order the calls' prefills ran (calls from several
    threads interleave); ``last`` is the calling thread's latest call.
    """

    gate: OnlineGate
    calls: list[list[Decision]] = field(default_factory=list)
    _local: threading.local = field(default_factory=threading.local, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _record(self, decisions: list[Decision]) -> None:
        with self._lock:
            self.calls.append(decisions)
        self._local.last = decisions

    @property
    def last(self) -> list[Decision]:
        """The per-row decisions of this thread's latest ``generate`` call.

        Where this thread made none: the latest call of any thread (empty before the first).
        """
        mine = getattr(self._local, "last", None)
        if mine is not None:
            return mine
        with self._lock:
            return self.calls[-1] if self.calls else []


_ACTIVE: weakref.WeakSet = weakref.WeakSet()


_MISSING = object()


def _pad_id(model: torch.nn.Module, kwargs: dict, gc) -> int | None:
    for pad in (
        kwargs.get("pad_token_id"),
        getattr(gc, "pad_token_id", None),
        getattr(getattr(model, "config", None), "pad_token_id", None),
    ):
        if isinstance(pad, int) and not isinstance(pad, bool):
            return pad
    return None


def _check_generate_call(model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 2 and bool((mask[:, -1] == 0).any()):
        raise SteeringError(
            "ASA reads and steers the last prompt position, which right padding hides: "
            "left-pad the batch (tokenizer.padding_side = 'left')."
        )
    gc = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
    pad = _pad_id(model, kwargs, gc)
    if mask is None and isinstance(ids, torch.Tensor) and ids.ndim == 2 and pad is not None:
        if ids.numel() and bool(((ids[:, 0] == pad) | (ids[:, -1] == pad)).any()):
            raise SteeringError(
                f"a batch with padding (pad token {pad} at the start or end of a row) and no "
                "attention_mask: ASA cannot tell the padding from the prompt and would steer a "
                "pad token; pass the tokenizer's attention_mask with a left-padded batch."
            )
    if kwargs.get("prefill_chunk_size") or getattr(gc, "prefill_chunk_size", None):
        raise SteeringError(
            "chunked prefill splits the prompt over several passes; ASA steers one "
            "prefill pass: set prefill_chunk_size=None."
        )
    if kwargs.get("assistant_model") is not None:
        raise SteeringError("assisted generation is not supported under ASA steering.")


@contextmanager
def online_steering(model: torch.nn.Module, gate: OnlineGate) -> Iterator[SteeringSession]:
    """Steer the prefill of every ``model.generate`` call inside the ``with`` block.

    Yields a :class:`SteeringSession` whose ``calls`` hold each call's
    per-row decisions. The hook and the ``generate`` wrapper are removed on
    exit, also after an exception. Refuses a model that is already steered.
    """
    if model in _ACTIVE:
        raise SteeringError("ASA steering is already active on this model (nested `with`).")
    blocks = decoder_blocks(model)
    if gate.layer >= len(blocks):
        raise SteeringError(
            f"the adapter steers block {gate.layer}; the model has {len(blocks)} blocks"
        )
    if gate.steer_layer >= len(blocks):
        raise SteeringError(
            f"the adapter steers block {gate.steer_layer}; the model has {len(blocks)} blocks"
        )
    session = SteeringSession(gate)
    hook = _OnlineHook(gate, session)
    original = model.generate
    previous = vars(model).get("generate", _MISSING)
    earlier = gate.steer_layer < gate.layer

    def generate(*args, **kwargs):
        _check_generate_call(model, args, kwargs)
        if hook.call is not None:
            raise SteeringError("model.generate was called from inside a steered generate call.")
        call = hook.call = _Call()  # this call's own state, in this thread only
        try:
            if earlier:
                _decide_first(model, call, args, kwargs)
            out = original(*args, **kwargs)
        finally:
            hook.call = None
        if gate.steer_layer != gate.layer and call.pending is not None and not call.steered:
            raise SteeringError(
                f"the prefill of this generate call did not pass block {gate.steer_layer} "
                "after its decision: it was not steered."
            )
        if call.decisions is None:
            raise SteeringError(
                f"the prefill of this generate call did not pass block {gate.layer} in the "
                "calling thread (a model run in other threads, e.g. by nn.DataParallel?): "
                "it was not steered."
            )
        return out

    handles = [blocks[gate.layer].register_forward_hook(hook)]
    if gate.steer_layer != gate.layer:
        handles.append(blocks[gate.steer_layer].register_forward_hook(hook.steer))
    _ACTIVE.add(model)
    try:
        model.generate = generate  # an instance attribute: shadows the class's method
        yield session
    finally:
        for handle in handles:
            handle.remove()
        if previous is _MISSING:
            vars(model).pop("generate", None)
        else:
            model.generate = previous
        _ACTIVE.discard(model)


@torch.no_grad()
def _decide_first(model: torch.nn.Module, call: _Call, args: tuple, kwargs: dict) -> None:
    """The pre-pass of a call steered at a block before L*: the prompt up to L*, where the
    hook decides (and records) and stops the pass."""
    if kwargs.get("past_key_values") is not None:
        raise SteeringError(
            "this adapter steers a block before L*, so it decides in a pass up to L* first; a "
            "generate call with its own past_key_values cannot be decided that way: pass the "
            "whole prompt."
        )
    ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
    if not isinstance(ids, torch.Tensor):
        raise SteeringError("a generate call steered before L* needs input_ids (a tensor)")
    mask = kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate derives them
    call.prepass = True
    try:
        model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    except _StopForward:
        pass
    finally:
        call.prepass = False


def generate_online(
    lm: LoadedModel,
    prompts: Sequence[str],
    gate: OnlineGate,
    settings: GenerationSettings,
) -> tuple[list[str], list[Decision]]:
    """Greedy outputs and decisions of rendered ``prompts``, steered in one pass.

    Generation is the sweep's driver (:func:`asa_lib.engine.generate.generate_all`:
    length-sorted batches, the shared prefix computed once, a row stops once its
    tool call is complete) inside :func:`online_steering`, without a cache and
    without drafts (a verify pass is not a ``generate`` call, so the online gate
    would not steer it): every prompt is generated, and each batch's prefill is
    checked to have been steered exactly once.
    """
    prompts = list(prompts)
    if not prompts:
        return [], []
    if gate.steer_layer != gate.layer:  # two passes: decide at L*, steer at the other block
        decisions = decide_prompts(
            lm, prompts, gate, settings.batch_size, settings.max_prompt_tokens
        )
        outputs, _ = generate_all(
            lm,
            prompts,
            settings.without_drafts(),
            gate.deltas_of(decisions),
            layer=gate.steer_layer,
        )
        return outputs, decisions
    by_prompt: dict[str, Decision] = {}  # a prompt given twice is generated (and decided) once
    with online_steering(lm.model, gate) as session:
        calls = len(session.calls)

        def record(rows: list[int]) -> None:  # after each batch generate decoded
            nonlocal calls
            calls += 1
            if len(session.calls) != calls or len(session.last) != len(rows):
                raise SteeringError("the prefill of a batch was not steered exactly once")
            for i, d in zip(rows, session.last):
                by_prompt[prompts[i]] = d

        outputs, _ = generate_all(
            lm, prompts, settings.without_drafts(), layer=gate.layer, on_batch=record
        )
    return outputs, [by_prompt[p] for p in prompts]


class _StopForward(Exception):
    pass


@torch.no_grad()
def decide_prompts(
    lm: LoadedModel,
    prompts: Sequence[str],
    gate: OnlineGate,
    batch_size: int = 8,
    max_prompt_tokens: int | None = GenerationParams.max_prompt_tokens,
) -> list[Decision]:
    """Decisions for rendered ``prompts`` without generating.

    Left-padded batches run only up to block L* (the pass is stopped there). A prompt longer
    than ``max_prompt_tokens`` or the model's context is refused first (``PromptTooLongError``).
    No prompts: no decisions.
    """
    batch_size = check_batch_size(batch_size)
    prompts = list(prompts)
    if not prompts:
        return []
    ids = token_ids(lm, prompts)
    check_prompt_lengths(lm, ids, max_prompt_tokens)
    block = decoder_blocks(lm.model)[gate.layer]
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    out: list[Decision | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
    captured: list[torch.Tensor] = []

    def grab(_module, _inp, o):
        captured.append(block_output(o)[:, -1, :].detach())
        raise _StopForward

    for s in range(0, len(order), batch_size):
        b = order[s : s + batch_size]
        x, mask = left_padded([ids[i] for i in b], pad, [], lm.device)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate derives them
        captured.clear()
        handle = block.register_forward_hook(grab)
        try:
            lm.model(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        for i, d in zip(b, gate.decisions(*gate.decide(captured[0]))):
            out[i] = d
    return out  # type: ignore[return-value]
