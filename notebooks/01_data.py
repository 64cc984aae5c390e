# %% [markdown]
# # 01 · Data: Alpaca prompts → domains, labels, CAL / TRAIN / VALID / TEST
#
# Faithful to the seed notebook: four keyword domains (math, code, search,
# translation, first match wins), the seed's labelling rule, per-bucket
# shuffles with the seed, CAL/TRAIN/VALID/TEST slices (TEST ×
# `test_multiplier`), final shuffles. Rows with missing or non-string fields
# are skipped and counted; buckets that cannot fill a split are shown below.
#
# Writes `data/splits.jsonl` and `data/summary.json` into the run folder.

# %% tags=["parameters"]
params_path = "params/tiny.yaml"
run_dir = "reports/tiny"

# %%
import warnings

import pandas as pd

from asa_lib import data, nb, plots

params, run = nb.open_stage(params_path, run_dir)
print(f"source: {params.data.source}  per split per class: {params.data.per_split_per_class}  "
      f"test x{params.data.test_multiplier}  seed: {params.data.seed}")

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = data.make_splits_from_params(params)
for w in caught:
    print("WARNING:", w.message)
data.write_splits(run, result)
print(f"rows read: {result.rows_read}; skipped: {result.skipped or 'none'}")

# %% [markdown]
# ## Rows available per domain and label

# %%
pd.DataFrame(result.bucket_sizes).T

# %% [markdown]
# ## Shortfalls: buckets that could not fill a split

# %%
shortfalls = pd.DataFrame(result.shortfalls, columns=["domain", "label", "split", "needed", "got", "available"])
shortfalls if len(shortfalls) else "none: every bucket filled every split"

# %% [markdown]
# ## Samples per split × domain × label

# %%
counts = pd.DataFrame(result.counts())
counts.pivot_table(index=["split"], columns=["domain", "label"], values="n", sort=False)

# %%
nb.show(plots.split_counts(counts))
