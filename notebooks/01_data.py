# %% [markdown]
# # 01 · Data: prompts → domains, labels, CAL / TRAIN / VALID / TEST
#
# Reads the rows, gives them domains and labels the way this run's `data.kind`
# says (printed below), and splits them into CAL/TRAIN/VALID/TEST. Unusable rows
# are skipped and counted; buckets that cannot fill a split are shown below.
#
# Writes `data/splits.jsonl` and `data/summary.json` into the run folder.

# %% tags=["parameters"]
params_path = "params/tiny.yaml"
run_dir = "reports/tiny"

# %%
import pandas as pd

from asa_lib import nb
from asa_lib.layout import shown_path
from asa_lib.report import plots
from asa_lib.run import data as stage

params, run = nb.open_stage("01_data", params_path, run_dir)
print(stage.KIND_INTRO[params.data.kind])
print(
    f"kind: {params.data.kind}  source: {shown_path(params.data.source)}  per split per class: "
    f"{params.data.per_split_per_class}  test x{params.data.test_multiplier}  seed: {params.data.seed}"
)
if params.data.kind == "labelled":
    print("columns:", {k: v for k, v in vars(params.data.columns).items() if v})
else:
    print("keyword domains (first match wins):")
    for name, keywords in params.data.keyword_domains().items():
        print(f"  {name}: {', '.join(keywords)}")

# %%
made = stage.run(params, run)  # builds the splits, writes data/
result = made.splits
for w in made.warnings:
    print("WARNING:", w)
print(f"rows read: {result.rows_read}; skipped: {result.skipped or 'none'}")
print(f"domains: {', '.join(result.domains)}")
if len(result.domains) == 1:
    print("one domain: there is no router; every prompt uses its probe and steering vector")
used = sorted({x.tools for xs in result.samples.values() for x in xs if x.tools})
if used:
    n_own = sum(x.tools is not None for xs in result.samples.values() for x in xs)
    print(
        f"tools: {n_own} prompts bring their own ({len(used)} distinct tool sets, "
        f"data/tools.json); the others use prompt.tools"
    )
else:
    print(f"tools: every prompt uses prompt.tools ({len(params.prompt.tools)} tools)")
if result.kind == "labelled":
    print(
        f"splits: {'as given in column ' + repr(result.split_column) if result.split_column else 'the seed protocol'}"
    )

# %% [markdown]
# ## Skipped rows: where and why (the first few of each reason)

# %%
skipped = pd.DataFrame(
    result.skipped_examples, columns=["reason", "where", "field", "column", "value"]
)
if len(skipped):
    display(nb.table(skipped))
else:
    print("none listed" + (f" (counts: {result.skipped})" if result.skipped else ""))

# %% [markdown]
# ## Rows available per domain and label

# %%
nb.table(pd.DataFrame(result.bucket_sizes).T.rename_axis("domain"), index=True)

# %% [markdown]
# ## Shortfalls: buckets that could not fill a split

# %%
shortfalls = pd.DataFrame(
    result.shortfalls, columns=["domain", "label", "split", "needed", "got", "available"]
)
if len(shortfalls):
    display(nb.table(shortfalls))
else:
    print("none: every bucket filled every split")

# %% [markdown]
# ## Samples per split × domain × label

# %%
counts = pd.DataFrame(result.counts())
per_split = counts.pivot_table(index=["split"], columns=["domain", "label"], values="n", sort=False)
nb.table(per_split, index=True, counts=list(per_split.columns))

# %%
nb.show(plots.split_counts(counts))
