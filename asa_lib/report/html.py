"""A stage's HTML report, rendered from its executed notebook (nbconvert, offline).

Two modes (``asa run --reports``):

- ``reader`` (the default): for the person the report is shared with. Code cells
  are folded into ``<details>`` (closed); the notebook's default ``parameters``
  cell is left out; papermill's injected parameters are shown (open) with paths
  relative to the project root (or, for a run outside the project, to the run
  folder); and no absolute path of the machine that made the run is left in the
  page: the run folder, the project root, the Python environment and the home
  folder are replaced by relative forms in every cell's source and output. The
  executed ``.ipynb`` beside it keeps everything.
- ``full``: every cell as executed, as nbconvert renders it.

Both give each page a ``<title>`` ("ASA <run> · 07 analysis"), links to the
index and to the previous and next stage, and a table of contents from the
page's headings. Figures are embedded PNGs and no script or stylesheet comes
from the network, so a page opens offline.
"""

from __future__ import annotations

import copy
import html
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from asa_lib.files import write_text
from asa_lib.layout import project_root

MODES = ("reader", "full")

_MARKER = "<!--asa-header-->"

# The lab template loads require.js, MathJax and Mermaid from a CDN; the reports need none
# of them (figures are embedded PNGs, tables are HTML), so they open with no network access.
_OFFLINE = (
    """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}<style type="text/css">"""
    + "{{ resources.asa_css }}"
    + """</style>
{%- endblock extra_css -%}
{%- block body_header -%}{{ super() }}"""
    + _MARKER
    + """{%- endblock body_header -%}
"""
)

# reader mode: every code cell's input folded away; the run's parameters shown open
_READER = (
    _OFFLINE
    + """
{%- block input_group -%}
{%- if 'injected-parameters' in cell.metadata.get('tags', []) -%}
<details class="asa-code asa-params" open><summary>parameters of this run</summary>
{%- else -%}
<details class="asa-code"><summary>code</summary>
{%- endif -%}
{{ super() }}
</details>
{%- endblock input_group -%}
"""
)

_CSS = """
details.asa-code{margin:.2em 0 .2em var(--jp-cell-prompt-width,64px)}
details.asa-code>summary{cursor:pointer;color:#888;font:12px system-ui,sans-serif;
 list-style-position:inside;margin:.1em 0}
details.asa-code:not([open])+*{margin-top:0}
nav.asa-nav{font-family:system-ui,sans-serif;font-size:90%;margin:.5em 0 1em;
 padding:.5em .8em;background:#f6f8fa;border:1px solid #ddd;border-radius:4px}
nav.asa-nav a{margin-right:1.2em}
nav.asa-nav .asa-where{color:#555;margin-right:1.2em}
nav.asa-toc{font-family:system-ui,sans-serif;font-size:90%;margin:0 0 1em;padding:0 .8em}
nav.asa-toc ol{margin:.2em 0;padding-left:1.4em}
nav.asa-toc li.h3{margin-left:1.2em;list-style:circle}
.jp-RenderedHTMLCommon table.asa-table{font-size:12px}
p.asa-verdict,div.asa-verdict{font-size:110%;font-weight:600;background:#fff7d6;
 padding:.4em .7em;border-left:4px solid #e0b000}
"""


def stage_label(key: str) -> str:
    """``07_analysis`` -> ``07 analysis``; ``06_sweep__mild`` -> ``06 sweep · mild``."""
    stem, _, config = key.partition("__")
    label = stem.replace("_", " ", 1).replace("_", " ")
    return f"{label} · {config}" if config else label


def page_title(run_name: str, key: str) -> str:
    return f"ASA {run_name} · {stage_label(key)}"


def path_replacements(run_root: Path | None, root: Path | None = None) -> list[tuple[str, str]]:
    """(absolute path, what a reader sees instead), longest first.

    The run folder becomes its path relative to the project root (a run outside the
    project: ``<run>``), the project root ``.``, the Python environment ``<python env>``
    (where it is outside the project) and the home folder ``~``.
    """
    root = root if root is not None else project_root(run_root)
    pairs: dict[str, str] = {}

    def add(p: Path | str | None, to: str) -> None:
        if not p:
            return
        for form in {str(p), str(Path(p).resolve())}:
            if len(form) > 1 and form not in pairs:  # never "/" itself
                pairs[form] = to

    if run_root is not None:
        run_root = Path(run_root)
        base = _relative_base(run_root, root)
        add(run_root, "." if base == run_root.resolve() else _rel(run_root, base))
    add(root, ".")
    if sys.prefix not in ("/", "/usr", "/usr/local"):
        add(sys.prefix, "<python env>")
    add(Path.home(), "~")
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def _relative_base(run_root: Path, root: Path | None) -> Path:
    """What the injected paths are shown relative to: the project root, if the run is in it."""
    r = run_root.resolve()
    if root is not None and (root.resolve() == r or root.resolve() in r.parents):
        return root.resolve()
    return r


def _rel(p: Path | str, base: Path) -> str:
    try:
        return Path(os.path.relpath(Path(p).resolve(), base)).as_posix()
    except ValueError:  # another drive
        return Path(p).name


def _scrub(obj, fix: Callable[[str], str]):
    """Every string in a notebook's JSON through ``fix``; embedded images are left alone."""
    if isinstance(obj, str):
        return fix(obj)
    if isinstance(obj, list):
        return [_scrub(x, fix) for x in obj]
    if isinstance(obj, dict):
        return {
            k: v if k.startswith("image/") else _scrub(v, fix)
            for k, v in obj.items()
            if not (isinstance(k, str) and k.startswith("application/vnd.jupyter.widget"))
        }
    return obj


def _shown_path(p: str, run_root: Path | None, root: Path | None) -> tuple[str, str]:
    """(path as a reader sees it, what it is relative to): relative to the project root where
    it is in the project, else to the run folder."""
    r = Path(p).resolve()
    if root is not None and (r == root.resolve() or root.resolve() in r.parents):
        return _rel(r, root.resolve()), "the project root"
    if run_root is not None:
        return _rel(r, Path(run_root).resolve()), "this run's folder"
    return Path(p).name, "its folder"


def _injected_source(params: dict, run_root: Path | None, root: Path | None) -> str:
    """The parameters papermill injected, each path relative to the project root (or, outside
    the project, to the run folder), said in a comment."""
    lines = ["# the parameters of this run"]
    for k, v in params.items():
        if isinstance(v, str) and os.path.isabs(v):
            shown, base = _shown_path(v, run_root, root)
            lines.append(f"{k} = {shown!r}  # relative to {base}")
        else:
            lines.append(f"{k} = {v!r}")
    return "\n".join(lines)


def reader_notebook(nb, run_root: Path | None):
    """A copy of an executed notebook as a reader sees it (module docstring)."""
    import nbformat

    root = project_root(run_root) if run_root is not None else project_root()
    pairs = path_replacements(run_root, root)
    injected = nb.metadata.get("papermill", {}).get("parameters", {})

    for v in injected.values():  # where the run's files came from, e.g. outside the project
        if isinstance(v, str) and os.path.isabs(v):
            extra = [(v, _shown_path(v, run_root, root)[0])]
            extra.append((str(Path(v).parent), _shown_path(str(Path(v).parent), run_root, root)[0]))
            pairs = sorted(dict(extra + pairs).items(), key=lambda kv: -len(kv[0]))  # longest first
            pairs = [(a, b) for a, b in pairs if len(a) > 1]

    def fix(s: str) -> str:
        for a, b in pairs:
            if a in s:
                s = s.replace(a, b)
        return s

    data = json.loads(nbformat.writes(nb))
    data["metadata"].pop("papermill", None)  # input/output paths, parameters, environment
    cells = []
    for c in data["cells"]:
        tags = c.get("metadata", {}).get("tags", [])
        if "parameters" in tags:
            continue  # the notebook's defaults; the injected cell says what this run used
        c.get("metadata", {}).pop("papermill", None)
        c.get("metadata", {}).pop("execution", None)
        cells.append(c)
    data["cells"] = cells
    data = _scrub(data, fix)
    for c in data["cells"]:  # after the scrub: these are relative already
        if "injected-parameters" in c.get("metadata", {}).get("tags", []) and injected:
            c["source"] = _injected_source(injected, run_root, root)
    return nbformat.reads(json.dumps(data), as_version=4)


_HEADING = re.compile(r"<h([1-3])\s+id=\"([^\"]+)\"[^>]*>(.*?)</h\1>", re.S)


def _toc(body: str) -> str:
    """A table of contents from the page's h2/h3 headings (the h1 is the page's title)."""
    items = []
    for level, hid, inner in _HEADING.findall(body):
        if level == "1":
            continue
        text = re.sub(r"<[^>]+>", "", inner).replace("¶", "").strip()
        items.append(
            f"<li class='h{level}'><a href='#{html.escape(hid, quote=True)}'>{text}</a></li>"
        )
    if not items:
        return ""
    return "<nav class='asa-toc'><b>Contents</b><ol>" + "".join(items) + "</ol></nav>"


def nav_html(
    title: str,
    index: str | None = None,
    prev: tuple[str, str] | None = None,
    next_: tuple[str, str] | None = None,
    notebook: str | None = None,
) -> str:
    """The bar at the top of a page: where it is, the index, previous and next, the notebook."""
    e = lambda x: html.escape(str(x), quote=True)  # noqa: E731
    parts = [f"<span class='asa-where'>{e(title)}</span>"]
    if index:
        parts.append(f"<a href='{e(index)}'>↑ index</a>")
    if prev:
        parts.append(f"<a href='{e(prev[0])}'>← {e(prev[1])}</a>")
    if next_:
        parts.append(f"<a href='{e(next_[0])}'>{e(next_[1])} →</a>")
    if notebook:
        parts.append(f"<a href='{e(notebook)}'>executed notebook (.ipynb, all code)</a>")
    return "<nav class='asa-nav'>" + "".join(parts) + "</nav>"


def render_html(
    ipynb: Path,
    out: Path,
    mode: str = "reader",
    title: str | None = None,
    nav: str = "",
    run_root: Path | None = None,
    signature: str = "",
) -> Path:
    """Self-contained HTML of an executed notebook (module docstring); returns ``out``.

    ``run_root``: the run folder (default: the folder above ``out``'s, ``<run>/html/``);
    ``signature``: recorded in the page (:func:`report_signature`) with the mode, so that
    a runner can tell a page rendered another way (mode, navigation) from an up-to-date one.
    """
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    if mode not in MODES:
        raise ValueError(f"reports: {mode!r} is not one of {', '.join(MODES)}")
    run_root = Path(run_root) if run_root is not None else Path(out).resolve().parent.parent
    nb = nbformat.read(str(ipynb), as_version=4)
    if mode == "reader":
        nb = reader_notebook(nb, run_root)
    else:
        nb = copy.deepcopy(nb)
    if title:
        nb.metadata["title"] = title
    template = _READER if mode == "reader" else _OFFLINE
    exporter = HTMLExporter(
        # a reader needs no In [n] / Out[n] prompts
        exclude_input_prompt=mode == "reader",
        exclude_output_prompt=mode == "reader",
        template_name="lab",
        template_file="asa_page.html.j2",
        extra_loaders=[jinja2.DictLoader({"asa_page.html.j2": template})],
    )
    body, _ = exporter.from_notebook_node(nb, resources={"asa_css": _CSS})
    head = f"<meta name='asa-report' content='{html.escape(f'{mode} {signature}'.strip())}'>"
    body = body.replace("<head>", "<head>\n" + head, 1)
    # the navigation first; the contents after the page's introduction (before its first code cell)
    toc = _toc(body)
    first_code = re.search(r"<div[^>]*class=\"jp-Cell jp-CodeCell", body)
    if toc and first_code:
        body = body[: first_code.start()] + toc + body[first_code.start() :]
        toc = ""
    body = body.replace(_MARKER, nav + toc, 1)
    return write_text(out, body)


def report_signature(path: Path) -> str | None:
    """The mode (and signature) a page was rendered with; None: missing, or not one of ours."""
    try:
        with open(path, encoding="utf-8") as f:
            m = re.search(r"<meta name='asa-report' content='([^']*)'>", f.read(4096))
    except (OSError, UnicodeDecodeError):
        return None
    return m.group(1) if m else None
