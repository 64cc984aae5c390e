"""Bounded inputs (#23): YAML aliases and merge keys, data rows/bytes/domains, JSON nesting,
CSV headers and lines, and the data fingerprint's view of a path."""

from __future__ import annotations

import csv
import io
import json
import lzma
import sys
import warnings

import pytest
import yaml

from asa_lib.cli import main
from asa_lib.data.labelled import read_labelled
from asa_lib.data.sources import read_local_rows
from asa_lib.data.splits import DataError
from asa_lib.files import MAX_JSON_DEPTH, JSONDepthError, json_depth, loads_json
from asa_lib.params import MAX_YAML_VALUES, ParamsError, load_params
from conftest import PARAMS, ROOT


def tiny_dict():
    d = yaml.safe_load((PARAMS / "tiny.yaml").read_text())
    d["data"]["source"] = str(ROOT / "data" / "alpaca_subset.jsonl.xz")
    return d


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asa: error:") and "Traceback" not in err
    assert len(err.splitlines()) == 1
    return err


def alias_chain(levels: int) -> str:
    """A YAML flow list whose aliases expand to 10**levels strings ("billion laughs")."""
    chain = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    chain += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(chain) + "]"


def with_bomb(where: str, levels: int) -> str:
    """tiny.yaml with an alias bomb in a tool's schema or in the keyword domains."""
    text = yaml.safe_dump(tiny_dict(), sort_keys=False)
    bomb = alias_chain(levels)
    if where == "prompt.tools":
        i, j = text.index("  tools:"), text.index("  tool_call_start")
        tools = (
            "  tools:\n  - name: calculator\n    description: Evaluate.\n    parameters:\n"
            "      type: object\n      properties:\n        expression:\n"
            f"          type: string\n          examples: {bomb}\n"
        )
        return text[:i] + tools + text[j:]
    k = text.index("  per_split_per_class")
    return text[:k] + f"  domains:\n    a: {bomb}\n    b: [calc]\n" + text[k:]


# --------------------------------------------------------------------- YAML


@pytest.mark.parametrize("where", ["prompt.tools", "data.domains"])
def test_a_yaml_alias_bomb_is_refused_naming_the_limit(tmp_path, where):
    # 10**6 strings once expanded: the old loader accepted it (or formatted all of it).
    p = tmp_path / "p.yaml"
    p.write_text(with_bomb(where, 6))
    assert len(p.read_bytes()) < 2000
    with pytest.raises(ParamsError) as e:
        load_params(p)
    msg = str(e.value)
    assert f"more than {MAX_YAML_VALUES:,} values" in msg and "params.MAX_YAML_VALUES" in msg
    assert len(msg) < 300


@pytest.mark.parametrize("where", ["prompt.tools", "data.domains"])
@pytest.mark.parametrize("cmd", ["run", "generate"])
def test_a_billion_laughs_params_file_stops_run_and_generate_at_once(tmp_path, capsys, where, cmd):
    p = tmp_path / "p.yaml"
    p.write_text(with_bomb(where, 9))  # 10**9 strings: hung the old `asa run` / `asa generate`
    run_dir = tmp_path / "run"
    argv = (
        ["run", "--params", str(p), "--run-dir", str(run_dir)]
        if cmd == "run"
        else ["generate", "--params", str(p), "--adapter", str(tmp_path / "none"), "hi"]
    )
    err = one_line_error(capsys, argv)
    assert "params.MAX_YAML_VALUES" in err and not run_dir.exists()


def test_a_recursive_yaml_alias_is_refused(tmp_path, capsys):
    text = yaml.safe_dump(tiny_dict(), sort_keys=False).replace(
        "  tools:\n", "  tools: &t\n  - *t\n", 1
    )
    p = tmp_path / "p.yaml"
    p.write_text(text)
    err = one_line_error(capsys, ["run", "--params", str(p), "--run-dir", str(tmp_path / "r")])
    assert "recursive structure" in err


SWEEP_WITH_MERGE_KEYS = """
sweep:
  - &mild {name: mild, tau: 0.55, alpha: 0.5, beta: 0.0}
  - &strong {<<: *mild, name: strong, alpha: 2.0}
  - {<<: *strong, name: stronger, beta: 0.5}
  - {<<: [*mild, *strong], name: both, tau: 0.7}
"""


def test_yaml_merge_keys_are_accepted_with_yamls_precedence(tmp_path):
    d = tiny_dict()
    del d["sweep"]
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False) + SWEEP_WITH_MERGE_KEYS)
    got = {c.name: (c.tau, c.alpha, c.beta) for c in load_params(p).sweep}
    assert got == {
        "mild": (0.55, 0.5, 0.0),
        "strong": (0.55, 2.0, 0.0),  # its own alpha overrides the merged one
        "stronger": (0.55, 2.0, 0.5),  # a chained merge keeps strong's override
        "both": (0.7, 0.5, 0.0),  # of a merged list, the first mapping wins
    }


@pytest.mark.parametrize(
    "sweep, msg",
    [
        ("  - {name: a, tau: 0.6, alpha: 1, alpha: 2}\n", "duplicate key 'alpha'"),
        ("  - &a {name: a, tau: 0.6}\n  - {<<: *a, <<: *a, name: b}\n", "duplicate key '<<'"),
    ],
)
def test_a_key_given_twice_beside_merge_keys_is_still_an_error(tmp_path, capsys, sweep, msg):
    d = tiny_dict()
    del d["sweep"]
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False) + "sweep:\n" + sweep)
    err = one_line_error(capsys, ["run", "--params", str(p), "--run-dir", str(tmp_path / "r")])
    assert msg in err


# --------------------------------------------------------------------- data limits


def alpaca_jsonl(path, n, text="Calculate the cost of 3 items at 4 dollars each"):
    row = json.dumps({"instruction": text, "input": "", "output": "The result is 12."})
    data = ("\n".join([row] * n) + "\n").encode()
    path.write_bytes(lzma.compress(data) if path.name.endswith(".xz") else data)
    return path


def test_row_and_byte_limits_stop_a_local_file_naming_the_limit(tmp_path):
    p = alpaca_jsonl(tmp_path / "rows.jsonl", 51)
    assert len(read_local_rows(p, max_rows=51)) == 51
    with pytest.raises(DataError, match=r"rows.jsonl, line 51: more than 50 rows.*data\.max_rows"):
        read_local_rows(p, max_rows=50)
    size = p.stat().st_size
    assert len(read_local_rows(p, max_bytes=size)) == 51
    with pytest.raises(DataError, match=rf"more than {size - 1:,} bytes.*data\.max_bytes"):
        read_local_rows(p, max_bytes=size - 1)


def test_a_compressed_bomb_is_stopped_by_the_byte_limit_of_the_decompressed_data(tmp_path):
    p = alpaca_jsonl(tmp_path / "bomb.jsonl.xz", 200_000)  # about 20 MB of rows in a few KB
    assert p.stat().st_size < 100_000
    with pytest.raises(DataError) as e:
        read_local_rows(p, max_bytes=1_000_000)
    assert "more than 1,000,000 bytes of data (decompressed)" in str(e.value)
    assert "data.max_bytes (1000000)" in str(e.value) and str(p) in str(e.value)


def test_the_limits_are_params_fields_used_by_the_data_stage(params_file, tmp_path):
    from asa_lib.data import make_splits_from_params

    d = tiny_dict()
    alpaca_jsonl(tmp_path / "data" / "big.jsonl", 300)
    d["data"].update(source="data/big.jsonl", max_rows=299)
    with pytest.raises(DataError, match=r"data\.max_rows \(299\)"):
        make_splits_from_params(load_params(params_file(d)))
    d["data"].update(max_rows=1000, max_bytes=1000)
    with pytest.raises(DataError, match=r"data\.max_bytes \(1000\)"):
        make_splits_from_params(load_params(params_file(d)))
    p = load_params(params_file(tiny_dict()))
    assert (p.data.max_rows, p.data.max_bytes, p.data.max_domains) == (1_000_000, 2**28, 64)
    d["data"].update(max_bytes=0)
    with pytest.raises(ParamsError, match="data.max_bytes: must be > 0"):
        load_params(params_file(d))


def labelled_csv(path, rows, header=("text", "label", "domain")):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_a_labelled_file_is_read_within_the_limits(tmp_path):
    p = labelled_csv(tmp_path / "rows.csv", [("hi", 1, "a")] * 20)
    assert len(read_labelled(str(p), p, max_rows=20).rows) == 20
    with pytest.raises(DataError, match=r"rows.csv, line 22: more than 20 rows"):
        read_labelled(str(p), labelled_csv(p, [("hi", 1, "a")] * 21), max_rows=20)
    with pytest.raises(DataError, match=r"data\.max_bytes \(100\)"):
        read_labelled(str(p), p, max_bytes=100)
    j = tmp_path / "rows.json"
    j.write_text(json.dumps([{"text": "hi", "label": 1, "domain": "a"}] * 21))
    with pytest.raises(DataError, match=r"rows.json: more than 20 rows"):
        read_labelled(str(j), j, max_rows=20)


def test_more_keyword_domains_than_data_max_domains_is_one_line(tmp_path, capsys):
    d = tiny_dict()
    d["data"]["domains"] = {f"d{i}": [f"kw{i}"] for i in range(65)}  # the default limit is 64
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(d))
    err = one_line_error(capsys, ["run", "--params", str(p), "--run-dir", str(tmp_path / "r")])
    assert "data.domains: 65 domains, more than data.max_domains (64, the limit)" in err
    d["data"]["max_domains"] = 65
    p.write_text(yaml.safe_dump(d))
    assert len(load_params(p).data.domains) == 65


def test_labelled_rows_with_too_many_domains_stop_at_the_row_that_brings_one_too_many(tmp_path):
    rows = [(f"prompt {i}", i % 2, f"dom{i // 2}") for i in range(2 * 10_000)]
    p = labelled_csv(tmp_path / "rows.csv", rows)
    with pytest.raises(DataError) as e:
        read_labelled(str(p), p)  # the default limit, 64
    assert "rows.csv, line 130, field 'domain'" in str(e.value)
    assert "'dom64' is one domain more than data.max_domains (64, the limit)" in str(e.value)
    assert len(read_labelled(str(p), p, max_domains=10_000).rows) == 20_000


# --------------------------------------------------------------------- CSV


def test_a_duplicated_csv_column_is_refused_naming_it_and_the_file(tmp_path):
    p = labelled_csv(
        tmp_path / "rows.csv",
        [("the prompt", 1, "a", "not the prompt")],
        header=("text", "label", "domain", "text"),
    )
    with pytest.raises(DataError) as e:
        read_labelled(str(p), p)
    msg = str(e.value)
    assert msg.startswith(f"{p}, line 1 (header): column 'text' appears more than once")
    assert "columns 1 and 4" in msg and "\n" not in msg
    # empty names (trailing commas of a spreadsheet export) are not columns anyone maps
    q = labelled_csv(
        tmp_path / "ok.csv", [("hi", 1, "a", "", "")], header=("text", "label", "domain", "", "")
    )
    assert [r.text for r in read_labelled(str(q), q).rows] == ["hi"]


def test_a_200k_character_csv_field_is_read_and_lines_are_those_records_start_on(tmp_path):
    big = "word " * 40_000 + "\nsecond line\nthird line"  # 200k characters over 3 lines
    p = labelled_csv(
        tmp_path / "rows.csv",
        [("short", 1, "a"), (big, "maybe", "a"), ("fine", 0, "a"), ("bad", "perhaps", "a")],
    )
    limit = csv.field_size_limit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = read_labelled(str(p), p)
    assert csv.field_size_limit() == limit  # the csv module's global limit is put back
    assert [r.text for r in got.rows] == ["short", "fine"]
    # the 200k record starts on line 3 and ends on line 5; "bad" is on line 7
    assert [e["where"] for e in got.skipped_examples] == [f"{p}, line 3", f"{p}, line 7"]
    big_ok = labelled_csv(tmp_path / "big.csv", [(big, 1, "a")])
    assert read_labelled(str(big_ok), big_ok).rows[0].text == big


def test_a_csv_field_past_the_byte_limit_names_the_limit(tmp_path):
    p = labelled_csv(tmp_path / "rows.csv", [("short", 1, "a"), ("x" * 200_000, 1, "a")])
    with pytest.raises(DataError, match=r"data\.max_bytes \(100000\)"):
        read_labelled(str(p), p, max_bytes=100_000)


# --------------------------------------------------------------------- JSON nesting


def deep(n: int) -> str:
    return "[" * n + "]" * n


def test_loads_json_caps_nesting_and_ignores_brackets_in_strings():
    assert loads_json(deep(MAX_JSON_DEPTH)) is not None
    with pytest.raises(JSONDepthError, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        loads_json(deep(MAX_JSON_DEPTH + 1))
    with pytest.raises(JSONDepthError):
        loads_json(deep(100_000))  # json.loads: RecursionError
    text = json.dumps({"a": "[[[{{{" * 100, "b": ['"]]]\\', {"c": []}]})
    assert json_depth(text) == 4 and loads_json(text)["b"][1] == {"c": []}


def test_a_deeply_nested_jsonl_line_is_skipped_and_counted_naming_the_limit(tmp_path):
    good = json.dumps({"instruction": "Calculate 2+2", "input": "", "output": "4"})
    p = tmp_path / "rows.jsonl"
    p.write_text(f"{good}\n{deep(50_000)}\n{good}\n")
    skipped = {}
    rows = read_local_rows(p, skipped)
    assert rows[1] is None and rows[0] == rows[2]
    assert skipped == {f"JSON nested deeper than {MAX_JSON_DEPTH} levels": 1}
    q = tmp_path / "labelled.jsonl"
    q.write_text(json.dumps({"text": "hi", "label": 1, "domain": "a"}) + "\n" + deep(50_000) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = read_labelled(str(q), q)
    assert len(got.rows) == 1
    assert got.skipped == {f"JSON nested deeper than {MAX_JSON_DEPTH} levels": 1}


def test_a_deeply_nested_json_data_file_is_one_data_error(tmp_path):
    p = tmp_path / "rows.json"
    p.write_text(deep(50_000))
    for read in (read_local_rows, lambda p: read_labelled(str(p), p)):
        with pytest.raises(DataError, match=f"rows.json: JSON nested deeper than {MAX_JSON_DEPTH}"):
            read(p)


def test_a_deeply_nested_adapter_json_is_a_bundle_error(tmp_path):
    from asa_lib.method.bundle import BundleError, load_bundle

    (tmp_path / "adapter.json").write_text('{"format": ' + deep(50_000) + "}")
    (tmp_path / "adapter.safetensors").write_bytes(b"not read")
    with pytest.raises(BundleError, match=f"adapter.json: .*deeper than {MAX_JSON_DEPTH} levels"):
        load_bundle(tmp_path)


def test_a_deeply_nested_lora_training_record_is_a_value_error_naming_it(tmp_path):
    import torch

    from asa_lib.model.lora import ADAPTER_FILE, RECORD_FILE, merge_adapter

    (tmp_path / ADAPTER_FILE).write_bytes(b"weights")
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / RECORD_FILE).write_text(deep(50_000))
    with pytest.raises(ValueError, match=f"{RECORD_FILE}: JSON nested deeper than"):
        merge_adapter(torch.nn.Linear(1, 1), tmp_path)


def test_a_deeply_nested_bfcl_line_is_skipped_with_its_line(tmp_path):
    from asa_lib.data.bfcl import read_bfcl

    p = tmp_path / "BFCL_v4_irrelevance.json"
    p.write_text(deep(50_000) + "\n")
    got = read_bfcl(p)
    assert got.rows == [] and got.skipped[0]["line"] == 1
    assert f"deeper than {MAX_JSON_DEPTH} levels" in got.skipped[0]["reason"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_params):
    from helpers_online import write_adapter

    from asa_lib.model.load import load_params_model

    tmp = tmp_path_factory.mktemp("limits")
    d = tiny_dict()
    params = tmp / "tiny.yaml"
    params.write_text(yaml.safe_dump(d, sort_keys=False))
    folder, _, _ = write_adapter(tmp / "run", load_params_model(tiny_params), tiny_params)
    return {"params": str(params), "adapter": str(folder)}


def test_a_deeply_nested_jsonl_request_on_stdin_is_one_line_naming_the_limit(
    adapter, capsys, monkeypatch
):
    monkeypatch.setattr(
        sys, "stdin", io.StringIO('{"text": "hi", "tools": ' + deep(50_000) + "}\n")
    )
    argv = ["generate", "--adapter", adapter["adapter"], "--params", adapter["params"], "--jsonl"]
    err = one_line_error(capsys, argv)
    assert f"stdin, request 1: JSON nested deeper than {MAX_JSON_DEPTH} levels" in err


# --------------------------------------------------------------------- where the data is


def fingerprint_01(params_path, tmp_path):
    from asa_lib.run import runner

    return runner.plan(load_params(params_path), params_path, tmp_path / "run")[0].fingerprint


def test_the_same_data_file_by_two_paths_has_one_fingerprint(params_file, tmp_path):
    d = tiny_dict()
    (tmp_path / "link.jsonl.xz").symlink_to(tmp_path / "data" / "alpaca_subset.jsonl.xz")
    prints = set()
    for source in (
        "data/alpaca_subset.jsonl.xz",
        "./data/../data/alpaca_subset.jsonl.xz",
        str(tmp_path / "data" / ".." / "data" / "alpaca_subset.jsonl.xz"),
        "link.jsonl.xz",
    ):
        d["data"]["source"] = source
        prints.add(fingerprint_01(params_file(d), tmp_path))
    assert len(prints) == 1
    other = tmp_path / "data" / "other.jsonl"
    alpaca_jsonl(other, 10)
    d["data"]["source"] = "data/other.jsonl"
    assert fingerprint_01(params_file(d), tmp_path) not in prints


def test_a_data_source_that_names_a_local_folder_is_refused(
    params_file, tmp_path, capsys, monkeypatch
):
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "part.jsonl").write_text("{}\n")
    d = tiny_dict()
    for source, msg in [
        ("rows", "data.source: 'rows' names the local folder"),  # not a hub id: beside the params
        ("./rows", "is a folder, not a data file"),
    ]:
        d["data"]["source"] = source
        p = params_file(d)
        err = one_line_error(capsys, ["run", "--params", str(p), "--run-dir", str(tmp_path / "r")])
        assert msg in err and str(tmp_path / "rows") in err
    # a folder where datasets.load_dataset would look (the working directory) is refused too
    elsewhere = tmp_path / "cwd"
    (elsewhere / "org" / "set").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    d["data"]["source"] = "org/set"
    with pytest.raises(ParamsError, match="'org/set' names the local folder"):
        load_params(params_file(d))


def test_a_hub_id_that_names_nothing_local_is_still_a_hub_id(params_file):
    d = tiny_dict()
    d["data"]["source"] = "some-org/some-set"
    p = load_params(params_file(d))
    assert p.data_path() is None


# ------------------------------------------------------------ a byte-order mark (issue 31)

BOM_ROWS = ROOT / "tests" / "fixtures" / "redteam4" / "u1_jsonl_bom_first_row_dropped" / "bom.jsonl"


def test_a_utf8_byte_order_mark_does_not_cost_the_first_row(params_file, tmp_path):
    """u1: JSONL (and JSON) files starting with a UTF-8 BOM are read whole, as CSV files are,
    by ``asa run``'s data stage (both kinds), ``asa evaluate`` and the BFCL reader."""
    from asa_lib.data import make_splits_from_params
    from asa_lib.data.bfcl import read_bfcl
    from asa_lib.run.evaluate import read_eval_data

    assert BOM_ROWS.read_bytes().startswith(b"\xef\xbb\xbf{")
    n = len(BOM_ROWS.read_text(encoding="utf-8-sig").splitlines())  # 12
    d = tiny_dict()
    d["data"] = {
        "kind": "labelled",
        "source": str(BOM_ROWS),
        "per_split_per_class": 1,
        "test_multiplier": 1,
        "seed": 42,
    }
    params = load_params(params_file(d))
    got = make_splits_from_params(params)  # asa run, stage 01
    assert got.rows_read == n and got.skipped == {}
    ds, _ = read_eval_data(params, str(BOM_ROWS))  # asa evaluate
    assert ds.rows_read == n and len(ds.samples) == n and ds.skipped == {}
    assert ds.samples[0].id == "irrelevance_86"
    # alpaca_keywords rows, JSONL (also .xz) and a JSON list
    bom = b"\xef\xbb\xbf"
    row = {"instruction": "Calculate 2 + 2", "input": "", "output": "4"}
    lines = (json.dumps(row) + "\n").encode() * 3
    for name, data in [
        ("a.jsonl", bom + lines),
        ("a.jsonl.xz", lzma.compress(bom + lines)),
        ("a.json", bom + json.dumps([row] * 3).encode()),
    ]:
        skipped: dict[str, int] = {}
        (tmp_path / name).write_bytes(data)
        assert read_local_rows(tmp_path / name, skipped) == [row] * 3 and skipped == {}, name
    # a BFCL file saved with a BOM keeps its first entry
    entry = {
        "id": "simple_python_0",
        "question": [[{"role": "user", "content": "Find the area of a triangle."}]],
        "function": [{"name": "area", "description": "", "parameters": {"type": "dict"}}],
    }
    path = tmp_path / "BFCL_v4_simple_python.json"
    path.write_bytes(bom + json.dumps(entry).encode() + b"\n")
    res = read_bfcl(path)
    assert [r["id"] for r in res.rows] == ["simple_python_0"] and res.skipped == []
