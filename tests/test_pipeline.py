"""The whole notebook chain (01-07) on the tiny LFM2 through papermill, and resuming."""

import json
import re

import pytest
import yaml

from asa_lib.run.runner import run
from conftest import PARAMS, ROOT

pytestmark = pytest.mark.slow


def tiny_yaml(tmp_path, name="p.yaml", **changes):
    d = yaml.safe_load((PARAMS / "tiny.yaml").read_text())
    d["data"]["source"] = str(ROOT / "data" / "alpaca_subset.jsonl.xz")
    for k, v in changes.items():
        d[k] = v
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("run"))


def make_tiny_run(tmp):
    """Run the tiny preset into ``tmp``; what the tests compare against."""
    params = tiny_yaml(tmp)
    logs = []
    code, index = run(params, tmp / "reports" / "tiny", log=logs.append)
    run_dir = tmp / "reports" / "tiny"
    return {
        "code": code,
        "index": index,
        "dir": run_dir,
        "params": params,
        "logs": logs,
        "tmp": tmp,
        "results": comparable(run_dir),
        "cache_rows": cache_rows(run_dir),
    }


def comparable(run_dir):
    """results.json and every per-prompt record, without timestamps and durations."""
    res = json.loads((run_dir / "results.json").read_text())
    res.pop("created")
    records = {
        p.stem: json.loads(p.read_text())["records"]
        for p in sorted((run_dir / "sweep").glob("*.json"))
    }
    return res, records


def cache_rows(run_dir):
    import sqlite3

    db = sqlite3.connect(str(run_dir / "cache" / "generations.sqlite"))
    try:
        return db.execute("SELECT COUNT(*) FROM gen").fetchone()[0]
    except sqlite3.OperationalError:  # polled while the run is still creating the table
        return 0
    finally:
        db.close()


def test_chain_runs_and_renders_html_with_images(tiny_run):
    assert tiny_run["code"] == 0, "\n".join(tiny_run["logs"])
    run_dir = tiny_run["dir"]
    stages = [
        "01_data",
        "02_extraction",
        "03_probing",
        "04_vectors",
        "05_routing",
        "06_generate",
        "06_sweep__baseline",
        "06_sweep__mild",
        "06_sweep__strong",
        "07_analysis",
    ]
    no_plot = {"06_generate", "06_sweep__baseline"}
    for s in stages:
        html = (run_dir / "html" / f"{s}.html").read_text()
        assert (run_dir / "notebooks" / f"{s}.ipynb").is_file()
        if s not in no_plot:
            assert "data:image/png;base64," in html, s
        assert f"html/{s}.html" in tiny_run["index"].read_text()
    assert "<img" in (run_dir / "html" / "07_analysis.html").read_text()
    for s in stages:  # a shared report opens offline: no script or stylesheet from the network
        html = (run_dir / "html" / f"{s}.html").read_text()
        assert not re.findall(r"<(?:script|link)[^>]+(?:src|href)=[\"']?https?://", html), s
        assert "TqdmWarning" not in html and "IProgress" not in html, s


def test_papermill_parameters_and_results(tiny_run):
    run_dir = tiny_run["dir"]
    nb = json.loads((run_dir / "notebooks" / "06_sweep__strong.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"]["config_name"] == "strong"
    strong = json.loads((run_dir / "sweep" / "strong.json").read_text())
    assert strong["config"] == {
        "name": "strong",
        "tau": 0.6,
        "alpha": 2.0,
        "beta": 0.5,
        "gate": "probe",
        "vector": "mixture",
        "seed": 0,
        "layer": None,  # the config sets no block of its own: it steers at L*
    }
    assert (
        strong["layer"]
        == strong["gate_layer"]
        == json.loads((run_dir / "results.json").read_text())["L_star"]
    )
    res = json.loads((run_dir / "results.json").read_text())
    assert set(res["configs"]) == {"baseline", "mild", "strong"}
    assert res["chosen"]["name"] in {"mild", "strong"} and res["chosen"]["selected_on"].startswith(
        "valid"
    )
    for cfg in res["configs"].values():
        for split in ("valid", "test"):
            m = cfg["splits"][split]
            assert {"f1", "precision", "recall", "fpr", "accuracy", "ci95", "per_domain"} <= set(m)
    assert res["configs"]["strong"]["alpha_eff"] > 0 and res["trust_remote_code"] is False
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", res["git_commit"])
    assert (run_dir / "chosen_adapter" / "adapter.safetensors").is_file()
    sweep = json.loads((run_dir / "sweep" / "strong.json").read_text())
    rec = sweep["records"][0]
    assert {
        "id",
        "split",
        "domain",
        "label",
        "routed",
        "p_tool",
        "gate",
        "output",
        "triggered",
        "valid",
    } <= set(rec)
    assert {r["split"] for r in sweep["records"]} == {"valid", "test"}


def test_07_applies_the_chosen_adapter_through_the_api(tiny_run):
    nb = json.loads((tiny_run["dir"] / "notebooks" / "07_analysis.ipynb").read_text())
    last = nb["cells"][-1]
    text = "".join(
        "".join(o.get("text", "")) for o in last["outputs"] if o["output_type"] == "stream"
    )
    assert "one-pass outputs equal to the sweep's: 6/6" in text
    assert any(
        "steered output" in "".join(o.get("data", {}).get("text/html", "")) for o in last["outputs"]
    )


def differences(a, b, path="") -> list[str]:
    """Where two JSON values differ: one line per differing leaf (``.configs.mild.splits...``)."""
    if type(a) is not type(b):
        return [f"{path}: {a!r:.60} != {b!r:.60}"]
    if isinstance(a, dict):
        return [
            d
            for k in sorted(set(a) | set(b), key=str)
            for d in (
                differences(a[k], b[k], f"{path}.{k}")
                if k in a and k in b
                else [f"{path}.{k}: in one only"]
            )
        ]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r:.60} != {b!r:.60}"]


def cpu_hog(seconds: float):
    """A process that keeps one core busy for at most ``seconds`` (a loaded machine)."""
    import subprocess
    import sys

    loop = f"import time\nt = time.time()\nwhile time.time() - t < {seconds}: pass"
    return subprocess.Popen([sys.executable, "-c", loop])


def test_a_second_run_with_two_processes_gives_identical_results(tiny_run, tmp_path):
    """From scratch again, with 2 data-parallel workers (torchrun) in stages 02 and 06_generate,
    and a process keeping a core busy beside them (round 4, b5: the split of work is a pure
    function of the inputs, so a busy machine changes nothing).

    Results, every per-prompt record, the generation counts and the states
    files are those of the first (one-process) run, byte for byte.
    """
    again = tmp_path / "again"
    hog = cpu_hog(600)
    try:
        code, _ = run(tiny_yaml(tmp_path), again, log=lambda *_: None, processes=2)
    finally:
        hog.kill()
        hog.wait()
    assert code == 0
    diffs = differences(tiny_run["results"], comparable(again))
    assert not diffs, "\n".join(diffs[:20])
    first = tiny_run["dir"]
    for p in sorted((first / "sweep").glob("*.json")):  # generation counts included
        assert (again / "sweep" / p.name).read_bytes() == p.read_bytes(), p.name
    for p in sorted((first / "states").iterdir()):
        assert (again / "states" / p.name).read_bytes() == p.read_bytes(), p.name
    # the workers ran (both had work), and papermill passed the parameter
    nb = json.loads((again / "notebooks" / "06_generate.ipynb").read_text())
    assert "processes = 2" in "".join("".join(c["source"]) for c in nb["cells"])
    ranks = [
        json.loads((again / "parallel" / "06_generate" / f"result.rank{r}.json").read_text())
        for r in (0, 1)
    ]
    assert all(r["generated"] > 0 for r in ranks)
    ext = [
        json.loads((again / "parallel" / "02_extraction" / f"result.rank{r}.json").read_text())
        for r in (0, 1)
    ]
    assert all(r["rows"]["cal"] > 0 for r in ext)


def test_generated_text_is_escaped_in_the_reports(tiny_run):
    import sqlite3

    run_dir = tiny_run["dir"]
    evil = "<|tool_call_start|><script>alert(1)</script><img src=x onerror=alert(2)>"
    db = sqlite3.connect(str(run_dir / "cache" / "generations.sqlite"))
    with db:
        db.execute("UPDATE gen SET output = ?", (evil,))
    db.close()
    (run_dir / "stages" / "06_sweep__baseline.json").unlink()
    code, _ = run(tiny_run["params"], run_dir, log=lambda *_: None)
    assert code == 0
    rec = json.loads((run_dir / "sweep" / "baseline.json").read_text())["records"]
    assert all(r["output"] == evil and r["triggered"] for r in rec)  # the outputs really were shown
    html = (run_dir / "html" / "06_sweep__baseline.html").read_text()
    assert "<script>alert(1)</script>" not in html and "<img src=x onerror" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_failing_config_does_not_stop_the_others(tiny_run, tmp_path):
    import shutil

    nbs = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", nbs)
    src = (nbs / "06_sweep.py").read_text()
    (nbs / "06_sweep.py").write_text(
        src.replace(
            "params, run = nb.open_stage(",
            "assert config_name != 'mild', 'injected failure'\nparams, run = nb.open_stage(",
            1,
        )
    )
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run["dir"], run_dir)
    logs = []
    code, index = run(tiny_run["params"], run_dir, notebook_dir=nbs, log=logs.append)
    assert code == 1
    ran = [x for x in logs if "running" in x]
    assert not any("01_data" in x or "05_routing" in x for x in ran)  # up to date, skipped
    html = index.read_text()
    assert re.search(r"06_sweep__mild(</a>)?</td><td class='[^']*\bfailed'>failed", html)
    assert "AssertionError: injected failure" in html and "notebooks/06_sweep__mild.ipynb" in html
    assert re.search(r"06_sweep__strong(</a>)?</td><td class='[^']*\bok'>ok", html)
    assert re.search(r"07_analysis(</a>)?</td><td class='[^']*\bok'>ok", html)
    res = json.loads((run_dir / "results.json").read_text())
    assert "mild" not in res["configs"] and res["chosen"]["name"] == "strong"


def test_killed_mid_sweep_then_resumed_matches_an_uninterrupted_run(tiny_run, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import psutil

    params = tiny_yaml(tmp_path)
    run_dir = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "asa_lib.cli",
        "run",
        "--params",
        str(params),
        "--run-dir",
        str(run_dir),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = run_dir / "cache" / "generations.sqlite"
    # stage 04 writes the unsteered CAL and VALID outputs first (the diagnostics): kill later
    cost = json.loads((tiny_run["dir"] / "vectors" / "diagnostics.json").read_text())["cost"]
    at_04 = sum(c["generated_now"] for c in cost.values())
    deadline = time.time() + 240
    while time.time() < deadline:
        if db.is_file() and cache_rows(run_dir) >= at_04 + 20:
            break
        time.sleep(0.05)
    parent = psutil.Process(proc.pid)
    parent.suspend()  # first stop the runner, so that it cannot start another kernel meanwhile
    family = parent.children(recursive=True) + [parent]
    for p in family:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)  # every writer is gone before the rows are counted
    proc.wait()
    rows_at_kill = cache_rows(run_dir)
    assert at_04 + 20 <= rows_at_kill < tiny_run["cache_rows"]
    assert not (run_dir / "results.json").exists()
    logs = []
    code, _ = run(params, run_dir, log=logs.append)
    assert code == 0
    rerun = [x.split("]")[1].split(":")[0].strip() for x in logs if x.endswith("running ...")]
    # killed in 06_generate (every config's outputs): it runs again, nothing before it
    assert rerun[0] == "06_generate" and not any(
        s.startswith("0" + str(i)) for s in rerun for i in range(1, 6)
    )
    generation = json.loads((run_dir / "generation" / "generation.json").read_text())
    generated_again = generation["generated_now"] + sum(
        v["generated_now"]
        for name in rerun
        if name.startswith("06_sweep__")
        for v in json.loads((run_dir / "sweep" / f"{name[10:]}.json").read_text())[
            "splits"
        ].values()
    )
    assert (
        rows_at_kill + generated_again == tiny_run["cache_rows"] == cache_rows(run_dir)
    )  # nothing twice
    assert comparable(run_dir) == tiny_run["results"]


def test_second_run_skips_everything_then_only_changed_configs_rerun(tiny_run):
    logs = []
    code, _ = run(tiny_run["params"], tiny_run["dir"], log=logs.append)
    assert code == 0 and sum("skipped" in x for x in logs) == 10
    d = yaml.safe_load(tiny_run["params"].read_text())
    d["sweep"][0]["alpha"] = 1.0  # change "mild"
    d["sweep"].append({"name": "extra", "tau": 0.7, "alpha": 1.0, "beta": 0.0})
    tiny_run["params"].write_text(yaml.safe_dump(d, sort_keys=False))
    logs = []
    code, _ = run(tiny_run["params"], tiny_run["dir"], log=logs.append)
    ran = [x.split("]")[1].split(":")[0].strip() for x in logs if x.endswith("running ...")]
    # 06_generate generates the changed and the new config's rows (its fingerprint covers every
    # config); only those two configs are scored again
    assert code == 0 and ran == ["06_generate", "06_sweep__mild", "06_sweep__extra", "07_analysis"]


def test_a_stage_without_its_inputs_names_the_stage_to_run_first(tmp_path):
    import jupytext
    import papermill as pm

    nb = jupytext.read(ROOT / "notebooks" / "03_probing.py")
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(
            nb,
            str(tmp_path / "out.ipynb"),
            kernel_name="python3",
            progress_bar=False,
            parameters={"params_path": str(tiny_yaml(tmp_path)), "run_dir": str(tmp_path / "run")},
        )
    assert (
        e.value.ename == "MissingInputError" and "run stage 02_extraction first" in e.value.evalue
    )
