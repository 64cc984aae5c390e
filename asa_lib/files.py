"""Writing and reading files: atomic writes, JSON, library versions (digests: :mod:`asa_lib.provenance`).

Every file is written atomically (temporary file in the same folder, then
``os.replace``), so a crash never leaves a half-written file under a final name.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path
from typing import Any

# run/evaluate.py and run/sweep.py import file_digest and json_sha256 from here;
# the rest of the library imports them from asa_lib.provenance. Drop these once they do too.
from asa_lib.provenance import file_digest  # noqa: F401
from asa_lib.provenance import json_digest as json_sha256  # noqa: F401


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
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# The deepest nesting of arrays and objects accepted in JSON from a user (data files and
# lines, adapter.json, requests on stdin). Python's json parser, and everything that walks
# the result (copy, repr, dataclasses.asdict), recurse once or more per level; real data
# nests a few levels (BFCL's tool schemas: under 10), so 100 leaves the stack room to spare.
MAX_JSON_DEPTH = 100


class JSONDepthError(ValueError):
    """JSON nested deeper than :data:`MAX_JSON_DEPTH` (a ``ValueError``, like a decode error)."""


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` in JSON ``text``, brackets in strings not counted."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def loads_json(text: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for text from a user: nesting deeper than ``max_depth`` raises
    :class:`JSONDepthError` (checked before parsing, so the parser never recurses that
    deep); invalid JSON raises ``json.JSONDecodeError`` as usual."""
    if text.count("[") + text.count("{") > max_depth and json_depth(text) > max_depth:
        raise JSONDepthError(
            f"JSON nested deeper than {max_depth} levels (the limit on nesting, "
            "asa_lib.files.MAX_JSON_DEPTH)"
        )
    try:
        return json.loads(text)
    except RecursionError:  # a deep call stack already: still one message, never a traceback
        raise JSONDepthError(
            f"JSON nested too deeply to parse here (the limit is {max_depth} levels)"
        ) from None


def json_default(o: Any) -> Any:
    """``json.dumps``'s ``default`` for the files the library writes: numpy values, paths."""
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

    from asa_lib._version import __version__

    return {
        "asa_lib": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }


def git_commit(root: str | Path, *, short: bool = False) -> str | None:
    """The commit checked out at ``root``: the full hash, or with ``short`` 12 digits and
    ``+changes`` where tracked files differ from it; None outside git (or without git)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60, check=True
        ).stdout.strip()

    try:
        if not short:
            return git("rev-parse", "HEAD") or None
        head = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+changes" if dirty else head or None
