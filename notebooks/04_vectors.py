# %% [markdown]
# # 04 · Steering vectors at L*
#
# On CAL, raw (not standardized) states at L*: the global mean difference
# (tool − non-tool) and one per domain, each L2-normalized to unit length. A
# domain without both classes in CAL gets no vector (the gate then falls back
# to the global vector).
#
# Then the diagnostics (will ASA work on this model?) and the behaviour
# directions for `vector: behaviour`, from the unsteered model's own calls.
#
# Writes `vectors/vectors.safetensors`, `vectors/vectors.json`,
# `vectors/behaviour.safetensors` and `vectors/diagnostics.json`.

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

# %% [markdown]
# ## Will ASA work on this model? The knowing-doing gap per layer
#
# ASA assumes the state knows when a tool is needed and that pushing along the
# label vector moves the model towards calling. Here the unsteered model's own
# decisions are generated once on CAL and VALID (the sweep's generation driver
# and cache: the sweep's baseline reuses the VALID outputs; CAL is the extra
# cost, shown below). Per layer: the label probe's VALID AUC (stage 03), the
# *behaviour* probe's AUC (the same probe fitted on CAL states against the
# model's CAL calls, scored against its VALID calls), and the cosine of the
# label direction (CAL, tool − non-tool) with the model's call direction (CAL,
# called − not called). Aligned: cos ≥ 0.5; weakly: 0.2 ≤ |cos| < 0.5; not
# aligned: |cos| < 0.2 (see `asa_lib.method.diagnostics`).
#
# Also writes `vectors/behaviour.safetensors` (for `vector: behaviour`) and
# `vectors/diagnostics.json`.

# %%
from asa_lib.method import diagnostics
from asa_lib.model.load import load_params_model
from asa_lib.run.sweep import baseline_calls

lm = load_params_model(params)
calls = {s: baseline_calls(params, run, lm, s, layer) for s in ("cal", "valid")}
states = {s: extract.load_states(run, s) for s in ("cal", "valid")}
y_valid = np.array(extract.load_meta(run, "valid")["labels"])
called = {s: np.array(c["called"]) for s, c in calls.items()}
behaviour, bnotes = diagnostics.behaviour_vectors(h, called["cal"], d, domains)
for n in bnotes:
    print("NOTE:", n)
diagnostics.save_behaviour_vectors(run, behaviour)
diag = diagnostics.diagnostics(
    states["cal"],
    y,
    d,
    called["cal"],
    states["valid"],
    y_valid,
    called["valid"],
    [r["auc"] for r in probing.load_layers(run)["layers"]],
    layer,
    vectors,
    behaviour,
)
diag["cost"] = {  # the diagnostics' extra generation: CAL (VALID is the sweep baseline's, reused)
    s: {k: c[k] for k in ("generated_now", "seconds")} | {"prompts": len(c["called"])}
    for s, c in calls.items()
}
diag["behaviour_notes"] = bnotes
diagnostics.save_diagnostics(run, diag)
print("VERDICT:", diag["verdict"])
print(
    f"unsteered calls: CAL {diag['calls']['cal']['called']}/{diag['calls']['cal']['n']}, "
    f"VALID {diag['calls']['valid']['called']}/{diag['calls']['valid']['n']}; cost: "
    + "; ".join(
        f"{s.upper()} {c['generated_now']} generated now in {c['seconds']:.1f} s"
        for s, c in diag["cost"].items()
    )
)
nb.folded(
    nb.table(pd.DataFrame(diag["layers"])),
    "per layer: label probe AUC, behaviour probe AUC, cosine",
)

# %%
nb.show(plots.diagnostics_layers(diag["layers"], layer, diag["verdict"]))

# %% [markdown]
# ### At L*: the label probe's verdict against the model's behaviour (VALID)
#
# "Knows": stage 03's probe at L* gives p(tool) ≥ 0.5. "Calls": the unsteered
# model's output starts a tool call. The off-diagonal cells are the gap ASA can
# close; `labelled tool` counts the prompts in each cell whose label is tool.

# %%
nb.table(diagnostics.gap_matrix(diag["gap_table"]), index=True)

# %%
if diag["vector_cos"]:
    vcos = diag["vector_cos"]
    display(
        nb.table(
            pd.DataFrame({"vector": list(vcos), "cos": list(vcos.values())}),
            labels={"cos": "cos(label vector, behaviour direction)"},
            caption="At L*: each label vector against the behaviour direction of the same name",
        )
    )
else:
    print("No behaviour direction (see the note above): no label vector to compare it with.")
