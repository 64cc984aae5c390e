"""Small glue shared by the notebooks: open a stage, show tables and figures."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import pandas as pd

from asa_lib.layout import RunDir
from asa_lib.params import Params, load_params
from asa_lib.run.stages import require


def open_stage(stage: str, params_path: str, run_dir: str) -> tuple[Params, RunDir]:
    """Load and validate params; stop at once if the outputs ``stage`` reads are missing.

    What a stage reads is the stage table's (:data:`asa_lib.run.stages.STAGES`).
    """
    warnings.filterwarnings("ignore", message=".*causal_conv1d.*")
    params = load_params(params_path)
    run = RunDir(run_dir)
    require(run, stage)
    run.root.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.max_colwidth", 120)
    return params, run


def show(fig) -> None:
    """Display a figure inline (it is embedded in the executed notebook and the HTML report)."""
    plt.show()
    plt.close(fig)
