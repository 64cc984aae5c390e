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
    results.json                  07: all configs side by side, chosen config
    chosen_adapter/               07: the bundle plus the chosen tau/alpha/beta
    stages/<stage>.json           fingerprints of finished stages
    notebooks/*.ipynb, html/*.html, index.html: executed notebooks and reports

Every file is written atomically (temporary file in the same folder, then
``os.replace``), so a crash never leaves a half-written file under a final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class MissingInputError(RuntimeError):
    """A stage was started before the stage that writes its inputs."""


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
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


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

    return {"asa_lib": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "scikit-learn": sklearn.__version__, "numpy": np.__version__}


STAGE_OUTPUTS = {
    "01_data": ["data/splits.jsonl"],
    "02_extraction": ["states/cal.safetensors", "states/test.safetensors"],
    "03_probing": ["probing/layers.json"],
    "04_vectors": ["vectors/vectors.safetensors"],
    "05_routing": ["bundle/adapter.json"],
}


def require(run_dir: str | Path, stage: str) -> None:
    """Stop at once if ``stage``'s outputs are missing, naming the stage to run first."""
    run_dir = Path(run_dir)
    missing = [p for p in STAGE_OUTPUTS[stage] if not (run_dir / p).is_file()]
    if missing:
        raise MissingInputError(
            f"{run_dir / missing[0]} is missing: run stage {stage} first "
            f"(notebooks/{stage}.py, or `asa run` which runs all stages in order)."
        )
