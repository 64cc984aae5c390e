"""Stage 04: steering vectors at L*, the unsteered model's calls, behaviour directions, diagnostics.

:func:`run` does the stage's reads and writes (``vectors/vectors.safetensors``,
``vectors/vectors.json``, ``vectors/behaviour.safetensors``, ``vectors/blocks.safetensors``
(both kinds of vectors and the mean CAL norm at every block other than L*),
``vectors/diagnostics.json``; the unsteered CAL and VALID generations go to the
run's generation cache through :func:`asa_lib.run.sweep.baseline_calls`);
``notebooks/04_vectors.py`` shows what it returns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from asa_lib.data import read_domains
from asa_lib.engine.extract import load_meta, load_states
from asa_lib.layout import RunDir
from asa_lib.method import diagnostics as diag_lib
from asa_lib.method import probing
from asa_lib.model.load import LoadedModel, load_params_model
from asa_lib.params import Params
from asa_lib.run.stages import require
from asa_lib.run.sweep import baseline_calls

SPLITS = ("cal", "valid")  # the splits whose unsteered calls the diagnostics read


@dataclass
class VectorsResult:
    """What stage 04 wrote and computed, for display (the files hold the same)."""

    layer: int  # L*
    cal_shape: tuple[int, ...]  # the CAL states at L*: (samples, hidden)
    domains: list[str]  # the data stage's domains in the router's order (probing.class_order)
    cal_domains: list[str]  # the domains present in CAL, sorted
    vectors: dict[str, np.ndarray]  # unit label vectors ("global", one per domain)
    vector_notes: list[str]  # domains without a vector
    vector_rows: list[dict]  # probing.vector_rows: each vector and the CAL rows behind it
    cal_mean_norm: float  # mean |h| at L* on CAL
    behaviour: dict[str, np.ndarray]  # unit behaviour directions ({} where there is none)
    behaviour_notes: list[str]
    diagnostics: dict  # what vectors/diagnostics.json holds (cost and behaviour notes included)


def run(params: Params, run_dir: str | os.PathLike, lm: LoadedModel | None = None) -> VectorsResult:
    """Stage 04. ``lm``: the run's model; None loads it (:func:`load_params_model`) when the
    unsteered calls are generated, after the label vectors are written."""
    folder = RunDir(run_dir)
    require(folder, "04_vectors")
    layers = probing.load_layers(folder)
    layer = layers["best_layer"]
    h = load_states(folder, "cal", layer)
    meta = load_meta(folder, "cal")
    y, d = np.array(meta["labels"]), meta["domains"]
    # the data stage's domains, in the router's order (sorted by name: probing.class_order)
    domains = probing.class_order(read_domains(folder))

    vectors, notes = probing.steering_vectors(h, y, d, domains)
    probing.save_vectors(folder, vectors, layer, notes)

    # the unsteered model's own calls on CAL and VALID (the sweep's driver and cache)
    lm = load_params_model(params) if lm is None else lm
    calls = {s: baseline_calls(params, folder, lm, s, layer) for s in SPLITS}
    states = {s: load_states(folder, s) for s in SPLITS}
    y_valid = np.array(load_meta(folder, "valid")["labels"])
    called = {s: np.array(c["called"]) for s, c in calls.items()}
    behaviour, bnotes = diag_lib.behaviour_vectors(h, called["cal"], d, domains)
    diag_lib.save_behaviour_vectors(folder, behaviour)
    # the same two kinds of vectors at every other block, for configs with their own ``layer``
    h_all = states["cal"]
    block_beh = {
        b: diag_lib.behaviour_vectors(h_all[:, b], called["cal"], d, domains)[0]
        for b in range(h_all.shape[1])
        if b != layer
    }
    blocks = probing.block_vectors_of(h_all, y, d, domains, block_beh, skip=layer)
    probing.save_block_vectors(folder, blocks)
    diag = diag_lib.diagnostics(
        states["cal"],
        y,
        d,
        called["cal"],
        states["valid"],
        y_valid,
        called["valid"],
        [r["auc"] for r in layers["layers"]],
        layer,
        vectors,
        behaviour,
    )
    # the diagnostics' extra generation: CAL (VALID is the sweep baseline's, reused)
    diag["cost"] = {
        s: {k: c[k] for k in ("generated_now", "seconds")} | {"prompts": len(c["called"])}
        for s, c in calls.items()
    }
    diag["behaviour_notes"] = bnotes
    diag_lib.save_diagnostics(folder, diag)
    return VectorsResult(
        layer=layer,
        cal_shape=tuple(h.shape),
        domains=domains,
        cal_domains=sorted(set(d)),
        vectors=vectors,
        vector_notes=notes,
        vector_rows=probing.vector_rows(vectors, y, d),
        cal_mean_norm=probing.cal_mean_norm(h),
        behaviour=behaviour,
        behaviour_notes=bnotes,
        diagnostics=diag,
    )
