"""One sweep config (or the unsteered baseline) evaluated on VALID and TEST.

Writes ``sweep/<name>.json``: the config, alpha_eff, per-split metrics with
bootstrap intervals, per-prompt records (:class:`~asa_lib.run.records.PromptRecord`:
id, split, domain, label, routed domain, p(tool), gate, output text,
triggered, format_valid, valid), and what the results came from: the model id,
the bundle's sha256, the prompt format's sha256 and library versions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from asa_lib.data.splits import read_splits, read_tool_sets, render_samples
from asa_lib.engine.cache import GenerationCache
from asa_lib.engine.decode import GenerationStats
from asa_lib.engine.extract import load_meta, load_states
from asa_lib.engine.generate import GenerationSettings, generate_all
from asa_lib.files import file_digest, library_versions, write_json
from asa_lib.layout import RunDir
from asa_lib.method.bundle import Bundle
from asa_lib.method.gate import alpha_effective, compute_gates, steering_deltas
from asa_lib.metrics import evaluate_records
from asa_lib.model.load import LoadedModel
from asa_lib.params import BASELINE, Params, SweepConfig
from asa_lib.prompts import prompt_format_sha256
from asa_lib.run.parallel import launch
from asa_lib.run.records import PromptRecord
from asa_lib.run.stages import sweep_stage
from asa_lib.tools import CallMarkers, score_output

EVAL_SPLITS = ("valid", "test")


# Unsteered configs still record each prompt's routed domain and p(tool), gate 0.
_RECORD_ONLY = SweepConfig(BASELINE, tau=0.5, gate="none")


def open_cache(run_dir: str | Path, params: Params, lm: LoadedModel) -> GenerationCache:
    """The run's generation cache. Its context is what the params say; every key adds what
    decides an output (:func:`~asa_lib.engine.generate.output_context`: the weights' digest,
    so the tiny model's seed ``data.seed`` too, the settings, the markers) and the block."""
    import torch
    import transformers

    context = {
        "model_id": lm.model_id,
        "model": params.model.__dict__,
        "device": lm.device.type,
        "max_new_tokens": params.generation.max_new_tokens,
        "start": params.prompt.tool_call_start,
        "end": params.prompt.tool_call_end,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    adapter = params.adapter_path()
    if (
        adapter is not None
    ):  # the model id names the LoRA weights; its config (rank, alpha) matters too
        context["adapter_config"] = file_digest(adapter / "adapter_config.json")
    return GenerationCache(RunDir(run_dir).cache, context)


def sweep_path(run_dir: str | Path, name: str) -> Path:
    return RunDir(run_dir).sweep(name)


def _split_inputs(
    params: Params, run_dir, lm: LoadedModel, bundle: Bundle, config, a_eff, samples, split
):
    """(samples, gates, deltas, prompts) of one split, in the order of its stored states."""
    meta = load_meta(run_dir, split)
    xs = [samples[split][i] for i in meta["ids"]]
    h = load_states(run_dir, split, bundle.layer)
    steer = config.steers
    gates = compute_gates(bundle, h, config if steer else _RECORD_ONLY, [x.domain for x in xs])
    deltas = steering_deltas(bundle, gates, a_eff, config) if steer else None
    prompts = render_samples(lm.tokenizer, params.prompt, xs, run_dir)  # each with its own tools
    return xs, gates, deltas, prompts


def _generate(params, lm, bundle, prompts, deltas, cache, desc, stats, shard=None, sync=None):
    settings = GenerationSettings.resolve(params.generation, params.prompt, lm)
    return generate_all(
        lm,
        prompts,
        settings,
        deltas,
        bundle.layer,
        cache,
        desc=desc,
        stats=stats,
        shard=shard,
        sync=sync,
    )


def _prepare(params: Params, lm: LoadedModel, bundle: Bundle, config: SweepConfig):
    bundle.check_facts(lm.facts(), allow_mismatch=params.steering.allow_model_mismatch)
    return (
        alpha_effective(config.alpha, params.steering.alpha_unit, bundle) if config.steers else 0.0
    )


def score_records(
    xs: list, gates, outputs: list[str], split: str, markers: CallMarkers, tool_sets, params: Params
) -> list[dict]:
    """One :class:`~asa_lib.run.records.PromptRecord` per sample, as JSON: row, decision, output, score.

    A call is valid only against the row's own tools (``tool_sets``), else ``prompt.tools``.
    """
    return [
        PromptRecord.scored(
            score_output(o, markers, tool_sets[x.tools] if x.tools else params.prompt.tools),
            id=x.id,
            split=split,
            domain=x.domain,
            label=x.label,
            tools=x.tools,
            routed=d,
            has_probe=bool(hp),
            p_tool=float(p),
            gate=int(g),
            output=o,
        ).to_dict()
        for x, d, p, g, hp, o in zip(
            xs, gates.routed, gates.p_tool, gates.gate, gates.has_probe, outputs
        )
    ]


def split_result(records: list[dict], seed: int, n_new: int, gates, stats: GenerationStats) -> dict:
    """One split's entry of a sweep result: metrics with intervals, counts, generation stats."""
    return {
        "metrics": evaluate_records(records, seed=seed),
        "generated_now": n_new,
        "steered": int(np.count_nonzero(gates.gate)),
        "generation": asdict(stats),
    }


def run_config(
    params: Params,
    run_dir: str | Path,
    lm: LoadedModel,
    bundle: Bundle,
    config: SweepConfig,
    splits: tuple[str, ...] = EVAL_SPLITS,
    processes: int = 1,
) -> dict:
    """Evaluate one config (:func:`~asa_lib.params.baseline_config` is the unsteered baseline).

    ``processes > 1``: the generations run in that many data-parallel workers
    (:mod:`asa_lib.run.parallel`) that fill the generation cache; this process
    then reads every output from it. The results equal one process's.
    """
    run = RunDir(run_dir)
    a_eff = _prepare(params, lm, bundle, config)
    samples = {s: {x.id: x for x in xs} for s, xs in read_splits(run).items()}
    workers: list[dict] = []
    if processes > 1:
        spec = {
            "params": params.to_dict(),
            "base_dir": params.base_dir,
            "run_dir": str(run.root),
            "config": config.name,
            "splits": list(splits),
        }
        workers = launch("generate", spec, processes, run.parallel_work(sweep_stage(config.name)))
    cache = open_cache(run, params, lm)
    out = {
        "name": config.name,
        "tau": config.tau,
        "alpha": config.alpha,
        "beta": config.beta,
        "alpha_unit": params.steering.alpha_unit,
        "alpha_eff": a_eff,
        "layer": bundle.layer,
        "config": asdict(config),
        "splits": {},
        "records": [],
        "model_id": lm.model_id,
        "bundle_sha256": bundle.sha256 or None,  # None: a bundle not loaded from its folder
        "prompt_format_sha256": prompt_format_sha256(params.prompt),
        "versions": library_versions(),
    }
    markers, tool_sets = CallMarkers.of(params.prompt), read_tool_sets(run)
    try:
        for split in splits:
            xs, gates, deltas, prompts = _split_inputs(
                params, run, lm, bundle, config, a_eff, samples, split
            )
            stats = GenerationStats()
            # with workers, every output is in the cache by now (anything missing is generated here)
            outputs, n_new = _generate(
                params, lm, bundle, prompts, deltas, cache, f"{config.name}/{split}", stats
            )
            for w in workers:
                n_new += w[split]["generated"]
                stats.add(GenerationStats(**w[split]["stats"]))
            records = score_records(xs, gates, outputs, split, markers, tool_sets, params)
            out["splits"][split] = split_result(records, params.data.seed, n_new, gates, stats)
            out["records"].extend(records)
    finally:
        cache.close()
    write_json(sweep_path(run, config.name), out)
    return out


def baseline_calls(
    params: Params, run_dir: str | Path, lm: LoadedModel, split: str, layer: int
) -> dict:
    """The unsteered model's outputs and calls on one split, through the sweep's driver and cache.

    The same prompts, settings and cache keys as the ``baseline`` config
    (:func:`run_config`), so each output is generated once per run: stage 04
    generates CAL (for the diagnostics and ``vector: behaviour``) and VALID
    here, and the sweep's baseline then reads VALID back from the cache.
    ``layer`` only names the block in the key of a steered row (none here).
    Returns ``ids``, ``called`` (1 where the output starts a tool call, the
    sweep's ``triggered``), ``generated_now``, ``seconds`` and ``generation``
    (:class:`~asa_lib.engine.decode.GenerationStats`), in the row order of
    the split's stored states.
    """
    import time

    run = RunDir(run_dir)
    samples = {x.id: x for x in read_splits(run)[split]}
    xs = [samples[i] for i in load_meta(run, split)["ids"]]
    prompts = render_samples(lm.tokenizer, params.prompt, xs, run)
    settings = GenerationSettings.resolve(params.generation, params.prompt, lm)
    markers, tool_sets = CallMarkers.of(params.prompt), read_tool_sets(run)
    cache = open_cache(run, params, lm)
    stats = GenerationStats()
    t0 = time.perf_counter()
    try:
        outputs, n_new = generate_all(
            lm, prompts, settings, None, layer, cache, desc=f"baseline/{split}", stats=stats
        )
    finally:
        cache.close()
    called = [
        int(
            score_output(
                o, markers, tool_sets[x.tools] if x.tools else params.prompt.tools
            ).triggered
        )
        for x, o in zip(xs, outputs)
    ]
    return {
        "ids": [x.id for x in xs],
        "called": called,
        "generated_now": int(n_new),
        "seconds": time.perf_counter() - t0,
        "generation": asdict(stats),
    }


def generate_shard(spec: dict, shard: tuple[int, int], barrier: Callable[[], None]) -> dict:
    """A data-parallel worker's part of one config: its chunks' outputs, into the run's cache.

    ``barrier`` waits for every worker: before a split (the previous one is
    written) and between reading the cache and writing to it.
    """
    from asa_lib.method.bundle import load_bundle
    from asa_lib.model.load import load_params_model
    from asa_lib.params import params_from_dict

    params = params_from_dict(spec["params"], base_dir=spec["base_dir"])
    run = RunDir(spec["run_dir"])
    config = params.config(spec["config"])
    bundle = load_bundle(run.bundle)
    lm = load_params_model(params)
    a_eff = _prepare(params, lm, bundle, config)
    samples = {s: {x.id: x for x in xs} for s, xs in read_splits(run).items()}
    cache = open_cache(run, params, lm)
    result = {}
    try:
        for split in spec["splits"]:
            _, _, deltas, prompts = _split_inputs(
                params, run, lm, bundle, config, a_eff, samples, split
            )
            stats = GenerationStats()
            desc = f"{config.name}/{split} [rank {shard[0]}]"
            barrier()
            _, n = _generate(
                params, lm, bundle, prompts, deltas, cache, desc, stats, shard, barrier
            )
            result[split] = {"generated": n, "stats": asdict(stats)}
    finally:
        cache.close()
    return result
