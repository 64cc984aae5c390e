# %% [markdown]
# # 05 · Router and per-domain probes → the adapter bundle
#
# StandardScaler fitted on CAL at L*; a multinomial router over the domains
# and one binary tool-need probe per domain, trained on TRAIN; accuracy on
# VALID. A domain whose TRAIN rows lack a class gets no probe: the gate uses
# p = 0.5 for it (the seed's fallback), so prompts routed there are never
# steered.
#
# Writes the adapter bundle `bundle/adapter.{json,safetensors}` (no pickle).

# %% tags=["parameters"]
params_path = "params/tiny.yaml"
run_dir = "reports/tiny"

# %%
import pandas as pd

from asa_lib import nb
from asa_lib.report import plots
from asa_lib.run import routing as stage

params, run = nb.open_stage("05_routing", params_path, run_dir)
done = stage.run(params, run)  # fits, writes bundle/ and reads it back (done.bundle)
domains = done.domains
print(f"L* = {done.layer}; domains: {domains}")

# %%
for n in done.notes:
    print("NOTE:", n)
print(f"bundle saved: {done.files}")

# %% [markdown]
# ## Accuracy on VALID

# %%
nb.table(pd.DataFrame(done.valid_accuracy))

# %%
if nb.several_domains(domains, "the router's confusion map on VALID"):
    nb.show(
        plots.confusion_heatmap(
            done.valid_confusion, domains, "Router on VALID", xlabel="routed", ylabel="true domain"
        )
    )
