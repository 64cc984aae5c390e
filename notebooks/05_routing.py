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
from sklearn.metrics import confusion_matrix

from asa_lib import data, nb
from asa_lib.engine import extract
from asa_lib.method import probing
from asa_lib.method.bundle import load_bundle, save_bundle
from asa_lib.report import plots

params, run = nb.open_stage("05_routing", params_path, run_dir)
layers = probing.load_layers(run)
layer, num_layers = layers["best_layer"], layers["num_layers"]
vectors = probing.load_vectors(run)
h = {s: extract.load_states(run, s, layer) for s in ("cal", "train", "valid")}
meta = {s: extract.load_meta(run, s) for s in ("cal", "train", "valid")}
# The data stage's domains (whatever their names), sorted as scikit-learn sorts string classes.
domains = sorted(data.read_domains(run))
print(f"L* = {layer}; domains: {domains}")

# %%
fit = probing.fit_router_and_probes(
    h["cal"], h["train"], np.array(meta["train"]["labels"]), meta["train"]["domains"], domains
)
for n in fit.notes:
    print("NOTE:", n)
bundle = probing.make_bundle(
    fit,
    vectors,
    layer,
    domains,
    meta["cal"]["model_id"],
    num_layers,
    cal_mean_norm=float(np.linalg.norm(h["cal"], axis=1).mean()),
    model_fingerprint=meta["cal"].get("model_fingerprint", ""),
)
save_bundle(bundle, run.bundle)
bundle = load_bundle(run.bundle)  # everything below uses the reloaded bundle
print(f"bundle saved: {sorted(p.name for p in run.bundle.iterdir())}")

# %% [markdown]
# ## Accuracy on VALID

# %%
yv, dv = np.array(meta["valid"]["labels"]), np.array(meta["valid"]["domains"])
routed = np.array(bundle.route(h["valid"]))
rows = [
    {"model": "router", "domain": "all", "n": len(dv), "accuracy": float((routed == dv).mean())}
]
for dom in domains:
    m = dv == dom
    if not m.any():
        continue
    if dom in bundle.probes:
        acc = float(((bundle.probe_proba(dom, h["valid"][m]) >= 0.5).astype(int) == yv[m]).mean())
    else:
        acc = float("nan")
    rows.append(
        {
            "model": f"probe {dom}" + ("" if dom in bundle.probes else " (none: p = 0.5)"),
            "domain": dom,
            "n": int(m.sum()),
            "accuracy": acc,
        }
    )
pd.DataFrame(rows)

# %%
cm = confusion_matrix(dv, routed, labels=domains)
nb.show(
    plots.confusion_heatmap(cm, domains, "Router on VALID", xlabel="routed", ylabel="true domain")
)
