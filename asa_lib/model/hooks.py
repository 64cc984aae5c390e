"""Forward hooks on decoder blocks, owned by context managers.

Convention (pinned by tests): the state read or edited is the *output of
decoder block l* (``model.model.layers[l]``), before the final norm, at the
last prompt position. With left padding that position is -1 for every row.
Both tensor and tuple block outputs are accepted. Hooks are removed in
``finally``, so an exception inside the ``with`` block leaves no hook behind.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch


def block_output(out):
    """The hidden states a decoder block returned (its output, or the first item of a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def with_block_output(out, h):
    """A decoder block's output with its hidden states replaced by ``h``."""
    return (h, *out[1:]) if isinstance(out, tuple) else h


class _Capture:
    def __init__(self, layer: int, store: dict, owner: LastTokenCapture):
        self.layer, self.store, self.owner = layer, store, owner

    def __call__(self, _module, _inp, out):
        h = block_output(out)
        pos = self.owner.positions
        if pos is None:
            self.store[self.layer] = h[:, -1, :].detach().clone()  # a copy, not a view into h
        else:
            self.store[self.layer] = h[
                torch.arange(h.shape[0], device=h.device), pos.to(h.device)
            ].detach()


class LastTokenCapture(dict):
    """``{layer: (B, H)}`` of the latest forward pass. ``positions``: per-row index to read
    (None: position -1, the last token under left padding)."""

    positions: torch.Tensor | None = None


@contextmanager
def capture_last_token(blocks: torch.nn.ModuleList) -> Iterator[LastTokenCapture]:
    """Record, per block index, the block output at the last prompt token: ``{l: (B, H)}``.

    The dict is overwritten on each forward pass. Set ``.positions`` on it to
    read right-padded rows at their own last real position.
    """
    captured = LastTokenCapture()
    handles = []
    try:
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_hook(_Capture(i, captured, captured)))
        yield captured
    finally:
        for h in handles:
            h.remove()


class _PrefillSteer:
    def __init__(self, delta: torch.Tensor, positions: torch.Tensor | None = None):
        self.delta = delta  # (B, H)
        self.positions = positions  # (B,) or None: position -1 for every row
        self.fired = False

    def __call__(self, _module, _inp, out):
        if self.fired:  # decode steps: never touched
            return out
        self.fired = True
        h = block_output(out)
        h = h.clone()
        d = self.delta.to(device=h.device, dtype=h.dtype)
        if self.positions is None:
            h[:, -1, :] += d
        else:
            rows = torch.arange(h.shape[0], device=h.device)
            h[rows, self.positions.to(h.device)] += d
        return with_block_output(out, h)


@contextmanager
def steer_last_prompt_token(
    block: torch.nn.Module, delta: torch.Tensor | None, positions: torch.Tensor | None = None
) -> Iterator[_PrefillSteer | None]:
    """Add ``delta[b]`` (shape (B, H)) to block output at the last prompt position, on the first pass only.

    That position is -1 for every row (left padding), or ``positions[b]`` when
    given: a prefill that runs the prompt followed by tokens already generated
    (draft-verified decoding) steers the prompt's last token, never the tokens
    after it. The first forward pass through ``block`` inside the ``with`` is
    the prefill of a generation; later passes (decode steps) are left
    untouched. A ``None`` delta, or one that is all zeros, registers no hook at
    all, so the output is bit-identical to an unhooked run.
    """
    if delta is None or not bool(torch.any(delta != 0)):
        yield None
        return
    hook = _PrefillSteer(delta, positions)
    handle = block.register_forward_hook(hook)
    try:
        yield hook
    finally:
        handle.remove()


@contextmanager
def steer_rows_at(
    blocks: Sequence[torch.nn.Module],
    delta: torch.Tensor | None,
    layers: int | Sequence[int],
    positions: torch.Tensor | None = None,
) -> Iterator[None]:
    """:func:`steer_last_prompt_token` with a block per row: ``delta[b]`` is added at block
    ``layers[b]`` (an int: every row's block). One hook per distinct block, each adding its
    own rows' deltas and zero rows for the others (``x + 0`` is ``x``), so a row steered at
    block ``l`` gets exactly what a batch steered at ``l`` alone gives it."""
    if isinstance(layers, int):
        with steer_last_prompt_token(blocks[layers], delta, positions):
            yield
        return
    layers = [int(x) for x in layers]
    if delta is not None and len(layers) != delta.shape[0]:
        raise ValueError(f"{len(layers)} blocks for {delta.shape[0]} rows")
    with ExitStack() as stack:
        if delta is not None:
            for layer in sorted(set(layers)):
                rows = torch.tensor([x == layer for x in layers])
                d = torch.where(rows[:, None], delta, torch.zeros_like(delta))
                stack.enter_context(steer_last_prompt_token(blocks[layer], d, positions))
        yield


class FirstPass:
    """What :func:`read_first_pass` saw: ``state``, the block's output on the first pass (B, W, H)."""

    state: torch.Tensor | None = None


@contextmanager
def read_first_pass(block: torch.nn.Module, enabled: bool = True) -> Iterator[FirstPass]:
    """Record ``block``'s output on the first forward pass inside the ``with`` (a copy, detached).

    Registered before a steering hook on the same block, it sees the output before
    the delta is added. ``enabled=False`` registers nothing.
    """
    seen = FirstPass()
    if not enabled:
        yield seen
        return

    def hook(_module, _inp, out):
        if seen.state is None:
            seen.state = block_output(out).detach().clone()

    handle = block.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _pass_through(hidden_states, *args, **kwargs):
    return hidden_states


@contextmanager
def skip_blocks(blocks: Sequence[torch.nn.Module], skipped: Sequence[int]) -> Iterator[None]:
    """Inside the ``with``, the blocks ``skipped`` return their input unchanged: no compute and
    no cache update (their ``forward`` is replaced on the instance, restored in ``finally``).
    Forward hooks registered on a skipped block would still fire: register none there. The
    blocks are shared by every thread using the model: not for concurrent calls.

    Only for models whose base forward feeds the embeddings straight into block 0 and each
    block's output straight into the next (:func:`asa_lib.model.load.blocks_can_be_skipped`):
    skipping blocks ``0 .. l`` and passing block ``l``'s output as ``inputs_embeds`` then runs
    exactly blocks ``l + 1 ..`` on it.
    """
    mods = [blocks[i] for i in skipped]
    saved = [vars(m).get("forward") for m in mods]  # an instance forward of its own (a wrapper)
    try:
        for m in mods:
            m.forward = _pass_through
        yield
    finally:
        for m, f in zip(mods, saved):
            if f is None:
                vars(m).pop("forward", None)
            else:
                m.forward = f
