"""Stage 05: the scaler, router and per-domain probes at L*, saved as the adapter bundle.

:func:`run` fits the bundle from the stored states and stage 04's vectors, writes
``bundle/adapter.{json,safetensors}`` and reads it back; ``notebooks/05_routing.py``
shows what it returns (notes, accuracy and the router's confusion on VALID).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from asa_lib.data import read_domains
from asa_lib.data.splits import read_splits, read_tool_sets, sample_tools
from asa_lib.engine.extract import load_meta, load_states
from asa_lib.layout import RunDir
from asa_lib.method import probing
from asa_lib.method.bundle import Bundle, load_bundle, row_digests, save_bundle
from asa_lib.method.diagnostics import load_behaviour_vectors
from asa_lib.params import Params
from asa_lib.run.stages import require

SPLITS = ("cal", "train", "valid")


@dataclass
class RoutingResult:
    """What stage 05 wrote: the bundle as read back, what the fit reports, and VALID's scores."""

    layer: int  # L*
    domains: list[str]  # the router's class order (probing.class_order of the data's domains)
    bundle: Bundle  # reloaded from bundle/: what later stages use
    report: probing.FitReport
    files: list[str]  # the names of the files in bundle/, sorted
    valid_accuracy: list[dict]  # probing.validation_accuracy: the router's, then each probe's
    valid_confusion: np.ndarray  # probing.router_confusion: true (rows) x routed, in ``domains``

    @property
    def notes(self) -> list[str]:
        """Domains without a vector or a probe (the fit's notes)."""
        return self.report.notes


def run(params: Params, run_dir: str | os.PathLike) -> RoutingResult:
    """Stage 05: fit (:func:`probing.fit_bundle`), save, reload and score on VALID.

    The bundle records the prompt format and tokenizer the states were read with (stage
    02's), and its run's rows (:func:`run_rows`; ``params.prompt``'s tools for rows
    without their own).
    """
    folder = RunDir(run_dir)
    require(folder, "05_routing")
    layers = probing.load_layers(folder)
    layer, num_layers = layers["best_layer"], layers["num_layers"]
    vectors = probing.load_vectors(folder)
    h = {s: load_states(folder, s, layer) for s in SPLITS}
    meta = {s: load_meta(folder, s) for s in SPLITS}
    y = {s: np.array(m["labels"]) for s, m in meta.items()}
    d = {s: m["domains"] for s, m in meta.items()}
    domains = probing.class_order(read_domains(folder))  # the data stage's domains, sorted
    bundle, report = probing.fit_bundle(
        h,
        y,
        d,
        layer,
        domains,
        model_id=meta["cal"]["model_id"],
        num_layers=num_layers,
        model_fingerprint=meta["cal"].get("model_fingerprint", ""),
        model_weights=meta["cal"].get("model_weights", ""),
        vectors=vectors,  # stage 04's
        behaviour_vectors=load_behaviour_vectors(folder),  # stage 04's, for vector: behaviour
        prompt_format_sha256=meta["cal"].get("prompt_format_sha256", ""),
        tokenizer_sha256=meta["cal"].get("tokenizer_sha256", ""),
        run_rows=run_rows(params, folder),
        blocks=probing.load_block_vectors(folder),  # stage 04's, for configs with their own layer
    )
    save_bundle(bundle, folder.bundle)
    bundle = load_bundle(folder.bundle)  # everything below, and the caller, use the reloaded one
    return RoutingResult(
        layer=layer,
        domains=domains,
        bundle=bundle,
        report=report,
        files=sorted(p.name for p in folder.bundle.iterdir()),
        valid_accuracy=probing.validation_accuracy(bundle, h["valid"], y["valid"], d["valid"]),
        valid_confusion=probing.router_confusion(bundle, h["valid"], d["valid"]),
    )


def run_rows(params: Params, run_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Split -> the sorted row digests (:func:`~asa_lib.method.bundle.row_digests`) of the
    run's rows: what an evaluation counts as the adapter's own rows."""
    splits, sets = read_splits(run_dir), read_tool_sets(run_dir)
    return {
        s: sorted(set(row_digests(params.prompt, [x.request for x in xs], sample_tools(xs, sets))))
        for s, xs in splits.items()
    }
