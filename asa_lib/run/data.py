"""Stage 01: the splits from ``params.data``, written to ``data/`` (what ``notebooks/01_data.py`` shows)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from asa_lib.data import SplitResult, make_splits_from_params, write_splits
from asa_lib.layout import RunDir
from asa_lib.params import Params

# What 01's page says about the run's data kind (one kind per run: the other is not described).
KIND_INTRO = {
    "alpaca_keywords": (
        "data.kind: alpaca_keywords, faithful to the seed notebook: keyword domains "
        "(data.domains; first match wins), the seed's labelling rule on the Alpaca output, "
        "per-bucket shuffles with the seed, CAL/TRAIN/VALID/TEST slices (TEST x "
        "test_multiplier), final shuffles."
    ),
    "labelled": (
        "data.kind: labelled: rows that carry their own label and domain, and a user text or "
        "a conversation (messages), with their own tools where given; a split column is "
        "respected, otherwise the seed's protocol splits the domain x label buckets."
    ),
}


@dataclass
class DataResult:
    """What stage 01 made: the splits as written, and the warnings building them raised."""

    splits: SplitResult
    warnings: list[str]  # the warnings' messages, in order (the notebook prints each)


def run(params: Params, run_dir: str | os.PathLike) -> DataResult:
    """Stage 01: build the splits and write ``data/splits.jsonl``, ``data/summary.json``
    (and ``data/tools.json`` where rows bring their own tools).

    Warnings raised while the rows are read and split are caught and returned
    (:attr:`DataResult.warnings`), not shown.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = make_splits_from_params(params)
    write_splits(RunDir(run_dir), result)
    return DataResult(result, [str(w.message) for w in caught])
