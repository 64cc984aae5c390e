"""One prompt's result: the row, the gate's decision, the output and its score.

The sweep writes one :class:`PromptRecord` per prompt into ``sweep/<config>.json``
(as a JSON object with these keys, in this order), ``asa generate --json``
prints a subset of its fields, and the tests build records with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from asa_lib.tools import Score


@dataclass(frozen=True)
class PromptRecord:
    # the row (None for a prompt that is no row of the run's splits: ``asa generate``)
    id: str | None
    split: str | None
    domain: str | None
    label: int | None
    # the row's own tools: its tool-set id (data/tools.json); None: the prompt format's tools
    tools: str | None
    # the gate's decision
    routed: str  # the router's domain
    has_probe: bool  # that domain has a probe (else p_tool = 0.5 and gate 0)
    p_tool: float
    gate: int  # +1 push, -1 suppress, 0 leave alone
    # the output and its score (asa_lib.tools.score_output)
    output: str
    triggered: bool
    format_valid: bool
    valid: bool
    complete: bool = False  # the call was closed by its end marker (not cut at max_new_tokens)

    @classmethod
    def scored(cls, score: Score, **fields: Any) -> PromptRecord:
        """A record from the row's and the decision's ``fields`` and the output's ``score``."""
        return cls(**fields, **asdict(score))

    def to_dict(self, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The record as JSON writes it: every field in order, or only ``keys`` (in their order)."""
        d = asdict(self)
        return d if keys is None else {k: d[k] for k in keys}
