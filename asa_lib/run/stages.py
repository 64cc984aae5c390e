"""The one stage table: every stage of a run, its notebook, what it writes and what later stages need.

The runner plans and fingerprints from it, notebooks check their inputs with
:func:`require`, and the output hashes that make a rerun safe are built here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asa_lib.layout import RunDir
from asa_lib.provenance import file_digest


class MissingInputError(RuntimeError):
    """A stage was started before the stage that writes its inputs."""


_REL = RunDir("")  # the layout's paths relative to the run folder


@dataclass(frozen=True)
class StageOutputs:
    """What one stage leaves in the run folder, relative to it.

    ``writes``: files, or folders taken whole; the runner hashes every file
    under them. ``needed``: the files a later stage reads from it (each under
    ``writes``); :func:`require` checks that they exist before that stage runs.
    """

    writes: tuple[str, ...]
    needed: tuple[str, ...] = ()


def _rel(*paths: Path) -> tuple[str, ...]:
    return tuple(p.as_posix() for p in paths)


@dataclass(frozen=True)
class StageSpec:
    """One stage of a run.

    ``key``: the stage's name and its notebook's stem (``notebooks/<key>.py``).
    ``needs``: the stages whose outputs it reads (their ``outputs.needed`` must
    exist before it runs). ``sections``: the params sections its results depend
    on (part of its fingerprint). ``per_config``: run once per sweep config
    (``06_sweep__<config>``). ``parallel``: its notebook takes a ``processes``
    parameter (data-parallel workers).
    """

    key: str
    outputs: StageOutputs
    needs: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    per_config: bool = False
    parallel: bool = False


# The one stage table, in run order. The runner plans, fingerprints and orders the stages
# from it, notebooks check their inputs with it (:func:`require`), and it says what each
# stage writes (hashed after it succeeds) and which of those files later stages need.
STAGES: tuple[StageSpec, ...] = (
    StageSpec("01_data", StageOutputs(_rel(_REL.splits.parent), _rel(_REL.splits)), (), ("data",)),
    StageSpec(
        "02_extraction",
        StageOutputs(
            _rel(_REL.states("cal").parent), _rel(_REL.states("cal"), _REL.states("test"))
        ),
        ("01_data",),
        ("model", "prompt", "extraction"),
        parallel=True,
    ),
    StageSpec(
        "03_probing", StageOutputs(_rel(_REL.layers.parent), _rel(_REL.layers)), ("02_extraction",)
    ),
    StageSpec(
        "04_vectors",
        StageOutputs(
            _rel(_REL.vectors.parent),
            _rel(_REL.vectors, _REL.behaviour_vectors, _REL.diagnostics),
        ),
        ("03_probing",),
        ("generation",),  # the unsteered CAL/VALID generations (diagnostics, vector: behaviour)
    ),
    StageSpec(
        "05_routing", StageOutputs(_rel(_REL.bundle), _rel(_REL.bundle_json)), ("04_vectors",)
    ),
    # Every config's outputs at once, prompt-major, into the generation cache. The sweep
    # configs read them from there: they do not list it in ``needs``, so that editing one
    # config re-runs this stage (for that config's rows) and that config only.
    StageSpec(
        "06_generate",
        StageOutputs(_rel(_REL.generation)),
        ("05_routing",),
        ("generation", "steering", "sweep"),
        parallel=True,
    ),
    StageSpec(
        "06_sweep",
        StageOutputs(()),  # per config: sweep/<config>.json (stage_outputs)
        ("05_routing",),
        ("generation", "steering"),
        per_config=True,
    ),
    StageSpec(
        "07_analysis",
        StageOutputs(_rel(_REL.results, _REL.chosen_adapter)),
        ("05_routing", "06_sweep"),
        ("reference",),
    ),
)
STAGE = {s.key: s for s in STAGES}
# The stages that run once per run and whose outputs every sweep config reads.
CORE_STAGES = tuple(s.key for s in STAGES[: [s.per_config for s in STAGES].index(True)])
SWEEP_STAGE = next(s.key for s in STAGES if s.per_config)
_SWEEP_PREFIX = f"{SWEEP_STAGE}__"


def sweep_stage(config: str) -> str:
    """The stage key of one sweep config: ``06_sweep__<config>``."""
    return f"{_SWEEP_PREFIX}{config}"


def config_of(stage: str) -> str | None:
    """The config a sweep stage key names (None for a stage that is not per config)."""
    return stage[len(_SWEEP_PREFIX) :] if stage.startswith(_SWEEP_PREFIX) else None


def spec_of(stage: str) -> StageSpec:
    """The table entry of a stage key (``06_sweep__<config>`` -> the sweep's entry)."""
    return STAGE[SWEEP_STAGE] if config_of(stage) is not None else STAGE[stage]


def stage_outputs(stage: str) -> StageOutputs:
    """The :class:`StageOutputs` of ``stage`` (``06_sweep__<config>``: that config's results)."""
    config = config_of(stage)
    if config is not None:
        return StageOutputs(_rel(_REL.sweep(config)))
    return STAGE[stage].outputs


def stage_writes(stage: str) -> list[str]:
    """What a stage writes, relative to the run folder (files, or folders taken whole).

    The runner records the size and sha256 of every file under these paths
    when the stage succeeds, verifies them on the next run, and re-runs the
    stage (and, through the fingerprints, everything after it) when one is
    missing or changed.
    """
    return list(stage_outputs(stage).writes)


def hash_outputs(run_dir: str | Path, stage: str) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file a stage wrote (temporary files excluded)."""
    return hash_files(run_dir, stage_writes(stage))


def hash_files(run_dir: str | Path, paths) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of the files at ``paths`` (relative to
    ``run_dir``; a folder stands for every file in it, hidden ones excluded)."""
    run_dir = Path(run_dir)
    out: dict[str, dict[str, Any]] = {}
    for rel in paths:
        p = run_dir / rel
        files = (
            sorted(x for x in p.rglob("*") if x.is_file())
            if p.is_dir()
            else [p]
            if p.is_file()
            else []
        )
        for f in files:
            if f.name.startswith("."):
                continue
            out[f.relative_to(run_dir).as_posix()] = {
                "size": f.stat().st_size,
                "sha256": file_digest(f),
            }
    return out


def changed_output(run_dir: str | Path, recorded: dict[str, dict[str, Any]] | None) -> str | None:
    """The first recorded output that is missing or differs now (None when all match)."""
    if not recorded:
        return "no outputs recorded"
    run_dir = Path(run_dir)
    for rel, want in recorded.items():
        f = run_dir / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != want.get("size") or file_digest(f) != want.get("sha256"):
            return f"{rel} changed since the stage wrote it"
    return None


def require(run_dir: str | os.PathLike, stage: str) -> None:
    """Stop at once if the outputs ``stage`` reads are missing, naming the stage to run first.

    ``stage`` is the stage about to run (its ``needs`` in :data:`STAGES` are
    checked); a per-config stage's outputs are checked where they are read.
    """
    run_dir = Path(run_dir)
    for before in spec_of(stage).needs:
        if STAGE[before].per_config:
            continue
        missing = [p for p in STAGE[before].outputs.needed if not (run_dir / p).is_file()]
        if missing:
            raise MissingInputError(
                f"{run_dir / missing[0]} is missing: run stage {before} first "
                f"(notebooks/{before}.py, or `asa run` which runs all stages in order)."
            )
