"""The adapter bundle: everything ASA needs at inference, as safetensors + JSON.

``adapter.safetensors`` (float64 unless noted)::

    scaler.mean, scaler.scale       (H,)    StandardScaler fitted on CAL at L*
    router.coef, router.intercept   (C, H), (C,)  multinomial logistic regression
                                            (1 row when the router has two classes; 0 rows
                                            for one domain: no router)
    probe.<domain>.coef             (H,)    binary probe of that domain
    probe.<domain>.intercept        (1,)
    vector.global, vector.<domain>  (H,)    float32 unit steering vectors (raw CAL states)
    behaviour.global, behaviour.<domain>  (H,)  float32 unit behaviour directions (``vector:
                                            behaviour``): the unsteered model's own calls on
                                            CAL, called minus not called (stage 04)
    block<l>.vector.<name>, block<l>.behaviour.<name>  (H,)  float32: the same two kinds of
                                            vectors from the CAL states at block l, for a config
                                            that steers at a block other than L* (``layer``)

``adapter.json`` records the layer L*, the hook point, the domains, which of
them have a probe and a vector, the model id, hidden size and block count the
bundle came from, which behaviour directions it carries (``behaviour_vectors``;
absent in bundles written before them: none), the CAL mean state norm (for relative alpha), library
versions, the steering blocks other than L* (``blocks``: per block its vectors, behaviour
directions and the mean CAL state norm there, a relative alpha's unit at that block; absent in
bundles written before them: L* only), the name, shape and dtype of every tensor, and ``sha256``: a hash of
``adapter.safetensors`` and of every other field of the JSON. The loader checks
each tensor against that list and then the hash, so a changed tensor or
field is refused (this detects edits; it is no signature). A bundle without
its hash is refused too, unless the caller says it accepts an unsigned one
(``load_bundle(..., allow_unsigned=True)``, ``ASA.load(..., allow_unsigned=True)``,
``asa generate --allow-unsigned``). No pickle anywhere:
the gate is recomputed in numpy from these arrays, without scikit-learn objects.

A run's bundle (stage 05) also records what its states were read from: the
prompt format's sha256 (``prompt_format_sha256``,
:func:`asa_lib.prompts.prompt_format_sha256`) and the tokenizer's
(``tokenizer_sha256``, :func:`asa_lib.model.load.tokenizer_digest`), and a
digest of every row of its run's splits (``run_rows``: split -> sorted
:func:`asa_lib.provenance.row_digest` of each row's text and tools). Bundles
written before them lack these fields: their format is not known (see
:meth:`Bundle.check_prompt_format`).

A run whose inputs changed after it wrote ``chosen_adapter/`` and that has not
written a new one yet marks the folder stale (``stale.json`` beside the bundle's
files, outside its sha256; :func:`mark_stale`): the adapter is still what it was
fitted as, and its own records still decide what it accepts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load_file, save_file

from asa_lib.files import (
    atomic_path,
    json_default,
    library_versions,
    loads_json,
    read_json,
    write_json,
)
from asa_lib.params import PromptParams
from asa_lib.prompts import Tools, request_key, tools_for
from asa_lib.provenance import Hasher, legacy_json, row_digest

if TYPE_CHECKING:  # no torch import for reading a bundle
    from asa_lib.model.load import ModelFacts

FORMAT = "asa-adapter/1"


HOOK_POINT = "output of model.model.layers[L*] (before the final norm), last prompt token"


class BundleError(ValueError):
    """A bundle that is malformed or does not fit the model it is loaded onto."""


@dataclass
class BlockVectors:
    """The steering vectors of one block other than L*, from the CAL states at that block."""

    vectors: dict[str, np.ndarray]  # "global" and domains -> unit label vector (H,)
    behaviour_vectors: dict[str, np.ndarray]  # unit behaviour directions ({}: none)
    cal_mean_norm: float  # mean |h| of the CAL states at that block (a relative alpha's unit)


@dataclass
class Bundle:
    layer: int
    domains: list[str]
    router_classes: list[str]  # domain of each router output, in order
    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    router_coef: np.ndarray
    router_intercept: np.ndarray
    probes: dict[str, tuple[np.ndarray, float]]  # domain -> (coef (H,), intercept)
    vectors: dict[str, np.ndarray]  # "global" and domains -> unit vector (H,)
    model_id: str
    hidden_size: int
    num_layers: int
    cal_mean_norm: float
    # sha256 of the model's parameter names, shapes and dtypes (models.weights_fingerprint)
    model_fingerprint: str = ""
    # sha256 of the model's weights, values included (models.weights_digest); "" in older bundles
    model_weights: str = ""
    # "global" and domains -> unit behaviour direction (H,), for ``vector: behaviour``; {} = none
    behaviour_vectors: dict[str, np.ndarray] = field(default_factory=dict)
    # what the states were read from: prompts.prompt_format_sha256 of the prompt format and
    # model.load.tokenizer_digest of the tokenizer; "" in older bundles (unknown)
    prompt_format_sha256: str = ""
    tokenizer_sha256: str = ""
    # split -> sorted provenance.row_digest of each row of the run's splits; {} in older bundles
    run_rows: dict[str, list[str]] = field(default_factory=dict)
    # block -> its vectors and unit, for configs that steer at a block other than L* ({}: none)
    blocks: dict[int, BlockVectors] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # the sha256 recorded in adapter.json (load_bundle); "" for a bundle not read from a folder
    sha256: str = ""
    # why the folder is marked stale (stale.json: its run's inputs changed since); "" if not
    stale: str = ""

    # ------------------------------------------------------------------ gate inputs
    def scale(self, h: np.ndarray) -> np.ndarray:
        return (np.asarray(h, dtype=np.float64) - self.scaler_mean) / self.scaler_scale

    @property
    def has_router(self) -> bool:
        """False for a bundle of one domain: no router, every prompt is that domain's."""
        return len(self.router_classes) > 1

    def router_proba(self, h: np.ndarray) -> np.ndarray:
        """(N, C) probabilities over ``router_classes`` (as sklearn's predict_proba; all 1 for one domain)."""
        if not self.has_router:
            return np.ones((len(np.asarray(h)), 1))
        z = self.scale(h) @ self.router_coef.T + self.router_intercept
        if self.router_coef.shape[0] == 1:  # binary: sigmoid of the single score
            p1 = _sigmoid(z[:, 0])
            return np.stack([1 - p1, p1], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def route(self, h: np.ndarray) -> list[str]:
        return [self.router_classes[i] for i in self.router_proba(h).argmax(axis=1)]

    def probe_proba(self, domain: str, h: np.ndarray) -> np.ndarray:
        """P(tool) from ``domain``'s probe; 0.5 where the domain has no probe (the seed's fallback)."""
        h = np.atleast_2d(h)
        if domain not in self.probes:
            return np.full(len(h), 0.5)
        coef, b = self.probes[domain]
        return _sigmoid(self.scale(h) @ coef + b)

    @property
    def steering_blocks(self) -> list[int]:
        """Every block this bundle can steer at: L* and :attr:`blocks`, sorted."""
        return sorted({self.layer, *self.blocks})

    def block(self, layer: int | None) -> BlockVectors:
        """The vectors and unit at ``layer`` (None: L*); BundleError for a block it lacks."""
        if layer is None or layer == self.layer:
            return BlockVectors(self.vectors, self.behaviour_vectors, self.cal_mean_norm)
        if layer not in self.blocks:
            raise BundleError(
                f"this adapter has no steering vectors at block {layer} (it has blocks "
                f"{self.steering_blocks}; L* = {self.layer}): rebuild it with a run whose stage "
                "04 saved the vectors at every block"
            )
        return self.blocks[layer]

    def mean_norm(self, layer: int | None = None) -> float:
        """The mean |h| of the CAL states at ``layer`` (None: L*): a relative alpha's unit there."""
        return self.block(layer).cal_mean_norm

    def steering_vector(
        self, domain: str, beta: float, kind: str = "mixture", layer: int | None = None
    ) -> np.ndarray:
        """The seed's mixture: normalize(beta * v_global + (1 - beta) * v_domain).

        ``kind="behaviour"``: the same mixture of the behaviour directions
        (:attr:`behaviour_vectors`); a domain without one falls back to the
        global behaviour direction, as a domain without a label vector does.
        ``layer``: the vectors of that block (None: L*; :meth:`block`).
        """
        blk = self.block(layer)
        vecs = blk.vectors
        if kind == "behaviour":
            if "global" not in blk.behaviour_vectors:
                raise BundleError(
                    "vector 'behaviour' needs the bundle's behaviour directions, and this bundle "
                    "has none (built before they existed, or the unsteered model called a tool "
                    "on all or none of the CAL prompts, so there is no call direction; see stage "
                    "04's diagnostics)"
                )
            vecs = blk.behaviour_vectors
        elif kind != "mixture":
            raise BundleError(f"unknown vector kind {kind!r} for a bundle's steering vector")
        v_d = vecs.get(domain)
        v_g = vecs.get("global")
        if v_d is None:
            return v_g
        v = beta * v_g + (1 - beta) * v_d if (v_g is not None and beta > 0) else v_d
        return (v / (np.linalg.norm(v) + 1e-8)).astype(np.float32)

    # ------------------------------------------------------------------ checks
    def check_facts(self, facts: ModelFacts, allow_mismatch: bool = False) -> None:
        """:meth:`check_model` on a model's facts (:meth:`asa_lib.model.load.LoadedModel.facts`)."""
        self.check_model(
            facts.hidden_size,
            facts.num_layers,
            facts.model_id,
            facts.fingerprint,
            allow_mismatch=allow_mismatch,
            weights=facts.weights,
        )

    def check_model(
        self,
        hidden_size: int,
        num_layers: int,
        model_id: str | None = None,
        fingerprint: str | None = None,
        allow_mismatch: bool = False,
        weights: str | None = None,
    ) -> None:
        """Refuse a model this bundle was not built on (the one check, for the sweep and the API).

        Shapes always have to fit: the hidden size, and block L* must exist.
        The model's identity has to match too, unless ``allow_mismatch``
        (``steering.allow_model_mismatch`` in params, ``allow_model_mismatch``
        in :meth:`asa_lib.api.ASA.load`): its id where one is given, its block
        count, the fingerprint of its weights' names, shapes and dtypes
        where both sides have one (bundles written before it was recorded
        have none), and the digest of its weights' values (``weights``,
        :func:`asa_lib.model.load.weights_digest`): another seed, checkpoint
        or adapter under the same id is refused. A bundle that records no
        weights digest (written before it was recorded) cannot tell them
        apart, and is refused too unless ``allow_mismatch``: rebuild it.
        """
        built_on = f"{self.model_id!r} (hidden size {self.hidden_size}, {self.num_layers} blocks)"
        override = (
            "set steering.allow_model_mismatch: true (in Python: ASA.load(..., "
            "allow_model_mismatch=True)) to use it anyway"
        )
        if hidden_size != self.hidden_size:
            raise BundleError(
                f"this adapter was built on {built_on}; the model has hidden size "
                f"{hidden_size}. Build the adapter on this model "
                "(run stages 02-05) instead."
            )
        if self.layer >= num_layers:
            raise BundleError(
                f"this adapter steers block {self.layer} of {self.model_id!r}, but the model has "
                f"only {num_layers} blocks. Build the adapter on this model instead."
            )
        if allow_mismatch:
            return
        if model_id is not None and model_id != self.model_id:
            raise BundleError(
                f"this adapter was built on {self.model_id!r}, not on {model_id!r}. Build it on "
                f"this model (stages 02-05), or {override}."
            )
        if num_layers != self.num_layers:
            raise BundleError(
                f"this adapter was built on {built_on}; the model has {num_layers} blocks. "
                f"Build it on this model (stages 02-05), or {override}."
            )
        if fingerprint and self.model_fingerprint and fingerprint != self.model_fingerprint:
            raise BundleError(
                f"this adapter was built on a model called {self.model_id!r} whose weights have "
                "other names, shapes or dtypes than this one's. Build it on this model, or "
                f"{override}."
            )
        if not self.model_weights:
            raise BundleError(
                f"this adapter, built on {self.model_id!r}, records no digest of its model's "
                "weights (written before adapters recorded one, or built without it), so it "
                "cannot tell this model from another with the same name and other weights. "
                f"Rebuild it on this model (stages 02-05), or {override}."
            )
        if weights != self.model_weights:
            raise BundleError(
                f"this adapter was built on a model called {self.model_id!r} with other weights "
                "than this one's (the same names and shapes, other values: another seed, "
                f"checkpoint, adapter or dtype). Build it on this model, or {override}."
            )

    def check_prompt_format(self, sha256: str) -> bool:
        """Refuse prompts of a format (its ``prompt_format_sha256``) this bundle was not fitted on.

        True when the bundle records its format and ``sha256`` is it; False when it
        records none (written before it did): the caller cannot tell, and says so.
        """
        if not self.prompt_format_sha256:
            return False
        if sha256 != self.prompt_format_sha256:
            stale = f" This adapter is stale: {self.stale}." if self.stale else ""
            raise BundleError(
                "this adapter was fitted on prompts in another format (prompt format sha256 "
                f"{self.prompt_format_sha256[:12]}) than the one given ({sha256[:12]}, the "
                "params' prompt section or prompt=): its probes read states of prompts in its "
                "own format. Use the params of the run that made it (the same prompt "
                f"section).{stale}"
            )
        return True

    def check_tokenizer(self, sha256: str, allow_mismatch: bool = False) -> None:
        """Refuse a tokenizer (its :func:`~asa_lib.model.load.tokenizer_digest`) other than the
        one the bundle's states were read with, where the bundle records one, unless
        ``allow_mismatch`` (as :meth:`check_model`)."""
        if allow_mismatch or not self.tokenizer_sha256 or sha256 == self.tokenizer_sha256:
            return
        raise BundleError(
            f"this adapter was built with another tokenizer than this model's (tokenizer "
            f"sha256 {self.tokenizer_sha256[:12]}, this one {sha256[:12]}): its prompts were "
            "tokenized otherwise. Build it on this model (stages 02-05), or set "
            "steering.allow_model_mismatch: true (in Python: ASA.load(..., "
            "allow_model_mismatch=True)) to use it anyway."
        )

    def run_overlap(self, digests: list[str]) -> dict[str, Any] | None:
        """How many of the rows (their :func:`row_digests`) are rows of the bundle's run.

        ``{"rows": rows in any split, "fitted_or_chosen": rows in CAL, TRAIN or VALID,
        "per_split": split -> rows in it}``; None for a bundle that records no rows.
        """
        if not self.run_rows:
            return None
        sets = {s: set(v) for s, v in self.run_rows.items()}
        per_split = {s: sum(d in v for d in digests) for s, v in sets.items()}
        known = set().union(*sets.values())
        fitted = set().union(*(v for s, v in sets.items() if s in FITTED_SPLITS))
        return {
            "rows": sum(d in known for d in digests),
            "fitted_or_chosen": sum(d in fitted for d in digests),
            "per_split": per_split,
        }


# The splits a bundle was fitted (CAL, TRAIN) or chosen (VALID: L*, the config) on.
FITTED_SPLITS = ("cal", "train", "valid")


def row_digests(pp: PromptParams, requests: list, tools: list[Tools | None]) -> list[str]:
    """Each request's :func:`~asa_lib.provenance.row_digest`: its text (or its conversation,
    :func:`~asa_lib.prompts.request_key`) and the tools its prompt lists (its own, else the
    prompt format's: :func:`~asa_lib.prompts.tools_for`)."""
    return [row_digest(request_key(t), tools_for(pp, k)) for t, k in zip(requests, tools)]


STALE_MARK = "stale.json"  # in an adapter folder: why its run has moved on since it was written


def mark_stale(folder: str | Path, reason: str) -> None:
    """Mark the adapter folder stale (``stale.json``), giving ``reason``; see :func:`stale_reason`."""
    write_json(Path(folder) / STALE_MARK, {"stale": True, "reason": reason})


def clear_stale(folder: str | Path) -> None:
    """Remove the stale mark of an adapter folder, if it has one."""
    (Path(folder) / STALE_MARK).unlink(missing_ok=True)


def stale_reason(folder: str | Path) -> str:
    """Why the adapter folder is marked stale; "" if it is not (an unreadable mark still counts)."""
    path = Path(folder) / STALE_MARK
    if not path.is_file():
        return ""
    try:
        mark = read_json(path)
    except (OSError, ValueError):
        mark = None
    reason = mark.get("reason") if isinstance(mark, dict) else None
    return reason if isinstance(reason, str) and reason else f"{path} marks it stale"


def _digest(tensors_file: Path, meta: dict[str, Any]) -> str:
    """sha256 of the tensor file's bytes and of every JSON field but ``sha256`` itself."""
    fields = {k: v for k, v in meta.items() if k != "sha256"}
    return Hasher().update_file(tensors_file).update(legacy_json(fields)).hexdigest()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _tensors(b: Bundle) -> dict[str, np.ndarray]:
    t = {
        "scaler.mean": b.scaler_mean,
        "scaler.scale": b.scaler_scale,
        "router.coef": b.router_coef,
        "router.intercept": b.router_intercept,
    }
    for d, (coef, icpt) in b.probes.items():
        t[f"probe.{d}.coef"] = coef
        t[f"probe.{d}.intercept"] = np.array([icpt], dtype=np.float64)
    for name, v in b.vectors.items():
        t[f"vector.{name}"] = v.astype(np.float32)
    for name, v in b.behaviour_vectors.items():
        t[f"behaviour.{name}"] = v.astype(np.float32)
    for layer in sorted(b.blocks):
        blk = b.blocks[layer]
        for name, v in blk.vectors.items():
            t[f"block{layer}.vector.{name}"] = v.astype(np.float32)
        for name, v in blk.behaviour_vectors.items():
            t[f"block{layer}.behaviour.{name}"] = v.astype(np.float32)
    return {k: np.ascontiguousarray(v) for k, v in t.items()}


def save_bundle(b: Bundle, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _tensors(b)
    with atomic_path(folder / "adapter.safetensors") as tmp:
        save_file(tensors, str(tmp))
    meta = {
        "format": FORMAT,
        "layer": b.layer,
        "hook_point": HOOK_POINT,
        "domains": b.domains,
        "router_classes": b.router_classes,
        "probes": sorted(b.probes),
        "vectors": list(b.vectors),
        "behaviour_vectors": list(b.behaviour_vectors),
        "model_id": b.model_id,
        "hidden_size": b.hidden_size,
        "num_layers": b.num_layers,
        "cal_mean_norm": b.cal_mean_norm,
        "model_fingerprint": b.model_fingerprint,
        "model_weights": b.model_weights,
        **({"prompt_format_sha256": b.prompt_format_sha256} if b.prompt_format_sha256 else {}),
        **({"tokenizer_sha256": b.tokenizer_sha256} if b.tokenizer_sha256 else {}),
        **({"run_rows": b.run_rows} if b.run_rows else {}),
        # absent where the bundle steers at L* only, so such a bundle's files are as before
        **({"blocks": _blocks_meta(b.blocks)} if b.blocks else {}),
        "versions": library_versions(),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()},
        **b.extra,
        **(extra or {}),
    }
    meta = json.loads(
        json.dumps(meta, default=json_default)
    )  # hash exactly what the JSON will hold
    meta["sha256"] = _digest(folder / "adapter.safetensors", meta)
    write_json(folder / "adapter.json", meta)
    return folder


def _blocks_meta(blocks: dict[int, BlockVectors]) -> dict[str, dict[str, Any]]:
    return {
        str(layer): {
            "vectors": list(blocks[layer].vectors),
            "behaviour_vectors": list(blocks[layer].behaviour_vectors),
            "cal_mean_norm": float(blocks[layer].cal_mean_norm),
        }
        for layer in sorted(blocks)
    }


MAX_MEAN_NORM = 1e6  # hidden-state norms of real models are far below this


UNIT_TOL = 1e-3


def _field(meta: dict, key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if key not in meta:
        raise BundleError(f"{where}: missing field {key!r}")
    v = meta[key]
    if isinstance(v, bool) or not isinstance(v, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BundleError(f"{where}: field {key!r} must be {names}, got {v!r}")
    return v


def _names(meta: dict, key: str, where: Path) -> list[str]:
    v = _field(meta, key, list, where)
    if not all(isinstance(x, str) and x for x in v) or len(set(v)) != len(v):
        raise BundleError(
            f"{where}: field {key!r} must be a list of distinct non-empty names, got {v!r}"
        )
    return v


def load_bundle(folder: str | Path, allow_unsigned: bool = False) -> Bundle:
    """Rebuild a bundle, validating every field it reads.

    Raises :class:`BundleError` naming the file and the field for: a missing
    file or key, a wrong type, ``layer`` outside ``[0, num_layers)``, a
    non-positive or non-finite (or absurd, > 1e6) ``cal_mean_norm``, tensors
    whose names, shapes or dtypes differ from the JSON, non-finite values, a
    zero ``scaler.scale``, steering vectors that are not unit length
    (within 1e-3), a ``sha256`` that does not match the files, and a missing
    ``sha256`` (an unsigned bundle), unless ``allow_unsigned``.
    """
    folder = Path(folder)
    jpath, tpath = folder / "adapter.json", folder / "adapter.safetensors"
    if not folder.is_dir():
        raise BundleError(f"{folder} is missing or not a folder: expected an adapter bundle folder")
    for p in (jpath, tpath):
        if not p.is_file():
            raise BundleError(f"{p} is missing: not an adapter bundle folder")
    try:
        meta = loads_json(jpath.read_text(encoding="utf-8"))
    except ValueError as e:  # not JSON, not UTF-8, or nested deeper than files.MAX_JSON_DEPTH
        raise BundleError(f"{jpath}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{jpath}: the top level must be an object")
    if meta.get("format") != FORMAT:
        raise BundleError(f"{jpath}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    H = _field(meta, "hidden_size", int, jpath)
    L = _field(meta, "num_layers", int, jpath)
    layer = _field(meta, "layer", int, jpath)
    if H <= 0 or L <= 0:
        raise BundleError(f"{jpath}: hidden_size and num_layers must be positive (got {H}, {L})")
    if not 0 <= layer < L:
        raise BundleError(f"{jpath}: field 'layer' is {layer}, outside [0, {L}) (num_layers = {L})")
    norm = _field(meta, "cal_mean_norm", (int, float), jpath)
    if not (np.isfinite(norm) and 0 < norm <= MAX_MEAN_NORM):
        raise BundleError(
            f"{jpath}: field 'cal_mean_norm' is {norm}; it must be finite and in (0, {MAX_MEAN_NORM:g}]"
        )
    model_id = _field(meta, "model_id", str, jpath)
    fingerprint = meta.get("model_fingerprint", "")
    if not isinstance(fingerprint, str):
        raise BundleError(f"{jpath}: field 'model_fingerprint' must be str, got {fingerprint!r}")
    weights = meta.get("model_weights", "")  # absent in bundles written before it was recorded
    if not isinstance(weights, str):
        raise BundleError(f"{jpath}: field 'model_weights' must be str, got {weights!r}")
    recorded = {}  # absent in bundles written before they were recorded: ""
    for key in ("prompt_format_sha256", "tokenizer_sha256"):
        recorded[key] = meta.get(key, "")
        if not isinstance(recorded[key], str):
            raise BundleError(f"{jpath}: field {key!r} must be str, got {recorded[key]!r}")
    run_rows = meta.get("run_rows", {})
    if not isinstance(run_rows, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in run_rows.values()
    ):
        raise BundleError(f"{jpath}: field 'run_rows' must map each split to a list of row digests")
    domains = _names(meta, "domains", jpath)
    router_classes = _names(meta, "router_classes", jpath)
    probes = _names(meta, "probes", jpath)
    vectors = _names(meta, "vectors", jpath)
    # absent in bundles written before behaviour directions existed: none
    behaviour = _names(meta, "behaviour_vectors", jpath) if "behaviour_vectors" in meta else []
    for key, names in (("router_classes", router_classes), ("probes", probes)):
        if not set(names) <= set(domains):
            raise BundleError(
                f"{jpath}: field {key!r} names {sorted(set(names) - set(domains))}, "
                "which are not in 'domains'"
            )
    if len(router_classes) < 1:
        raise BundleError(f"{jpath}: field 'router_classes' needs at least one class")
    for key, names in (("vectors", vectors), ("behaviour_vectors", behaviour)):
        if not set(names) <= set(domains) | {"global"}:
            raise BundleError(
                f"{jpath}: field {key!r} names unknown domains "
                f"{sorted(set(names) - set(domains) - {'global'})}"
            )
    blocks_meta = _field(meta, "blocks", dict, jpath) if "blocks" in meta else {}
    block_names: dict[int, tuple[list[str], list[str], float]] = {}
    for key, bm in blocks_meta.items():
        where = f"{jpath}: blocks[{key!r}]"
        if not (isinstance(key, str) and key.isdigit() and int(key) < L and int(key) != layer):
            raise BundleError(
                f"{where}: a block index in [0, {L}) other than L* ({layer}) is expected"
            )
        if not isinstance(bm, dict):
            raise BundleError(f"{where}: must be an object")
        bv = _names(bm, "vectors", jpath)
        bb = _names(bm, "behaviour_vectors", jpath)
        if not set(bv) | set(bb) <= set(domains) | {"global"}:
            raise BundleError(f"{where}: names unknown domains")
        bn = _field(bm, "cal_mean_norm", (int, float), jpath)
        if not (np.isfinite(bn) and 0 < bn <= MAX_MEAN_NORM):
            raise BundleError(
                f"{where}: 'cal_mean_norm' is {bn}; it must be finite and in (0, {MAX_MEAN_NORM:g}]"
            )
        block_names[int(key)] = (bv, bb, float(bn))
    spec = _field(meta, "tensors", dict, jpath)
    try:
        tensors = load_file(str(tpath))
    except Exception as e:  # noqa: BLE001 - safetensors raises several error types for a bad file
        raise BundleError(f"{tpath}: not a readable safetensors file ({e})") from None
    if set(spec) != set(tensors):
        raise BundleError(
            f"{tpath}: tensors {sorted(set(tensors) ^ set(spec))} do not match adapter.json"
        )
    C = len(router_classes)
    expected_shapes = {
        "scaler.mean": (H,),
        "scaler.scale": (H,),
        # one class: no router (zero rows); two: one row (binary); else one row per class
        "router.coef": ({1: 0, 2: 1}.get(C, C), H),
        "router.intercept": ({1: 0, 2: 1}.get(C, C),),
    }
    for d in probes:
        expected_shapes[f"probe.{d}.coef"] = (H,)
        expected_shapes[f"probe.{d}.intercept"] = (1,)
    for v in vectors:
        expected_shapes[f"vector.{v}"] = (H,)
    for v in behaviour:
        expected_shapes[f"behaviour.{v}"] = (H,)
    for bl, (bv, bb, _) in block_names.items():
        for v in bv:
            expected_shapes[f"block{bl}.vector.{v}"] = (H,)
        for v in bb:
            expected_shapes[f"block{bl}.behaviour.{v}"] = (H,)
    missing = sorted(set(expected_shapes) - set(tensors))
    if missing:
        raise BundleError(f"{tpath}: missing tensor {missing[0]}")
    for name, arr in tensors.items():
        s = spec[name]
        if (
            not isinstance(s, dict)
            or list(arr.shape) != s.get("shape")
            or str(arr.dtype) != s.get("dtype")
        ):
            raise BundleError(
                f"{tpath}: tensor {name} is {arr.dtype}{list(arr.shape)}, adapter.json says {s}"
            )
        if name not in expected_shapes or tuple(arr.shape) != expected_shapes[name]:
            raise BundleError(f"{tpath}: unexpected tensor {name} with shape {list(arr.shape)}")
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
            raise BundleError(f"{tpath}: tensor {name} must be finite floats")
        if (
            name.startswith(("vector.", "behaviour.", "block"))  # block<l>.*: unit vectors
            and abs(float(np.linalg.norm(arr.astype(np.float64))) - 1) > UNIT_TOL
        ):
            raise BundleError(
                f"{tpath}: tensor {name} must be a unit vector "
                f"(norm {float(np.linalg.norm(arr)):.6g})"
            )
    if np.any(tensors["scaler.scale"] <= 0):
        raise BundleError(
            f"{tpath}: tensor scaler.scale must be positive everywhere (a zero scale divides by 0)"
        )
    if "sha256" not in meta and not allow_unsigned:
        raise BundleError(
            f"{jpath}: no sha256: an unsigned bundle, whose edits cannot be detected; save it "
            "with save_bundle (as a run does), or load it with allow_unsigned=True "
            "(asa generate --allow-unsigned)"
        )
    if "sha256" in meta and meta["sha256"] != _digest(tpath, meta):
        raise BundleError(
            f"{folder}: the sha256 in adapter.json does not match the bundle's files "
            "(adapter.json or adapter.safetensors was changed after it was written)"
        )
    known = {
        "format",
        "layer",
        "hook_point",
        "domains",
        "router_classes",
        "probes",
        "vectors",
        "behaviour_vectors",
        "model_id",
        "hidden_size",
        "num_layers",
        "cal_mean_norm",
        "versions",
        "tensors",
        "model_fingerprint",
        "model_weights",
        "prompt_format_sha256",
        "tokenizer_sha256",
        "run_rows",
        "blocks",
        "sha256",
    }
    return Bundle(
        layer=layer,
        domains=domains,
        router_classes=router_classes,
        scaler_mean=tensors["scaler.mean"],
        scaler_scale=tensors["scaler.scale"],
        router_coef=tensors["router.coef"],
        router_intercept=tensors["router.intercept"],
        probes={
            d: (tensors[f"probe.{d}.coef"], float(tensors[f"probe.{d}.intercept"][0]))
            for d in probes
        },
        vectors={v: tensors[f"vector.{v}"] for v in vectors},
        model_id=model_id,
        hidden_size=H,
        num_layers=L,
        cal_mean_norm=float(norm),
        model_fingerprint=fingerprint,
        model_weights=weights,
        behaviour_vectors={v: tensors[f"behaviour.{v}"] for v in behaviour},
        prompt_format_sha256=recorded["prompt_format_sha256"],
        tokenizer_sha256=recorded["tokenizer_sha256"],
        run_rows=run_rows,
        blocks={
            bl: BlockVectors(
                {v: tensors[f"block{bl}.vector.{v}"] for v in bv},
                {v: tensors[f"block{bl}.behaviour.{v}"] for v in bb},
                bn,
            )
            for bl, (bv, bb, bn) in sorted(block_names.items())
        },
        extra={k: v for k, v in meta.items() if k not in known},
        sha256=str(meta.get("sha256", "")),
        stale=stale_reason(folder),
    )
