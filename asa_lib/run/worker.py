"""A data-parallel worker's entry point, run by torchrun: ``python -m asa_lib.run.worker TASK SPEC``.

It knows the stages' shard functions (extraction, generation); the launcher
(:mod:`asa_lib.run.parallel`) knows only this module's name.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from asa_lib.model.load import RANK_ENV
from asa_lib.run.lifeline import LAUNCHER_ENV, die_with_grandparent
from asa_lib.run.parallel import TASKS, barrier, worker_threads


def _worker(task: str, spec_path: str) -> None:
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=True)  # rank and world over gloo, CPU-only machines included
    rank, world = state.process_index, state.num_processes
    os.environ[RANK_ENV] = f"{state.local_process_index}/{state.num_processes}"
    torch.set_num_threads(worker_threads(state.num_processes))
    if rank != 0:  # one progress line for the console: rank 0's
        os.environ.pop("ASA_PROGRESS_FILE", None)
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    if task == "extract":
        from asa_lib.run.extraction import extract_shard

        result = extract_shard(spec, (rank, world))
    else:
        from asa_lib.run.generation import generate_shard

        result = generate_shard(spec, (rank, world), barrier)
    out = Path(spec_path).parent / f"result.rank{rank}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, out)
    barrier()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if LAUNCHER_ENV in os.environ:  # started by launch(): end with torchrun, whatever kills it
        die_with_grandparent(int(os.environ[LAUNCHER_ENV]))
    if len(argv) != 2 or argv[0] not in TASKS:
        print(
            f"usage: torchrun ... -m asa_lib.run.worker {{{'|'.join(TASKS)}}} SPEC.json",
            file=sys.stderr,
        )
        return 2
    import traceback
    import warnings

    warnings.filterwarnings("ignore", message=".*causal_conv1d.*")
    try:
        _worker(*argv)
    except BaseException as e:  # the coordinator reports each worker's error in one line
        traceback.print_exc()
        rank = os.environ.get("RANK", "0")
        msg = traceback.format_exception_only(type(e), e)[-1].strip()
        (Path(argv[1]).parent / f"error.rank{rank}.txt").write_text(msg, encoding="utf-8")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
