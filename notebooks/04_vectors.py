# %% [markdown]
# # 04 · Steering vectors at L*
#
# On CAL, raw (not standardized) states at L*: the global mean difference
# (tool − non-tool) and one per domain, each L2-normalized to unit length. A
# domain without both classes in CAL gets no vector (the gate then falls back
# to the global vector).
#
# Writes `vectors/vectors.safetensors` and `vectors/vectors.json`.

# %% tags=["parameters"]
params_path = "params/tiny.yaml"
run_dir = "reports/tiny"

# %%
import numpy as np
import pandas as pd

from asa_lib import data, nb
from asa_lib.engine import extract
from asa_lib.method import probing
from asa_lib.report import plots

params, run = nb.open_stage("04_vectors", params_path, run_dir)
layer = probing.load_layers(run)["best_layer"]
h = extract.load_states(run, "cal", layer)
meta = extract.load_meta(run, "cal")
y, d = np.array(meta["labels"]), meta["domains"]
# the data stage's domains, in the router's order (sorted by name: probing.class_order)
domains = probing.class_order(data.read_domains(run))
print(f"L* = {layer}; CAL states {h.shape}; domains: {domains} (in CAL: {sorted(set(d))})")

# %%
vectors, notes = probing.steering_vectors(h, y, d, domains)
for n in notes:
    print("NOTE:", n)
probing.save_vectors(run, vectors, layer, notes)
cal_norm = probing.cal_mean_norm(h)
nb.table(pd.DataFrame(probing.vector_rows(vectors, y, d)))

# %% [markdown]
# The mean L2 norm of the CAL states at L* sets the scale: a unit vector
# times alpha moves the state by alpha, against a typical norm of:

# %%
print(f"mean |h| at L* on CAL = {cal_norm:.2f}")

# %%
names, M = probing.cosine_matrix(vectors)
nb.show(plots.cosine_heatmap(names, M))
