"""Notebooks that run where they are opened, and reports for their reader (issue 24)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import ROOT


def _project_copy(tmp_path: Path) -> Path:
    """A copy of the project's sources (pyproject.toml, notebooks, params, data) in tmp_path."""
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "pyproject.toml", proj)
    for d in ("notebooks", "params"):
        shutil.copytree(ROOT / d, proj / d)
    (proj / "data").mkdir()
    shutil.copy(ROOT / "data" / "alpaca_subset.jsonl.xz", proj / "data")
    return proj


def test_relative_stage_paths_are_taken_from_the_project_root_wherever_the_kernel_starts(
    tmp_path, monkeypatch
):
    from asa_lib.layout import RunFolderError
    from asa_lib.nb import stage_paths

    proj = _project_copy(tmp_path)
    for cwd in (proj, proj / "notebooks", proj / "params"):
        monkeypatch.chdir(cwd)
        params, run = stage_paths("params/tiny.yaml", "reports/tiny")
        assert params == proj / "params" / "tiny.yaml" and run == proj / "reports" / "tiny"
    monkeypatch.chdir(proj / "notebooks")
    for bad in ("notebooks/reports/tiny", "notebooks"):
        with pytest.raises(RunFolderError, match="inside notebooks/"):
            stage_paths("params/tiny.yaml", bad)
    with pytest.raises(RunFolderError, match="inside notebooks/"):
        stage_paths("params/tiny.yaml", str(proj / "notebooks" / "x"))


def test_asa_run_refuses_a_run_folder_inside_notebooks(tmp_path):
    from asa_lib.run.runner import NOTEBOOK_DIR, RunError, run

    target = NOTEBOOK_DIR / "reports" / "tiny"
    with pytest.raises(RunError, match="inside notebooks/"):
        run(ROOT / "params" / "tiny.yaml", target, log=lambda *_: None)
    assert not (NOTEBOOK_DIR / "reports").exists()


@pytest.mark.slow
def test_01_data_runs_with_its_defaults_from_inside_notebooks(tmp_path):
    """As JupyterLab and VS Code run it: the kernel's working folder is notebooks/."""
    import jupytext
    import papermill as pm

    from asa_lib.run.runner import KERNEL

    proj = _project_copy(tmp_path)
    nb = jupytext.read(proj / "notebooks" / "01_data.py")
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    env = {"PYTHONPATH": str(ROOT)}  # the kernel imports this checkout's asa_lib
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        pm.execute_notebook(
            nb,
            str(tmp_path / "out.ipynb"),
            kernel_name=KERNEL,
            cwd=str(proj / "notebooks"),
            progress_bar=False,
            log_output=False,
        )
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert (proj / "reports" / "tiny" / "data" / "splits.jsonl").is_file()
    assert not (proj / "notebooks" / "reports").exists()
