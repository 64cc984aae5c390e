"""One sweep config (or the unsteered baseline) evaluated on VALID and TEST.

Writes ``sweep/<name>.json``: the config, alpha_eff, per-split metrics with
bootstrap intervals, and per-prompt records (id, split, domain, label, routed
domain, p(tool), gate, output text, triggered, format_valid, valid).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from .artifacts import RunDir, file_digest, write_json
from .bundle import Bundle
from .cache import GenerationCache
from .data import read_splits
from .extract import load_meta, load_states
from .gate import alpha_effective, compute_gates, steering_deltas
from .metrics import evaluate_records
from .models import LoadedModel
from .params import BASELINE, Params, SweepConfig
from .prompts import call_validity, render_prompts, triggered
from .steer import (
    GenerationStats,
    draft_for,
    draft_min_acceptance_for,
    generate_all,
    share_prefix_for,
)

EVAL_SPLITS = ("valid", "test")
# Unsteered configs still record each prompt's routed domain and p(tool), gate 0.
_RECORD_ONLY = SweepConfig(BASELINE, tau=0.5, gate="none")


def open_cache(run_dir: str | Path, params: Params, lm: LoadedModel) -> GenerationCache:
    import transformers

    context = {
        "model_id": lm.model_id,
        "model": params.model.__dict__,
        "device": lm.device.type,
        "max_new_tokens": params.generation.max_new_tokens,
        "start": params.prompt.tool_call_start,
        "end": params.prompt.tool_call_end,
        "transformers": transformers.__version__,
    }
    adapter = params.adapter_path()
    if (
        adapter is not None
    ):  # the model id names the LoRA weights; its config (rank, alpha) matters too
        context["adapter_config"] = file_digest(adapter / "adapter_config.json")
    return GenerationCache(RunDir(run_dir).cache, context)


def sweep_path(run_dir: str | Path, name: str) -> Path:
    return RunDir(run_dir).sweep(name)


def run_config(
    params: Params,
    run_dir: str | Path,
    lm: LoadedModel,
    bundle: Bundle,
    config: SweepConfig,
    splits: tuple[str, ...] = EVAL_SPLITS,
) -> dict:
    """Evaluate one config (:func:`~asa_lib.params.baseline_config` is the unsteered baseline)."""
    run_dir = Path(run_dir)
    bundle.check_model(
        lm.hidden_size,
        lm.num_layers,
        lm.model_id,
        lm.fingerprint,
        allow_mismatch=params.steering.allow_model_mismatch,
    )
    samples = {s: {x.id: x for x in xs} for s, xs in read_splits(run_dir).items()}
    steer = config.steers
    a_eff = alpha_effective(config.alpha, params.steering.alpha_unit, bundle) if steer else 0.0
    cache = open_cache(run_dir, params, lm)
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
    }
    try:
        for split in splits:
            meta = load_meta(run_dir, split)
            xs = [samples[split][i] for i in meta["ids"]]
            h = load_states(run_dir, split, bundle.layer)
            gates = compute_gates(
                bundle, h, config if steer else _RECORD_ONLY, [x.domain for x in xs]
            )
            deltas = steering_deltas(bundle, gates, a_eff, config) if steer else None
            prompts = render_prompts(lm.tokenizer, params.prompt, [x.text for x in xs])
            stats = GenerationStats()
            outputs, n_new = generate_all(
                lm,
                prompts,
                deltas,
                bundle.layer,
                params.generation.batch_size,
                params.generation.max_new_tokens,
                params.prompt,
                cache,
                desc=f"{config.name}/{split}",
                share_prefix=share_prefix_for(params.generation.share_prefix, lm),
                draft=draft_for(params.generation.draft, lm),
                stats=stats,
                draft_min_acceptance=draft_min_acceptance_for(params.generation.draft, lm),
            )
            records = []
            for x, d, p, g, hp, o in zip(
                xs, gates.routed, gates.p_tool, gates.gate, gates.has_probe, outputs
            ):
                v = call_validity(o, params.prompt)
                records.append(
                    {
                        "id": x.id,
                        "split": split,
                        "domain": x.domain,
                        "label": x.label,
                        "routed": d,
                        "has_probe": bool(hp),
                        "p_tool": float(p),
                        "gate": int(g),
                        "output": o,
                        "triggered": triggered(o, params.prompt),
                        **v,
                    }
                )
            out["splits"][split] = {
                "metrics": evaluate_records(records, seed=params.data.seed),
                "generated_now": n_new,
                "steered": int(np.count_nonzero(gates.gate)),
                "generation": asdict(stats),
            }
            out["records"].extend(records)
    finally:
        cache.close()
    write_json(sweep_path(run_dir, config.name), out)
    return out
