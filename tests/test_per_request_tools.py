"""Rows that bring their own tools, on the tiny model: data -> states -> bundle -> sweep.

One domain (no router), two tool sets; every prompt is rendered with its own
tools, every record names them, a call is valid only against them, and a changed
tool list is generated anew.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from asa_lib import data
from asa_lib.engine.cache import GenerationCache
from asa_lib.engine.extract import load_meta, load_states
from asa_lib.engine.generate import ConfigOutputs, GenerationSettings, generate_all
from asa_lib.method import probing
from asa_lib.method.bundle import load_bundle, save_bundle
from asa_lib.method.gate import compute_gates
from asa_lib.method.online import OnlineGate, decide_prompts
from asa_lib.params import baseline_config, params_from_dict
from asa_lib.prompts import render_prompts
from asa_lib.run import core, sweep
from asa_lib.run.extraction import extract_run

WEATHER = {
    "name": "get_weather",
    "description": "Forecast for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
STOCKS = {
    "name": "get_quote",
    "description": "A stock quote.",
    "parameters": {
        "type": "object",
        "properties": {"symbol": {"type": "string"}},
        "required": ["symbol"],
    },
}


def rows(n=6):
    out = []
    for i in range(n):
        out.append({"text": f"Weather in city {i} tomorrow?", "label": 1, "tools": [WEATHER]})
        out.append({"text": f"Write a poem number {i}.", "label": 0, "tools": [WEATHER]})
        out.append({"text": f"Quote for stock {i} now?", "label": 1, "tools": [STOCKS]})
        out.append({"text": f"Tell a story number {i}.", "label": 0, "tools": [STOCKS]})
    for r in out:
        r["domain"] = "all"
    return out


@pytest.fixture(scope="module")
def run(tiny_params, tiny_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    src = root / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    d = tiny_params.to_dict()
    d["data"] = {"kind": "labelled", "source": str(src), "per_split_per_class": 2, "seed": 0}
    params = params_from_dict(d, base_dir=str(root))
    run_dir = root / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data.write_splits(run_dir, data.make_splits_from_params(params))
    extract_run(tiny_lm, params, run_dir)
    splits = data.read_splits(run_dir)
    states = {s: load_states(run_dir, s) for s in ("cal", "train", "valid")}
    y = {s: np.array([x.label for x in splits[s]]) for s in states}
    dom = {s: [x.domain for x in splits[s]] for s in states}
    bundle, _ = probing.fit_from_states(
        states,
        y,
        dom,
        data.read_domains(run_dir),
        model_id=tiny_lm.model_id,
        model_weights=tiny_lm.weights,
    )
    save_bundle(bundle, run_dir / "bundle")
    return {
        "params": params,
        "dir": run_dir,
        "splits": splits,
        "bundle": load_bundle(run_dir / "bundle"),
    }


def test_samples_carry_their_tool_set_and_the_sets_are_stored(run):
    sets = data.read_tool_sets(run["dir"])
    assert len(sets) == 2
    assert sorted(t[0]["name"] for t in sets.values()) == ["get_quote", "get_weather"]
    for xs in run["splits"].values():
        for x in xs:
            want = "get_weather" if ("Weather" in x.text or "poem" in x.text) else "get_quote"
            assert sets[x.tools][0]["name"] == want
            assert x.tools == data.tool_set_id(sets[x.tools])
    line = (run["dir"] / "data" / "splits.jsonl").read_text().splitlines()[0]
    assert json.loads(line)["tools"].startswith("t")


def test_each_prompt_renders_its_own_tools(run, tiny_lm):
    xs = run["splits"]["valid"]
    prompts = data.render_samples(tiny_lm.tokenizer, run["params"].prompt, xs, run["dir"])
    for x, p in zip(xs, prompts):
        own = data.read_tool_sets(run["dir"])[x.tools][0]["name"]
        other = {"get_weather", "get_quote"} - {own}
        assert own in p and other.pop() not in p


def test_one_domain_has_no_router_and_both_gate_paths_agree(run, tiny_lm):
    b = run["bundle"]
    assert b.router_classes == ["all"] and not b.has_router
    assert b.router_coef.shape == (0, b.hidden_size) and b.router_intercept.shape == (0,)
    split = "valid"
    meta = load_meta(run["dir"], split)
    xs = {x.id: x for x in run["splits"][split]}
    xs = [xs[i] for i in meta["ids"]]
    h = load_states(run["dir"], split, b.layer)
    cfg = run["params"].configs()[1]
    two = compute_gates(b, h, cfg, [x.domain for x in xs])
    assert set(two.routed) == {"all"}
    # the probe's p(tool), computed here from the stored coefficients (no router involved)
    coef, icpt = b.probes["all"]
    p = 1 / (1 + np.exp(-(b.scale(h) @ coef + icpt)))
    np.testing.assert_allclose(two.p_tool, p, atol=1e-12)
    prompts = data.render_samples(tiny_lm.tokenizer, run["params"].prompt, xs, run["dir"])
    gate = OnlineGate(b, cfg.tau, 1.0, cfg.beta)
    one = decide_prompts(tiny_lm, prompts, gate)
    assert [d.routed for d in one] == ["all"] * len(xs)
    np.testing.assert_allclose([d.p_tool for d in one], p, atol=1e-5)


def test_records_name_their_tools_and_validity_uses_the_rows_own(run, tiny_lm, monkeypatch):
    sets = data.read_tool_sets(run["dir"])

    def canned(lm, prompts, settings, configs, layer=0, cache=None, **kw):
        # every output calls get_weather with its argument: valid only where it is listed
        call = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
        out = f"{run['params'].prompt.tool_call_start}{call}{run['params'].prompt.tool_call_end}"
        n = len(prompts)
        return ConfigOutputs(
            {c.name: [out] * n for c in configs}, {c.name: n for c in configs}, n, {}
        )

    monkeypatch.setattr(core, "generate_configs", canned)  # the evaluation core's planner
    res = sweep.run_config(run["params"], run["dir"], tiny_lm, run["bundle"], baseline_config())
    assert res["records"]
    for r in res["records"]:
        names = [t["name"] for t in sets[r["tools"]]]
        assert r["triggered"] and r["format_valid"]
        assert r["valid"] == ("get_weather" in names)
    assert {r["valid"] for r in res["records"]} == {True, False}


def test_a_changed_tool_list_is_generated_anew(run, tiny_lm, tmp_path):
    pp = run["params"].prompt
    texts = ["Weather in Oslo?", "A poem, please."]
    settings = GenerationSettings(max_new_tokens=3, batch_size=2, markers=pp)
    cache = GenerationCache(tmp_path / "gen.sqlite", {"m": "tiny"})
    try:
        first = render_prompts(tiny_lm.tokenizer, pp, texts, [[WEATHER], [WEATHER]])
        assert generate_all(tiny_lm, first, settings, cache=cache)[1] == 2
        assert generate_all(tiny_lm, first, settings, cache=cache)[1] == 0  # cached
        changed = render_prompts(tiny_lm.tokenizer, pp, texts, [[WEATHER], [STOCKS]])
        out, n = generate_all(tiny_lm, changed, settings, cache=cache)
        assert n == 1  # only the prompt whose tools changed
    finally:
        cache.close()


def test_a_bad_tool_list_is_skipped_and_counted_with_its_line(tmp_path):
    bad = rows(2)
    bad[1]["tools"] = [{"name": "x", "parameters": {"type": "object", "required": ["y"]}}]
    bad[2]["tools"] = "not json ["
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in bad))
    got = data.read_labelled(str(src), src)
    assert len(got.rows) == len(bad) - 2
    reasons = {e["where"]: (e["reason"], e["field"]) for e in got.skipped_examples}
    assert reasons[f"{src}, line 2"] == (
        "bad tools (tools[0].parameters.required: ['y'] are not in parameters.properties)",
        "tools",
    )
    assert reasons[f"{src}, line 3"] == ("bad tools", "tools")


B2 = Path(__file__).parent / "fixtures" / "redteam4" / "b2_tool_key_order"


def test_a_row_renders_its_own_key_order_whatever_rows_come_before(run, tiny_lm):
    """b2: ``B_reordered``'s tools are ``A_first``'s with the keys in another order. Read with
    ``A_first`` before it (AB.jsonl) or without (B.jsonl), it gets one prompt, its own key
    order, and one p(tool)."""
    pp, got = run["params"].prompt, {}
    for name in ("AB.jsonl", "B.jsonl"):
        ds = data.read_all_samples(run["params"], str(B2 / name), B2 / name)
        i = [x.id for x in ds.samples].index("B_reordered")
        tools = data.sample_tools(ds.samples, ds.tool_sets)
        got[name] = render_prompts(tiny_lm.tokenizer, pp, [ds.samples[i].text], [tools[i]])[0]
    a_first, b_reordered = [
        json.loads(line)["tools"] for line in (B2 / "AB.jsonl").read_text().splitlines()[:2]
    ]
    assert a_first == b_reordered and json.dumps(a_first) != json.dumps(b_reordered)
    assert got["AB.jsonl"] == got["B.jsonl"]
    assert json.dumps(b_reordered) in got["B.jsonl"]
    gate = OnlineGate(run["bundle"], 0.6, 1.0, 0.0)
    p = [d.p_tool for d in decide_prompts(tiny_lm, list(got.values()), gate)]
    assert p[0] == p[1]


def test_the_splits_render_each_row_in_its_own_key_order(tiny_params, tiny_lm, tmp_path):
    """b2, the data stage: rows whose tools differ only in key order get two tool sets, and
    every sample of the splits renders the tools exactly as its own row wrote them."""
    reordered = {k: WEATHER[k] for k in reversed(list(WEATHER))}
    src_rows = rows()
    for k, r in enumerate(src_rows):
        if r["tools"] == [WEATHER] and k % 3 == 0:  # rows of both labels, keys reversed
            r["tools"] = [reordered]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in src_rows))
    d = tiny_params.to_dict()
    d["data"] = {"kind": "labelled", "source": str(src), "per_split_per_class": 2, "seed": 0}
    params = params_from_dict(d, base_dir=str(tmp_path))
    run_dir = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data.write_splits(run_dir, data.make_splits_from_params(params))
    splits = data.read_splits(run_dir)
    xs = [x for s in ("cal", "train", "valid", "test") for x in splits[s]]
    sets = {json.dumps(src_rows[x.idx]["tools"]) for x in xs}
    assert len(data.read_tool_sets(run_dir)) == len(sets)
    prompts = data.render_samples(tiny_lm.tokenizer, params.prompt, xs, run_dir)
    seen = set()
    for x, p in zip(xs, prompts):
        own = json.dumps(src_rows[x.idx]["tools"])
        assert own in p, x.id
        seen.add(own)
    assert json.dumps([reordered]) in seen and json.dumps([WEATHER]) in seen
