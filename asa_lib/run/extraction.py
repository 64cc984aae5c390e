"""Stage 02's driver: every split's states, in one process or in data-parallel workers."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asa_lib.engine.extract import (
    StreamingSafetensors,
    extract_to_file,
    iter_last_token_states,
    states_metadata,
)
from asa_lib.engine.prefix import check_prompt_lengths, token_ids
from asa_lib.files import atomic_path, write_json
from asa_lib.layout import RunDir
from asa_lib.model.load import LoadedModel, load_params_model, tokenizer_digest
from asa_lib.prompts import prompt_format_sha256
from asa_lib.run.parallel import launch
from asa_lib.run.stages import require


def _split_prompts(lm: LoadedModel, params, run_dir) -> dict[str, tuple[list, list[str]]]:
    """split -> (samples, rendered prompts), in the order stage 01 wrote them."""
    from asa_lib.data.splits import read_splits, render_samples

    return {
        split: (xs, render_samples(lm.tokenizer, params.prompt, xs, run_dir))
        for split, xs in read_splits(run_dir).items()
    }


@dataclass
class ExtractionResult:
    """What stage 02 did: one summary row per split, and the model it ran (to reuse)."""

    rows: list[dict]  # split, samples, file, MB, prompt tokens min/median/max
    lm: LoadedModel


def run(
    params, run_dir: str | Path, lm: LoadedModel | None = None, processes: int = 1
) -> ExtractionResult:
    """Stage 02: :func:`extract_run` with the run's model (``lm=None``: loaded from ``params``)."""
    require(run_dir, "02_extraction")
    lm = load_params_model(params) if lm is None else lm
    return ExtractionResult(extract_run(lm, params, run_dir, processes=processes), lm)


def extract_run(lm: LoadedModel, params, run_dir: str | Path, processes: int = 1) -> list[dict]:
    """Stage 02: extract and store the states of every split; returns one summary row per split.

    ``processes > 1``: that many data-parallel workers (:mod:`asa_lib.run.parallel`)
    each write their batches' rows into the split's file; the files equal the
    one-process files byte for byte.

    A row whose prompt is longer than ``generation.max_prompt_tokens`` or the model's context
    (less ``max_new_tokens``, the room its generation needs) stops the stage before any
    extraction, naming the row: the data stage kept it, and leaving it out here would change
    the splits.
    """
    run = RunDir(run_dir)
    jobs = _split_prompts(lm, params, run)
    n_tok = {}
    for split, (xs, prompts) in jobs.items():
        ids = token_ids(lm, prompts)
        check_prompt_lengths(
            lm,
            ids,
            params.generation.max_prompt_tokens,
            params.generation.max_new_tokens,
            name=lambda i, xs=xs, split=split: f"{split} row {xs[i].id!r}",
        )
        n_tok[split] = [len(x) for x in ids]
    if processes > 1:
        with ExitStack() as stack:  # every file renamed into place only if all workers succeed
            files = {}
            for split, (xs, _) in jobs.items():
                tmp = stack.enter_context(atomic_path(run.states(split)))
                shape = (len(xs), lm.num_layers, lm.hidden_size)
                StreamingSafetensors(tmp, shape, states_metadata(lm.model_id)).close()
                files[split] = str(tmp)
            spec = {
                "params": params.to_dict(),
                "base_dir": params.base_dir,
                "run_dir": str(run.root),
                "files": files,
            }
            launch("extract", spec, processes, run.parallel_work("02_extraction"))
    rows = []
    for split, (xs, prompts) in jobs.items():
        path = run.states(split)
        meta = {
            "ids": [x.id for x in xs],
            "labels": [x.label for x in xs],
            "domains": [x.domain for x in xs],
            "model_id": lm.model_id,
            "model_fingerprint": lm.fingerprint,
            "model_weights": lm.weights,
            # what the prompts were rendered and tokenized with; the bundle records both
            "prompt_format_sha256": prompt_format_sha256(params.prompt),
            "tokenizer_sha256": tokenizer_digest(lm.tokenizer),
        }
        if processes > 1:
            write_json(run.states_meta(split), meta)
        else:
            extract_to_file(
                lm, prompts, path, batch_size=params.extraction.batch_size, desc=split, meta=meta
            )
        n = n_tok[split]
        rows.append(
            {
                "split": split,
                "samples": len(xs),
                "file": str(path.relative_to(run.root)),
                "MB": round(path.stat().st_size / 2**20, 2),
                "prompt tokens min/median/max": f"{min(n)}/{int(np.median(n))}/{max(n)}",
            }
        )
    return rows


def extract_shard(spec: dict, shard: tuple[int, int]) -> dict:
    """A data-parallel worker's part of stage 02: its batches' rows, written into ``spec["files"]``."""
    from asa_lib.model.load import load_params_model
    from asa_lib.params import params_from_dict

    params = params_from_dict(spec["params"], base_dir=spec["base_dir"])
    lm = load_params_model(params)
    jobs = _split_prompts(lm, params, spec["run_dir"])
    done = {}
    for split, path in spec["files"].items():
        xs, prompts = jobs[split]
        shape = (len(xs), lm.num_layers, lm.hidden_size)
        w = StreamingSafetensors(Path(path), shape, states_metadata(lm.model_id), create=False)
        n = 0
        try:
            for idx, states in iter_last_token_states(
                lm, prompts, params.extraction.batch_size, f"{split} [rank {shard[0]}]", shard=shard
            ):
                w.write_rows(states, idx)
                n += len(idx)
        finally:
            w.close()
        done[split] = n
    return {"rows": done}
