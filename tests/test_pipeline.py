"""The whole notebook chain (01-07) on the tiny LFM2 through papermill, and resuming."""

import json
import re

import pytest
import yaml

from asa_lib.runner import run
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
    tmp = tmp_path_factory.mktemp("run")
    params = tiny_yaml(tmp)
    logs = []
    code, index = run(params, tmp / "reports" / "tiny", log=logs.append)
    return {"code": code, "index": index, "dir": tmp / "reports" / "tiny", "params": params, "logs": logs, "tmp": tmp}


def test_chain_runs_and_renders_html_with_images(tiny_run):
    assert tiny_run["code"] == 0, "\n".join(tiny_run["logs"])
    run_dir = tiny_run["dir"]
    stages = ["01_data", "02_extraction", "03_probing", "04_vectors", "05_routing",
              "06_sweep__baseline", "06_sweep__mild", "06_sweep__strong", "07_analysis"]
    no_plot = {"06_sweep__baseline"}
    for s in stages:
        html = (run_dir / "html" / f"{s}.html").read_text()
        assert (run_dir / "notebooks" / f"{s}.ipynb").is_file()
        if s not in no_plot:
            assert "data:image/png;base64," in html, s
        assert f"html/{s}.html" in tiny_run["index"].read_text()
    assert "<img" in (run_dir / "html" / "07_analysis.html").read_text()


def test_papermill_parameters_and_results(tiny_run):
    run_dir = tiny_run["dir"]
    nb = json.loads((run_dir / "notebooks" / "06_sweep__strong.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"]["tau"] == 0.6
    assert nb["metadata"]["papermill"]["parameters"]["config_name"] == "strong"
    res = json.loads((run_dir / "results.json").read_text())
    assert set(res["configs"]) == {"baseline", "mild", "strong"}
    assert res["chosen"]["name"] in {"mild", "strong"} and res["chosen"]["selected_on"].startswith("valid")
    for cfg in res["configs"].values():
        for split in ("valid", "test"):
            m = cfg["splits"][split]
            assert {"f1", "precision", "recall", "fpr", "accuracy", "ci95", "per_domain"} <= set(m)
    assert res["configs"]["strong"]["alpha_eff"] > 0 and res["trust_remote_code"] is False
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", res["git_commit"])
    assert (run_dir / "chosen_adapter" / "adapter.safetensors").is_file()
    sweep = json.loads((run_dir / "sweep" / "strong.json").read_text())
    rec = sweep["records"][0]
    assert {"id", "split", "domain", "label", "routed", "p_tool", "gate", "output", "triggered", "valid"} <= set(rec)
    assert {r["split"] for r in sweep["records"]} == {"valid", "test"}


def test_second_run_skips_everything_then_only_changed_configs_rerun(tiny_run):
    logs = []
    code, _ = run(tiny_run["params"], tiny_run["dir"], log=logs.append)
    assert code == 0 and sum("skipped" in x for x in logs) == 9
    d = yaml.safe_load(tiny_run["params"].read_text())
    d["sweep"][0]["alpha"] = 1.0  # change "mild"
    d["sweep"].append({"name": "extra", "tau": 0.7, "alpha": 1.0, "beta": 0.0})
    tiny_run["params"].write_text(yaml.safe_dump(d, sort_keys=False))
    logs = []
    code, _ = run(tiny_run["params"], tiny_run["dir"], log=logs.append)
    ran = [x.split("]")[1].split(":")[0].strip() for x in logs if x.endswith("running ...")]
    assert code == 0 and ran == ["06_sweep__mild", "06_sweep__extra", "07_analysis"]


def test_a_stage_without_its_inputs_names_the_stage_to_run_first(tmp_path):
    import jupytext
    import papermill as pm

    nb = jupytext.read(ROOT / "notebooks" / "03_probing.py")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(nb, str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                            parameters={"params_path": str(tiny_yaml(tmp_path)), "run_dir": str(tmp_path / "run")})
    assert e.value.ename == "MissingInputError" and "run stage 02_extraction first" in e.value.evalue
