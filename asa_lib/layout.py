"""The run folder's layout: every path of a run, built by :class:`RunDir` and nowhere else.

Layout of ``reports/<run>/`` (one folder per run, one sub-folder per stage)::

    run.json                      which params file made this run
    params.yaml                   the validated params, as used
    data/splits.jsonl             01: one sample per line (id, split, domain, label, idx, text)
    data/summary.json             01: data kind, domains (in order), counts, shortfalls, skipped rows
    data/tools.json               01: tool-set id -> tools, where rows bring their own tools
    states/<split>.safetensors    02: tensor "states", float32 (samples, layers, hidden):
                                      output of decoder block l at the last prompt token
    states/<split>.json           02: ids, labels, domains in the same row order
    probing/layers.json           03: AUC/accuracy per layer and L*
    vectors/vectors.safetensors   04: unit steering vectors ("global", one per domain)
    vectors/behaviour.safetensors 04: unit behaviour directions (the unsteered model's calls on CAL)
    vectors/blocks.safetensors    04: per block other than L*: its unit label vectors and behaviour
                                      directions, and the mean |h| of the CAL states there
    vectors/diagnostics.json      04: per layer label/behaviour probe AUC, cosine, 2x2 at L*, verdict
    bundle/adapter.{json,safetensors}  05: everything the gate needs at inference
    sweep/<config>.json           06: per-prompt records and metrics of one config; model id,
                                      bundle and prompt-format sha256, versions
    cache/generations.sqlite      04, 06: generation cache shared by all configs (04: baseline on CAL, VALID)
    parallel/<stage>/             02, 06 with processes > 1: workers' spec, results, worker.log
    results.json                  07: all configs side by side, chosen config
    chosen_adapter/               07: the bundle plus the chosen tau/alpha/beta; stale.json when a
                                      rerun with other inputs has not written a new one yet
    stages/<stage>.json           fingerprints of finished stages
    notebooks/*.ipynb, html/*.html, index.html: executed notebooks and reports

What each stage writes and needs is :mod:`asa_lib.run.stages`'s table; how files are
written (atomically) is :mod:`asa_lib.files`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PROJECT_NAME = "asa-lib"  # [project] name in the project's pyproject.toml

_NAME = re.compile(r'^\s*name\s*=\s*["\']([^"\']+)["\']', re.M)


def _is_project_root(folder: Path) -> bool:
    """A folder whose pyproject.toml names this project (``[project] name = "asa-lib"``)."""
    try:
        text = (folder / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    m = _NAME.search(text.split("[project]", 1)[1]) if "[project]" in text else None
    return bool(m) and m.group(1) == PROJECT_NAME


def project_root(start: str | os.PathLike | None = None) -> Path | None:
    """The project's folder (the one holding its pyproject.toml), or None outside a checkout.

    Searched upwards from ``start`` (default: the working folder, e.g. ``notebooks/``
    where JupyterLab and VS Code start a kernel), then from this library's own folder
    (an editable install run from anywhere). Relative paths in a stage's parameters
    (``params_path``, ``run_dir``) are taken relative to this folder, so a notebook runs
    the same wherever its kernel starts.
    """
    here = Path(start) if start is not None else Path.cwd()
    for base in (here, Path(__file__).resolve().parent):
        base = base.resolve()
        for folder in (base, *base.parents):
            if _is_project_root(folder):
                return folder
    return None


def shown_path(
    path: str | os.PathLike, root: str | os.PathLike | None = None, sha256: str | None = None
) -> str:
    """A file's path as a shared page may show it: relative to the project root (``root``,
    default :func:`project_root`) where it lies inside it, else its name with the first
    12 digits of its sha256 (a reader elsewhere has neither the folder nor a use for it):
    ``sha256`` where the digest was recorded (the file may have changed since), else the
    file's own.

    A path that is not absolute stays as written (it is relative to something the page says).
    """
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    base = Path(root) if root is not None else project_root()
    r = p.resolve()
    if base is not None and (r == base.resolve() or base.resolve() in r.parents):
        return r.relative_to(base.resolve()).as_posix()
    if sha256:
        return f"{p.name} (sha256 {sha256[:12]})"
    if r.is_file():
        from asa_lib.provenance import file_digest

        try:
            return f"{p.name} (sha256 {file_digest(r)[:12]})"
        except OSError:  # unreadable now: the name alone
            pass
    return p.name


class RunFolderError(ValueError):
    """A run folder that may not be used (e.g. one inside ``notebooks/``)."""


def resolve_in_project(path: str | os.PathLike, root: Path | None = None) -> Path:
    """``path`` made absolute: a relative one against the project root (the working folder
    outside a checkout); ``~`` is expanded."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    root = root if root is not None else project_root()
    return ((root if root is not None else Path.cwd()) / p).resolve()


def check_run_folder(run_dir: str | os.PathLike, root: Path | None = None) -> Path:
    """Refuse a run folder inside the project's ``notebooks/`` (sources, not outputs)."""
    run_dir = Path(run_dir).resolve()
    root = root if root is not None else project_root()
    if root is not None:
        nbs = (root / "notebooks").resolve()
        if run_dir == nbs or nbs in run_dir.parents:
            rel = run_dir.relative_to(root).as_posix()
            raise RunFolderError(
                f"run folder {rel} is inside notebooks/, which holds the notebooks' sources: "
                "run folders go under reports/, e.g. run_dir = 'reports/tiny' (a relative "
                "run_dir is taken relative to the project root)"
            )
    return run_dir


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
    tool_sets = property(lambda self: self.root / "data" / "tools.json")
    layers = property(lambda self: self.root / "probing" / "layers.json")
    vectors = property(lambda self: self.root / "vectors" / "vectors.safetensors")
    vectors_meta = property(lambda self: self.root / "vectors" / "vectors.json")
    behaviour_vectors = property(lambda self: self.root / "vectors" / "behaviour.safetensors")
    block_vectors = property(lambda self: self.root / "vectors" / "blocks.safetensors")
    diagnostics = property(lambda self: self.root / "vectors" / "diagnostics.json")
    bundle = property(lambda self: self.root / "bundle")
    bundle_json = property(lambda self: self.root / "bundle" / "adapter.json")
    cache = property(lambda self: self.root / "cache" / "generations.sqlite")
    generation = property(lambda self: self.root / "generation" / "generation.json")
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
