"""The gate policy: which prompts are steered, in which direction, along which vector, how far.

For each prompt, from its state at L* (the state stage 02 stored), with one
:class:`~asa_lib.params.SweepConfig`:

- ``gate: probe`` (ASA): routed domain d = argmax router; p = P(tool) from d's
  probe; gate = +1 if p >= tau, -1 if p <= 1 - tau, else 0. No probe, no
  steering: where d has no probe, p = 0.5 is recorded and the gate is 0.
- ``gate: oracle`` (ablation): as ``probe``, with the router replaced by the
  prompt's true domain.
- ``gate: always`` (ablation, the paper's "no gate"): every prompt gets +1.
- ``gate: none``: nothing is steered (the baseline).

The vector (``vector: mixture``, the seed's rule) is
``normalize(beta * v_global + (1 - beta) * v_d)``, ``v_global`` where d has no
vector; ``beta: 1`` is global only and ``beta: 0`` domain only. ``vector:
random`` (ablation) is one random unit vector (the steering vectors are unit
too, so it is norm-matched) drawn from ``config.seed``. ``vector: behaviour``
(a documented variant beyond the paper) is the same mixture of the bundle's
*behaviour* directions (``Bundle.behaviour_vectors``: the unit mean difference
of the CAL states at L* between prompts the unsteered model called a tool on and
those it did not, global and per domain, :mod:`asa_lib.method.diagnostics`); a
domain without one falls back to the global behaviour direction. The gate is
unchanged: the label probe says *when* to push, the model's calls *which way*.

``delta = gate * alpha_eff * v`` is what :mod:`asa_lib.engine.generate` adds to the
output of the steering block (L*, or the config's own ``layer``) at the last prompt
position on the prefill pass. The gate always reads the probe at L*; at another block
the vectors are that block's (from its CAL states, ``Bundle.blocks``) and a relative
alpha is in that block's unit (the mean |h| of its CAL states).
Adding a gate mode or a vector kind is a change to this module and to the
schema in :mod:`asa_lib.params` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asa_lib.method.bundle import Bundle
from asa_lib.params import MAX_RELATIVE_ALPHA, ParamsError, SweepConfig


@dataclass
class Gates:
    routed: list[str]
    p_tool: np.ndarray  # (N,)
    gate: np.ndarray  # (N,) in {-1, 0, 1}
    has_probe: np.ndarray | None = None  # (N,) bool: the routed domain has a probe


def compute_gates(
    bundle: Bundle,
    h: np.ndarray,
    config: SweepConfig | float,
    true_domains: list[str] | None = None,
) -> Gates:
    """Gate decisions for (N, H) states at L* under ``config`` (``true_domains`` for ``oracle``).

    A plain number is the ASA gate (``gate: probe``) with that tau.
    """
    if not isinstance(config, SweepConfig):
        config = SweepConfig("probe", tau=float(config))
    if config.gate == "oracle":
        if true_domains is None or len(true_domains) != len(h):
            raise ValueError("gate 'oracle' needs the true domain of every prompt")
        routed = list(true_domains)
    else:
        routed = bundle.route(h)
    p = np.array([float(bundle.probe_proba(d, row[None])[0]) for d, row in zip(routed, h)])
    has_probe = np.array([d in bundle.probes for d in routed], dtype=bool)
    if config.gate == "always":
        gate = np.ones(len(h), dtype=np.int64)
    elif config.gate == "none":
        gate = np.zeros(len(h), dtype=np.int64)
    else:  # probe, oracle
        tau = config.tau
        gate = np.where(p >= tau, 1, np.where(p <= 1 - tau, -1, 0)).astype(np.int64)
        gate[~has_probe] = 0
    return Gates(routed, p, gate, has_probe)


def alpha_effective(alpha: float, unit: str, bundle: Bundle, layer: int | None = None) -> float:
    """alpha in the seed's absolute unit, or relative to the mean CAL state norm at the steering
    block ``layer`` (None: L*).

    Checked against alpha's upper bound for this bundle and block (:func:`check_alpha_eff`).
    """
    eff = float(alpha) * (bundle.mean_norm(layer) if unit == "relative" else 1.0)
    check_alpha_eff(eff, bundle, f"alpha {float(alpha):g} ({unit}; alpha_eff {eff:.4g})", layer)
    return eff


def check_alpha_eff(
    alpha_eff: float, bundle: Bundle, what: str | None = None, layer: int | None = None
) -> None:
    """ParamsError unless ``alpha_eff`` <= MAX_RELATIVE_ALPHA x the bundle's mean CAL state norm
    at the steering block ``layer`` (None: L*)."""
    norm = bundle.mean_norm(layer)
    at = "L*" if layer is None or layer == bundle.layer else f"block {layer}"
    bound = MAX_RELATIVE_ALPHA * norm
    if alpha_eff > bound * (1 + 1e-9):
        raise ParamsError(
            f"{what or f'alpha_eff {alpha_eff:.4g}'} is above the upper bound: alpha_eff at most "
            f"{MAX_RELATIVE_ALPHA:g} x the mean state norm at {at} ({norm:.4g}), {bound:.4g}"
        )


def random_unit_vector(hidden_size: int, seed: int) -> np.ndarray:
    """The ``vector: random`` ablation's direction: a unit vector from ``seed``."""
    v = np.random.default_rng(seed).standard_normal(hidden_size)
    return (v / np.linalg.norm(v)).astype(np.float32)


def steering_deltas(
    bundle: Bundle,
    gates: Gates,
    alpha_eff: float,
    config: SweepConfig | float,
    layer: int | None = None,
) -> np.ndarray:
    """(N, H) float32: gate * alpha_eff * v per prompt (zero rows where gate == 0).

    A plain number is the seed's mixture vector with that beta. ``layer``: the steering
    block whose vectors are used (None: L*; a block the bundle lacks raises
    :class:`~asa_lib.method.bundle.BundleError`). ``vector: behaviour`` on a bundle without
    behaviour directions raises :class:`~asa_lib.method.bundle.BundleError`, whether or not a
    gate fires. ``vector: random`` is the same unit vector at every block.
    """
    if not isinstance(config, SweepConfig):
        config = SweepConfig("mixture", tau=0.5, beta=float(config))
    out = np.zeros((len(gates.gate), bundle.hidden_size), dtype=np.float32)
    bundle.block(layer)  # refuses a block the bundle has no vectors for
    if config.vector == "behaviour":
        bundle.steering_vector(
            "global", config.beta, "behaviour", layer
        )  # refuses a bundle without
    rand = (
        random_unit_vector(bundle.hidden_size, config.seed) if config.vector == "random" else None
    )
    for i, (d, g) in enumerate(zip(gates.routed, gates.gate)):
        if g != 0 and alpha_eff != 0:
            v = (
                rand
                if rand is not None
                else bundle.steering_vector(
                    d,
                    config.beta,
                    "behaviour" if config.vector == "behaviour" else "mixture",
                    layer,
                )
            )
            out[i] = np.float32(g * alpha_eff) * v
    return out
