"""``asa summarize`` and docs/results.md (#34 item 8): no measured figure typed by hand.

The committed blocks must equal what the committed summaries write; the text around the
blocks holds no figure; a figure edited by hand is caught. The summaries' figures are the
runs' own: checked here on a run written for the test, and on a real evaluation in
``tests/test_evaluate.py`` and a real run in ``tests/test_one_domain_run.py``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from asa_lib.cli import main
from asa_lib.report.summary import (
    SummaryError,
    block,
    read_summaries,
    render_doc,
    summarize,
    update,
)
from asa_lib.report.verdict import verdict

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
SUMMARIES = ROOT / "docs" / "results"
BLOCK = re.compile(r"<!-- summary (\S+) -->.*?<!-- end summary \1 -->", re.DOTALL)


def test_the_committed_blocks_are_what_the_committed_summaries_write():
    written, current = update([], SUMMARIES, DOC, check=True)
    assert written == [] and current, "docs/results.md is stale: run .venv/bin/asa summarize"


def test_every_figure_of_the_page_sits_in_a_generated_block():
    text = DOC.read_text(encoding="utf-8")
    names = BLOCK.findall(text)
    assert names and sorted(names) == sorted(read_summaries(SUMMARIES))
    outside = BLOCK.sub("", text)
    assert not re.findall(r"\d\.\d", outside), "a decimal figure outside a generated block"


def test_the_committed_summaries_name_no_folder_of_the_machine_they_came_from():
    for path in SUMMARIES.glob("*.json"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"/(work|tmp|home|root|Users)/", text), path.name
        assert len(text) < 100_000, f"{path.name}: a summary, not a run"


# ---------------------------------------------------------------- a run written here
def _split(f1, fpr, recall, n=40, triggers=20, lo=0.1):
    return {
        "precision": 0.5,
        "recall": recall,
        "f1": f1,
        "fpr": fpr,
        "n": n,
        "triggers": triggers,
        "valid_call_rate": 0.25,
        "ci95": {"f1": [f1 - lo, f1 + lo], "fpr": [fpr - lo, fpr + lo], "recall": [0, 1]},
        "per_domain": {"all": {"f1": f1}},
    }


def _results(tmp: Path) -> Path:
    run = tmp / "toy"
    run.mkdir()
    d = lambda x, lo, hi: {  # noqa: E731
        "d_f1": x,
        "d_f1_lo": lo,
        "d_f1_hi": hi,
        "d_fpr": -x,
        "d_fpr_lo": -hi,
        "d_fpr_hi": -lo,
    }
    results = {
        "params": {
            "name": "toy",
            "data": {"source": str(tmp / "secret" / "rows.jsonl")},
            "generation": {"max_new_tokens": 40},
            "sweep": [{"name": "t60_a50", "vector": "mixture", "gate": "probe"}],
        },
        "git_commit": "a" * 40,
        "created": "2026-12-07T00:00:00+00:00",
        "model_id": "tiny",
        "L_star": 3,
        "L_star_valid_auc": 0.8125,
        "steering_blocks": {"blocks": [5]},
        "diagnostics": {"verdict": "label direction aligned (cos 0.50)", "cos_at_L_star": 0.5},
        "chosen": {"name": "t60_a50", "selected_on": "valid: best F1, ties to lower FPR"},
        "configs": {
            "baseline": {
                "tau": None,
                "alpha": 0.0,
                "beta": 0.0,
                "layer": 3,
                "splits": {"valid": _split(0.6, 0.3, 0.7), "test": _split(0.55, 0.35, 0.7)},
            },
            "t60_a50": {
                "tau": 0.6,
                "alpha": 0.5,
                "beta": 0.0,
                "layer": 3,
                "records": [{"big": "x" * 1000}],
                "splits": {"valid": _split(0.7, 0.2, 0.7), "test": _split(0.6789, 0.25, 0.7)},
            },
        },
        "vs_baseline": {
            "valid": {"t60_a50": d(0.1, 0.02, 0.2)},
            "test": {"t60_a50": d(0.1289, -0.01, 0.25)},
        },
        "flips": {"t60_a50": []},
    }
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_a_block_carries_the_runs_own_figures_and_verdict(tmp_path):
    run = _results(tmp_path)
    results = json.loads((run / "results.json").read_text())
    s = summarize(run)
    text = block(s)
    assert verdict(results) in text  # the same sentence as the index and 07
    assert (  # ... which is, written out by hand:
        "- Verdict: 1 of 1 configs beat the baseline on VALID with a paired 95% interval above "
        "0; the best, t60_a50, raises F1 from 0.600 to 0.700. Chosen t60_a50: TEST ΔF1 +0.129 "
        "[−0.010, +0.250] (CI includes 0); FPR 0.35 → 0.25 (ΔFPR CI includes 0), recall "
        "0.70 → 0.70."
    ) in text
    row = next(line for line in text.splitlines() if "`t60_a50`" in line)
    assert "**`t60_a50`** (chosen)" in row
    assert "0.679 [0.579, 0.779]" in row and "+0.129 [−0.010, +0.250]" in row
    assert "| label |" in row and "L\\* = 3 (label probe VALID AUC 0.812)" in text
    assert "rows.jsonl" in text and "secret" not in json.dumps(s)  # the file, not its folder
    assert "records" not in json.dumps(s) and "per_domain" not in json.dumps(s)


def test_the_command_writes_the_summary_and_appends_a_block_then_checks_it(tmp_path, capsys):
    run = _results(tmp_path)
    doc, summaries = tmp_path / "results.md", tmp_path / "summaries"
    doc.write_text("# Results\n\nText of the author.\n")
    args = ["--summaries", str(summaries), "--doc", str(doc)]
    assert main(["summarize", str(run), *args]) == 0
    assert (summaries / "toy.json").is_file()
    text = doc.read_text()
    assert text.startswith("# Results\n\nText of the author.\n") and "## `toy`" in text
    assert main(["summarize", "--check", *args]) == 0
    # a figure edited by hand is caught, and --check writes nothing
    edited = text.replace("0.679 [0.579, 0.779]", "0.700 [0.579, 0.779]")
    doc.write_text(edited)
    capsys.readouterr()
    assert main(["summarize", "--check", *args]) == 1
    assert "differs from what the summaries" in capsys.readouterr().err
    assert doc.read_text() == edited
    # without --check the block is written again; the author's text stays
    assert main(["summarize", *args]) == 0
    assert doc.read_text() == text


def test_blocks_are_rewritten_in_place_and_bad_docs_are_refused(tmp_path):
    s = summarize(_results(tmp_path))
    doc = "intro\n<!-- summary toy -->\nstale\n<!-- end summary toy -->\noutro\n"
    out = render_doc(doc, {"toy": s})
    assert out.startswith("intro\n<!-- summary toy -->") and out.endswith("outro\n")
    assert "stale" not in out and out.count("<!-- summary toy -->") == 1
    with pytest.raises(SummaryError, match="without a summary: other"):
        render_doc(doc + "<!-- summary other -->\n<!-- end summary other -->\n", {"toy": s})
    with pytest.raises(SummaryError, match="opened and not closed"):
        render_doc("<!-- summary toy -->\n", {"toy": s})
    with pytest.raises(SummaryError, match="version"):
        block(dict(s, summary_version=0))


def test_a_folder_without_results_and_a_misnamed_summary_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["summarize", str(tmp_path / "empty"), "--doc", str(tmp_path / "d.md")]) == 2
    assert "no results.json (asa run) or evaluation.json" in capsys.readouterr().err
    summaries = tmp_path / "s"
    summaries.mkdir()
    shutil.copy(SUMMARIES / "bfcl.json", summaries / "renamed.json")
    with pytest.raises(SummaryError, match="not 'renamed'"):
        read_summaries(summaries)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text('{"params": {}}')
    with pytest.raises(SummaryError, match="not the results of a finished run"):
        summarize(tmp_path / "broken")


def test_a_run_the_page_cannot_show_is_refused_and_no_summary_is_written(tmp_path, capsys):
    run = _results(tmp_path)
    results = json.loads((run / "results.json").read_text())
    for c in results["configs"].values():
        del c["splits"]["test"]  # a run that stopped before TEST was scored
    (run / "results.json").write_text(json.dumps(results))
    summaries = tmp_path / "s"
    code = main(
        ["summarize", str(run), "--summaries", str(summaries), "--doc", str(tmp_path / "d.md")]
    )
    assert code == 2 and "not the results of a finished run" in capsys.readouterr().err
    assert not summaries.exists() and not (tmp_path / "d.md").exists()


def test_check_needs_the_doc_and_its_summaries(tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(SummaryError, match="no such file to check"):
        update([], tmp_path / "s", tmp_path / "missing.md", check=True)
    (tmp_path / "d.md").write_text("# Results\n")
    with pytest.raises(SummaryError, match="no summary to check"):
        update([], tmp_path / "s", tmp_path / "d.md", check=True)
    s = summarize(_results(tmp_path))
    two = f"{block(s)}\n{block(s)}\n"
    with pytest.raises(SummaryError, match="a block twice: toy"):
        render_doc(two, {"toy": s})


def test_text_from_a_run_cannot_end_a_block_early(tmp_path):
    run = _results(tmp_path)
    results = json.loads((run / "results.json").read_text())
    results["model_id"] = "m --> y"
    results["params"]["data"]["source"] = "/mnt/scratch/me/rows.jsonl"
    (run / "results.json").write_text(json.dumps(results))
    s = summarize(run)
    text = block(s)
    assert text.count("-->") == 3  # the three markers' own, no more
    assert s["data"] == "rows.jsonl" and "/mnt" not in json.dumps(s)
    out = render_doc(
        render_doc("<!-- summary toy -->\n<!-- end summary toy -->\n", {"toy": s}), {"toy": s}
    )
    assert out.count("<!-- end summary toy -->") == 1 and out == render_doc(out, {"toy": s})


@pytest.mark.parametrize(
    "source, shown",
    [
        ("../data/bfcl_relevance.jsonl.xz", "bfcl_relevance.jsonl.xz"),
        ("/home/me/data/bfcl_rows", "bfcl_rows"),
        ("C:\\Users\\me\\rows.csv", "rows.csv"),
        ("tatsu-lab/alpaca", "tatsu-lab/alpaca"),
        ("org/model.v2", "org/model.v2"),
    ],
)
def test_a_data_source_is_shown_by_its_file_name_or_its_hub_id(tmp_path, source, shown):
    run = _results(tmp_path)
    results = json.loads((run / "results.json").read_text())
    results["params"]["data"]["source"] = source
    (run / "results.json").write_text(json.dumps(results))
    assert summarize(run)["data"] == shown


def test_valid_calls_on_tool_rows_come_from_the_results_or_the_runs_own_records(tmp_path):
    """#32's validity goal is on the label-1 rows: the block shows it where the results carry
    it, and for results that predate it counts it from the config's sweep/<config>.json."""
    run = _results(tmp_path)
    text = block(summarize(run))
    assert "valid calls on tool rows" not in text  # neither results nor records: no column
    (run / "sweep").mkdir()

    def rec(split, label, triggered, valid):
        return {"split": split, "label": label, "triggered": triggered, "valid": valid}

    records = [
        rec("test", 1, True, True),
        rec("test", 1, True, False),
        rec("test", 1, True, False),
        rec("test", 0, True, True),  # a call where none is needed: not counted
        rec("test", 1, False, False),
        rec("valid", 1, True, True),
    ]
    (run / "sweep" / "t60_a50.json").write_text(json.dumps({"records": records}))
    results = json.loads((run / "results.json").read_text())
    results["configs"]["baseline"]["splits"]["test"]["tool_row_calls"] = {"calls": 4, "valid": 1}
    (run / "results.json").write_text(json.dumps(results))
    s = summarize(run)
    assert s["configs"]["t60_a50"]["splits"]["test"]["tool_row_calls"] == {"calls": 3, "valid": 1}
    assert s["configs"]["t60_a50"]["splits"]["valid"]["tool_row_calls"] == {"calls": 1, "valid": 1}
    text = block(s)
    assert "| TEST valid calls on tool rows |" in text
    row = next(line for line in text.splitlines() if "`t60_a50`" in line)
    assert row.endswith("| 0.333 (1 of 3) |")
    base = next(line for line in text.splitlines() if "`baseline`" in line)
    assert base.endswith("| 0.250 (1 of 4) |")  # from results.json, not from records
