"""One sweep config (or the unsteered baseline) scored on VALID and TEST.

The outputs come from the run's generation cache, which stage ``06_generate``
(:mod:`asa_lib.run.generation`) fills for every config at once; gates,
records and metrics come from the evaluation core (:mod:`asa_lib.run.core`).

Writes ``sweep/<name>.json``: the config, alpha_eff, per-split metrics with
bootstrap intervals, per-prompt records (:class:`~asa_lib.run.records.PromptRecord`:
id, split, domain, label, routed domain, p(tool), gate, output text,
triggered, format_valid, valid), and what the results came from: the model id,
the bundle's sha256, the prompt format's sha256 and library versions.
"""

from __future__ import annotations

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
from asa_lib.method.bundle import Bundle, BundleError
from asa_lib.method.gate import alpha_effective
from asa_lib.method.probing import load_layers, resolve_blocks
from asa_lib.model.load import LoadedModel
from asa_lib.params import Params, ParamsError, SweepConfig, resolve_layer
from asa_lib.prompts import prompt_format_sha256
from asa_lib.run.core import ConfigSpec, score_configs, tools_of
from asa_lib.tools import CallMarkers, score_output

EVAL_SPLITS = ("valid", "test")


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


def split_inputs(
    params: Params, run_dir, lm: LoadedModel, layer: int, samples: dict, split: str
) -> tuple[list, list[str], np.ndarray]:
    """(samples, rendered prompts, states at block ``layer``) of one split, in the order of its
    stored states; each prompt with its own tools."""
    meta = load_meta(run_dir, split)
    xs = [samples[split][i] for i in meta["ids"]]
    prompts = render_samples(lm.tokenizer, params.prompt, xs, run_dir)
    return xs, prompts, load_states(run_dir, split, layer)


def steering_blocks(params: Params, run_dir: str | Path) -> dict:
    """``steering.blocks`` resolved on this run (:func:`~asa_lib.method.probing.resolve_blocks`
    on stage 03's VALID AUCs and L*): ``{"rule", "L_star", "blocks": [auto1, auto2, ...],
    "valid_auc": {block: AUC}}``; without a rule ``{"rule": None, "blocks": []}`` (stage 03's
    file is not read)."""
    rule = params.steering.blocks
    if rule is None:
        return {"rule": None, "blocks": []}
    layers = load_layers(run_dir)
    best = layers["best_layer"]
    aucs = [r["auc"] for r in layers["layers"]]
    blocks = resolve_blocks(rule, aucs, best)
    return {
        "rule": asdict(rule) if rule is not None else None,
        "L_star": best,
        "blocks": blocks,
        "valid_auc": {str(b): aucs[b] for b in [best, *blocks]},
    }


def config_spec(
    params: Params,
    lm: LoadedModel,
    bundle: Bundle,
    config: SweepConfig,
    blocks: list[int] | None = None,
) -> ConfigSpec:
    """``config`` with its steering block (:func:`~asa_lib.params.resolve_layer`; ``blocks``:
    ``steering.blocks`` resolved, :func:`steering_blocks`) and its alpha_eff in that block's
    unit, once the bundle is checked against the model."""
    facts = lm.facts()
    bundle.check_facts(facts, allow_mismatch=params.steering.allow_model_mismatch)
    if not config.steers:
        return ConfigSpec(config, 0.0)
    layer = resolve_layer(config, bundle.layer, facts.num_layers, blocks)
    try:
        bundle.block(layer)
    except BundleError as e:
        raise ParamsError(f"sweep config {config.name!r}: {e}") from None
    a_eff = alpha_effective(config.alpha, params.steering.alpha_unit, bundle, layer)
    return ConfigSpec(config, a_eff, None if layer == bundle.layer else layer)


def read_samples(run: RunDir) -> dict[str, dict]:
    """Every split's samples by id."""
    return {s: {x.id: x for x in xs} for s, xs in read_splits(run).items()}


def run_config(
    params: Params,
    run_dir: str | Path,
    lm: LoadedModel,
    bundle: Bundle,
    config: SweepConfig,
    splits: tuple[str, ...] = EVAL_SPLITS,
) -> dict:
    """Score one config (:func:`~asa_lib.params.baseline_config` is the unsteered baseline)
    on VALID and TEST, through the evaluation core (:func:`~asa_lib.run.core.score_configs`).

    Stage ``06_generate`` (:mod:`asa_lib.run.generation`) has put every config's outputs in
    the run's generation cache; they are read back here (anything missing is generated).
    """
    run = RunDir(run_dir)
    spec = config_spec(params, lm, bundle, config, steering_blocks(params, run)["blocks"])
    samples = read_samples(run)
    cache = open_cache(run, params, lm)
    out = {
        "name": config.name,
        "tau": config.tau,
        "alpha": config.alpha,
        "beta": config.beta,
        "alpha_unit": params.steering.alpha_unit,
        "alpha_eff": spec.alpha_eff,
        # the steering block (the delta is added there) and the block the gate reads (L*)
        "layer": bundle.layer if spec.layer is None else spec.layer,
        "gate_layer": bundle.layer,
        "config": asdict(config),
        "splits": {},
        "records": [],
        "model_id": lm.model_id,
        "bundle_sha256": bundle.sha256 or None,  # None: a bundle not loaded from its folder
        "prompt_format_sha256": prompt_format_sha256(params.prompt),
        "versions": library_versions(),
    }
    settings = GenerationSettings.resolve(params.generation, params.prompt, lm)
    markers, tool_sets = CallMarkers.of(params.prompt), read_tool_sets(run)
    try:
        for split in splits:
            xs, prompts, h = split_inputs(params, run, lm, bundle.layer, samples, split)
            [res] = score_configs(
                lm,
                xs,
                prompts,
                h,
                bundle,
                [spec],
                settings,
                cache,
                split=split,
                markers=markers,
                tool_sets=tool_sets,
                pp=params.prompt,
                seed=params.data.seed,
                desc=f"{config.name}/{split}",
            )
            out["splits"][split] = res.split
            out["records"].extend(res.records)
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
        int(score_output(o, markers, tools_of(x, tool_sets, params.prompt)).triggered)
        for x, o in zip(xs, outputs)
    ]
    return {
        "ids": [x.id for x in xs],
        "called": called,
        "generated_now": int(n_new),
        "seconds": time.perf_counter() - t0,
        "generation": asdict(stats),
    }
