# %% [markdown]
# # 08 · Evaluate a tuned adapter on a labelled set
#
# The adapter (a run's `chosen_adapter/`) is applied **unchanged** to every usable
# row of the data: nothing is fitted, nothing is split. Each row's state at the
# bundle's block L* decides the gate (router, probe, tau); the unsteered baseline
# and every config given (the adapter's own, or `--tau/--alpha/--beta` overrides)
# are generated with the sweep's batched, cached driver. Rows of a domain the
# bundle never saw are routed to a domain it knows, and their labels count.
#
# `asa evaluate` runs the evaluation, then this notebook as its report
# (`reports/<name>/`). Run by hand, it evaluates when `evaluation.json` is missing
# or was made from other inputs.

# %% tags=["parameters"]
params_path = "params/tiny.yaml"
adapter = "reports/tiny/chosen_adapter"
data = "data/labelled_example.jsonl"
out_dir = "reports/tiny-eval"
# overrides, comma-separated; empty: the adapter's own
taus = ""
alphas = ""
betas = ""

# %%
import pandas as pd

from asa_lib import nb
from asa_lib.layout import shown_path
from asa_lib.params import BASELINE
from asa_lib.report import plots
from asa_lib.run import analysis
from asa_lib.run import evaluate as ev

params, res = ev.open_evaluation(params_path, adapter, data, out_dir, taus, alphas, betas)
configs = res["configs"]
print(f"adapter {shown_path(res['adapter'])}")
print(
    f"  block {configs[BASELINE]['layer']} of {res['model_id']}; bundle sha256 {res['bundle_sha256']}"
)
sha = res["data_sha256"]
print(f"data {shown_path(res['data'], sha256=sha)}" + (f"; sha256 {sha}" if sha else ""))
print(
    f"  {res['rows_used']} rows used of {res['rows_read']} read; skipped: {res['skipped'] or 'none'}"
)
if res["prompt_format_note"]:
    print("NOTE:", res["prompt_format_note"])
if res.get("adapter_stale"):
    print("NOTE: the adapter is stale:", res["adapter_stale"])
if (res.get("run_overlap") or {}).get("note"):
    print("NOTE:", res["run_overlap"]["note"])
unseen = res["domains"]["unseen"]
if unseen:
    print(
        f"NOTE: {len(unseen)} domain(s) the bundle never saw: {', '.join(unseen)}. Their rows are "
        "routed to a domain it knows, and their labels count in every figure below."
    )
print(f"{res['seconds']:.0f} s, {res['seconds'] / max(res['rows_used'], 1):.2f} s per prompt")

# %% [markdown]
# ## Does the probe know here?
#
# The probe's AUC on this set (its p(tool) against the labels, bootstrap 95% interval),
# the share of rows at each gate value, and how many of the rows the gate asked to change
# (gate +1 where the baseline abstains, -1 where it calls) followed it, and how many of
# those moved towards their label. An interval that reaches 0.5 means the probe cannot
# tell this set's labels apart: steering cannot help. Pushes that happen but move rows
# away from their labels as often as towards them do not help either.

# %%
t = res["transfer"]
ci = t["probe_auc_ci95"]
if t["probe_auc"] is not None:
    print(f"probe AUC {t['probe_auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] on {res['rows_used']} rows")
for name, c in t["configs"].items():
    print(f"{name}: {c['verdict']}")
    if c["warning"]:
        print(f"  warning: {c['warning']}")
nb.table(
    pd.DataFrame(
        [
            {
                "config": name,
                **{f"gate {g}": c["gates"][k] for g, k in (("-1", "-1"), ("0", "0"), ("+1", "1"))},
                "asked to change": c["aimed"],
                "followed": c["followed"],
                "towards the label": c.get("right"),
            }
            for name, c in t["configs"].items()
        ]
    ),
    counts=["gate -1", "gate 0", "gate +1", "asked to change", "followed", "towards the label"],
)

# %% [markdown]
# ## Baseline and steered, with bootstrap 95% intervals
#
# F1, recall and FPR count a call when the output opens one, whether or not it could run.
# The calls columns say which could: complete valid (closed, parses, names a listed tool
# with its required arguments), complete invalid (closed, but does not parse, names another
# tool or lacks an argument) and cut at `max_new_tokens`; the three add up to the calls.

# %%
nb.table(pd.DataFrame(ev.metric_rows(res)))

# %% [markdown]
# ## Did steering help beyond noise? Steered minus baseline, paired bootstrap 95% CI
#
# Both are scored on the same resampled prompts; an interval that excludes 0 is a
# change beyond resampling noise.

# %%
diffs = analysis.paired_differences(configs, ev.SPLIT, seed=params.data.seed)
display(nb.table(diffs))
if len(diffs):
    nb.show(plots.paired_diffs(diffs, "steered − baseline, paired bootstrap 95% CI"))

# %% [markdown]
# ## Per domain (with intervals)

# %%
nb.table(pd.DataFrame(ev.domain_rows(res)))

# %% [markdown]
# ## Where the router sent the rows, and p(tool) by label

# %%
mix = ev.routing_mix(res)
display(nb.table(mix, index=True, counts=list(mix.columns)))
chosen = res["configs_evaluated"][0]
nb.show(
    plots.p_tool_histograms(
        configs[chosen]["records"], configs[chosen]["tau"], f"p(tool) by label · {chosen}"
    )
)

# %% [markdown]
# ## Flipped decisions (against the baseline), with both outputs

# %%
for name in res["configs_evaluated"]:
    print(name)
    display(nb.table(analysis.flip_counts(configs[BASELINE], configs[name])))
    display(nb.table(analysis.flips(configs[BASELINE], configs[name], ev.tool_sets(res))))
