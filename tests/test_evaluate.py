"""``asa evaluate``: a tuned adapter applied unchanged to a labelled set; one-line errors; the report."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import pytest
import yaml
from helpers_online import write_adapter

from asa_lib.cli import main
from asa_lib.layout import RunDir
from asa_lib.params import load_params
from asa_lib.run.evaluate import evaluate
from conftest import PARAMS, ROOT

FIXTURES = ROOT / "tests" / "fixtures"


def _labelled_params(tmp, source, base="tiny.yaml", **data):
    """The tiny preset with labelled data (text, label, domain columns) from ``source``."""
    d = yaml.safe_load((PARAMS / base).read_text())
    d["data"] = {"kind": "labelled", "source": str(source), "seed": 42, **data}
    p = tmp / "labelled.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def cli_lm(tiny_params):
    from asa_lib.model.load import load_params_model

    return load_params_model(tiny_params)


@pytest.fixture(scope="module")
def light(tmp_path_factory, cli_lm, tiny_params):
    """An adapter fitted in-process on a few prompts (no pipeline) and rows of both labels."""
    tmp = tmp_path_factory.mktemp("eval")
    folder, fitted, _ = write_adapter(tmp / "run", cli_lm, tiny_params)
    domains = sorted(fitted.bundle.probes) or ["math"]
    rows = [
        {"text": t, "label": i % 2, "domain": domains[i % len(domains)]}
        for i, t in enumerate(fitted.eval_texts)
    ]
    data = _write_rows(tmp / "rows.jsonl", rows)
    # the run's own params.yaml (write_adapter) is the format; with labelled data it is the same
    d = yaml.safe_load((tmp / "run" / "params.yaml").read_text())
    d["data"] = {"kind": "labelled", "source": str(data), "seed": 42}
    params = tmp / "p.yaml"
    params.write_text(yaml.safe_dump(d, sort_keys=False))
    return {"tmp": tmp, "adapter": folder, "rows": rows, "data": data, "params": params}


def _cli(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, msg):
    """``asa evaluate`` refused with one ``asa: error:`` line naming ``msg``, exit 2."""
    err = err.strip()
    assert code == 2, err
    assert err.startswith("asa: error:") and msg in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_second_evaluation_into_a_folder_in_use_names_evaluate_and_its_flag(
    light, capsys, tmp_path
):
    """Round 4, u3: the refusal names ``asa evaluate`` and ``--out-dir``, not ``asa run``'s flag."""
    import subprocess

    from asa_lib.run import lifeline
    from asa_lib.run.evaluate import MARKER

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / MARKER).write_text("{}")  # an evaluation folder ...
    live = subprocess.Popen(["sleep", "120"])
    try:  # ... held by a live evaluation (its holder record: pid and start time)
        (out_dir / ".asa-run.lock.pid").write_text(f"{lifeline.identity(live.pid)}\n")
        code, _, err = _cli(
            capsys,
            "--adapter",
            light["adapter"],
            "--params",
            light["params"],
            "--data",
            light["data"],
            "--out-dir",
            out_dir,
        )
    finally:
        live.kill()
        live.wait()
    one_line_error(code, err, f"is in use by another `asa evaluate` (pid {live.pid})")
    assert "use another --out-dir" in err and "--run-dir" not in err and "asa run" not in err


@pytest.mark.parametrize("case", ["format", "model", "empty", "one class", "no file", "too long"])
def test_bad_evaluations_are_one_line(light, capsys, tmp_path, case):
    d = yaml.safe_load(light["params"].read_text())
    data = light["data"]
    msg = {
        "format": "another format than the run the adapter came from",
        "model": "this adapter was built on",
        "empty": "no usable rows",
        "one class": "recall, FPR and F1 need rows of both labels",
        "no file": "no such file",
        "too long": "generation.max_prompt_tokens is 4096",
    }[case]
    if case == "format":
        d["prompt"]["system_template"] = "You may call: {tools_json}"
    elif case == "model":
        d["model"]["id"] = "someone/else"
    elif case == "empty":
        data = _write_rows(tmp_path / "empty.jsonl", [{"text": " ", "label": 1, "domain": "x"}])
    elif case == "one class":
        data = _write_rows(tmp_path / "ones.jsonl", [dict(r, label=1) for r in light["rows"]])
    elif case == "no file":
        data = tmp_path / "missing.jsonl"
    elif (
        case == "too long"
    ):  # the tiny model's tokenizer is byte-level: 20,000 bytes, 20,000 tokens
        rows = [*light["rows"], {"text": "x" * 20_000, "label": 1, "domain": "math"}]
        data = _write_rows(tmp_path / "long.jsonl", rows)
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(d, sort_keys=False))
    out_dir = tmp_path / "out"
    code, _, err = _cli(
        capsys,
        "--adapter",
        light["adapter"],
        "--params",
        params,
        "--data",
        data,
        "--out-dir",
        out_dir,
    )
    one_line_error(code, err, msg)
    if case not in ("model", "too long"):  # refused before anything is written (these two
        # are checked once the model is loaded)
        assert not out_dir.exists()


def test_an_unseen_domain_is_routed_and_counted(light, cli_lm, tmp_path):
    rows = [dict(r, domain="never_seen") if i % 3 == 0 else r for i, r in enumerate(light["rows"])]
    data = _write_rows(tmp_path / "rows.jsonl", rows)
    params = load_params(light["params"])
    res = evaluate(params, light["adapter"], str(data), tmp_path / "out", lm=cli_lm)
    assert res["domains"]["unseen"] == ["never_seen"]
    for r in res["configs"].values():
        recs = r["records"]
        assert len(recs) == len(rows)  # nothing dropped
        unseen = [x for x in recs if x["domain"] == "never_seen"]
        assert len(unseen) == sum(x["domain"] == "never_seen" for x in rows)
        assert all(x["routed"] in res["domains"]["known_to_bundle"] for x in unseen)
        m = r["splits"]["eval"]["metrics"]
        assert m["n"] == len(rows) and m["per_domain"]["never_seen"]["n"] == len(unseen)


def test_several_overrides_share_one_baseline(light, cli_lm, tmp_path):
    params = load_params(light["params"])
    res = evaluate(
        params, light["adapter"], str(light["data"]), tmp_path / "out", taus=[0.55, 0.9], lm=cli_lm
    )
    names = res["configs_evaluated"]
    assert len(names) == 2 and all(n.startswith("tau=") for n in names)
    assert set(res["configs"]) == {"baseline", *names} and set(res["vs_baseline"]) == set(names)
    base = res["configs"]["baseline"]["records"]
    for n in names:  # a prompt left alone reuses the one baseline output
        for b, s in zip(base, res["configs"][n]["records"]):
            if s["gate"] == 0:
                assert s["output"] == b["output"]
    # the paired difference is recomputed here by hand for F1: steered minus baseline
    for n in names:
        recs = res["configs"][n]["records"]

        def f1(trig):
            tp = sum(1 for r, t in zip(base, trig) if r["label"] == 1 and t)
            fp = sum(1 for r, t in zip(base, trig) if r["label"] == 0 and t)
            fn = sum(1 for r, t in zip(base, trig) if r["label"] == 1 and not t)
            return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)

        want = f1([r["triggered"] for r in recs]) - f1([r["triggered"] for r in base])
        assert res["vs_baseline"][n]["d_f1"] == pytest.approx(want)


def test_an_evaluation_resumes_by_the_runners_record_of_its_inputs(light, cli_lm, tmp_path):
    """One resume mechanism: the evaluation's record (fingerprint of its inputs, sha256 of
    its results) is the runner's stage record, and it says when the results may be reused."""
    from asa_lib.run.evaluate import RESULTS, current_results, inputs_of
    from asa_lib.run.runner import record_status

    params = load_params(light["params"])
    out = tmp_path / "out"
    data = str(light["data"])
    evaluate(params, light["adapter"], data, out, taus=[0.55], lm=cli_lm)
    rec = json.loads((out / "stages" / "evaluate.json").read_text())
    body = (out / RESULTS).read_bytes()
    assert rec["outputs"][RESULTS]["sha256"] == hashlib.sha256(body).hexdigest()
    same = inputs_of(params, light["adapter"], data, [0.55])
    assert current_results(out, same) == json.loads(body)
    # another override, another adapter path spelling of the same folder, another data file
    assert current_results(out, inputs_of(params, light["adapter"], data, [0.6])) is None
    rel = os.path.relpath(light["adapter"])
    assert current_results(out, inputs_of(params, rel, data, [0.55])) is not None
    _, why = record_status(RunDir(out), "evaluate", "0" * 20, notebook=False)
    assert why == "its inputs changed"
    # results edited by hand are not reused
    (out / RESULTS).write_bytes(body.replace(b'"rows_used"', b'"rows_used" ', 1))
    assert current_results(out, same) is None
    _, why = record_status(RunDir(out), "evaluate", rec["fingerprint"], notebook=False)
    assert why == f"{RESULTS} changed since the stage wrote it"


def test_an_evaluation_killed_while_reading_states_resumes_without_reading_them_again(
    light, cli_lm, tmp_path, monkeypatch
):
    """Each batch's states go to the cache as it ends. Killed after its first batch, a
    second evaluation reads only the rows the first did not; killed in generation, a third
    reads none. The records are those of an evaluation that was never killed."""
    import asa_lib.engine.extract as extract
    from asa_lib.engine.cache import GenerationCache

    params = load_params(light["params"])
    params.extraction.batch_size = 2
    data = str(light["data"])
    whole = evaluate(params, light["adapter"], data, tmp_path / "whole", taus=[0.55], lm=cli_lm)
    n = whole["rows_used"]
    assert n > 4  # several batches

    read: list[list[int]] = []
    plain = extract.iter_last_token_states

    def counted(*a, **k):
        for idx, states in plain(*a, **k):
            read.append(idx.tolist())
            yield idx, states

    monkeypatch.setattr(extract, "iter_last_token_states", counted)
    put = GenerationCache.put_states_many
    calls = []

    def killed_after_one(self, items):
        if calls:
            raise KeyboardInterrupt  # the process is killed while its second batch is stored
        calls.append(1)
        put(self, items)

    out = tmp_path / "out"
    monkeypatch.setattr(GenerationCache, "put_states_many", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        evaluate(params, light["adapter"], data, out, taus=[0.55], lm=cli_lm)
    first = read[0]
    assert len(read) == 2 and len(first) == 2
    monkeypatch.setattr(GenerationCache, "put_states_many", put)

    import asa_lib.run.evaluate as ev

    def no_generation(*a, **k):
        raise KeyboardInterrupt

    read.clear()
    monkeypatch.setattr(ev, "score_configs", no_generation)
    with pytest.raises(KeyboardInterrupt):
        evaluate(params, light["adapter"], data, out, taus=[0.55], lm=cli_lm)
    again = sorted(i for b in read for i in b)
    assert again == sorted(set(range(n)) - set(first))  # the rest, each once

    read.clear()
    monkeypatch.undo()
    monkeypatch.setattr(extract, "iter_last_token_states", counted)
    got = evaluate(params, light["adapter"], data, out, taus=[0.55], lm=cli_lm)
    assert read == []  # every state came from the cache
    for name, r in whole["configs"].items():
        assert got["configs"][name]["records"] == r["records"]


def _pairs_auc(y, s):
    """AUC by its definition, a plain loop over (positive, negative) pairs, ties half."""
    pos = [v for v, t in zip(s, y) if t == 1]
    neg = [v for v, t in zip(s, y) if t == 0]
    return sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (
        len(pos) * len(neg)
    )


def test_the_transfer_verdict_reads_the_probe_and_the_gates_off_the_records():
    """#34 item 7, on hand-made records: the AUC is the pairs' definition; each verdict and
    the gate warning follow from the counts."""
    from asa_lib.run.evaluate import transfer

    def recs(labels, p, gates, trig):
        return [
            {"label": y, "p_tool": q, "gate": g, "triggered": t}
            for y, q, g, t in zip(labels, p, gates, trig)
        ]

    y = [1, 0] * 20
    knows = [0.9 if t else 0.1 for t in y]  # separates the labels
    base = recs(y, knows, [0] * 40, [0] * 40)  # the baseline never calls
    weak = recs(y, knows, [1 if t else -1 for t in y], [0] * 40)  # +1 on 20, none follows
    good = recs(y, knows, [1 if t else -1 for t in y], y)  # all 20 follow
    # the gate turned round: all 20 follow it, none towards its label
    wrong = recs(y, knows, [-1 if t else 1 for t in y], [1 - t for t in y])
    res = {
        "baseline": {"records": base},
        "weak": {"records": weak},
        "good": {"records": good},
        "wrong": {"records": wrong},
    }
    t = transfer(res)
    assert t["probe_auc"] == pytest.approx(_pairs_auc(y, knows)) == 1.0
    assert t["configs"]["weak"]["aimed"] == 20 and t["configs"]["weak"]["followed"] == 0
    assert "the pull is too weak: 20 of the 20 rows" in t["configs"]["weak"]["verdict"]
    assert t["configs"]["good"]["verdict"].startswith("the adapter transfers")
    assert t["configs"]["good"]["right"] == 20 and t["configs"]["wrong"]["right"] == 0
    assert t["configs"]["wrong"]["verdict"].startswith(
        "the pull follows the gate, but it does not help here: 20 of the 20 rows"
    )
    # with the paired differences, a ΔF1 interval that reaches 0 does not transfer
    vs = {"good": {"d_f1": 0.1, "d_f1_lo": -0.01, "d_f1_hi": 0.2}}
    good = transfer(res, vs=vs)["configs"]["good"]["verdict"]
    assert "does not help here" in good and "ΔF1 +0.100 [-0.010, +0.200]" in good
    assert t["configs"]["good"]["warning"] is None  # gates split 20/20
    coin = [0.5 + 0.01 * (i % 7) for i in range(40)]  # nothing to do with the labels
    res = {
        "baseline": {"records": recs(y, coin, [0] * 40, [0] * 40)},
        "all_on": {"records": recs(y, coin, [1] * 38 + [0] * 2, [1] * 40)},
    }
    t = transfer(res)
    assert t["probe_auc"] == pytest.approx(_pairs_auc(y, coin))
    lo, hi = t["probe_auc_ci95"]
    assert lo <= 0.5 <= hi
    c = t["configs"]["all_on"]
    assert c["verdict"].startswith("the probe does not separate this set's labels (AUC")
    assert c["verdict"].endswith("steering cannot help here")
    assert c["gates"] == {"-1": 0, "0": 2, "1": 38}
    assert (
        c["warning"]
        == "gate +1 on 38 of 40 rows (95%): the threshold (tau) has not transferred to this set"
    )


def test_an_evaluation_on_shuffled_labels_says_the_probe_cannot_help_here(
    light, cli_lm, tmp_path, capsys
):
    """#34 item 7: labels shuffled, so the probe is at chance; evaluation.json, the console
    and the 08 report's source (the transfer block) say so with the AUC."""
    import random

    from asa_lib.run.evaluate import console_lines

    rows = [dict(r) for r in light["rows"]] * 4
    labels = [i % 2 for i in range(len(rows))]
    random.Random(7).shuffle(labels)
    rows = [dict(r, label=y, id=f"r{i}") for i, (r, y) in enumerate(zip(rows, labels))]
    data = _write_rows(tmp_path / "shuffled.jsonl", rows)
    params = load_params(light["params"])
    res = evaluate(params, light["adapter"], str(data), tmp_path / "out", lm=cli_lm)
    recs = res["configs"]["baseline"]["records"]
    t = res["transfer"]
    assert t["probe_auc"] == pytest.approx(
        _pairs_auc([r["label"] for r in recs], [r["p_tool"] for r in recs])
    )
    assert t["probe_auc_ci95"][0] <= 0.5
    (name,) = res["configs_evaluated"]
    assert "steering cannot help here" in t["configs"][name]["verdict"]
    text = "\n".join(console_lines(res))
    assert f"AUC {t['probe_auc']:.2f}" in text and "steering cannot help here" in text
    # asa summarize writes docs/results.md's block from this evaluation.json (#34 item 8)
    from asa_lib.report.summary import block, summarize

    md = block(summarize(tmp_path / "out"))
    assert t["configs"][name]["verdict"] in md
    for n, r in res["configs"].items():
        m = r["splits"]["eval"]["metrics"]
        assert f"| `{n}` | {m['f1']:.3f} [{m['ci95']['f1'][0]:.3f}, " in md
    assert str(tmp_path) not in md and "shuffled.jsonl" in md


# ---------------------------------------------------------------- against a real sweep
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from test_pipeline import make_tiny_run

    run = make_tiny_run(tmp_path_factory.mktemp("run"))
    assert run["code"] == 0, run["logs"]
    return run


def _split_rows(run_dir, split):
    """The split's rows in the order of its stored states (the sweep's order)."""
    meta = json.loads((run_dir / "states" / f"{split}.json").read_text())
    rows = {
        r["id"]: r
        for r in map(json.loads, (run_dir / "data" / "splits.jsonl").read_text().splitlines())
    }
    return [
        {"id": i, "text": rows[i]["text"], "label": rows[i]["label"], "domain": rows[i]["domain"]}
        for i in meta["ids"]
    ]


@pytest.mark.slow
@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluate_equals_the_sweep_on_the_same_rows(tiny_run, cli_lm, tmp_path, split):
    run_dir = tiny_run["dir"]
    results = json.loads((run_dir / "results.json").read_text())
    chosen = results["chosen"]["name"]
    data = _write_rows(tmp_path / f"{split}.jsonl", _split_rows(run_dir, split))
    params = load_params(_labelled_params(tmp_path, data))
    res = evaluate(params, run_dir / "chosen_adapter", str(data), tmp_path / "out", lm=cli_lm)
    assert res["configs_evaluated"] == [chosen]
    for name in ("baseline", chosen):
        sweep = json.loads((run_dir / "sweep" / f"{name}.json").read_text())
        want = [r for r in sweep["records"] if r["split"] == split]
        got = res["configs"][name]["records"]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            # p(tool) from states read here, not the stored ones: equal to float32 precision
            assert g["p_tool"] == pytest.approx(w["p_tool"], abs=1e-5)
            assert {k: v for k, v in g.items() if k not in ("split", "p_tool")} == {
                k: v for k, v in w.items() if k not in ("split", "p_tool")
            }
        m_got = res["configs"][name]["splits"]["eval"]["metrics"]
        assert m_got == sweep["splits"][split]["metrics"]
    if split == "test":  # the analysis' TEST differences are the evaluation's
        d = results["vs_baseline"]["test"][chosen]
        assert res["vs_baseline"][chosen]["d_f1"] == pytest.approx(d["d_f1"])
        assert res["vs_baseline"][chosen]["d_fpr"] == pytest.approx(d["d_fpr"])


@pytest.mark.slow
def test_cli_writes_a_report_that_opens_offline_and_the_run_index_links_it(
    tiny_run, tmp_path, capsys
):
    run_dir = tiny_run["dir"]
    shutil.copytree(run_dir, tmp_path / "tiny", ignore=shutil.ignore_patterns("cache"))
    run_dir = tmp_path / "tiny"
    data = _write_rows(tmp_path / "rows.jsonl", _split_rows(run_dir, "valid"))
    params = _labelled_params(tmp_path, data)
    out_dir = tmp_path / "reports" / "tiny-eval"
    args = ["--adapter", run_dir / "chosen_adapter", "--params", params, "--data", data]
    code, out, err = _cli(capsys, *args, "--out-dir", out_dir, "--tau", "0.55,0.6")
    assert code == 0, err
    assert re.search(r"baseline\s+F1 \d\.\d{3} \[", out) and out.count("ΔF1") == 2
    res = json.loads((out_dir / "evaluation.json").read_text())
    assert res["data_sha256"] and res["bundle_sha256"] and res["model_id"] == "tiny-lfm2"
    assert res["versions"]["torch"] and len(res["configs"]["baseline"]["records"]) == len(
        _split_rows(run_dir, "valid")
    )
    html = (out_dir / "html" / "08_evaluate.html").read_text()
    assert "paired bootstrap" in html and "data:image/png;base64" in html
    assert "Does the probe know here?" in html and "probe AUC" in html  # #34 item 7
    assert str(tmp_path) not in html and f"rows.jsonl (sha256 {res['data_sha256'][:12]})" in html
    assert not re.search(r"<script[^>]+src=['\"]https?://", html)
    assert not re.search(r"<link[^>]+href=['\"]https?://", html)
    index = (run_dir / "index.html").read_text()
    assert "Evaluations of the chosen adapter" in index and "tiny-eval" in index
    # round 4, u11: the data outside the project is shown by its name and sha256, not its path
    assert f"rows.jsonl (sha256 {res['data_sha256'][:12]})" in index and str(tmp_path) not in index
    # a rerun with the same inputs reuses the results (the runner's record says they are
    # current): nothing is evaluated again, the report is written again
    before = (out_dir / "evaluation.json").read_bytes()
    code, out2, err = _cli(capsys, *args, "--out-dir", out_dir, "--tau", "0.55,0.6")
    assert code == 0, err
    assert "up to date (same inputs), results reused" in out2 and "evaluated" not in out2
    assert (out_dir / "evaluation.json").read_bytes() == before
    # other overrides evaluate again, and the baseline's outputs come from the cache
    code, out3, err = _cli(capsys, *args, "--out-dir", out_dir, "--tau", "0.55")
    assert code == 0, err
    assert "evaluated" in out3
    res3 = json.loads((out_dir / "evaluation.json").read_text())
    assert res3["configs"]["baseline"]["splits"]["eval"]["generated_now"] == 0
    # a folder that is not an evaluation's is refused untouched
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    code, _, err = _cli(capsys, *args, "--out-dir", other)
    one_line_error(code, err, "is not an evaluation folder")
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]


def test_rows_with_their_own_tools_render_and_score_against_them(light, cli_lm, tmp_path):
    """BFCL rows (data/bfcl_live_relevance.jsonl.xz) bring their own tools: each prompt lists them,
    and each call is scored against them."""
    import lzma

    from asa_lib.data import tool_set_id
    from asa_lib.prompts import render_prompt
    from asa_lib.tools import CallMarkers, score_output

    shipped = ROOT / "data" / "bfcl_live_relevance.jsonl.xz"
    rows = [json.loads(x) for x in lzma.decompress(shipped.read_bytes()).decode().splitlines()]
    rows = rows[:3] + rows[-3:]  # both labels
    data = _write_rows(tmp_path / "bfcl.jsonl", rows)
    params = load_params(light["params"])
    res = evaluate(params, light["adapter"], str(data), tmp_path / "out", lm=cli_lm)
    markers = CallMarkers.of(params.prompt)
    for r in res["configs"].values():
        for row, rec in zip(rows, r["records"]):
            assert rec["id"] == row["id"] and rec["tools"] == tool_set_id(row["tools"])
            assert res["tool_sets"][rec["tools"]] == row["tools"]
            score = score_output(rec["output"], markers, row["tools"])
            assert (rec["triggered"], rec["format_valid"], rec["valid"]) == (
                score.triggered,
                score.format_valid,
                score.valid,
            )
    # the prompt of a row names that row's functions, not prompt.tools
    text = render_prompt(cli_lm.tokenizer, params.prompt, rows[0]["text"], rows[0]["tools"])
    assert rows[0]["tools"][0]["name"] in text and "calculator" not in text


def test_the_console_counts_the_rows_skipped_for_bad_tools_and_names_the_first(
    light, cli_lm, tmp_path
):
    """Round 4, u2: 10 of the 23 rows bring a bad tool list; the console says so, not only the
    report."""
    from asa_lib.run.evaluate import console_lines

    data = FIXTURES / "redteam4" / "u2_evaluate_console_silent_on_skipped_rows" / "badtools.jsonl"
    params = load_params(light["params"])
    res = evaluate(params, light["adapter"], str(data), tmp_path / "out", lm=cli_lm)
    assert (res["rows_read"], res["rows_used"]) == (23, 13)
    lines = console_lines(res)
    assert lines[0].startswith(f"13 rows of {data}")
    assert lines[1].startswith(f"skipped 10 of 23 rows of {data}")
    assert "bad tools" in lines[1] and "line 1" in lines[1]
    assert lines[1].split("; e.g. ")[1].count(", field 'tools'") == 3  # the first 3 of 10


def test_the_prompt_format_hash_sees_the_key_order_the_prompt_renders(tiny_params, tiny_lm):
    """{tools_json} keeps each tool's key order: another order is another prompt, and another hash."""
    import copy

    from asa_lib.prompts import prompt_format_sha256, render_prompts

    other = copy.deepcopy(tiny_params.prompt)
    other.tools = [dict(sorted(t.items())) for t in other.tools]
    assert other == tiny_params.prompt  # equal as data ...
    a = render_prompts(tiny_lm.tokenizer, tiny_params.prompt, ["hi"])
    b = render_prompts(tiny_lm.tokenizer, other, ["hi"])
    assert a != b  # ... but not as a prompt
    assert prompt_format_sha256(other) != prompt_format_sha256(tiny_params.prompt)


# ------------------------------------------------ --data: a folder, the params' limits (issue 31)


def test_data_that_names_a_folder_is_refused_as_asa_run_refuses_it(
    light, capsys, tmp_path, monkeypatch
):
    """u8: ``--data FOLDER`` (relative) is a path, never a hub dataset id: one line, the rule
    and the words of ``asa run``'s ``data.source``; nothing read from the hub, nothing written."""
    from asa_lib.data import labelled
    from asa_lib.params import ParamsError

    def no_hub(*args, **kwargs):
        raise AssertionError(f"read as a hub dataset: {args}")

    monkeypatch.setattr(labelled, "load_hub", no_hub)
    folder = tmp_path / "evalset"
    folder.mkdir()
    _write_rows(folder / "rows.jsonl", light["rows"])
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "out"
    said = {}
    for data, msg in [
        ("evalset", f"--data: 'evalset' names the local folder {folder}, not a hub dataset"),
        ("./evalset", f"--data: {folder} is a folder, not a data file"),
    ]:
        code, _, err = _cli(
            capsys,
            "--adapter",
            light["adapter"],
            "--params",
            light["params"],
            "--data",
            data,
            "--out-dir",
            out_dir,
        )
        one_line_error(code, err, msg)
        assert not out_dir.exists()
        said[data] = err.strip().removeprefix("asa: error: --data: ")
    # asa run says the same of data.source (one rule): only the flag and the base differ
    d = yaml.safe_load(light["params"].read_text())
    d["data"]["source"] = "evalset"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    with pytest.raises(ParamsError) as e:
        load_params(tmp_path / "run.yaml")
    head = said["evalset"].split(": name that file")[0]
    assert said["evalset"] == f"{head}: name that file (relative to the working directory)"
    assert str(e.value).endswith(
        f"data.source: {head}: name that file (relative to the params file)"
    )


def test_evaluate_reads_the_data_within_the_params_limits(light, capsys, tmp_path):
    """u5: ``data.max_rows`` and ``data.max_domains`` of --params hold for ``asa evaluate`` as
    for ``asa run``'s data stage, and a message names the params' limit, not the default."""
    from asa_lib.data import DataError
    from asa_lib.params import MAX_DOMAINS
    from asa_lib.run.evaluate import read_eval_data

    rows = [
        {"text": f"req {d} {lab}", "label": lab, "domain": f"d{d}"}
        for d in range(70)
        for lab in (0, 1)
    ]
    data = _write_rows(tmp_path / "70domains.jsonl", rows)
    assert MAX_DOMAINS == 64 < 70

    def params(**limits):
        d = yaml.safe_load(light["params"].read_text())
        d["data"].update(limits)
        p = tmp_path / "limits.yaml"
        p.write_text(yaml.safe_dump(d, sort_keys=False))
        return p

    ds, _ = read_eval_data(load_params(params(max_domains=100)), str(data))
    assert len(ds.domains) == 70 and len(ds.samples) == 140
    with pytest.raises(DataError, match=r"'d3' is one domain more than data.max_domains \(3,"):
        read_eval_data(load_params(params(max_domains=3)), str(data))
    with pytest.raises(DataError, match=r"more than 5 rows; the limit is data.max_rows \(5\)"):
        read_eval_data(load_params(params(max_domains=100, max_rows=5)), str(data))
    out_dir = tmp_path / "out"
    code, _, err = _cli(
        capsys,
        "--adapter",
        light["adapter"],
        "--params",
        params(max_domains=100, max_rows=5),
        "--data",
        data,
        "--out-dir",
        out_dir,
    )
    one_line_error(code, err, "more than 5 rows; the limit is data.max_rows (5)")
    assert not out_dir.exists()
