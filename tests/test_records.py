"""The per-prompt record and what a sweep result says about where it came from.

One typed record (:class:`~asa_lib.run.records.PromptRecord`) in the sweep, in
``asa generate --json`` and in the tests; every ``sweep/<config>.json`` names
its model, bundle (sha256), prompt format (sha256) and library versions,
after the keys it had before.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

from asa_lib import data
from asa_lib.cli import GENERATE_FIELDS
from asa_lib.files import library_versions
from asa_lib.layout import RunDir
from asa_lib.method.bundle import Bundle, load_bundle, save_bundle
from asa_lib.prompts import prompt_format_sha256
from asa_lib.run.extraction import extract_run
from asa_lib.run.records import PromptRecord
from asa_lib.run.sweep import run_config
from asa_lib.tools import Score

# The per-prompt keys of sweep/<config>.json: those the runs before the record type wrote,
# with the row's tool-set id ("tools") after its label.
RECORD_KEYS = [
    "id",
    "split",
    "domain",
    "label",
    "tools",
    "routed",
    "has_probe",
    "p_tool",
    "gate",
    "output",
    "triggered",
    "format_valid",
    "valid",
    "complete",
]
# The top-level keys of sweep/<config>.json before the provenance fields, then those.
SWEEP_KEYS = [
    "name",
    "tau",
    "alpha",
    "beta",
    "alpha_unit",
    "alpha_eff",
    "layer",
    "gate_layer",
    "config",
    "splits",
    "records",
]
PROVENANCE_KEYS = ["model_id", "bundle_sha256", "prompt_format_sha256", "versions"]


def test_the_record_has_the_sweeps_keys_in_order_and_is_frozen():
    assert [f.name for f in dataclasses.fields(PromptRecord)] == RECORD_KEYS
    r = PromptRecord.scored(
        Score(triggered=True, format_valid=True, valid=False, complete=True),
        id="r1",
        split="valid",
        domain="math",
        label=1,
        tools=None,
        routed="math",
        has_probe=True,
        p_tool=0.75,
        gate=1,
        output="<call>",
    )
    assert r.to_dict() == {
        "id": "r1",
        "split": "valid",
        "domain": "math",
        "label": 1,
        "tools": None,
        "routed": "math",
        "has_probe": True,
        "p_tool": 0.75,
        "gate": 1,
        "output": "<call>",
        "triggered": True,
        "format_valid": True,
        "valid": False,
        "complete": True,
    }
    assert list(r.to_dict()) == RECORD_KEYS
    assert r.to_dict(("gate", "id")) == {"gate": 1, "id": "r1"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.gate = 0  # type: ignore[misc]


def test_generate_json_prints_a_subset_of_the_records_fields():
    # asa generate --json: today's keys after "prompt", each a field of the record, in its order
    assert GENERATE_FIELDS == (
        "routed",
        "p_tool",
        "gate",
        "output",
        "triggered",
        "format_valid",
        "valid",
    )
    assert [k for k in RECORD_KEYS if k in GENERATE_FIELDS] == list(GENERATE_FIELDS)


def _bundle_on(lm, domains: list[str]) -> Bundle:
    """A random bundle on the tiny model (block 1), with a probe for every domain but the first."""
    rng = np.random.default_rng(0)
    H = lm.hidden_size
    vecs = {}
    for name in ("global", *domains):
        v = rng.normal(size=H).astype(np.float32)
        vecs[name] = v / np.linalg.norm(v)
    return Bundle(
        layer=1,
        domains=domains,
        router_classes=domains,
        scaler_mean=np.zeros(H),
        scaler_scale=np.ones(H),
        router_coef=rng.normal(size=(len(domains), H)),
        router_intercept=np.zeros(len(domains)),
        probes={d: (rng.normal(size=H), 0.0) for d in domains[1:]},
        vectors=vecs,
        model_id=lm.model_id,
        hidden_size=H,
        num_layers=lm.num_layers,
        cal_mean_norm=1.0,
        model_fingerprint=lm.fingerprint,
        model_weights=lm.weights,
    )


@pytest.fixture(scope="module")
def tiny_sweep(tiny_lm, tiny_params, tmp_path_factory):
    """Stages 01 and 02 of the tiny preset, a random bundle, and one steered config swept."""
    run = RunDir(tmp_path_factory.mktemp("sweep_run"))
    params = dataclasses.replace(  # fewer rows than the preset: a quicker test
        tiny_params, data=dataclasses.replace(tiny_params.data, per_split_per_class=1)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data.write_splits(run, data.make_splits_from_params(params))
    extract_run(tiny_lm, params, run)
    domains = sorted({x.domain for xs in data.read_splits(run).values() for x in xs})
    save_bundle(_bundle_on(tiny_lm, domains), run.bundle)
    bundle = load_bundle(run.bundle)
    config = dataclasses.replace(params.config("strong"), tau=0.5)  # every probed row steered
    out = run_config(params, run, tiny_lm, bundle, config)
    path = run.sweep(config.name)
    return {"run": run, "out": out, "path": path, "text": path.read_text(encoding="utf-8")}


def test_a_sweep_result_names_its_model_bundle_prompt_format_and_versions(
    tiny_sweep, tiny_lm, tiny_params
):
    run, text = tiny_sweep["run"], tiny_sweep["text"]
    doc = json.loads(text, object_pairs_hook=lambda pairs: pairs)  # keys in file order
    assert [k for k, _ in doc] == SWEEP_KEYS + PROVENANCE_KEYS  # the new keys come last
    res = json.loads(text)
    # independent sources: the bundle's own file, the model, the versions installed here
    recorded = json.loads((run.bundle / "adapter.json").read_text())["sha256"]
    assert res["bundle_sha256"] == recorded and len(recorded) == 64
    assert res["model_id"] == tiny_lm.model_id == "tiny-lfm2"
    assert res["prompt_format_sha256"] == prompt_format_sha256(tiny_params.prompt)
    assert res["versions"] == library_versions() and "torch" in res["versions"]
    assert tiny_sweep["out"]["bundle_sha256"] == recorded  # run_config returns what it wrote


def test_sweep_records_keep_their_keys_and_their_scores(tiny_sweep, tiny_params):
    res = json.loads(tiny_sweep["text"])
    recs = res["records"]
    assert recs and {r["split"] for r in recs} == {"valid", "test"}
    start = tiny_params.prompt.tool_call_start
    for r in recs:
        assert list(r) == RECORD_KEYS
        assert type(r["p_tool"]) is float and type(r["gate"]) is int
        assert type(r["has_probe"]) is bool and r["has_probe"] == (r["p_tool"] != 0.5)
        # the score, checked by hand: the start marker is the trigger; validity needs a parse
        assert r["triggered"] == (start in r["output"])
        assert r["valid"] <= r["format_valid"] <= r["triggered"]
    assert {r["gate"] for r in recs} - {0}  # tau 0.5: every row of a probed domain is steered


def test_the_sweep_refuses_a_bundle_of_another_model(tiny_sweep, tiny_lm, tiny_params):
    from asa_lib.method.bundle import BundleError

    other = dataclasses.replace(load_bundle(tiny_sweep["run"].bundle), model_id="other/model")
    with pytest.raises(BundleError, match="built on 'other/model', not on 'tiny-lfm2'"):
        run_config(tiny_params, tiny_sweep["run"], tiny_lm, other, tiny_params.config("baseline"))
    fp = dataclasses.replace(other, model_id="tiny-lfm2", model_fingerprint="f" * 64)
    with pytest.raises(BundleError, match="other names, shapes or dtypes"):
        run_config(tiny_params, tiny_sweep["run"], tiny_lm, fp, tiny_params.config("baseline"))
