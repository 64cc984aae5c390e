"""The adapter bundle: everything ASA needs at inference, as safetensors + JSON.

``adapter.safetensors`` (float64 unless noted)::

    scaler.mean, scaler.scale       (H,)    StandardScaler fitted on CAL at L*
    router.coef, router.intercept   (C, H), (C,)  multinomial logistic regression
                                            (C = 1 row when the router has two classes)
    probe.<domain>.coef             (H,)    binary probe of that domain
    probe.<domain>.intercept        (1,)
    vector.global, vector.<domain>  (H,)    float32 unit steering vectors (raw CAL states)

``adapter.json`` records the layer L*, the hook point, the domains, which of
them have a probe and a vector, the model id, hidden size and block count the
bundle came from, the CAL mean state norm (for relative alpha), library
versions, the name, shape and dtype of every tensor, and ``sha256``: a hash of
``adapter.safetensors`` and of every other field of the JSON. The loader checks
each tensor against that list and then the hash (where the JSON has one:
bundles written before it was added load without), so a changed tensor or
field is refused (this detects edits; it is no signature). No pickle anywhere:
the gate is recomputed in numpy from these arrays, without scikit-learn objects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from .artifacts import _json_default, atomic_path, library_versions, write_json

FORMAT = "asa-adapter/1"
HOOK_POINT = "output of model.model.layers[L*] (before the final norm), last prompt token"


class BundleError(ValueError):
    """A bundle that is malformed or does not fit the model it is loaded onto."""


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
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ gate inputs
    def scale(self, h: np.ndarray) -> np.ndarray:
        return (np.asarray(h, dtype=np.float64) - self.scaler_mean) / self.scaler_scale

    def router_proba(self, h: np.ndarray) -> np.ndarray:
        """(N, C) probabilities over ``router_classes`` (as sklearn's predict_proba)."""
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

    def steering_vector(self, domain: str, beta: float) -> np.ndarray:
        """The seed's mixture: normalize(beta * v_global + (1 - beta) * v_domain)."""
        v_d = self.vectors.get(domain)
        v_g = self.vectors.get("global")
        if v_d is None:
            return v_g
        v = beta * v_g + (1 - beta) * v_d if (v_g is not None and beta > 0) else v_d
        return (v / (np.linalg.norm(v) + 1e-8)).astype(np.float32)

    # ------------------------------------------------------------------ checks
    def check_model(self, hidden_size: int, num_layers: int, model_id: str | None = None) -> None:
        if hidden_size != self.hidden_size:
            raise BundleError(
                f"this adapter was built on {self.model_id!r} with hidden size {self.hidden_size}; "
                f"the model has hidden size {hidden_size}. Build the adapter on this model "
                "(run stages 02-05) instead.")
        if self.layer >= num_layers:
            raise BundleError(
                f"this adapter steers block {self.layer} of {self.model_id!r}, but the model has "
                f"only {num_layers} blocks. Build the adapter on this model instead.")


def _digest(tensors_file: Path, meta: dict[str, Any]) -> str:
    """sha256 of the tensor file's bytes and of every JSON field but ``sha256`` itself."""
    h = hashlib.sha256(Path(tensors_file).read_bytes())
    fields = {k: v for k, v in meta.items() if k != "sha256"}
    h.update(json.dumps(fields, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _tensors(b: Bundle) -> dict[str, np.ndarray]:
    t = {"scaler.mean": b.scaler_mean, "scaler.scale": b.scaler_scale,
         "router.coef": b.router_coef, "router.intercept": b.router_intercept}
    for d, (coef, icpt) in b.probes.items():
        t[f"probe.{d}.coef"] = coef
        t[f"probe.{d}.intercept"] = np.array([icpt], dtype=np.float64)
    for name, v in b.vectors.items():
        t[f"vector.{name}"] = v.astype(np.float32)
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
        "model_id": b.model_id,
        "hidden_size": b.hidden_size,
        "num_layers": b.num_layers,
        "cal_mean_norm": b.cal_mean_norm,
        "versions": library_versions(),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()},
        **b.extra, **(extra or {}),
    }
    meta = json.loads(json.dumps(meta, default=_json_default))  # hash exactly what the JSON will hold
    meta["sha256"] = _digest(folder / "adapter.safetensors", meta)
    write_json(folder / "adapter.json", meta)
    return folder


def load_bundle(folder: str | Path) -> Bundle:
    """Rebuild a bundle, checking every tensor's name, shape and dtype against the JSON."""
    folder = Path(folder)
    jpath, tpath = folder / "adapter.json", folder / "adapter.safetensors"
    for p in (jpath, tpath):
        if not p.is_file():
            raise BundleError(f"{p} is missing: not an adapter bundle folder")
    try:
        meta = json.loads(jpath.read_text())
    except ValueError as e:  # invalid JSON or not UTF-8
        raise BundleError(f"{jpath}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise BundleError(f"{jpath}: unknown format {got!r} (expected {FORMAT})")
    try:
        return _load(meta, jpath, tpath)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{jpath}: malformed adapter ({type(e).__name__}: {e})") from None


def _load(meta: dict, jpath: Path, tpath: Path) -> Bundle:
    try:
        tensors = load_file(str(tpath))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise BundleError(f"{tpath}: not a readable safetensors file ({' '.join(str(e).split())})") from None
    spec = meta["tensors"]
    if set(spec) != set(tensors):
        raise BundleError(f"{tpath}: tensors {sorted(set(tensors) ^ set(spec))} do not match adapter.json")
    H = int(meta["hidden_size"])
    C = len(meta["router_classes"])
    expected_shapes = {"scaler.mean": (H,), "scaler.scale": (H,),
                       "router.coef": (1 if C == 2 else C, H), "router.intercept": (1 if C == 2 else C,)}
    for d in meta["probes"]:
        expected_shapes[f"probe.{d}.coef"] = (H,)
        expected_shapes[f"probe.{d}.intercept"] = (1,)
    for v in meta["vectors"]:
        expected_shapes[f"vector.{v}"] = (H,)
    for name, arr in tensors.items():
        s = spec[name]
        if list(arr.shape) != s["shape"] or str(arr.dtype) != s["dtype"]:
            raise BundleError(f"{tpath}: tensor {name} is {arr.dtype}{list(arr.shape)}, "
                              f"adapter.json says {s['dtype']}{s['shape']}")
        if name not in expected_shapes or tuple(arr.shape) != expected_shapes[name]:
            raise BundleError(f"{tpath}: unexpected tensor {name} with shape {list(arr.shape)}")
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
            raise BundleError(f"{tpath}: tensor {name} must be finite floats")
    if "sha256" in meta and meta["sha256"] != _digest(tpath, meta):
        raise BundleError(f"{jpath.parent}: the sha256 in adapter.json does not match the bundle's files "
                          "(adapter.json or adapter.safetensors was changed after it was written)")
    known = {"format", "layer", "hook_point", "domains", "router_classes", "probes", "vectors",
             "model_id", "hidden_size", "num_layers", "cal_mean_norm", "versions", "tensors", "sha256"}
    return Bundle(
        layer=int(meta["layer"]), domains=list(meta["domains"]),
        router_classes=list(meta["router_classes"]),
        scaler_mean=tensors["scaler.mean"], scaler_scale=tensors["scaler.scale"],
        router_coef=tensors["router.coef"], router_intercept=tensors["router.intercept"],
        probes={d: (tensors[f"probe.{d}.coef"], float(tensors[f"probe.{d}.intercept"][0]))
                for d in meta["probes"]},
        vectors={v: tensors[f"vector.{v}"] for v in meta["vectors"]},
        model_id=meta["model_id"], hidden_size=H, num_layers=int(meta["num_layers"]),
        cal_mean_norm=float(meta["cal_mean_norm"]),
        extra={k: v for k, v in meta.items() if k not in known},
    )
