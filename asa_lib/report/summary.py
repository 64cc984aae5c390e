"""Measured figures for the docs, written from the runs' own results: ``asa summarize``.

No measured number in ``docs/results.md`` is typed by hand. Two steps:

1. :func:`summarize` reads a run folder's ``results.json`` (``asa run``) or an evaluation
   folder's ``evaluation.json`` (``asa evaluate``) and keeps the figures a reader needs:
   per config the VALID and TEST (or eval) metrics with their intervals, the paired
   differences from the baseline, the chosen config, L*, the diagnostics, the transfer
   verdict. No per-prompt record, no path of the machine it ran on. The summary is a small
   JSON file in ``docs/results/<name>.json``, committed (whole run folders never are).
2. :func:`render_doc` rewrites the marked blocks of ``docs/results.md`` from those
   summaries. A block is everything between ``<!-- summary NAME -->`` and
   ``<!-- end summary NAME -->``; the text around the blocks is the author's. A summary
   without a block gets one appended under its own heading; a block without a summary is
   an error.

``asa summarize --check`` (and ``tests/test_summary.py``) fails when the committed blocks
differ from what the committed summaries write, so a figure edited by hand, or a summary
updated without the doc, is caught.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asa_lib.files import read_json, write_json, write_text
from asa_lib.metrics import tool_row_calls
from asa_lib.params import SAFE_NAME
from asa_lib.report.verdict import BASELINE, signed, verdict

#: Bumped when the summary's shape changes; :func:`render_doc` refuses other versions.
SUMMARY_VERSION = 1

# the per-split figures a summary keeps (the rest of a split's metrics stays in the run)
_SPLIT_KEYS = (
    "precision",
    "recall",
    "f1",
    "fpr",
    "n",
    "tp",
    "fp",
    "fn",
    "tn",
    "ci95",
    "triggers",
    "valid_call_rate",
    "validity_split",
    "tool_row_calls",
)
# the flip counts a block reads (asa_lib.run.analysis.flip_counts)
_FLIP_KEYS = (
    "prompts",
    "decision flips",
    "gained a call (+1 gate)",
    "lost a call (-1 gate)",
    "changed against its gate",
    "-1 gate on a baseline call",
    "-1 gate, still calls",
    "+1 gate on a baseline abstention",
    "+1 gate, still abstains",
)
# what a summary keeps of stage 04's diagnostics
_DIAG_KEYS = (
    "verdict",
    "alignment",
    "cos_at_L_star",
    "label_auc_at_L_star",
    "behaviour_auc_at_L_star",
    "gap_table",
)
_VECTOR_WORDS = {"mixture": "label", "behaviour": "behaviour", "random": "random"}
# a hub dataset id (org/name), kept whole; any other source is shown by its last part
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".gz", ".xz")


class SummaryError(ValueError):
    """A run folder, summary or doc that cannot be summarized; the message says why."""


def _split(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in _SPLIT_KEYS if k in metrics}


def _short(commit: str | None) -> str:
    commit = commit or "unknown"
    return commit[:12] if len(commit) == 40 else commit


def _data_name(source: Any) -> str | None:
    """A data set's file name (never the folder it was read from) or its hub id."""
    if not isinstance(source, str) or not source:
        return None
    if _HUB_ID.fullmatch(source) and not source.lower().endswith(_DATA_SUFFIXES):
        return source
    return re.split(r"[/\\]", source.rstrip("/\\"))[-1] or None


def _header(kind: str, name: str, results: dict[str, Any]) -> dict[str, Any]:
    """What every summary starts with: its kind, version, name and provenance."""
    return {
        "kind": kind,
        "summary_version": SUMMARY_VERSION,
        "name": name,
        **{k: results.get(k) for k in ("git_commit", "created", "model_id")},
    }


def _diagnostics(diag: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Stage 04's diagnostics: ``vectors/diagnostics.json`` where the run has it (the
    per-block cosines, the cost), else what ``results.json`` copied of it."""
    path = folder / "vectors" / "diagnostics.json"
    if path.is_file():
        diag = read_json(path)
    out = {k: diag[k] for k in _DIAG_KEYS if k in diag}
    cos = [x["cos"] for x in diag.get("layers", []) if x.get("cos") is not None]
    if cos:
        out["cos_range"] = [min(cos), max(cos)]
    out["calls"] = {s: diag.get("calls", {}).get(s) for s in ("cal", "valid")}
    cost = diag.get("cost", {}).get("cal")
    if cost:
        out["cal_cost"] = {k: cost.get(k) for k in ("generated_now", "seconds")}
    return out


def _add_tool_row_calls(splits: dict[str, dict[str, Any]], records_file: Path) -> None:
    """``tool_row_calls`` of the splits whose results predate it, from the config's own
    per-prompt records (``sweep/<config>.json``) where the run folder has them."""
    if all("tool_row_calls" in m for m in splits.values()) or not records_file.is_file():
        return
    records = read_json(records_file).get("records", [])
    for split, m in splits.items():
        if "tool_row_calls" not in m:
            m["tool_row_calls"] = tool_row_calls([r for r in records if r["split"] == split])


def _sweep_summary(results: dict[str, Any], folder: Path) -> dict[str, Any]:
    params = results.get("params", {})
    declared = {c.get("name"): c for c in params.get("sweep", [])}
    configs = {}
    for name, r in results["configs"].items():
        c = declared.get(name, r.get("config") or {})
        configs[name] = {
            "tau": r.get("tau"),
            "alpha": r.get("alpha"),
            "beta": r.get("beta"),
            "vector": r.get("vector") or (None if name == BASELINE else c.get("vector")),
            "gate": None if name == BASELINE else c.get("gate", "probe"),
            "layer": r.get("layer"),
            "splits": {s: _split(m) for s, m in r["splits"].items() if s in ("valid", "test")},
        }
        _add_tool_row_calls(configs[name]["splits"], folder / "sweep" / f"{name}.json")
    blocks = results.get("steering_blocks") or {}
    diag = results.get("diagnostics") or {}
    chosen = results.get("chosen") or {}
    return {
        **_header("sweep", params.get("name") or "run", results),
        "data": _data_name(params.get("data", {}).get("source")),
        "max_new_tokens": params.get("generation", {}).get("max_new_tokens"),
        "L_star": results.get("L_star"),
        "L_star_valid_auc": results.get("L_star_valid_auc"),
        "steering_blocks": blocks.get("blocks", []),
        "diagnostics": _diagnostics(diag, folder),
        "chosen": {k: chosen[k] for k in ("name", "selected_on") if k in chosen},
        "configs": configs,
        "vs_baseline": {s: results.get("vs_baseline", {}).get(s, {}) for s in ("valid", "test")},
        "behaviour_vs_label": {
            s: (results.get("behaviour_vs_label") or {}).get(s, []) for s in ("valid", "test")
        },
        "flips": {
            n: {
                f["split"]: {k: f[k] for k in _FLIP_KEYS if k in f}
                for f in fl
                if f.get("split") in ("valid", "test")
            }
            for n, fl in (results.get("flips") or {}).items()
        },
    }


def _evaluation_summary(ev: dict[str, Any], folder: Path) -> dict[str, Any]:
    adapter = ev.get("adapter_config") or {}
    transfer = ev.get("transfer") or {}
    return {
        **_header("evaluation", ev.get("name") or "evaluation", ev),
        "data": _data_name(ev.get("data")),
        "rows_read": ev.get("rows_read"),
        "rows_used": ev.get("rows_used") or 0,
        "max_new_tokens": ev.get("max_new_tokens"),
        "seconds": ev.get("seconds"),
        "generated_now": sum(
            r["splits"]["eval"].get("generated_now", 0) for r in ev["configs"].values()
        ),
        "adapter": {
            k: adapter.get(k) for k in ("name", "tau", "alpha", "alpha_unit", "vector", "layer")
        },
        "run_overlap_note": (ev.get("run_overlap") or {}).get("note"),
        "configs": {
            name: {"splits": {"eval": _split(r["splits"]["eval"]["metrics"])}}
            for name, r in ev["configs"].items()
        },
        "vs_baseline": ev.get("vs_baseline", {}),
        "transfer": {
            "probe_auc": transfer.get("probe_auc"),
            "probe_auc_ci95": transfer.get("probe_auc_ci95"),
            "configs": {
                n: {
                    k: t.get(k)
                    for k in ("gates", "aimed", "followed", "right", "verdict", "warning")
                }
                for n, t in (transfer.get("configs") or {}).items()
            },
        },
    }


def summarize(folder: str | Path) -> dict[str, Any]:
    """The summary of a run folder (``results.json``) or an evaluation folder
    (``evaluation.json``); :class:`SummaryError` for a folder with neither."""
    folder = Path(folder)
    for file, build in (("results.json", _sweep_summary), ("evaluation.json", _evaluation_summary)):
        path = folder / file
        if path.is_file():
            try:
                results = read_json(path)
            except ValueError as e:
                raise SummaryError(f"{path}: cannot be read ({e})") from None
            try:
                summary = build(results, folder)
                block(summary)  # a summary the page cannot show is never written
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
                raise SummaryError(f"{path}: not the results of a finished run ({e!r})") from None
            return summary
    raise SummaryError(
        f"{folder}: no results.json (asa run) or evaluation.json (asa evaluate) in it"
    )


# ---- Markdown ---------------------------------------------------------------------------


def _f(x: Any, fmt: str = ".3f") -> str:
    return "—" if x is None else format(x, fmt)


def _ci(point: Any, ci: Any) -> str:
    if point is None:
        return "—"
    if not ci or len(ci) != 2:
        return _f(point)
    return f"{point:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _diff(d: Mapping[str, Any] | None, metric: str) -> str:
    if not d or f"d_{metric}" not in d:
        return "—"
    return (
        f"{signed(d[f'd_{metric}'])} [{signed(d[f'd_{metric}_lo'])}, {signed(d[f'd_{metric}_hi'])}]"
    )


def _rate(split: Mapping[str, Any], key: str = "valid_call_rate") -> str:
    return "—" if not split.get("triggers") else _f(split.get(key))


def _tool_rows(c: Mapping[str, int] | None) -> str:
    """The valid share of the calls on label-1 rows, with its counts."""
    if not c:
        return "—"
    if not c["calls"]:
        return "— (no call)"
    return f"{c['valid'] / c['calls']:.3f} ({c['valid']} of {c['calls']})"


def _still(n: int, verb: str) -> str:
    return f"{n} still {verb}{'s' if n == 1 else ''}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    cell = lambda x: str(x).replace("|", "\\|")  # noqa: E731  (a run's text cannot split a cell)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return out


def _flips_markdown(s: dict[str, Any]) -> list[str]:
    rows = []
    for name, by_split in (s.get("flips") or {}).items():
        f = by_split.get("test") or {}
        if not all(k in f for k in _FLIP_KEYS):
            continue
        rows.append(
            [
                f"`{name}`",
                f"{f['decision flips']} of {f['prompts']}",
                str(f["gained a call (+1 gate)"]),
                str(f["lost a call (-1 gate)"]),
                str(f["changed against its gate"]),
                f"{f['-1 gate, still calls']} of {f['-1 gate on a baseline call']}",
                f"{f['+1 gate, still abstains']} of {f['+1 gate on a baseline abstention']}",
            ]
        )
    if not rows:
        return []
    return [
        "",
        "Decisions that flipped on TEST, per config (against the baseline):",
        "",
        *_table(
            [
                "config",
                "flipped",
                "gained a call (+1 gate)",
                "lost a call (-1 gate)",
                "moved against the gate",
                "-1 gate, still calls (of baseline calls)",
                "+1 gate, still abstains (of baseline abstentions)",
            ],
            rows,
        ),
    ]


def _diagnostics_markdown(d: dict[str, Any]) -> list[str]:
    if not d.get("verdict"):
        return []
    lines = [f"- Diagnostics (stage 04, before any steering): {d['verdict']}."]
    parts = []
    if d.get("behaviour_auc_at_L_star") is not None:
        parts.append(
            f"behaviour probe AUC at L\\* {_f(d['behaviour_auc_at_L_star'])} (the model's own "
            f"VALID calls), label probe {_f(d.get('label_auc_at_L_star'))}"
        )
    if d.get("cos_range"):
        lo, hi = d["cos_range"]
        parts.append(f"cos(label direction, call direction) {lo:.2f} to {hi:.2f} over the blocks")
    calls = [
        f"{k.upper()} {c['called']} of {c['n']}" for k, c in (d.get("calls") or {}).items() if c
    ]
    if calls:
        parts.append("unsteered calls " + ", ".join(calls))
    if d.get("cal_cost"):
        c = d["cal_cost"]
        parts.append(f"the extra CAL generation {c['generated_now']} outputs, {c['seconds']:.0f} s")
    if parts:
        lines.append("  " + "; ".join(parts) + ".")
    return lines


def _gap_markdown(d: dict[str, Any]) -> list[str]:
    gap = {(g["knows"], g["calls"]): g for g in d.get("gap_table") or []}
    if len(gap) != 4:
        return []
    cell = lambda k, c: f"{gap[k, c]['n']} ({gap[k, c]['labelled tool']})"  # noqa: E731
    return [
        "",
        "The knowing-doing gap at L\\* on VALID (in brackets: of those, labelled tool):",
        "",
        *_table(
            ["label probe", "the model calls", "does not call"],
            [
                ["knows (p(tool) >= 0.5)", cell(1, 1), cell(1, 0)],
                ["does not know", cell(0, 1), cell(0, 0)],
            ],
        ),
    ]


def _sweep_markdown(s: dict[str, Any]) -> list[str]:
    configs = s["configs"]
    chosen = s.get("chosen", {}).get("name")
    sizes = []
    base = configs.get(BASELINE, {}).get("splits", {})
    for split in ("valid", "test"):
        if split in base:
            sizes.append(f"{split.upper()} {base[split]['n']}")
    blocks = ", ".join(str(b) for b in s.get("steering_blocks") or [])
    lines = [
        f"Run `{s['name']}`: commit `{_short(s.get('git_commit'))}`, finished "
        f"{s.get('created') or 'unknown'}; model `{s.get('model_id')}`; data "
        f"`{s.get('data')}` ({', '.join(sizes)} prompts); up to {s.get('max_new_tokens')} "
        "new tokens.",
        "",
        f"- L\\* = {s.get('L_star')} (label probe VALID AUC {_f(s.get('L_star_valid_auc'))})"
        + (f"; the other steering blocks: {blocks}." if blocks else "."),
    ]
    lines += _diagnostics_markdown(s.get("diagnostics") or {})
    lines.append(f"- Verdict: {verdict(s)}")
    if s.get("chosen", {}).get("selected_on"):
        lines.append(f"- Chosen on {s['chosen']['selected_on']}.")
    f = s.get("flips", {}).get(chosen, {}).get("test") or {}
    if all(k in f for k in _FLIP_KEYS):
        lines.append(
            f"- The chosen config's TEST decisions: {f['decision flips']} of {f['prompts']} "
            f"flipped ({f['gained a call (+1 gate)']} gained a call under a +1 gate, "
            f"{f['lost a call (-1 gate)']} lost one under a -1 gate, "
            f"{f['changed against its gate']} moved against the gate). Of the "
            f"{f['-1 gate on a baseline call']} baseline calls under a -1 gate, "
            f"{_still(f['-1 gate, still calls'], 'call')}; of the "
            f"{f['+1 gate on a baseline abstention']} baseline abstentions under a +1 gate, "
            f"{_still(f['+1 gate, still abstains'], 'abstain')}."
        )
    lines.append("")
    gates = any(c.get("gate") not in (None, "probe") for c in configs.values())
    header = ["config", "vector"] + (["gate"] if gates else []) + ["block", "tau", "alpha"]
    header += [
        "VALID F1",
        "VALID ΔF1 [95% CI]",
        "TEST F1 [95% CI]",
        "TEST ΔF1 [95% CI]",
        "TEST recall",
        "TEST FPR [95% CI]",
        "TEST ΔFPR [95% CI]",
        "TEST valid calls (of calls)",
    ]
    on_tool_rows = any("tool_row_calls" in c["splits"].get("test", {}) for c in configs.values())
    if on_tool_rows:
        header.append("TEST valid calls on tool rows")
    rows = []
    dv, dt = s["vs_baseline"].get("valid", {}), s["vs_baseline"].get("test", {})
    for name, c in configs.items():
        v, t = c["splits"].get("valid", {}), c["splits"].get("test", {})
        label = f"**`{name}`** (chosen)" if name == chosen else f"`{name}`"
        row = [label, "—" if name == BASELINE else _VECTOR_WORDS.get(c.get("vector"), "—")]
        if gates:
            row.append("—" if name == BASELINE else str(c.get("gate")))
        row += [
            _f(c.get("layer"), "d") if name != BASELINE else "—",
            "—" if c.get("tau") is None else f"{c['tau']:g}",
            "—" if name == BASELINE else f"{c['alpha']:g}",
            _f(v.get("f1")),
            _diff(dv.get(name), "f1"),
            _ci(t.get("f1"), t.get("ci95", {}).get("f1")),
            _diff(dt.get(name), "f1"),
            _f(t.get("recall")),
            _ci(t.get("fpr"), t.get("ci95", {}).get("fpr")),
            _diff(dt.get(name), "fpr"),
            _rate(t),
        ]
        if on_tool_rows:
            row.append(_tool_rows(t.get("tool_row_calls")))
        rows.append(row)
    lines += _table(header, rows)
    lines += _flips_markdown(s)
    lines += _gap_markdown(s.get("diagnostics") or {})
    pairs = s.get("behaviour_vs_label", {}).get("test") or []
    if pairs:
        lines += [
            "",
            "The model's call direction against the label vector with the same gate, tau, alpha "
            "and beta (TEST, paired; the blocks may differ):",
            "",
        ]
        block_of = {n: c.get("layer") for n, c in configs.items()}
        lines += _table(
            [
                "behaviour config",
                "its block",
                "label config",
                "its block",
                "ΔF1 [95% CI]",
                "ΔFPR [95% CI]",
            ],
            [
                [
                    f"`{p['behaviour config']}`",
                    str(block_of.get(p["behaviour config"], "—")),
                    f"`{p['label config']}`",
                    str(block_of.get(p["label config"], "—")),
                    _diff(p, "f1"),
                    _diff(p, "fpr"),
                ]
                for p in pairs
            ],
        )
    return lines


def _generated(s: dict[str, Any]) -> str:
    """How many outputs the evaluation generated itself: its time is theirs."""
    total = (s.get("rows_used") or 0) * len(s["configs"])
    done = s.get("generated_now") or 0
    if done >= total:
        return f"all {done} outputs generated in it"
    return f"{done} of {total} outputs generated in it, the rest read from its cache"


def _evaluation_markdown(s: dict[str, Any]) -> list[str]:
    a = s.get("adapter", {})
    rows_used = s.get("rows_used") or 0
    per_prompt = (
        f" ({s['seconds'] / rows_used:.2f} s per prompt)" if s.get("seconds") and rows_used else ""
    )
    lines = [
        f"Evaluation `{s['name']}`: commit `{_short(s.get('git_commit'))}`, finished "
        f"{s.get('created') or 'unknown'}; model `{s.get('model_id')}`; the adapter "
        f"`{a.get('name')}` ({_VECTOR_WORDS.get(a.get('vector'), a.get('vector'))} vector, "
        f"block {a.get('layer')}), unchanged; data `{s.get('data')}`, {rows_used} of "
        f"{s.get('rows_read')} rows; up to {s.get('max_new_tokens')} new tokens; "
        f"{_f(s.get('seconds'), '.0f')} s{per_prompt}, {_generated(s)}.",
        "",
    ]
    t = s.get("transfer", {})
    if t.get("probe_auc") is not None:
        lines.append(
            f"- The probe on this set: AUC {_ci(t['probe_auc'], t.get('probe_auc_ci95'))}."
        )
    for name, c in (t.get("configs") or {}).items():
        gates = c.get("gates") or {}
        shares = ", ".join(f"{'+' if g == '1' else ''}{g}: {n}" for g, n in gates.items())
        lines.append(f"- `{name}`: {c.get('verdict')} (rows per gate value: {shares}).")
        if c.get("warning"):
            lines.append(f"  Warning: {c['warning']}")
    if s.get("run_overlap_note"):
        lines.append(f"- Note: {s['run_overlap_note']}")
    lines.append("")
    rows = []
    for name, c in s["configs"].items():
        e = c["splits"]["eval"]
        d = s.get("vs_baseline", {}).get(name)
        rows.append(
            [
                f"`{name}`",
                _ci(e.get("f1"), e.get("ci95", {}).get("f1")),
                _ci(e.get("recall"), e.get("ci95", {}).get("recall")),
                _ci(e.get("fpr"), e.get("ci95", {}).get("fpr")),
                _diff(d, "f1"),
                _diff(d, "fpr"),
                _rate(e),
            ]
        )
    lines += _table(
        [
            "config",
            "F1 [95% CI]",
            "recall [95% CI]",
            "FPR [95% CI]",
            "ΔF1 [95% CI]",
            "ΔFPR [95% CI]",
            "valid calls (of calls)",
        ],
        rows,
    )
    return lines


def block(summary: dict[str, Any]) -> str:
    """The Markdown block of one summary, markers included."""
    if summary.get("summary_version") != SUMMARY_VERSION:
        raise SummaryError(
            f"summary {summary.get('name')!r}: version {summary.get('summary_version')!r}, "
            f"this asa_lib writes version {SUMMARY_VERSION}; run asa summarize on its run again"
        )
    name = summary["name"]
    body = (
        _sweep_markdown(summary)
        if summary.get("kind") == "sweep"
        else _evaluation_markdown(summary)
    )
    return "\n".join(
        [
            f"<!-- summary {name} -->",
            "<!-- written by asa summarize; do not edit -->",
            "",
            *(line.replace("-->", "--&gt;") for line in body),  # no text ends the block early
            "",
            f"<!-- end summary {name} -->",
        ]
    )


_BLOCK = re.compile(r"<!-- summary (?P<name>\S+) -->.*?<!-- end summary (?P=name) -->", re.DOTALL)


def render_doc(text: str, summaries: Mapping[str, dict[str, Any]]) -> str:
    """``text`` with every marked block rewritten from its summary; summaries without a
    block are appended, each under a heading. :class:`SummaryError` for a block whose
    summary is missing, or a block opened and not closed."""
    found = [m.group("name") for m in _BLOCK.finditer(text)]
    twice = sorted({n for n in found if found.count(n) > 1})
    if twice:
        raise SummaryError(f"docs/results.md has a block twice: {', '.join(twice)}")
    opened = re.findall(r"<!-- summary (\S+) -->", text)
    if sorted(opened) != sorted(found):
        raise SummaryError(
            "docs/results.md: a block is opened and not closed: "
            + ", ".join(sorted(set(opened) - set(found)))
        )
    missing = [n for n in found if n not in summaries]
    if missing:
        raise SummaryError(
            f"docs/results.md has blocks without a summary: {', '.join(missing)} "
            "(run asa summarize on their runs, or delete the blocks)"
        )
    out = _BLOCK.sub(lambda m: block(summaries[m.group("name")]), text)
    for name in sorted(set(summaries) - set(found)):
        out = out.rstrip("\n") + f"\n\n## `{name}`\n\n{block(summaries[name])}\n"
    return out if out.endswith("\n") else out + "\n"


def read_summaries(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` summary in ``folder``, by name (sorted)."""
    out = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            s = read_json(path)
        except ValueError as e:
            raise SummaryError(f"{path}: cannot be read ({e})") from None
        if not isinstance(s, dict) or "name" not in s:
            raise SummaryError(f"{path}: not a summary (no name)")
        if s["name"] != path.stem:
            raise SummaryError(f"{path}: holds the summary of {s['name']!r}, not {path.stem!r}")
        out[s["name"]] = s
    return out


def write_summary(summary: dict[str, Any], folder: str | Path) -> Path:
    """``folder/<name>.json``; refuses a name that is not a plain file name."""
    name = summary["name"]
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or name.startswith("."):
        raise SummaryError(f"run name {name!r} cannot be a file name")
    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, summary)
    return path


def update(
    folders: list[str | Path], summaries: str | Path, doc: str | Path, check: bool = False
) -> tuple[list[Path], bool]:
    """``asa summarize``: summarize each run folder into ``summaries``, then rewrite the
    blocks of ``doc`` from all summaries there. With ``check``, write nothing and say
    whether ``doc`` is current. Returns the summaries written and whether ``doc`` was (or
    with ``check``: is) up to date."""
    written = []
    if check and folders:
        raise SummaryError("--check compares the doc with the committed summaries: give no run")
    for folder in folders:
        written.append(write_summary(summarize(folder), summaries))
    doc = Path(doc)
    if check and not doc.is_file():
        raise SummaryError(f"{doc}: no such file to check")
    found = read_summaries(summaries)
    if check and not found:
        raise SummaryError(f"{summaries}: no summary to check {doc} against")
    text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Measured results\n"
    new = render_doc(text, found)
    if check:
        return written, new == text
    if new != text:
        write_text(doc, new)
    return written, new == text
