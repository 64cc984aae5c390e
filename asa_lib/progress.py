"""Progress of long loops (extraction, generation), visible from outside the notebook kernel.

Inside a papermill kernel a tqdm bar is invisible to the person at the
console. :func:`progress` is a tqdm bar that, when the runner has set
``ASA_PROGRESS_FILE``, also writes ``{"desc", "done", "total", "rate", "eta"}``
to that file after every update; the runner polls it and prints a line with
rows done, rate and ETA while the stage runs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

ENV = "ASA_PROGRESS_FILE"


class _Reporter:
    def __init__(self, bar: tqdm, path: str | None, desc: str, total: int):
        self.bar, self.path, self.desc, self.total = bar, path, desc, total
        self.done, self.t0 = 0, time.time()

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        if not self.path:
            return
        dt = max(time.time() - self.t0, 1e-9)
        rate = self.done / dt
        state = {
            "desc": self.desc,
            "done": self.done,
            "total": self.total,
            "rate": rate,
            "eta": (self.total - self.done) / rate if rate > 0 else None,
        }
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(state, f)
            os.replace(tmp, self.path)
        except OSError:  # progress is best effort; never fail the work over it
            pass


@contextmanager
def progress(total: int, desc: str) -> Iterator[_Reporter]:
    """A tqdm bar over ``total`` rows that also reports to ``$ASA_PROGRESS_FILE`` if set."""
    with tqdm(total=total, desc=desc) as bar:
        yield _Reporter(bar, os.environ.get(ENV), desc, total)


def describe(state: dict) -> str:
    """One console line for a progress state."""
    eta = state.get("eta")
    eta_s = f", ETA {eta:.0f} s" if eta is not None else ""
    return (
        f"{state['desc']}: {state['done']}/{state['total']} rows, {state['rate']:.2f} rows/s{eta_s}"
    )
