"""Bring your own data (#15): keyword domains from params, labelled rows, column mapping, errors."""

import csv
import gzip
import json
import lzma
import warnings

import pytest
import yaml

from asa_lib import data
from asa_lib.data.alpaca import build_splits, classify
from asa_lib.data.labelled import build_labelled_splits, parse_label, read_labelled
from asa_lib.data.splits import DataError
from asa_lib.demo.example_data import labelled_example_rows
from asa_lib.params import ColumnMap, ParamsError, load_params, params_from_dict
from asa_lib.seed import SEED_DOMAINS
from conftest import PARAMS, ROOT


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


def alpaca_rows(n=6000):
    with lzma.open(ROOT / "data" / "alpaca_subset.jsonl.xz", "rt") as f:
        return [json.loads(line) for line in f][:n]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def labelled_rows(n=10, domains=("weather", "calendar", "none"), split=None):
    """``n`` rows per domain x class, labels in several accepted spellings."""
    spellings = [(1, 0), ("tool", "non_tool"), (True, False), ("1", "0"), ("TRUE", "false")]
    rows = []
    for i in range(n):
        for d in domains:
            t, f = spellings[i % len(spellings)]
            rows.append({"text": f"{d} request {i} that needs a tool", "label": t, "domain": d})
            rows.append({"text": f"{d} request {i} that needs none", "label": f, "domain": d})
    if split is not None:
        for i, r in enumerate(rows):
            r["split"] = split(i, r)
    return rows


# ----------------------------------------------------------------------------- keyword domains


def test_keyword_domains_from_params_replace_the_seed_names():
    kw = {"money": ("calculate", "percentage"), "programs": ("write a program", "function")}
    assert classify("Calculate a function", kw) == "money"  # first match wins, in the given order
    assert classify("Calculate a function", dict(reversed(kw.items()))) == "programs"
    assert classify("Translate this", kw) is None
    res = quiet(build_splits, alpaca_rows(), 2, 2, 42, domains=kw)
    assert res.domains == ["money", "programs"] and list(res.bucket_sizes) == ["money", "programs"]
    assert {x.domain for xs in res.samples.values() for x in xs} == {"money", "programs"}
    assert {r["domain"] for r in res.counts()} == {"money", "programs"}


def test_renamed_seed_domains_select_the_same_prompts_as_the_seed():
    rows = alpaca_rows()
    renamed = {f"d_{name}": tuple(kws) for name, kws in SEED_DOMAINS.items()}
    seed = quiet(build_splits, rows, 10, 2, 42)
    mine = quiet(build_splits, rows, 10, 2, 42, domains=renamed)
    for s in data.SPLITS:
        assert [(x.idx, "d_" + x.domain, x.label) for x in seed.samples[s]] == [
            (x.idx, x.domain, x.label) for x in mine.samples[s]
        ]


def test_keyword_domains_in_params_are_ordered_and_case_insensitive(params_file):
    d = {
        "name": "t",
        "model": {"kind": "tiny"},
        "data": {
            "source": "data/alpaca_subset.jsonl.xz",
            "per_split_per_class": 2,
            "domains": {"numbers": ["Calculate", "SUM"], "words": ["translate", "poem"]},
        },
    }
    p = load_params(params_file(d))
    assert list(p.data.domains) == ["numbers", "words"]
    assert p.data.keyword_domains() == {
        "numbers": ("calculate", "sum"),
        "words": ("translate", "poem"),
    }
    res = quiet(data.make_splits_from_params, p)
    assert res.domains == ["numbers", "words"] and res.samples["cal"]
    assert "columns" not in p.to_dict()["data"]  # only what this kind reads
    default = load_params(PARAMS / "tiny.yaml")
    assert default.data.kind == "alpaca_keywords" and default.data.domains == SEED_DOMAINS
    assert list(default.data.domains) == ["math", "code", "search", "translation"]


@pytest.mark.parametrize(
    "data_changes, msg",
    [
        ({"kind": "tsv"}, "data.kind: 'tsv' is not one of"),
        ({"domains": {"only": ["x"]}}, "data.domains: at least two domains are required"),
        (
            {"domains": {"a": ["x"], "b": "y"}},
            "data.domains.b: expected a non-empty list of keywords",
        ),
        ({"domains": {"a": ["x"], "b": []}}, "data.domains.b: expected a non-empty list"),
        (
            {"domains": {"a": ["x"], "b": ["y", 3]}},
            "data.domains.b[1]: expected a non-empty string, got 3",
        ),
        ({"domains": {"a": ["x"], "global": ["y"]}}, "data.domains.global: 'global' is reserved"),
        (
            {"domains": {"a": ["x"], True: ["y"]}},
            "data.domains: domain names must be non-empty strings",
        ),
        ({"domains": ["a", "b"]}, "data.domains: expected a mapping"),
        ({"columns": {"text": "prompt"}}, "data.columns: only data.kind 'labelled' reads columns"),
        ({"columns": {"txt": "prompt"}}, "data.columns.txt: unknown key"),
        ({"source": "data/rows.csv"}, "data.source: 'rows.csv' is not a file type"),
        (
            {"kind": "labelled", "domains": {"a": ["x"], "b": ["y"]}},
            "data.domains: keyword domains apply to data.kind 'alpaca_keywords' only",
        ),
        (
            {"kind": "labelled", "columns": {"text": ""}},
            "data.columns.text: a column name is required",
        ),
        (
            {"kind": "labelled", "columns": {"label": "text"}},
            "data.columns.label: column 'text' is already mapped to data.columns.text",
        ),
    ],
)
def test_bad_data_params_name_the_key(data_changes, msg):
    d = {"name": "t", "model": {"kind": "tiny"}, "data": {"source": "data/alpaca_subset.jsonl.xz"}}
    d["data"].update(data_changes)
    with pytest.raises(ParamsError) as e:
        params_from_dict(d, check_files=False)
    assert msg in str(e.value)


def test_a_yaml_boolean_domain_name_is_caught(params_file):
    text = (
        "name: t\nmodel: {kind: tiny}\ndata:\n  source: data/alpaca_subset.jsonl.xz\n"
        "  domains:\n    yes: [calculate]\n    other: [translate]\n"
    )
    with pytest.raises(ParamsError, match="quote names such as yes/no"):
        load_params(params_file(text))


# ----------------------------------------------------------------------------- labels and rows


@pytest.mark.parametrize(
    "value, expected",
    [
        (1, 1),
        (0, 0),
        (True, 1),
        (False, 0),
        ("1", 1),
        ("0", 0),
        ("true", 1),
        ("False", 0),
        (" TRUE ", 1),
        ("tool", 1),
        ("non_tool", 0),
        ("Non-Tool", 0),
        ("TOOL", 1),
        (1.0, 1),
        (0.0, 0),
        (2, None),
        (-1, None),
        (0.5, None),
        ("yes", None),
        ("", None),
        (None, None),
        ("tools", None),
        ([1], None),
    ],
)
def test_parse_label(value, expected):
    assert parse_label(value) == expected


def test_bad_rows_are_skipped_counted_and_located(tmp_path):
    rows = [json.dumps(r) for r in labelled_rows(5)]
    bad = [
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"label": 1, "domain": "weather"}),
        json.dumps({"text": "   ", "label": 1, "domain": "weather"}),
        json.dumps({"text": "Will it rain?", "label": "maybe", "domain": "weather"}),
        json.dumps({"text": "Will it snow?", "label": 2, "domain": "weather"}),
        json.dumps({"text": "Any plans?", "label": 0, "domain": "  "}),
        json.dumps({"text": "Any plans?", "label": 0}),
    ]
    lines = bad[:4] + rows[:7] + [""] + bad[4:] + rows[7:]
    path = write_jsonl(tmp_path / "rows.jsonl", lines)
    got = read_labelled(str(path), path)
    assert got.skipped == {
        "invalid JSON line": 1,
        "not an object": 1,
        "missing text": 2,
        "unknown label": 2,
        "empty domain": 2,
    }
    assert len(got.rows) == len(rows) == got.rows_read - len(bad)
    ex = {(e["reason"], e["where"], e["field"], e["value"]) for e in got.skipped_examples}
    # line numbers are the file's, blank line included
    assert ("unknown label", f"{path}, line 13", "label", "'maybe'") in ex
    assert ("unknown label", f"{path}, line 14", "label", "2") in ex
    assert ("missing text", f"{path}, line 3", "text", "None") in ex
    assert ("empty domain", f"{path}, line 16", "domain", "None") in ex
    assert ("invalid JSON line", f"{path}, line 1", "", "") in ex
    # ids are positions among the records, so they point at their own row
    records = [line for line in lines if line.strip()]
    for r in got.rows:
        assert json.loads(records[r.idx])["text"] == r.text and r.id == f"r{r.idx}"
    with pytest.warns(
        UserWarning, match=r"skipped 8 of .* line 13, field 'label' \(column 'label'\) = 'maybe'"
    ):
        res = build_labelled_splits(got, 1, 2, 42)
    assert res.skipped == got.skipped and res.kind == "labelled"


def test_labels_in_every_spelling_reach_the_samples(tmp_path):
    rows = labelled_rows(5)
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    got = read_labelled(str(path), path)
    assert not got.skipped
    assert [r.label for r in got.rows] == [1 if "needs a tool" in r["text"] else 0 for r in rows]


def test_csv_with_mapped_columns_and_compressed_files_give_the_same_rows(tmp_path):
    rows = labelled_rows(5)
    cols = ColumnMap(text="prompt", label="needs_tool", domain="category", id="uid")
    header = ["uid", "category", "prompt", "needs_tool", "other"]
    csv_path = tmp_path / "rows.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, r in enumerate(rows):
            w.writerow([f"u{i}", r["domain"], r["text"] + ', with "quotes"', str(r["label"]), "x"])
    gz = tmp_path / "rows.csv.gz"
    gz.write_bytes(gzip.compress(csv_path.read_bytes()))
    mapped = [
        {
            "prompt": r["text"] + ', with "quotes"',
            "needs_tool": r["label"],
            "category": r["domain"],
            "uid": f"u{i}",
        }
        for i, r in enumerate(rows)
    ]
    xz = tmp_path / "rows.jsonl.xz"
    xz.write_bytes(lzma.compress("".join(json.dumps(r) + "\n" for r in mapped).encode()))
    results = [read_labelled(str(p), p, cols) for p in (csv_path, gz, xz)]
    for got in results:
        assert not got.skipped and got.id_column == "uid" and not got.split_column
        assert [(r.id, r.text, r.label, r.domain) for r in got.rows] == [
            (
                f"u{i}",
                r["text"] + ', with "quotes"',
                1 if "needs a tool" in r["text"] else 0,
                r["domain"],
            )
            for i, r in enumerate(rows)
        ]
    assert results[0].rows[2].where == f"{csv_path}, line 4"  # the header is line 1


def test_a_csv_with_a_byte_order_mark_keeps_its_first_column_name(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(
        "\ufefftext,label,domain\nWill it rain?,TRUE,weather\nA poem,FALSE,none\n".encode()
    )
    got = read_labelled(str(path), path)
    assert [(r.text, r.label, r.domain) for r in got.rows] == [
        ("Will it rain?", 1, "weather"),
        ("A poem", 0, "none"),
    ]


def test_without_a_split_column_the_seed_protocol_is_applied():
    """Alpaca rows labelled by the seed's rule, read as labelled data, split exactly as the seed."""
    rows = alpaca_rows()
    lab = []
    for r in rows:
        reason = data.check_row(r)
        text = data.prompt_text(r) if reason is None else ""
        dom = classify(text) if text else None
        lab.append(
            {
                "text": text,
                "domain": dom or "",
                "label": data.label_for(dom, r["output"]) if dom else "tool",
            }
        )
    first_seen = list(dict.fromkeys(x["domain"] for x in lab if x["domain"]))
    assert first_seen == list(SEED_DOMAINS)  # so the bucket order is the seed's
    got = data.LabelledData(rows=[], origin="mem")
    for i, x in enumerate(lab):  # what read_labelled makes of them (rows without a domain skipped)
        if x["domain"]:
            got.rows.append(
                data.LabelledRow(
                    i, f"r{i}", x["text"], parse_label(x["label"]), x["domain"], None, f"row {i}"
                )
            )
    seed = quiet(build_splits, rows, 10, 2, 42)
    mine = quiet(build_labelled_splits, got, 10, 2, 42)
    for s in data.SPLITS:
        assert [(x.id, x.idx, x.domain, x.label, x.text) for x in seed.samples[s]] == [
            (x.id, x.idx, x.domain, x.label, x.text) for x in mine.samples[s]
        ]
    assert seed.shortfalls == mine.shortfalls and seed.bucket_sizes == mine.bucket_sizes


def test_the_same_file_through_read_labelled_and_make_splits(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", labelled_rows(12))
    p = params_from_dict(
        {
            "name": "t",
            "model": {"kind": "tiny"},
            "data": {"kind": "labelled", "source": str(path), "per_split_per_class": 2},
        }
    )
    res = data.make_splits_from_params(p)
    assert res.domains == ["weather", "calendar", "none"] and not res.shortfalls
    assert {s: len(xs) for s, xs in res.samples.items()} == {
        "cal": 12,
        "train": 12,
        "valid": 12,
        "test": 24,
    }
    for s, xs in res.samples.items():
        for d in res.domains:
            assert sum(x.domain == d and x.label == 1 for x in xs) == (4 if s == "test" else 2)
    ids = [x.id for xs in res.samples.values() for x in xs]
    assert len(set(ids)) == len(ids)
    assert "domains" not in p.to_dict()["data"] and p.to_dict()["data"]["columns"]["text"] == "text"
    data.write_splits(tmp_path / "run", res)
    summary = json.loads((tmp_path / "run" / "data" / "summary.json").read_text())
    assert summary["kind"] == "labelled" and summary["domains"] == ["weather", "calendar", "none"]
    assert data.read_domains(tmp_path / "run") == ["weather", "calendar", "none"]


def test_a_split_column_is_respected(tmp_path):
    names = ["cal", "TRAIN", " validation ", "test", "test"]
    rows = labelled_rows(5, split=lambda i, r: names[(i // 6) % 5])
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    got = read_labelled(str(path), path)
    assert got.split_column == "split"
    res = build_labelled_splits(
        got, per_split_per_class=40, test_multiplier=2, seed=1
    )  # sizes do not apply
    norm = {"cal": "cal", "TRAIN": "train", " validation ": "valid", "test": "test"}
    for s in data.SPLITS:
        assert [x.text for x in res.samples[s]] == [
            r["text"] for r in rows if norm[r["split"]] == s
        ]
    assert not res.shortfalls and res.split_column == "split"


def test_a_split_without_a_class_is_an_error_with_a_split_column(tmp_path):
    rows = labelled_rows(4, split=lambda i, r: ["cal", "train", "valid", "test"][(i // 6) % 4])
    rows = [r for r in rows if not (r["split"] == "valid" and "needs a tool" in r["text"])]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match="split 'valid' has no tool example.*split column"):
        build_labelled_splits(read_labelled(str(path), path))


def test_one_domain_for_every_row_makes_splits_without_a_router(tmp_path):
    rows = labelled_rows(8, domains=("weather",))
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    res = build_labelled_splits(read_labelled(str(path), path), 1, 1, 0)
    assert res.domains == ["weather"]
    assert {x.domain for xs in res.samples.values() for x in xs} == {"weather"}


def test_train_with_one_domain_of_several_is_an_error(tmp_path):
    splits = ["cal", "train", "valid", "test"]
    rows = labelled_rows(
        8,
        domains=("weather", "calendar"),
        split=lambda i, r: "test" if r["domain"] == "calendar" else splits[(i // 4) % 4],
    )
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(
        DataError, match=r"rows of 1 domain\(s\) \['weather'\] of \['weather', 'calendar'\]"
    ):
        build_labelled_splits(read_labelled(str(path), path))


# ----------------------------------------------------------------------------- errors name file, row, field


def test_a_missing_column_names_the_file_the_header_and_the_field(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("prompt,label,domain\nWill it rain?,1,weather\n")
    with pytest.raises(DataError) as e:
        read_labelled(str(path), path)
    assert str(e.value).startswith(f"{path}, line 1 (header), field 'text': no column 'text'")
    assert "data.columns.text" in str(e.value) and "'prompt'" in str(e.value)
    jl = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a", "label": 1, "category": "x"}])
    with pytest.raises(
        DataError, match=rf"{jl}, line 1, field 'domain': no column 'domain' .*no row has it"
    ):
        read_labelled(str(jl), jl)
    # an optional column named explicitly must exist; the default name may be absent
    with pytest.raises(DataError, match=r"field 'split': no column 'fold'"):
        read_labelled(str(jl), jl, ColumnMap(domain="category", split="fold"))
    assert read_labelled(str(jl), jl, ColumnMap(domain="category")).split_column == ""


@pytest.mark.parametrize(
    "bad, where, field, msg",
    [
        ({"id": "weather-1"}, "line 3", "id", "duplicate id 'weather-1' (first at {path}, line 2)"),
        ({"id": ""}, "line 3", "id", "'' is not a usable id"),
        ({"split": "dev2"}, "line 3", "split", "'dev2' is not one of cal, train, valid, test"),
        ({"split": None}, "line 3", "split", "None is not one of"),
        ({"domain": "global"}, "line 3", "domain", "'global' is reserved"),
    ],
)
def test_row_errors_name_the_file_the_row_and_the_field(tmp_path, bad, where, field, msg):
    rows = [
        {
            "id": f"weather-{i}",
            "text": f"Will it rain {i}?",
            "label": 1,
            "domain": "weather",
            "split": "cal",
        }
        for i in range(4)
    ]
    rows[2].update(bad)
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError) as e:
        read_labelled(str(path), path)
    col = {"id": "id", "split": "split", "domain": "domain"}[field]
    assert str(e.value).startswith(f"{path}, {where}, field '{field}' (column '{col}'): ")
    assert msg.format(path=path) in str(e.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_labelled("x.jsonl", tmp_path / "x.jsonl")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=f"{empty}: the file is empty"):
        read_labelled(str(empty), empty)
    nothing = write_jsonl(tmp_path / "bad.jsonl", [{"text": "", "label": 1, "domain": "a"}])
    with pytest.raises(DataError, match=f"{nothing}: no usable rows \\(1 read; skipped"):
        quiet(build_labelled_splits, read_labelled(str(nothing), nothing))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label,domain\ncaf\xe9,1,a\n".encode("latin-1"))
    with pytest.raises(DataError, match=f"{latin}: not UTF-8"):
        read_labelled(str(latin), latin)


# ----------------------------------------------------------------------------- hub datasets


def test_hub_dataset_with_a_column_mapping_and_class_labels(monkeypatch):
    import datasets

    rows = labelled_rows(4)
    # ClassLabel names in the "wrong" order: index 0 is tool, so the names must be used, not the ints
    features = datasets.Features(
        {
            "question": datasets.Value("string"),
            "needs": datasets.ClassLabel(names=["tool", "non_tool"]),
            "topic": datasets.ClassLabel(names=["calendar", "none", "weather"]),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "question": [r["text"] for r in rows],
            "needs": [0 if parse_label(r["label"]) == 1 else 1 for r in rows],
            "topic": [["calendar", "none", "weather"].index(r["domain"]) for r in rows],
        },
        features=features,
    )
    calls = []

    def fake_load_dataset(source, split):
        calls.append((source, split))
        return ds

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = read_labelled(
        "org/tool-prompts",
        None,
        ColumnMap(text="question", label="needs", domain="topic"),
        hub_split="validation",
    )
    assert calls == [("org/tool-prompts", "validation")]
    assert [(r.text, r.label, r.domain) for r in got.rows] == [
        (r["text"], parse_label(r["label"]), r["domain"]) for r in rows
    ]
    assert got.rows[3].where == "hub dataset 'org/tool-prompts' (split 'validation'), row 3"
    with pytest.raises(
        DataError,
        match=r"hub dataset 'org/tool-prompts' \(split 'train'\), columns, "
        r"field 'text': no column 'text'",
    ):
        read_labelled("org/tool-prompts", None)


# ----------------------------------------------------------------------------- the shipped example


def test_the_shipped_example_is_what_the_generator_writes():
    shipped = (ROOT / "data" / "labelled_example.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in shipped] == labelled_example_rows()
    p = load_params(PARAMS / "labelled_example.yaml")
    assert p.data.kind == "labelled" and p.data_path() == (ROOT / "data" / "labelled_example.jsonl")
    got = read_labelled(p.data.source, p.data_path(), p.data.columns)
    assert not got.skipped and got.id_column == "id" and not got.split_column
    assert sorted({r.domain for r in got.rows}) == ["calendar", "none", "weather"]
    assert not {r.domain for r in got.rows} & set(SEED_DOMAINS)
    assert yaml.safe_dump(p.to_dict())
