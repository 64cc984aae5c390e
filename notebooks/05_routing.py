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
import numpy as np
import pandas as pd

from asa_lib import data, nb
from asa_lib.engine import extract
from asa_lib.method import diagnostics, probing
from asa_lib.method.bundle import load_bundle, save_bundle
from asa_lib.report import plots

params, run = nb.open_stage("05_routing", params_path, run_dir)
layers = probing.load_layers(run)
layer, num_layers = layers["best_layer"], layers["num_layers"]
vectors = probing.load_vectors(run)
h = {s: extract.load_states(run, s, layer) for s in ("cal", "train", "valid")}
meta = {s: extract.load_meta(run, s) for s in ("cal", "train", "valid")}
y = {s: np.array(m["labels"]) for s, m in meta.items()}
d = {s: m["domains"] for s, m in meta.items()}
domains = probing.class_order(data.read_domains(run))  # the data stage's domains, sorted by name
print(f"L* = {layer}; domains: {domains}")

# %%
bundle, report = probing.fit_bundle(
    h,
    y,
    d,
    layer,
    domains,
    model_id=meta["cal"]["model_id"],
    num_layers=num_layers,
    model_fingerprint=meta["cal"].get("model_fingerprint", ""),
    model_weights=meta["cal"].get("model_weights", ""),
    vectors=vectors,  # stage 04's
    behaviour_vectors=diagnostics.load_behaviour_vectors(run),  # stage 04's, for vector: behaviour
)
for n in report.notes:
    print("NOTE:", n)
save_bundle(bundle, run.bundle)
bundle = load_bundle(run.bundle)  # everything below uses the reloaded bundle
print(f"bundle saved: {sorted(p.name for p in run.bundle.iterdir())}")

# %% [markdown]
# ## Accuracy on VALID

# %%
nb.table(pd.DataFrame(probing.validation_accuracy(bundle, h["valid"], y["valid"], d["valid"])))

# %%
cm = probing.router_confusion(bundle, h["valid"], d["valid"])
nb.show(
    plots.confusion_heatmap(cm, domains, "Router on VALID", xlabel="routed", ylabel="true domain")
)
