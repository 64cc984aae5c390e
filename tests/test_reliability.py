"""Bad inputs and faults: each ends in one clear error (or a safe result), never a traceback or a silent use."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from asa_lib.method.bundle import BundleError, load_bundle, save_bundle
from asa_lib.params import PromptParams
from asa_lib.tools import CallMarkers, Score, score_output
from test_pipeline import make_tiny_run
from test_probing import _fit, synthetic


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("reliability"))


@pytest.fixture
def bundle_dir(tmp_path):
    h, y, d = synthetic()
    _, b = _fit(h, y, d)
    save_bundle(b, tmp_path / "b")
    return tmp_path / "b"


def _edit_json(folder, fn):
    meta = json.loads((folder / "adapter.json").read_text())
    fn(meta)
    (folder / "adapter.json").write_text(json.dumps(meta))


def _edit_tensor(folder, name, fn):
    t = load_file(str(folder / "adapter.safetensors"))
    t[name] = fn(t[name])
    save_file(t, str(folder / "adapter.safetensors"))


@pytest.mark.parametrize(
    "edit, msg",
    [
        (lambda m: m.pop("layer"), "missing field 'layer'"),
        (lambda m: m.pop("cal_mean_norm"), "missing field 'cal_mean_norm'"),
        (lambda m: m.update(layer=-1), "field 'layer' is -1, outside"),
        (lambda m: m.update(layer=99), "field 'layer' is 99, outside"),
        (lambda m: m.update(layer="1"), "field 'layer' must be int"),
        (lambda m: m.update(cal_mean_norm=float("nan")), "field 'cal_mean_norm' is nan"),
        (lambda m: m.update(cal_mean_norm=1e30), "field 'cal_mean_norm' is 1e+30"),
        (lambda m: m.update(cal_mean_norm=0), "field 'cal_mean_norm' is 0"),
        (lambda m: m.update(domains="math"), "field 'domains' must be list"),
        (lambda m: m.update(probes=["weather"]), "field 'probes' names ['weather']"),
        (lambda m: m.update(model_id=3), "field 'model_id' must be str"),
    ],
)
def test_bundle_json_fields_are_validated(bundle_dir, edit, msg):
    _edit_json(bundle_dir, edit)
    with pytest.raises(BundleError) as e:
        load_bundle(bundle_dir)
    assert msg in str(e.value) and "adapter.json" in str(e.value)


@pytest.mark.parametrize(
    "name, fn, msg",
    [
        ("scaler.scale", lambda a: np.zeros_like(a), "scaler.scale must be positive"),
        ("vector.global", lambda a: a * 2, "vector.global must be a unit vector"),
        ("scaler.mean", lambda a: np.full_like(a, np.inf), "scaler.mean must be finite"),
    ],
)
def test_bundle_tensor_values_are_validated(bundle_dir, name, fn, msg):
    _edit_tensor(bundle_dir, name, fn)
    with pytest.raises(BundleError, match=msg):
        load_bundle(bundle_dir)


def test_bundle_missing_tensor_and_garbage_file(bundle_dir):
    t = load_file(str(bundle_dir / "adapter.safetensors"))
    t.pop("vector.global")
    save_file(t, str(bundle_dir / "adapter.safetensors"))
    with pytest.raises(BundleError, match="vector.global"):
        load_bundle(bundle_dir)
    (bundle_dir / "adapter.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        load_bundle(bundle_dir)
    (bundle_dir / "adapter.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="top level"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("payload", ["[" * 1000, "[" * 100_000, '{"a":' * 5000, "f(" * 3000])
def test_deeply_nested_model_output_is_an_invalid_call_not_a_crash(payload):
    pp = PromptParams()
    assert score_output(pp.tool_call_start + payload, CallMarkers.of(pp), pp.tools) == Score(
        triggered=True, format_valid=False, valid=False
    )


# ----------------------------------------------------------------------------- end to end (tiny model)


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    for lock in dst.glob(".asa-run.lock*"):
        lock.unlink()
    return dst


@pytest.mark.slow
def test_a_recovered_failure_leaves_no_stale_analysis(tiny_run, tmp_path, capfd, monkeypatch):
    """One config fails (here: a marker file its notebook checks), the analysis runs without it;
    after the fault is gone the rerun brings the config back and re-runs the analysis."""
    import shutil

    from asa_lib.run.runner import run
    from conftest import ROOT
    from test_pipeline import comparable

    nbs = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", nbs)
    src = (nbs / "06_sweep.py").read_text()
    (nbs / "06_sweep.py").write_text(
        src.replace(
            "params, run = nb.open_stage(",
            "import pathlib\nassert not (pathlib.Path(run_dir) / f'FAULT_{config_name}').exists(), 'injected fault'\n"
            "params, run = nb.open_stage(",
            1,
        )
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "FAULT_mild").write_text("")
    (run_dir / "run.json").write_text(json.dumps({"name": "tiny"}))
    assert run(tiny_run["params"], run_dir, notebook_dir=nbs, log=lambda *_: None)[0] == 1
    assert "mild" not in json.loads((run_dir / "results.json").read_text())["configs"]
    (run_dir / "FAULT_mild").unlink()
    capfd.readouterr()
    monkeypatch.setenv("ASA_PROGRESS_INTERVAL", "0")  # print every progress update
    logs = []
    assert run(tiny_run["params"], run_dir, notebook_dir=nbs, log=logs.append)[0] == 0
    ran = [x.split("]")[1].split(":")[0].strip() for x in logs if x.endswith("running ...")]
    assert ran == ["06_sweep__mild", "07_analysis"]
    assert comparable(run_dir) == tiny_run["results"]
    # mild's outputs were generated by the first run's 06_generate (only its page failed):
    # the rerun scores them from the cache
    err = capfd.readouterr().err
    assert (
        "IPKernelApp" not in err and "KeyboardInterrupt" not in err
    )  # kernel log noise is silenced


@pytest.mark.slow
def test_changed_or_missing_outputs_are_rerun_and_say_why(tiny_run, tmp_path):
    """A missing output re-runs its stage, a changed one too, each with its reason.

    The missing outputs come first, with 02's states untouched: a re-run 02 need not write
    byte-identical states (float reduction order), and 03 would then re-run because its
    inputs changed, a true but different reason (a full suite once showed it).
    """
    from asa_lib.run.runner import run
    from test_pipeline import comparable

    run_dir = _copy_run(tiny_run["dir"], tmp_path / "run")
    (run_dir / "probing" / "layers.json").unlink()
    (run_dir / "results.json").unlink()
    logs = []
    assert run(tiny_run["params"], run_dir, log=logs.append)[0] == 0
    text = "\n".join(logs)
    assert "02_extraction: up to date, skipped" in text
    assert "03_probing: re-running because probing/layers.json is missing" in text
    assert "07_analysis: re-running because results.json is missing" in text
    assert comparable(run_dir) == tiny_run["results"]  # the re-run outputs equal the originals
    cal = run_dir / "states" / "cal.safetensors"
    data = bytearray(cal.read_bytes())
    data[-64:] = b"\x7f" * 64  # same size, different content
    cal.write_bytes(bytes(data))
    logs = []
    assert run(tiny_run["params"], run_dir, log=logs.append)[0] == 0
    assert (
        "02_extraction: re-running because states/cal.safetensors changed since the stage wrote it"
        in "\n".join(logs)
    )
    truncated = run_dir / "states" / "test.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:100])
    logs = []
    assert run(tiny_run["params"], run_dir, log=logs.append)[0] == 0
    assert any(
        "02_extraction: re-running because states/test.safetensors changed" in x for x in logs
    )


def test_editing_the_library_changes_every_fingerprint(tiny_params, monkeypatch, tmp_path):
    from asa_lib.run import runner

    before = [s.fingerprint for s in runner.plan(tiny_params, tmp_path / "p.yaml", tmp_path)]
    monkeypatch.setattr(runner, "library_source_hash", lambda: "edited")
    after = [s.fingerprint for s in runner.plan(tiny_params, tmp_path / "p.yaml", tmp_path)]
    assert all(a != b for a, b in zip(before, after))


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_is_refused_while_the_first_runs(tmp_path, capsys):
    import subprocess
    import sys
    import time

    from asa_lib.cli import main
    from test_pipeline import tiny_yaml

    params = tiny_yaml(tmp_path)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asa_lib.cli",
            "run",
            "--params",
            str(params),
            "--run-dir",
            str(run_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pid_file = run_dir / ".asa-run.lock.pid"
        deadline = time.time() + 60
        while not pid_file.is_file() and time.time() < deadline:
            time.sleep(0.05)
        assert pid_file.is_file()
        other = tiny_yaml(
            tmp_path, name="other.yaml", sweep=[{"name": "x", "tau": 0.7, "alpha": 1.0}]
        )
        assert main(["run", "--params", str(other), "--run-dir", str(run_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"in use by another `asa run` (pid {proc.pid})" in err and len(err.splitlines()) == 1
    finally:
        proc.kill()
        proc.wait()


def test_an_invalid_utf8_line_is_skipped_and_counted(tmp_path):
    from asa_lib.data.sources import read_local_rows

    good = json.dumps({"instruction": "Calculate 2+2", "input": "", "output": "4"}).encode()
    p = tmp_path / "rows.jsonl"
    p.write_bytes(good + b"\n" + b'{"instruction": "caf\xe9"}\n' + good + b"\n")
    skipped = {}
    rows = read_local_rows(p, skipped)
    assert rows[0] == rows[2] and rows[1] is None and skipped == {"invalid UTF-8 line": 1}


@pytest.mark.parametrize("suffix", [".jsonl.xz", ".jsonl.gz"])
def test_a_damaged_compressed_file_names_the_file(tmp_path, suffix):
    import gzip
    import lzma

    from asa_lib.data.sources import read_local_rows
    from asa_lib.data.splits import DataError

    blob = (
        "\n".join(
            json.dumps({"instruction": f"row {i}", "input": "", "output": "x"}) for i in range(500)
        )
    ).encode()
    packed = lzma.compress(blob) if suffix.endswith("xz") else gzip.compress(blob)
    p = tmp_path / f"rows{suffix}"
    p.write_bytes(packed[: len(packed) // 2])  # cut off half-way
    with pytest.raises(DataError) as e:
        read_local_rows(p)
    assert str(p) in str(e.value) and "damaged or incomplete" in str(e.value)


def test_a_full_disk_gives_one_line(tiny_params, tmp_path, monkeypatch, capsys):
    import errno

    import yaml

    from asa_lib.cli import main
    from asa_lib.run import runner
    from conftest import PARAMS, ROOT

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "index.html"))

    d = yaml.safe_load((PARAMS / "tiny.yaml").read_text())
    d["data"]["source"] = str(ROOT / "data" / "alpaca_subset.jsonl.xz")
    d["data"]["per_split_per_class"] = (
        100_000  # the data stage fails at once; then the index is written
    )
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(d))
    monkeypatch.setattr(runner, "write_index", full)
    assert main(["run", "--params", str(p), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("asa: error: cannot write the run folder")
        and "No space left on device" in err
    )
    assert len(err.splitlines()) == 1


def test_no_steered_config_leaves_no_chosen_adapter(tiny_run, tmp_path):
    from asa_lib.params import load_params
    from asa_lib.run import analysis

    run_dir = _copy_run(tiny_run["dir"], tmp_path / "run")
    assert (run_dir / "chosen_adapter" / "adapter.json").is_file()
    params = load_params(tiny_run["params"])
    params.sweep = []
    res = analysis.collect(params, run_dir)
    assert list(res) == ["baseline"] and analysis.choose_config(res) == "baseline"
    analysis.write_results(params, run_dir, res, "baseline")
    assert not (run_dir / "chosen_adapter").exists()


def test_written_files_honour_the_umask(tiny_run):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    run_dir = tiny_run["dir"]
    for rel in (
        "states/cal.safetensors",
        "bundle/adapter.safetensors",
        "vectors/vectors.safetensors",
        "results.json",
        "sweep/baseline.json",
    ):
        assert stat.S_IMODE((run_dir / rel).stat().st_mode) == 0o666 & ~umask, rel


def test_a_bundle_refuses_another_model_unless_allowed(bundle_dir, tiny_lm):
    from asa_lib.model.load import weights_fingerprint

    b = load_bundle(bundle_dir)  # built on "synthetic", hidden size 12, 3 blocks
    b.model_fingerprint, b.model_weights = "a" * 64, "w" * 64
    b.check_model(12, 3, "synthetic", "a" * 64, weights="w" * 64)  # the same model: fine
    with pytest.raises(
        BundleError, match="built on 'synthetic', not on 'other'.*allow_model_mismatch"
    ):
        b.check_model(12, 3, "other", "a" * 64, weights="w" * 64)
    with pytest.raises(BundleError, match="other names, shapes or dtypes"):
        b.check_model(12, 3, "synthetic", "b" * 64, weights="w" * 64)
    with pytest.raises(BundleError, match="other weights than this one's"):
        b.check_model(12, 3, "synthetic", "a" * 64, weights="v" * 64)
    b.check_model(12, 3, "other", "b" * 64, allow_mismatch=True)  # explicitly overridden
    with pytest.raises(BundleError, match="hidden size"):
        b.check_model(64, 3, "synthetic", allow_mismatch=True)  # shapes must fit in any case
    fp = weights_fingerprint(tiny_lm.model)
    assert fp == tiny_lm.fingerprint and len(fp) == 64
    save_bundle(b, bundle_dir)
    assert load_bundle(bundle_dir).model_fingerprint == "a" * 64
    assert load_bundle(bundle_dir).model_weights == "w" * 64


def test_the_model_check_reads_one_set_of_facts(bundle_dir, tiny_lm):
    """LoadedModel.facts (the sweep) and model_facts of a bare module (the API) feed Bundle.check_facts."""
    from asa_lib.model.load import ModelFacts, model_facts, weights_digest, weights_fingerprint

    fp, w = weights_fingerprint(tiny_lm.model), weights_digest(tiny_lm.model)
    # the tiny LFM2: 64 wide, 4 blocks
    assert tiny_lm.facts() == ModelFacts("tiny-lfm2", 64, 4, fp, w)
    assert model_facts(tiny_lm.model, "vouched") == ModelFacts("vouched", 64, 4, fp, w)
    b = load_bundle(bundle_dir)  # built on "synthetic", hidden size 12, 3 blocks
    b.model_fingerprint, b.model_weights = "a" * 64, "w" * 64
    b.check_facts(ModelFacts("synthetic", 12, 3, "a" * 64, "w" * 64))
    for facts, msg in (
        (ModelFacts("other", 12, 3, "a" * 64, "w" * 64), "not on 'other'"),
        (ModelFacts("synthetic", 12, 3, "b" * 64, "w" * 64), "other names, shapes or dtypes"),
        (ModelFacts("synthetic", 12, 3, "a" * 64, "v" * 64), "other weights than this one's"),
        (ModelFacts("synthetic", 12, 4, "a" * 64, "w" * 64), "the model has 4 blocks"),
        (tiny_lm.facts(), "the model has hidden size 64"),
    ):
        with pytest.raises(BundleError, match=msg):
            b.check_facts(facts)
    b.check_facts(ModelFacts("other", 12, 4, "b" * 64), allow_mismatch=True)
    with pytest.raises(BundleError, match="hidden size 64"):
        b.check_facts(tiny_lm.facts(), allow_mismatch=True)  # shapes must fit in any case


def test_one_table_says_what_each_stage_writes_and_what_later_stages_require(tmp_path):
    from asa_lib.run.stages import (
        CORE_STAGES,
        STAGES,
        MissingInputError,
        require,
        stage_outputs,
        stage_writes,
        sweep_stage,
    )

    # the recorded output hashes are keyed by these paths: they must not move
    assert {s.key: stage_writes(s.key) for s in STAGES if not s.per_config} == {
        "01_data": ["data"],
        "02_extraction": ["states"],
        "03_probing": ["probing"],
        "04_vectors": ["vectors"],
        "05_routing": ["bundle"],
        "06_generate": ["generation/generation.json"],
        "07_analysis": ["results.json", "chosen_adapter"],
    }
    assert stage_writes(sweep_stage("paper")) == ["sweep/paper.json"]
    assert CORE_STAGES == (
        "01_data",
        "02_extraction",
        "03_probing",
        "04_vectors",
        "05_routing",
        "06_generate",
    )
    for s in STAGES:
        for f in s.outputs.needed:  # what require checks lies in what the stage writes
            assert any(f == w or f.startswith(w + "/") for w in s.outputs.writes), (s.key, f)
    # each stage checks the outputs of the stages it needs, and names the one to run first
    require(tmp_path, "01_data")
    # 06_generate and the sweep configs both need 05_routing's bundle (a sweep config reads
    # 06_generate's outputs from the generation cache, not as a required input)
    chain = [*zip(CORE_STAGES[:4], CORE_STAGES[1:5]), ("05_routing", "06_generate")]
    for before, stage in chain:
        with pytest.raises(MissingInputError, match=f"run stage {before} first"):
            require(tmp_path, stage)
        if stage == "06_generate":
            with pytest.raises(MissingInputError, match=f"run stage {before} first"):
                require(tmp_path, sweep_stage("paper"))
        for f in stage_outputs(before).needed:
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / f).write_text("x")
        require(tmp_path, stage)
    require(tmp_path, sweep_stage("paper"))
    require(tmp_path, "07_analysis")
