"""One sweep config (or the unsteered baseline) evaluated on VALID and TEST.

Writes ``sweep/<name>.json``: the config, alpha_eff, per-split metrics with
bootstrap intervals, and per-prompt records (id, split, domain, label, routed
domain, p(tool), gate, output text, triggered, format_valid, valid).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifacts import write_json
from .bundle import Bundle
from .cache import GenerationCache
from .data import read_splits
from .extract import load_meta, load_states
from .metrics import evaluate_records
from .models import LoadedModel
from .params import Params
from .prompts import call_validity, render_prompts, triggered
from .steer import alpha_effective, compute_gates, generate_all, share_prefix_for, steering_deltas

BASELINE = "baseline"
EVAL_SPLITS = ("valid", "test")


def open_cache(run_dir: str | Path, params: Params, lm: LoadedModel) -> GenerationCache:
    import transformers

    context = {"model_id": lm.model_id, "model": params.model.__dict__, "device": lm.device.type,
               "max_new_tokens": params.generation.max_new_tokens,
               "start": params.prompt.tool_call_start, "end": params.prompt.tool_call_end,
               "transformers": transformers.__version__}
    return GenerationCache(Path(run_dir) / "cache" / "generations.sqlite", context)


def sweep_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / "sweep" / f"{name}.json"


def run_config(params: Params, run_dir: str | Path, lm: LoadedModel, bundle: Bundle, name: str,
               tau: float | None = None, alpha: float = 0.0, beta: float = 0.0,
               splits: tuple[str, ...] = EVAL_SPLITS) -> dict:
    """Evaluate one config; ``tau=None`` (or alpha 0) is the unsteered baseline."""
    run_dir = Path(run_dir)
    bundle.check_model(lm.hidden_size, lm.num_layers, lm.model_id)
    samples = {s: {x.id: x for x in xs} for s, xs in read_splits(run_dir).items()}
    steer = tau is not None and alpha > 0
    a_eff = alpha_effective(alpha, params.steering.alpha_unit, bundle) if steer else 0.0
    cache = open_cache(run_dir, params, lm)
    out = {"name": name, "tau": tau, "alpha": alpha, "beta": beta,
           "alpha_unit": params.steering.alpha_unit, "alpha_eff": a_eff, "layer": bundle.layer,
           "splits": {}, "records": []}
    try:
        for split in splits:
            meta = load_meta(run_dir, split)
            xs = [samples[split][i] for i in meta["ids"]]
            h = load_states(run_dir, split, bundle.layer)
            gates = compute_gates(bundle, h, tau if steer else 0.5)
            if not steer:
                gates.gate = np.zeros_like(gates.gate)
            deltas = steering_deltas(bundle, gates, a_eff, beta) if steer else None
            prompts = render_prompts(lm.tokenizer, params.prompt, [x.text for x in xs])
            outputs, n_new = generate_all(lm, prompts, deltas, bundle.layer, params.generation.batch_size,
                                          params.generation.max_new_tokens, params.prompt, cache,
                                          desc=f"{name}/{split}",
                                          share_prefix=share_prefix_for(params.generation.share_prefix, lm))
            records = []
            for x, d, p, g, hp, o in zip(xs, gates.routed, gates.p_tool, gates.gate, gates.has_probe, outputs):
                v = call_validity(o, params.prompt)
                records.append({"id": x.id, "split": split, "domain": x.domain, "label": x.label,
                                "routed": d, "has_probe": bool(hp), "p_tool": float(p), "gate": int(g), "output": o,
                                "triggered": triggered(o, params.prompt), **v})
            out["splits"][split] = {"metrics": evaluate_records(records, seed=params.data.seed),
                                    "generated_now": n_new, "steered": int(np.count_nonzero(gates.gate))}
            out["records"].extend(records)
    finally:
        cache.close()
    write_json(sweep_path(run_dir, name), out)
    return out
