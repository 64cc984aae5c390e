"""The run's ``index.html``: the summary table, the chosen config and a link to every stage report.

The runner writes it after every run, from the results (``results.json``) and
the stages' statuses; every value from a run is escaped.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asa_lib.files import read_json, write_json, write_text
from asa_lib.layout import RunDir, shown_path
from asa_lib.params import BASELINE, Params
from asa_lib.report.verdict import AIMED, BACKFIRED, HELD, signed, verdict

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:96em;color:#222;padding:0 1em}
div.wide{overflow-x:auto}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
td{white-space:nowrap}
th{background:#f3f3f3;vertical-align:bottom}td.l,th.l{text-align:left}.ok{color:#1a7f37}
.failed,.blocked{color:#c00;font-weight:bold}.skipped{color:#666}.chosen{background:#fff7d6}
code{background:#f3f3f3;padding:0 .2em}p.verdict{font-size:115%;font-weight:600;background:#fff7d6;
padding:.5em .8em;border-left:4px solid #e0b000;margin:.4em 0}p.meta{color:#444;font-size:90%}
p.note{color:#444;font-size:90%;max-width:60em}"""

NA = "—"  # not applicable (the baseline's tau, a rate of no calls)


def _on_tool_rows(c: dict | None) -> str:
    """The calls cell's second line: the valid ones among the calls on label-1 rows."""
    if not c or not c.get("calls"):
        return ""
    return f"<br>on tool rows: {c['valid']} of {c['calls']} valid"


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x, fmt: str = ".3f") -> str:
    return NA if x is None else format(x, fmt)


def _meta_line(params: Params, results: dict | None, info: dict) -> str:
    """Date, commit, model, versions and run time, in one line."""
    versions = info.get("versions") or (results or {}).get("versions") or {}
    commit = info.get("commit") or (results or {}).get("git_commit") or "unknown"
    if len(commit) == 40:
        commit = commit[:12]
    model = params.model.id or params.model.kind
    if params.model.adapter:
        model += f" + LoRA {Path(params.model.adapter).name}"
    parts = [
        f"finished {_e(info.get('finished') or (results or {}).get('created') or 'unknown')}",
        f"commit <code>{_e(commit)}</code>",
        f"model <code>{_e(model)}</code> ({_e(params.model.dtype)}, trust_remote_code "
        f"{_e(params.model.trust_remote_code)})",
        f"alpha unit {_e(params.steering.alpha_unit)}",
        "versions " + ", ".join(f"{_e(k)} {_e(v)}" for k, v in versions.items()),
    ]
    if info.get("stage_seconds") is not None:
        parts.append(f"stages took {info['stage_seconds']:.0f} s")
    if info.get("wall_seconds") is not None:
        parts.append(f"this run {info['wall_seconds']:.0f} s")
    return "<p class='meta'>" + " · ".join(parts) + "</p>"


# what a config's vector is, as the index's vector column says it
VECTOR_NAMES = {
    "mixture": "label (the paper's)",
    "behaviour": "behaviour (the model's calls)",
    "random": "random (ablation)",
}


def _data_line(params: Params, run: RunDir) -> str:
    """The data set the table is about, and how many prompts each split has."""
    try:
        summary = read_json(run.data_summary)
        sizes = summary.get("split_sizes", {})
    except (OSError, ValueError):
        sizes = {}
    src = params.data_path()
    name = src.name if src is not None else params.data.source
    n = ", ".join(
        f"{s.upper()} {sizes[s]}" for s in ("cal", "train", "valid", "test") if s in sizes
    )
    return (
        f"<p>Data: <code>{_e(name)}</code>"
        + (f" · prompts per split: {_e(n)}" if n else "")
        + ".</p>"
    )


def write_index(
    params: Params, run_dir: Path, stages: Sequence[Any], info: dict | None = None
) -> Path:
    """``index.html``: verdict, run details, summary table, chosen config, links to every
    report (all text escaped).

    ``stages``: the runner's stages (``key``, ``status``, ``seconds``, ``error``), in run order.
    ``info``: date, commit, versions and wall time of the run (kept beside the index, so that
    a re-render without it, :func:`refresh_index`, shows the same).
    """
    run = RunDir(run_dir)
    if info is None:
        try:
            info = read_json(run.root / RUN_INFO) if (run.root / RUN_INFO).is_file() else {}
        except (OSError, ValueError):
            info = {}
        info = info if isinstance(info, dict) else {}
    else:
        info = {**info, "stage_seconds": round(sum(s.seconds for s in stages), 1)}
        write_json(run.root / RUN_INFO, info)
    results = read_json(run.results) if run.results.is_file() else None
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>ASA {_e(params.name)} · index</title>"
        f"<style>{_CSS}</style></head><body><h1>ASA run <code>{_e(params.name)}</code></h1>"
    ]
    # One plain sentence each, first on the page: the run's verdict, then further findings
    # (a line per check that adds one).
    lines = [verdict(results)] if results else []
    parts += [f"<p class='verdict'>{_e(x)}</p>" for x in lines]
    parts.append(_meta_line(params, results, info))
    if results:
        c = results["chosen"]
        t = c["test"]
        parts.append(
            f"<h2>Chosen on VALID: <code>{_e(c['name'])}</code> (tau={_e(c['tau'])}, alpha={_e(c['alpha'])}, "
            f"beta={_e(c['beta'])}, alpha_eff={c['alpha_eff']:.4g})</h2><p>TEST: "
            + ", ".join(
                f"{m.upper()} {t[m]:.3f} [{t['ci95'][m][0]:.3f}, {t['ci95'][m][1]:.3f}]"
                for m in ("f1", "recall", "fpr")
            )
            + f"; precision {t['precision']:.3f}. L* = {_e(results['L_star'])} "
            f"(VALID AUC {results['L_star_valid_auc']:.3f}).</p>"
        )
        diag = results.get("diagnostics")
        if diag:  # stage 04: will ASA work on this model?
            link = (
                "<a href='html/04_vectors.html'>04_vectors</a>"
                if run.report("04_vectors").is_file()
                else "04_vectors"
            )
            parts.append(f"<p><b>Diagnostics at L*:</b> {_e(diag['verdict'])} (see {link}).</p>")
        advice = results.get("advice", {}).get(c["name"], [])
        if advice:  # did the chosen config's gate decisions happen? (the flips, 07_analysis)
            parts.append(
                "<p><b>The chosen config's gate decisions:</b> "
                + " ".join(_e(a) for a in advice)
                + "</p>"
            )
        sb = results.get("steering_blocks") or {}
        if sb.get("blocks"):
            parts.append(
                f"<p>Steering blocks (steering.blocks, resolved on this run): L* = "
                f"{_e(sb['L_star'])}, auto1.. = {_e(', '.join(map(str, sb['blocks'])))}.</p>"
            )
        parts.append(_data_line(params, run))
        # beta is moot with one domain, and often one value: a column that never varies is
        # said once above the table, not repeated in every row
        betas = {r.get("beta") for n, r in results["configs"].items() if n != BASELINE}
        show_beta = len(betas) > 1
        if not show_beta and betas:
            parts.append(f"<p>beta = {_e(next(iter(betas)))} in every config.</p>")
        parts.append(
            "<div class='wide'><table><tr><th class='l'>config (its report)</th><th>vector</th>"
            "<th>tau</th><th>alpha</th>" + ("<th>beta</th>" if show_beta else "") + "<th>block</th>"
            "<th>VALID F1</th><th>VALID FPR</th><th>VALID recall</th>"
            "<th>TEST F1</th><th>TEST FPR</th><th>TEST recall</th>"
            "<th>TEST calls: complete valid / complete invalid / cut (of the calls)</th>"
            "<th>TEST ΔF1 vs baseline [95% CI]</th><th>TEST ΔFPR vs baseline [95% CI]</th>"
            "<th>decisions flipped (VALID / TEST)</th>"
            "<th>TEST: gate's decision held (of the rows it aimed at)</th>"
            "<th>TEST: moved against the gate</th></tr>"
        )
        diffs, flips = results.get("vs_baseline", {}).get("test", {}), results.get("flips", {})
        # a per-config stage's key is <notebook>__<config>: each config's own report
        pages = {s.key.partition("__")[2]: run.report(s.key) for s in stages if "__" in s.key}
        for name, r in results["configs"].items():
            v, t = r["splits"]["valid"], r["splits"]["test"]
            cls = " class='chosen'" if name == c["name"] else ""
            d = diffs.get(name)
            dcells = (
                "<td>{} [{}, {}]</td><td>{} [{}, {}]</td>".format(
                    *(
                        signed(d[k])
                        for k in ("d_f1", "d_f1_lo", "d_f1_hi", "d_fpr", "d_fpr_lo", "d_fpr_hi")
                    )
                )
                if d
                else f"<td>{NA}</td><td>{NA}</td>"
            )
            fl = {x["split"]: x["decision flips"] for x in flips.get(name, [])}
            fcell = f"{fl.get('valid', 0)} / {fl.get('test', 0)}" if name in flips else NA
            ft = next((x for x in flips.get(name, []) if x["split"] == "test"), None)
            if ft is not None and AIMED[0] in ft:  # results from before these counts: —
                aimed = ft[AIMED[0]] + ft[AIMED[1]]
                held = f"{ft[HELD[0]] + ft[HELD[1]]} of {aimed}"
                back = str(ft[BACKFIRED[0]] + ft[BACKFIRED[1]])
            else:
                held = back = NA
            gcells = f"<td>{held}</td><td>{back}</td>"
            page = pages.get(name)
            label = (
                f"<a href='{_e(page.relative_to(run.root).as_posix())}'>{_e(name)}</a>"
                if page is not None and page.is_file()
                else _e(name)
            )
            base = name == BASELINE
            vec = r.get("vector")  # results from before it was recorded: —
            knobs = (
                f"<td class='l'>{NA if base or not vec else _e(VECTOR_NAMES.get(vec, vec))}</td>"
            )
            knobs += "".join(
                f"<td>{NA if base or r.get(k) is None else _e(r[k])}</td>"
                for k in (("tau", "alpha", "beta") if show_beta else ("tau", "alpha"))
            )
            knobs += f"<td>{NA if base or r.get('layer') is None else _e(r['layer'])}</td>"
            vs = t.get("validity_split")
            vcalls = (
                f"{vs['complete valid']} / {vs['complete invalid']} / {vs['cut']} of {t['triggers']}"
                + _on_tool_rows(t.get("tool_row_calls"))
                if t.get("triggers") and vs
                else _num(t["valid_call_rate"])  # results from before the split
                if t.get("triggers")
                else NA
            )
            parts.append(
                f"<tr{cls}><td class='l'>{label}</td>{knobs}"
                f"<td>{v['f1']:.3f}</td><td>{v['fpr']:.3f}</td>"
                f"<td>{v['recall']:.3f}</td><td>{t['f1']:.3f}</td><td>{t['fpr']:.3f}</td>"
                f"<td>{t['recall']:.3f}</td><td>{vcalls}</td>{dcells}"
                f"<td>{fcell}</td>{gcells}</tr>"
            )
        parts.append(
            "</table></div><p class='note'>Selection uses VALID only; TEST columns are reported, never "
            "used to choose. F1, recall and FPR count a call when the output opens one, whether "
            "or not it could run; the calls column says which could: complete valid (closed, "
            "parses, names a listed tool with its required arguments), complete invalid "
            "(closed, but does not parse, names another tool or lacks an argument), cut (no "
            "end marker within max_new_tokens) (— where the config made no call); "
            "on tool rows: of the calls on rows labelled tool, how many are valid. "
            "Δ: the config minus the unsteered baseline on the same prompts, with a paired "
            "bootstrap 95% interval. Flipped: prompts whose decision (tool call or not) changed "
            "against the baseline; each config's report lists them. Held: of the TEST rows where "
            "the baseline decided the other way than the gate pushed (gate −1 on a call, +1 on "
            "an abstention), how many kept the baseline's decision; moved against the gate: gate "
            "−1 rows that newly call plus gate +1 rows that newly abstain. Block: the block the "
            "delta is added at (the gate reads L*). — : not applicable "
            "(the baseline has no tau, alpha or beta, and is not compared with itself).</p>"
        )
    else:
        parts.append("<p><b>No results yet</b>: the analysis stage has not finished.</p>")
    parts.append(
        "<h2>Reports</h2><table><tr><th class='l'>stage (its report)</th><th class='l'>status</th>"
        "<th>seconds</th><th class='l'>executed notebook</th><th class='l'>note</th></tr>"
    )
    for s in stages:
        html_p, nb_p = run.report(s.key), run.notebook(s.key)
        html_rel, nb_rel = (
            html_p.relative_to(run.root).as_posix(),
            nb_p.relative_to(run.root).as_posix(),
        )
        link = f"<a href='{_e(html_rel)}'>{_e(s.key)}</a>" if html_p.is_file() else _e(s.key)
        nbl = f"<a href='{_e(nb_rel)}'>ipynb</a>" if nb_p.is_file() else ""
        parts.append(
            f"<tr><td class='l'>{link}</td><td class='l {_e(s.status)}'>{_e(s.status)}</td>"
            f"<td>{s.seconds:.1f}</td><td class='l'>{nbl}</td><td class='l'>{_e(s.error)}</td></tr>"
        )
    parts.append("</table>")
    parts.append(_evaluations_html(run))
    parts.append("</body></html>")
    # the stage rows, so that `asa evaluate` can re-render this page (refresh_index)
    write_json(
        run.root / STAGE_ROWS,
        [
            {"key": s.key, "status": s.status, "seconds": s.seconds, "error": s.error}
            for s in stages
        ],
    )
    return write_text(run.index, "\n".join(parts))


RUN_INFO = "index_run.json"  # beside index.html: date, commit, versions, run time
STAGE_ROWS = "index_stages.json"  # beside index.html: the stage rows it shows
EVALUATIONS = "evaluations.json"  # written by `asa evaluate` (asa_lib.run.evaluate)


def _evaluations_html(run: RunDir) -> str:
    """Links to every evaluation made from this run's adapter (``asa evaluate``), newest last."""
    path = run.root / EVALUATIONS
    try:
        items = read_json(path) if path.is_file() else []
    except (OSError, ValueError):
        items = []
    items = [e for e in items if isinstance(e, dict)] if isinstance(items, list) else []
    if not items:
        return ""
    rows = []
    for e in items:
        report = Path(str(e.get("report", "")))
        try:
            href = os.path.relpath(report, run.root)
        except ValueError:  # another drive
            href = str(report)
        link = (
            f"<a href='{_e(Path(href).as_posix())}'>{_e(e.get('name'))}</a>"
            if report.is_file()
            else f"{_e(e.get('name'))} (report missing)"
        )
        rows.append(
            f"<tr><td class='l'>{link}</td><td class='l'>{_e(shown_path(str(e['data']), sha256=e.get('data_sha256')) if e.get('data') else '')}</td>"
            f"<td>{_e(e.get('rows'))}</td><td class='l'>{_e(', '.join(map(str, e.get('configs', []))))}</td>"
            f"<td class='l'>{_e(e.get('verdict') or '')}</td><td>{_e(e.get('finished'))}</td></tr>"
        )
    return (
        "<h2>Evaluations of the chosen adapter</h2><p>Made with <code>asa evaluate</code>: the "
        "adapter applied unchanged to another labelled set.</p><table><tr><th>evaluation</th>"
        "<th>data</th><th>rows</th><th>configs</th><th>does the probe know here? (the first "
        "config)</th><th>finished</th></tr>" + "".join(rows) + "</table>"
    )


def refresh_index(run_dir: str | Path) -> Path | None:
    """Re-render ``index.html`` of a finished run (e.g. after an evaluation); None if it has none."""
    from types import SimpleNamespace

    from asa_lib.params import ParamsError, load_params

    run = RunDir(run_dir)
    rows_path = run.root / STAGE_ROWS
    if not (run.params_yaml.is_file() and rows_path.is_file()):
        return None
    try:
        params = load_params(run.params_yaml, check_files=False)
        rows = read_json(rows_path)
    except (OSError, ValueError, ParamsError):
        return None
    return write_index(params, run.root, [SimpleNamespace(**r) for r in rows])
