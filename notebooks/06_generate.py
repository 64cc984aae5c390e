# %% [markdown]
# # 06 · Every config's outputs, prompt-major (VALID and TEST)
#
# The baseline and every sweep config are generated together: each prompt is
# prefilled once (its positions 0 .. n-2), and every config then runs the
# last prompt position with its own steering delta at block L* and decodes,
# or verifies the baseline's output as its draft, from that shared state. The
# outputs go into the run's generation cache (`cache/generations.sqlite`);
# the per-config pages (`06_sweep__<config>`) score them.
#
# Writes `generation/generation.json`: what the pass did, and the check that
# the state at L* read on the way equals the extraction stage's.

# %% tags=["parameters"]
params_path = "params/tiny.yaml"
run_dir = "reports/tiny"
processes = 1  # > 1: data-parallel workers (torchrun), same results (`asa run --processes N`)

# %%
import pandas as pd

from asa_lib import nb
from asa_lib.run import generation

params, run = nb.open_stage("06_generate", params_path, run_dir)
res = generation.run(params, run, processes=processes)
rec = res.record
print(
    f"{len(rec['configs'])} configs ({', '.join(rec['configs'])}) at block L* = {rec['layer']}; "
    f"batch size {rec['settings']['batch_size']}, {rec['settings']['max_new_tokens']} new tokens, "
    f"shared prefix {'on' if rec['settings']['share_prefix'] else 'off'}, "
    f"drafts {'on' if rec['settings']['draft'] else 'off'}"
)
nb.table(
    pd.DataFrame(res.rows()),
    caption="Per split: the prompts, how many (prompt, config) rows, what was generated now "
    "(distinct rows; a row two configs share is generated once), and the pass's work",
)

# %% [markdown]
# The state at L* that the gates read comes from the extraction stage. The
# same state is read here, on each prompt's unsteered pass (a prefill of its
# first n-1 positions, then the last one): it must be the same, within float
# tolerance.


# %%
def sci(x):
    return "—" if x is None else f"{x:.1e}"


nb.table(
    pd.DataFrame(
        [
            {
                "split": s,
                "prompts compared": c["compared"],
                "max |h - h_extraction|": sci(c["max_abs_diff"]),
                "max relative difference": sci(c["max_rel_diff"]),
            }
            for s, c in ((s, r["state_at_layer"]) for s, r in rec["splits"].items())
        ]
    )
)
