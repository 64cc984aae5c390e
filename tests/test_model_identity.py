"""The model check compares the weights, not only their names and shapes.

A bundle records the digest of the weights it was built on (``model_weights``,
:func:`asa_lib.model.load.weights_digest`); a model of the same id with other
weights (the tiny model of another seed) is refused, in the API and in the
sweep. A bundle written before the digest was recorded still loads, but the
model check refuses it unless ``allow_model_mismatch`` (it cannot tell the
weights apart).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers_online import write_adapter

from asa_lib import ASA, ModelMismatchError
from asa_lib.method.bundle import BundleError, _digest, load_bundle
from asa_lib.model.load import LoadedModel, build_tiny_lfm2, weights_digest
from asa_lib.params import baseline_config
from asa_lib.run.sweep import run_config


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_lm, tiny_params):
    folder, _, _ = write_adapter(tmp_path_factory.mktemp("run"), tiny_lm, tiny_params)
    return folder


def _other_seed(tiny_lm) -> LoadedModel:
    """The tiny model of seed 1 under the same id: the same names, shapes and dtypes."""
    model, tok = build_tiny_lfm2(seed=1)
    return LoadedModel(model, tok, tiny_lm.model_id, tiny_lm.device)


def test_a_model_with_other_weights_and_the_same_id_is_refused(adapter, tiny_lm, tiny_params):
    asa = ASA.load(adapter)
    assert load_bundle(adapter).model_weights == tiny_lm.weights  # recorded at build time
    asa.check_model(tiny_lm)
    other = _other_seed(tiny_lm)
    assert other.facts().fingerprint == tiny_lm.facts().fingerprint
    msg = "other weights than this one's"
    with pytest.raises(ModelMismatchError, match=msg):
        asa.check_model(other)
    with pytest.raises(ModelMismatchError, match=msg):  # vouching names the model, not its weights
        asa.check_model(other.model, model_id=tiny_lm.model_id)
    with pytest.raises(ModelMismatchError, match=msg):
        asa.decide(other, None, ["Hi"])
    with pytest.raises(ModelMismatchError, match=msg), asa.steering(other):
        pass
    ASA.load(adapter, allow_model_mismatch=True).check_model(other)  # the documented override
    # the sweep runs the same check before it reads anything
    with pytest.raises(BundleError, match=msg):
        run_config(tiny_params, adapter.parent, other, load_bundle(adapter), baseline_config())


def test_a_bundle_without_a_weights_digest_loads_but_the_model_check_refuses_it(
    adapter, tiny_lm, tmp_path
):
    old = tmp_path / "old_adapter"
    old.mkdir()
    for name in ("adapter.json", "adapter.safetensors"):
        (old / name).write_bytes((adapter / name).read_bytes())
    meta = json.loads((old / "adapter.json").read_text())
    del meta["model_weights"]  # as written before the digest was recorded, with a valid sha256
    meta["sha256"] = _digest(old / "adapter.safetensors", meta)
    (old / "adapter.json").write_text(json.dumps(meta))
    asa = ASA.load(old, tau=0.5, alpha=0.5)
    assert asa.bundle.model_weights == ""
    with pytest.raises(ModelMismatchError, match="records no digest of its model's weights"):
        asa.check_model(tiny_lm)
    ASA.load(old, tau=0.5, alpha=0.5, allow_model_mismatch=True).check_model(tiny_lm)


def test_the_weights_digest_follows_the_values_and_is_remembered_until_they_change():
    a, _ = build_tiny_lfm2(seed=0)
    b, _ = build_tiny_lfm2(seed=0)
    d = weights_digest(a)
    assert len(d) == 64 and d == weights_digest(b)  # the same seed: the same weights
    assert weights_digest(build_tiny_lfm2(seed=1)[0]) != d
    assert weights_digest(a.to(torch.bfloat16)) != d  # the dtype is part of the weights
    c, _ = build_tiny_lfm2(seed=0)
    assert weights_digest(c) == d  # computed and remembered
    p = next(c.parameters())
    saved = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)  # in place: the remembered digest must not be reused
    assert weights_digest(c) != d
    with torch.no_grad():
        p.copy_(saved)
    assert weights_digest(c) == d
