"""Notebooks that run where they are opened, and reports for their reader (issue 24)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import ROOT


def _project_copy(tmp_path: Path) -> Path:
    """A copy of the project's sources (pyproject.toml, notebooks, params, data) in tmp_path."""
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "pyproject.toml", proj)
    for d in ("notebooks", "params"):
        shutil.copytree(ROOT / d, proj / d)
    (proj / "data").mkdir()
    shutil.copy(ROOT / "data" / "alpaca_subset.jsonl.xz", proj / "data")
    return proj


def test_relative_stage_paths_are_taken_from_the_project_root_wherever_the_kernel_starts(
    tmp_path, monkeypatch
):
    from asa_lib.layout import RunFolderError
    from asa_lib.nb import stage_paths

    proj = _project_copy(tmp_path)
    for cwd in (proj, proj / "notebooks", proj / "params"):
        monkeypatch.chdir(cwd)
        params, run = stage_paths("params/tiny.yaml", "reports/tiny")
        assert params == proj / "params" / "tiny.yaml" and run == proj / "reports" / "tiny"
    monkeypatch.chdir(proj / "notebooks")
    for bad in ("notebooks/reports/tiny", "notebooks"):
        with pytest.raises(RunFolderError, match="inside notebooks/"):
            stage_paths("params/tiny.yaml", bad)
    with pytest.raises(RunFolderError, match="inside notebooks/"):
        stage_paths("params/tiny.yaml", str(proj / "notebooks" / "x"))


def test_asa_run_refuses_a_run_folder_inside_notebooks(tmp_path):
    from asa_lib.run.runner import NOTEBOOK_DIR, RunError, run

    target = NOTEBOOK_DIR / "reports" / "tiny"
    with pytest.raises(RunError, match="inside notebooks/"):
        run(ROOT / "params" / "tiny.yaml", target, log=lambda *_: None)
    assert not (NOTEBOOK_DIR / "reports").exists()


@pytest.mark.slow
def test_01_data_runs_with_its_defaults_from_inside_notebooks(tmp_path):
    """As JupyterLab and VS Code run it: the kernel's working folder is notebooks/."""
    import jupytext
    import papermill as pm

    from asa_lib.run.runner import KERNEL

    proj = _project_copy(tmp_path)
    nb = jupytext.read(proj / "notebooks" / "01_data.py")
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    env = {"PYTHONPATH": str(ROOT)}  # the kernel imports this checkout's asa_lib
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        pm.execute_notebook(
            nb,
            str(tmp_path / "out.ipynb"),
            kernel_name=KERNEL,
            cwd=str(proj / "notebooks"),
            progress_bar=False,
            log_output=False,
        )
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert (proj / "reports" / "tiny" / "data" / "splits.jsonl").is_file()
    assert not (proj / "notebooks" / "reports").exists()


def test_a_data_source_outside_the_project_is_shown_by_name_and_sha256(tmp_path):
    """Round 4, u11: a reader-mode 01 page never prints ``data.source`` as an absolute path of
    this machine (here: a folder beside neither the params file nor the run)."""
    import hashlib

    import jupytext
    import papermill as pm
    import yaml

    from asa_lib.report.html import render_html
    from asa_lib.run.runner import KERNEL

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = elsewhere / "rows.jsonl"
    shutil.copy(ROOT / "data" / "labelled_example.jsonl", data)
    d = yaml.safe_load((ROOT / "params" / "labelled_example.yaml").read_text())
    d["data"]["source"] = str(data)
    (tmp_path / "p").mkdir()
    params = tmp_path / "p" / "p.yaml"
    params.write_text(yaml.safe_dump(d, sort_keys=False))
    run_dir = tmp_path / "run"
    (run_dir / "notebooks").mkdir(parents=True)
    nb = jupytext.read(ROOT / "notebooks" / "01_data.py")
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    executed = run_dir / "notebooks" / "01_data.ipynb"
    pm.execute_notebook(
        nb,
        str(executed),
        parameters={"params_path": str(params), "run_dir": str(run_dir)},
        kernel_name=KERNEL,
        cwd=str(ROOT),
        progress_bar=False,
        log_output=False,
    )
    page = render_html(executed, run_dir / "html" / "01_data.html", mode="reader")
    text = _text(page)
    digest = hashlib.sha256(data.read_bytes()).hexdigest()[:12]
    assert f"source: rows.jsonl (sha256 {digest})" in text
    assert str(elsewhere) not in text and str(tmp_path) not in text


def test_shown_paths_are_project_relative_or_a_name_with_its_sha256(tmp_path):
    import hashlib

    from asa_lib.layout import shown_path

    inside = ROOT / "data" / "labelled_example.jsonl"
    assert shown_path(inside, ROOT) == "data/labelled_example.jsonl"
    outside = tmp_path / "x.jsonl"
    outside.write_bytes(b"{}\n")
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()[:12]
    assert shown_path(outside, ROOT) == f"x.jsonl (sha256 {digest})"
    assert shown_path("../rows.jsonl", ROOT) == "../rows.jsonl"  # relative: as written
    assert shown_path("tatsu-lab/alpaca", ROOT) == "tatsu-lab/alpaca"  # a hub id
    assert shown_path(tmp_path / "missing.jsonl", ROOT) == "missing.jsonl"


# --- the reports of a tiny run, as a reader gets them ---------------------------------------

_IMAGE = re.compile(r"data:image/[a-z+]+;base64,[A-Za-z0-9+/=]+")
_CODE_DETAILS = re.compile(r"<details class=\"asa-code[^\"]*\"[^>]*>.*?</details>", re.S)


@pytest.fixture(scope="module")
def tiny_reports(tmp_path_factory):
    from test_pipeline import make_tiny_run

    tmp = tmp_path_factory.mktemp("reports")
    made = make_tiny_run(tmp)
    assert made["code"] == 0, "\n".join(made["logs"])
    return made


def _text(path: Path) -> str:
    """A page without its embedded images (base64 may hold any short string by chance)."""
    return _IMAGE.sub("data:image/png;base64,", path.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_reader_pages_fold_code_leak_no_path_and_name_their_run_and_stage(tiny_reports):
    run_dir = tiny_reports["dir"]
    pages = sorted((run_dir / "html").glob("*.html"))
    keys = [json_key["key"] for json_key in _stage_rows(run_dir)]
    assert [p.stem for p in pages] == sorted(keys)
    machine = {
        str(run_dir),
        str(run_dir.resolve()),
        str(tiny_reports["tmp"]),
        str(ROOT),
        str(ROOT.resolve()),
        str(Path.home()),
        os.path.dirname(str(tiny_reports["tmp"])),  # the pytest base folder
    }
    for page in pages:
        text = _text(page)
        outside = _CODE_DETAILS.sub("", text)
        # every code cell's input is inside a <details>: none is left outside
        editor = 'class="jp-CodeMirrorEditor'  # a code cell's input (the CSS names it too)
        assert editor in text and editor not in outside, page.name
        assert 'class="highlight hl-ipython3"' not in outside, page.name
        for p in machine:
            assert p not in text, (page.name, p)
        for w in ("FutureWarning", "DeprecationWarning"):
            assert w not in text, (page.name, w)
        stem, _, config = page.stem.partition("__")
        label = stem.replace("_", " ") + (f" · {config}" if config else "")
        assert f"<title>ASA tiny · {label}</title>" in text, page.name
        # no default-parameter cell; the injected one, open, paths relative to the run
        assert "celltag_parameters" not in text and "celltag_injected-parameters" in text
        assert len(re.findall(r'<details class="asa-code asa-params" open', text)) == 1, page.name
        assert "href='../index.html'" in text and f"../notebooks/{page.stem}.ipynb" in text
    first, last = keys[0], keys[-1]
    assert f"href='{keys[1]}.html'" in _text(run_dir / "html" / f"{first}.html")
    assert f"href='{keys[-2]}.html'" in _text(run_dir / "html" / f"{last}.html")
    analysis_page = _text(run_dir / "html" / "07_analysis.html")
    assert "<nav class='asa-toc'>" in analysis_page and "Ablations" in analysis_page
    index = _text(run_dir / "index.html")
    for p in machine:
        assert p not in index, p


def _stage_rows(run_dir: Path) -> list[dict]:
    import json

    return json.loads((run_dir / "index_stages.json").read_text())


@pytest.mark.slow
def test_full_reports_keep_every_cell(tiny_reports, tmp_path):
    from asa_lib.report.html import render_html

    run_dir = tiny_reports["dir"]
    out = render_html(run_dir / "notebooks" / "03_probing.ipynb", tmp_path / "03.html", mode="full")
    text = _text(out)
    assert "celltag_parameters" in text and '<details class="asa-code' not in text
    assert 'class="jp-CodeMirrorEditor' in text


_NUM = r"([+−-]?\d+\.\d+)"


def _signed(s: str) -> float:
    return float(s.replace("−", "-"))


def _check_verdict_against(sentence: str, results: dict) -> None:
    """The numbers and claims of a verdict sentence, recomputed from results.json."""
    configs = results["configs"]
    base_valid = configs["baseline"]["splits"]["valid"]["f1"]
    dv = results["vs_baseline"]["valid"]  # beyond noise: the paired interval above 0
    beat = [n for n in configs if n != "baseline" and dv[n]["d_f1_lo"] > 0]
    if beat:
        m = re.match(
            r"(\d+) of (\d+) configs beat the baseline on VALID with a paired 95% interval "
            r"above 0",
            sentence,
        )
        assert m and int(m.group(1)) == len(beat) and int(m.group(2)) == len(configs) - 1
    else:
        m = re.match(
            rf"No config beats the baseline on VALID with a paired 95% interval above 0 "
            rf"\(baseline F1 {_NUM}; (\d+) configs\)\.",
            sentence,
        )
        assert m and float(m.group(1)) == pytest.approx(base_valid, abs=5e-4)
        assert int(m.group(2)) == len(configs) - 1
    chosen = results["chosen"]["name"]
    m = re.search(
        rf"Chosen (\S+): TEST ΔF1 {_NUM} \[{_NUM}, {_NUM}\].*?FPR {_NUM} → {_NUM}.*?"
        rf"recall {_NUM} → {_NUM}\.",
        sentence,
    )
    assert m, sentence
    assert m.group(1) == chosen
    d = results["vs_baseline"]["test"][chosen]
    got = [_signed(g) for g in m.groups()[1:]]
    want = [d["d_f1"], d["d_f1_lo"], d["d_f1_hi"]]
    bt, ct = configs["baseline"]["splits"]["test"], configs[chosen]["splits"]["test"]
    want += [bt["fpr"], ct["fpr"], bt["recall"], ct["recall"]]
    assert got == pytest.approx(want, abs=5e-3)
    # the interval's word follows from its ends
    lo, hi = d["d_f1_lo"], d["d_f1_hi"]
    word = (
        "no change on any resample"
        if lo == hi == 0
        else "CI above 0"
        if lo > 0
        else "CI below 0"
        if hi < 0
        else "CI includes 0"
    )
    assert f"] ({word})" in sentence


@pytest.mark.slow
def test_the_index_and_07_open_with_a_verdict_from_results_json(tiny_reports):
    import html as html_lib
    import json

    run_dir = tiny_reports["dir"]
    results = json.loads((run_dir / "results.json").read_text())
    index = (run_dir / "index.html").read_text()
    m = re.search(r"</h1>\s*<p class='verdict'>(.*?)</p>", index, re.S)
    assert m, "the index does not open with a verdict"
    sentence = html_lib.unescape(m.group(1))
    _check_verdict_against(sentence, results)
    # the same sentence at the top of 07, before any table
    page = (run_dir / "html" / "07_analysis.html").read_text()
    m7 = re.search(r"<p class=[\"']asa-verdict[\"']><b>(.*?)</b></p>", page, re.S)
    assert m7 and html_lib.unescape(m7.group(1)) == sentence
    assert m7.start() < page.index("<table")
    # date, commit, model and versions come right after it; the baseline's knobs are "—"
    meta = index[m.end() : index.index("<h2>")]
    assert "finished 20" in meta and "commit" in meta and "tiny-lfm2" in meta
    assert "torch" in meta and "transformers" in meta
    row = re.search(
        r"<tr><td class='l'><a href='html/06_sweep__baseline.html'>baseline</a>.*?</tr>", index
    )
    assert row and row.group(0).count("<td>—</td>") >= 3 and "None" not in index
    assert "TEST calls: complete valid / complete invalid / cut (of the calls)" in index


def test_a_verdict_names_the_configs_that_beat_the_baseline():
    """The wording where configs do beat the baseline (numbers made up for the sentence only)."""
    from asa_lib.report.verdict import verdict

    def split(f1, fpr, recall):
        return {"f1": f1, "fpr": fpr, "recall": recall}

    results = {
        "configs": {
            "baseline": {
                "splits": {"valid": split(0.40, 0.50, 0.94), "test": split(0.41, 0.50, 0.94)}
            },
            "t60_a50": {
                "splits": {"valid": split(0.52, 0.15, 0.90), "test": split(0.50, 0.15, 0.90)}
            },
            "t75_a25": {
                "splits": {"valid": split(0.38, 0.40, 0.92), "test": split(0.39, 0.41, 0.93)}
            },
        },
        "chosen": {"name": "t60_a50"},
        "vs_baseline": {
            "valid": {
                "t60_a50": {"d_f1": 0.12, "d_f1_lo": 0.05, "d_f1_hi": 0.2},
                "t75_a25": {"d_f1": -0.02, "d_f1_lo": -0.05, "d_f1_hi": 0.01},
            },
            "test": {
                "t60_a50": {
                    "d_f1": 0.09,
                    "d_f1_lo": 0.02,
                    "d_f1_hi": 0.16,
                    "d_fpr": -0.35,
                    "d_fpr_lo": -0.45,
                    "d_fpr_hi": -0.25,
                },
            },
        },
    }
    sentence = verdict(results)
    _check_verdict_against(sentence, results)
    assert sentence.startswith("1 of 2 configs beat the baseline on VALID with a paired 95%")
    assert "the best, t60_a50, raises F1 from 0.400 to 0.520" in sentence
    assert "(ΔFPR CI below 0)" in sentence and "FPR 0.50 → 0.15" in sentence
    assert "tied" not in sentence
    # a point estimate above the baseline is not a win: ΔF1 +0.02 [-0.01, +0.05]
    results["vs_baseline"]["valid"]["t60_a50"] = {"d_f1": 0.02, "d_f1_lo": -0.01, "d_f1_hi": 0.05}
    sentence = verdict(results)
    _check_verdict_against(sentence, results)
    assert sentence.startswith("No config beats the baseline on VALID with a paired 95%")
    # a tie at the chosen config's VALID F1 is named with the rule that broke it
    results["configs"]["t75_a25"]["splits"]["valid"] = split(0.52, 0.15, 0.90)
    assert (
        "t60_a50 was chosen among 2 configs tied at VALID F1 0.520, by its place in the "
        "params (the first of 2 with equal VALID F1 and FPR)" in verdict(results)
    )
    results["configs"]["t75_a25"]["splits"]["valid"] = split(0.52, 0.20, 0.90)
    assert "tied at VALID F1 0.520, by the lower VALID FPR." in verdict(results)


def test_tables_show_outputs_without_turn_tokens_and_keep_call_markers():
    """#34 item 5: <|im_end|> and the like are dropped for display; call markers stay."""
    import pandas as pd

    from asa_lib.report.tables import table

    outputs = ['<tool_call>{"name": "f"}</tool_call><|im_end|>', "[f()]<|tool_call_end|></s>"]
    out = table(pd.DataFrame({"output": outputs}))._repr_html_()
    assert "im_end" not in out and "&lt;/s&gt;" not in out
    assert "&lt;tool_call&gt;" in out and "&lt;|tool_call_end|&gt;" in out


def test_tables_for_a_reader():
    """No index column; counts as integers, rates at 3 decimals, knobs as given, — where not
    applicable; text left-aligned, escaped and cut with its full text kept in a tooltip."""
    import pandas as pd

    from asa_lib.report.tables import baseline_na, table

    df = pd.DataFrame(
        {
            "config": ["baseline", "t60_a50"],
            "tau": [0.0, 0.6],
            "n": [24.0, float("nan")],  # a count pandas stored as float beside a missing value
            "p_tool": [0.123456, 0.5],
            "valid_call_rate": [None, 0.25],
            "output": ["<script>x</script>", "y" * 300],
        },
        index=[7, 8],
    )
    out = table(baseline_na(df))._repr_html_()
    cells = re.findall(r"<td style='([^']*)'>(.*?)</td>", out)
    assert [c for _, c in cells[:6]] == [
        "baseline",
        "—",
        "24",
        "0.123",
        "—",
        "&lt;script&gt;x&lt;/script&gt;",
    ]
    assert [c for _, c in cells[6:11]] == ["t60_a50", "0.6", "—", "0.500", "0.250"]
    assert cells[0][0].startswith("text-align:left") and cells[2][0] == "text-align:right"
    # text wraps, long words too, so that a flip table fits a 1,280 px page (#34 item 5)
    assert "overflow-wrap:anywhere" in cells[5][0] and "max-width:16em" in cells[5][0]
    assert "overflow-wrap" not in cells[2][0]
    long_cell = cells[11][1]
    assert long_cell.endswith("…</span>") and f"title='{'y' * 300}'" in long_cell
    assert ">7<" not in out and ">8<" not in out  # no index column
    heads = re.findall(r"<th style='[^']*'>(.*?)</th>", out)
    assert heads == [
        "config",
        "tau",
        "prompts",
        "p(tool)",
        "valid calls (share of calls)",
        "output",
    ]


def test_the_commit_a_run_records_is_the_checked_out_one_and_says_when_files_differ(
    tmp_path, monkeypatch
):
    """results.json keeps the full hash; the index shows 12 digits and ``+changes`` when a
    tracked file differs from the commit; outside git there is no commit to name."""
    import subprocess

    from asa_lib.files import git_commit

    if shutil.which("git") is None:
        pytest.skip("git is not installed")

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(tmp_path / "repo"), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    (tmp_path / "repo").mkdir()
    (tmp_path / "outside").mkdir()
    git("init", "-q")
    (tmp_path / "repo" / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert re.fullmatch(r"[0-9a-f]{40}", head)

    assert git_commit(tmp_path / "repo") == head
    assert git_commit(tmp_path / "repo", short=True) == head[:12]
    (tmp_path / "repo" / "untracked.txt").write_text("not part of the code\n")
    assert git_commit(tmp_path / "repo", short=True) == head[:12]
    (tmp_path / "repo" / "a.txt").write_text("two\n")
    assert git_commit(tmp_path / "repo", short=True) == head[:12] + "+changes"
    assert git_commit(tmp_path / "repo") == head
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above "outside"
    assert git_commit(tmp_path / "outside") is None
    assert git_commit(tmp_path / "outside", short=True) is None
