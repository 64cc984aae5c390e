# %% [markdown]
# # 06 · One sweep config: steer, generate, evaluate (VALID and TEST)
#
# papermill runs this notebook once per config (and once as the unsteered
# `baseline`). Gate decisions come from the stored L* states; the steering
# delta `gate × alpha_eff × v` is added once, at the last prompt token of
# block L*, on the prefill pass. The outputs were generated for every config at
# once by stage 06_generate (each prompt prefilled once) into the run's cache
# (`cache/generations.sqlite`); this notebook reads them back and scores them.
#
# Writes `sweep/<config_name>.json` (metrics with bootstrap intervals and every
# per-prompt record).

# %% tags=["parameters"]
params_path = "params/tiny.yaml"
run_dir = "reports/tiny"
config_name = "baseline"  # "baseline" or the name of a config in the params file's sweep

# %%
import pandas as pd

from asa_lib import data, nb
from asa_lib.method.bundle import load_bundle
from asa_lib.metrics import validity_shares
from asa_lib.model.load import load_params_model
from asa_lib.report import plots
from asa_lib.run.sweep import run_config

params, run = nb.open_stage("06_sweep", params_path, run_dir)
config = params.config(config_name)
bundle = load_bundle(run.bundle)
lm = load_params_model(params)
print(
    f"config {config}; alpha unit {params.steering.alpha_unit}; L* = {bundle.layer}; model {lm.model_id}"
)

# %%
res = run_config(params, run, lm, bundle, config)
print(f"alpha_eff = {res['alpha_eff']:.4g}")
split_table = pd.DataFrame(
    [
        {
            "split": s,
            **{
                k: v["metrics"][k]
                for k in (
                    "n",
                    "precision",
                    "recall",
                    "f1",
                    "fpr",
                    "accuracy",
                    "triggers",
                )
            },
            **validity_shares(v["metrics"]),
            "F1 95% CI": "[{:.3f}, {:.3f}]".format(*v["metrics"]["ci95"]["f1"]),
            "steered prompts": v["steered"],
            "generated now": v["generated_now"],
        }
        for s, v in res["splits"].items()
    ]
)
# the calls split by validity (shares of the calls; — where there was no call): F1, recall
# and FPR count a call when the output opens one, whether or not it could run
nb.table(split_table)

# %% [markdown]
# ## Confusion matrices (rows: label, columns: triggered)

# %%
nb.show(plots.trigger_confusions(res["splits"], config_name))

# %% [markdown]
# ## Per-domain metrics

# %%
per_dom = pd.DataFrame(
    [
        {"split": s, "domain": d, **{k: m[k] for k in ("n", "precision", "recall", "f1", "fpr")}}
        for s, v in res["splits"].items()
        for d, m in v["metrics"]["per_domain"].items()
    ]
)
if nb.several_domains(per_dom["domain"].unique(), "the per-domain breakdown"):
    display(nb.table(per_dom))
    nb.show(
        plots.per_domain(
            per_dom[per_dom["split"] == "valid"], f"{config_name} · per domain (VALID)"
        )
    )

# %% [markdown]
# ## Gate decisions (VALID + TEST)

# %%
rec = pd.DataFrame(res["records"])
gate_names = {-1: "gate −1 (suppress)", 0: "gate 0 (none)", 1: "gate +1 (push)"}
gates = pd.crosstab(
    [rec["split"], rec["label"].map({1: "tool", 0: "non-tool"})], rec["gate"].map(gate_names)
).reindex(columns=[g for g in gate_names.values() if g in set(rec["gate"].map(gate_names))])
nb.table(gates, index=True, counts=list(gates.columns))

# %% [markdown]
# ## What steering changed against the baseline
#
# Per split: prompts steered (gate ≠ 0), outputs that changed, and decisions
# (tool call or not) that flipped: gained a call under a +1 gate, lost one
# under a −1 gate, or changed against its gate. Did the gate's decision happen:
# of the rows where the baseline decided the other way than the gate pushed
# (gate −1 on a call, +1 on an abstention), how many kept the baseline's
# decision ("still calls", "still abstains"), and the rows the pull moved
# against its own sign (gate −1 rows that newly call, +1 rows that newly
# abstain), with plain advice where they say something. Then every flipped
# prompt with the baseline and steered outputs side by side (escaped).

# %%
from asa_lib.files import read_json
from asa_lib.params import BASELINE
from asa_lib.run import analysis
from asa_lib.run.sweep import sweep_path

prompts = {x.id: x.text for xs in data.read_splits(run).values() for x in xs}
if config_name == BASELINE:
    print("This is the baseline: nothing to compare.")
else:
    base = read_json(sweep_path(run, BASELINE))
    counts = analysis.flip_counts(base, res)
    display(nb.table(counts))
    for row in counts.to_dict("records"):
        for line in analysis.decision_advice(row):
            print("ADVICE:", line)
    # with each prompt's text and tools
    flipped = analysis.flips(base, res, data.read_tool_sets(run), prompts)
    print(f"{len(flipped)} prompts changed their decision" + (":" if len(flipped) else "."))
    if len(flipped):
        display(nb.table(flipped))

# %% [markdown]
# ## Sample outputs
#
# Model outputs are untrusted text: they are shown escaped.


# %%
def samples(df, n=4):
    cols = [
        "id",
        "prompt",
        "split",
        "domain",
        "label",
        "routed",
        "p_tool",
        "gate",
        "triggered",
        "valid",
        "output",
    ]
    if not len(df):
        print("none")
        return None
    out = df.assign(prompt=df["id"].map(prompts))[cols].head(n)
    return nb.table(out, labels={"routed": "routed to", "valid": "valid call"})


print("triggered:")
samples(rec[rec["triggered"]])

# %%
print("not triggered:")
samples(rec[~rec["triggered"]])
