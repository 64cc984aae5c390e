"""The library's layering: no import circle, and no module imports one above it.

Every ``import`` and ``from ... import`` in every file of ``asa_lib`` counts,
also those inside functions (a lazy import is still a dependency). A module's
layer is the first entry of :data:`LAYERS` that names it or its package; a
module may import from its own layer or the ones below. The README's
architecture table lists the same layers, top to bottom.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "asa_lib"

# Bottom first. "pkg" covers every module of the package asa_lib/pkg/.
LAYERS: list[tuple[str, ...]] = [
    ("_version", "provenance", "files", "layout", "progress", "seed", "metrics"),
    ("params",),
    ("tools", "chat", "prompts"),
    ("data", "model"),
    ("engine",),
    ("method",),
    ("api",),  # an adapter applied to a model (run/evaluate applies it to a labelled set)
    ("report",),
    ("run",),
    ("demo",),
    ("nb",),
    ("cli",),
    ("__init__",),  # the public face: lazy imports of the API
]


def module_name(path: Path, root: Path) -> str:
    """``asa_lib/engine/prefix.py`` -> ``engine.prefix``; a package's ``__init__`` -> its name."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, root: Path, package: str) -> set[str]:
    """Modules of the library that ``path`` imports (relative imports resolved), anywhere in the file."""
    me = module_name(path, root).split(".")
    is_pkg = path.name == "__init__.py"
    here = me if is_pkg else me[:-1]  # the package a relative import starts from
    if me == ["__init__"]:
        here = []
    found: set[str] = set()
    known = {module_name(p, root) for p in root.rglob("*.py")}

    def add(name: str) -> None:
        # the longest known module that ``name`` names (a symbol import names its module)
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            cand = ".".join(parts[:k])
            if cand in known:
                found.add(cand)
                return

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == package or a.name.startswith(package + "."):
                    add(a.name[len(package) + 1 :] or "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == package or node.module.startswith(package + ".")):
                mod = node.module[len(package) + 1 :]
            else:
                continue
            for a in node.names:  # ``from pkg import module`` names a module
                full = f"{mod}.{a.name}" if mod else a.name
                if full in known:
                    found.add(full)
                elif mod:
                    add(mod)
                else:
                    found.add("__init__")
    found.discard(module_name(path, root))
    return found


def layer_of(module: str, layers: list[tuple[str, ...]]) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(layers):
        if module in names or top in names:
            return i
    raise KeyError(f"{module} is in no layer: add it to LAYERS (and to the README's table)")


def import_graph(root: Path, package: str = "asa_lib") -> dict[str, set[str]]:
    return {module_name(p, root): imports_of(p, root, package) for p in sorted(root.rglob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state:
                c = visit(n)
                if c:
                    return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            c = visit(m)
            if c:
                return c
    return None


def layering_problems(root: Path, layers: list[tuple[str, ...]], package: str = "asa_lib"):
    """Every upward import (``importer -> imported``) and one circle, if any."""
    graph = import_graph(root, package)
    upward = [
        f"{m} (layer {layer_of(m, layers)}) imports {n} (layer {layer_of(n, layers)})"
        for m, deps in sorted(graph.items())
        for n in sorted(deps)
        if layer_of(n, layers) > layer_of(m, layers)
    ]
    return upward, find_cycle(graph)


def test_the_library_has_no_import_circle_and_nothing_imports_upwards():
    upward, cycle = layering_problems(LIBRARY, LAYERS)
    assert not upward, "upward imports:\n" + "\n".join(upward)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_every_module_has_a_layer():
    for m in import_graph(LIBRARY):
        layer_of(m, LAYERS)  # raises KeyError naming the module


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / "pkg" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


def test_the_check_finds_a_circle_through_a_lazy_import(tmp_path):
    # The shape of the circle this layout removed: a model loader importing the demo trainer
    # inside a function, the trainer importing the loader at the top.
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "models.py": "def load():\n    from .demo_model import merge_adapter\n",
            "demo_model.py": "from .models import load\n",
        },
    )
    layers = [("models", "demo_model"), ("__init__",)]
    upward, cycle = layering_problems(root, layers, package="pkg")
    assert upward == []
    assert cycle is not None and set(cycle) == {"models", "demo_model"}


def test_the_check_finds_an_upward_import_in_a_subpackage(tmp_path):
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "engine/__init__.py": "",
            "engine/extract.py": "from pkg.run.parallel import launch\n",
            "run/__init__.py": "",
            "run/parallel.py": "X = 1\n",
        },
    )
    upward, cycle = layering_problems(root, [("engine",), ("run",), ("__init__",)], "pkg")
    assert upward == ["engine.extract (layer 0) imports run.parallel (layer 1)"]
    assert cycle is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("from . import api\n", {"api"}),
        ("from .engine import prefix\n", {"engine.prefix"}),
        ("from .engine.prefix import lcp\n", {"engine.prefix"}),
        ("import pkg.engine.prefix\n", {"engine.prefix"}),
    ],
)
def test_import_forms_are_resolved(tmp_path, text, expected):
    root = _write(
        tmp_path,
        {"__init__.py": text, "api.py": "", "engine/__init__.py": "", "engine/prefix.py": ""},
    )
    assert imports_of(root / "__init__.py", root, "pkg") == expected


def test_the_library_hash_covers_every_sub_package(tmp_path):
    """The fingerprints' library hash: an edit in a sub-package re-runs what the library computed."""
    import shutil

    from asa_lib.run.runner import library_source_hash

    root = tmp_path / "asa_lib"
    shutil.copytree(LIBRARY, root, ignore=shutil.ignore_patterns("__pycache__"))
    before = library_source_hash(root)
    assert before == library_source_hash(LIBRARY)  # the same sources, wherever they lie
    for rel in ("engine/prefix.py", "run/sweep.py", "data/splits.py", "params.py"):
        f = root / rel
        text = f.read_text()
        f.write_text(text + "\n# edited\n")
        assert library_source_hash(root) != before, rel
        f.write_text(text)
    assert library_source_hash(root) == before
    (root / "method" / "new_module.py").write_text("X = 1\n")  # a new file counts too
    assert library_source_hash(root) != before
