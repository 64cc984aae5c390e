# %% [markdown]
# # 07 · Analysis: every config side by side, chosen on VALID, reported on TEST
#
# The config is **chosen on VALID** (best F1, ties to lower FPR, then the
# earlier config) and its TEST result is reported with bootstrap 95%
# intervals. The TEST column for every config is shown for transparency but is
# never used to select (the seed picked on TEST, which leaks it).
#
# Writes `results.json` and `chosen_adapter/` (the bundle + chosen tau/alpha/beta).

# %% tags=["parameters"]
params_path = "params/tiny.yaml"
run_dir = "reports/tiny"

# %%
import pandas as pd

from asa_lib import nb
from asa_lib.report import plots
from asa_lib.run import analysis

params, run = nb.open_stage("07_analysis", params_path, run_dir)
done = analysis.run(params, run)  # chooses on VALID; writes results.json and chosen_adapter/
res, chosen, results = done.res, done.chosen, done.results
steered = done.steered  # [] where the sweep lists no config (or none ran)
nb.verdict(results)

# %% [markdown]
# ## Every config on VALID and TEST

# %%
if not steered:
    print(
        "No steered config: the sweep has no config with results, only the unsteered "
        "baseline, so there is nothing to compare with it or to choose; the comparisons "
        "below are skipped."
    )
print(f"chosen on VALID: {chosen}")
c = results["chosen"]
print(
    f"{c['name']}: tau={c['tau']} alpha={c['alpha']} ({c['alpha_unit']}, alpha_eff={c['alpha_eff']:.4g}) beta={c['beta']}"
)
print(
    "TEST: "
    + ", ".join(
        f"{m}={c['test'][m]:.3f} [{c['test']['ci95'][m][0]:.3f}, {c['test']['ci95'][m][1]:.3f}]"
        for m in ("f1", "recall", "fpr")
    )
)
nb.table(nb.baseline_na(analysis.summary_table(res)))

# %% [markdown]
# ## Did steering help beyond noise? Each config minus the baseline
#
# Differences in F1 and FPR from the unsteered baseline on the same prompts,
# with paired bootstrap 95% intervals (both scored on the same resampled
# prompts). An interval that excludes 0 is a change beyond resampling noise.

# %%
for split in ("valid", "test") if steered else ():
    diffs = analysis.paired_differences(res, split, seed=params.data.seed)
    print(split.upper())
    display(nb.table(diffs))
    nb.show(
        plots.paired_diffs(diffs, f"{split.upper()} · config − baseline, paired bootstrap 95% CI")
    )
if not steered:
    print("No steered config: no differences from the baseline.")

# %% [markdown]
# ## Ablations: what each config's gate and vector correspond to
#
# Our measurements beside the paper's ablation figures. The paper's numbers are
# for **Qwen2.5-1.5B on the paper's own test set** (alpha = 4), not for this
# model or these prompts: read them as the shape of the effect, not as targets.

# %%
nb.table(analysis.ablation_table(res))

# %% [markdown]
# ## Will ASA work on this model? (stage 04's diagnostics)
#
# The cosine at L* of the label direction (the vector ASA steers with) with the
# unsteered model's own call direction, the label and behaviour probes per
# layer, and at L* the label probe's verdict against the model's calls on VALID
# (see 04_vectors). Then each `vector: behaviour` config (the model's call
# direction, the same gate) against the label-vector config with the same tau,
# alpha and beta: behaviour minus label, paired bootstrap 95% CI.

# %%
from asa_lib.method import diagnostics

diag = diagnostics.load_diagnostics(run)
if diag is None:
    print("No diagnostics: this run's stage 04 predates them.")
else:
    print("VERDICT:", diag["verdict"])
    nb.show(plots.diagnostics_layers(diag["layers"], diag["L_star"], diag["verdict"]))
    display(nb.table(diagnostics.gap_matrix(diag["gap_table"]), index=True))
pairs = analysis.behaviour_pairs(res)
for split in ("valid", "test") if pairs else ():
    print(split.upper(), "· behaviour direction − label vector")
    display(nb.table(analysis.behaviour_vs_label(res, split, pairs, seed=params.data.seed)))

# %% [markdown]
# ## Decisions flipped against the baseline, per config
#
# With, per split, whether the gate's decision happened: the rows where the
# baseline decided the other way than the gate pushed, how many of them kept the
# baseline's decision, and the rows the pull moved against its gate; then the
# advice they give ("try another block", "lower alpha").

# %%
if steered:
    flip_table = pd.concat(
        [analysis.flip_counts(res["baseline"], res[n]).assign(config=n) for n in steered],
        ignore_index=True,
    )
    display(nb.table(flip_table[["config", *flip_table.columns.drop("config")]]))
    for lines in results.get("advice", {}).values():
        for line in lines:
            print("ADVICE:", line)
else:
    print("No steered config: no decision can flip.")

# %% [markdown]
# ## tau × alpha (VALID), where the configs form a grid

# %%
valid_df = analysis.split_frame(res, "valid")
families = analysis.family_grids(valid_df)  # one grid per vector / block / gate / beta
for label, grids in families:
    nb.show(plots.grid_heatmaps(grids, "VALID · tau × alpha" + (f" · {label}" if label else "")))
if not families:
    print(
        "No family of configs (same gate, vector, block and beta) forms a tau × alpha grid "
        "(at least 2 x 2, one config per cell): no heat map."
    )

# %% [markdown]
# ## F1, FPR and recall per config, against the baseline (and the reference row where it applies to this model)

# %%
ref = analysis.reference_row(params)
print("reference row:", ref["name"] if ref else "none for this model")
for split in ("valid", "test") if steered else ():
    df = analysis.split_frame(res, split)
    base = df[df["config"] == "baseline"].iloc[0].to_dict()
    nb.show(
        plots.metric_bars(
            df[df["config"] != "baseline"],
            base,
            ref,
            title=f"{split.upper()} · error bars: bootstrap 95% CI",
        )
    )

# %% [markdown]
# ## FPR vs recall (VALID) with the Pareto front

# %%
nb.show(plots.fpr_recall(analysis.split_frame(res, "valid"), ref, "FPR vs recall · VALID"))

# %% [markdown]
# ## The chosen config per domain (TEST)

# %%
dom = pd.DataFrame(
    [{"domain": d, **m} for d, m in res[chosen]["splits"]["test"]["metrics"]["per_domain"].items()]
)
if nb.several_domains(dom["domain"], "the per-domain breakdown"):
    display(nb.table(dom[["domain", "n", "precision", "recall", "f1", "fpr"]]))
    nb.show(plots.per_domain(dom, f"{chosen} · per domain (TEST)"))

# %% [markdown]
# ## Post-trigger validity (TEST): could the calls run?
#
# F1, recall and FPR count a call when the output opens one, whether or not it could run.
# Here each call is one of three: complete and valid (closed by the end marker, parses,
# names a listed tool with its required arguments), complete and invalid (closed, but does
# not parse, names another tool or lacks an argument), or cut at `max_new_tokens` (no end
# marker). The three shares add up to 1.

# %%
val = analysis.split_frame(res, "test")[
    ["config", "triggers", "complete_valid_share", "complete_invalid_share", "cut_share"]
]
display(nb.table(val))
nb.show(plots.validity(val, "Calls by validity · TEST (share of calls)"))

# %% [markdown]
# ## The chosen adapter on held-out TEST prompts, through the public API
#
# `ASA.load(run / "chosen_adapter")` applies the chosen config to new prompts in
# one pass: the gate is computed inside the prefill (see `asa_lib.api`). The
# first three tool and three non-tool TEST prompts, the baseline output (from
# the sweep) beside the steered one; `= sweep` checks the one-pass output
# against the sweep's two-pass output. Outputs are shown escaped.

# %%
from asa_lib import ASA
from asa_lib.model.load import load_params_model

adapter_dir = analysis.chosen_adapter(run, chosen)
if adapter_dir is None:
    print("No chosen adapter: the unsteered baseline was chosen, so there is nothing to apply.")
else:
    asa = ASA.load(adapter_dir, prompt=params.prompt)
    print(asa.config)
    lm, gen = load_params_model(params), params.generation
    check = analysis.one_pass_agreement(
        run,
        res,
        chosen,
        lambda texts: asa.generate(
            lm,
            None,
            texts,
            max_new_tokens=gen.max_new_tokens,
            batch_size=gen.batch_size,
            share_prefix=gen.share_prefix,
        ),
    )
    display(nb.table(check.table))
    print(check.summary)
