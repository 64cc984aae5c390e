"""Stages as library functions (``asa_lib.run.<stage>.run``), called directly, without papermill.

On the tiny preset: stages 01-05 in-process write their files and those files load; the
bundle stage 05 wrote is what ``probing.fit_bundle`` gives on the stored states; a stage
refuses to start without its inputs. The slow test runs the notebook chain (papermill) and
then each stage function on a copy of that stage's inputs: every file it writes is the
notebook's, byte for byte (sha256), but for the seconds a generation took and the time
``results.json`` was written.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from asa_lib.engine.extract import load_meta, load_states
from asa_lib.layout import RunDir
from asa_lib.method import diagnostics, probing
from asa_lib.method.bundle import load_bundle, save_bundle
from asa_lib.params import load_params
from asa_lib.prompts import prompt_format_sha256
from asa_lib.run import analysis, extraction, generation, routing, vectors
from asa_lib.run import data as data_stage
from asa_lib.run import probing as probing_stage
from asa_lib.run.stages import (
    CORE_STAGES,
    MissingInputError,
    hash_outputs,
    stage_writes,
    sweep_stage,
)


@pytest.fixture(scope="module")
def stages(tiny_params, tmp_path_factory):
    """Stages 01-05 of the tiny preset, each by its library function; their results."""
    run = RunDir(tmp_path_factory.mktemp("stages"))
    out = {"run": run, "01": data_stage.run(tiny_params, run)}
    out["02"] = extraction.run(tiny_params, run)  # loads the model
    out["03"] = probing_stage.run(tiny_params, run)
    out["04"] = vectors.run(tiny_params, run, lm=out["02"].lm)  # a caller's model
    out["05"] = routing.run(tiny_params, run)
    out["06"] = generation.run(tiny_params, run, lm=out["02"].lm)  # every config, prompt-major
    return out


def _same_arrays(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)  # safetensors reads names back sorted
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_stages_01_to_05_write_their_files_and_they_load(stages, tiny_params):
    run = stages["run"]
    for stage in CORE_STAGES:
        assert hash_outputs(run, stage), f"{stage} wrote nothing"
    r1, r2, r3, r4, r5 = (stages[k] for k in ("01", "02", "03", "04", "05"))
    # 06_generate: every config's rows, each prompt prefilled once, the L* state checked
    rec = generation.load_generation(run)
    assert rec == stages["06"].record
    assert rec["configs"] == [c.name for c in tiny_params.configs()]
    assert rec["prompts"] == sum(r["prompts"] for r in rec["splits"].values())
    for split, r in rec["splits"].items():
        assert r["prompts"] == len(load_meta(run, split)["ids"])
    # each prompt with rows to generate prefilled once (VALID's baseline is stage 04's)
    assert (
        rec["splits"]["test"]["prompts"] <= rec["generation"]["prompt_prefills"] <= rec["prompts"]
    )
    assert rec["generated_now"] > rec["prompts"]  # steered rows beside the baseline
    test = rec["splits"]["test"]
    assert test["state_at_layer"]["compared"] == test["prompts"]  # TEST's baseline ran here
    assert test["state_at_layer"]["max_rel_diff"] < 1e-4

    summary = json.loads(run.data_summary.read_text())
    assert summary["domains"] == r1.splits.domains
    assert summary["split_sizes"] == {s: len(xs) for s, xs in r1.splits.samples.items()}
    assert all(isinstance(w, str) for w in r1.warnings)

    assert [row["split"] for row in r2.rows] == ["cal", "train", "valid", "test"]
    for row in r2.rows:
        states = load_states(run, row["split"])
        assert states.shape == (row["samples"], r2.lm.num_layers, r2.lm.hidden_size)
        assert len(load_meta(run, row["split"])["ids"]) == row["samples"]

    layers = probing.load_layers(run)
    assert layers["best_layer"] == r3.best_layer and layers["layers"] == r3.sweep.table()
    assert r3.cal_shape == load_states(run, "cal").shape

    assert r4.layer == r3.best_layer and r4.domains == probing.class_order(r1.splits.domains)
    _same_arrays(probing.load_vectors(run), r4.vectors)
    meta = json.loads(run.vectors_meta.read_text())
    assert meta["layer"] == r4.layer and meta["notes"] == r4.vector_notes
    assert meta["vectors"] == list(r4.vectors)
    _same_arrays(diagnostics.load_behaviour_vectors(run), r4.behaviour)
    diag = diagnostics.load_diagnostics(run)
    assert diag == json.loads(json.dumps(r4.diagnostics))
    assert diag["L_star"] == r4.layer and diag["behaviour_notes"] == r4.behaviour_notes
    n_cal = len(load_meta(run, "cal")["ids"])
    assert diag["cost"]["cal"]["prompts"] == diag["calls"]["cal"]["n"] == n_cal
    assert diag["cost"]["cal"]["generated_now"] == n_cal  # a new run: nothing in the cache yet

    b = load_bundle(run.bundle)
    assert r5.files == ["adapter.json", "adapter.safetensors"]
    assert b.sha256 == r5.bundle.sha256 != "" and b.layer == r5.layer == r3.best_layer
    assert b.domains == r5.domains == r4.domains
    _same_arrays(b.vectors, r4.vectors)
    _same_arrays(b.behaviour_vectors, r4.behaviour)
    assert r5.notes == r5.report.notes
    assert r5.valid_accuracy[0]["model"] == "router"
    assert r5.valid_confusion.shape == (len(b.domains),) * 2
    assert r5.valid_confusion.sum() == len(load_meta(run, "valid")["ids"])


def test_the_bundle_is_fit_bundle_on_the_stored_states(stages, tiny_params, tmp_path):
    """Stage 05's bundle = ``probing.fit_bundle`` on the states stage 02 stored, at the L*
    stage 03 stored, with the label vectors computed anew from CAL (stage 04's, recomputed),
    the prompt format and tokenizer stage 02 recorded, and the run's rows."""
    run = stages["run"]
    layers = probing.load_layers(run)
    layer = layers["best_layer"]
    splits = ("cal", "train", "valid")
    meta = {s: load_meta(run, s) for s in splits}
    bundle, report = probing.fit_bundle(
        {s: load_states(run, s)[:, layer] for s in splits},
        {s: np.array(m["labels"]) for s, m in meta.items()},
        {s: m["domains"] for s, m in meta.items()},
        layer,
        json.loads(run.data_summary.read_text())["domains"],
        model_id=meta["cal"]["model_id"],
        num_layers=layers["num_layers"],
        model_fingerprint=meta["cal"]["model_fingerprint"],
        model_weights=meta["cal"]["model_weights"],
        behaviour_vectors=diagnostics.load_behaviour_vectors(run),
        prompt_format_sha256=meta["cal"]["prompt_format_sha256"],
        tokenizer_sha256=meta["cal"]["tokenizer_sha256"],
        run_rows=routing.run_rows(tiny_params, run),
        blocks=probing.load_block_vectors(run),  # stage 04's (checked in the next test)
    )
    stored = load_bundle(run.bundle)
    assert stored.prompt_format_sha256 == prompt_format_sha256(tiny_params.prompt)
    assert sum(map(len, stored.run_rows.values())) == len(run.splits.read_text().splitlines())
    assert sorted(stored.probes) == sorted(bundle.probes) and stored.probes
    for dom, (coef, b) in bundle.probes.items():
        np.testing.assert_array_equal(stored.probes[dom][0], coef, err_msg=dom)
        assert stored.probes[dom][1] == b
    for name in ("scaler_mean", "scaler_scale", "router_coef", "router_intercept"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(bundle, name), err_msg=name)
    assert report.vector_notes == stages["04"].vector_notes
    mine = save_bundle(bundle, tmp_path / "direct")
    for f in ("adapter.safetensors", "adapter.json"):
        assert (mine / f).read_bytes() == (run.bundle / f).read_bytes(), f


def test_stage_04_s_vectors_at_every_other_block_are_plain_mean_differences(stages, tiny_params):
    """Issue 32: ``vectors/blocks.safetensors`` (and the bundle) hold, for every block but L*,
    the unit mean difference of the CAL states there (tool minus non-tool; called minus not
    called), globally and per domain, and the mean |h| there: against a plain numpy loop."""
    from asa_lib.run.sweep import baseline_calls

    run = stages["run"]
    layer = probing.load_layers(run)["best_layer"]
    h = load_states(run, "cal")
    meta = load_meta(run, "cal")
    y, doms = np.array(meta["labels"]), np.array(meta["domains"])

    def unit_diff(x, a):
        if a.all() or not a.any():
            return None
        v = x[a].astype(np.float64).mean(0) - x[~a].astype(np.float64).mean(0)
        n = np.linalg.norm(v)  # zero up to rounding against the states' mean norm: none
        return None if n <= 1e-5 * np.linalg.norm(x.astype(np.float64), axis=1).mean() else v / n

    called = np.array(
        baseline_calls(tiny_params, run, stages["02"].lm, "cal", layer)["called"]  # cached
    )
    blocks = probing.load_block_vectors(run)
    # every block but L* and those where tool and non-tool states have one mean (no vector)
    assert sorted(blocks) == [
        b for b in range(h.shape[1]) if b != layer and unit_diff(h[:, b], y == 1) is not None
    ]
    assert blocks
    stored = load_bundle(run.bundle)
    assert sorted(stored.blocks) == sorted(blocks)

    for b, bv in blocks.items():
        x = h[:, b]
        assert bv.cal_mean_norm == pytest.approx(np.mean([np.linalg.norm(r) for r in x]), rel=1e-6)
        for kind, target, got in (
            ("label", y == 1, bv.vectors),
            ("called", called == 1, bv.behaviour_vectors),
        ):
            want = {"global": unit_diff(x, target)}
            for dom in sorted(set(doms)):
                want[dom] = unit_diff(x[doms == dom], target[doms == dom])
            want = {k: v for k, v in want.items() if v is not None}
            if kind == "called" and "global" not in want:
                assert got == {}
                continue
            assert sorted(got) == sorted(want), (b, kind)
            for k, v in want.items():
                np.testing.assert_allclose(got[k], v, atol=1e-5, err_msg=f"{b} {kind} {k}")
            for k, v in got.items():
                np.testing.assert_array_equal(
                    (
                        stored.blocks[b].vectors
                        if kind == "label"
                        else stored.blocks[b].behaviour_vectors
                    )[k],
                    v,
                )


def test_stage_04_loads_the_model_itself_and_writes_the_same_files(stages, tiny_params, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(stages["run"].root, run.root)
    shutil.rmtree(run.root / "vectors")
    again = vectors.run(tiny_params, run)  # lm=None: load_params_model(params)
    for rel, digest in hash_outputs(stages["run"], "04_vectors").items():
        if rel != "vectors/diagnostics.json":
            assert hash_outputs(run, "04_vectors")[rel] == digest, rel
    first = diagnostics.load_diagnostics(stages["run"])
    diag = diagnostics.load_diagnostics(run)
    assert {k: v for k, v in diag.items() if k != "cost"} == {
        k: v for k, v in first.items() if k != "cost"
    }
    assert diag["cost"]["cal"]["generated_now"] == 0  # read back from the run's cache
    assert again.diagnostics["verdict"] == first["verdict"]


def test_a_stage_function_without_its_inputs_names_the_stage_to_run_first(tiny_params, tmp_path):
    calls = {
        "02_extraction": lambda: extraction.run(tiny_params, tmp_path, lm=object()),
        "03_probing": lambda: probing_stage.run(tiny_params, tmp_path),
        "04_vectors": lambda: vectors.run(tiny_params, tmp_path, lm=object()),
        "05_routing": lambda: routing.run(tiny_params, tmp_path),
        "06_generate": lambda: generation.run(tiny_params, tmp_path, lm=object()),
        "07_analysis": lambda: analysis.run(tiny_params, tmp_path),
    }
    before = {
        "02_extraction": "01_data",
        "03_probing": "02_extraction",
        "04_vectors": "03_probing",
        "05_routing": "04_vectors",
        "06_generate": "05_routing",
        "07_analysis": "05_routing",
    }
    for stage, call in calls.items():
        with pytest.raises(MissingInputError, match=f"run stage {before[stage]} first"):
            call()
    assert not any(tmp_path.iterdir())  # nothing written


# ------------------------------------------------- the same files as the papermill notebooks


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from test_pipeline import make_tiny_run

    made = make_tiny_run(tmp_path_factory.mktemp("chain"))
    assert made["code"] == 0, "\n".join(made["logs"])
    return made


def _copy_outputs(src: RunDir, dest: RunDir, stages: list[str]) -> None:
    """What ``stages`` wrote in ``src``, copied into ``dest`` (the inputs of the next stage)."""
    for stage in stages:
        for rel in stage_writes(stage):
            p, q = src.root / rel, dest.root / rel
            if p.is_dir():
                shutil.copytree(p, q)
            elif p.is_file():
                q.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, q)


# the parts of a file that differ between any two runs: when and how fast it was made
VOLATILE = {
    "vectors/diagnostics.json": lambda d: {
        **d,
        "cost": {s: {k: v for k, v in c.items() if k != "seconds"} for s, c in d["cost"].items()},
    },
    "results.json": lambda d: {k: v for k, v in d.items() if k != "created"},
}


@pytest.mark.slow
def test_each_stage_function_writes_the_files_its_notebook_wrote(chain, tmp_path):
    first = RunDir(chain["dir"])
    params = load_params(chain["params"])
    sweeps = [sweep_stage(c.name) for c in params.configs()]
    order = [*CORE_STAGES, *sweeps, "07_analysis"]
    call = {
        "01_data": lambda run: data_stage.run(params, run),
        "02_extraction": lambda run: extraction.run(params, run),
        "03_probing": lambda run: probing_stage.run(params, run),
        "04_vectors": lambda run: vectors.run(params, run),
        "05_routing": lambda run: routing.run(params, run),
        "07_analysis": lambda run: analysis.run(params, run),
    }
    for stage, fn in call.items():
        run = RunDir(tmp_path / stage)
        run.root.mkdir()
        _copy_outputs(first, run, order[: order.index(stage)])  # no generation cache
        fn(run)
        want, got = hash_outputs(first, stage), hash_outputs(run, stage)
        assert want and sorted(got) == sorted(want), stage
        for rel in want:
            if rel in VOLATILE:
                a, b = (json.loads((r.root / rel).read_text()) for r in (first, run))
                assert VOLATILE[rel](b) == VOLATILE[rel](a), rel
            else:
                assert got[rel] == want[rel], rel


def test_configs_at_other_blocks_run_through_06_and_07(stages, tiny_params, tmp_path):
    """Issue 32, end to end in-process: ``steering.blocks`` resolved on stage 03's AUCs, a config
    at ``auto1`` and one at a fixed block: each is generated and scored at its block, alpha in
    that block's unit, the resolved blocks in results.json, and the run's cache keys of the
    configs without ``layer`` unchanged (their rows are read back, none generated)."""
    import copy

    from asa_lib.params import BlockRule, SweepConfig
    from asa_lib.run import sweep

    run = RunDir(tmp_path / "run")
    shutil.copytree(stages["run"].root, run.root)
    lm = stages["02"].lm
    layers = probing.load_layers(run)
    best = layers["best_layer"]
    blocks = probing.load_block_vectors(run)
    params = copy.deepcopy(tiny_params)
    params.steering.blocks = BlockRule(count=1, min_distance=1)
    want = probing.resolve_blocks(
        params.steering.blocks, [r["auc"] for r in layers["layers"]], best
    )
    assert want and want[0] in blocks
    fixed = next(b for b in sorted(blocks) if b != want[0])
    params.sweep = [
        *params.sweep,
        SweepConfig("at_auto1", tau=0.55, alpha=0.5, layer="auto1"),
        SweepConfig("at_fixed", tau=0.55, alpha=0.5, layer=fixed, vector="mixture"),
    ]
    rec = generation.run(params, run, lm=lm)
    n_eval = rec.record["prompts"]
    # the configs without layer: every row read back from stage 06's cache (same keys as before)
    for c in tiny_params.sweep:
        assert rec.record["generated_by_config"][c.name] == 0, c.name
    assert rec.record["config_layers"] == {"at_auto1": want[0], "at_fixed": fixed}
    assert rec.record["steering_blocks"]["blocks"] == want
    for c in params.configs():
        out = sweep.run_config(params, run, lm, load_bundle(run.bundle), c)
        assert out["splits"]["valid"]["generated_now"] == 0  # all from 06_generate
    at = json.loads(run.sweep("at_auto1").read_text())
    assert at["layer"] == want[0] and at["gate_layer"] == best
    assert at["alpha_eff"] == pytest.approx(0.5 * blocks[want[0]].cal_mean_norm)
    mild = json.loads(run.sweep("mild").read_text())
    assert mild["layer"] == best and mild["alpha_eff"] == pytest.approx(
        0.5 * load_bundle(run.bundle).cal_mean_norm
    )
    # the gate reads L*: the same gates as the L* config with the same tau
    same_tau = json.loads(run.sweep("at_fixed").read_text())
    assert [r["gate"] for r in same_tau["records"]] == [r["gate"] for r in at["records"]]
    done = analysis.run(params, run)
    res = done.results
    assert res["steering_blocks"]["blocks"] == want and res["steering_blocks"]["L_star"] == best
    assert res["configs"]["at_fixed"]["layer"] == fixed
    assert {"-1 gate, still calls", "+1 gate, newly abstains"} <= set(res["flips"]["at_fixed"][0])
    assert set(res["advice"]) == {c.name for c in params.sweep}
    chosen = load_bundle(run.chosen_adapter)
    c = res["chosen"]
    assert chosen.extra["config"].get("layer", best) == c["layer"]
    assert n_eval > 0
