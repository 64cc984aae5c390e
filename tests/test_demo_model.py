"""The demo model's LoRA training code (on the tiny model) and loading with ``model.adapter``."""

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asa_lib.demo.example_data import labelled_example_rows
from asa_lib.demo.synthetic import synthetic_requests
from asa_lib.demo.train import Recipe, train_adapter
from asa_lib.model.load import ModelLoadError, load_model
from asa_lib.model.lora import ADAPTER_FILE, RECORD_FILE
from asa_lib.params import ModelParams, ParamsError, params_from_dict

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "labelled_example.jsonl"
TINY_RECIPE = dict(
    n_tool_train=8,
    n_plain_train=8,
    n_tool_valid=4,
    n_plain_valid=4,
    n_fn_tool_train=4,
    n_fn_plain_train=4,
    n_fn_tool_valid=2,
    n_fn_plain_valid=2,
    distill_max_new_tokens=4,
    target_modules="all-linear",
    batch_size=4,
    max_steps=3,
    eval_max_new_tokens=4,
    lr=1e-2,
)


def test_synthetic_requests_are_seeded_distinct_and_in_the_prompt_format(demo_params):
    pp = demo_params.prompt
    a = synthetic_requests(pp, 40, 40, random.Random(0), set())
    b = synthetic_requests(pp, 40, 40, random.Random(0), set())
    assert [e.text for e in a] == [e.text for e in b]
    seen = {e.text for e in a}
    assert len(seen) == 80
    more = synthetic_requests(pp, 10, 10, random.Random(0), set(seen))  # the validation draw
    assert not seen & {e.text for e in more}
    tools = [e for e in a if e.call is not None]
    assert {e.call["name"] for e in tools} == {t["name"] for t in pp.tools}
    for e in tools:
        assert e.answer.startswith(pp.tool_call_start) and e.answer.endswith(pp.tool_call_end)
        assert json.loads(e.answer[len(pp.tool_call_start) : -len(pp.tool_call_end)]) == e.call
        required = next(t for t in pp.tools if t["name"] == e.call["name"])["parameters"][
            "required"
        ]
        assert all(e.call["arguments"][r] for r in required)
    assert all(
        e.call is None and e.answer == "" for e in a if e.call is None
    )  # filled by distillation


def test_the_demo_models_requests_and_the_labelled_example_share_no_request(demo_params):
    # exactly the draws train_adapter makes (train, then validation, one RNG and one seen-set)
    r = Recipe()
    rng, seen = random.Random(r.seed), set()
    pp = demo_params.prompt
    demo = synthetic_requests(pp, r.n_tool_train, r.n_plain_train, rng, seen)
    demo += synthetic_requests(pp, r.n_tool_valid, r.n_plain_valid, rng, seen)
    texts = {e.text.strip().lower() for e in demo}
    assert len(texts) == len(demo)
    example = [json.loads(x)["text"] for x in EXAMPLE.read_text(encoding="utf-8").splitlines()]
    assert len(example) == 200
    assert not texts & {t.strip().lower() for t in example}
    # and the generator with other seeds draws none of them either
    for seed in (1, 2):
        rows = labelled_example_rows(per_bucket=40, seed=seed)
        assert not texts & {x["text"].strip().lower() for x in rows}


def test_training_runs_saves_a_record_and_loads_merged(tiny_params, tmp_path):
    lm = load_model(tiny_params.model, seed=0)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    out = tmp_path / "adapter"
    rec = train_adapter(lm, tiny_params.prompt, out, Recipe(**TINY_RECIPE))
    assert rec["steps"] == 3 and len(rec["recipe"]) > 5 and rec["loss"]["valid"] > 0
    assert rec["data"]["train"]["groups"] == {
        "four_tools": {"tool": 8, "plain": 8},
        "functions_train": {"tool": 4, "plain": 4},
    }
    assert rec["data"]["valid"]["groups"]["functions_held_out"] == {"tool": 2, "plain": 2}
    assert set(rec["synthetic_validation"]) == {"base_model", "with_adapter"}
    saved = json.loads((out / RECORD_FILE).read_text())
    assert saved["adapter_sha256"] == rec["adapter_sha256"] and "peft" in saved["versions"]
    weights = load_file(str(out / ADAPTER_FILE))
    assert weights and any(
        "lora_B" in k and v.abs().sum() > 0 for k, v in weights.items()
    )  # B moved from 0

    merged = load_model(tiny_params.model, seed=0, adapter=out)
    assert "LoRA adapter" in merged.model_id and rec["adapter_sha256"][:12] in merged.model_id
    assert not any("lora" in k for k in merged.model.state_dict())  # an ordinary model
    changed = [k for k, v in merged.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the adapter is in the weights
    # the merged model computes what the trained (merged-in-place) model computes
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(merged.model(x).logits, lm.model(x).logits, rtol=1e-4, atol=1e-4)

    (out / ADAPTER_FILE).write_bytes((out / ADAPTER_FILE).read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model(tiny_params.model, seed=0, adapter=out)


def test_params_adapter_path_is_checked(tmp_path):
    base = {
        "name": "x",
        "model": {"kind": "tiny", "adapter": "nowhere"},
        "data": {"source": "hub/id"},
    }
    with pytest.raises(ParamsError, match="model.adapter"):
        params_from_dict(base, base_dir=tmp_path)
    (tmp_path / "nowhere").mkdir()
    (tmp_path / "nowhere" / "adapter_config.json").write_text("{}")
    p = params_from_dict(base, base_dir=tmp_path)
    assert p.adapter_path() == (tmp_path / "nowhere").resolve()
    assert ModelParams().adapter == ""


def test_evaluate_tool_use_scores_each_output_once(tiny_lm, monkeypatch):
    """The demo model's figures from fixed outputs, counted by hand (generation replaced)."""
    from asa_lib.demo import train
    from asa_lib.demo.synthetic import Example
    from asa_lib.engine import generate
    from asa_lib.params import PromptParams

    pp = PromptParams(tool_call_start="<tool_call>", tool_call_end="</tool_call>")
    calc = {"name": "calculator", "arguments": {"expression": "1+1"}}
    examples = [
        Example("add", calc),  # right tool, valid
        Example("add", calc),  # another tool, valid
        Example("add", calc),  # triggered, does not parse
        Example("add", calc),  # no call
        Example("poem", None),  # a call where none is needed
        Example("poem", None),
    ]
    outputs = [
        '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>',
        '<tool_call>{"name": "web_search", "arguments": {"query": "q"}}</tool_call>',
        "<tool_call>calculator 1+1</tool_call>",
        "2",
        '<tool_call>{"name": "translator", "arguments": {"text": "x"}}</tool_call>',
        "Roses are red",
    ]
    monkeypatch.setattr(generate, "generate_all", lambda *a, **k: (outputs, len(outputs)))
    m = train.evaluate_tool_use(tiny_lm, pp, examples, max_new_tokens=4)
    assert m == {
        "four_tools": {
            "tool_requests": 4,
            "plain_requests": 2,
            "trigger_rate_tool": 3 / 4,
            "trigger_rate_plain": 1 / 2,
            "valid_call_rate_tool": 2 / 4,  # calculator and web_search: listed, with arguments
            "right_tool_rate": 1 / 4,
            "exact_call_rate": 1 / 4,
        }
    }
