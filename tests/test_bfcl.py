"""The BFCL reader (asa_lib/data/bfcl.py), on real lines of BFCL v4 (see fixtures/README.md)."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asa_lib.data import bfcl

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "bfcl_sample.jsonl"
DATA = HERE.parent / "data" / "bfcl"

# id -> raw line (no newline), exactly as upstream.
LINES: dict[str, str] = {
    json.loads(line)["id"]: line for line in FIXTURE.read_text(encoding="utf-8").splitlines()
}


def entry(entry_id: str) -> dict:
    return json.loads(LINES[entry_id])


def write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# --- type conversion -------------------------------------------------------


def test_type_map_is_documented_mapping():
    assert bfcl.BFCL_TYPE_MAP == {
        "dict": "object",
        "float": "number",
        "integer": "integer",
        "string": "string",
        "boolean": "boolean",
        "array": "array",
        "tuple": "array",
        "list": "array",
        "any": None,
    }


def test_tuple_of_float_becomes_array_of_number():
    fn = entry("simple_python_83")["function"][0]
    assert bfcl.convert_function(fn) == {
        "name": "calculate_distance",
        "description": "Calculate the distance between two GPS coordinates.",
        "parameters": {
            "type": "object",
            "properties": {
                "coord1": {
                    "type": "array",
                    "description": "The first coordinate as (latitude, longitude).",
                    "items": {"type": "number"},
                },
                "coord2": {
                    "type": "array",
                    "description": "The second coordinate as (latitude, longitude).",
                    "items": {"type": "number"},
                },
                "unit": {
                    "type": "string",
                    "description": "The unit of distance. Options: 'miles', 'kilometers'.",
                },
            },
            "required": ["coord1", "coord2", "unit"],
        },
    }


def test_any_has_no_type_constraint():
    fn = entry("simple_python_109")["function"][0]
    params = bfcl.convert_function(fn)["parameters"]
    assert params["properties"]["data"] == {"description": "The training data for the model."}
    assert params["properties"]["n_estimators"] == {
        "type": "integer",
        "description": "The number of trees in the forest.",
    }


def test_nested_dict_with_float_converted_exactly():
    fn = entry("irrelevance_238")["function"][0]
    point = {
        "type": "object",
        "properties": {
            "latitude": {
                "type": "number",
                "description": "Latitude of Point {p}. (Range from -90 to 90)",
            },
            "longitude": {
                "type": "number",
                "description": "Longitude of Point {p}. (Range from -180 to 180)",
            },
        },
        "required": ["latitude", "longitude"],
    }

    def for_point(p: str) -> dict:
        return json.loads(json.dumps(point).replace("{p}", p))

    assert bfcl.convert_function(fn) == {
        "name": "map_coordinates.distance_calculate",
        "description": "Calculate the straight-line distance between two points "
        "given their longitude and latitude.",
        "parameters": {
            "type": "object",
            "properties": {"pointA": for_point("A"), "pointB": for_point("B")},
            "required": ["pointA", "pointB"],
        },
    }


def test_optional_marker_dropped_and_required_untouched():
    fn = entry("irrelevance_173")["function"][0]
    params = bfcl.convert_function(fn)["parameters"]
    assert params["properties"]["num_chords"] == {
        "type": "integer",
        "description": "The number of top common chords to return.",
    }
    assert params["required"] == ["genre", "num_chords"]


def test_format_kept_and_every_function_converted():
    functions = entry("multiple_5")["function"]
    tools = [bfcl.convert_function(fn) for fn in functions]
    assert [t["name"] for t in tools] == [
        "weather.get_by_city_date",
        "weather.get_forecast_by_coordinates",
        "weather.get_by_coordinates_date",
    ]
    assert tools[0]["parameters"]["properties"]["date"]["format"] == "date"
    assert tools[1]["parameters"]["properties"]["coordinates"]["items"] == {"type": "number"}


def test_convert_function_does_not_modify_its_input():
    fn = entry("irrelevance_238")["function"][0]
    before = json.dumps(fn, sort_keys=True)
    bfcl.convert_function(fn)
    assert json.dumps(fn, sort_keys=True) == before


def test_unknown_type_raises_shape_error_with_field():
    fn = entry("simple_python_83")["function"][0]
    fn["parameters"]["properties"]["coord1"]["items"]["type"] = "HashMap"
    with pytest.raises(bfcl.BFCLShapeError) as info:
        bfcl.convert_function(fn)
    assert isinstance(info.value, ValueError)
    assert info.value.field == "parameters.properties.coord1.items.type"


def test_required_naming_missing_property_raises():
    fn = entry("simple_python_0")["function"][0]
    fn["parameters"]["required"].append("depth")
    with pytest.raises(bfcl.BFCLShapeError) as info:
        bfcl.convert_function(fn)
    assert info.value.field == "parameters.required"


# --- labels and rows --------------------------------------------------------


@pytest.mark.parametrize(
    "category, entry_id, label",
    [
        ("simple_python", "simple_python_0", 1),
        ("multiple", "multiple_5", 1),
        ("irrelevance", "irrelevance_0", 0),
    ],
)
def test_label_per_category(tmp_path, category, entry_id, label):
    path = write(tmp_path, f"BFCL_v4_{category}.json", [LINES[entry_id]])
    result = bfcl.read_bfcl(path)
    assert result.skipped == []
    [row] = result.rows
    assert set(row) == {"id", "text", "label", "tools", "category"}
    assert row["id"] == entry_id
    assert row["label"] == label
    assert row["category"] == category
    assert row["text"] == entry(entry_id)["question"][0][-1]["content"]
    assert len(row["tools"]) == len(entry(entry_id)["function"])


def test_category_argument_overrides_file_name():
    result = bfcl.read_bfcl(FIXTURE, category="irrelevance")
    assert [r["id"] for r in result.rows] == [
        "simple_python_0",
        "simple_python_83",
        "simple_python_109",
        "multiple_5",
        "irrelevance_0",
        "irrelevance_173",
        "irrelevance_238",
        "live_simple_256-137-0",
        "live_irrelevance_292-72-1",
        "live_irrelevance_527-162-2",
    ]
    assert {r["label"] for r in result.rows} == {0}
    assert [s["line"] for s in result.skipped] == [8]


def test_two_user_messages_in_a_turn_are_a_conversation_not_the_last_one(tmp_path):
    path = write(tmp_path, "BFCL_v4_irrelevance.json", [LINES["live_irrelevance_527-162-2"]])
    [row] = bfcl.read_bfcl(path).rows
    assert "text" not in row and [m["role"] for m in row["messages"]] == ["user", "user"]
    assert row["messages"][-1]["content"] == "My name is Sara , I am Daniel's Wife"


# --- skipped entries ---------------------------------------------------------


def test_a_turn_of_several_messages_is_a_conversation_and_several_turns_are_skipped(tmp_path):
    """#33: a system message or earlier user/assistant messages in the one turn make a row
    with ``messages`` (nothing of a message dropped); several turns are skipped."""
    ending_on_assistant = entry("live_irrelevance_292-72-1")
    ending_on_assistant["question"][0].append({"role": "assistant", "content": "Sure."})
    path = write(
        tmp_path,
        "BFCL_v4_irrelevance.json",
        [
            LINES["irrelevance_0"],
            LINES["multi_turn_miss_param_46"],  # two turns
            LINES["live_simple_256-137-0"],  # system message first
            LINES["live_irrelevance_292-72-1"],  # assistant message in the turn
            json.dumps(ending_on_assistant),
            LINES["irrelevance_173"],
        ],
    )
    result = bfcl.read_bfcl(path)
    ids = ["irrelevance_0", "live_simple_256-137-0", "live_irrelevance_292-72-1", "irrelevance_173"]
    assert [r["id"] for r in result.rows] == ids
    rows = {r["id"]: r for r in result.rows}
    assert "text" in rows["irrelevance_0"] and "messages" not in rows["irrelevance_0"]
    for i in ids[1:3]:  # the upstream turn, message for message
        want = [{"role": m["role"], "content": m["content"]} for m in entry(i)["question"][0]]
        assert rows[i]["messages"] == want and "text" not in rows[i]
    assert rows["live_simple_256-137-0"]["messages"][0]["role"] == "system"
    assert [m["role"] for m in rows["live_irrelevance_292-72-1"]["messages"]].count("assistant")
    assert [(s["line"], s["field"]) for s in result.skipped] == [
        (2, "question"),
        (5, "question[0]"),
    ]
    assert all(s["file"] == str(path) for s in result.skipped)
    assert "exactly one turn, got 2" in result.skipped[0]["reason"]
    assert "the last message is an assistant turn" in result.skipped[1]["reason"]


def test_non_json_and_non_object_lines_skipped(tmp_path):
    path = write(
        tmp_path,
        "BFCL_v4_simple_python.json",
        [
            LINES["simple_python_0"],
            '{"id": "simple_python_x", "question": [[',  # truncated line
            "[1, 2, 3]",
            "",  # blank lines are ignored, not recorded
            LINES["simple_python_83"],
        ],
    )
    result = bfcl.read_bfcl(path)
    assert [r["id"] for r in result.rows] == ["simple_python_0", "simple_python_83"]
    assert [(s["line"], s["field"]) for s in result.skipped] == [(2, "line"), (3, "line")]
    assert result.skipped[0]["reason"].startswith("not JSON")
    assert result.skipped[1]["reason"] == "not a JSON object: list"


def test_bad_content_and_functions_skipped(tmp_path):
    no_functions = entry("simple_python_0")
    no_functions["function"] = []
    list_content = entry("simple_python_0")
    list_content["question"][0][0]["content"] = ["Find the area"]
    bad_type = entry("multiple_5")
    bad_type["function"][2]["parameters"]["properties"]["date"]["type"] = "String"
    path = write(
        tmp_path,
        "BFCL_v4_multiple.json",
        [json.dumps(no_functions), json.dumps(list_content), json.dumps(bad_type)],
    )
    result = bfcl.read_bfcl(path)
    assert result.rows == []
    assert [(s["line"], s["field"]) for s in result.skipped] == [
        (1, "function"),
        (2, "question[0][0].content"),
        (3, "function[2].parameters.properties.date.type"),
    ]


# --- compression and categories --------------------------------------------


@pytest.mark.parametrize("opener, suffix", [(lzma.open, ".xz"), (gzip.open, ".gz")])
def test_compressed_file_reads_like_plain(tmp_path, opener, suffix):
    lines = [LINES["multiple_5"], LINES["simple_python_0"]]
    plain = write(tmp_path, "BFCL_v4_multiple.json", lines)
    packed = tmp_path / f"BFCL_v4_multiple.jsonl{suffix}"
    with opener(packed, "wb") as handle:
        handle.write("\n".join(lines).encode("utf-8"))
    assert bfcl.read_bfcl(packed).rows == bfcl.read_bfcl(plain).rows
    assert len(bfcl.read_bfcl(packed).rows) == 2


def test_unknown_category_refused(tmp_path):
    path = write(tmp_path, "BFCL_v4_multi_turn_base.json", [LINES["live_simple_256-137-0"]])
    with pytest.raises(ValueError, match="multi_turn_base") as info:
        bfcl.read_bfcl(path)
    assert "simple_python" in str(info.value) and "irrelevance" in str(info.value)

    with pytest.raises(ValueError, match="parallel"):
        bfcl.read_bfcl(FIXTURE, category="parallel")


def test_category_not_inferable_from_name():
    with pytest.raises(ValueError, match="cannot infer"):
        bfcl.read_bfcl(FIXTURE)


@pytest.mark.parametrize(
    "name, category",
    [
        ("BFCL_v4_simple_python.json", "simple_python"),
        ("bfcl_v4_multiple.json.xz", "multiple"),
        ("BFCL_v3_irrelevance.jsonl.gz", "irrelevance"),
    ],
)
def test_infer_category(name, category):
    assert bfcl.infer_category(name) == category


# --- the shipped files ---------------------------------------------------------

# Observed at gorilla commit 6ea57973c7a6097fd7c5915698c54c17c5b1b6c8.
SHIPPED = {
    "simple_python": (400, 1, "82dd63ba502eb2520c6b5d1d9a5c4b590e03ff261565175561f6228a367d1991"),
    "multiple": (200, 1, "aef168155ebd74b7ac2401198b201343bc7d16d7a3d7e0d4e6d8ee82c6969b2a"),
    "irrelevance": (240, 0, "2b6ed4c2e992cdcf5f1678a701851f944bef7550ee026ed1ddb89efed5be01a6"),
}


@pytest.mark.parametrize("category", sorted(SHIPPED))
def test_shipped_xz_files(category):
    n_rows, label, sha256 = SHIPPED[category]
    path = DATA / f"bfcl_v4_{category}.json.xz"
    raw = lzma.decompress(path.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == sha256

    result = bfcl.read_bfcl(path)
    assert len(result.rows) == n_rows
    assert result.skipped == []
    assert {r["label"] for r in result.rows} == {label}
    assert {r["category"] for r in result.rows} == {category}
    assert len({r["id"] for r in result.rows}) == n_rows
    assert [r["id"] for r in result.rows][:2] == [f"{category}_0", f"{category}_1"]


def test_the_shipped_relevance_set_is_what_the_converter_writes(tmp_path):
    files = [DATA / f"bfcl_v4_{c}.json.xz" for c in ("simple_python", "multiple", "irrelevance")]
    out = bfcl.write_labelled(tmp_path / "rel.jsonl.xz", files)
    shipped = HERE.parent / "data" / "bfcl_relevance.jsonl.xz"
    assert len(out.rows) == 840 and not out.skipped
    written = (tmp_path / "rel.jsonl.xz").read_bytes()
    assert lzma.decompress(shipped.read_bytes()) == lzma.decompress(written)
    rows = [json.loads(x) for x in lzma.decompress(shipped.read_bytes()).decode().splitlines()]
    assert len(rows) == 840 and {r["domain"] for r in rows} == {"all"}
    assert sum(r["label"] for r in rows) == 600  # simple_python + multiple


def test_bfcl_rows_read_as_labelled_rows_with_their_own_tools(tmp_path):
    from asa_lib import data
    from asa_lib.params import ColumnMap

    shipped = HERE.parent / "data" / "bfcl_relevance.jsonl.xz"
    got = data.read_labelled(str(shipped), shipped, ColumnMap())
    assert len(got.rows) == 840 and not got.skipped
    first = got.rows[0]
    assert first.tools == bfcl.read_bfcl(DATA / "bfcl_v4_simple_python.json.xz").rows[0]["tools"]


def test_all_of_bfcl_live_is_shipped_as_the_converter_writes_it_with_its_conversations(tmp_path):
    """#33: data/bfcl_live.jsonl.xz holds every usable entry of the four live files (label 1:
    live_simple, live_multiple, live_relevance; label 0: live_irrelevance), those whose turn
    has a system or earlier message as conversations."""
    cats = ("live_simple", "live_multiple", "live_relevance", "live_irrelevance")
    files = [DATA / f"bfcl_v4_{c}.json.xz" for c in cats]
    result = bfcl.write_labelled(tmp_path / "live.jsonl.xz", files)
    shipped = HERE.parent / "data" / "bfcl_live.jsonl.xz"
    assert lzma.decompress(shipped.read_bytes()) == lzma.decompress(
        (tmp_path / "live.jsonl.xz").read_bytes()
    )
    # every entry is a row but the 4 irrelevance entries that list no function
    upstream = sum(len(lzma.decompress(f.read_bytes()).splitlines()) for f in files)
    assert len(result.rows) == upstream - 4 == 2207
    assert {s["reason"] for s in result.skipped} == {"must be a non-empty list of functions"}
    per = {c: [r for r in result.rows if r["category"] == c] for c in cats}
    assert [len(per[c]) for c in cats] == [258, 1053, 16, 880]
    assert {r["label"] for c in cats[:3] for r in per[c]} == {1}
    assert {r["label"] for r in per["live_irrelevance"]} == {0}
    convos = [r for r in result.rows if "messages" in r]
    assert len(convos) == 99 and all(r["messages"][-1]["role"] == "user" for r in convos)
    from asa_lib import data
    from asa_lib.params import ColumnMap

    got = data.read_labelled(str(shipped), shipped, ColumnMap())  # the data stage reads them all
    assert len(got.rows) == 2207 and not got.skipped
    assert sum(r.messages is not None for r in got.rows) == 99


def test_the_shipped_live_set_is_a_seeded_sample_the_converter_writes(tmp_path):
    """data/bfcl_live_relevance.jsonl.xz (asa evaluate's transfer example): 60 rows of each file."""
    files = [DATA / f"bfcl_v4_{c}.json.xz" for c in ("live_simple", "live_irrelevance")]
    out = bfcl.write_labelled(
        tmp_path / "live.jsonl.xz", files, per_file=60, seed=0, max_chars=3000
    )
    shipped = HERE.parent / "data" / "bfcl_live_relevance.jsonl.xz"
    assert lzma.decompress(shipped.read_bytes()) == lzma.decompress(
        (tmp_path / "live.jsonl.xz").read_bytes()
    )
    rows = [json.loads(x) for x in lzma.decompress(shipped.read_bytes()).decode().splitlines()]
    assert len(rows) == 120 and sum(r["label"] for r in rows) == 60
    assert {r["category"] for r in rows} == {"live_simple", "live_irrelevance"}

    # a sample of the readable entries up to 3,000 characters (text + tools), in file order
    def chars(r):  # a plain loop of the rule: text (or the messages' contents) and tools JSON
        text = r["text"] if "text" in r else "".join(m["content"] for m in r["messages"])
        return len(text) + len(json.dumps(r["tools"]))

    assert max(chars(r) for r in rows) <= 3000 and sum("messages" in r for r in rows) == 4
    full = {c: [r["id"] for r in bfcl.read_bfcl(f).rows] for c, f in zip(("s", "i"), files)}
    ids = [r["id"] for r in rows]
    assert ids[:60] == [i for i in full["s"] if i in set(ids)]
    assert ids[60:] == [i for i in full["i"] if i in set(ids)]
    # since #33 entries with a system or assistant message are conversations; only the 4
    # irrelevance entries without functions are skipped
    assert [s["reason"] for s in out.skipped] == ["must be a non-empty list of functions"] * 4


# --- the converter's command: its output, its file-level errors (issue 31) ------

RT4 = HERE / "fixtures" / "redteam4"
U6 = RT4 / "u6_bfcl_converter_tracebacks"


def convert(*args, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m asa_lib.data.bfcl ARGS`` as a user runs it (this checkout's library)."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    return subprocess.run(
        [sys.executable, "-m", "asa_lib.data.bfcl", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(res: subprocess.CompletedProcess, msg: str, code: int = 2) -> str:
    err = res.stderr.strip()
    assert res.returncode == code, (res.returncode, err)
    assert err.startswith("asa: error:") and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and msg in err, err
    return err


def test_the_converter_never_overwrites_an_input_or_a_file_it_did_not_write(tmp_path):
    """b4: OUT forgotten (the first BFCL file taken as OUT), OUT one of the inputs, OUT some
    other file: refused, the file untouched; its own earlier output is written again."""
    for c in ("multiple", "simple_python"):
        shutil.copy(DATA / f"bfcl_v4_{c}.json.xz", tmp_path)
    multiple, simple = (
        tmp_path / "bfcl_v4_multiple.json.xz",
        tmp_path / "bfcl_v4_simple_python.json.xz",
    )
    mine = tmp_path / "notes.jsonl"
    mine.write_text('{"text": "my own rows", "label": 1, "domain": "x"}\n')
    before = {p: sha256(p) for p in (multiple, simple, mine)}
    for args, msg in [
        ((multiple.name, simple.name), "exists and is not a file the converter wrote"),
        ((simple.name, simple.name), "is one of the input files"),
        (("./" + multiple.name, multiple.name), "is one of the input files"),
        ((mine.name, simple.name), "exists and is not a file the converter wrote"),
    ]:
        one_line_error(convert(*args, cwd=tmp_path), msg)
        assert {p: sha256(p) for p in before} == before, args
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in before)
    # its own output, plain or xz, is written again (the README's command for the shipped set)
    for name in ("rows.jsonl", "rows.jsonl.xz"):
        for _ in range(2):
            res = convert(name, simple.name, cwd=tmp_path)
            assert res.returncode == 0 and f"wrote 400 rows to {name}; skipped 0" in res.stdout
        rows = bfcl.read_bfcl(simple).rows
        assert len(list(map(json.loads, read_text(tmp_path / name).splitlines()))) == len(rows)
    # an output named as another format than what is written (JSON Lines) is refused
    one_line_error(convert("rows.json", simple.name, cwd=tmp_path), "does not end in .jsonl")
    assert not (tmp_path / "rows.json").exists()


def read_text(path: Path) -> str:
    data = path.read_bytes()
    return (lzma.decompress(data) if path.suffix == ".xz" else data).decode("utf-8")


def test_file_level_converter_errors_are_one_line(tmp_path):
    """u6: seven file-level errors, each one line and a nonzero exit, nothing written."""
    src = U6 / "bfcl_v4_simple_python.json"
    trunc = tmp_path / "trunc" / "bfcl_v4_simple_python.json.xz"
    trunc.parent.mkdir()
    trunc.write_bytes(lzma.compress(src.read_bytes())[:-40])
    out = tmp_path / "out.jsonl"
    cases = [
        (("foo.json",), "cannot infer a BFCL category from file name 'foo.json'"),
        (("cat/bfcl_v4_multi_turn_base.json",), "unsupported BFCL category 'multi_turn_base'"),
        ((tmp_path / "bfcl_v4_multiple.json",), "bfcl_v4_multiple.json: no such file"),
        (
            ("fakegz/bfcl_v4_simple_python.json.gz",),
            "cannot be read, the compressed file is damaged or incomplete",
        ),
        ((trunc,), "cannot be read, the compressed file is damaged or incomplete"),
        ((src.name, "--per-file", "-1"), "--per-file: needs a whole number >= 1, got -1"),
    ]
    for args, msg in cases:
        one_line_error(convert(out, *args, cwd=U6), msg)
        assert not out.exists(), args
    missing = tmp_path / "no" / "such" / "dir" / "x.jsonl"
    one_line_error(convert(missing, src.name, cwd=U6), "no such folder")
    assert not (tmp_path / "no").exists()
    # the input is fine: the same command with a good OUT works
    res = convert(out, src.name, cwd=U6)
    assert res.returncode == 0 and "wrote 10 rows" in res.stdout, res.stderr


def test_an_entry_with_duplicate_function_names_is_skipped_and_counted(tmp_path):
    """u7: the converter skips what the data stage would drop later, saying why."""
    src = RT4 / "u7_bfcl_duplicate_tool_names_kept" / "bfcl_v4_simple_python.json"
    result = bfcl.read_bfcl(src)
    assert [r["id"] for r in result.rows] == [f"simple_python_{i}" for i in range(1, 5)]
    dup = ["calculate_triangle_area", "calculate_triangle_area"]
    assert result.skipped == [
        {
            "file": str(src),
            "line": 1,
            "field": "function",
            "reason": f"duplicate tool names in {dup}",
        }
    ]
    res = convert(tmp_path / "out.jsonl", src, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "wrote 4 rows" in res.stdout and "skipped 1" in res.stdout
    assert f"line 1, field function: duplicate tool names in {dup}" in res.stdout
    # every converted row is one the data stage keeps
    from asa_lib.data.labelled import read_labelled

    got = read_labelled(str(tmp_path / "out.jsonl"), tmp_path / "out.jsonl")
    assert len(got.rows) == 4 and not got.skipped
