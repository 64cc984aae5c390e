"""The run folder: where every stage reads and writes, and how files are written.

Layout of ``reports/<run>/`` (one folder per run, one sub-folder per stage)::

    run.json                      which params file made this run
    params.yaml                   the validated params, as used
    data/splits.jsonl             01: one sample per line (id, split, domain, label, idx, text)
    data/summary.json             01: data kind, domains (in order), counts, shortfalls, skipped rows
    states/<split>.safetensors    02: tensor "states", float32 (samples, layers, hidden):
                                      output of decoder block l at the last prompt token
    states/<split>.json           02: ids, labels, domains in the same row order
    probing/layers.json           03: AUC/accuracy per layer and L*
    vectors/vectors.safetensors   04: unit steering vectors ("global", one per domain)
    bundle/adapter.{json,safetensors}  05: everything the gate needs at inference
    sweep/<config>.json           06: per-prompt records and metrics of one config
    cache/generations.sqlite      06: generation cache shared by all configs
    parallel/<stage>/             02, 06 with processes > 1: workers' spec, results, worker.log
    results.json                  07: all configs side by side, chosen config
    chosen_adapter/               07: the bundle plus the chosen tau/alpha/beta
    stages/<stage>.json           fingerprints of finished stages
    notebooks/*.ipynb, html/*.html, index.html: executed notebooks and reports

What each stage writes (hashed by the runner) and which of those files a
later stage needs (checked by :func:`require`) are one table,
:data:`STAGE_OUTPUTS`, built from :class:`RunDir`'s paths.

Every file is written atomically (temporary file in the same folder, then
``os.replace``), so a crash never leaves a half-written file under a final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class MissingInputError(RuntimeError):
    """A stage was started before the stage that writes its inputs."""


class RunDir:
    """Every path of a run folder, built here and nowhere else (the layout above).

    Accepted wherever a path is (``os.PathLike``); ``RunDir(x)`` of a RunDir is the same folder.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # run bookkeeping
    run_json = property(lambda self: self.root / "run.json")
    params_yaml = property(lambda self: self.root / "params.yaml")
    lock = property(lambda self: self.root / ".asa-run.lock")
    stages = property(lambda self: self.root / "stages")
    notebooks = property(lambda self: self.root / "notebooks")
    html = property(lambda self: self.root / "html")
    index = property(lambda self: self.root / "index.html")
    progress = property(lambda self: self.root / "stages" / ".progress.json")

    def record(self, stage: str) -> Path:
        return self.stages / f"{stage}.json"

    def notebook(self, stage: str) -> Path:
        return self.notebooks / f"{stage}.ipynb"

    def report(self, stage: str) -> Path:
        return self.html / f"{stage}.html"

    # stage artifacts
    splits = property(lambda self: self.root / "data" / "splits.jsonl")
    data_summary = property(lambda self: self.root / "data" / "summary.json")
    layers = property(lambda self: self.root / "probing" / "layers.json")
    vectors = property(lambda self: self.root / "vectors" / "vectors.safetensors")
    vectors_meta = property(lambda self: self.root / "vectors" / "vectors.json")
    bundle = property(lambda self: self.root / "bundle")
    bundle_json = property(lambda self: self.root / "bundle" / "adapter.json")
    cache = property(lambda self: self.root / "cache" / "generations.sqlite")
    results = property(lambda self: self.root / "results.json")
    chosen_adapter = property(lambda self: self.root / "chosen_adapter")

    def states(self, split: str) -> Path:
        return self.root / "states" / f"{split}.safetensors"

    def states_meta(self, split: str) -> Path:
        return self.root / "states" / f"{split}.json"

    def sweep(self, config: str) -> Path:
        return self.root / "sweep" / f"{config}.json"

    def parallel_work(self, stage: str) -> Path:
        """Spec, per-rank results and log of a stage's data-parallel workers."""
        return self.root / "parallel" / stage


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; final files get the usual mode
    try:
        yield tmp_path
        os.chmod(
            tmp_path, 0o666 & ~umask
        )  # writers that replace the file (safetensors) made it 0600
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def library_versions() -> dict[str, str]:
    """Versions that results depend on (recorded in bundles, results and fingerprints)."""
    import numpy as np
    import sklearn
    import torch
    import transformers

    from . import __version__

    return {
        "asa_lib": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }


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


# One table of what each stage writes and what of it later stages need (06 is per config:
# :func:`stage_outputs`).
STAGE_OUTPUTS: dict[str, StageOutputs] = {
    "01_data": StageOutputs(_rel(_REL.splits.parent), _rel(_REL.splits)),
    "02_extraction": StageOutputs(
        _rel(_REL.states("cal").parent), _rel(_REL.states("cal"), _REL.states("test"))
    ),
    "03_probing": StageOutputs(_rel(_REL.layers.parent), _rel(_REL.layers)),
    "04_vectors": StageOutputs(_rel(_REL.vectors.parent), _rel(_REL.vectors)),
    "05_routing": StageOutputs(_rel(_REL.bundle), _rel(_REL.bundle_json)),
    "07_analysis": StageOutputs(_rel(_REL.results, _REL.chosen_adapter)),
}
SWEEP_STAGE_PREFIX = "06_sweep__"


def stage_outputs(stage: str) -> StageOutputs:
    """The :class:`StageOutputs` of ``stage`` (``06_sweep__<config>``: that config's results)."""
    if stage.startswith(SWEEP_STAGE_PREFIX):
        return StageOutputs(_rel(_REL.sweep(stage[len(SWEEP_STAGE_PREFIX) :])))
    return STAGE_OUTPUTS[stage]


def stage_writes(stage: str) -> list[str]:
    """What a stage writes, relative to the run folder (files, or folders taken whole).

    The runner records the size and sha256 of every file under these paths
    when the stage succeeds, verifies them on the next run, and re-runs the
    stage (and, through the fingerprints, everything after it) when one is
    missing or changed.
    """
    return list(stage_outputs(stage).writes)


def file_digest(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_outputs(run_dir: str | Path, stage: str) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file a stage wrote (temporary files excluded)."""
    run_dir = Path(run_dir)
    out: dict[str, dict[str, Any]] = {}
    for rel in stage_writes(stage):
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
    """Stop at once if ``stage``'s outputs are missing, naming the stage to run first."""
    run_dir = Path(run_dir)
    missing = [p for p in stage_outputs(stage).needed if not (run_dir / p).is_file()]
    if missing:
        raise MissingInputError(
            f"{run_dir / missing[0]} is missing: run stage {stage} first "
            f"(notebooks/{stage}.py, or `asa run` which runs all stages in order)."
        )
