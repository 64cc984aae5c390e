"""No module imports another module's private (single-underscore) names.

Scanned: every file of ``asa_lib``, ``notebooks`` and ``benchmarks``, every
``from ... import`` and ``import`` (also those inside functions), and every
attribute read through a name bound to a module of the library
(``decode._clean``, ``asa_lib.files._json_default``). A private name is one
that starts with one ``_``; dunders (``__version__``) are public. A module
importing its own names is not counted. ``tests/`` is not scanned: a test may
reach into a module to test its private helpers.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_layering import LIBRARY, module_name

REPO = LIBRARY.parent
SCANNED = ("asa_lib", "notebooks", "benchmarks")

# Private names still imported from another module, each with the reason it is allowed
# (none now). An entry that no longer occurs fails the test, so the list cannot outlive
# its reasons. (importer, module imported from, name)
PENDING: set[tuple[str, str, str]] = set()


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(path: Path, root: Path, package: str) -> list[tuple[str, str, str]]:
    """``(importer, module, name)`` for each private name ``path`` takes from another module
    of ``package`` (whose sources lie in ``root``): ``from module import _name``, or
    ``alias._name`` where ``alias`` is bound to ``module`` by an import."""
    known = {module_name(p, root) for p in root.rglob("*.py")}
    inside = path.is_relative_to(root)
    me = module_name(path, root) if inside else path.stem
    parts = me.split(".")
    here = parts if path.name == "__init__.py" else parts[:-1]
    if me == "__init__":
        here = []

    def ours(dotted: str) -> str | None:
        """``package.a.b`` -> ``a.b`` for a module of the package; ``package`` -> ``__init__``."""
        if dotted == package:
            return "__init__"
        if dotted.startswith(package + "."):
            name = dotted[len(package) + 1 :]
            return name if name in known else None
        return None

    found: list[tuple[str, str, str]] = []
    modules: dict[str, str] = {}  # a local name -> the module of ours it is bound to
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                mod = ours(a.name)
                if mod is None:
                    continue
                if a.asname:
                    modules[a.asname] = mod
                else:  # ``import package.a.b`` binds ``package``; attribute chains resolve it
                    modules[package] = "__init__"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if not inside:
                    continue
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                mod = ".".join(base + ([node.module] if node.module else [])) or "__init__"
            else:
                mod = ours(node.module or "")
                if mod is None:
                    continue
            for a in node.names:
                sub = a.name if mod == "__init__" else f"{mod}.{a.name}"
                if sub in known:  # ``from package.a import b``: b is a module
                    modules[a.asname or a.name] = sub
                    if not is_private(a.name):
                        continue
                if is_private(a.name) and mod != me:
                    found.append((me, mod, a.name))

    def module_of(expr: ast.expr) -> str | None:
        """The module of ours that ``expr`` (``name`` or ``name.sub.sub``) names, or None."""
        if isinstance(expr, ast.Name):
            return modules.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = module_of(expr.value)
            if base is None:
                return None
            sub = expr.attr if base == "__init__" else f"{base}.{expr.attr}"
            return sub if sub in known else None
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            mod = module_of(node.value)
            if mod is not None and mod != me:
                found.append((me, mod, node.attr))
    return sorted(set(found))


def scanned_files(repo: Path = REPO) -> list[Path]:
    return sorted(p for d in SCANNED for p in (repo / d).rglob("*.py"))


def all_private_imports(repo: Path = REPO, package: str = "asa_lib"):
    root = repo / package
    out = []
    for p in scanned_files(repo):
        rel = p.relative_to(repo).as_posix()
        for importer, mod, name in private_imports(p, root, package):
            out.append((rel, importer, mod, name))
    return out


def test_no_module_imports_another_modules_private_names():
    found = {(importer, mod, name) for _, importer, mod, name in all_private_imports()}
    new = sorted(found - PENDING)
    assert not new, "private names imported from another module:\n" + "\n".join(
        f"{importer} takes {name} from {mod}: give it a public name" for importer, mod, name in new
    )
    gone = sorted(PENDING - found)
    assert not gone, f"no longer imported: remove from PENDING: {gone}"


def test_the_scan_covers_the_library_the_notebooks_and_the_benchmarks():
    dirs = {p.relative_to(REPO).parts[0] for p in scanned_files()}
    assert dirs == set(SCANNED)
    assert (LIBRARY / "provenance.py") in scanned_files()


def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / "pkg" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


def test_the_check_finds_each_form_of_private_import(tmp_path):
    """Every form is found once, and what is allowed is not (so the test cannot pass vacuously)."""
    pkg = _package(
        tmp_path,
        {
            "__init__.py": "from pkg._version import __version__\n",
            "_version.py": "__version__ = '1'\n",
            "a.py": "def _x(): ...\ndef _y(): ...\ndef public(): ...\n_z = _w = _v = 1\n",
            "sub/__init__.py": "",
            "sub/b.py": (
                "import os\n"
                "import pkg.a\n"
                "import pkg.a as m\n"
                "from pkg import a\n"
                "from pkg.a import _x, public\n"
                "from ..a import _y\n"
                "def f(self):\n"
                "    from pkg.a import _u  # a lazy import counts too\n"
                "    os._exit, self._own, pkg.__version__  # not a module of ours, dunders: fine\n"
                "    return m._z, a._w, pkg.a._v\n"
                "def _mine(): ...\n"
            ),
            "sub/c.py": "from pkg.sub.c import _me  # its own name\nfrom .b import _mine\n",
        },
    )
    found = [f for p in sorted(pkg.rglob("*.py")) for f in private_imports(p, pkg, "pkg")]
    assert sorted(found) == [
        ("sub.b", "a", "_u"),
        ("sub.b", "a", "_v"),
        ("sub.b", "a", "_w"),
        ("sub.b", "a", "_x"),
        ("sub.b", "a", "_y"),
        ("sub.b", "a", "_z"),
        ("sub.c", "sub.b", "_mine"),
    ]


def test_a_notebook_importing_a_private_name_is_found(tmp_path):
    pkg = _package(tmp_path, {"__init__.py": "", "nb.py": "def _show(): ...\n"})
    notebook = tmp_path / "01_x.py"
    notebook.write_text("from pkg import nb\nfrom pkg.nb import _show\nnb._show()\n")
    assert private_imports(notebook, pkg, "pkg") == [("01_x", "nb", "_show")]
