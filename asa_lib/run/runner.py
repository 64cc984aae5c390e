"""Run the notebook chain with papermill, render HTML reports, write the run's index.

Stages, in order: 01_data, 02_extraction, 03_probing, 04_vectors, 05_routing,
06_generate (every config at once, prompt-major), 06_sweep once per config (``baseline``
first), 07_analysis. Each stage is the
py:percent notebook in ``notebooks/``, converted with jupytext and executed by
papermill with ``params_path`` and ``run_dir`` (and, for 06, the config) as
parameters. Executed notebooks go to ``<run>/notebooks/``, HTML renderings to
``<run>/html/``, and ``<run>/index.html`` links them all.

Resuming: after a stage succeeds, ``<run>/stages/<stage>.json`` records its
*fingerprint*, a hash of everything its outputs depend on: the params sections
it reads, the fingerprints of the stages before it, the notebook's source, the
data file and the library versions. On the next run a stage whose fingerprint
is unchanged is skipped; a changed one runs again, and so (through the chained
fingerprints) does everything after it. Sweep configs are fingerprinted one by
one, so adding or editing one config re-runs only that config and the analysis.

A stage's record also holds its *plan* fingerprint (the part known before anything runs).
A rerun whose plan for the stage that writes ``chosen_adapter/`` is not the one that
wrote it marks the adapter stale at its start (:func:`mark_stale_adapter`), so that a
rerun that fails or is interrupted leaves no adapter that looks like its own; the
adapter's own records (prompt format, tokenizer, model) still decide what it accepts.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from asa_lib.files import git_commit, library_versions, read_json, write_json, write_text
from asa_lib.layout import RunDir, RunFolderError, check_run_folder
from asa_lib.method.bundle import clear_stale, mark_stale, stale_reason
from asa_lib.params import BASELINE, Params, SweepConfig, load_params
from asa_lib.progress import ENV as PROGRESS_ENV
from asa_lib.progress import describe as describe_progress
from asa_lib.provenance import Hasher, digest, file_digest, legacy_json
from asa_lib.report.html import MODES as REPORT_MODES
from asa_lib.report.html import report_signature
from asa_lib.report.index import write_index
from asa_lib.run import lifeline
from asa_lib.run.parallel import auto_processes, check_processes
from asa_lib.run.stages import (
    CORE_STAGES,
    STAGE,
    STAGES,
    SWEEP_STAGE,
    changed_output,
    hash_outputs,
    spec_of,
    stage_writes,
    sweep_stage,
)

LIBRARY_ROOT = Path(__file__).resolve().parents[1]  # asa_lib/
PROJECT_ROOT = LIBRARY_ROOT.parent


NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


KERNEL = "python3"


class RunError(RuntimeError):
    """A run that cannot start (e.g. a run folder made by another params file)."""


@dataclass
class Stage:
    key: str  # e.g. "03_probing" or "06_sweep__paper"
    notebook: str  # notebook stem
    parameters: dict
    fingerprint: str = ""
    status: str = "pending"  # pending | skipped | ok | failed | blocked
    seconds: float = 0.0
    error: str = ""
    config: SweepConfig | None = None


def fingerprint(*parts) -> str:
    """The fingerprint of a stage's inputs: ``parts`` as canonical JSON, hashed (20 hex digits).

    Every resumable step (each stage of ``asa run``, and ``asa evaluate``) is fingerprinted
    by this one recipe and recorded by :func:`write_record`; :func:`record_status` decides
    whether it must run again.
    """
    h = Hasher()
    for p in parts:
        h.update(legacy_json(p), "\0")
    return h.hexdigest(20)


def record_status(run: RunDir, key: str, fp: str, notebook: bool = True) -> tuple[dict, str | None]:
    """A step's record in ``<run>/stages/<key>.json`` and why the step must run again.

    The reason is None when the record holds ``fp`` and every output it lists is unchanged
    (and, with ``notebook``, the executed notebook is there): the step is up to date. It is
    None too when there is no record at all (the step never ran), with an empty record.
    """
    rec = run.record(key)
    done = _read_record(rec)
    if not done:
        return {}, ("its stage record is damaged" if rec.exists() else None)
    if done.get("fingerprint") != fp:
        return done, "its inputs changed"
    if notebook and not run.notebook(key).is_file():
        return done, "its executed notebook is missing"
    return done, changed_output(run.root, done.get("outputs"))


def write_record(
    run: RunDir, key: str, fp: str, outputs: dict, seconds: float, plan: str | None = None
) -> None:
    """Record that step ``key`` finished with inputs ``fp`` and these outputs (size, sha256)."""
    rec = {"fingerprint": fp}
    if plan is not None:
        rec["plan"] = plan  # what mark_stale_adapter compares
    rec.update(
        seconds=round(seconds, 2),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        outputs=outputs,
    )
    run.stages.mkdir(parents=True, exist_ok=True)
    write_json(run.record(key), rec)


def _file_hash(path: Path | None) -> str:
    return file_digest(path) if path is not None and path.is_file() else "hub"


def plan(
    params: Params, params_path: Path, run_dir: Path, notebook_dir: Path = NOTEBOOK_DIR
) -> list[Stage]:
    """The stages of a run (:data:`~asa_lib.run.stages.STAGES`, per-config stages once per
    config) with their parameters and fingerprints.

    A stage's fingerprint covers its key, the fingerprints of the stages it
    needs, the params sections it reads, its notebook's source, the library
    versions and source, and, for 01, the data file, for 02, the LoRA adapter.
    """
    common = {"params_path": str(params_path), "run_dir": str(run_dir)}
    src = {p.stem: p.read_text(encoding="utf-8") for p in notebook_dir.glob("*.py")}
    vers = {**library_versions(), "asa_lib_source": library_source_hash()}
    d = params.to_dict()
    if params.data_path() is not None:  # a local file: where it is (resolved), not its spelling
        d["data"]["source"] = str(params.data_path())
    adapter = params.adapter_path()
    extra = {
        "01_data": _file_hash(params.data_path()),
        "02_extraction": [
            _file_hash(adapter / "adapter_model.safetensors"),
            _file_hash(adapter / "adapter_config.json"),
        ]
        if adapter
        else "none",
    }
    fps: dict[str, list[str]] = {}  # table key -> the fingerprints of its stages
    stages: list[Stage] = []
    for spec in STAGES:
        before = [f for n in spec.needs for f in fps[n]]
        base = [spec.key, before, [d[k] for k in spec.sections], extra.get(spec.key)]
        base += [src[spec.key], vers]
        if not spec.per_config:
            stages.append(Stage(spec.key, spec.key, dict(common), fingerprint(*base)))
            fps[spec.key] = [stages[-1].fingerprint]
            continue
        fps[spec.key] = []
        for c in params.configs():
            f = fingerprint(*base, asdict(c))
            fps[spec.key].append(f)
            stages.append(
                Stage(
                    sweep_stage(c.name),
                    spec.key,
                    {**common, "config_name": c.name},
                    f,
                    config=c,
                )
            )
    return stages


def library_source_hash(root: Path = LIBRARY_ROOT) -> str:
    """Hash of every asa_lib source file, sub-packages included: editing the library invalidates what it computed."""
    h = Hasher()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix(), p.read_bytes())
    return h.hexdigest(20)


def _depends_on(stage: Stage, stages: list[Stage]) -> list[Stage]:
    """The stages whose outputs ``stage`` reads: what it needs in the stage table, and what
    those need in turn; of a per-config stage, the configs that produced a result (a
    failed config has none)."""
    wanted: set[str] = set()
    todo = list(spec_of(stage.key).needs)
    while todo:
        n = todo.pop()
        if n not in wanted:
            wanted.add(n)
            todo.extend(STAGE[n].needs)
    return [
        s
        for s in stages
        if s.notebook in wanted
        and (s.config is None or s.status in ("ok", "skipped"))
        and s.key != stage.key
    ]


def mark_stale_adapter(run_dir: str | Path, stages: list[Stage], log=print) -> str:
    """At a run's start: mark ``chosen_adapter/`` stale unless this run's plan wrote it.

    The adapter is fresh when the record of the stage that writes it holds that stage's
    plan fingerprint in ``stages`` (:func:`plan`: the params sections, notebooks, data
    file and library of it and of every stage before it); then a mark left by an earlier
    rerun is removed. Otherwise (other inputs, or that stage did not finish since) the
    folder is marked (:func:`~asa_lib.method.bundle.mark_stale`) naming the first stage
    whose plan differs; the stage that writes a new adapter removes the mark. Returns
    the mark's reason, "" where there is no adapter or it is fresh.
    """
    run = RunDir(run_dir)
    folder = run.chosen_adapter
    rel = folder.relative_to(run.root).as_posix()
    writer = [s for s in stages if rel in stage_writes(s.notebook)]
    if not folder.is_dir() or not writer:
        return ""
    # A record without a plan (written before plans were recorded) says nothing either way:
    # it is not counted as changed (the adapter's own records still decide what it accepts),
    # and the run records its plan when it skips the stage.
    plans = {s.key: _read_record(run.record(s.key)).get("plan") for s in stages}
    changed = [s.key for s in stages if plans[s.key] not in (None, s.fingerprint)]
    if writer[0].key not in changed:
        clear_stale(folder)
        return ""
    reason = stale_reason(folder)  # a mark of an earlier rerun keeps its reason
    if not reason:
        reason = (
            f"a rerun of its run folder started {time.strftime('%Y-%m-%dT%H:%M:%S')} with "
            f"other inputs (from {changed[0]} on), and has not written a new adapter"
        )
        mark_stale(folder, reason)
        log(f"{rel}/ is marked stale: {reason} yet")
    return reason


def _check_run_dir(params: Params, params_path: Path, run_dir: Path, write: bool = True) -> None:
    """Adopt ``run_dir`` only if it is new, empty, or a run folder of this params name."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} is a file, not a run folder. Choose another --run-dir.")
    info = RunDir(run_dir).run_json
    if info.is_file():
        try:
            prev = read_json(info)
            if not isinstance(prev, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as e:
            raise RunError(
                f"{info} is damaged ({e}). Delete the run folder to start over, "
                "or choose another --run-dir."
            ) from None
        if prev.get("name") != params.name:
            raise RunError(
                f"{run_dir} holds a run of params {prev.get('name')!r} ({prev.get('params_file')}), "
                f"not {params.name!r}. Choose another --run-dir, or delete that folder to start over."
            )
    elif run_dir.is_dir() and any(not p.name.startswith(LOCK_NAME) for p in run_dir.iterdir()):
        raise RunError(
            f"{run_dir} is not empty and is not an asa run folder (no run.json). "
            "Choose another --run-dir, or an empty folder."
        )
    if write:
        write_json(
            info,
            {"name": params.name, "params_file": str(params_path.resolve()), "tool": "asa_lib"},
        )


LOCK_NAME = RunDir(".").lock.name


class RunLock:
    """An exclusive lock on a run folder (filelock), with the holder's identity beside it.

    The identity (``pid:start time``, :func:`asa_lib.run.lifeline.identity`) is
    what a later run checks when it gets the lock but finds a holder's record
    (a holder that did not end cleanly): a record whose process still runs (the
    lock file was deleted under it) or whose processes still run (kernels,
    torchrun, workers that outlived it) keeps the folder locked; a record whose
    process is gone (its pid free or reused by another process) is stale and
    is taken over.
    """

    def __init__(self, run_dir: Path, command: str = "asa run", flag: str = "--run-dir"):
        from filelock import FileLock

        self.command, self.flag = command, flag  # what the refusal names

        self.path = RunDir(run_dir).lock
        self.owner = self.path.with_name(self.path.name + ".pid")
        self.lock = FileLock(str(self.path), timeout=0)
        self.me = lifeline.identity() or str(os.getpid())

    def _in_use(self, pid: str) -> RunError:
        return RunError(
            f"{self.path.parent} is in use by another `{self.command}` (pid {pid}). "
            f"Wait for it to finish, or use another {self.flag}."
        )

    def __enter__(self):
        from filelock import Timeout

        try:
            self.lock.acquire()
        except Timeout:
            try:
                pid = lifeline.pid_of(self.owner.read_text().strip()) or "unknown"
            except OSError:
                pid = "unknown"
            raise self._in_use(pid) from None
        try:
            before = self.owner.read_text().strip()
        except OSError:
            before = ""
        if before and before != self.me:  # its holder ended without releasing it, or lives on
            if lifeline.alive(before):
                self.lock.release()
                raise self._in_use(lifeline.pid_of(before))
            left = lifeline.started_by(before)
            if left:
                self.lock.release()
                pids = " ".join(map(str, left))
                raise RunError(
                    f"{self.path.parent} is still being written by processes of an earlier "
                    f"`{self.command}` that was killed (pid {pids}). Wait for them to end or stop "
                    f"them (kill {pids}), then run again."
                )
        self.owner.write_text(f"{self.me}\n")
        return self

    def __exit__(self, *exc):
        self.owner.unlink(missing_ok=True)
        self.lock.release()


def execute_notebook(stage: Stage, notebook_dir: Path, out: Path, progress: bool) -> None:
    import jupytext
    import papermill as pm

    nb = jupytext.read(notebook_dir / f"{stage.notebook}.py")
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    # The kernel's own log (a TCP-transport warning at start, "KeyboardInterrupt caught in
    # kernel" at shutdown) is not the user's business; errors in cells still end up in the
    # executed notebook and in the stage line.
    pm.execute_notebook(
        nb,
        # papermill formats the output path with the parameters: braces in a folder name are text
        str(out).replace("{", "{{").replace("}", "}}"),
        parameters=stage.parameters,
        kernel_name=KERNEL,
        progress_bar=progress,
        cwd=str(PROJECT_ROOT),
        log_output=False,
        extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        kernel_manager_class=_kernel_manager_class(),
    )


def _kernel_manager_class():
    """jupyter_client's kernel manager, starting the kernel so that it dies with this process."""
    from jupyter_client import AsyncKernelManager

    class KernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments=None):
            return lifeline.wrap(super().format_kernel_cmd(extra_arguments))

    return KernelManager


def render_html(ipynb: Path, out: Path, mode: str = "reader", **kw) -> Path:
    """A stage's self-contained HTML report (:func:`asa_lib.report.html.render_html`)."""
    from asa_lib.report.html import render_html as render

    return render(ipynb, out, mode=mode, **kw)


def _page(run: RunDir, params: Params, stages: list[Stage], i: int, mode: str) -> dict:
    """What :func:`render_html` is given for stage ``i``: title, navigation, mode."""
    from asa_lib.report.html import nav_html, page_title, stage_label

    s = stages[i]
    title = page_title(params.name, s.key)
    link = lambda t: (f"{t.key}.html", stage_label(t.key))  # noqa: E731 (pages share html/)
    nav = nav_html(
        title,
        index="../index.html",
        prev=link(stages[i - 1]) if i > 0 else None,
        next_=link(stages[i + 1]) if i + 1 < len(stages) else None,
        notebook=f"../notebooks/{s.key}.ipynb",
    )
    sig = digest(f"{mode}\0{title}\0{nav}", length=12)
    return {"mode": mode, "title": title, "nav": nav, "run_root": run.root, "signature": sig}


def _render_stage(run: RunDir, params: Params, stages: list[Stage], i: int, mode: str, log):
    s = stages[i]
    if not run.notebook(s.key).is_file():
        return
    try:
        render_html(run.notebook(s.key), run.report(s.key), **_page(run, params, stages, i, mode))
    except Exception as e:  # noqa: BLE001
        log(f"    (HTML rendering of {s.key} failed: {_error_summary(e)})")


def _error_summary(exc: Exception) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}"
    return f"{type(exc).__name__}: {exc}"


def run(
    params_path: str | Path,
    run_dir: str | Path | None = None,
    notebook_dir: Path = NOTEBOOK_DIR,
    progress: bool = False,
    log=print,
    processes: int | str = 1,
    reports: str = "reader",
) -> tuple[int, Path]:
    """Run every stage that is not up to date. Returns (exit code, index path).

    ``reports``: how the HTML pages are rendered, ``reader`` (code folded, paths relative,
    the default) or ``full`` (every cell as executed); :mod:`asa_lib.report.html`.

    ``processes > 1`` runs extraction and each sweep config in that many
    data-parallel workers (:mod:`asa_lib.run.parallel`); results are the same, so
    it is not part of any fingerprint. ``"auto"``: one per visible GPU, or 2 on CPUs
    with 2 or more usable cores (:func:`~asa_lib.run.parallel.auto_processes`).
    """
    params_path = Path(params_path).resolve()
    params = load_params(params_path)
    if reports not in REPORT_MODES:
        raise RunError(f"--reports: {reports!r} is not one of {', '.join(REPORT_MODES)}")
    try:
        if processes == "auto":
            processes, why = auto_processes(params.model.device)
            log(f"processes auto: {why}")
        processes = check_processes(processes, params.model.device)
    except ValueError as e:
        raise RunError(str(e)) from None
    run_dir = Path(run_dir or PROJECT_ROOT / "reports" / params.name).resolve()
    try:
        check_run_folder(run_dir, PROJECT_ROOT)
    except RunFolderError as e:
        raise RunError(str(e)) from None
    _check_run_dir(params, params_path, run_dir, write=False)  # refuse before writing anything
    if params.prompt.tools_in == "chat_template":  # needs the tokenizer (and torch): only then
        from asa_lib.model.load import check_prompt_tokenizer

        check_prompt_tokenizer(params)  # a chat template that drops the tools: refused now
    saved = {
        k: os.environ.get(k) for k in ("TQDM_DISABLE", "PYTHONWARNINGS", lifeline.HOLDER_ENV)
    }  # set for the kernels
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(run_dir) as lock:
            os.environ[lifeline.HOLDER_ENV] = lock.me  # every process this run starts carries it
            return _run_locked(
                params, params_path, run_dir, notebook_dir, progress, log, processes, reports
            )
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        raise RunError(f"cannot write the run folder {run_dir}: {e.strerror or e}{where}") from None
    finally:
        for k, v in saved.items():  # the calling process keeps its own settings
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_locked(
    params: Params,
    params_path: Path,
    run_dir: Path,
    notebook_dir: Path,
    progress: bool,
    log,
    processes: int = 1,
    reports: str = "reader",
) -> tuple[int, Path]:
    _check_run_dir(params, params_path, run_dir)
    run = RunDir(run_dir)
    write_text(run.params_yaml, params_path.read_text(encoding="utf-8"))
    stages = plan(params, params_path, run_dir, notebook_dir)
    mark_stale_adapter(run, stages, log)  # before any stage can fail
    if processes > 1:  # a papermill parameter of the stages that can use workers
        for s in stages:
            if STAGE[s.notebook].parallel:
                s.parameters["processes"] = processes
    for p in (run.notebooks, run.html, run.stages):
        p.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(
        "TQDM_DISABLE", "1"
    )  # bars would clutter the notebooks; the console shows stages
    # Libraries that import tqdm.auto warn "IProgress not found" in a kernel without ipywidgets:
    # noise in every report, not the reader's business.
    if "IProgress" not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(
            x for x in (os.environ.get("PYTHONWARNINGS"), "ignore:IProgress not found") if x
        )

    core_failed = False
    outputs: dict[str, dict] = {}  # stage key -> its outputs (size, sha256), verified or fresh
    t_all = time.time()
    for i, s in enumerate(stages, 1):
        label = f"[{i}/{len(stages)}] {s.key}"
        rec = run.record(s.key)
        if core_failed or (
            SWEEP_STAGE in spec_of(s.key).needs
            and any(x.status == "failed" and x.key == sweep_stage(BASELINE) for x in stages)
        ):
            s.status = "blocked"
            log(f"{label}: not run (an earlier stage failed)")
            continue
        # The fingerprint also covers the outputs of the stages this one reads.
        fp = fingerprint(s.fingerprint, {d.key: outputs.get(d.key) for d in _depends_on(s, stages)})
        done, why = record_status(run, s.key, fp)
        if done and why is None:
            s.status, s.seconds = "skipped", float(done.get("seconds", 0.0))
            outputs[s.key] = done["outputs"]
            if done.get("plan") != s.fingerprint:  # a record from before plans existed
                write_json(rec, {**done, "plan": s.fingerprint})
            log(f"{label}: up to date, skipped")
            continue
        if why:
            log(f"{label}: re-running because {why}")
        log(f"{label}: running ...")
        t0 = time.time()
        rec.unlink(missing_ok=True)
        if s.config is not None:  # a failed re-run must not leave the previous result behind
            RunDir(run_dir).sweep(s.config.name).unlink(missing_ok=True)
        try:
            with _ProgressWatcher(run.progress, lambda line: log(f"    {line}")):
                execute_notebook(s, notebook_dir, run.notebook(s.key), progress)
            s.status = "ok"
        except Exception as e:  # noqa: BLE001 - report any failure, keep going where possible
            s.status, s.error = "failed", _error_summary(e)
        s.seconds = time.time() - t0
        _render_stage(run, params, stages, i - 1, reports, log)
        if s.status == "ok":
            outputs[s.key] = hash_outputs(run_dir, s.key)
            write_record(run, s.key, fp, outputs[s.key], s.seconds, plan=s.fingerprint)
            log(f"{label}: done in {s.seconds:.1f} s")
        else:
            log(
                f"{label}: FAILED after {s.seconds:.1f} s: {s.error}\n    see {run.notebook(s.key)}"
            )
            if s.key in CORE_STAGES:
                core_failed = True
    # Pages of skipped stages rendered another way (another --reports, or their neighbours
    # changed: a config added) are rendered again; their notebooks are not re-run.
    for j, s in enumerate(stages):
        if s.status == "skipped" and run.notebook(s.key).is_file():
            page = _page(run, params, stages, j, reports)
            if report_signature(run.report(s.key)) != f"{reports} {page['signature']}":
                _render_stage(run, params, stages, j, reports, log)
    index = write_index(params, run_dir, stages, info=_run_info(t_all))
    failed = [s.key for s in stages if s.status in ("failed", "blocked")]
    log(
        f"{'FAILED: ' + ', '.join(failed) if failed else 'all stages done'} in {time.time() - t_all:.0f} s"
    )
    log(f"index: {index}")
    return (1 if failed else 0), index


def _run_info(t_all: float) -> dict:
    """What the index shows at its top: when, which code, which library versions, how long."""
    return {
        "finished": time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": git_commit(PROJECT_ROOT, short=True),
        "versions": library_versions(),
        "wall_seconds": round(time.time() - t_all, 1),
    }


class _ProgressWatcher:
    """While a stage runs, print its progress (rows done, rate, ETA) every ``every`` seconds.

    The kernel inherits ``ASA_PROGRESS_FILE`` and writes to it (:mod:`asa_lib.progress`).
    """

    def __init__(self, path: Path, emit, every: float | None = None):
        if every is None:  # ASA_PROGRESS_INTERVAL overrides the default of 10 s (tests use 0)
            every = float(os.environ.get("ASA_PROGRESS_INTERVAL", "10"))
        self.path, self.emit, self.every = path, emit, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.path.unlink(missing_ok=True)
        self.old = os.environ.get(PROGRESS_ENV)
        os.environ[PROGRESS_ENV] = str(self.path)
        self.thread.start()
        return self

    def _loop(self) -> None:
        last, last_t = None, time.time()
        while not self.stop.wait(min(1.0, max(self.every, 0.1))):
            if time.time() - last_t < self.every:
                continue
            try:
                state = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if state != last:
                self.emit(describe_progress(state))
                last, last_t = state, time.time()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        if self.old is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = self.old
        self.path.unlink(missing_ok=True)


def _read_record(path: Path) -> dict:
    try:
        rec = read_json(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return rec if isinstance(rec, dict) else {}
