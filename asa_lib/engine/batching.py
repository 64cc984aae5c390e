"""How rows are cut into batches and chunks, and how chunks are dealt out to workers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from asa_lib.engine.prefix import (
    needs_equal_suffix_lengths,
)
from asa_lib.model.load import LoadedModel

# Rows are decoded in chunks of this many batches: the unit a data-parallel worker takes.
CHUNK_BATCHES = 4


# A batch of rows stops growing where padding would be more than this share of its columns
# (rows are length-sorted, so padding comes only from the spread of lengths within a batch).
MAX_PADDING = 0.25


def gen_batches(lm: LoadedModel, ids, idx: list[int], P: int, batch_size: int) -> list[list[int]]:
    """Batches of prompt indices, longest first, of at most ``batch_size`` rows and at most
    :data:`MAX_PADDING` padding (of the columns after the shared prefix ``P``); equal suffix
    lengths only where padding would leak (LFM2's conv layers with a shared prefix)."""
    order = sorted(idx, key=lambda i: -len(ids[i]))
    if P > 0 and needs_equal_suffix_lengths(lm.model):
        groups: dict[int, list[int]] = {}
        for i in order:
            groups.setdefault(len(ids[i]), []).append(i)
        return [
            g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)
        ]
    batches: list[list[int]] = []
    cur: list[int] = []
    width = real = 0  # the current batch's longest suffix and its real tokens
    for i in order:
        n = len(ids[i]) - P
        if cur and (
            len(cur) == batch_size or 1 - (real + n) / (width * (len(cur) + 1)) > MAX_PADDING
        ):
            batches.append(cur)
            cur, width, real = [], 0, 0
        cur.append(i)
        width, real = max(width, n), real + n
    if cur:
        batches.append(cur)
    return batches


T = TypeVar("T")


def shard_units(units: Sequence[T], rank: int, world: int) -> list[T]:
    """The units worker ``rank`` of ``world`` takes: every ``world``-th, starting at ``rank``.

    Units come longest first, so dealing them out round robin balances the work.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    return list(units[rank::world])
