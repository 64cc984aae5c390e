"""Data-parallel extraction and generation: torchrun workers with Accelerate's process state.

Papermill stays the orchestrator: stage 02 (and each stage 06 config) is still
one executed notebook. With ``processes > 1`` the notebook's process
launches ``processes`` workers (``python -m torch.distributed.run --standalone
--nproc_per_node N -m asa_lib.run.worker <task> <spec.json>``), waits for them
and merges their results in order:

- **extraction**: the batches (longest prompts first) are dealt out round
  robin; each worker writes its rows at their own offsets into the one
  safetensors file the coordinator created (disjoint byte ranges), which is
  renamed into place once every worker has succeeded;
- **generation**: the rows to generate are cut into chunks of
  ``CHUNK_BATCHES`` batches, dealt out round robin; workers write their
  outputs into the run's generation cache (SQLite in WAL mode: concurrent
  writers wait for each other's transactions) and their counts to a JSON file;
  the coordinator then reads every output from the cache, in prompt order.

Each batch a worker runs is a batch one process would have run (same rows,
same padding), so the results are the one-process results bit for bit
(``tests/test_parallel.py`` checks it with two CPU processes) up to one thing:
each worker takes ``cores / processes`` CPU threads (or on GPUs the GPU of its
local rank), and CPU attention with one query per head group (decoding) sums in
an order that depends on the thread count. On the BFCL demo that changed one
generated text of 3,648 at a near-tie, no decision, score or state
(docs/speed.md).

Accelerate: ``PartialState(cpu=True)`` gives each worker its rank and the
world size over gloo (without ``cpu=True`` it reports one process under
torchrun on a CPU-only machine), on CPUs and GPUs alike; the workers never
exchange tensors, they only wait for each other (a gloo barrier): in
generation, after reading the cache and before writing to it, so that they all
deal out the same rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from asa_lib.run.lifeline import LAUNCHER_ENV, wrap

TASKS = ("extract", "generate")


class ParallelError(RuntimeError):
    """A data-parallel worker failed; the message names the log with its output."""


def check_processes(processes: Any, device: str | None = None) -> int:
    """``processes`` as a positive int, or a ValueError naming the value.

    With ``device`` (``model.device``): also at most :func:`max_processes`, the
    ValueError naming that limit.
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a whole number >= 1, got {processes!r}")
    if device is not None and processes > 1:
        limit, what = max_processes(device)
        if processes > limit:
            raise ValueError(
                f"processes {processes} is more than the {limit} {what}: use at most {limit}"
            )
    return processes


def usable_cores() -> int:
    """The CPU cores this process may run on (``os.sched_getaffinity``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _visible_gpus(device: str) -> int:
    """The GPUs a run on ``model.device`` uses (``cuda``, or ``auto`` with a GPU visible); 0 on CPU."""
    if device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    return 0


def max_processes(device: str) -> tuple[int, str]:
    """The most workers a run may start on ``model.device``, and what sets that limit.

    On CUDA (``cuda``, or ``auto`` with a GPU visible) one worker per visible GPU;
    otherwise one per usable CPU core (each worker holds a whole model: more
    workers than that only multiply the memory).
    """
    n = _visible_gpus(device)
    if n:
        return n, f"GPU{'' if n == 1 else 's'} visible (one worker per GPU)"
    n = usable_cores()
    return n, f"CPU core{'' if n == 1 else 's'} this process may use (os.sched_getaffinity)"


# ``processes: auto`` on CPUs: two workers where two cores may be used. Measured on 2 cores
# (make demo: 32 against 38 minutes with one process, docs/speed.md); more workers on more
# cores were not measured, and each holds a whole model.
AUTO_CPU_PROCESSES = 2


def auto_processes(device: str) -> tuple[int, str]:
    """What ``processes: auto`` starts on ``model.device``, and why: one worker per visible
    GPU on CUDA; on CPUs :data:`AUTO_CPU_PROCESSES`, or fewer where fewer cores may be used."""
    n = _visible_gpus(device)
    if n:
        return n, f"one per visible GPU ({n})"
    cores = usable_cores()
    n = min(AUTO_CPU_PROCESSES, cores)
    return n, f"{cores} CPU core{'' if cores == 1 else 's'} may be used: {n} worker" + (
        "" if n == 1 else "s"
    )


def worker_threads(world: int) -> int:
    """CPU threads per worker: the cores this process may use, shared out (at least 1)."""
    return max(1, usable_cores() // world)


def launch(task: str, spec: dict[str, Any], processes: int, work_dir: str | Path) -> list[dict]:
    """Run ``processes`` workers on ``spec`` and return each rank's result (rank order).

    ``work_dir`` gets the spec, one result file per rank and the workers' log
    (``worker.log``); a failure raises :class:`ParallelError` with the log's
    last lines.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; one of {TASKS}")
    processes = check_processes(
        processes, (spec.get("params") or {}).get("model", {}).get("device")
    )
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    for old in [*work.glob("result.rank*.json"), *work.glob("error.rank*.txt")]:
        old.unlink()
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    log = work / "worker.log"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        "-m",
        "asa_lib.run.worker",
        task,
        str(spec_path),
    ]
    # torchrun dies with this process, and its workers with torchrun (asa_lib.run.lifeline)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", LAUNCHER_ENV: str(os.getpid())}
    t0 = time.time()
    with open(log, "w", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(
            wrap(cmd), stdout=f, stderr=subprocess.STDOUT, env=env, check=False
        ).returncode
    if rc != 0:
        errors = [
            f"worker {p.name[len('error.rank') : -len('.txt')]}: {p.read_text(encoding='utf-8')}"
            for p in sorted(work.glob("error.rank*.txt"))
        ]
        if not errors:  # died without a Python error (killed, out of memory): torchrun's lines
            errors = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise ParallelError(
            f"{processes} {task} workers failed (exit {rc}) after {time.time() - t0:.0f} s; "
            f"their output is in {log}:\n" + "\n".join(errors)
        )
    results = []
    for r in range(processes):
        path = work / f"result.rank{r}.json"
        if not path.is_file():
            raise ParallelError(f"worker {r} of {processes} ended without a result ({path})")
        results.append(json.loads(path.read_text(encoding="utf-8")))
    return results


def barrier() -> None:
    """Wait for every worker.

    Not ``PartialState.wait_for_everyone``: it passes ``device_ids=[local rank]``
    to the barrier, which fails on a machine with fewer GPUs than workers (seen
    with 2 workers on one H200); the gloo barrier needs no device.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
