"""Small glue shared by the notebooks: open a stage, show tables and figures."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import pandas as pd

from .artifacts import RunDir, require
from .params import Params, load_params


def open_stage(
    params_path: str, run_dir: str, needs: tuple[str, ...] = ()
) -> tuple[Params, RunDir]:
    """Load and validate params; stop at once if an earlier stage's outputs are missing."""
    warnings.filterwarnings("ignore", message=".*causal_conv1d.*")
    params = load_params(params_path)
    run = RunDir(run_dir)
    for stage in needs:
        require(run, stage)
    run.root.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.max_colwidth", 120)
    return params, run


def show(fig) -> None:
    """Display a figure inline (it is embedded in the executed notebook and the HTML report)."""
    plt.show()
    plt.close(fig)
