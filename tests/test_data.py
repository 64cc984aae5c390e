import json
import lzma
import warnings

import numpy as np
import pytest

from asa_lib import data
from asa_lib.data.alpaca import build_splits, classify, label_for
from asa_lib.data.sources import read_local_rows
from asa_lib.data.splits import DataError
from conftest import ROOT


def seed_notebook_splits(ds, per_split_per_class, test_mult, seed):
    """The seed notebook's data cell, verbatim apart from parameters (the oracle)."""
    KW = {
        "math": {
            "calculate",
            "compute",
            "solve",
            "equation",
            "sum",
            "average",
            "percentage",
            "convert",
            "ratio",
            "divide",
            "multiply",
        },
        "code": {
            "write a program",
            "code",
            "function",
            "algorithm",
            "implement",
            "script",
            "debug",
            "compile",
            "class",
            "method",
        },
        "search": {
            "search",
            "find",
            "look up",
            "latest",
            "current",
            "news",
            "recent",
            "who is",
            "what happened",
            "when did",
        },
        "translation": {
            "translate",
            "translation",
            "say in",
            "convert to",
            "how do you say",
            "in french",
            "in spanish",
            "in german",
            "in japanese",
            "in chinese",
        },
    }

    def classify(text):
        t = text.lower()
        for domain, keywords in KW.items():
            if any(k in t for k in keywords):
                return domain
        return None

    np.random.seed(seed)
    buckets = {d: {"tool": [], "non_tool": []} for d in KW}
    for i, row in enumerate(ds):
        text = row.get("instruction", "") + " " + row.get("input", "")
        dom = classify(text)
        if dom is None:
            continue
        output = row.get("output", "")
        label = (
            "tool"
            if classify(output) == dom
            or any(k in output.lower() for k in ["result", "output", "answer", "return"])
            else "non_tool"
        )
        buckets[dom][label].append(i)
    for dom in buckets:
        for lbl in buckets[dom]:
            np.random.shuffle(buckets[dom][lbl])
    PER_SPLIT_PER_CLASS = per_split_per_class
    SPLITS = {"cal": 0, "train": 1, "valid": 2, "test": 3}
    TEST_MULT = test_mult
    samples = {s: [] for s in SPLITS}
    used = set()
    for dom in buckets:
        for lbl in ["tool", "non_tool"]:
            pool = [i for i in buckets[dom][lbl] if i not in used]
            for sname, sidx in SPLITS.items():
                n = PER_SPLIT_PER_CLASS * (TEST_MULT if sname == "test" else 1)
                start = sidx * PER_SPLIT_PER_CLASS
                end = start + n
                chosen = pool[start:end]
                used.update(chosen)
                is_tool = 1 if lbl == "tool" else 0
                for idx in chosen:
                    row = ds[int(idx)]
                    text = row.get("instruction", "") + " " + row.get("input", "")
                    samples[sname].append(
                        {"text": text, "label": is_tool, "domain": dom, "idx": int(idx)}
                    )
    for s in samples:
        np.random.shuffle(samples[s])
    return samples


def hand_rows():
    """Five rows per (domain, label) except translation/tool (two rows), plus noise rows."""
    rows = []
    for i in range(5):
        rows.append(
            {
                "instruction": f"Calculate {i} plus {i}.",
                "input": "",
                "output": f"The answer is {2 * i}.",
            }
        )
        rows.append(
            {"instruction": f"Solve riddle number {i}.", "input": "", "output": "A candle."}
        )
        rows.append(
            {
                "instruction": f"Write a program that prints {i}.",
                "input": "",
                "output": f"print({i})  # output: {i}",
            }
        )
        rows.append(
            {
                "instruction": "Write a program that greets.",
                "input": f"Name {i}",
                "output": "Hello there.",
            }
        )
        rows.append(
            {
                "instruction": f"Search the web for fact {i}.",
                "input": "",
                "output": f"Found a search hit {i}.",
            }
        )
        rows.append(
            {"instruction": f"Find a synonym for happy #{i}.", "input": "", "output": "Joyful."}
        )
        rows.append(
            {"instruction": f"Translate 'hello {i}' into Italian.", "input": "", "output": "Ciao."}
        )
        rows.append(
            {"instruction": "Describe a sunny day.", "input": "", "output": "Bright and warm."}
        )  # no domain
    rows.insert(
        3,
        {
            "instruction": "Translate 'cat' into Italian.",
            "input": "",
            "output": "The result is gatto.",
        },
    )
    rows.insert(
        9,
        {
            "instruction": "Translate 'dog' into Italian.",
            "input": "",
            "output": "The result is cane.",
        },
    )
    return rows


def test_hand_rows_are_labelled_as_intended():
    assert (
        classify("Calculate 1 plus 1.") == "math"
        and label_for("math", "The answer is 2.") == "tool"
    )
    assert (
        classify("Solve riddle number 1.") == "math"
        and label_for("math", "A candle.") == "non_tool"
    )
    assert classify("Write a program that greets. Name 1") == "code"
    assert label_for("code", "Hello there.") == "non_tool"
    assert (
        classify("Find a synonym for happy #1.") == "search"
        and label_for("search", "Joyful.") == "non_tool"
    )
    assert label_for("translation", "The result is gatto.") == "tool"
    assert classify("Describe a sunny day.") is None


def test_hand_made_split_membership_and_shortfalls():
    rows = hand_rows()
    with pytest.warns(UserWarning, match="translation/tool/valid 0/1, translation/tool/test 0/2"):
        res = build_splits(rows, per_split_per_class=1, test_multiplier=2, seed=42)
    sizes = {s: len(xs) for s, xs in res.samples.items()}
    # 7 full buckets of 5 (1 cal, 1 train, 1 valid, 2 test) + translation/tool with 2 (1 cal, 1 train)
    assert sizes == {"cal": 8, "train": 8, "valid": 7, "test": 14}
    assert res.bucket_sizes["translation"] == {"tool": 2, "non_tool": 5}
    tr_tool = [
        x for s in res.samples.values() for x in s if x.domain == "translation" and x.label == 1
    ]
    assert sorted(x.text for x in tr_tool) == [
        "Translate 'cat' into Italian. ",
        "Translate 'dog' into Italian. ",
    ]
    assert {x.split for x in tr_tool} == {"cal", "train"}
    short = {(r["domain"], r["label"], r["split"]): (r["got"], r["needed"]) for r in res.shortfalls}
    assert short == {
        ("translation", "tool", "valid"): (0, 1),
        ("translation", "tool", "test"): (0, 2),
    }
    all_ids = [x.id for s in res.samples.values() for x in s]
    assert len(all_ids) == len(set(all_ids)) == 37  # disjoint splits; "Describe" rows never used
    assert all(
        x.id == f"r{x.idx}" and rows[x.idx]["instruction"] in x.text
        for s in res.samples.values()
        for x in s
    )


@pytest.mark.parametrize("per_split, mult, seed", [(1, 2, 42), (1, 1, 7), (1, 2, 0)])
def test_same_prompts_in_the_same_order_as_the_seed_code(per_split, mult, seed):
    rows = hand_rows()
    expected = seed_notebook_splits(rows, per_split, mult, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = build_splits(rows, per_split, mult, seed).samples
    for s in expected:
        assert [(x["idx"], x["domain"], x["label"], x["text"]) for x in expected[s]] == [
            (x.idx, x.domain, x.label, x.text) for x in got[s]
        ]


def test_seed_equivalence_on_the_bundled_alpaca_rows():
    with lzma.open(ROOT / "data" / "alpaca_subset.jsonl.xz", "rt") as f:
        rows = [json.loads(line) for line in f][:6000]
    expected = seed_notebook_splits(rows, 10, 2, 42)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = build_splits(rows, 10, 2, 42).samples
    for s in expected:
        assert [x["idx"] for x in expected[s]] == [x.idx for x in got[s]]


def test_bad_rows_are_skipped_and_counted_with_ids_kept(tmp_path):
    good = hand_rows()
    lines = [json.dumps(r) for r in good]
    lines.insert(0, "{not json")
    lines.insert(1, json.dumps({"instruction": 5, "input": "", "output": "x"}))
    lines.insert(2, json.dumps({"instruction": "Calculate 1+1"}))
    lines.insert(3, json.dumps({"instruction": "Calculate 1+1", "input": None, "output": "2"}))
    lines.insert(4, json.dumps(["a", "list"]))
    p = tmp_path / "rows.jsonl"
    p.write_text("\n".join(lines) + "\n")
    skipped = {}
    rows = read_local_rows(p, skipped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = build_splits(rows, 1, 2, 42, skipped=skipped)
    assert res.skipped == {
        "invalid JSON line": 1,
        "non-string 'instruction'": 1,
        "missing 'output'": 1,
        "non-string 'input'": 1,
        "not an object": 1,
    }
    # ids are row positions in the file: every sample's id points at its own row
    for s in res.samples.values():
        for x in s:
            assert json.loads(lines[x.idx])["instruction"] in x.text


def test_a_split_without_a_class_is_an_error():
    rows = [
        {"instruction": f"Calculate {i}", "input": "", "output": "The answer."} for i in range(10)
    ]
    with pytest.raises(DataError, match="has no non-tool example"):
        build_splits(rows, 1, 2, 42)


def test_write_and_read_splits(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = build_splits(hand_rows(), 1, 2, 42)
    data.write_splits(tmp_path, res)
    back = data.read_splits(tmp_path)
    assert {s: [x.id for x in xs] for s, xs in back.items()} == {
        s: [x.id for x in xs] for s, xs in res.samples.items()
    }
    summary = json.loads((tmp_path / "data" / "summary.json").read_text())
    assert summary["split_sizes"]["test"] == 14 and len(summary["shortfalls"]) == 2


def test_missing_local_file_and_unreachable_hub_dataset(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_local_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="point data.source at a local"):
        data.load_rows("no-such-org/no-such-dataset-xyz", None)
