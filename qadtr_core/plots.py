"""Seaborn figures shared by the notebooks (one function per figure kind, every axis labelled)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.container import BarContainer

from .utils import bit_label  # noqa: F401  (re-exported: the notebooks label their axes with it)


def _bit_axis(df: pd.DataFrame) -> list[str]:
    """Add a "bit-width" label column to ``df`` (in place) and return the labels, widest first."""
    df["bit-width"] = df["bits"].map(bit_label)
    return [bit_label(b) for b in sorted(df["bits"].unique(), reverse=True)]


def accuracy_by_bits(table: pd.DataFrame, title: str) -> plt.Figure:
    """Clean accuracy (%) per bit-width, one bar colour per method (QAT, PTQ, ...).

    ``table`` needs the columns ``bits``, ``method``, ``accuracy`` (a share) and ``n``; with ``ci_low``
    and ``ci_high`` (shares) every bar gets its interval as an error bar.
    """
    df = table.copy()
    df["accuracy (%)"] = 100 * df["accuracy"]
    order = _bit_axis(df)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        sns.barplot(df, x="bit-width", y="accuracy (%)", hue="method", order=order, ax=ax, palette="deep", errorbar=None)
        bar_sets = [c for c in ax.containers if isinstance(c, BarContainer)]
        if {"ci_low", "ci_high"} <= set(df.columns):  # Wilson 95 % intervals as error bars
            methods = list(dict.fromkeys(df["method"]))
            for method, container in zip(methods, bar_sets):
                sub = df[df["method"] == method].set_index("bit-width")
                for label, bar in zip(order, container):
                    if label in sub.index and bar.get_height() > 0:
                        r = sub.loc[label]
                        x = bar.get_x() + bar.get_width() / 2
                        lo, hi = r["accuracy"] - r["ci_low"], r["ci_high"] - r["accuracy"]
                        if min(lo, hi) < -1e-6:
                            raise ValueError(f"interval [{r['ci_low']}, {r['ci_high']}] of {method} {label} "
                                             f"does not hold its accuracy {r['accuracy']}: give accuracy and interval "
                                             "in the same units (shares)")
                        ax.errorbar(x, 100 * r["accuracy"], yerr=[[100 * max(lo, 0)], [100 * max(hi, 0)]], color="black",
                                    lw=0.8, capsize=2)  # max: rounding when the rate sits on its bound (0 or 1)
        if df["method"].nunique() <= 4:  # more bars than that and the labels overlap
            for container in bar_sets:
                ax.bar_label(container, fmt="%.1f", fontsize=8, padding=2)
        ax.set_ylim(0, 105)
        ax.set_title(title, fontsize=10)
        ax.legend(title=None, loc="lower left", frameon=True)
        ax.set_xlabel("bit-width (FP = 32-bit full precision)")
    fig.tight_layout()
    plt.close(fig)  # the notebook shows it once, explicitly
    return fig


def interval_labels(table: pd.DataFrame, value: str = "asr") -> pd.DataFrame:
    """Cell labels "73\n[69-77]" (percent) for a tidy transfer table with ``ci_low``/``ci_high``, as a
    source x target matrix (for :func:`heatmap_grid`'s ``annotations``)."""
    t = table.assign(label=[f"{100 * v:.0f}\n[{100 * lo:.0f}-{100 * hi:.0f}]"
                            for v, lo, hi in zip(table[value], table.ci_low, table.ci_high)])
    order_s, order_t = list(dict.fromkeys(t["source"])), list(dict.fromkeys(t["target"]))
    return t.pivot(index="source", columns="target", values="label").loc[order_s, order_t]


def asr_heatmap(matrix: pd.DataFrame, title: str, ax: plt.Axes | None = None, vmax: float = 100.0,
                label: str = "ASR (%)", annotations: pd.DataFrame | None = None) -> plt.Figure:
    """A source x target heat map of percentages (``matrix`` holds shares in [0, 1]); ``annotations``
    (same shape, strings) replaces the printed values, e.g. with their intervals."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.2, 4.0))
    annot = True if annotations is None else annotations.to_numpy()
    sns.heatmap(100 * matrix.astype(float), annot=annot, fmt=".0f" if annotations is None else "", vmin=0, vmax=vmax,
                cmap="rocket_r", ax=ax, cbar_kws={"label": label}, square=True,
                annot_kws=None if annotations is None else {"fontsize": 7})
    ax.set_xlabel("target (evaluated at)")
    ax.set_ylabel("source (crafted at)")
    ax.set_title(title, fontsize=9)
    fig = ax.figure
    if own:
        fig.tight_layout()
        plt.close(fig)
    return fig


def heatmap_grid(matrices: dict[str, pd.DataFrame], suptitle: str, ncols: int = 2,
                 annotations: dict[str, pd.DataFrame] | None = None) -> plt.Figure:
    """Heat maps in a grid of ``ncols`` columns; a panel whose title contains "relative" is labelled
    as a percentage of the source's white-box ASR; ``annotations`` (by panel title) prints intervals."""
    nrows = -(-len(matrices) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 4.2 * nrows), squeeze=False)
    for ax, (title, m) in zip(axes.flat, matrices.items()):
        label = "% of the source's white-box ASR" if "relative" in title else "ASR (%)"
        asr_heatmap(m, title, ax=ax, label=label, annotations=(annotations or {}).get(title))
    for ax in list(axes.flat)[len(matrices):]:
        ax.set_visible(False)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def curve(table: pd.DataFrame, x: str, y: str, hue: str | None, title: str, xlabel: str, ylabel: str,
          logx: bool = False) -> plt.Figure:
    """A line plot with markers (``y`` given as shares is shown in %); with ``ci_low``/``ci_high``
    columns each line gets its 95 % band."""
    df = table.copy()
    df[ylabel] = 100 * df[y]
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6.0, 3.6))
        sns.lineplot(df, x=x, y=ylabel, hue=hue, marker="o", ax=ax, errorbar=None)
        if {"ci_low", "ci_high"} <= set(df.columns):
            groups = df.groupby(hue, sort=False) if hue else [(None, df)]
            handles, labels = ax.get_legend_handles_labels()
            colours = {lab: h.get_color() for h, lab in zip(handles, labels)}
            for name, g in groups:
                g = g.sort_values(x)
                ax.fill_between(g[x], 100 * g.ci_low, 100 * g.ci_high, alpha=0.2, linewidth=0,
                                color=colours.get(str(name), "grey"))
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 100)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig


def image_grid(images: dict[str, torch.Tensor], captions: dict[str, str] | None = None, title: str = "",
               scale: float = 1.6) -> plt.Figure:
    """Show ``(C,H,W)`` images in [0, 1] in one row, with optional captions under each."""
    fig, axes = plt.subplots(1, len(images), figsize=(scale * len(images), scale + 0.6), squeeze=False)
    for ax, (name, img) in zip(axes[0], images.items()):
        ax.imshow(img.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if captions and name in captions:
            ax.set_xlabel(captions[name], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig


def map_grid(maps: dict[str, dict[str, torch.Tensor]], title: str, image: torch.Tensor | None = None) -> plt.Figure:
    """A grid of heat maps: rows (e.g. bit-widths) x columns (e.g. methods), each ``(H, W)`` normalised
    to its own maximum; ``image`` is shown first in every row."""
    rows = list(maps)
    cols = list(next(iter(maps.values())))
    extra = image is not None
    fig, axes = plt.subplots(len(rows), len(cols) + extra, figsize=(1.7 * (len(cols) + extra), 1.7 * len(rows) + 0.5),
                             squeeze=False)
    for i, r in enumerate(rows):
        if extra:
            axes[i, 0].imshow(image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            axes[i, 0].set_ylabel(r, fontsize=8)
        for j, c in enumerate(cols):
            m = maps[r][c]
            ax = axes[i, j + extra]
            ax.imshow((m / m.max().clamp_min(1e-12)).detach().cpu().numpy(), cmap="magma", vmin=0, vmax=1,
                      interpolation="nearest")
            if i == 0:
                ax.set_title(c, fontsize=8)
            if j + extra == 0:
                ax.set_ylabel(r, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig


def location_heatmap(tables: dict[str, pd.DataFrame], title: str) -> plt.Figure:
    """ASR (%) by patch position (top-left row, col), one panel per model."""
    fig, axes = plt.subplots(1, len(tables), figsize=(3.6 * len(tables), 3.4), squeeze=False)
    for ax, (name, t) in zip(axes[0], tables.items()):
        grid = t.pivot(index="row", columns="col", values="asr") * 100
        sns.heatmap(grid, vmin=0, vmax=100, cmap="rocket_r", ax=ax, cbar_kws={"label": "targeted ASR (%)"}, square=True)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("patch column (px)")
        ax.set_ylabel("patch row (px)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig


def defense_bars(summary: pd.DataFrame, title: str, label: str = "ASR (%)") -> plt.Figure:
    """``label`` (default ASR, %) per bit-width and defense, one panel per row kind of a robustness summary
    (seen, unseen, ...).

    ``summary`` is indexed by (defense, kind) with one column per bit-width (and an optional "mean").
    """
    long = summary.drop(columns="mean", errors="ignore").stack().rename(label).reset_index()
    long.columns = ["defense", "kind", "bits", label]
    kinds = list(dict.fromkeys(long["kind"]))
    order = _bit_axis(long)
    # one colour per defense in every panel (a panel without some defense, e.g. "seen" for a model without
    # patch training, must not shift the colours of the others), and one legend for all panels, outside them
    defenses = list(dict.fromkeys(long["defense"]))
    colours = dict(zip(defenses, sns.color_palette("deep", len(defenses))))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(kinds), figsize=(4.4 * len(kinds), 3.6), sharey=True, squeeze=False)
        for ax, kind in zip(axes[0], kinds):
            sns.barplot(long[long["kind"] == kind], x="bit-width", y=label, hue="defense", order=order, ax=ax,
                        hue_order=defenses, palette=colours)
            ax.set_title(kind, fontsize=10)
            ax.set_ylim(0, 100)
            ax.set_xlabel("bit-width (FP = 32 bits)")
            if ax.get_legend() is not None:
                ax.get_legend().remove()
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[d]) for d in defenses]
        axes[0][-1].legend(handles, defenses, title=None, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def table_heatmap(table: pd.DataFrame, title: str, label: str = "ASR (%)", vmax: float = 100.0) -> plt.Figure:
    """An annotated heat map of a numeric table already in percent (rows and columns as given)."""
    fig, ax = plt.subplots(figsize=(1.1 * len(table.columns) + 3.5, 0.42 * len(table) + 1.4))
    sns.heatmap(table.astype(float), annot=True, fmt=".1f", vmin=0, vmax=vmax, cmap="rocket_r", ax=ax,
                cbar_kws={"label": label})
    ax.set_ylabel("")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig


def answer_figure(threats: pd.DataFrame, profile: str) -> plt.Figure:
    """Worst-case patch ASR (%) against bit-width, one line per defense (from a defense threat table), with
    each point's Wilson 95 % interval (``ci_low``/``ci_high``, percent) as an error bar when the table has them."""
    worst = threats[threats["threat"].str.startswith("worst")].copy()
    order = _bit_axis(worst)
    n = int(worst["n"].max())
    defenses = list(dict.fromkeys(worst["defense"]))
    dodge = 0.3
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        sns.pointplot(worst, x="bit-width", y="asr", hue="defense", order=order, ax=ax, palette="deep", markers="o",
                      dodge=dodge, errorbar=None)
        if {"ci_low", "ci_high"} <= set(worst.columns):
            colours = dict(zip(defenses, sns.color_palette("deep", len(defenses))))
            offsets = np.linspace(-dodge / 2, dodge / 2, len(defenses)) if len(defenses) > 1 else [0.0]
            for d, off in zip(defenses, offsets):  # the same offsets as seaborn's dodge, so bars sit on the points
                sub = worst[worst["defense"] == d].set_index("bit-width").reindex(order)
                xs = np.arange(len(order)) + off
                ax.errorbar(xs, sub["asr"], yerr=[sub["asr"] - sub["ci_low"], sub["ci_high"] - sub["asr"]], fmt="none",
                            ecolor=colours[d], elinewidth=1, capsize=2)
        ax.set_ylim(0, 100)
        ax.set_ylabel("worst-case patch ASR (%)")
        ax.set_xlabel("bit-width (FP = 32 bits)")
        ax.set_title(f"Per-image patches, worst case over all threats tried, by bit-width and defense, with 95 % "
                     f"intervals; n up to {n} ({profile} profile)", fontsize=8)
        ax.legend(title=None, fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def certified_brackets(table: pd.DataFrame, title: str) -> plt.Figure:
    """The bracket certified <= true robust <= attacked robust accuracy (%) per bit-width, one panel per patch
    size, one colour per model: a bar from the certified accuracy (lower bound, ``v``) to the robust
    accuracy under attack (upper bound, ``^``), each with its Wilson 95 % interval beside the bar (the
    certified one left, the attacked one right), and the double-masking clean accuracy (the ceiling, ``_``).
    ``table`` is :attr:`qadtr_core.certified_study.CertifiedTable.table`."""
    from matplotlib.lines import Line2D

    sizes = sorted(table["patch"].unique())
    models = list(dict.fromkeys(table["model"]))
    widths = sorted(table["bits"].unique(), reverse=True)
    colours = dict(zip(models, sns.color_palette("deep", len(models))))
    offsets = np.linspace(-0.18, 0.18, len(models)) if len(models) > 1 else [0.0]

    def err(r: pd.Series, rate: str) -> list[list[float]]:
        return [[100 * max(r[rate] - r[f"{rate}_ci_low"], 0)], [100 * max(r[f"{rate}_ci_high"] - r[rate], 0)]]

    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(sizes), figsize=(0.9 + 1.3 * len(widths) * len(sizes) + 1.6, 3.8), sharey=True,
                                 squeeze=False)
        for ax, p in zip(axes[0], sizes):
            for m, off in zip(models, offsets):
                sub = table[(table["patch"] == p) & (table["model"] == m)].set_index("bits")
                c = colours[m]
                for i, b in enumerate(widths):
                    if b not in sub.index:
                        continue
                    r, x = sub.loc[b], i + off
                    ax.vlines(x, 100 * r["certified"], 100 * r["attacked_robust"], color=c, lw=7, alpha=0.35)
                    # each bound's interval just beside the bar (certified left, attacked right), so both read
                    ax.errorbar(x - 0.06, 100 * r["certified"], yerr=err(r, "certified"), fmt="none", ecolor=c,
                                capsize=2, lw=0.8)
                    ax.errorbar(x + 0.06, 100 * r["attacked_robust"], yerr=err(r, "attacked_robust"), fmt="none", ecolor=c,
                                capsize=2, lw=0.8)
                    ax.plot(x, 100 * r["certified"], marker="v", color=c, ms=6, ls="none")
                    ax.plot(x, 100 * r["attacked_robust"], marker="^", color=c, ms=6, ls="none")
                    ax.plot(x, 100 * r["masked_clean"], marker="_", color=c, ms=14, mew=2)
            ax.set_xticks(range(len(widths)), [bit_label(b) for b in widths])
            ax.set_xlim(-0.6, len(widths) - 0.4)
            ax.set_ylim(0, 100)
            ax.set_title(f"{p}x{p} px patch", fontsize=9)
            ax.set_xlabel("bit-width (FP = 32 bits)")
        axes[0][0].set_ylabel("accuracy (%)")
        handles = [Line2D([], [], color=colours[m], lw=7, alpha=0.5, label=m) for m in models] + [
            Line2D([], [], color="black", marker="^", ls="none", label="attacked robust (upper bound)"),
            Line2D([], [], color="black", marker="v", ls="none", label="certified robust (lower bound)"),
            Line2D([], [], color="black", marker="_", ms=12, mew=2, ls="none", label="double masking, clean")]
        axes[0][-1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig


def threat_intervals(table: pd.DataFrame, title: str) -> plt.Figure:
    """Robust accuracy (%) per threat with its Wilson 95 % interval, one panel per bit-width, one colour per
    defense (the same in every panel), from an :func:`~qadtr_core.evaluation.robustness.asr_table`; the worst
    case last. A collapsed cell is drawn hollow."""
    t = table.copy()
    order = _bit_axis(t)
    threats = list(dict.fromkeys(t.threat))
    threats = [th for th in threats if not th.startswith("worst")] + [th for th in threats if th.startswith("worst")]
    defenses = list(dict.fromkeys(t.defense))
    colours = dict(zip(defenses, sns.color_palette("deep", len(defenses))))
    ypos = {th: i for i, th in enumerate(threats)}
    step = 0.8 / max(1, len(defenses))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(order), figsize=(2.6 * len(order) + 3.0, 0.34 * len(threats) + 1.6),
                                 sharey=True, sharex=True, squeeze=False)
        for ax, width in zip(axes[0], order):
            for j, d in enumerate(defenses):
                g = t[(t["bit-width"] == width) & (t.defense == d)]
                if g.empty:
                    continue
                y = np.array([ypos[th] for th in g.threat]) - 0.4 + step * (j + 0.5)
                err = np.vstack([g.robust - g.robust_ci_low, g.robust_ci_high - g.robust]).clip(min=0)
                hollow = g["collapsed"].to_numpy(bool) if "collapsed" in g else np.zeros(len(g), bool)
                for filled, keep in ((True, ~hollow), (False, hollow)):
                    if keep.any():
                        ax.errorbar(g.robust[keep], y[keep], xerr=err[:, keep], fmt="o", ms=3.5, lw=1, color=colours[d],
                                    mfc=colours[d] if filled else "white")
            ax.set_title(width, fontsize=10)
            ax.set_xlim(0, 100)
            ax.set_xlabel("robust accuracy (%)")
        axes[0][0].set_yticks(range(len(threats)), threats, fontsize=8)
        axes[0][0].invert_yaxis()
        handles = [plt.Line2D([], [], marker="o", ls="", color=colours[d]) for d in defenses]
        axes[0][-1].legend(handles, defenses, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def forest(intervals: dict[str, dict[str, float]], title: str, xlabel: str, reference: float = 0.0) -> plt.Figure:
    """A forest plot: one row per entry of ``intervals`` (``{label: {"value", "ci_low", "ci_high"}}``), its
    point and interval, with a vertical line at ``reference``; rows whose value is NaN are labelled "not
    measured"."""
    labels = list(intervals)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(labels) + 1.3))
        for i, k in enumerate(labels):
            iv = intervals[k]
            if any(np.isnan(float(iv[f])) for f in ("value", "ci_low", "ci_high")):
                ax.text(reference, i, "not measured", va="center", ha="center", fontsize=8, color="grey")
                continue
            # a percentile bootstrap interval may exclude its point value: clip the bar at the point
            lo, hi = max(iv["value"] - iv["ci_low"], 0.0), max(iv["ci_high"] - iv["value"], 0.0)
            ax.errorbar([iv["value"]], [i], xerr=[[lo], [hi]], fmt="o", color="C0", capsize=3)
        ax.axvline(reference, color="grey", lw=1, ls="--")
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig
