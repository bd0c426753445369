"""Figures whose colours mean the same thing in every panel."""
import math

import matplotlib.colors as mcolors
import pandas as pd

from qadtr_core.plots import defense_bars


def test_a_defense_keeps_its_colour_in_a_panel_where_another_is_missing():
    # the undefended model has no "seen" threats (NaN), so the "seen" panel shows PBAT only
    summary = pd.DataFrame({32: [math.nan, 50.0, 60.0, 40.0], 2: [math.nan, 30.0, 55.0, 35.0]},
                           index=pd.MultiIndex.from_tuples([("QAT (undefended)", "seen"), ("QAT (undefended)", "unseen"),
                                                            ("PBAT", "seen"), ("PBAT", "unseen")]))
    fig = defense_bars(summary, "t")
    panels = {ax.get_title(): ax for ax in fig.axes}
    bars = {k: [(p.get_height(), mcolors.to_hex(p.get_facecolor())) for p in ax.patches if p.get_height() > 0]
            for k, ax in panels.items()}
    # in "unseen" the undefended bars come first (50, 30), then PBAT's (40, 35)
    qat, pbat = bars["unseen"][0][1], bars["unseen"][2][1]
    assert qat != pbat and [c for _, c in bars["unseen"]] == [qat, qat, pbat, pbat]
    assert [c for _, c in bars["seen"]] == [pbat, pbat]  # PBAT's colour, not the first colour of the palette
    legend = fig.axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["QAT (undefended)", "PBAT"]
    assert sum(ax.get_legend() is not None for ax in fig.axes) == 1
