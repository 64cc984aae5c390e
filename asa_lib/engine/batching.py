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


def gen_batches(lm: LoadedModel, ids, idx: list[int], P: int, batch_size: int) -> list[list[int]]:
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


T = TypeVar("T")


def shard_units(units: Sequence[T], rank: int, world: int) -> list[T]:
    """The units worker ``rank`` of ``world`` takes: every ``world``-th, starting at ``rank``.

    Units come longest first, so dealing them out round robin balances the work.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    return list(units[rank::world])
