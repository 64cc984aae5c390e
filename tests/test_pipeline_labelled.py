"""data.kind: labelled end to end (01-07 through papermill) on the tiny model, with non-seed domains."""

import json

import pytest
import yaml

from asa_lib.run.runner import run
from asa_lib.seed import SEED_DOMAINS
from conftest import PARAMS, ROOT

pytestmark = pytest.mark.slow

OURS = ["weather", "calendar", "none"]  # the example's domains, in file order


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labelled")
    d = yaml.safe_load((PARAMS / "labelled_example.yaml").read_text())
    d["data"]["source"] = str(ROOT / "data" / "labelled_example.jsonl")
    params = tmp / "labelled.yaml"
    params.write_text(yaml.safe_dump(d, sort_keys=False))
    logs = []
    code, _ = run(params, tmp / "run", log=logs.append)
    return {"code": code, "dir": tmp / "run", "logs": logs}


def read(run_dir, rel):
    return json.loads((run_dir / rel).read_text())


def test_the_labelled_example_runs_end_to_end(labelled_run):
    assert labelled_run["code"] == 0, "\n".join(labelled_run["logs"])


def test_domains_are_the_data_s_everywhere(labelled_run):
    run_dir = labelled_run["dir"]
    summary = read(run_dir, "data/summary.json")
    assert summary["kind"] == "labelled" and summary["domains"] == OURS and summary["skipped"] == {}
    assert summary["bucket_sizes"]["none"] == {"tool": 0, "non_tool": 40}

    bundle = read(run_dir, "bundle/adapter.json")
    assert bundle["domains"] == bundle["router_classes"] == sorted(OURS)
    # "none" has no tool rows: no probe (p = 0.5) and no vector (the global one is used)
    assert bundle["probes"] == ["calendar", "weather"]
    assert sorted(bundle["vectors"]) == ["calendar", "global", "weather"]

    results = read(run_dir, "results.json")
    assert results["domains"] == sorted(OURS)
    assert set(results["configs"]) == {"baseline", "mild", "strong"}
    for cfg in results["configs"].values():
        for split in ("valid", "test"):
            per_domain = cfg["splits"][split]["per_domain"]
            assert sorted(per_domain) == sorted(OURS)
            assert per_domain["none"]["tp"] + per_domain["none"]["fn"] == 0  # no tool rows there
            assert per_domain["weather"]["n"] == (6 if split == "valid" else 12)

    for name in ("mild", "strong"):
        records = read(run_dir, f"sweep/{name}.json")["records"]
        assert {r["domain"] for r in records} == set(OURS)
        assert {r["routed"] for r in records} <= set(OURS)
        routed_none = [r for r in records if r["routed"] == "none"]
        assert all(r["p_tool"] == 0.5 and r["gate"] == 0 for r in routed_none)  # never steered

    for rel in ("data/summary.json", "bundle/adapter.json", "results.json", "sweep/strong.json"):
        text = (run_dir / rel).read_text()
        for seed_domain in SEED_DOMAINS:
            assert f'"{seed_domain}"' not in text, (rel, seed_domain)


def test_reports_show_the_data_s_domains_and_fallbacks(labelled_run):
    html = labelled_run["dir"] / "html"
    assert "weather" in (html / "01_data.html").read_text()
    assert "none: no steering vector" in (html / "04_vectors.html").read_text()
    routing = (html / "05_routing.html").read_text()
    assert (
        "none: no probe" in routing and "probe calendar" in routing and "probe weather" in routing
    )


def test_fit_bundle_on_the_run_s_states_gives_the_run_s_bundle_files(labelled_run, tmp_path):
    """``probing.fit_bundle`` in memory (as tests and benchmarks fit) writes what stages 04-05 wrote."""
    import numpy as np

    from asa_lib.data import read_domains
    from asa_lib.engine.extract import load_meta, load_states
    from asa_lib.method import probing
    from asa_lib.method.bundle import save_bundle
    from asa_lib.params import load_params
    from asa_lib.run.routing import run_rows

    run_dir = labelled_run["dir"]
    layers = probing.load_layers(run_dir)
    layer = layers["best_layer"]
    meta = {s: load_meta(run_dir, s) for s in ("cal", "train")}
    bundle, report = probing.fit_bundle(
        {s: load_states(run_dir, s, layer) for s in meta},
        {s: np.array(m["labels"]) for s, m in meta.items()},
        {s: m["domains"] for s, m in meta.items()},
        layer,
        read_domains(run_dir),
        model_id=meta["cal"]["model_id"],
        num_layers=layers["num_layers"],
        model_fingerprint=meta["cal"].get("model_fingerprint", ""),
        model_weights=meta["cal"].get("model_weights", ""),
        prompt_format_sha256=meta["cal"]["prompt_format_sha256"],
        tokenizer_sha256=meta["cal"]["tokenizer_sha256"],
        run_rows=run_rows(load_params(run_dir / "params.yaml", check_files=False), run_dir),
        # the other blocks' vectors: stage 04's (against a plain loop in test_stage_functions)
        blocks=probing.load_block_vectors(run_dir),
    )  # vectors computed here, not read from vectors/
    assert report.vector_notes == read(run_dir, "vectors/vectors.json")["notes"]
    folder = save_bundle(bundle, tmp_path / "bundle")
    for f in ("adapter.safetensors", "adapter.json"):
        assert (folder / f).read_bytes() == (run_dir / "bundle" / f).read_bytes(), f
