"""The demo model's synthetic functions: well-formed calls, values from the request, no BFCL."""

import json
import lzma
import random
from pathlib import Path

import pytest

from asa_lib.demo.functions import (
    HELD_OUT,
    SUBJECTS,
    all_function_names,
    draw_function,
    function_name,
    mismatched_request,
    subjects_of,
)
from asa_lib.demo.train import Recipe, training_mix
from asa_lib.tools import score_output

DATA = Path(__file__).resolve().parents[1] / "data"
JSON_TYPES = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": list,
    "object": dict,
}


def _bfcl_entries():
    for path in sorted(DATA.glob("bfcl/bfcl_v4_*.json.xz")):
        if "possible_answer" in path.name:
            continue
        with lzma.open(path, "rt", encoding="utf-8") as f:
            yield from (json.loads(line) for line in f.read().splitlines() if line.strip())
    with lzma.open(DATA / "bfcl_live_relevance.jsonl.xz", "rt", encoding="utf-8") as f:
        for line in f.read().splitlines():
            yield json.loads(line)


def _bfcl_names_and_questions() -> tuple[set[str], set[str]]:
    names, questions = set(), set()
    for e in _bfcl_entries():
        for fn in e.get("function", []) + e.get("tools", []):
            names.add(fn["name"].lower())
        if "text" in e:
            questions.add(e["text"].strip().lower())
        for turn in e.get("question", []):
            for m in turn if isinstance(turn, list) else [turn]:
                if isinstance(m, dict) and m.get("role") == "user":
                    questions.add(str(m["content"]).strip().lower())
    return names, questions


@pytest.fixture(scope="module")
def mix(demo_params):
    r = Recipe()
    return training_mix(demo_params.prompt, r, random.Random(r.seed), set())


def test_no_bfcl_function_name_and_no_bfcl_question_in_the_training_data(mix):
    names, questions = _bfcl_names_and_questions()
    assert len(names) > 1000 and len(questions) > 1000  # the shipped files were read
    ours = {n.lower() for n in all_function_names()}
    assert not ours & names, sorted(ours & names)
    train, valid = mix
    listed = {t["name"].lower() for e in train + valid if e.tools for t in e.tools}
    assert listed <= ours and not listed & names
    texts = {e.text.strip().lower() for e in train + valid}
    assert not texts & questions


def _check_value(schema: dict, value) -> None:
    kind = JSON_TYPES[schema["type"]]
    assert isinstance(value, kind) and not (schema["type"] != "boolean" and value is True)
    if "enum" in schema:
        assert value in schema["enum"]
    if schema["type"] == "array":
        for v in value:
            _check_value(schema["items"], v)
    if schema["type"] == "object":
        assert set(value) == set(schema["required"]) == set(schema["properties"])
        for k, v in value.items():
            _check_value(schema["properties"][k], v)


def _in_text(value, text: str) -> bool:
    if isinstance(value, bool):
        return True  # said in words ("with breakfast"): checked by the slot's own phrase
    if isinstance(value, dict):
        return all(_in_text(v, text) for v in value.values())
    if isinstance(value, list):
        return all(_in_text(v, text) for v in value)
    return str(value) in text


def test_each_tool_request_is_answered_by_one_listed_function_with_values_from_the_request(
    mix, demo_params
):
    pp = demo_params.prompt
    train, valid = mix
    fn_tool = [e for e in train + valid if e.tools is not None and e.call is not None]
    assert len(fn_tool) == Recipe().n_fn_tool_train + Recipe().n_fn_tool_valid
    kinds = set()
    for e in fn_tool:
        by = {t["name"]: t for t in e.tools}
        assert 1 <= len(e.tools) <= Recipe().max_functions and len(by) == len(e.tools)
        tool = by[e.call["name"]]
        props, required = tool["parameters"]["properties"], tool["parameters"]["required"]
        assert set(required) <= set(e.call["arguments"]) <= set(props)
        for k, v in e.call["arguments"].items():
            _check_value(props[k], v)
            assert _in_text(v, e.text), (k, v, e.text)
        kinds |= {p["type"] for p in props.values()} | {
            "enum" for p in props.values() if "enum" in p
        }
        assert score_output(e.answer, pp, e.tools).valid  # the answer is a valid call
    assert kinds >= {"string", "number", "integer", "boolean", "enum", "array", "object"}


def test_validation_functions_come_from_held_out_subjects_only(mix):
    train, valid = mix
    held = {n.lower() for s in HELD_OUT for n in _names_of(s)}
    train_names = {t["name"].lower() for e in train if e.tools for t in e.tools}
    valid_names = {t["name"].lower() for e in valid if e.tools for t in e.tools}
    assert train_names and valid_names
    assert not train_names & held and valid_names <= held
    assert set(subjects_of("train")) | set(HELD_OUT) == set(SUBJECTS)


def _names_of(subject: str) -> set[str]:
    return {function_name(v, subject, k) for v in SUBJECTS[subject][1] for k in range(4)}


def test_requests_that_need_no_tool_list_only_functions_that_cannot_answer_them(mix):
    r = random.Random(3)
    subjects = subjects_of("train")
    for _ in range(50):
        text, tools = mismatched_request(r, subjects, 4)
        assert 1 <= len(tools) <= 4
        # none of the listed functions is of the subject the request asks about
        asked = [s for s in subjects if SUBJECTS[s][0] in text]
        assert asked and not any(t["name"] in _names_of(asked[0]) for t in tools)
    train, _ = mix
    plain = [e for e in train if e.call is None and e.tools is not None]
    assert plain and all(e.tools for e in plain)


def test_drawn_functions_are_seeded():
    a = [draw_function(random.Random(5), s).tool for s in SUBJECTS]
    b = [draw_function(random.Random(5), s).tool for s in SUBJECTS]
    assert a == b
