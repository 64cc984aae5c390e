"""Batched hidden-state extraction at the last prompt token of every block.

For each prompt: the output of every decoder block ``l`` (before the final
norm) at the last real prompt token, i.e. the token that ends the chat
template's generation prompt. The token prefix shared by all prompts (system
text, tool list, demonstrations) runs once and its cache is reused (see
:mod:`asa_lib.engine.prefix`); prompts then run in batches sorted by length, their
suffixes right-padded with an attention mask and explicit position ids, each
row read at its own last real token. A batched, prefix-cached result equals a
one-at-a-time full-prompt result within float tolerance (tests pin this at
1e-4 relative in fp32).

Storage: ``states/<split>.safetensors`` holds one float32 tensor ``states`` of
shape (samples, layers, hidden) and, beside it, ``states/<split>.json`` with
``ids``, ``labels``, ``domains`` in the same row order. The safetensors file is
streamed to disk batch by batch (rows written at their own offsets), so memory
stays at one batch however many prompts there are; it is written to a
temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from asa_lib.engine.batching import shard_units
from asa_lib.engine.cache import GenerationCache, make_key
from asa_lib.engine.prefix import (
    cache_kwarg,
    cached_prefix,
    right_padded,
    shared_prefix_len,
    token_ids,
)
from asa_lib.files import atomic_path, write_json
from asa_lib.layout import RunDir
from asa_lib.model.hooks import capture_last_token, skip_blocks
from asa_lib.model.load import (
    LoadedModel,
    accepts_logits_to_keep,
    blocks_can_be_skipped,
    decoder_blocks,
)
from asa_lib.params import check_batch_size
from asa_lib.progress import progress

STATES_KEY = "states"


class StreamingSafetensors:
    """Write one float32 tensor of known shape into a safetensors file, row by row."""

    def __init__(
        self,
        path: Path,
        shape: tuple[int, ...],
        metadata: dict[str, str] | None = None,
        create: bool = True,
    ):
        """``create=False`` opens a file another process created with the same shape and
        metadata, to write some of its rows (disjoint rows: data-parallel workers)."""
        self.shape = shape
        self.row_bytes = int(np.prod(shape[1:])) * 4
        header = {
            STATES_KEY: {
                "dtype": "F32",
                "shape": list(shape),
                "data_offsets": [0, self.row_bytes * shape[0]],
            }
        }
        if metadata:
            header["__metadata__"] = metadata
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)  # safetensors aligns the data to 8 bytes
        head = struct.pack("<Q", len(hb)) + hb
        self.data_start = len(head)
        if create:
            self.f = open(path, "wb")
            self.f.write(head)
            self.f.truncate(self.data_start + self.row_bytes * shape[0])
        else:
            self.f = open(path, "r+b")
            if self.f.read(len(head)) != head:
                self.f.close()
                raise ValueError(f"{path} does not hold a states tensor of shape {shape}")

    def write_rows(self, rows: np.ndarray, index: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype="<f4")
        for r, i in zip(rows, index):
            self.f.seek(self.data_start + int(i) * self.row_bytes)
            self.f.write(r.tobytes())

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


# A batch is closed early where the next row would be padded by more than this share of
# the batch's longest row (every padded token costs a full token's compute on a CPU).
MAX_PADDING = 0.25


def _batches(
    lengths: list[int], batch_size: int, max_padding: float = MAX_PADDING
) -> list[np.ndarray]:
    """Batches of row indices, longest first: at most ``batch_size`` rows, and none padded by
    more than ``max_padding`` of the batch's longest row (``lengths``: the tokens each row runs)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")  # longest first
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) == batch_size or lengths[i] < (1 - max_padding) * lengths[cur[0]]):
            batches.append(np.asarray(cur))
            cur = []
        cur.append(i)
    if cur:
        batches.append(np.asarray(cur))
    return batches


@torch.no_grad()
def iter_last_token_states(
    lm: LoadedModel,
    prompts: list[str],
    batch_size: int,
    desc: str = "extract",
    share_prefix: bool = True,
    shard: tuple[int, int] | None = None,
    upto: int | None = None,
    known: Collection[int] = (),
):
    """Yield ``(index, states)`` per batch: index (B,) into ``prompts``, states (B, L, H) float32.

    ``upto``: only blocks ``0 .. upto`` are read (states (B, upto + 1, H)); where the model's
    blocks can be skipped (:func:`~asa_lib.model.load.blocks_can_be_skipped`) the blocks above
    do not run at all (``asa evaluate`` reads one block: L*).

    With ``share_prefix`` the tokens common to all prompts run once (see
    :mod:`asa_lib.engine.prefix`) and each batch runs only its right-padded suffixes;
    otherwise whole prompts run. Both read each row at its last real token.
    ``shard=(rank, world)``: only every ``world``-th batch from ``rank`` (a
    data-parallel worker); the batches are those of one process.
    ``known``: indices whose states the caller has; a batch of only such rows is not run
    (a resumed run). The batches stay those of a run without ``known``, so a resumed
    run's states are bit for bit a whole run's.
    """
    batch_size = check_batch_size(batch_size)
    lengths: list[int] = []
    first: list[int] = []

    def rows():  # token ids are not kept: memory stays at one chunk
        for s in range(0, len(prompts), 1024):
            for x in token_ids(lm, prompts[s : s + 1024]):
                if not lengths:
                    first.extend(x)
                lengths.append(len(x))
                yield x

    if share_prefix:
        P = shared_prefix_len(rows())
    else:
        P = 0
        for _ in rows():
            pass
    prefix = cached_prefix(lm, first[:P]) if P > 0 else None  # once for all splits
    pad = lm.tokenizer.pad_token_id
    blocks = decoder_blocks(lm.model)
    if upto is not None and not 0 <= upto < len(blocks):
        raise ValueError(f"upto={upto}: the model has blocks 0 .. {len(blocks) - 1}")
    read = len(blocks) if upto is None else upto + 1
    above = range(read, len(blocks)) if blocks_can_be_skipped(lm.model) else range(0)
    batches = _batches([n - P for n in lengths], batch_size)  # the suffixes run
    if shard is not None:
        batches = shard_units(batches, *shard)
    if known:
        have = set(map(int, known))
        batches = [b for b in batches if not have.issuperset(b.tolist())]
    total = sum(len(b) for b in batches)
    # only the blocks' states are read: the LM head runs at one position per row, not all
    head = {"logits_to_keep": 1} if accepts_logits_to_keep(lm.model) else {}
    with (
        capture_last_token(blocks[:read]) as captured,
        skip_blocks(blocks, above),
        progress(total, desc) as bar,
    ):
        for idx in batches:
            batch_ids = token_ids(lm, [prompts[i] for i in idx])
            input_ids, mask, pos, last = right_padded([x[P:] for x in batch_ids], pad, P, lm.device)
            captured.positions = last
            kw = (
                {cache_kwarg(lm.model): prefix.expand(len(idx)), "use_cache": True}
                if prefix
                else {"use_cache": False}
            )
            lm.model(input_ids=input_ids, attention_mask=mask, position_ids=pos, **kw, **head)
            states = torch.stack([captured[l] for l in range(read)], dim=1)  # (B, L, H)
            yield idx, states.float().cpu().numpy()
            bar.update(len(idx))


def cached_last_token_states(
    lm: LoadedModel,
    prompts: list[str],
    layer: int,
    batch_size: int,
    cache: GenerationCache,
    context: str,
    desc: str = "extract",
) -> np.ndarray:
    """Each prompt's state at block ``layer`` (N, H) float32, kept in ``cache`` batch by batch.

    A row whose state the cache holds (its key: ``context``, the prompt and the block) is not
    run again, so an evaluation killed while it reads states resumes where it stopped. The
    blocks above ``layer`` do not run (``upto``). ``context`` must name what decides a state
    besides its prompt: the model's weights, tokenizer and device
    (:func:`~asa_lib.engine.generate.generation_context`).
    """
    keys = [make_key(context, p, f"state at block {int(layer)}") for p in prompts]
    found = cache.get_states_many(keys)
    h = np.zeros((len(prompts), lm.hidden_size), dtype=np.float32)
    known = [i for i, k in enumerate(keys) if k in found and found[k].shape == (lm.hidden_size,)]
    for i in known:
        h[i] = found[keys[i]]
    if len(known) == len(prompts):  # all cached: no tokenizing, no shared-prefix forward
        return h
    for idx, states in iter_last_token_states(
        lm, prompts, batch_size, desc=desc, upto=layer, known=known
    ):
        h[idx] = states[:, layer]
        cache.put_states_many({keys[i]: h[i] for i in idx.tolist()})
    return h


def extract_states(
    lm: LoadedModel,
    prompts: list[str],
    batch_size: int = 8,
    desc: str = "extract",
    share_prefix: bool = True,
) -> np.ndarray:
    """All states in memory: (N, L, H) float32. For small sets and tests."""
    out = np.zeros((len(prompts), lm.num_layers, lm.hidden_size), dtype=np.float32)
    for idx, states in iter_last_token_states(lm, prompts, batch_size, desc, share_prefix):
        out[idx] = states
    return out


def extract_to_file(
    lm: LoadedModel,
    prompts: list[str],
    path: str | Path,
    batch_size: int = 8,
    desc: str = "extract",
    meta: dict | None = None,
    share_prefix: bool = True,
) -> Path:
    """Stream the states of ``prompts`` to a safetensors file; memory is one batch."""
    path = Path(path)
    shape = (len(prompts), lm.num_layers, lm.hidden_size)
    with atomic_path(path) as tmp:
        w = StreamingSafetensors(tmp, shape, states_metadata(lm.model_id))
        try:
            for idx, states in iter_last_token_states(lm, prompts, batch_size, desc, share_prefix):
                w.write_rows(states, idx)
        finally:
            w.close()
    if meta is not None:
        write_json(path.with_suffix(".json"), meta)
    return path


def states_path(run_dir: str | Path, split: str) -> Path:
    return RunDir(run_dir).states(split)


def load_states(run_dir: str | Path, split: str, layer: int | None = None) -> np.ndarray:
    """(N, L, H) for a split, or (N, H) at one ``layer`` (read lazily from disk)."""
    with safe_open(str(states_path(run_dir, split)), framework="numpy") as f:
        sl = f.get_slice(STATES_KEY)
        if layer is None:
            return sl[:]
        n, num_layers, _ = sl.get_shape()
        if not 0 <= layer < num_layers:
            raise IndexError(f"layer {layer} out of range: the states hold {num_layers} blocks")
        return np.asarray(sl[:, layer : layer + 1, :])[:, 0, :]


def load_meta(run_dir: str | Path, split: str) -> dict:
    """ids, labels, domains of a split's states, in row order."""
    return json.loads(RunDir(run_dir).states_meta(split).read_text())


def states_shape(run_dir: str | Path, split: str) -> tuple[int, int, int]:
    with safe_open(str(states_path(run_dir, split)), framework="numpy") as f:
        return tuple(f.get_slice(STATES_KEY).get_shape())


def states_metadata(model_id: str) -> dict[str, str]:
    return {
        "layout": "(samples, layers, hidden); output of block l at the last prompt token",
        "model_id": model_id,
    }
