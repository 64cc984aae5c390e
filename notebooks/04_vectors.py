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
import pandas as pd

from asa_lib import nb
from asa_lib.method import diagnostics, probing
from asa_lib.report import plots
from asa_lib.run import vectors as stage

params, run = nb.open_stage("04_vectors", params_path, run_dir)
# the whole stage: the vectors, the unsteered CAL/VALID calls, the diagnostics; writes vectors/
done = stage.run(params, run)
layer, vectors, diag = done.layer, done.vectors, done.diagnostics
print(
    f"L* = {layer}; CAL states {done.cal_shape}; domains: {done.domains} (in CAL: {done.cal_domains})"
)

# %%
for n in done.vector_notes:
    print("NOTE:", n)
nb.table(pd.DataFrame(done.vector_rows))

# %% [markdown]
# The mean L2 norm of the CAL states at L* sets the scale: a unit vector
# times alpha moves the state by alpha, against a typical norm of:

# %%
print(f"mean |h| at L* on CAL = {done.cal_mean_norm:.2f}")

# %%
if nb.several_domains(done.domains, "the cosine matrix of the domain vectors"):
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
for n in done.behaviour_notes:
    print("NOTE:", n)
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
