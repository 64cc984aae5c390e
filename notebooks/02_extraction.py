# %% [markdown]
# # 02 · Hidden-state extraction
#
# For every split, the **output of every decoder block `l` (before the final
# norm) at the last prompt token** — the last token of the chat template's
# generation prompt. Batched with left padding, an attention mask and
# mask-derived position ids; batches sorted by length.
#
# Writes `states/<split>.safetensors` (tensor `states`, float32,
# (samples, layers, hidden)) and `states/<split>.json` (ids, labels, domains in
# row order), streamed to disk batch by batch.

# %% tags=["parameters"]
params_path = "params/tiny.yaml"
run_dir = "reports/tiny"
processes = 1  # > 1: data-parallel workers (torchrun), same results (`asa run --processes N`)

# %%
import numpy as np
import pandas as pd

from asa_lib import data, nb
from asa_lib.engine import extract
from asa_lib.model.load import load_params_model
from asa_lib.run import extraction

params, run = nb.open_stage("02_extraction", params_path, run_dir)
lm = load_params_model(params)
print(
    f"{lm.model_id}: {lm.num_layers} blocks, hidden {lm.hidden_size}, {params.model.dtype} on {lm.device}"
)

# %%
nb.table(pd.DataFrame(extraction.run(params, run, lm=lm, processes=processes).rows))

# %% [markdown]
# An example prompt as the model sees it (the first CAL prompt):

# %%
print(data.render_samples(lm.tokenizer, params.prompt, data.read_splits(run)["cal"][:1], run)[0])

# %% [markdown]
# ## Mean state norm per layer (CAL)
#
# Models differ in hidden-state scale by orders of magnitude; this is why
# `steering.alpha_unit: relative` exists.

# %%
import matplotlib.pyplot as plt

cal = extract.load_states(run, "cal")
norms = np.linalg.norm(cal, axis=-1).mean(axis=0)
fig, ax = plt.subplots(figsize=(8, 3))
ax.plot(range(len(norms)), norms, marker="o")
ax.set_xlabel("decoder block")
ax.set_ylabel("mean L2 norm")
ax.set_title("Last-token state norm per block (CAL)")
nb.show(fig)
