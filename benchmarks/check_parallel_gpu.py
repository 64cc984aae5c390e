"""Data-parallel generation on GPUs: two torchrun workers against one process, on the tiny LFM2.

    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/check_parallel_gpu.py

Each worker takes the GPU of its local rank (``asa_lib.model.load.resolve_device``;
with one GPU both share it) and generates its chunks of rows
(``generate_all(shard=...)``) into one SQLite generation cache, with Accelerate's
barrier between reading the cache and writing to it, as ``asa run --processes N``
does. Rank 0 then reads every output from the cache and compares them with
one process generating everything alone (no cache), steered and unsteered.
Prints one line per check and exits 1 on a difference. Needs no papermill.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> int:
    import numpy as np
    import torch
    from accelerate import PartialState

    from asa_lib.engine.cache import GenerationCache
    from asa_lib.engine.generate import GenerationSettings, GenerationStats, generate_all
    from asa_lib.model.load import RANK_ENV, load_model
    from asa_lib.params import ModelParams, load_params
    from asa_lib.prompts import render_prompts
    from asa_lib.run.parallel import barrier

    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    os.environ[RANK_ENV] = f"{state.local_process_index}/{world}"
    lm = load_model(ModelParams(kind="tiny", dtype="float32", device="auto"), seed=0)
    pp = load_params(ROOT / "params" / "tiny.yaml").prompt
    words = "add the numbers search news write code translate poem why how what".split()
    g = np.random.default_rng(0)
    texts = [" ".join(g.choice(words, size=g.integers(2, 30))) for _ in range(96)]
    prompts = render_prompts(lm.tokenizer, pp, texts)
    deltas = (g.standard_normal((len(prompts), lm.hidden_size)) * 30).astype(np.float32)
    deltas[::4] = 0
    folder = Path(os.environ.get("ASA_CHECK_DIR", tempfile.gettempdir())) / "asa-parallel-check"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "gen.sqlite").unlink(missing_ok=True)
    barrier()
    cache = GenerationCache(folder / "gen.sqlite", {"check": "parallel"})
    ok = True
    for name, d in (("unsteered", None), ("steered", deltas)):
        stats = GenerationStats()
        barrier()
        _, n = generate_all(lm, prompts, GenerationSettings(max_new_tokens=8, batch_size=4, markers=pp), d, layer=1, cache=cache, stats=stats, shard=(rank, world), sync=barrier)  # fmt: skip
        print(f"rank {rank}/{world} on {lm.device}: {name}, generated {n}", flush=True)
        barrier()
        if rank == 0:
            merged, left = generate_all(
                lm,
                prompts,
                GenerationSettings(max_new_tokens=8, batch_size=4, markers=pp),
                d,
                layer=1,
                cache=cache,
            )
            alone, _ = generate_all(
                lm,
                prompts,
                GenerationSettings(max_new_tokens=8, batch_size=4, markers=pp),
                d,
                layer=1,
            )
            same = sum(a == b for a, b in zip(merged, alone))
            print(
                f"{name}: {same}/{len(prompts)} outputs equal to one process; "
                f"{left} left for rank 0 after the workers",
                flush=True,
            )
            ok &= same == len(prompts) and left == 0
    cache.close()
    barrier()
    if rank == 0:
        print(f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
        print("ALL EQUAL" if ok else "DIFFERENT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
