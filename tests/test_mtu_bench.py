"""MTU-Bench (the ASA paper's benchmark) read as labelled conversations, on its real lines.

The five shipped files are byte-exact copies of MTU-Bench-Team/MTU-Bench's
``MTU-Eval/benchmark/<subset>_eval.jsonl`` (data/README.md). Expected values below are
read off the upstream lines by hand.
"""

from __future__ import annotations

import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest

from asa_lib.data import mtu_bench as mtu

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "mtu_bench"
FILES = [DATA / f"{s}_eval.jsonl.xz" for s in mtu.SUBSETS]


@pytest.fixture(scope="module")
def result():
    return mtu.labelled_rows(FILES)


@pytest.fixture(scope="module")
def rows(result):
    return {r["id"]: r for r in result.rows}


def _upstream(subset: str, entry_id: str) -> dict:
    with lzma.open(DATA / f"{subset}_eval.jsonl.xz", "rt", encoding="utf-8") as f:
        for line in f:
            e = json.loads(line)
            if e["id"] == entry_id:
                return e
    raise KeyError(entry_id)


def test_rows_per_file_and_label_are_those_in_the_data_readme(result):
    assert mtu.counts(result) == [
        {"subset": "S-S", "label 1": 76, "label 0": 24},
        {"subset": "S-M", "label 1": 89, "label 0": 0},
        {"subset": "M-S", "label 1": 234, "label 0": 239},
        {"subset": "M-M", "label 1": 121, "label 0": 145},
        {"subset": "OOD", "label 1": 48, "label 0": 21},
    ]
    upstream = sum(len(lzma.decompress(f.read_bytes()).splitlines()) for f in FILES)
    assert upstream == 1009 and len(result.rows) + len(result.skipped) == upstream
    ids = [r["id"] for r in result.rows]  # upstream ids repeat (M-M, OOD): made unique
    assert len(set(ids)) == len(ids) and "M-M_19_0" not in ids
    assert len([i for i in ids if i.startswith("M-M_19_0@")]) == 2
    readme = (ROOT / "data" / "README.md").read_text()
    assert "| all | 997 | 568 | 429 | 12 |" in readme


def test_a_multi_turn_entry_is_the_dialogue_with_its_calls_and_results(rows):
    r = rows["M-S_0_2"]
    assert r["label"] == 1 and r["subset"] == "M-S" and r["domain"] == "all"
    upstream = _upstream("M-S", "M-S_0_2")["question"]
    assert r["messages"][0] == {
        "role": "system",
        "content": upstream[: upstream.index("The following is a list of APIs")].strip(),
    }
    observed = "{'album': 'My Everything', 'artist': 'Ariana Grande', 'genre': 'Pop', 'song_name': 'Be My Baby'}"
    assert r["messages"][1:] == [
        {"role": "user", "content": "Find some music please."},
        {
            "role": "assistant",
            "content": "The user has asked for a music recommendation without providing any "
            "specific details, so I will call the LookupMusic API without any filters.",
            "tool_calls": [
                {"type": "function", "function": {"name": "LookupMusic", "arguments": {}}}
            ],
        },
        {"role": "tool", "content": observed},
        {
            "role": "assistant",
            "content": "Ok, how about Be My Baby by Ariana Grande of her My Everything album?",
        },
        {"role": "user", "content": "That sounds good."},
        {
            "role": "assistant",
            "content": "The user seems happy with the recommendation but no further action is "
            "requested yet.",
        },
        {"role": "tool", "content": observed},
        {"role": "assistant", "content": "Should I play this now?"},
        {
            "role": "user",
            "content": "Yes. Play on any available device please. No wait. Play on kitchen "
            "speaker please. Yes, that's right.",
        },
    ]


def test_empty_answers_are_label_0_and_action_none_is_no_call(rows):
    assert _upstream("M-S", "M-S_23_0")["answer"] == {"": {}}
    assert rows["M-S_23_0"]["label"] == 0
    assert [m["role"] for m in rows["M-S_23_0"]["messages"]] == ["system", "user"]
    assert _upstream("M-M", "M-M_0_1")["answer"] == {}
    assert rows["M-M_0_1"]["label"] == 0
    assert rows["M-M_0_1"]["messages"][1:] == [  # "Action: {}" makes no call
        {
            "role": "user",
            "content": "Hey, could you help me with some temperature settings in my house?",
        },
        {
            "role": "assistant",
            "content": "Of course, how can I assist you with your temperature settings?",
        },
        {
            "role": "user",
            "content": "Can you tell me the current temperature in a particular room?",
        },
    ]


def test_apis_become_json_schema_tools_with_required_optional_and_defaults(rows):
    tools = {t["name"]: t for t in rows["S-S_0"]["tools"]}
    assert set(tools) == {"ReserveRestaurant", "FindRestaurants"}
    assert tools["ReserveRestaurant"] == {
        "name": "ReserveRestaurant",
        "description": "Reserve a table at a restaurant",
        "parameters": {
            "type": "object",
            "properties": {
                "restaurant_name": {},
                "city": {},
                "time": {},
                "date": {"default": "2019-03-01"},
                "party_size": {"default": "2"},
            },
            "required": ["restaurant_name", "city", "time"],
        },
    }
    # typed parameters as objects (M-M), float -> number
    temp = {t["name"]: t for t in rows["M-M_0_1"]["tools"]}["adjust_music_volume"]
    assert temp["parameters"]["properties"]["volume"]["type"] == "number"
    assert temp["parameters"]["required"] == ["volume"]


def test_entries_that_do_not_parse_are_skipped_with_file_line_and_reason(result):
    where = {(Path(s["file"]).name, s["line"]): s for s in result.skipped}
    assert len(where) == 12
    assert "an API is an object" in where[("S-S_eval.jsonl.xz", 18)]["reason"]
    assert "duplicate tool names" in where[("S-S_eval.jsonl.xz", 21)]["reason"]
    last = where[("OOD_eval.jsonl.xz", 7)]
    assert (
        last["field"] == "question.dialogue"
        and "last message is an assistant turn" in last["reason"]
    )


def test_the_shipped_rows_are_what_the_converter_writes(tmp_path):
    out = tmp_path / "mtu.jsonl.xz"
    proc = subprocess.run(
        [sys.executable, "-m", "asa_lib.data.mtu_bench", str(out), *map(str, FILES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 997 rows" in proc.stdout and "M-S: 234 label 1, 239 label 0" in proc.stdout
    shipped = ROOT / "data" / "mtu_bench.jsonl.xz"
    assert lzma.decompress(out.read_bytes()) == lzma.decompress(shipped.read_bytes())
    from asa_lib.data import read_labelled

    got = read_labelled(str(shipped), shipped)  # the data stage reads every row as a conversation
    assert len(got.rows) == 997 and not got.skipped and all(r.messages for r in got.rows)


def test_a_file_name_that_names_no_subset_is_one_line(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text("{}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "asa_lib.data.mtu_bench", str(tmp_path / "o.jsonl"), str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "cannot tell the MTU-Bench file from its name 'train.jsonl'" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("converter", ["bfcl", "mtu_bench"])
def test_lines_json_cannot_read_are_skipped_by_both_converters(tmp_path, converter):
    """The converters' one loop (convert.entries): a line too deep, or with an integer too
    long for Python's JSON reader (a plain ValueError, not a JSONDecodeError), is a counted
    skip with its line, never a crash; the good line after it is read."""
    from asa_lib.data import bfcl

    if converter == "bfcl":
        path, read = tmp_path / "BFCL_v4_irrelevance.json", bfcl.read_bfcl
        good = json.dumps(
            {
                "id": "irrelevance_0",
                "question": [[{"role": "user", "content": "Hi"}]],
                "function": [
                    {
                        "name": "f",
                        "description": "d",
                        "parameters": {"type": "dict", "properties": {}},
                    }
                ],
            }
        )
    else:
        path, read = tmp_path / "S-S_eval.jsonl", mtu.read_mtu_bench
        with lzma.open(FILES[0], "rt", encoding="utf-8") as f:
            good = f.readline().strip()
    path.write_text("\n".join(['{"id": "x", "n": ' + "9" * 5000 + "}", "[" * 100_000, good]) + "\n")
    result = read(path)
    assert [(s["line"], s["field"]) for s in result.skipped] == [(1, "line"), (2, "line")]
    assert (
        result.skipped[0]["reason"].startswith("not JSON")
        and "digits" in result.skipped[0]["reason"]
    )
    assert "deep" in result.skipped[1]["reason"] or "nest" in result.skipped[1]["reason"]
    assert len(result.rows) == 1


def test_the_shipped_sample_is_the_recipe_of_the_data_readme():
    import random

    with lzma.open(ROOT / "data" / "mtu_bench.jsonl.xz", "rt", encoding="utf-8") as f:
        rows = [json.loads(x) for x in f]
    rng = random.Random(0)
    pick = rng.sample([r for r in rows if r["label"] == 1], 60) + rng.sample(
        [r for r in rows if r["label"] == 0], 60
    )
    rng.shuffle(pick)
    sample = [r for r in pick if r["label"] == 1][:24] + [r for r in pick if r["label"] == 0][:24]
    random.Random(1).shuffle(sample)
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in sample)
    shipped = lzma.decompress((ROOT / "data" / "mtu_bench_sample48.jsonl.xz").read_bytes())
    assert shipped.decode("utf-8") == text
