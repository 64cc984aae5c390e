"""The console command: bad input ends in one readable message and touches nothing."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from asa_lib.cli import main
from conftest import PARAMS, ROOT


def tiny_dict():
    d = yaml.safe_load((PARAMS / "tiny.yaml").read_text())
    d["data"]["source"] = str(ROOT / "data" / "alpaca_subset.jsonl.xz")
    return d


@pytest.mark.parametrize(
    "edit, msg",
    [
        (lambda d: "name: [oops\n", "not valid YAML"),
        (
            lambda d: d["extraction"].update(batch_size="8"),
            "extraction.batch_size: expected an integer",
        ),
        (lambda d: d["model"].update(layers=3), "model.layers: unknown key"),
        (
            lambda d: d["sweep"][0].update(tau=1.0),
            "sweep[0].tau: 1.0 is outside the allowed range [0.5, 1)",
        ),
        (lambda d: d["sweep"][0].update(alpha=-0.5), "sweep[0].alpha: -0.5 is negative"),
        (lambda d: d["data"].update(source="nowhere/rows.jsonl"), "data.source: file not found"),
        (
            lambda d: d["sweep"][0].update(alpha=float("inf")),
            "sweep[0].alpha: expected a finite number",
        ),
        (
            lambda d: d["data"].update(seed=2**40),
            "data.seed: 1099511627776 is outside the allowed range",
        ),
        (
            lambda d: d["prompt"]["tools"][0].update(parameters="a string"),
            "prompt.tools[0].parameters: must be a JSON Schema object",
        ),
        (
            lambda d: d["prompt"]["tools"][0]["parameters"].update(required=5),
            "prompt.tools[0].parameters.required: must be a list",
        ),
        (
            lambda d: d["prompt"]["tools"][0]["parameters"].update(required=["x"]),
            "prompt.tools[0].parameters.required: ['x'] are not in parameters.properties",
        ),
        (lambda d: d.update(name="../.."), "name: '../..' must be letters"),
        (lambda d: d.update(name="/abs/path"), "name: '/abs/path' must be letters"),
        (lambda d: d["sweep"][0].update(name="Baseline"), "sweep[0].name: 'baseline' is reserved"),
        (
            lambda d: d["sweep"][1].update(name=d["sweep"][0]["name"].upper()),
            "sweep[1].name: duplicate config name",
        ),
        (lambda d: yaml.safe_dump(d) + "name: again\n", "duplicate key 'name'"),
        (
            lambda d: d["reference"].update(f1=3.0),
            "reference.f1: 3.0 is outside the allowed range [0, 1]",
        ),
    ],
)
def test_bad_params_give_one_message_and_exit_2(tmp_path, capsys, edit, msg):
    d = tiny_dict()
    out = edit(d)
    p = tmp_path / "p.yaml"
    p.write_text(out if isinstance(out, str) else yaml.safe_dump(d))
    run_dir = tmp_path / "run"
    assert main(["run", "--params", str(p), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asa: error:") and msg in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not run_dir.exists()  # nothing written


@pytest.mark.parametrize(
    "content, msg",
    [
        (b"name: caf\xe9\n", "not UTF-8 text"),
    ],
)
def test_unreadable_params_give_one_message(tmp_path, capsys, content, msg):
    p = tmp_path / "p.yaml"
    p.write_bytes(content)
    run_dir = tmp_path / "run"
    assert main(["run", "--params", str(p), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asa: error:") and msg in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not run_dir.exists()  # nothing written


def test_a_run_folder_from_another_params_file_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text('{"name": "demo", "params_file": "/x/demo.yaml"}')
    (run_dir / "keep.txt").write_text("existing artifact")
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(tiny_dict()))
    assert main(["run", "--params", str(p), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "holds a run of params 'demo'" in err and "--run-dir" in err
    assert sorted(x.name for x in run_dir.iterdir()) == ["keep.txt", "run.json"]
    assert "demo" in (run_dir / "run.json").read_text()


@pytest.mark.parametrize(
    "setup, msg",
    [
        (lambda r: r.write_text("a file"), "is a file, not a run folder"),
        (
            lambda r: (r.mkdir(), (r / "thesis.tex").write_text("mine")),
            "is not empty and is not an asa run folder",
        ),
        (lambda r: (r.mkdir(), (r / "run.json").write_text("{not json")), "run.json is damaged"),
    ],
)
def test_run_folders_that_are_not_ours_are_refused_untouched(tmp_path, capsys, setup, msg):
    run_dir = tmp_path / "run"
    setup(run_dir)
    before = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else run_dir.read_text()
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(tiny_dict()))
    assert main(["run", "--params", str(p), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asa: error:") and msg in err and len(err.splitlines()) == 1
    after = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else run_dir.read_text()
    assert after == before


def test_a_folder_that_cannot_be_written_gives_one_line(tmp_path, capsys):
    import os

    run_dir = tmp_path / "ro"
    run_dir.mkdir()
    run_dir.chmod(0o500)
    if os.access(run_dir, os.W_OK):  # root ignores permissions: use a tree nobody may write to
        run_dir = Path("/sys/asa-test-run")
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(tiny_dict()))
    try:
        code = main(["run", "--params", str(p), "--run-dir", str(run_dir)])
    finally:
        (tmp_path / "ro").chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert (
        code == 2
        and err.startswith("asa: error: cannot write the run folder")
        and len(err.splitlines()) == 1
    )


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "asa_lib.cli", "run", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--params" in out.stdout


def test_data_too_small_for_a_split_fails_the_data_stage_with_one_message(tmp_path, capsys):
    import json

    rows = [
        {"instruction": f"Calculate {i} + {i}", "input": "", "output": "The answer."}
        for i in range(6)
    ]
    rows += [
        {"instruction": f"Solve riddle {i}", "input": "", "output": "A candle."} for i in range(2)
    ]
    data = tmp_path / "small.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    d = tiny_dict()
    d["data"]["source"] = str(data)
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(d))
    assert main(["run", "--params", str(p), "--run-dir", str(tmp_path / "run")]) == 1
    out = capsys.readouterr().out
    assert "01_data: FAILED" in out and "DataError: split 'train' has no non-tool example" in out
    assert "02_extraction: not run (an earlier stage failed)" in out and "Traceback" not in out
