"""The one evaluation core: gates, prompt-major generation and scoring of a set of configs.

The sweep (stage 06: :mod:`asa_lib.run.generation` generates every config at
once, :mod:`asa_lib.run.sweep` scores one config per notebook) and
``asa evaluate`` (:mod:`asa_lib.run.evaluate`: the baseline and every override)
both call :func:`plan_outputs` / :func:`score_configs`, so a config's gates,
deltas, outputs, records and metrics are computed one way:

- gates from the states at L* (:func:`~asa_lib.method.gate.compute_gates`;
  an unsteered config records p(tool) and the routed domain with gate 0,
  :data:`RECORD_ONLY`), deltas ``gate * alpha_eff * v``;
- outputs from the prompt-major planner
  (:func:`~asa_lib.engine.generate.generate_configs`: each prompt prefilled
  once for every config, cached under the same keys as any other path);
- one :class:`~asa_lib.run.records.PromptRecord` per prompt
  (:func:`score_records`; a call is valid against the row's own tools, else
  ``prompt.tools``: :func:`tools_of`), metrics with bootstrap intervals
  (:func:`split_result`) and paired differences against the baseline
  (:func:`vs_baseline`, one shape).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from asa_lib.engine.cache import GenerationCache
from asa_lib.engine.decode import GenerationStats
from asa_lib.engine.generate import ConfigDeltas, GenerationSettings, generate_configs
from asa_lib.method.bundle import Bundle
from asa_lib.method.gate import Gates, compute_gates, steering_deltas
from asa_lib.metrics import evaluate_records, paired_bootstrap_diff
from asa_lib.model.load import LoadedModel
from asa_lib.params import BASELINE, PromptParams, SweepConfig
from asa_lib.prompts import tools_for
from asa_lib.run.records import PromptRecord
from asa_lib.tools import CallMarkers, score_output

# Unsteered configs still record each prompt's routed domain and p(tool), gate 0.
RECORD_ONLY = SweepConfig(BASELINE, tau=0.5, gate="none")

# The paired differences :func:`vs_baseline` reports, by default.
PAIRED_METRICS = ("f1", "fpr", "recall", "precision")


def tools_of(x, tool_sets: dict[str, list], pp: PromptParams) -> list:
    """The tools a sample is scored against: its own (``x.tools`` names one of ``tool_sets``),
    else ``prompt.tools`` (:func:`~asa_lib.prompts.tools_for`, the one rule)."""
    return tools_for(pp, tool_sets[x.tools] if x.tools else None)


def record(output: str, markers: CallMarkers, against: list, /, **fields) -> PromptRecord:
    """The one record builder: ``output`` scored against the tools ``against``
    (:func:`~asa_lib.tools.score_output`), with the row's and the decision's ``fields``
    (:class:`~asa_lib.run.records.PromptRecord`)."""
    return PromptRecord.scored(score_output(output, markers, against), output=output, **fields)


@dataclass(frozen=True)
class ConfigSpec:
    """A config to evaluate, its effective strength (0 for an unsteered one) and its steering
    block (None: L*, the bundle's block; resolved from the config's ``layer``)."""

    config: SweepConfig
    alpha_eff: float = 0.0
    layer: int | None = None

    @property
    def name(self) -> str:
        return self.config.name


def gates_and_deltas(
    bundle: Bundle, h: np.ndarray, domains: Sequence[str], spec: ConfigSpec
) -> tuple[Gates, np.ndarray | None]:
    """The gate of every prompt (from its state at L*, ``h``) and its delta (None: unsteered),
    with the vectors of the spec's steering block."""
    steer = spec.config.steers
    gates = compute_gates(bundle, h, spec.config if steer else RECORD_ONLY, list(domains))
    deltas = (
        steering_deltas(bundle, gates, spec.alpha_eff, spec.config, spec.layer) if steer else None
    )
    return gates, deltas


@dataclass
class Planned:
    """:func:`plan_outputs`' result: each config's gates and outputs (None: another worker's)."""

    gates: dict[str, Gates]
    outputs: dict[str, list[str | None]]
    generated: dict[str, int]
    generated_total: int
    stats: GenerationStats
    states: dict[int, np.ndarray]


def plan_outputs(
    lm: LoadedModel,
    prompts: list[str],
    h: np.ndarray,
    domains: Sequence[str],
    bundle: Bundle,
    specs: Sequence[ConfigSpec],
    settings: GenerationSettings,
    cache: GenerationCache | None,
    *,
    desc: str,
    shard: tuple[int, int] | None = None,
    sync: Callable[[], None] | None = None,
    read_states: bool = False,
) -> Planned:
    """Gates and outputs of every config on one set of prompts, in one prompt-major pass."""
    gates, cds = {}, []
    for spec in specs:
        g, d = gates_and_deltas(bundle, h, domains, spec)
        gates[spec.name] = g
        layer = None if spec.layer is None or spec.layer == bundle.layer else spec.layer
        cds.append(ConfigDeltas(spec.name, d, layer))
    stats = GenerationStats()
    res = generate_configs(
        lm,
        prompts,
        settings,
        cds,
        bundle.layer,
        cache,
        desc=desc,
        stats=stats,
        shard=shard,
        sync=sync,
        read_states=read_states,
    )
    return Planned(gates, res.outputs, res.generated, res.generated_total, stats, res.states)


def score_records(
    xs: list,
    gates: Gates,
    outputs: list[str],
    split: str,
    markers: CallMarkers,
    tool_sets: dict[str, list],
    pp: PromptParams,
) -> list[dict]:
    """One :class:`~asa_lib.run.records.PromptRecord` per sample, as JSON: row, decision, output,
    score (valid only against :func:`tools_of` the row)."""
    return [
        record(
            o,
            markers,
            tools_of(x, tool_sets, pp),
            id=x.id,
            split=split,
            domain=x.domain,
            label=x.label,
            tools=x.tools,
            routed=d,
            has_probe=bool(hp),
            p_tool=float(p),
            gate=int(g),
        ).to_dict()
        for x, d, p, g, hp, o in zip(
            xs, gates.routed, gates.p_tool, gates.gate, gates.has_probe, outputs
        )
    ]


def split_result(
    records: list[dict], seed: int, n_new: int, gates: Gates, stats: GenerationStats
) -> dict:
    """One split's entry of a result: metrics with intervals, counts, generation stats."""
    return {
        "metrics": evaluate_records(records, seed=seed),
        "generated_now": n_new,
        "steered": int(np.count_nonzero(gates.gate)),
        "generation": asdict(stats),
    }


@dataclass
class ConfigResult:
    """One config scored on one split (the typed result of :func:`score_configs`)."""

    spec: ConfigSpec
    gates: Gates
    records: list[dict]
    split: dict  # split_result(...)

    @property
    def name(self) -> str:
        return self.spec.name


def score_configs(
    lm: LoadedModel,
    xs: list,
    prompts: list[str],
    h: np.ndarray,
    bundle: Bundle,
    specs: Sequence[ConfigSpec],
    settings: GenerationSettings,
    cache: GenerationCache | None,
    *,
    split: str,
    markers: CallMarkers,
    tool_sets: dict[str, list],
    pp: PromptParams,
    seed: int,
    desc: str,
    extra_stats: GenerationStats | None = None,
    extra_generated: int = 0,
) -> list[ConfigResult]:
    """Every config's records and metrics on one split (``xs``, their rendered ``prompts`` and
    states at L* ``h``), generated in one prompt-major pass (outputs already in ``cache`` are
    read back). ``extra_stats``/``extra_generated``: what data-parallel workers generated for
    this split (added to each config's counts)."""
    planned = plan_outputs(
        lm, prompts, h, [x.domain for x in xs], bundle, specs, settings, cache, desc=desc
    )
    out = []
    for spec in specs:
        stats = GenerationStats()
        stats.add(planned.stats)
        if extra_stats is not None:
            stats.add(extra_stats)
        g = planned.gates[spec.name]
        records = score_records(xs, g, planned.outputs[spec.name], split, markers, tool_sets, pp)
        n_new = planned.generated[spec.name] + extra_generated
        out.append(ConfigResult(spec, g, records, split_result(records, seed, n_new, g, stats)))
    return out


def vs_baseline(
    base: list[dict], new: list[dict], seed: int, metrics: Sequence[str] = PAIRED_METRICS
) -> dict[str, float]:
    """``new`` minus ``base`` on the same prompts (records matched by id), with paired bootstrap
    95% intervals: ``{"d_f1": ..., "d_f1_lo": ..., "d_f1_hi": ..., ...}``, the one shape."""
    by_id = {r["id"]: r for r in base}
    d = paired_bootstrap_diff(
        [x["label"] for x in new],
        [int(by_id[x["id"]]["triggered"]) for x in new],
        [int(x["triggered"]) for x in new],
        metrics=tuple(metrics),
        seed=seed,
    )
    out: dict[str, float] = {}
    for m in metrics:
        out[f"d_{m}"], out[f"d_{m}_lo"], out[f"d_{m}_hi"] = d[m]["diff"], d[m]["lo"], d[m]["hi"]
    return out
