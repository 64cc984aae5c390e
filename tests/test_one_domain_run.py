"""A one-domain run whose rows are partly conversations, end to end on the tiny model.

#33: rows with ``messages`` (a system prompt, earlier turns) go through every stage.
#34: a one-domain run's pages show no library warning, no figure that compares domains
(each says in one sentence why it is not there), no raw end-of-turn token, and the calls'
validity split adds up to the calls.
"""

from __future__ import annotations

import html
import json
import re

import pytest
import yaml

from asa_lib.run.runner import run
from conftest import PARAMS, ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_domain_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one_domain")
    rows = [
        json.loads(x) for x in (ROOT / "data" / "labelled_example.jsonl").read_text().splitlines()
    ]
    out = []
    for i, r in enumerate(rows):
        r = {**r, "domain": "all"}
        if i % 3 == 0:  # every third row: a conversation ending on the same request
            r["messages"] = [
                {"role": "system", "content": "You help with plans."},
                {"role": "user", "content": "Hi there."},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": r.pop("text")},
            ]
        out.append(r)
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in out))
    d = yaml.safe_load((PARAMS / "labelled_example.yaml").read_text())
    d["name"] = "one_domain"
    d["data"]["source"] = str(data)
    d["data"]["columns"] = {"text": "text", "label": "label", "domain": "domain", "id": "id"}
    params = tmp / "one_domain.yaml"
    params.write_text(yaml.safe_dump(d, sort_keys=False))
    logs: list[str] = []
    code, index = run(params, tmp / "run", log=logs.append)
    return {"code": code, "dir": tmp / "run", "logs": logs, "index": index}


def _pages(run_dir):
    return {
        p.stem: p.read_text(encoding="utf-8") for p in sorted((run_dir / "html").glob("*.html"))
    }


def test_the_run_completes_with_conversations_in_every_split(one_domain_run):
    assert one_domain_run["code"] == 0, "\n".join(one_domain_run["logs"])
    splits = [
        json.loads(x)
        for x in (one_domain_run["dir"] / "data" / "splits.jsonl").read_text().splitlines()
    ]
    for s in ("cal", "train", "valid", "test"):
        rows = [r for r in splits if r["split"] == s]
        assert any("messages" in r for r in rows) and any("messages" not in r for r in rows), s
    convo = next(r for r in splits if "messages" in r)
    assert convo["text"] == convo["messages"][-1]["content"]  # what the reports show


def test_no_page_shows_a_warning_or_a_domain_comparison_or_a_raw_end_token(one_domain_run):
    pages = _pages(one_domain_run["dir"])
    assert {"04_vectors", "05_routing", "07_analysis"} <= set(pages)
    for name, page in pages.items():
        # a warning or any stderr output is a box of its own (its CSS is on every page)
        assert 'data-mime-type="application/vnd.jupyter.stderr"' not in page, name
        body = re.sub(r"<(style|script)\b.*?</\1>", " ", page, flags=re.S)
        assert "Warning" not in html.unescape(re.sub(r"<[^>]+>", " ", body)), name
        if name.startswith(("06_sweep", "07")):  # outputs; 02 shows a prompt as rendered
            for token in ("<|im_end|>", "<|im_start|>"):  # the tiny model writes <|im_start|>
                assert token not in html.unescape(body), (name, token)
    one = "One domain (all): {} is not shown."
    assert one.format("the cosine matrix of the domain vectors") in pages["04_vectors"]
    assert one.format("the router&#x27;s confusion map on VALID") in pages[
        "05_routing"
    ] or one.format("the router's confusion map on VALID") in html.unescape(pages["05_routing"])
    assert ">router<" not in pages["05_routing"]  # no router row in the accuracy table
    assert one.format("the per-domain breakdown") in pages["07_analysis"]
    assert one.format("the per-domain breakdown") in pages["06_sweep__mild"]


def test_the_records_keep_the_raw_tokens_the_pages_drop(one_domain_run):
    recs = json.loads((one_domain_run["dir"] / "sweep" / "baseline.json").read_text())["records"]
    assert any("<|im_start|>" in r["output"] for r in recs)  # so the page check above can fail


def test_the_validity_split_adds_up_to_the_calls_and_the_index_shows_it(one_domain_run):
    run_dir = one_domain_run["dir"]
    results = json.loads((run_dir / "results.json").read_text())
    index = (run_dir / "index.html").read_text()
    for name, c in results["configs"].items():
        for split in ("valid", "test"):
            m = c["splits"][split]
            assert sum(m["validity_split"].values()) == m["triggers"], (name, split)
        t = c["splits"]["test"]
        if t["triggers"]:
            v = t["validity_split"]
            cell = (
                f"{v['complete valid']} / {v['complete invalid']} / {v['cut']} of {t['triggers']}"
            )
            assert cell in index, name
    for rec in json.loads((run_dir / "sweep" / "baseline.json").read_text())["records"]:
        assert "complete" in rec


def test_the_valid_calls_on_tool_rows_are_counted_from_the_records(one_domain_run):
    """#32: the calls on label-1 rows and the valid ones among them, per config and split,
    counted here from the per-prompt records; the index shows TEST's."""
    run_dir = one_domain_run["dir"]
    results = json.loads((run_dir / "results.json").read_text())
    index = (run_dir / "index.html").read_text()
    shown = 0
    for name, c in results["configs"].items():
        recs = json.loads((run_dir / "sweep" / f"{name}.json").read_text())["records"]
        for split in ("valid", "test"):
            calls = valid = 0
            for r in recs:
                if r["split"] == split and r["label"] == 1 and r["triggered"]:
                    calls += 1
                    valid += 1 if r["valid"] else 0
            assert c["splits"][split]["tool_row_calls"] == {"calls": calls, "valid": valid}
            if split == "test" and calls:
                assert f"on tool rows: {valid} of {calls} valid" in index, name
                shown += 1
    if not shown:  # the tiny model called on no TEST tool row: no such line then
        assert not re.search(r"on tool rows: \d+ of \d+ valid", index)


def test_the_index_shows_the_valid_calls_on_tool_rows(one_domain_run, tmp_path):
    """The index line where a config did call on TEST tool rows: the real run's results with
    the baseline's TEST counts set (the tiny model rarely calls), the index written again."""
    import shutil

    from asa_lib.params import load_params
    from asa_lib.report.index import write_index

    run_dir = tmp_path / "run"
    shutil.copytree(one_domain_run["dir"], run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    t = results["configs"]["baseline"]["splits"]["test"]
    t["triggers"] = max(t["triggers"], 3)
    t["validity_split"] = {"complete valid": 1, "complete invalid": 1, "cut": t["triggers"] - 2}
    t["tool_row_calls"] = {"calls": 3, "valid": 1}
    (run_dir / "results.json").write_text(json.dumps(results))
    page = write_index(load_params(run_dir / "params.yaml"), run_dir, []).read_text()
    row = re.search(r"<tr[^>]*><td class='l'>[^<]*(<a [^>]*>)?baseline.*?</tr>", page)
    assert row and "on tool rows: 1 of 3 valid" in row.group(0)


def test_asa_summarize_writes_the_runs_own_figures(one_domain_run):
    """#34 item 8: docs/results.md's block of a real run holds results.json's figures."""
    from asa_lib.report.summary import block, summarize
    from asa_lib.report.verdict import signed, verdict

    run_dir = one_domain_run["dir"]
    results = json.loads((run_dir / "results.json").read_text())
    md = block(summarize(run_dir))
    assert verdict(results) in md and str(run_dir) not in md
    for name, c in results["configs"].items():
        row = next(line for line in md.splitlines() if f"`{name}`" in line and "|" in line)
        t = c["splits"]["test"]
        assert f"| {t['f1']:.3f} [{t['ci95']['f1'][0]:.3f}, " in row, name
        d = results["vs_baseline"]["test"].get(name)
        if d:
            assert f"{signed(d['d_f1'])} [{signed(d['d_f1_lo'])}, {signed(d['d_f1_hi'])}]" in row


def test_the_call_validity_script_counts_each_call_on_a_tool_row_once(one_domain_run, tmp_path):
    """benchmarks/call_validity.py on a real run: per config, the reasons add up to the calls on
    TEST's label-1 rows and its valid column is the records' complete valid calls."""
    import subprocess
    import sys

    run_dir = one_domain_run["dir"]
    out = tmp_path / "table.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "call_validity.py"), str(run_dir)]
    subprocess.run([*cmd, "--configs", "all", "--out", str(out)], check=True, capture_output=True)
    table = {
        line.split("|")[1].strip().split()[0].strip("`"): line.split("|")[2:-1]
        for line in out.read_text().splitlines()
        if line.startswith("| `")
    }
    results = json.loads((run_dir / "results.json").read_text())
    assert set(table) == set(results["configs"])
    for name, cells in table.items():
        recs = json.loads((run_dir / "sweep" / f"{name}.json").read_text())["records"]
        calls = [r for r in recs if r["split"] == "test" and r["label"] == 1 and r["triggered"]]
        counts = [int(c.split()[0]) for c in cells]
        assert counts[0] == len(calls) == sum(counts[1:]), name
        assert counts[1] == sum(r["valid"] and r["complete"] for r in calls), name
        assert counts[-1] == sum(not r["complete"] for r in calls), name  # cut, the last column
    bad = subprocess.run([*cmd, "--configs", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "nope" in bad.stderr
