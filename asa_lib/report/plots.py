"""The figures the notebooks show. Each function returns the matplotlib Figure.

Text from the data or the params (domain, config and reference names) goes through
:func:`plot_text` / :func:`plot_texts`: ``$`` is escaped, so matplotlib never parses it as
mathtext (a ``$`` in a domain name would otherwise stop the stage), unprintable
characters are shown escaped, and a long name is cut with an ellipsis. A figure is
at most :data:`MAX_FIGURE_INCHES` wide and high, however many domains or configs
it shows; beyond :data:`MAX_ANNOTATED` rows a heat map's cells lose their numbers.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

# (width, height) in inches: no figure is larger, whatever the number of domains or configs.
MAX_FIGURE_INCHES = (30.0, 30.0)
# A name from the data or the params is cut to this many characters in a figure.
MAX_LABEL_CHARS = 40
# A title (which may hold such names) is cut to this many.
MAX_TITLE_CHARS = 120
# Heat maps with more rows than this show colours only, without a number in each cell.
MAX_ANNOTATED = 24


def plot_text(text, limit: int = MAX_LABEL_CHARS) -> str:
    """``text`` as matplotlib text: unprintable characters escaped (a newline is ``\\n``), cut to
    ``limit`` characters with an ellipsis, and ``$`` escaped, so it is never mathtext."""
    s = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("$", r"\$")


def plot_texts(texts, limit: int = MAX_LABEL_CHARS) -> list[str]:
    """:func:`plot_text` of each text; names that cutting made equal get a suffix (`` #2``, ...), so
    that distinct names stay distinct bars and rows."""
    out: list[str] = []
    seen: set[str] = set()
    for t in texts:
        base = x = plot_text(t, limit)
        k = 1
        while x in seen:
            k += 1
            x = f"{base} #{k}"
        seen.add(x)
        out.append(x)
    return out


def _joined(texts: list[str], limit: int = MAX_TITLE_CHARS) -> str:
    """Texts already made safe by :func:`plot_texts`, joined with commas and cut to ``limit``."""
    s = ", ".join(texts)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _relabel(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """``df`` with ``column``'s names replaced by their :func:`plot_texts` (one per name)."""
    names = list(dict.fromkeys(df[column]))
    return df.assign(**{column: df[column].map(dict(zip(names, plot_texts(names))))})


def _figsize(width: float, height: float) -> tuple[float, float]:
    return min(width, MAX_FIGURE_INCHES[0]), min(height, MAX_FIGURE_INCHES[1])


def _bounded(fig):
    """``fig`` shrunk to :data:`MAX_FIGURE_INCHES` where its layout (a legend, facets) grew it."""
    w, h = fig.get_size_inches()
    if w > MAX_FIGURE_INCHES[0] or h > MAX_FIGURE_INCHES[1]:
        fig.set_size_inches(*_figsize(w, h))
    return fig


def _legend_outside(ax, **kw) -> None:
    """The axes' legend to its right, off the data (nothing if nothing is labelled)."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if handles:
        ax.legend(
            handles,
            labels,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
            frameon=False,
            **kw,
        )


# where a point's label may go, in points from the point (first free one is taken)
_LABEL_OFFSETS = [(7, 5), (7, -13), (-7, 5), (-7, -13), (7, 16), (7, -24), (-7, 16), (-7, -24)]


def _place_labels(ax, xs, ys, labels, fontsize: float = 8) -> None:
    """Label each point, choosing for each the first offset whose text box overlaps no box
    already placed and no point (greedy, in display space; the axes' limits must be set)."""
    fig = ax.figure
    fig.canvas.draw()  # the transforms at the final size
    to_px = fig.dpi / 72.0
    pts = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    placed: list[tuple[float, float, float, float]] = [
        (px - 6 * to_px, py - 6 * to_px, px + 6 * to_px, py + 6 * to_px) for px, py in pts
    ]

    def overlaps(b) -> bool:
        return any(b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3] for o in placed)

    for (px, py), text in zip(pts, labels):
        w, h = 0.6 * fontsize * len(text) * to_px, 1.2 * fontsize * to_px
        choice = _LABEL_OFFSETS[0]
        for dx, dy in _LABEL_OFFSETS:
            x0 = px + dx * to_px - (w if dx < 0 else 0)
            box = (x0, py + dy * to_px, x0 + w, py + dy * to_px + h)
            if not overlaps(box):
                choice = (dx, dy)
                break
        dx, dy = choice
        x0 = px + dx * to_px - (w if dx < 0 else 0)
        placed.append((x0, py + dy * to_px, x0 + w, py + dy * to_px + h))
        ax.annotate(
            text,
            (ax.transData.inverted().transform((px, py))),
            textcoords="offset points",
            xytext=(dx, dy),
            ha="right" if dx < 0 else "left",
            va="bottom",
            fontsize=fontsize,
        )


def split_counts(counts: pd.DataFrame):
    """Bars of samples per split x domain, split by label (domains in the data's order)."""
    counts = _relabel(counts, "domain")
    n_dom = counts["domain"].nunique()
    n_col = counts["split"].nunique()
    height = 3
    g = sns.catplot(
        data=counts,
        x="domain",
        y="n",
        hue="label",
        col="split",
        kind="bar",
        height=height,
        aspect=min(max(1.0, 0.3 * n_dom), MAX_FIGURE_INCHES[0] / (height * max(n_col, 1))),
        palette={"tool": "#2a9d8f", "non_tool": "#e76f51"},
    )
    g.set_axis_labels("", "samples")
    if n_dom > 4 or counts["domain"].astype(str).str.len().max() > 10:
        g.tick_params(axis="x", rotation=45 if n_dom <= 16 else 90)
    g.figure.suptitle("Samples per split, domain and label", y=1.04)
    return _bounded(g.figure)


def layer_auc(table: pd.DataFrame, best_layer: int):
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(table["layer"], table["auc"], marker="o", label="AUC (VALID)")
    ax.plot(table["layer"], table["accuracy"], marker=".", alpha=0.6, label="accuracy (VALID)")
    ax.axvline(best_layer, color="crimson", ls="--", label=f"L* = {best_layer}")
    ax.set_xlabel("decoder block (output)")
    ax.set_ylabel("probe score")
    ax.set_title("Tool-need probe per layer (trained on CAL)")
    _legend_outside(ax, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def diagnostics_layers(layers: list[dict], best_layer: int, verdict: str):
    """The knowing-doing gap per layer: label and behaviour probe AUC (left axis), the cosine of
    the label direction with the model's call direction (right axis), L* marked.

    ``layers``: :func:`asa_lib.method.diagnostics.layer_diagnostics`'s rows (None: not defined).
    """
    x = [r["layer"] for r in layers]

    def col(k):
        return [np.nan if r[k] is None else r[k] for r in layers]

    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.plot(x, col("label_auc"), marker="o", label="label probe AUC (VALID)")
    ax.plot(x, col("behaviour_auc"), marker="s", label="behaviour probe AUC (VALID calls)")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("decoder block (output)")
    ax.set_ylabel("AUC")
    ax2 = ax.twinx()
    ax2.plot(x, col("cos"), marker="^", color="#6a4c93", label="cos(label, call direction)")
    ax2.axhline(0, color="#6a4c93", lw=0.8, ls=":")
    ax2.set_ylim(-1.05, 1.05)
    ax2.set_ylabel("cosine (CAL)")
    ax.axvline(best_layer, color="crimson", ls="--", label=f"L* = {best_layer}")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    ax.set_title(plot_text(verdict, MAX_TITLE_CHARS), fontsize=9)
    fig.tight_layout()
    return fig


def cosine_heatmap(names: list[str], M: np.ndarray):
    fig, ax = plt.subplots(figsize=_figsize(1.1 * len(names) + 2, 0.9 * len(names) + 1.5))
    sns.heatmap(
        M,
        annot=len(names) <= MAX_ANNOTATED,
        fmt=".2f",
        xticklabels=plot_texts(names),
        yticklabels=plot_texts(names),
        vmin=-1,
        vmax=1,
        cmap="vlag",
        ax=ax,
    )
    ax.set_title("Cosine similarity of steering vectors")
    fig.tight_layout()
    return fig


def confusion_heatmap(
    cm: np.ndarray, labels: list[str], title: str, xlabel="predicted", ylabel="true"
):
    names = plot_texts(labels)
    fig, ax = plt.subplots(figsize=_figsize(0.9 * len(names) + 2.2, 0.8 * len(names) + 1.6))
    sns.heatmap(
        cm,
        annot=len(names) <= MAX_ANNOTATED,
        fmt="d",
        xticklabels=names,
        yticklabels=names,
        cmap="Blues",
        ax=ax,
        cbar=False,
    )
    ax.set_xlabel(plot_text(xlabel))
    ax.set_ylabel(plot_text(ylabel))
    ax.set_title(plot_text(title, MAX_TITLE_CHARS))
    fig.tight_layout()
    return fig


def trigger_confusions(splits: dict[str, dict], title: str):
    """One 2x2 matrix per split: rows label (non-tool/tool), columns triggered (no call/call)."""
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.4))
    for ax, (split, v) in zip(np.atleast_1d(axes), splits.items()):
        c = v["metrics"]
        cm = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        sns.heatmap(
            cm,
            annot=True,
            fmt="d",
            cmap="Blues",
            cbar=False,
            ax=ax,
            xticklabels=["no call", "call"],
            yticklabels=["non-tool", "tool"],
        )
        ax.set_title(plot_text(f"{title} · {split.upper()}", MAX_TITLE_CHARS))
    fig.tight_layout()
    return fig


def metric_bars(
    df: pd.DataFrame,
    baseline: dict | None,
    reference: dict | None,
    metrics=("f1", "fpr", "recall"),
    title: str = "",
):
    """Horizontal bars per config with baseline (grey) and reference (orange) lines."""
    df = _relabel(df, "config")
    fig, axes = plt.subplots(
        1, len(metrics), figsize=_figsize(5 * len(metrics), 0.45 * len(df) + 2.6), sharey=True
    )
    for ax, m in zip(np.atleast_1d(axes), metrics):
        err = None
        if f"{m}_lo" in df:
            err = np.vstack([df[m] - df[f"{m}_lo"], df[f"{m}_hi"] - df[m]]).clip(min=0)
        ax.barh(df["config"], df[m], xerr=err, color="#457b9d", capsize=3)
        if baseline is not None:
            ax.axvline(baseline[m], color="grey", ls=":", label=f"baseline {baseline[m]:.3f}")
        if reference is not None and reference.get(m) is not None:
            ax.axvline(
                reference[m],
                color="orange",
                ls="--",
                label=f"{plot_text(reference.get('name', 'reference'))} {reference[m]:.3f}",
            )
        ax.set_xlabel(m.upper() + (" (lower is better)" if m == "fpr" else ""))
        ax.set_xlim(0, 1)
        # below its panel, off the bars
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    fig.suptitle(plot_text(title, MAX_TITLE_CHARS))
    fig.tight_layout()
    return fig


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """Configs not dominated in (lower FPR, higher recall)."""
    keep = []
    for i, r in points.iterrows():
        dominated = (
            (points["fpr"] <= r["fpr"])
            & (points["recall"] >= r["recall"])
            & ((points["fpr"] < r["fpr"]) | (points["recall"] > r["recall"]))
        ).any()
        if not dominated:
            keep.append(i)
    return points.loc[keep].sort_values("fpr")


def fpr_recall(points: pd.DataFrame, reference: dict | None, title: str):
    fig, ax = plt.subplots(figsize=(9, 5.5))
    base = points[points["config"] == "baseline"]
    steered = points[points["config"] != "baseline"]
    ax.scatter(steered["fpr"], steered["recall"], s=60, zorder=3, label="configs")
    ax.scatter(
        base["fpr"],
        base["recall"],
        s=150,
        marker="X",
        color="grey",
        zorder=4,
        label="baseline (no ASA)",
    )
    front = pareto_front(points)
    # the front as drawn: its points ringed, and a line only where it joins two or more
    ax.scatter(
        front["fpr"],
        front["recall"],
        s=260,
        facecolors="none",
        edgecolors="crimson",
        lw=1.5,
        zorder=5,
        label="on the Pareto front"
        + (" (the baseline alone)" if list(front["config"]) == ["baseline"] else ""),
    )
    if len(front) > 1:
        ax.plot(front["fpr"], front["recall"], color="crimson", lw=1.2, zorder=2)
    if reference is not None and reference.get("fpr") is not None:
        ax.scatter(
            [reference["fpr"]],
            [reference["recall"]],
            marker="D",
            color="orange",
            s=90,
            label=plot_text(reference.get("name", "reference")),
        )
    ax.set_xlabel("FPR (lower is better)")
    ax.set_ylabel("recall (higher is better)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    _legend_outside(ax, fontsize=8)
    ax.set_title(plot_text(title, MAX_TITLE_CHARS))
    fig.tight_layout()
    # configs at the same point share one label; labels are placed where they do not overlap
    groups = list(steered.groupby(["fpr", "recall"], sort=False))
    _place_labels(
        ax,
        [k[0] for k, _ in groups],
        [k[1] for k, _ in groups],
        [_joined(plot_texts(g["config"])) for _, g in groups],
    )
    return fig


def per_domain(df: pd.DataFrame, title: str):
    df = _relabel(df, "domain")
    long = df.melt(
        id_vars="domain",
        value_vars=["precision", "recall", "f1", "fpr"],
        var_name="metric",
        value_name="value",
    )
    long["metric"] = long["metric"].map({"f1": "F1", "fpr": "FPR"}).fillna(long["metric"])
    n_dom = df["domain"].nunique()
    fig, ax = plt.subplots(figsize=_figsize(max(8, 0.5 * n_dom + 2), 3.5))
    sns.barplot(data=long, x="domain", y="value", hue="metric", ax=ax)
    _legend_outside(ax, fontsize=8)
    ax.set_ylim(0, 1)
    if n_dom > 8:
        ax.tick_params(axis="x", rotation=90)
    ax.set_title(plot_text(title, MAX_TITLE_CHARS))
    fig.tight_layout()
    return fig


VALIDITY_COLOURS = {"complete valid": "#4c9a2a", "complete invalid": "#d9822b", "cut": "#9e9e9e"}


def validity(df: pd.DataFrame, title: str):
    """Each config's calls split by why (one stacked bar a config, shares of its calls):
    complete and valid, complete and invalid, cut at max_new_tokens."""
    df = _relabel(df, "config")
    cols = {
        "complete valid": "complete_valid_share",
        "complete invalid": "complete_invalid_share",
        "cut": "cut_share",
    }
    fig, ax = plt.subplots(figsize=_figsize(max(6, 0.8 * len(df) + 2), 3.5))
    bottom = np.zeros(len(df))
    for name, col in cols.items():
        vals = df[col].fillna(0.0).to_numpy(dtype=float)
        ax.bar(df["config"], vals, bottom=bottom, label=name, color=VALIDITY_COLOURS[name])
        bottom += vals
    ax.set_ylabel("share of calls")
    _legend_outside(ax, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(plot_text(title, MAX_TITLE_CHARS))
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def grid_heatmaps(grids: dict[str, pd.DataFrame], title: str):
    """One tau x alpha heat map per metric (``{metric: pivot table}``), values annotated."""
    fig, axes = plt.subplots(1, len(grids), figsize=_figsize(4.6 * len(grids), 3.6))
    for ax, (m, g) in zip(np.atleast_1d(axes), grids.items()):
        sns.heatmap(
            g,
            annot=True,
            fmt=".3f",
            vmin=0,
            vmax=1,
            ax=ax,
            cbar=False,
            cmap="rocket_r" if m == "fpr" else "mako_r",
        )
        ax.set_title(m.upper() + (" (lower is better)" if m == "fpr" else ""))
        ax.set_xlabel("alpha")
        ax.set_ylabel("tau")
    fig.suptitle(plot_text(title, MAX_TITLE_CHARS))
    fig.tight_layout()
    return fig


def paired_diffs(df: pd.DataFrame, title: str, metrics=("f1", "fpr")):
    """Each config's difference from the baseline with its paired bootstrap 95% interval."""
    df = _relabel(df, "config")
    fig, axes = plt.subplots(
        1, len(metrics), figsize=_figsize(5 * len(metrics), 0.45 * len(df) + 1.8), sharey=True
    )
    for ax, m in zip(np.atleast_1d(axes), metrics):
        d, lo, hi = df[f"d_{m}"], df[f"d_{m}_lo"], df[f"d_{m}_hi"]
        ax.errorbar(
            d,
            df["config"],
            xerr=np.vstack([d - lo, hi - d]).clip(min=0),
            fmt="o",
            capsize=3,
            color="#457b9d",
        )
        ax.axvline(0, color="grey", ls=":")
        ax.set_xlabel(f"{m.upper()} − baseline" + (" (lower is better)" if m == "fpr" else ""))
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(plot_text(title, MAX_TITLE_CHARS))
    fig.tight_layout()
    return fig


def p_tool_histograms(records: list[dict], tau: float | None, title: str):
    """p(tool) of the probe each prompt was routed to, by label (tool / non-tool), with the gate's tau."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    bins = np.linspace(0, 1, 21)
    for lab, name, color in ((1, "needs a tool", "#1f77b4"), (0, "needs none", "#d62728")):
        p = [r["p_tool"] for r in records if r["label"] == lab]
        ax.hist(p, bins=bins, alpha=0.55, color=color, label=f"{name} (n={len(p)})")
    if tau is not None:
        for x in sorted({tau, 1 - tau}):
            ax.axvline(x, color="#444", ls="--", lw=1)
        ax.text(tau, ax.get_ylim()[1] * 0.95, " tau", va="top", fontsize=8)
    ax.set_xlabel("p(tool)")
    ax.set_ylabel("prompts")
    ax.set_title(title)
    _legend_outside(ax, fontsize=8)
    fig.tight_layout()
    return fig
