"""Tables for a reader: no index column, text left-aligned and escaped, numbers right-aligned
at one precision, whole counts as integers, "—" where a value does not apply.

:func:`table` wraps a DataFrame; in a notebook (and its HTML report) it shows as such a
table, and as plain text elsewhere.
"""

from __future__ import annotations

import html
import math
import numbers
import re
from collections.abc import Mapping, Sequence

import pandas as pd

NA = "—"

# column names of the library's frames, as a reader reads them (a table's own labels win)
LABELS = {
    "n": "prompts",
    "f1": "F1",
    "fpr": "FPR",
    "auc": "AUC",
    "triggers": "tool calls",
    "valid_call_rate": "valid calls (share of calls)",
    "format_valid_rate": "parseable calls (share of calls)",
    "complete_valid_share": "complete valid calls (share of calls)",
    "complete_invalid_share": "complete invalid calls (share of calls)",
    "cut_share": "calls cut at max_new_tokens (share of calls)",
    "p_tool": "p(tool)",
    "d_f1": "ΔF1",
    "d_f1_lo": "ΔF1 CI low",
    "d_f1_hi": "ΔF1 CI high",
    "d_fpr": "ΔFPR",
    "d_fpr_lo": "ΔFPR CI low",
    "d_fpr_hi": "ΔFPR CI high",
    "d_f1 beyond noise": "ΔF1 beyond noise",
    "d_fpr beyond noise": "ΔFPR beyond noise",
    "f1_lo": "F1 CI low",
    "f1_hi": "F1 CI high",
    "recall_lo": "recall CI low",
    "recall_hi": "recall CI high",
    "fpr_lo": "FPR CI low",
    "fpr_hi": "FPR CI high",
    "alpha_eff": "alpha_eff",
    "label_auc": "label probe AUC (VALID)",
    "behaviour_auc": "behaviour probe AUC (VALID calls)",
    "cos": "cos(label direction, call direction)",
    **{
        f"{s}_{m}": f"{s.upper()} {m if m in ('precision', 'recall') else m.upper()}"
        for s in ("valid", "test")
        for m in ("f1", "precision", "recall", "fpr")
    },
}

# steering knobs: shown as given (0.55, not 0.550)
PLAIN = ("tau", "alpha", "beta", "alpha_eff")

_LEFT = "text-align:left"
_RIGHT = "text-align:right"
# a text cell wraps, long words (JSON, ids) too, within a width that lets a flip table's
# prompt, tools and two outputs sit side by side on a 1,280 px page (inline, so that it
# holds in Jupyter as in the HTML reports)
_TEXT = "text-align:left;white-space:normal;overflow-wrap:anywhere;max-width:16em"


def _is_missing(x) -> bool:
    if x is None:
        return True
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):  # a list or another container
        return False


def _count_column(values: pd.Series) -> bool:
    """Whole numbers only (a count that pandas stored as float, e.g. beside a missing value)."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty or pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_integer_dtype(values):
        return True
    whole = bool(((v % 1) == 0).all())
    return whole and float(v.abs().max()) > 1  # 0.0 / 1.0 alone: a rate, not a count


# Turn tokens of chat templates a decoded output holds; shown without them (the records keep
# them). A format's call markers (<|tool_call_start|> ...) are not among them and stay.
_END_TOKENS = re.compile(
    r"(?:<\|(?:im_end|im_start|endoftext|end_of_text|eot_id|end_of_turn|eos)\|>"
    r"|<end_of_turn>|</s>)"
)


def display_text(text: str) -> str:
    """``text`` as a table shows it: chat-template turn tokens (``<|im_end|>``,
    ``<|im_start|>``, ``<|endoftext|>``, ``</s>`` ...) removed."""
    return _END_TOKENS.sub("", text)


def _cell(x, kind: str, decimals: int, max_chars: int) -> tuple[str, str]:
    """(html, alignment) of one value."""
    if _is_missing(x):
        return NA, _RIGHT if kind != "text" else _TEXT
    if isinstance(x, bool) or kind == "bool":
        return ("yes" if x else "no"), _LEFT
    if kind == "plain" and isinstance(x, numbers.Number):
        return f"{float(x):.4g}", _RIGHT
    if kind == "count" and isinstance(x, numbers.Number):
        return f"{int(round(float(x)))}", _RIGHT
    if isinstance(x, numbers.Integral):
        return f"{x}", _RIGHT
    if isinstance(x, numbers.Real):
        if math.isinf(float(x)):
            return ("∞" if x > 0 else "−∞"), _RIGHT
        text = f"{float(x):.{decimals}f}"
        return (text[1:] if text.startswith("-") and not text.strip("-0.") else text), _RIGHT
    text = display_text(str(x))
    if len(text) > max_chars:
        short = text[: max_chars - 1].rstrip() + "…"
        return (
            f"<span title='{html.escape(text, quote=True)}'>{html.escape(short)}</span>",
            _TEXT,
        )
    return html.escape(text), _TEXT


class Table:
    """A DataFrame shown as a tidy table (module docstring)."""

    def __init__(
        self,
        df: pd.DataFrame,
        labels: Mapping[str, str] | None = None,
        decimals: int = 3,
        max_chars: int = 160,
        counts: Sequence[str] = (),
        caption: str = "",
    ):
        self.df = df
        self.labels = dict(labels or {})
        self.decimals, self.max_chars, self.caption = decimals, max_chars, caption
        self.kinds = {}
        for c in df.columns:
            s = df[c]
            if c in counts:
                kind = "count"
            elif c in PLAIN and pd.api.types.is_numeric_dtype(s):
                kind = "plain"
            elif pd.api.types.is_bool_dtype(s):
                kind = "bool"
            elif pd.api.types.is_numeric_dtype(s):
                kind = "count" if _count_column(s) else "number"
            else:
                kind = "text"
            self.kinds[c] = kind

    def _label(self, c) -> str:
        if isinstance(c, tuple):  # a MultiIndex column: its levels joined
            c = " · ".join(str(x) for x in c if str(x))
        return self.labels.get(c, LABELS.get(c, str(c)))

    def _repr_html_(self) -> str:
        head = "".join(
            f"<th style='{_LEFT if self.kinds[c] in ('text', 'bool') else _RIGHT};"
            "white-space:normal'>"
            f"{html.escape(self._label(c))}</th>"
            for c in self.df.columns
        )
        rows = []
        for rec in self.df.itertuples(index=False, name=None):
            cells = []
            for c, x in zip(self.df.columns, rec):
                text, align = _cell(x, self.kinds[c], self.decimals, self.max_chars)
                cells.append(f"<td style='{align}'>{text}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        cap = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return (
            f"<table class='asa-table'>{cap}<thead><tr>{head}</tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table>"
        )

    def __repr__(self) -> str:
        out = self.df.copy()
        for c, k in self.kinds.items():
            out[c] = [
                _cell(x, k, self.decimals, 10**9)[0]
                if k != "text"
                else ("—" if _is_missing(x) else x)
                for x in out[c]
            ]
        return out.rename(columns=lambda c: self._label(c)).to_string(index=False)


def baseline_na(df: pd.DataFrame, column: str = "config") -> pd.DataFrame:
    """The baseline's steering knobs (tau, alpha, beta) as not applicable ("—")."""
    df = df.copy()
    knobs = [c for c in PLAIN if c in df.columns]
    if column in df.columns and knobs:
        df[knobs] = df[knobs].astype(float)
        df.loc[df[column] == "baseline", knobs] = float("nan")
    return df


def table(
    df: pd.DataFrame,
    labels: Mapping[str, str] | None = None,
    decimals: int = 3,
    max_chars: int = 160,
    counts: Sequence[str] = (),
    index: bool = False,
    caption: str = "",
) -> Table:
    """``df`` as a tidy table. ``index=True`` keeps a meaningful index as leading columns
    (e.g. a crosstab's row labels); ``labels`` renames columns for the reader; ``counts``
    names columns to show as integers whatever their values."""
    if index:
        df = df.reset_index()
    return Table(df, labels, decimals, max_chars, counts, caption)
