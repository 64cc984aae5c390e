"""The adapter carries its prompt format and its run's rows (red team round 4: b3, u4, u9).

One real run of the red team's common params (BFCL-style rows with their own tools), then:
a rerun that fails in 01 with another system prompt (b3), the adapter copied out of its run
(u4), and an evaluation on the run's own rows (u9).
"""

from __future__ import annotations

import json
import shutil

import pytest

from asa_lib import ASA, AdapterError
from asa_lib.cli import main
from asa_lib.params import load_params
from asa_lib.run.runner import run
from conftest import PARAMS, ROOT
from test_evaluate import one_line_error as _one_line_error

pytestmark = pytest.mark.slow

FIXTURES = ROOT / "tests" / "fixtures" / "redteam4"
COMMON = FIXTURES / "common" / "params.yaml"
PARAMS_B = FIXTURES / "b3_stale_adapter_after_failed_rerun" / "params_B.yaml"
ALPACA = FIXTURES / "u4_lone_adapter_any_prompt_format" / "alpaca_rows.jsonl"


@pytest.fixture(scope="module")
def common_run(tmp_path_factory):
    """The red team's common run (tiny model, one config); its folder is only read below."""
    tmp = tmp_path_factory.mktemp("rt4")
    logs: list[str] = []
    code, _ = run(COMMON, tmp / "common", log=logs.append)
    assert code == 0, "\n".join(logs)
    assert (tmp / "common" / "chosen_adapter" / "adapter.json").is_file(), "\n".join(logs)
    return tmp / "common"


def _copy_run(run_dir, to):
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns("cache", "*.lock*"))
    return to


def _cli(capsys, *args):
    code = main([*map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _evaluate(capsys, adapter, params, data, out_dir):
    return _cli(
        capsys,
        "evaluate",
        "--adapter",
        adapter,
        "--params",
        params,
        "--data",
        data,
        "--out-dir",
        out_dir,
    )


def _run_rows(run_dir, per_split: int):
    """The first ``per_split`` rows of each split of the run, as labelled rows with their tools."""
    tools = json.loads((run_dir / "data" / "tools.json").read_text())
    rows: dict[str, list[dict]] = {}
    for line in (run_dir / "data" / "splits.jsonl").read_text().splitlines():
        x = json.loads(line)
        if len(rows.setdefault(x["split"], [])) < per_split:
            rows[x["split"]].append(
                {
                    "id": x["id"],
                    "text": x["text"],
                    "label": x["label"],
                    "domain": x["domain"],
                    "tools": tools[x["tools"]],
                }
            )
    return rows


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_after_a_failed_rerun_the_adapter_is_checked_against_its_own_prompt_format(
    common_run, tmp_path, capsys
):
    """b3: the rerun rewrites params.yaml, fails in 01 and leaves the old chosen_adapter/ beside it."""
    run_dir = _copy_run(common_run, tmp_path / "b3")
    logs: list[str] = []
    code, _ = run(PARAMS_B, run_dir, log=logs.append)
    assert code == 1 and any("01_data: FAILED" in x for x in logs), "\n".join(logs)
    assert load_params(run_dir / "params.yaml", check_files=False).prompt == (
        load_params(PARAMS_B).prompt
    )  # the new, never fitted format is beside the adapter now
    adapter = run_dir / "chosen_adapter"
    rows = [r for rs in _run_rows(common_run, 2).values() for r in rs]
    data = _write_rows(tmp_path / "rows.jsonl", rows)
    # the new params: refused, before anything is written
    code, _, err = _evaluate(capsys, adapter, PARAMS_B, data, tmp_path / "eval_B")
    _one_line_error(code, err, "fitted on prompts in another format")
    assert "This adapter is stale: a rerun" in err and not (tmp_path / "eval_B").exists()
    code, _, err = _cli(
        capsys, "generate", "--adapter", adapter, "--params", PARAMS_B, "--json", "Hi"
    )
    _one_line_error(code, err, "fitted on prompts in another format")
    with pytest.raises(AdapterError, match="fitted on prompts in another format"):
        ASA.load(adapter, prompt=load_params(PARAMS_B).prompt)
    # without prompt=, the params.yaml beside it is not taken: it is not the adapter's format
    assert ASA.load(adapter).prompt is None
    # the params it was fitted on: it runs (a note says the run has moved on)
    code, out, err = _evaluate(capsys, adapter, COMMON, data, tmp_path / "eval_A")
    assert code == 0, err
    res = json.loads((tmp_path / "eval_A" / "evaluation.json").read_text())
    assert res["prompt_format_note"] is None
    assert res["adapter_stale"].startswith("a rerun of its run folder started ")
    assert f"note: the adapter is stale: {res['adapter_stale']}" in out.splitlines()
    code, out, err = _cli(
        capsys, "generate", "--adapter", adapter, "--params", COMMON, "--json", "Hi"
    )
    assert code == 0 and "another prompt format" not in err, err
    assert len(json.loads(out)["results"]) == 1
    # a rerun with the adapter's own params again: its inputs are the adapter's, the mark goes
    code, _ = run(COMMON, run_dir, log=logs.append)
    assert code == 0, "\n".join(logs)
    assert ASA.load(adapter).bundle.stale == ""


def test_an_adapter_copied_out_of_its_run_refuses_another_prompt_format(
    common_run, tmp_path, capsys
):
    """u4: no params.yaml beside the copy; the adapter's own record decides, with one line."""
    lone = tmp_path / "u4_adapter"
    shutil.copytree(common_run / "chosen_adapter", lone)
    code, _, err = _evaluate(capsys, lone, PARAMS / "tiny.yaml", ALPACA, tmp_path / "u4")
    _one_line_error(code, err, "fitted on prompts in another format")
    assert not (tmp_path / "u4").exists()
    assert ASA.load(lone).prompt is None  # nothing beside it to read the format from
    other = load_params(PARAMS / "tiny.yaml").prompt
    with pytest.raises(AdapterError, match="fitted on prompts in another format"):
        ASA.load(lone, prompt=other)
    own = load_params(COMMON).prompt
    assert ASA.load(lone, prompt=own).prompt == own


def test_evaluating_on_the_adapter_s_own_rows_says_so(common_run, tmp_path, capsys):
    """u9: rows of the run's CAL/TRAIN/VALID (and TEST) are counted, in the console, JSON and HTML."""
    own = _run_rows(common_run, 2)  # 2 rows of each split
    fresh = [
        dict(r, id=f"new_{i}", text=r["text"] + " Thanks!")
        for i, r in enumerate(own["test"] + own["valid"])
    ]
    # the same text with other tools is another prompt: not a row of the run
    tool = {
        "name": "no_such_tool",
        "description": "In no row of the run.",
        "parameters": {"type": "object", "properties": {}},
    }
    other_tools = dict(own["cal"][0], id="other_tools", tools=[tool])
    rows = [*own["cal"], *own["train"], *own["valid"], *own["test"], *fresh, other_tools]
    data = _write_rows(tmp_path / "mixed.jsonl", rows)
    code, out, err = _evaluate(capsys, common_run / "chosen_adapter", COMMON, data, tmp_path / "u9")
    assert code == 0, err
    res = json.loads((tmp_path / "u9" / "evaluation.json").read_text())
    assert res["rows_used"] == len(rows)
    overlap = res["run_overlap"]
    assert overlap["per_split"] == {"cal": 2, "train": 2, "valid": 2, "test": 2}
    assert overlap["rows"] == 8 and overlap["fitted_or_chosen"] == 6
    lines = [x for x in out.splitlines() if "rows of the adapter's own run" in x]
    assert len(lines) == 1 and "8 of the 13 rows" in lines[0], out
    assert overlap["note"] == lines[0].removeprefix("note: ")
    html = (tmp_path / "u9" / "html" / "08_evaluate.html").read_text()
    assert "rows of the adapter&#x27;s own run" in html or "rows of the adapter's own run" in html


def test_a_run_folder_from_before_plans_were_recorded_is_not_marked_stale(common_run, tmp_path):
    """Stage records written before round 4 hold no plan: that says nothing about the adapter.
    A rerun with the same params skips every stage, marks nothing and records the plans; a
    later rerun with other inputs then marks the adapter stale at its start."""
    from asa_lib.run.runner import mark_stale_adapter, plan

    run_dir = _copy_run(common_run, tmp_path / "old")
    records = sorted((run_dir / "stages").glob("*.json"))
    for p in records:
        rec = json.loads(p.read_text())
        rec.pop("plan", None)
        p.write_text(json.dumps(rec))
    logs: list[str] = []
    code, _ = run(COMMON, run_dir, log=logs.append)
    assert code == 0, "\n".join(logs)
    assert not (run_dir / "chosen_adapter" / "stale.json").exists(), "\n".join(logs)
    assert not any("re-running" in x or "marked stale" in x for x in logs), "\n".join(logs)
    assert all("plan" in json.loads(p.read_text()) for p in records)
    other = plan(load_params(PARAMS_B), PARAMS_B, run_dir)
    assert mark_stale_adapter(run_dir, other, log=lambda *_: None).startswith("a rerun")
    assert (run_dir / "chosen_adapter" / "stale.json").is_file()
