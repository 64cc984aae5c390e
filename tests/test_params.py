import pytest
import yaml

from asa_lib.params import ParamsError, load_params, params_from_dict
from conftest import PARAMS


def base():
    return {
        "name": "t",
        "model": {"kind": "tiny"},
        "data": {"source": "data/alpaca_subset.jsonl.xz"},
        "sweep": [{"name": "a", "tau": 0.6, "alpha": 1.0}],
    }


def test_presets_load_and_lfm25_is_the_seed_experiment():
    p = load_params(PARAMS / "lfm25.yaml")
    assert p.model.id == "LiquidAI/LFM2.5-1.2B-Instruct" and p.model.dtype == "float16"
    assert p.model.trust_remote_code is False
    assert p.prompt.system_template == "List of tools: {tools_json}"
    assert [t["name"] for t in p.prompt.tools] == [
        "calculator",
        "python_interpreter",
        "web_search",
        "translator",
    ]
    assert (p.data.per_split_per_class, p.data.test_multiplier, p.data.seed) == (40, 2, 42)
    assert [(c.name, c.tau, c.alpha, c.beta) for c in p.sweep] == [
        ("current", 0.5, 1, 0.0),
        ("paper", 0.6, 4, 0.0),
        ("gentle", 0.7, 2, 0.0),
        ("balanced", 0.65, 3, 0.0),
        ("conservative", 0.7, 4, 0.0),
        ("selective", 0.75, 5, 0.0),
        ("paper_high", 0.6, 8, 0.0),
        ("minimal", 0.8, 3, 0.0),
    ]
    assert p.reference.f1 == 0.6185 and p.reference.fpr == 0.1656
    assert p.data_path() is None  # a hub dataset id
    for name in ("demo", "tiny"):
        q = load_params(PARAMS / f"{name}.yaml")
        assert q.data_path().is_file()


@pytest.mark.parametrize(
    "mutate, msg",
    [
        (lambda d: d.update(extra=1), "extra: unknown key"),
        (lambda d: d["model"].update(dtyp="float32"), "model.dtyp: unknown key"),
        (
            lambda d: d["sweep"][0].update(tau=1.0),
            "sweep[0].tau: 1.0 is outside the allowed range [0.5, 1)",
        ),
        (lambda d: d["sweep"][0].update(tau=0.4), "sweep[0].tau"),
        (lambda d: d["sweep"][0].update(alpha=-1), "sweep[0].alpha: -1.0 is negative"),
        (
            lambda d: d["sweep"][0].update(beta=1.5),
            "sweep[0].beta: 1.5 is outside the allowed range [0, 1]",
        ),
        (
            lambda d: d["sweep"].append({"name": "a", "tau": 0.7, "alpha": 2}),
            "duplicate config name 'a'",
        ),
        (lambda d: d["sweep"].append({"name": "baseline", "tau": 0.7, "alpha": 2}), "reserved"),
        (lambda d: d.update(extraction={"batch_size": 0}), "extraction.batch_size: must be > 0"),
        (
            lambda d: d.update(generation={"max_new_tokens": -3}),
            "generation.max_new_tokens: must be > 0",
        ),
        (
            lambda d: d["data"].update(per_split_per_class=0),
            "data.per_split_per_class: must be > 0",
        ),
        (lambda d: d["data"].update(source="missing.jsonl"), "data.source: file not found"),
        (
            lambda d: d["data"].update(per_split_per_class="ten"),
            "data.per_split_per_class: expected an integer",
        ),
        (lambda d: d["sweep"][0].update(alpha="big"), "sweep[0].alpha: expected a number"),
        (
            lambda d: d["model"].update(trust_remote_code="yes"),
            "model.trust_remote_code: expected true or false",
        ),
        (lambda d: d["model"].update(kind="onnx"), "model.kind: 'onnx' is not one of"),
        (lambda d: d["model"].update(dtype="int8"), "model.dtype"),
        (lambda d: d.update(steering={"alpha_unit": "percent"}), "steering.alpha_unit"),
        (
            lambda d: d.update(generation={"share_prefix": "yes"}),
            "generation.share_prefix: 'yes' is not one of",
        ),
        (
            lambda d: d.update(generation={"draft": "always"}),
            "generation.draft: 'always' is not one of",
        ),
        (lambda d: d.pop("name"), "name: required key is missing"),
        (lambda d: d.update(prompt={"system_template": "no tools here"}), "{tools_json}"),
    ],
)
def test_bad_values_fail_with_the_key_named(params_file, mutate, msg):
    d = base()
    mutate(d)
    with pytest.raises(ParamsError) as e:
        load_params(params_file(d))
    assert msg in str(e.value)


def test_malformed_yaml_and_empty_file(params_file):
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(params_file("name: [unclosed\n"))
    with pytest.raises(ParamsError, match="empty"):
        load_params(params_file(""))
    with pytest.raises(ParamsError, match="params file not found"):
        load_params("/nonexistent/p.yaml")


def test_relative_data_path_resolves_against_the_params_file(params_file):
    p = load_params(params_file(base()))
    assert (
        p.data_path() == (params_file(base()).parent / "data" / "alpaca_subset.jsonl.xz").resolve()
    )


def test_good_values_round_trip():
    p = params_from_dict(base(), check_files=False)
    assert p.sweep[0].beta == 0.0 and p.sweep[0].alpha == 1.0
    assert isinstance(p.sweep[0].alpha, float)
    assert yaml.safe_dump(p.to_dict())  # plain data


@pytest.mark.parametrize(
    "name, value, why",
    [
        ("tau", 1.0, "is outside the allowed range [0.5, 1)"),
        ("tau", 0.45, "is outside the allowed range [0.5, 1)"),
        ("alpha", -0.5, "is negative (allowed: alpha >= 0)"),
        ("beta", 1.5, "is outside the allowed range [0, 1]"),
        ("beta", -0.25, "is outside the allowed range [0, 1]"),
    ],
)
def test_params_the_api_and_the_online_gate_refuse_the_same_values_alike(
    params_file, name, value, why
):
    """One range check (params.check_config_values) behind sweep configs, ASA and OnlineGate."""
    from test_api import _random_bundle

    from asa_lib import ASA, AdapterError
    from asa_lib.method.online import OnlineGate

    good = {"tau": 0.6, "alpha": 1.0, "beta": 0.0}
    d = base()
    d["sweep"][0].update(good, **{name: value})
    with pytest.raises(ParamsError) as e:
        load_params(params_file(d))
    assert str(e.value).endswith(f".yaml: sweep[0].{name}: {value} {why}")  # after the file
    bundle = _random_bundle(8, 4, "m")
    with pytest.raises(AdapterError) as e:
        ASA(bundle, **{**good, name: value})
    assert str(e.value) == f"{name} {value} {why}"
    online = {"tau": 0.6, "alpha_eff": 1.0, "beta": 0.0}
    key = "alpha_eff" if name == "alpha" else name
    with pytest.raises(ValueError) as e:
        OnlineGate(bundle, **{**online, key: value})
    assert str(e.value) == f"{key} {value} {why.replace('alpha', key)}"
    for ok in (good, {**good, "tau": 0.5, "beta": 1.0}, {**good, "alpha": 0.0}):  # the edges
        d = base()
        d["sweep"][0].update(ok)
        load_params(params_file(d))
        ASA(bundle, **ok)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "0.6", None])
def test_config_values_must_be_finite_numbers(bad):
    from asa_lib.params import check_config_values

    for name in ("tau", "alpha", "alpha_eff", "beta"):
        with pytest.raises(ParamsError, match=f"^x.{name} .* is not a finite number$"):
            check_config_values("x.{name}", **{name: bad})
    check_config_values(tau=0.5, alpha=0, alpha_eff=3, beta=1)  # ints are numbers


def test_a_config_s_layer_and_the_block_rule():
    """Issue 32: ``layer`` is a block index or auto<k> of ``steering.blocks``; bad values are one
    line naming the key; the rule resolves on stage 03's AUCs as a hand count says."""
    from asa_lib.method.probing import resolve_blocks
    from asa_lib.params import BlockRule, resolve_layer

    d = base()
    d["steering"] = {"blocks": {"rule": "top_valid_auc", "count": 2, "min_distance": 4}}
    d["sweep"] = [
        {"name": "a", "tau": 0.6, "alpha": 1.0},
        {"name": "b", "tau": 0.6, "alpha": 1.0, "layer": 19},
        {"name": "c", "tau": 0.6, "alpha": 1.0, "layer": "auto2", "vector": "behaviour"},
    ]
    p = params_from_dict(d, base_dir=PARAMS, check_files=False)
    assert [c.layer for c in p.sweep] == [None, 19, "auto2"]
    assert p.steering.blocks == BlockRule("top_valid_auc", 2, 4)
    for layer, msg in [
        ("auto3", r"sweep\[0\]\.layer: 'auto3' asks for block 3 of steering.blocks, which picks 2"),
        ("deep", r"sweep\[0\]\.layer: 'deep' is neither a block index nor auto<k>"),
        (-1, r"sweep\[0\]\.layer: -1 is negative"),
        (True, r"sweep\[0\]\.layer: expected an integer or a string"),
    ]:
        bad = base() | {"steering": d["steering"]}
        bad["sweep"][0]["layer"] = layer
        with pytest.raises(ParamsError, match=msg):
            params_from_dict(bad, base_dir=PARAMS, check_files=False)
    bad = base()
    bad["sweep"][0]["layer"] = "auto1"
    with pytest.raises(ParamsError, match="the params set none"):
        params_from_dict(bad, base_dir=PARAMS, check_files=False)
    with pytest.raises(ParamsError, match="steering.blocks.min_distance: 0 must be >= 1"):
        params_from_dict(
            base() | {"steering": {"blocks": {"min_distance": 0}}},
            base_dir=PARAMS,
            check_files=False,
        )

    # L* = 11; AUC order 12, 10, 19, 16, 25, 5 ...: 12 and 10 are too close to L*, 19 is taken,
    # 16 is 3 from 19, 25 is taken; two blocks
    aucs = [0.5] * 30
    for layer, a in {11: 0.95, 12: 0.94, 10: 0.93, 19: 0.92, 16: 0.91, 25: 0.90, 5: 0.89}.items():
        aucs[layer] = a
    assert resolve_blocks(BlockRule(count=2, min_distance=4), aucs, 11) == [19, 25]
    assert resolve_blocks(BlockRule(count=3, min_distance=4), aucs, 11) == [19, 25, 5]
    assert resolve_blocks(BlockRule(count=2, min_distance=40), aucs, 11) == []
    b, c = p.sweep[1], p.sweep[2]
    assert resolve_layer(p.sweep[0], 11, 30, [19, 25]) == 11
    assert resolve_layer(c, 11, 30, [19, 25]) == 25
    with pytest.raises(ParamsError, match=r"sweep config 'b': layer 19 is outside .*\[0, 16\)"):
        resolve_layer(b, 11, 16, [19, 25])
    with pytest.raises(ParamsError, match="'c': layer 'auto2': steering.blocks found only 1"):
        resolve_layer(c, 11, 30, [19])
