"""Stage 03: the probe sweep over layers and L*, written to ``probing/layers.json``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from asa_lib.engine.extract import load_meta, load_states
from asa_lib.layout import RunDir
from asa_lib.method.probing import LayerSweep, layer_sweep, save_layers
from asa_lib.run.stages import require


@dataclass
class ProbingResult:
    """What stage 03 found: the sweep (L*, AUC and accuracy per layer) and the states' shapes."""

    sweep: LayerSweep
    cal_shape: tuple[int, ...]  # (samples, layers, hidden)
    valid_shape: tuple[int, ...]

    @property
    def best_layer(self) -> int:
        return self.sweep.best_layer


def run(params, run_dir: str | os.PathLike) -> ProbingResult:
    """Stage 03: per layer a probe fitted on CAL, scored on VALID; L* written with the table.

    ``params`` is taken for a uniform stage signature; the stage reads none of it.
    """
    folder = RunDir(run_dir)
    require(folder, "03_probing")
    cal, valid = load_states(folder, "cal"), load_states(folder, "valid")
    y_cal = np.array(load_meta(folder, "cal")["labels"])
    y_valid = np.array(load_meta(folder, "valid")["labels"])
    sweep = layer_sweep(cal, y_cal, valid, y_valid)
    save_layers(folder, sweep, num_layers=cal.shape[1])
    return ProbingResult(sweep, tuple(cal.shape), tuple(valid.shape))
