"""Stage 06_generate: every sweep config's outputs on VALID and TEST, prompt-major.

The baseline and every sweep config, on VALID and TEST together, go to the planner
(:func:`~asa_lib.run.core.plan_outputs`, :func:`~asa_lib.engine.generate.generate_configs`)
at once: each prompt is prefilled once (positions ``0 .. n-2``), and every
config runs the last position with its own delta and decodes (or verifies the
baseline's output as its draft) from that shared state. The outputs go into
the run's generation cache under the keys every other path uses; the
per-config notebooks ``06_sweep__<config>`` then score and report from it.

:func:`run` writes ``generation/generation.json``: the prompts, the rows
generated now, what the pass did (prompts prefilled, tokens forwarded, the
share of padding, drafts) and, per split, the check that the state at L* read
on the way equals the extraction stage's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from asa_lib.engine.decode import GenerationStats
from asa_lib.engine.generate import GenerationSettings
from asa_lib.files import read_json, write_json
from asa_lib.layout import RunDir
from asa_lib.method.bundle import load_bundle
from asa_lib.model.load import LoadedModel, load_params_model
from asa_lib.params import Params, params_from_dict
from asa_lib.run.core import plan_outputs
from asa_lib.run.parallel import launch
from asa_lib.run.stages import require
from asa_lib.run.sweep import (
    EVAL_SPLITS,
    config_spec,
    open_cache,
    read_samples,
    split_inputs,
    steering_blocks,
)

STAGE = "06_generate"


@dataclass
class GenerationResult:
    """What stage 06_generate did, as written to ``generation/generation.json``."""

    record: dict[str, Any]

    def rows(self) -> list[dict[str, Any]]:
        """The pass in one row, for display."""
        r, g = self.record, self.record["generation"]
        return [
            {
                "prompts": " + ".join(
                    f"{v['prompts']} {k.upper()}" for k, v in r["splits"].items()
                ),
                "configs": len(r["configs"]),
                "prompt x config rows": r["config_rows"],
                "generated now": r["generated_now"],
                "prompts prefilled once": g["prompt_prefills"],
                "tokens forwarded": g["tokens_forwarded"],
                "padding share": r["padding_share"],
                "drafts verified": g["drafted"],
                "decided by the draft": g["done_by_draft"],
                "seconds": r["seconds"],
            }
        ]


def _padding_share(stats: GenerationStats) -> float | None:
    return stats.padded_tokens / stats.tokens_forwarded if stats.tokens_forwarded else None


def _state_check(states: dict[int, np.ndarray], h: np.ndarray) -> dict[str, Any]:
    """How far the state at L* read during generation is from the extraction stage's."""
    if not states:
        return {"compared": 0, "max_abs_diff": None, "max_rel_diff": None}
    idx = sorted(states)
    got = np.stack([states[i] for i in idx]).astype(np.float64)
    want = np.asarray(h[idx], dtype=np.float64)
    diff = np.abs(got - want).max(axis=1)
    scale = np.maximum(np.abs(want).max(axis=1), 1e-12)
    return {
        "compared": len(idx),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float((diff / scale).max()),
    }


def joint_inputs(params: Params, folder: RunDir, lm: LoadedModel, layer: int, samples: dict):
    """VALID and TEST as one set of prompts (one prompt-major pass: the unsteered rows of both
    splits decode together): samples, prompts, states at ``layer``, and each split's rows
    ``(start, end)``. Gates are computed row by row, so they are each split's own."""
    xs, prompts, hs, parts = [], [], [], {}
    for split in EVAL_SPLITS:
        x, p, h = split_inputs(params, folder, lm, layer, samples, split)
        parts[split] = (len(xs), len(xs) + len(x))
        xs += x
        prompts += p
        hs.append(h)
    return xs, prompts, np.concatenate(hs), parts


def _plan_all(params, folder, lm, bundle, specs, settings, samples, desc, before=None, **kw):
    """Every config on VALID and TEST in one prompt-major pass, through the run's cache:
    (planned, prompts, states, split rows). ``before``: called once the cache is open."""
    xs, prompts, h, parts = joint_inputs(params, folder, lm, bundle.layer, samples)
    cache = open_cache(folder, params, lm)
    try:
        if before is not None:
            before()
        planned = plan_outputs(
            lm, prompts, h, [x.domain for x in xs], bundle, specs, settings, cache, desc=desc, **kw
        )
    finally:
        cache.close()
    return planned, prompts, h, parts


def run(
    params: Params, run_dir: str | os.PathLike, lm: LoadedModel | None = None, processes: int = 1
) -> GenerationResult:
    """Stage 06_generate. ``processes > 1``: that many data-parallel workers fill the cache
    first (:mod:`asa_lib.run.parallel`); this process then reads every output back."""
    folder = RunDir(run_dir)
    require(folder, STAGE)
    bundle = load_bundle(folder.bundle)
    lm = load_params_model(params) if lm is None else lm
    blocks = steering_blocks(params, folder)
    specs = [config_spec(params, lm, bundle, c, blocks["blocks"]) for c in params.configs()]
    workers: list[dict] = []
    if processes > 1:
        spec = {
            "params": params.to_dict(),
            "base_dir": params.base_dir,
            "run_dir": str(folder.root),
        }
        workers = launch("generate", spec, processes, folder.parallel_work(STAGE))
    samples = read_samples(folder)
    settings = GenerationSettings.resolve(params.generation, params.prompt, lm)
    record: dict[str, Any] = {
        "configs": [s.name for s in specs],
        "layer": bundle.layer,
        "steering_blocks": blocks,
        "config_layers": {s.name: s.layer for s in specs if s.layer is not None},
        "settings": {
            "batch_size": settings.batch_size,
            "max_new_tokens": settings.max_new_tokens,
            "share_prefix": settings.share_prefix,
            "draft": settings.draft,
        },
        "processes": processes,
        "splits": {},
    }
    t0 = time.perf_counter()
    planned, prompts, h, parts = _plan_all(
        params,
        folder,
        lm,
        bundle,
        specs,
        settings,
        samples,
        desc=f"{len(specs)} configs/{'+'.join(EVAL_SPLITS)}",
        read_states=True,
    )
    stats, n_new = planned.stats, planned.generated_total
    for w in workers:
        n_new += w["generated"]
        stats.add(GenerationStats(**w["stats"]))
    record.update(
        {
            "prompts": len(prompts),
            "config_rows": len(prompts) * len(specs),
            "generated_now": n_new,
            "generated_by_config": planned.generated,
            "padding_share": _padding_share(stats),
            "generation": asdict(stats),
            "seconds": round(time.perf_counter() - t0, 2),
        }
    )
    for split, (a, b) in parts.items():
        states = {i - a: v for i, v in planned.states.items() if a <= i < b}
        record["splits"][split] = {"prompts": b - a, "state_at_layer": _state_check(states, h[a:b])}
    write_json(folder.generation, record)
    return GenerationResult(record)


def load_generation(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What stage 06_generate wrote."""
    return read_json(RunDir(run_dir).generation)


def generate_shard(spec: dict, shard: tuple[int, int], barrier: Callable[[], None]) -> dict:
    """A data-parallel worker's part of stage 06_generate: its chunks of prompts, every config,
    into the run's cache. ``barrier`` waits for every worker (before the pass, and between
    reading the cache and writing to it)."""
    params = params_from_dict(spec["params"], base_dir=spec["base_dir"])
    folder = RunDir(spec["run_dir"])
    bundle = load_bundle(folder.bundle)
    lm = load_params_model(params)
    blocks = steering_blocks(params, folder)["blocks"]
    specs = [config_spec(params, lm, bundle, c, blocks) for c in params.configs()]
    samples = read_samples(folder)
    settings = GenerationSettings.resolve(params.generation, params.prompt, lm)
    planned, *_ = _plan_all(
        params,
        folder,
        lm,
        bundle,
        specs,
        settings,
        samples,
        desc=f"{len(specs)} configs [rank {shard[0]}]",
        before=barrier,
        shard=shard,
        sync=barrier,
    )
    return {"generated": planned.generated_total, "stats": asdict(planned.stats)}
