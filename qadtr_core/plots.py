"""Seaborn figures shared by the notebooks (one function per figure kind, every axis labelled)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def bit_label(bits: int) -> str:
    """'FP' for 32 bits, else e.g. '4b'."""
    return "FP" if int(bits) == 32 else f"{int(bits)}b"


def accuracy_by_bits(table: pd.DataFrame, title: str) -> plt.Figure:
    """Clean accuracy (%) per bit-width, one bar colour per method (QAT, PTQ, ...).

    ``table`` needs the columns ``bits``, ``method``, ``accuracy`` (a share) and ``n``.
    """
    df = table.copy()
    df["bit-width"] = df["bits"].map(bit_label)
    df["accuracy (%)"] = 100 * df["accuracy"]
    order = [bit_label(b) for b in sorted(df["bits"].unique(), reverse=True)]
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        sns.barplot(df, x="bit-width", y="accuracy (%)", hue="method", order=order, ax=ax, palette="deep")
        for container in ax.containers:
            ax.bar_label(container, fmt="%.1f", fontsize=8, padding=2)
        ax.set_ylim(0, 105)
        ax.set_title(title, fontsize=10)
        ax.legend(title=None, loc="lower left", frameon=True)
        ax.set_xlabel("bit-width (FP = 32-bit full precision)")
    fig.tight_layout()
    plt.close(fig)  # the notebook shows it once, explicitly
    return fig
