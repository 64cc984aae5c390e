# %% [markdown]
# # 03 · Probe sweep over layers → L*
#
# Per layer: StandardScaler and a logistic-regression probe fitted on CAL,
# AUC and accuracy on VALID (as the seed). **L\*** = the layer with the best
# VALID AUC; ties go to the earlier layer. TEST is not touched.
#
# Writes `probing/layers.json`.

# %% tags=["parameters"]
params_path = "params/tiny.yaml"
run_dir = "reports/tiny"

# %%
import pandas as pd

from asa_lib import nb
from asa_lib.report import plots
from asa_lib.run import probing as stage

params, run = nb.open_stage("03_probing", params_path, run_dir)
done = stage.run(params, run)  # the sweep; writes probing/layers.json
print(f"CAL {done.cal_shape}, VALID {done.valid_shape}")

# %%
sweep = done.sweep
table = pd.DataFrame(sweep.table())
print(
    f"L* = {sweep.best_layer}  (VALID AUC {sweep.auc[sweep.best_layer]:.4f}, "
    f"accuracy {sweep.accuracy[sweep.best_layer]:.4f})"
)
nb.show(plots.layer_auc(table, sweep.best_layer))

# %%
nb.folded(
    nb.table(
        table.assign(best=["L*" if b else "" for b in table["best"]]),
        labels={"auc": "VALID AUC", "accuracy": "VALID accuracy", "best": "chosen"},
        decimals=4,
    ),
    f"AUC and accuracy per layer ({len(table)} layers)",
)
