"""Editing the notebooks in Jupyter, headless: jupytext pairing round-trips, the kernel exists."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

from asa_lib.run.runner import KERNEL, NOTEBOOK_DIR
from conftest import ROOT

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.py"))


def test_every_notebook_reads_and_writes_back_unchanged():
    # the stages of a run (06: every config's outputs, then one page per config), and
    # `asa evaluate`'s report
    assert [p.stem for p in NOTEBOOKS] == [
        "01_data",
        "02_extraction",
        "03_probing",
        "04_vectors",
        "05_routing",
        "06_generate",
        "06_sweep",
        "07_analysis",
        "08_evaluate",
    ]
    for path in NOTEBOOKS:
        text = path.read_text(encoding="utf-8")
        nb = jupytext.reads(text, fmt="py:percent")
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), path.name
        assert jupytext.writes(nb, fmt="py:percent") == text, path.name


def test_jupytext_sync_pairs_each_notebook_without_changing_it_and_carries_edits_back(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)  # [tool.jupytext] formats = "ipynb,py:percent"
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    for p in NOTEBOOKS:
        shutil.copy(p, nb_dir)
    sync = [sys.executable, "-m", "jupytext", "--sync", "--quiet"]
    subprocess.run(sync + sorted(str(p) for p in nb_dir.glob("*.py")), check=True, cwd=tmp_path)
    for p in NOTEBOOKS:
        assert (nb_dir / p.name).read_text(encoding="utf-8") == p.read_text(encoding="utf-8"), (
            p.name
        )
        assert (nb_dir / p.with_suffix(".ipynb").name).is_file(), p.name
    # An edit made in Jupyter (which also stores the kernel in the .ipynb) comes back into the .py
    # as that edit only: no header, no other change.
    ipynb = nb_dir / "03_probing.ipynb"
    nb = nbformat.read(ipynb, as_version=4)
    nb.metadata["kernelspec"] = {
        "name": KERNEL,
        "display_name": "Python 3 (asa)",
        "language": "python",
    }
    nb.cells[-1].source += "\nprint('edited in Jupyter')"
    nbformat.write(nb, ipynb)
    subprocess.run(sync + [str(ipynb)], check=True, cwd=tmp_path)
    before = (NOTEBOOK_DIR / "03_probing.py").read_text(encoding="utf-8").splitlines()
    after = (nb_dir / "03_probing.py").read_text(encoding="utf-8").splitlines()
    assert after == before + ["print('edited in Jupyter')"]


def test_the_kernel_the_notebooks_run_on_is_registered_for_this_environment():
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager()
    for p in NOTEBOOKS:  # a notebook that names a kernel names the runner's
        assert jupytext.read(p).metadata.get("kernelspec", {}).get("name", KERNEL) == KERNEL
    spec_dirs = ksm.find_kernel_specs()
    if KERNEL not in spec_dirs:
        pytest.fail(f"no Jupyter kernel {KERNEL!r}: run `make install` (or `make lab-setup`)")
    registered = Path(spec_dirs[KERNEL]).resolve()
    # the registered spec (make install: ipykernel install --sys-prefix), not ipykernel's built-in fallback
    want = (Path(sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL).resolve()
    assert registered == want, (
        f"kernel {KERNEL!r} resolves to {registered}, not this environment's {want}"
    )
    spec = json.loads((registered / "kernel.json").read_text())
    assert Path(spec["argv"][0]).resolve() == Path(sys.executable).resolve()


def test_make_lab_installs_jupyterlab_registers_the_kernel_and_starts_on_the_notebooks():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(
        ["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert '-m pip install -q "jupyterlab>=4,<5" "jupytext>=1.16"' in out
    assert f"-m ipykernel install --sys-prefix --name {KERNEL}" in out
    assert "Jupytext Notebook" in out and "jupyter lab --ServerApp.root_dir=" in out
    # Jupyter refuses root without --allow-root (Docker, a root shell); an ordinary user keeps its guard
    assert ("--allow-root" in out) == (os.getuid() == 0)
