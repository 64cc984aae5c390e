"""Apply a tuned adapter, unchanged, to any labelled set: ``asa evaluate``.

Nothing is fitted and nothing is split: every usable row of the data is one
prompt of the ``eval`` split. For each prompt the state at the bundle's block
L* is read once; the gate (router, probe, tau) and the delta
(``gate * alpha_eff * v``) are computed from it exactly as the sweep computes
them from its stored states, and the outputs come from the sweep's generation
driver (:func:`~asa_lib.engine.generate.generate_all`: batched, the shared
prefix once, cached in ``<out>/cache/generations.sqlite``, steered rows drafted
from the baseline). Given the rows, config and adapter of a sweep, the records
and metrics are the sweep's (``tests/test_evaluate.py``).

The unsteered baseline is generated once and shared by every config given
(``--tau 0.6,0.75`` is two configs). Rows of a domain the bundle has never
seen are kept: the router sends them to a domain it knows, and their labels
count.

:func:`evaluate` returns (and writes to ``<out>/evaluation.json``) one result
per config in the shape of a sweep result (``splits.eval`` and ``records``),
so the analysis helpers (:mod:`asa_lib.run.analysis`) read it as they read a
sweep, plus the paired differences against the baseline, intervals per domain,
and what the figures came from (model id, bundle sha256, data sha256, versions).
It also counts the rows that are rows of the adapter's own run (``run_overlap``:
their text and tools among the digests the bundle records of its CAL, TRAIN,
VALID and TEST rows), since the CAL/TRAIN/VALID ones were fitted or chosen on.
``notebooks/08_evaluate.py`` is the report; :func:`run_evaluation` executes it
with papermill and renders its HTML.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from asa_lib.api import ASA, AdapterError, run_prompt_format
from asa_lib.data import (
    DataError,
    LabelledSet,
    describe_skipped,
    read_all_samples,
    sample_tools,
)
from asa_lib.engine.extract import cached_last_token_states
from asa_lib.engine.generate import GenerationSettings, generation_context
from asa_lib.engine.prefix import PromptTooLongError, check_prompt_lengths, token_ids
from asa_lib.files import (
    file_digest,
    git_commit,
    json_sha256,
    library_versions,
    read_json,
    write_json,
)
from asa_lib.layout import RunDir
from asa_lib.method.bundle import FITTED_SPLITS, Bundle, row_digests
from asa_lib.metrics import (
    METRICS,
    VALIDITY_SPLIT,
    auc,
    binary_metrics,
    bootstrap_auc_ci,
    interval_table,
)
from asa_lib.model.load import LoadedModel, check_prompt_tokenizer, load_params_model
from asa_lib.params import (
    BASELINE,
    Params,
    ParamsError,
    SweepConfig,
    baseline_config,
    check_hub_id,
    check_not_a_folder,
    resolve_data_path,
)
from asa_lib.prompts import prompt_format_sha256, render_prompts
from asa_lib.report.index import EVALUATIONS
from asa_lib.run.core import RECORD_ONLY, ConfigSpec, score_configs, vs_baseline
from asa_lib.run.runner import fingerprint, library_source_hash, record_status, write_record
from asa_lib.run.stages import hash_files
from asa_lib.run.sweep import open_cache
from asa_lib.tools import CallMarkers

SPLIT = "eval"
RESULTS = "evaluation.json"
NOTEBOOK = "08_evaluate"


class EvaluateError(ValueError):
    """An evaluation that cannot run as asked; the message says what to change."""


def parse_values(text: str | None, flag: str) -> list[float] | None:
    """``"0.6,0.75"`` -> ``[0.6, 0.75]`` (None stays None: the adapter's own value)."""
    if text is None:
        return None
    try:
        vals = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise EvaluateError(f"{flag}: expected numbers separated by commas, got {text!r}") from None
    if not vals:
        raise EvaluateError(f"{flag}: no value given")
    return vals


def adapter_configs(
    adapter: str | Path,
    params: Params,
    taus: Sequence[float] | None = None,
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
) -> list[ASA]:
    """The adapter under each combination of overrides (none given: its chosen config alone)."""
    out, names = [], set()
    for t, a, b in itertools.product(taus or [None], alphas or [None], betas or [None]):
        asa = ASA.load(
            adapter,
            tau=t,
            alpha=a,
            beta=b,
            prompt=params.prompt,
            allow_model_mismatch=params.steering.allow_model_mismatch,
        )
        if (t, a, b) != (None, None, None):
            asa.name = f"tau={asa.tau:g} alpha={asa.alpha:g} beta={asa.beta:g}"
        if asa.name in names:
            raise EvaluateError(f"the override {asa.name!r} is given twice")
        names.add(asa.name)
        out.append(asa)
    return out


def check_prompt_format(adapter: str | Path, params: Params, bundle: Bundle) -> str | None:
    """Refuse ``params`` whose prompt format is not the adapter's; a note where unknown.

    The adapter's own record (``bundle.prompt_format_sha256``) decides; a bundle written
    before it recorded one is checked against the run's ``params.yaml`` beside it.
    """
    # a mismatch with the adapter's own record raises (ASA.load, run first, has refused it)
    if bundle.check_prompt_format(prompt_format_sha256(params.prompt)):
        return None
    fmt = run_prompt_format(adapter)
    if fmt is None:
        return (
            f"the prompt format of the run {adapter} came from is unknown (no readable "
            "params.yaml beside it): the prompts are rendered in --params' format"
        )
    if prompt_format_sha256(fmt) != prompt_format_sha256(params.prompt):
        raise EvaluateError(
            f"--params renders prompts in another format than the run the adapter came from "
            f"({Path(adapter).parent / 'params.yaml'}); its probes were fitted on that format: "
            "evaluate with that run's params (the prompt section must be the same)"
        )
    return None


def run_overlap(
    bundle: Bundle, params: Params, requests: list, tools: list
) -> dict[str, Any] | None:
    """The rows (texts or conversations, and own tools) that are rows of the adapter's run, per split, with a
    one-line note where there are any (:meth:`Bundle.run_overlap`); None where the bundle
    records no rows (written before it did)."""
    counts = bundle.run_overlap(row_digests(params.prompt, requests, tools))
    if counts is None:
        return None
    n, fitted = counts["rows"], counts["fitted_or_chosen"]
    note = None
    if n:
        parts = ", ".join(f"{s.upper()} {k}" for s, k in counts["per_split"].items() if k)
        note = f"{n} of the {len(requests)} rows are rows of the adapter's own run ({parts}); " + (
            f"its CAL, TRAIN and VALID rows ({fitted} here) were fitted or chosen on, so "
            "the metrics over them are not transfer metrics"
            if fitted
            else "they are its TEST rows, which its run scored already"
        )
    return {**counts, "splits_fitted_or_chosen": list(FITTED_SPLITS), "note": note}


def read_eval_data(params: Params, data: str) -> tuple[LabelledSet, Path | None]:
    """Every usable row of ``data`` (a file, or a hub dataset id), checked: both labels present.

    A path that exists is a path, never a hub id: a file is read as it is (whatever its
    suffix), a folder is refused as ``asa run`` refuses it for ``data.source``. The rows
    are read within the params' limits (``data.max_rows``, ``max_bytes``, ``max_domains``).
    """
    local = resolve_data_path(data, Path.cwd())
    if local is None and Path(data).is_file():
        local = Path(data).resolve()  # a file whose suffix does not say so: read it as it is
    try:
        if local is None:  # a hub id, unless it names a folder here
            check_hub_id(data, [Path.cwd()], "--data", "the working directory")
        else:
            check_not_a_folder(local, "--data", params.data.kind)
    except ParamsError as e:
        raise EvaluateError(str(e)) from None
    if local is not None and not local.is_file():
        raise EvaluateError(f"--data: no such file: {data}")
    ds = read_all_samples(params, data, local)
    labels = set(ds.labels())
    if len(labels) < 2:
        only = "needs a tool (label 1)" if labels == {1} else "needs no tool (label 0)"
        raise EvaluateError(
            f"{ds.origin}: every one of the {len(ds.samples)} usable rows {only}; recall, "
            "FPR and F1 need rows of both labels"
        )
    return ds, local


def evaluate(
    params: Params,
    adapter: str | Path,
    data: str,
    out_dir: str | Path,
    taus: Sequence[float] | None = None,
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
    lm: LoadedModel | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Baseline and steered outputs of every row of ``data`` under the adapter; written to ``out_dir``.

    The evaluation's record (``<out>/stages/evaluate.json``: the fingerprint of
    :func:`inputs_of`, the results file's sha256) is written by the runner's
    :func:`~asa_lib.run.runner.write_record`, so :func:`current_results` resumes it the way
    ``asa run`` resumes a stage.

    Raises :class:`EvaluateError` / :class:`~asa_lib.data.DataError` /
    :class:`~asa_lib.api.AdapterError` (a one-line message each) for a prompt
    format other than the adapter's, a model other than the bundle's, an empty
    set or a set of one label.
    """
    t0 = time.time()
    run = RunDir(out_dir)
    inputs = inputs_of(params, adapter, data, taus, alphas, betas)
    asas = adapter_configs(adapter, params, taus, alphas, betas)
    bundle = asas[0].bundle
    note = check_prompt_format(adapter, params, bundle)
    ds, local = read_eval_data(params, data)
    if lm is None:
        lm = load_params_model(params)  # checks the chat template against the prompt format
    else:
        check_prompt_tokenizer(params, lm.tokenizer)
    asas[0].check_model(lm)
    xs = ds.samples
    tools = sample_tools(xs, ds.tool_sets)
    overlap = run_overlap(bundle, params, [x.request for x in xs], tools)
    prompts = render_prompts(lm.tokenizer, params.prompt, [x.request for x in xs], tools)
    settings = GenerationSettings.resolve(params.generation, params.prompt, lm)
    try:  # before any forward pass, as stage 02 does: a row too long is named, not truncated
        check_prompt_lengths(
            lm,
            token_ids(lm, prompts),
            settings.max_prompt_tokens,
            settings.max_new_tokens,
            name=lambda i: f"{ds.origin}, row {xs[i].id!r}",
        )
    except PromptTooLongError as e:
        raise EvaluateError(str(e)) from None
    seed = params.data.seed
    specs = [ConfigSpec(baseline_config())] + [
        ConfigSpec(
            SweepConfig(
                asa.name,
                tau=asa.tau,
                alpha=asa.alpha,
                beta=asa.beta,
                vector=asa.vector,
                layer=asa.layer,
            ),
            float(asa.alpha_eff),
            asa.layer,
        )
        for asa in asas
    ]
    cache = open_cache(run, params, lm)
    try:
        # the blocks above L* do not run; kept in the cache batch by batch, so a killed
        # evaluation does not read them again
        h = cached_last_token_states(
            lm,
            prompts,
            bundle.layer,
            params.extraction.batch_size,
            cache,
            generation_context(lm, settings, cache),
            desc=f"states at block {bundle.layer}",
        )
        # the baseline and every override in one prompt-major pass (the sweep's core)
        scored = score_configs(
            lm,
            xs,
            prompts,
            h,
            bundle,
            specs,
            settings,
            cache,
            split=SPLIT,
            markers=CallMarkers.of(params.prompt),
            tool_sets=ds.tool_sets,
            pp=params.prompt,
            seed=seed,
            desc=f"{len(specs)} configs/{SPLIT}",
        )
    finally:
        cache.close()
    results: dict[str, dict] = {}
    for asa, r in zip([None, *asas], scored):
        results[r.name] = {
            "name": r.name,
            "tau": None if asa is None else asa.tau,
            "alpha": 0.0 if asa is None else asa.alpha,
            "beta": 0.0 if asa is None else asa.beta,
            "alpha_unit": "absolute" if asa is None else asa.alpha_unit,
            "alpha_eff": r.spec.alpha_eff,
            "layer": bundle.layer if r.spec.layer is None else r.spec.layer,
            "gate_layer": bundle.layer,
            "config": asdict(RECORD_ONLY if asa is None else r.spec.config),
            "splits": {SPLIT: r.split},
            "records": r.records,
            "intervals": interval_table(r.records, seed),
        }
    base = results[BASELINE]["records"]
    vs = {n: vs_baseline(base, r["records"], seed) for n, r in results.items() if n != BASELINE}
    tool_sets = ds.tool_sets
    seen = set(bundle.router_classes) | set(bundle.probes)
    out = {
        "name": name or run.root.name,
        "adapter": str(Path(adapter).resolve()),
        "adapter_config": asas[0].config | {"name": asas[0].name},
        "configs_evaluated": [a.name for a in asas],
        "data": str(local) if local is not None else data,
        "data_sha256": file_digest(local) if local is not None else None,
        "tool_sets_sha256": json_sha256(tool_sets) if tool_sets else None,
        "rows_read": ds.rows_read,
        "rows_used": len(xs),
        "skipped": ds.skipped,
        "skipped_examples": ds.skipped_examples,
        "domains": {
            "in_data": ds.domains,
            "known_to_bundle": sorted(seen),
            "unseen": [d for d in ds.domains if d not in seen],
        },
        "model_id": lm.model_id,
        "bundle_sha256": bundle.sha256 or None,
        "prompt_format_sha256": prompt_format_sha256(params.prompt),
        "prompt_format_note": note,
        "adapter_stale": bundle.stale or None,
        "run_overlap": overlap,
        "max_new_tokens": settings.max_new_tokens,
        "versions": library_versions(),
        # 12 digits, "+changes" where tracked files differ from the commit
        "git_commit": git_commit(Path(__file__).resolve().parents[2], short=True) or "unknown",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - t0, 2),
        "configs": results,
        "vs_baseline": vs,
        "transfer": transfer(results, seed, vs),
        "tool_sets": tool_sets,
        "inputs": inputs,
    }
    write_json(run.root / RESULTS, out)
    write_record(run, STEP, fingerprint(inputs), hash_files(run.root, [RESULTS]), time.time() - t0)
    return out


STEP = "evaluate"  # the evaluation's record: <out>/stages/evaluate.json

# One gate value on more than this share of the rows: the threshold has not transferred.
GATE_SHARE_WARNING = 0.9


def transfer(
    results: dict[str, dict], seed: int = 0, vs: dict[str, dict] | None = None
) -> dict[str, Any]:
    """Does the adapter's probe know on this set, and did the gate's decisions happen?

    - ``probe_auc``: the AUC of the rows' p(tool) (the probe at L*, as routed) against their
      labels, with a bootstrap 95% interval (``probe_auc_ci95``, :func:`~asa_lib.metrics.bootstrap_auc_ci`).
    - per config: how many rows got each gate value (``gates``), a one-line ``warning`` when
      one value covers more than :data:`GATE_SHARE_WARNING` of them, how many rows the gate
      asked to change (``aimed``: gate +1 where the baseline abstains, -1 where it calls)
      and how many of those followed it (``followed``), and a ``verdict``:
      "does not separate ... cannot help here" where the interval reaches 0.5; else "the
      pull is too weak" where fewer than half the aimed rows followed; else "the pull
      follows the gate, but it does not help here" where no more than half of the rows
      that followed moved towards their label (``right``), or where ``vs`` (the paired
      differences from the baseline) gives a ΔF1 interval that is not above 0; else
      "transfers".
    """
    base = results[BASELINE]["records"]
    y = [r["label"] for r in base]
    a = auc(y, [r["p_tool"] for r in base])
    ci = bootstrap_auc_ci(y, [r["p_tool"] for r in base], seed=seed)
    knows = a is not None and ci is not None and ci[0] > 0.5
    auc_text = "one label only" if a is None else f"AUC {a:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"
    out: dict[str, Any] = {"probe_auc": a, "probe_auc_ci95": ci, "configs": {}}
    for name, r in results.items():
        if name == BASELINE:
            continue
        recs = r["records"]
        gates = {str(g): sum(x["gate"] == g for x in recs) for g in (-1, 0, 1)}
        n = len(recs)
        top = max(gates, key=lambda g: gates[g])
        warning = None
        if n and gates[top] > GATE_SHARE_WARNING * n:
            g = {"-1": "-1", "0": "0", "1": "+1"}[top]
            warning = (
                f"gate {g} on {gates[top]} of {n} rows ({gates[top] / n:.0%}): the threshold "
                "(tau) has not transferred to this set"
            )
        aimed = [
            (b, x)
            for b, x in zip(base, recs)
            if (x["gate"] == 1 and not b["triggered"]) or (x["gate"] == -1 and b["triggered"])
        ]
        moved = [x for _, x in aimed if bool(x["triggered"]) == (x["gate"] == 1)]
        followed = len(moved)
        right = sum((x["gate"] == 1) == (x["label"] == 1) for x in moved)
        d = (vs or {}).get(name)
        d_text = (
            ""
            if d is None
            else f"; ΔF1 {d['d_f1']:+.3f} [{d['d_f1_lo']:+.3f}, {d['d_f1_hi']:+.3f}]"
        )
        helps = right > followed / 2 and (d is None or d["d_f1_lo"] > 0)
        if not knows:
            verdict = f"the probe does not separate this set's labels ({auc_text}): steering cannot help here"
        elif not aimed:
            verdict = f"the probe knows ({auc_text}), but the gate asked for no change the baseline had not made"
        elif followed < len(aimed) / 2:
            verdict = (
                f"the probe knows ({auc_text}), but the pull is too weak: {len(aimed) - followed} "
                f"of the {len(aimed)} rows the gate asked to change kept the baseline's decision"
            )
        elif not helps:
            verdict = (
                f"the pull follows the gate, but it does not help here: {followed} of the "
                f"{len(aimed)} rows the gate asked to change followed it, {right} of them "
                f"towards their label (the probe: {auc_text}{d_text})"
            )
        else:
            verdict = (
                f"the adapter transfers: the probe knows ({auc_text}), and {followed} of the "
                f"{len(aimed)} rows the gate asked to change followed it, {right} of them "
                f"towards their label{d_text}"
            )
        out["configs"][name] = {
            "gates": gates,
            "aimed": len(aimed),
            "followed": followed,
            "right": right,
            "verdict": verdict,
            "warning": warning,
        }
    return out


def inputs_of(
    params: Params,
    adapter: str | Path,
    data: str,
    taus: Sequence[float] | None = None,
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
) -> dict[str, Any]:
    """What an evaluation's results depend on; its fingerprint decides whether a rerun
    reuses them (:func:`current_results`)."""
    local = resolve_data_path(data, Path.cwd())
    overrides = {
        k: None if v is None else [float(x) for x in v]
        for k, v in (("tau", taus), ("alpha", alphas), ("beta", betas))
    }
    d = params.to_dict()
    return {
        "params": {k: d[k] for k in ("model", "prompt", "data", "extraction", "generation")},
        "adapter": str(Path(adapter).resolve()),
        "bundle": {f.name: file_digest(f) for f in sorted(Path(adapter).glob("adapter.*"))},
        "data": str(local) if local is not None else data,
        "data_sha256": file_digest(local) if local is not None and local.is_file() else None,
        "overrides": overrides,
        "versions": library_versions(),
        "asa_lib_source": library_source_hash(),
    }


def load_evaluation(out_dir: str | Path) -> dict[str, Any]:
    """The results an evaluation wrote to ``out_dir``."""
    return read_json(Path(out_dir) / RESULTS)


def current_results(out_dir: str | Path, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The results in ``out_dir`` when its record says they were made from ``inputs`` and
    the file is unchanged since (the runner's :func:`~asa_lib.run.runner.record_status`);
    None when the evaluation must run (again)."""
    done, why = record_status(RunDir(out_dir), STEP, fingerprint(inputs), notebook=False)
    return load_evaluation(out_dir) if done and why is None else None


def open_evaluation(
    params_path: str,
    adapter: str,
    data: str,
    out_dir: str,
    taus: str = "",
    alphas: str = "",
    betas: str = "",
) -> tuple[Params, dict[str, Any]]:
    """08's first cell: the results in ``out_dir`` if made from these inputs, else evaluate now."""
    from asa_lib.params import load_params

    params = load_params(params_path)
    lists = [
        parse_values(x or None, n)
        for x, n in ((taus, "taus"), (alphas, "alphas"), (betas, "betas"))
    ]
    res = current_results(out_dir, inputs_of(params, adapter, data, *lists))
    return params, res or evaluate(params, adapter, data, out_dir, *lists)


def metric_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per config: each metric and post-trigger validity with its 95% interval, as text."""
    rows = []
    for name, r in res["configs"].items():
        m, ci = r["splits"][SPLIT]["metrics"], r["intervals"]["overall"]["ci95"]
        row: dict[str, Any] = {"config": name, "tau": r["tau"], "alpha": r["alpha"]}
        for k in (*METRICS, "valid_call_rate"):
            row[k] = f"{m[k]:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]"
        row["calls"] = m["triggers"]
        split = m.get("validity_split") or {}
        for k in VALIDITY_SPLIT:  # the calls by why (counts; they add up to the calls)
            row[f"calls: {k}"] = split.get(k)
        rows.append(row)
    return rows


def domain_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per config x domain, as :func:`metric_rows` (validity of that domain's calls)."""
    rows = []
    for name, r in res["configs"].items():
        recs = r["records"]
        for d, iv in r["intervals"]["per_domain"].items():
            rs = [x for x in recs if x["domain"] == d]
            m = binary_metrics([x["label"] for x in rs], [int(x["triggered"]) for x in rs])
            trig = [x for x in rs if x["triggered"]]
            m["valid_call_rate"] = sum(x["valid"] for x in trig) / len(trig) if trig else 0.0
            row: dict[str, Any] = {"config": name, "domain": d, "n": iv["n"], "tool": iv["tool"]}
            for k in (*METRICS, "valid_call_rate"):
                lo, hi = iv["ci95"][k]
                row[k] = f"{m[k]:.3f} [{lo:.3f}, {hi:.3f}]"
            rows.append(row)
    return rows


def routing_mix(res: dict[str, Any]):
    """Rows per (data domain, routed domain); a domain the bundle never saw is marked."""
    import pandas as pd

    recs = res["configs"][BASELINE]["records"]
    unseen = set(res["domains"]["unseen"])
    df = pd.DataFrame(
        {
            "domain": [r["domain"] + (" (unseen)" if r["domain"] in unseen else "") for r in recs],
            "routed to": [r["routed"] for r in recs],
        }
    )
    return pd.crosstab(df["domain"], df["routed to"])


def console_lines(res: dict[str, Any]) -> list[str]:
    """What ``asa evaluate`` prints of an evaluation: the rows used (and skipped, with the
    first reasons), then each config's F1, recall and FPR with their intervals and its
    difference from the baseline."""
    base = res["configs"][BASELINE]
    unseen = res["domains"]["unseen"]
    lines = [
        f"{res['rows_used']} rows of {res['data']}"
        + (f" ({len(unseen)} of an unseen domain)" if unseen else "")
        + f"; {res['seconds']:.0f} s ({res['seconds'] / res['rows_used']:.2f} s per prompt)"
    ]
    if res.get("adapter_stale"):
        lines.append(f"note: the adapter is stale: {res['adapter_stale']}")
    if (res.get("run_overlap") or {}).get("note"):  # rows it was fitted or chosen on
        lines.append(f"note: {res['run_overlap']['note']}")
    if res["skipped"]:  # the rows the metrics leave out, as the report lists them
        lines.append(
            describe_skipped(
                res["skipped"], res["skipped_examples"], res["rows_read"], res["data"], first=3
            )
        )
    for cname, r in res["configs"].items():
        m, ci = r["splits"]["eval"]["metrics"], r["intervals"]["overall"]["ci95"]
        line = f"  {cname:<28} " + "  ".join(
            f"{k.upper()} {m[k]:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]"
            for k in ("f1", "recall", "fpr")
        )
        if r is not base:
            d = res["vs_baseline"][cname]
            line += "  ΔF1 {:+.3f} [{:+.3f}, {:+.3f}]  ΔFPR {:+.3f} [{:+.3f}, {:+.3f}]".format(
                d["d_f1"], d["d_f1_lo"], d["d_f1_hi"], d["d_fpr"], d["d_fpr_lo"], d["d_fpr_hi"]
            )
        lines.append(line)
        t = (res.get("transfer") or {}).get("configs", {}).get(cname)
        if t:  # does the probe know here, and did the gate's decisions happen?
            lines.append(f"    {t['verdict']}")
            if t["warning"]:
                lines.append(f"    warning: {t['warning']}")
    return lines


MARKER = "evaluation_dir.json"  # marks a folder as an evaluation's (a rerun may reuse it)


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise EvaluateError(f"{out} is a file, not a folder. Choose another --out-dir.")
    if out.is_dir() and not (out / MARKER).is_file() and any(out.iterdir()):
        raise EvaluateError(
            f"{out} is not empty and is not an evaluation folder. Choose another --out-dir "
            "(or --name), or an empty folder."
        )


def run_evaluation(
    params_path: str | Path,
    adapter: str | Path,
    data: str,
    out_dir: str | Path,
    taus: str | None = None,
    alphas: str | None = None,
    betas: str | None = None,
    log=print,
    reports: str = "reader",
) -> tuple[dict[str, Any], Path]:
    """``asa evaluate``: evaluate here (one-line errors), then run 08 as the report.

    ``reports``: the HTML's mode, ``reader`` or ``full`` (:mod:`asa_lib.report.html`).

    Returns the results and the HTML report's path. The report goes to
    ``<out>/html/08_evaluate.html`` (the executed notebook to ``<out>/notebooks/``),
    and the adapter's run folder lists it (its ``index.html`` links it).
    """
    from asa_lib.params import load_params
    from asa_lib.report.html import page_title, render_html
    from asa_lib.report.index import refresh_index
    from asa_lib.run.runner import NOTEBOOK_DIR, RunError, RunLock, Stage, execute_notebook

    params_path, out = Path(params_path).resolve(), Path(out_dir).resolve()
    params = load_params(params_path)
    lists = [
        parse_values(x, f"--{n}") for x, n in ((taus, "tau"), (alphas, "alpha"), (betas, "beta"))
    ]
    # refuse bad overrides and another prompt format before anything is written
    asas = adapter_configs(adapter, params, *lists)
    check_prompt_format(adapter, params, asas[0].bundle)
    local = resolve_data_path(data, Path.cwd())
    data_arg = str(local) if local is not None else data  # the kernel starts in the project root
    read_eval_data(params, data_arg)
    check_prompt_tokenizer(params)  # a chat template that drops the tools: before any file
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MARKER, {"tool": "asa_lib evaluate", "params_file": str(params_path)})
    run = RunDir(out)
    try:
        lock = RunLock(out, command="asa evaluate", flag="--out-dir")
        with lock:
            t0 = time.time()
            res = current_results(out, inputs_of(params, adapter, data_arg, *lists))
            if res is not None:
                log(f"{out.name}: up to date (same inputs), results reused; writing the report ...")
            else:
                res = evaluate(params, adapter, data_arg, out, *lists, name=out.name)
                log(
                    f"evaluated {res['rows_used']} rows in {time.time() - t0:.0f} s; "
                    "writing the report ..."
                )
            for p in (run.notebooks, run.html):
                p.mkdir(parents=True, exist_ok=True)
            stage = Stage(
                NOTEBOOK,
                NOTEBOOK,
                {
                    "params_path": str(params_path),
                    "adapter": str(Path(adapter).resolve()),
                    "data": data_arg,
                    "out_dir": str(out),
                    "taus": taus or "",
                    "alphas": alphas or "",
                    "betas": betas or "",
                },
            )
            try:
                execute_notebook(stage, NOTEBOOK_DIR, run.notebook(NOTEBOOK), progress=False)
            finally:
                if run.notebook(NOTEBOOK).is_file():
                    render_html(
                        run.notebook(NOTEBOOK),
                        run.report(NOTEBOOK),
                        mode=reports,
                        title=page_title(out.name, NOTEBOOK),
                    )
    except RunError as e:
        raise EvaluateError(str(e)) from None
    listed = register_evaluation(adapter, out, res)
    if listed is not None:
        refresh_index(listed.parent)
    return res, run.report(NOTEBOOK)


def tool_sets(res: dict[str, Any]) -> dict[str, list]:
    """The rows' own tool lists (id -> tools), for the flip table."""
    return res.get("tool_sets") or {}


def _first_verdict(result: dict) -> str:
    """The transfer verdict of the first config evaluated (with its gate warning), "" if none."""
    t = (result.get("transfer") or {}).get("configs", {})
    first = t.get((result.get("configs_evaluated") or [None])[0])
    if not first:
        return ""
    return first["verdict"] + (f"; warning: {first['warning']}" if first["warning"] else "")


def register_evaluation(adapter: str | Path, out_dir: str | Path, result: dict) -> Path | None:
    """List this evaluation in the adapter's run folder (its ``index.html`` links each one).

    None where the adapter does not sit in a run folder (no ``run.json`` beside it).
    """
    run = RunDir(Path(adapter).resolve().parent)
    if not run.run_json.is_file():
        return None
    path = run.root / EVALUATIONS
    try:
        items = read_json(path) if path.is_file() else []
    except (OSError, ValueError):
        items = []
    if not isinstance(items, list):
        items = []
    report = Path(out_dir).resolve() / "html" / f"{NOTEBOOK}.html"
    entry = {
        "name": result["name"],
        "report": str(report),
        "data": result["data"],
        "data_sha256": result["data_sha256"],  # what the index shows of a file outside the project
        "rows": result["rows_used"],
        "configs": result["configs_evaluated"],
        "verdict": _first_verdict(result),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    items = [e for e in items if isinstance(e, dict) and e.get("report") != entry["report"]]
    write_json(path, [*items, entry])
    return path


__all__ = [
    "AdapterError",
    "DataError",
    "EvaluateError",
    "adapter_configs",
    "check_prompt_format",
    "evaluate",
    "load_evaluation",
    "current_results",
    "inputs_of",
    "open_evaluation",
    "parse_values",
    "read_eval_data",
    "register_evaluation",
    "run_overlap",
    "run_evaluation",
]
