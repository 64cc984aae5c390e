"""``asa generate``: decisions, outputs and tool-call validity per prompt; one-line errors."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest
import yaml
from helpers_online import write_adapter

from asa_lib import ASA
from asa_lib.cli import main
from conftest import PARAMS, ROOT

TEXTS = ["Calculate 2 + 2", "Write a poem about the sea", "Translate 'cat' into French"]


@pytest.fixture(scope="module")
def cli_lm(tiny_params):
    """The model the command loads (load_params_model: the tiny model with the params' seed)."""
    from asa_lib.model.load import load_params_model

    return load_params_model(tiny_params)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, cli_lm, tiny_params):
    tmp = tmp_path_factory.mktemp("cli")
    d = yaml.safe_load((PARAMS / "tiny.yaml").read_text())
    d["data"]["source"] = str(ROOT / "data" / "alpaca_subset.jsonl.xz")
    params = tmp / "tiny.yaml"
    params.write_text(yaml.safe_dump(d, sort_keys=False))
    folder, _, _ = write_adapter(tmp / "run", cli_lm, tiny_params)
    other, _, _ = write_adapter(
        tmp / "other_run", cli_lm, tiny_params, model_id="LiquidAI/LFM2.5-1.2B-Instruct"
    )
    return {"params": str(params), "adapter": folder, "other": other, "tmp": tmp}


def run_cli(capsys, *args):
    code = main(["generate", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_output_holds_the_decision_output_and_validity_per_prompt(setup, capsys, cli_lm):
    code, out, err = run_cli(
        capsys,
        "--adapter",
        setup["adapter"],
        "--params",
        setup["params"],
        "--json",
        "--baseline",
        *TEXTS,
    )
    assert code == 0 and err == "", err
    doc = json.loads(out)
    assert doc["model_id"] == "tiny-lfm2" and doc["adapter"]["name"] == "mine"
    rows = doc["results"]
    assert [r["prompt"] for r in rows] == TEXTS
    want = ASA.load(setup["adapter"]).generate(
        cli_lm, None, TEXTS, max_new_tokens=6
    )  # tiny.yaml: 6
    for r, g in zip(rows, want):
        assert (r["routed"], r["p_tool"], r["gate"], r["output"]) == (
            g.decision.routed,
            g.decision.p_tool,
            g.decision.gate,
            g.output,
        )
        assert set(r) >= {"triggered", "format_valid", "valid", "baseline_output", "baseline_valid"}
        if r["gate"] == 0:
            assert r["output"] == r["baseline_output"]


def test_another_prompt_format_than_the_runs_is_warned_about(setup, capsys, tmp_path):
    d = yaml.safe_load(open(setup["params"]))
    d["prompt"]["system_template"] = "You may call: {tools_json}"
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    code, out, err = run_cli(capsys, "--adapter", setup["adapter"], "--params", p, "--json", "Hi")
    assert code == 0 and "asa: warning: --params has another prompt format" in err
    assert len(json.loads(out)["results"]) == 1


def test_text_output_and_prompts_from_stdin(setup, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(TEXTS[0] + "\n\n" + TEXTS[1] + "\n"))
    code, out, err = run_cli(
        capsys, "--adapter", setup["adapter"], "--params", setup["params"], "--tau", "0.55"
    )
    assert code == 0, err
    assert "config mine (overridden) (tau=0.55" in out
    assert "[1] " + TEXTS[0] in out and "[2] " + TEXTS[1] in out and "[3]" not in out
    assert (
        out.count("p(tool): ") == 2 and out.count("tool call: ") == 2 and out.count("output: ") == 2
    )


@pytest.mark.parametrize(
    "case, msg",
    [
        ("missing", "no such adapter folder"),
        ("tampered", "sha256 in adapter.json does not match"),
        ("not json", "not valid JSON"),
        (
            "other model",
            "this adapter was built on 'LiquidAI/LFM2.5-1.2B-Instruct', not on 'tiny-lfm2'",
        ),
        ("bad tau", "tau 1.5 is outside the allowed range"),
        ("no prompts", "no prompts"),
    ],
)
def test_errors_are_one_line(setup, capsys, monkeypatch, tmp_path, case, msg):
    folder = tmp_path / "chosen_adapter"
    shutil.copytree(setup["other"] if case == "other model" else setup["adapter"], folder)
    args = ["--adapter", folder, "--params", setup["params"], "Hi"]
    if case == "missing":
        args[1] = tmp_path / "nowhere"
    elif case == "tampered":
        p = folder / "adapter.json"
        p.write_text(p.read_text().replace('"alpha": 0.5', '"alpha": 0.6'))
    elif case == "not json":
        (folder / "adapter.json").write_text("{")
    elif case == "bad tau":
        args += ["--tau", "1.5"]
    elif case == "no prompts":
        args = args[:-1]
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n  \n"))
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    err = err.strip()
    assert err.startswith("asa: error:") and msg in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_generate_help():
    out = subprocess.run(
        [sys.executable, "-m", "asa_lib.cli", "generate", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--adapter" in out.stdout and "--json" in out.stdout


def test_the_params_can_allow_an_adapter_from_another_model(setup, capsys, tmp_path):
    d = yaml.safe_load(open(setup["params"]).read())
    d["steering"]["allow_model_mismatch"] = True
    params = tmp_path / "allow.yaml"
    params.write_text(yaml.safe_dump(d, sort_keys=False))
    code, out, err = run_cli(
        capsys, "--adapter", setup["other"], "--params", params, "--max-new-tokens", "2", "Hi"
    )
    assert code == 0 and "output: " in out, err


WEATHER = {
    "name": "get_weather",
    "description": "Forecast for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def test_jsonl_requests_bring_their_own_tools(setup, capsys, monkeypatch, cli_lm, tiny_params):
    lines = [json.dumps({"text": TEXTS[0], "tools": [WEATHER]}), json.dumps({"text": TEXTS[1]})]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    code, out, err = run_cli(
        capsys, "--adapter", setup["adapter"], "--params", setup["params"], "--jsonl", "--json"
    )
    assert code == 0, err
    res = json.loads(out)["results"]
    assert res[0]["tools"] == ["get_weather"] and "tools" not in res[1]
    # the same as the API given the same requests (rendered with the request's own tools)
    asa = ASA.load(setup["adapter"], prompt=tiny_params.prompt)
    want = asa.generate(
        cli_lm, None, [{"text": TEXTS[0], "tools": [WEATHER]}, TEXTS[1]], max_new_tokens=6
    )
    assert [r["output"] for r in res] == [g.output for g in want]
    own = asa.render(cli_lm.tokenizer, {"text": TEXTS[0], "tools": [WEATHER]})[0]
    assert "get_weather" in own and "calculator" not in own


def test_jsonl_requests_may_be_conversations(setup, capsys, monkeypatch, cli_lm, tiny_params):
    """#33: ``{"messages": [...], "tools": [...]}`` on stdin, rendered in the params' format,
    the same as the API; a conversation ending on an assistant turn is one line."""
    convo = [
        {"role": "system", "content": "You plan trips."},
        {"role": "user", "content": "I fly to Oslo."},
        {"role": "assistant", "content": "Nice!"},
        {"role": "user", "content": TEXTS[0]},
    ]
    lines = [json.dumps({"messages": convo, "tools": [WEATHER]}), json.dumps({"text": TEXTS[1]})]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    args = ["--adapter", setup["adapter"], "--params", setup["params"], "--jsonl", "--json"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    res = json.loads(out)["results"]
    assert res[0]["prompt"] == TEXTS[0] and res[0]["turns"] == 4 and "turns" not in res[1]
    asa = ASA.load(setup["adapter"], prompt=tiny_params.prompt)
    want = asa.generate(
        cli_lm, None, [{"messages": convo, "tools": [WEATHER]}, TEXTS[1]], max_new_tokens=6
    )
    assert [r["output"] for r in res] == [g.output for g in want]
    assert [r["p_tool"] for r in res] == pytest.approx([g.decision.p_tool for g in want])
    rendered = asa.render(cli_lm.tokenizer, {"messages": convo, "tools": [WEATHER]})[0]
    assert "You plan trips." in rendered and "Nice!" in rendered and "get_weather" in rendered
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"messages": convo[:3]}) + "\n"))
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "stdin, request 1, field 'messages': the last message is an assistant turn" in err


@pytest.mark.parametrize(
    "line, msg",
    [
        ("not json", "stdin, request 1: not JSON"),
        ('{"text": "hi", "tools": [{"name": ""}]}', "stdin, request 1, field tools[0].name"),
        (
            '{"prompt": "hi"}',
            "stdin, request 1: unknown fields ['prompt'] (expected text or messages",
        ),
    ],
)
def test_bad_jsonl_requests_are_one_line(setup, capsys, monkeypatch, line, msg):
    monkeypatch.setattr(sys, "stdin", io.StringIO(line + "\n"))
    code, out, err = run_cli(
        capsys, "--adapter", setup["adapter"], "--params", setup["params"], "--jsonl"
    )
    assert code == 2 and msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_byte_order_mark_on_stdin_is_not_part_of_the_first_request(setup, capsys, monkeypatch):
    """u1: requests saved with a UTF-8 BOM (a Windows editor): request 1 is read as JSON."""
    monkeypatch.setattr(sys, "stdin", io.StringIO('\ufeff{"text": "hi"}\nnot json\n'))
    code, out, err = run_cli(
        capsys, "--adapter", setup["adapter"], "--params", setup["params"], "--jsonl"
    )
    assert code == 2 and "stdin, request 2: not JSON" in err, err  # request 1 was JSON
    assert len(err.strip().splitlines()) == 1
