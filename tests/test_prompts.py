import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from asa_lib.params import PromptParams, load_params
from asa_lib.prompts import messages_for, render_prompt, system_text
from asa_lib.tools import (
    CallMarkers,
    Score,
    call_complete,
    call_payload,
    parse_calls,
    score_output,
    triggered,
)
from conftest import PARAMS


def test_liquid_format_renders_system_tool_list_then_user(tiny_lm):
    pp = load_params(PARAMS / "lfm25.yaml").prompt
    text = render_prompt(tiny_lm.tokenizer, pp, "Calculate 2+2 ")
    assert text.startswith('<|im_start|>system\nList of tools: [{"name": "calculator"')
    assert text.endswith("<|im_start|>user\nCalculate 2+2 <|im_end|>\n<|im_start|>assistant\n")
    assert [m["role"] for m in messages_for(pp, "x")] == ["system", "user"]


def test_demonstrations_go_between_system_and_user(smol_lm, demo_params):
    import dataclasses

    pp = dataclasses.replace(
        demo_params.prompt,
        demonstrations=[
            {"role": "user", "content": "Calculate 17 * 23 + 4 "},
            {
                "role": "assistant",
                "content": '<tool_call>{"name": "calculator", "arguments": {"expression": "17 * 23 + 4"}}</tool_call>',
            },
            {"role": "user", "content": "Write a short poem about the sea. "},
            {"role": "assistant", "content": "Waves roll in beneath the moon."},
        ],
    )
    msgs = messages_for(pp, "Find the latest news ")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    text = render_prompt(smol_lm.tokenizer, pp, "Find the latest news ")
    assert '"name": "web_search"' in text and '<tool_call>{"name": "calculator"' in text
    assert text.index("Waves roll in") < text.index("Find the latest news")
    assert text.endswith("<|im_start|>assistant\n")
    demo = render_prompt(
        smol_lm.tokenizer, demo_params.prompt, "Find the latest news "
    )  # the demo: none
    assert [m["role"] for m in messages_for(demo_params.prompt, "x")] == ["system", "user"]
    assert '"name": "web_search"' in demo and "<tool_call>" in demo


def test_system_template_keeps_other_braces():
    pp = PromptParams(
        system_template='Call as {"name": ...}. Tools: {tools_json}', tools=[{"name": "t"}]
    )
    assert system_text(pp) == 'Call as {"name": ...}. Tools: [{"name": "t"}]'


def test_detection_and_payload():
    pp = PromptParams()
    out = 'Sure. <|tool_call_start|>[calculator(expression="2+2")]<|tool_call_end|>The answer'
    assert triggered(out, pp) and not triggered("plain answer", pp)
    assert call_payload(out, pp) == '[calculator(expression="2+2")]'
    assert (
        call_payload('<|tool_call_start|>[web_search(query="x")]', pp) == '[web_search(query="x")]'
    )


def test_call_markers_come_from_a_prompt_format_and_serve_generation():
    pp = PromptParams(tool_call_start="<tool_call>", tool_call_end="</tool_call>")
    m = CallMarkers.of(pp)
    assert m == CallMarkers("<tool_call>", "</tool_call>") and CallMarkers.of(m) is m
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.start = "x"  # type: ignore[misc]
    out = 'ok <tool_call>{"name": "calculator"}'
    for markers in (m, pp):  # a CallMarkers, or a PromptParams (the engine passes one)
        assert triggered(out, markers) and not call_complete(out, markers)
        assert call_complete(out + "</tool_call>", markers)
        assert call_payload(out + "</tool_call> more", markers) == '{"name": "calculator"}'
    # the seed's markers are not these: nothing is found with them
    assert not triggered(out, CallMarkers.of(PromptParams()))
    assert not call_complete("</tool_call><tool_call>", m)  # the end must follow the start


def test_score_output_liquid_and_json_styles():
    pp = PromptParams()  # the seed's four tools
    m, tools = CallMarkers.of(pp), pp.tools

    def score(out, markers=m, tools=tools):
        return score_output(out, markers, tools)

    def S(triggered, format_valid, valid):  # every call below is closed by its end marker
        return Score(triggered, format_valid, valid, complete=triggered)

    ok = '<|tool_call_start|>[translator(text="hi", target_language="fr")]<|tool_call_end|>'
    assert score(ok) == S(triggered=True, format_valid=True, valid=True)
    missing = '<|tool_call_start|>[translator(text="hi")]<|tool_call_end|>'
    assert score(missing) == S(True, True, False)
    empty = '<|tool_call_start|>[calculator(expression="  ")]<|tool_call_end|>'
    assert score(empty) == S(True, True, False)
    unknown = '<|tool_call_start|>[weather(city="x")]<|tool_call_end|>'
    assert score(unknown) == S(True, True, False)
    garbage = "<|tool_call_start|>calculator expression 2+2<|tool_call_end|>"
    assert score(garbage) == S(True, False, False)
    assert score("no call") == S(False, False, False)
    # the tool list is the one given, not the prompt format's
    weather = [{"name": "weather", "parameters": {"required": ["city"]}}]
    assert score(unknown, tools=weather) == S(True, True, True)
    assert score(ok, tools=weather) == S(True, True, False)
    js = CallMarkers("<tool_call>", "</tool_call>")
    good = '<tool_call>{"name": "web_search", "arguments": {"query": "news"}}</tool_call>'
    assert score(good, js) == S(True, True, True)
    assert score(good) == S(False, False, False)  # other markers: no call at all
    no_args = '<tool_call>{"name": "web_search", "arguments": {}}</tool_call>'
    assert score(no_args, js) == S(True, True, False)
    calls = parse_calls('[calculator(expression="1"), web_search(query="q")]')
    assert [c.name for c in calls] == ["calculator", "web_search"]
    assert (
        parse_calls("[__import__('os').system('x')]") is None
    )  # positional args / non-literals rejected


class _Template:
    """A tokenizer stand-in that records what apply_chat_template was given."""

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kw):
        self.calls.append((messages, kw))
        return json.dumps([messages, kw.get("tools")])


def test_a_rows_tools_fill_the_system_text_or_go_to_the_chat_template():
    from asa_lib.params import PromptParams
    from asa_lib.prompts import render_prompts

    own = [{"name": "lookup", "parameters": {"type": "object", "properties": {}}}]
    pp = PromptParams(system_template="Tools: {tools_json}")
    tok = _Template()
    a, b = render_prompts(tok, pp, ["hi", "yo"], [own, None])
    assert tok.calls[0][0][0]["content"] == "Tools: " + json.dumps(own)
    assert tok.calls[1][0][0]["content"] == "Tools: " + json.dumps(pp.tools)  # the format's
    assert "tools" not in tok.calls[0][1]
    native = PromptParams(system_template="You are helpful.", tools_in="chat_template")
    tok = _Template()
    render_prompts(tok, native, ["hi", "yo"], [own, None])
    assert tok.calls[0][0][0]["content"] == "You are helpful."
    assert tok.calls[0][1]["tools"] == own and tok.calls[1][1]["tools"] == native.tools
    with pytest.raises(ValueError, match="2 requests but 1 tool lists"):
        render_prompts(tok, pp, ["hi", "yo"], [own])


def test_tools_in_chat_template_refuses_a_tools_json_placeholder(params_file):
    from asa_lib.params import ParamsError, load_params

    d = yaml.safe_load((PARAMS / "tiny.yaml").read_text())
    d["data"]["source"] = "data/alpaca_subset.jsonl.xz"
    d["prompt"]["tools_in"] = "chat_template"
    with pytest.raises(
        ParamsError, match=r"holds \{tools_json\}, but prompt.tools_in is chat_template"
    ):
        load_params(params_file(d))
    d["prompt"]["tools_in"] = "nowhere"
    with pytest.raises(ParamsError, match="prompt.tools_in: 'nowhere' is not one of"):
        load_params(params_file(d))


# ----------------------------------------------------------------------------- b1 (round 4)

B1 = Path(__file__).parent / "fixtures" / "redteam4" / "b1_chat_template_drops_tools"
# A chat template that writes the tools it is given (LFM2's way: a list in the system turn).
TOOLS_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\nList of tools: ' + (tools | tojson) "
    "+ '<|im_end|>\\n' }}{% endif %}"
)


def _b1_params(tmp_path):
    """The red team's b1 params (tiny model, ``tools_in: chat_template``) and rows, in tmp_path."""
    for f in B1.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / "params.yaml"


def test_a_chat_template_that_ignores_tools_is_refused_at_load(tmp_path):
    """b1: the tiny ChatML template (like SmolLM2's) ignores ``tools=``: two rows with other
    tools would render the same prompt, with no tool in it. Loading refuses it in one line."""
    from asa_lib.model.load import load_params_model
    from asa_lib.params import ParamsError

    params = load_params(_b1_params(tmp_path))
    with pytest.raises(ParamsError, match="tools_in: system_text") as e:
        load_params_model(params)
    assert "\n" not in str(e.value) and "ignores tools=" in str(e.value)


def test_a_chat_template_that_writes_tools_passes_the_check(tmp_path, tiny_lm):
    """b1: a template that renders tools is accepted, and each row's tools reach its prompt;
    ``tools_in: system_text`` is never checked against the template."""
    import copy

    from asa_lib.params import ParamsError
    from asa_lib.prompts import check_template_renders_tools, render_prompts

    pp = load_params(_b1_params(tmp_path)).prompt
    tok = copy.deepcopy(tiny_lm.tokenizer)
    with pytest.raises(ParamsError, match="tools_in: system_text"):
        check_template_renders_tools(tok, pp)
    tok.chat_template = TOOLS_TEMPLATE + tok.chat_template
    check_template_renders_tools(tok, pp)
    rows = [json.loads(line) for line in (B1 / "rows.jsonl").read_text().splitlines()[:2]]
    a, b = render_prompts(tok, pp, ["same request"] * 2, [r["tools"] for r in rows])
    assert a != b
    assert rows[0]["tools"][0]["name"] in a and rows[1]["tools"][0]["name"] in b
    check_template_renders_tools(tiny_lm.tokenizer, load_params(PARAMS / "tiny.yaml").prompt)


def test_asa_run_with_a_template_that_ignores_tools_writes_nothing(tmp_path, capsys, monkeypatch):
    """b1: ``asa run`` is refused before stage 01 writes anything (no run folder, no stage)."""
    from asa_lib.cli import main
    from asa_lib.run import runner

    ran = []

    def no_stage(stage, *a, **kw):
        ran.append(stage.key)
        raise RuntimeError("a stage ran")

    monkeypatch.setattr(runner, "execute_notebook", no_stage)
    run_dir = tmp_path / "run"
    assert main(["run", "--params", str(_b1_params(tmp_path)), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asa: error: prompt.tools_in: chat_template")
    assert len(err.splitlines()) == 1 and "tools_in: system_text" in err
    assert ran == [] and not run_dir.exists()
