"""Small glue shared by the notebooks: open a stage, show tables and figures."""

from __future__ import annotations

import html
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from asa_lib.layout import RunDir, check_run_folder, project_root, resolve_in_project
from asa_lib.params import Params, load_params
from asa_lib.report.tables import baseline_na, table  # noqa: F401 (the notebooks' tidy tables)
from asa_lib.run.stages import require


def stage_paths(params_path: str, run_dir: str) -> tuple[Path, Path]:
    """The params file and run folder a stage's parameters name, as absolute paths.

    Relative paths are relative to the project root (:func:`asa_lib.layout.project_root`),
    whatever the kernel's working folder: JupyterLab and VS Code start kernels in
    ``notebooks/``, papermill and ``jupyter execute`` where they are started. A params
    path that is not in the project but is beside the working folder is taken from there.
    A run folder inside ``notebooks/`` is refused (:class:`~asa_lib.layout.RunFolderError`).
    """
    root = project_root()
    params = resolve_in_project(params_path, root)
    here = Path(params_path).expanduser()
    if not params.is_file() and not here.is_absolute() and here.is_file():
        params = here.resolve()
    return params, check_run_folder(resolve_in_project(run_dir, root), root)


def open_stage(stage: str, params_path: str, run_dir: str) -> tuple[Params, RunDir]:
    """Load and validate params; stop at once if the outputs ``stage`` reads are missing.

    Relative ``params_path`` and ``run_dir`` are taken relative to the project root
    (:func:`stage_paths`). What a stage reads is the stage table's
    (:data:`asa_lib.run.stages.STAGES`).
    """
    warnings.filterwarnings("ignore", message=".*causal_conv1d.*")
    params_file, run_folder = stage_paths(params_path, run_dir)
    params = load_params(params_file)
    run = RunDir(run_folder)
    require(run, stage)
    run.root.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.max_colwidth", 120)
    return params, run


def verdict(results: dict):
    """The run's verdict sentence (:func:`asa_lib.report.verdict.verdict`), for display."""
    from IPython.display import HTML

    from asa_lib.report.verdict import verdict as sentence

    return HTML(f"<p class='asa-verdict'><b>{html.escape(sentence(results))}</b></p>")


def folded(obj, summary: str):
    """``obj`` (a table, text) folded into a closed ``<details>`` under ``summary``."""
    from IPython.display import HTML

    inner = (
        obj._repr_html_() if hasattr(obj, "_repr_html_") else f"<pre>{html.escape(str(obj))}</pre>"
    )
    return HTML(f"<details><summary>{html.escape(summary)}</summary>{inner}</details>")


def show(fig) -> None:
    """Display a figure inline (it is embedded in the executed notebook and the HTML report)."""
    plt.show()
    plt.close(fig)


def several_domains(domains, what: str) -> bool:
    """True where ``domains`` are more than one; else print one sentence saying why ``what``
    (a figure or table that compares domains) is not shown, and return False."""
    domains = list(domains)
    if len(domains) > 1:
        return True
    name = f" ({domains[0]})" if domains else ""
    print(
        f"One domain{name}: {what} is not shown. With one domain there is no router, and every "
        "prompt uses the one probe and steering vector, so there is nothing to compare."
    )
    return False
