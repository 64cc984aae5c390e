"""Faults around `asa run` itself: a killed runner, its lock, the process count, odd run folders,
a sweep with no config, labels nothing separates."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from asa_lib.cli import main
from asa_lib.method import probing
from asa_lib.run import lifeline, runner
from asa_lib.run.parallel import check_processes, launch
from conftest import ROOT
from test_pipeline import tiny_yaml

# ----------------------------------------------------------------------------- helpers


def _tagged(tag: str) -> list[int]:
    """Running processes (not zombies) whose environment carries ``ASA_TEST_TAG=tag``."""
    want = f"ASA_TEST_TAG={tag}".encode()
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if want in (p / "environ").read_bytes().split(b"\0") and lifeline.identity(int(p.name)):
                found.append(int(p.name))
        except OSError:
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _sleeper(**env) -> subprocess.Popen:
    return subprocess.Popen(["sleep", "120"], env={**os.environ, **env})


# ----------------------------------------------------------------------------- a killed runner


@pytest.mark.slow
@pytest.mark.skipif(not lifeline.supported(), reason="the parent-death signal is Linux's")
def test_a_killed_run_leaves_no_process_behind_and_the_rerun_succeeds(tmp_path):
    """`kill -KILL` of `asa run --processes 2` while its torchrun workers extract: the papermill
    kernel, torchrun and both workers end with it, and the next run takes the folder over."""
    params = tiny_yaml(tmp_path)
    run_dir = tmp_path / "run"
    tag = uuid.uuid4().hex  # every process the runner starts inherits its environment
    cmd = [sys.executable, "-m", "asa_lib.cli", "run", "--params", str(params)]
    cmd += ["--run-dir", str(run_dir), "--processes", "2"]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "ASA_TEST_TAG": tag},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 600
        workers = []
        while time.time() < deadline and proc.poll() is None:
            workers = [
                p
                for p in _tagged(tag)
                if "-m asa_lib.run.worker" in _cmdline(p)
                and "torch.distributed.run" not in _cmdline(p)
            ]
            if len(workers) == 2:
                break
            time.sleep(0.1)
        assert len(workers) == 2, "the two extraction workers never started"
        family = _tagged(tag)
        assert len(family) >= 5  # runner, kernel, torchrun, 2 workers
        proc.send_signal(signal.SIGKILL)  # the runner only, as `kill -KILL <pid>` does
        proc.wait()
        deadline = time.time() + 10
        while _tagged(tag) and time.time() < deadline:
            time.sleep(0.1)
        left = {p: _cmdline(p) for p in _tagged(tag)}
        assert not left, f"outlived the runner: {left}"
    finally:
        for p in _tagged(tag):  # never leave the test's own processes behind
            os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (run_dir / ".asa-run.lock.pid").is_file()  # the killed holder's record is left
    logs = []
    code, _ = runner.run(params, run_dir, log=logs.append)
    assert code == 0, "\n".join(logs)
    assert any("02_extraction: running" in x for x in logs)  # the killed stage ran again
    assert (run_dir / "results.json").is_file()


# ----------------------------------------------------------------------------- the run lock


def test_the_lock_refuses_a_live_holder_and_its_survivors_and_takes_a_stale_one_over(
    tmp_path, capsys
):
    """The lock file's record names its holder by pid and start time: a holder that still runs
    (here: its lock file was deleted under it) or processes a killed holder left behind keep the
    folder; a record whose pid is gone or now belongs to another process is taken over."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = run_dir / ".asa-run.lock.pid"
    params = tiny_yaml(tmp_path)
    live = _sleeper()
    try:
        record.write_text(f"{lifeline.identity(live.pid)}\n")  # a live holder, no lock file
        with pytest.raises(runner.RunError, match=f"in use by another `asa run` .pid {live.pid}"):
            with runner.RunLock(run_dir):
                pass
        assert main(["run", "--params", str(params), "--run-dir", str(run_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"in use by another `asa run` (pid {live.pid})" in err
        assert len(err.splitlines()) == 1

        dead = f"{live.pid}:1"  # the same pid, another start time: a reused pid, a stale record
        survivor = _sleeper(**{lifeline.HOLDER_ENV: dead})
        try:
            record.write_text(f"{dead}\n")
            with pytest.raises(runner.RunError) as e, runner.RunLock(run_dir):
                pass
            msg = str(e.value)
            assert "processes of an earlier `asa run` that was killed" in msg
            assert f"(pid {survivor.pid})" in msg and f"kill {survivor.pid}" in msg
        finally:
            survivor.kill()
            survivor.wait()
        with runner.RunLock(run_dir) as lock:  # stale: taken over, the record is ours
            assert record.read_text().strip() == lock.me == lifeline.identity()
        assert not record.exists()  # a clean exit removes it
    finally:
        live.kill()
        live.wait()


def test_identity_tells_a_reused_pid_apart():
    p = _sleeper()
    try:
        ident = lifeline.identity(p.pid)
        assert ident.startswith(f"{p.pid}:") and lifeline.alive(ident)
        assert not lifeline.alive(f"{p.pid}:{int(ident.split(':')[1]) + 1}")
    finally:
        p.kill()
        p.wait()
    assert not lifeline.alive(ident)


# ----------------------------------------------------------------------------- --processes


def test_more_processes_than_cores_or_gpus_are_refused_naming_the_limit(
    tmp_path, capsys, monkeypatch
):
    cores = len(os.sched_getaffinity(0))
    limit = f"more than the {cores} CPU core"
    with pytest.raises(ValueError, match=limit):
        check_processes(cores + 1, "cpu")
    assert check_processes(cores, "cpu") == cores
    with pytest.raises(ValueError, match=limit):  # a worker's launch checks it too
        launch("extract", {"params": {"model": {"device": "cpu"}}}, cores + 1, tmp_path / "w")
    assert not (tmp_path / "w").exists()  # refused before anything started

    run_dir = tmp_path / "run"
    argv = ["run", "--params", str(tiny_yaml(tmp_path)), "--run-dir", str(run_dir)]
    assert main([*argv, "--processes", str(cores + 1)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"asa: error: processes {cores + 1} is more than the {cores} CPU "
        f"core{'' if cores == 1 else 's'} this process may use (os.sched_getaffinity): "
        f"use at most {cores}"
    )
    assert not run_dir.exists()

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"processes 2 is more than the 1 GPU visible"):
        check_processes(2, "auto")
    assert check_processes(1, "auto") == 1  # one process needs no check


def test_processes_auto_is_one_per_gpu_or_two_on_cpu_cores(monkeypatch):
    """``--processes auto`` (make demo): every visible GPU; on CPUs 2, or 1 with one core."""
    import torch

    from asa_lib.run import parallel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for cores, n in ((1, 1), (2, 2), (16, 2)):
        monkeypatch.setattr(parallel, "usable_cores", lambda c=cores: c)
        got, why = parallel.auto_processes("auto")
        assert got == n and f"{cores} CPU core" in why, (cores, got, why)
        assert parallel.auto_processes("cpu")[0] == n
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert parallel.auto_processes("auto") == (3, "one per visible GPU (3)")
    assert parallel.auto_processes("cpu")[0] == 2  # a CPU run ignores the GPUs


def test_the_run_resolves_processes_auto_and_says_to_what(tmp_path, monkeypatch):
    """``asa run --processes auto`` reaches the runner as "auto", which logs its choice and
    passes the count on (the stages themselves are stubbed: nothing runs)."""
    seen = {}

    def fake_locked(params, params_path, run_dir, notebook_dir, progress, log, processes, reports):
        seen["processes"] = processes
        return 0, run_dir / "index.html"

    monkeypatch.setattr(runner, "_run_locked", fake_locked)
    monkeypatch.setattr(runner, "auto_processes", lambda device: (1, f"stub for {device}"))
    logs: list[str] = []
    code, _ = runner.run(tiny_yaml(tmp_path), tmp_path / "run", log=logs.append, processes="auto")
    assert code == 0 and seen["processes"] == 1
    assert logs == ["processes auto: stub for cpu"]
    with pytest.raises(SystemExit) as e:
        main(["run", "--params", str(tiny_yaml(tmp_path)), "--processes", "many"])
    assert e.value.code == 2


# ----------------------------------------------------------------------------- odd run folders


@pytest.mark.slow
def test_braces_in_the_run_folder_are_not_formatted_by_papermill(tmp_path):
    """papermill formats its output path with the parameters: `{dir}` (unknown) failed and
    `{run_dir}` would have been replaced. The notebook lands at the literal path."""
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    (nbs / "x.py").write_text(
        '# %% tags=["parameters"]\nrun_dir = ""\n\n'
        "# %%\nimport pathlib\npathlib.Path(run_dir, 'ran').write_text(run_dir)\n"
    )
    for name in ("a{dir}b", "c{run_dir}d"):
        run_dir = tmp_path / name
        (run_dir / "notebooks").mkdir(parents=True)
        stage = runner.Stage("x", "x", {"run_dir": str(run_dir)})
        out = run_dir / "notebooks" / "x.ipynb"
        runner.execute_notebook(stage, nbs, out, progress=False)
        assert out.is_file() and (run_dir / "ran").read_text() == str(run_dir)
        assert json.loads(out.read_text())["metadata"]["papermill"]["output_path"] == str(out)


# ----------------------------------------------------------------------------- sweep: []


@pytest.mark.slow
def test_a_sweep_with_no_config_reports_the_baseline_alone(tmp_path):
    """`sweep: []` (the schema accepts it): 06 runs the baseline, 07 says there is no steered
    config and writes results.json without a chosen adapter, instead of failing."""
    params = tiny_yaml(tmp_path, sweep=[])
    run_dir = tmp_path / "run"
    logs = []
    code, _ = runner.run(params, run_dir, log=logs.append)
    assert code == 0, "\n".join(logs)
    res = json.loads((run_dir / "results.json").read_text())
    assert list(res["configs"]) == ["baseline"] and res["chosen"]["name"] == "baseline"
    assert res["vs_baseline"] == {"valid": {}, "test": {}} and res["flips"] == {}
    assert not (run_dir / "chosen_adapter").exists()
    nb = json.loads((run_dir / "notebooks" / "07_analysis.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "No steered config: the sweep has no config with results" in text


# ----------------------------------------------------------------------------- labels nothing separates


def test_labels_no_layer_separates_stop_probing_with_one_line_and_no_zero_vector():
    """The same prompts labelled both ways: every layer's VALID AUC is 0.5 and the classes'
    mean states are equal. Stage 03 stops (before, L* was layer 0 and 04 wrote a zero vector,
    on which 05 failed); the vectors refuse to come out zero."""
    rng = np.random.default_rng(0)
    h = rng.normal(size=(12, 3, 8)).astype(np.float32)
    states = np.concatenate([h, h])  # each prompt twice, once per label
    y = np.array([1] * 12 + [0] * 12)
    with pytest.raises(probing.ProbingError) as e:
        probing.layer_sweep(states, y, states, y)
    msg = str(e.value)
    assert "no layer separates the tool and non-tool labels" in msg
    assert "at most 0.5 at every one of the 3 layers" in msg and "\n" not in msg
    with pytest.raises(probing.ProbingError, match="same mean"):
        probing.steering_vectors(states[:, 0], y, ["d"] * 24, ["d"])

    flipped = states.copy()  # what CAL learns is backwards on VALID: AUC below 0.5 everywhere
    flipped[:12, :, 0] += 3.0
    backwards = flipped.copy()
    backwards[:, :, 0] = flipped[::-1, :, 0]
    with pytest.raises(probing.ProbingError, match="no layer separates"):
        probing.layer_sweep(flipped, y, backwards, y)

    # a domain whose classes share a mean gets no vector (the global one stands in), with a note
    d = np.array(["a"] * 6 + ["b"] * 6 + ["a"] * 6 + ["b"] * 6)
    s = states[:, 0].copy()
    s[:6] += 1.0  # domain a separates, domain b does not
    s[12:18] -= 1.0
    vecs, notes = probing.steering_vectors(s, y, list(d), ["a", "b"])
    assert sorted(vecs) == ["a", "global"] and "b: no steering vector" in notes[0]
    assert all(abs(np.linalg.norm(v) - 1) < 1e-6 for v in vecs.values())
