"""The one helper the demo's synthetic data sets share: draw template-filled texts that are new.

The demo model's training requests (:mod:`asa_lib.demo.synthetic`) and the
labelled example (:mod:`asa_lib.demo.example_data`) keep their own templates
and word lists (a test checks that they share no request); both draw with
:func:`draw_new`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
TRIES = 1000


def draw_new(make: Callable[[], T], seen: set[str], what: str, text=lambda x: x) -> T:
    """Call ``make()`` until its text (``text(item)``) is not in ``seen``; add it and return the item.

    Raises ``RuntimeError`` naming ``what`` after :data:`TRIES` draws without a new text.
    """
    for _ in range(TRIES):
        item = make()
        t = text(item)
        if t not in seen:
            seen.add(t)
            return item
    raise RuntimeError(f"the {what} templates ran out of distinct requests")
