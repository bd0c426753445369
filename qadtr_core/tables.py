"""Tables as a reader sees them in the defense chapters: percent with one decimal, intervals in brackets,
human column names, bit-widths as "FP", "8b", ..., no index, and every collapsed cell flagged.

Each function takes a library table (:mod:`qadtr_core.evaluation.robustness`, :mod:`qadtr_core.evaluation.defense_metrics`) and
returns a plain DataFrame of strings and numbers; :func:`show` renders one without its index.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import pandas as pd
from pandas.io.formats.style import Styler

from .utils import bit_label

COLLAPSED = " (collapsed)"


def _nan(v: float | None) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def pct(v: float | None, digits: int = 1) -> str:
    """``41.2`` (a value already in percent or points); "-" for a missing one."""
    return "-" if _nan(v) else f"{v:.{digits}f}"


def interval(v: float | None, lo: float | None, hi: float | None, digits: int = 1, signed: bool = False) -> str:
    """``41.2 [35.0, 47.9]``; ``signed`` writes ``+1.5 [-0.3, +3.2]`` (a difference)."""
    if _nan(v):
        return "-"
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"


def show(df: pd.DataFrame, digits: int = 1) -> Styler:
    """``df`` without its index, numbers at ``digits`` decimals, missing values as "-"."""
    return df.style.hide(axis="index").format(precision=digits, na_rep="-")


def _width(b: object) -> str:
    return b if isinstance(b, str) and not b.isdigit() else bit_label(int(b))


def headline(table: pd.DataFrame, metric: str = "robust") -> pd.DataFrame:
    """The chapter's headline (TriQDef's Table 5 layout) from an :func:`~qadtr_core.evaluation.robustness.asr_table`: one
    row per defense and kind (seen / unseen mean of its own threats, worst case), one column per width and
    the mean over widths, ``metric`` ("robust" accuracy or "asr") in percent (the unit in every column's name); a
    collapsed cell reads
    "12.3 (collapsed)" and the mean is over the widths that did not collapse."""
    t = table[table.kind != "adaptive"]
    widths = list(dict.fromkeys(t.bits))
    flagged = {(d, b) for d, b, c in zip(t.defense, t.bits, t.collapsed) if c} if "collapsed" in t else set()
    rows = []
    for d in dict.fromkeys(t.defense):
        for kind in ("seen", "unseen", "worst case"):
            g = t[(t.defense == d) & (t.kind == kind)]
            row = {"defense": d, "threats": kind}
            values = []
            for b in widths:
                v = g[g.bits == b][metric].mean() if (g.bits == b).any() else float("nan")
                row[f"{bit_label(b)} (%)"] = pct(v) + (COLLAPSED if (d, b) in flagged and not _nan(v) else "")
                if (d, b) not in flagged and not _nan(v):
                    values.append(v)
            row["mean over widths (%)"] = pct(sum(values) / len(values)) if values else "-"
            rows.append(row)
    return pd.DataFrame(rows)


def clean_display(clean: pd.DataFrame, collapsed: Collection[tuple[str, int]] = ()) -> pd.DataFrame:
    """Clean accuracy per defense (rows) and width (columns) with its Wilson interval, collapsed cells flagged."""
    flagged = {(d, int(b)) for d, b in collapsed}
    rows = []
    for d, g in clean.groupby("defense", sort=False):
        row = {"defense": d}
        for r in g.itertuples(index=False):
            row[bit_label(r.bits)] = interval(r.clean_acc, r.ci_low, r.ci_high) + (
                COLLAPSED if (d, int(r.bits)) in flagged else "")
        row["n"] = int(g.n.iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def defends_display(defends: pd.DataFrame) -> pd.DataFrame:
    """The "does every defense defend" table for reading (one row per defense and width, then its mean)."""
    out = pd.DataFrame({
        "defense": defends.defense, "undefended start": defends.start, "its seen threat": defends.threat,
        "bit-width": [_width(b) for b in defends.bits],
        "robust accuracy (%)": [pct(v) for v in defends.robust],
        "start's robust accuracy (%)": [pct(v) for v in defends["start robust"]],
        "difference (points) [95 %]": [interval(v, lo, hi, signed=True)
                                       for v, lo, hi in zip(defends.difference, defends.ci_low, defends.ci_high)],
        "ASR (%)": [pct(v) for v in defends.asr], "start's ASR (%)": [pct(v) for v in defends["start asr"]],
        "collapsed": ["yes" if c else "" for c in defends.collapsed],
        "verdict": ["collapsed" if c else ("beats its start" if ok else "does not beat its start")
                    for c, ok in zip(defends.collapsed, defends.defends)],
    })
    return out


def collapse_display(collapse: pd.DataFrame) -> pd.DataFrame:
    """Each defended model's ``collapse_check``: clean accuracy at each width beside its start's, the flag."""
    return pd.DataFrame({"defense": collapse.defense, "bit-width": [bit_label(b) for b in collapse.bits],
                         "clean accuracy (%)": [pct(v) for v in collapse.clean],
                         "start's clean accuracy (%)": [pct(v) for v in collapse["start clean"]],
                         "drop (points)": [pct(v) for v in collapse["drop"]],
                         "collapsed (drop > limit)": ["yes" if c else "no" for c in collapse.collapsed],
                         "limit (points)": [pct(v) for v in collapse["max drop"]], "n": collapse.n})


def gradient_display(norms: pd.DataFrame, collapsed: Collection[tuple[str, int]] = ()) -> pd.DataFrame:
    """Input-gradient norm per model and width beside its undefended start's (models with a start only)."""
    flagged = {(d, int(b)) for d, b in collapsed}
    t = norms[norms.start != "-"]
    return pd.DataFrame({"defense": t.defense, "bit-width": [bit_label(b) for b in t.bits],
                         "input-gradient norm": [f"{v:.3g}" for v in t["gradient norm"]],
                         "undefended start": t.start, "start's norm": [f"{v:.3g}" for v in t["start gradient norm"]],
                         "ratio": [f"{v:.2f}" + (COLLAPSED if (d, int(b)) in flagged else "")
                                   for v, d, b in zip(t.ratio, t.defense, t.bits)]})


def aqapa_display(aqapa: pd.DataFrame) -> pd.DataFrame:
    """A-QAPA's draws per (width, size) cell and epoch, with the cell's mean hardness (nats) in brackets."""
    if aqapa.empty:
        return pd.DataFrame(columns=["defense", "cell"])
    rows = []
    for (d, b, s), g in aqapa.groupby(["defense", "bits", "size"], sort=False):
        row = {"defense": d, "cell": f"{bit_label(b)}, {s} px"}
        for r in g.itertuples(index=False):
            row[f"epoch {r.epoch}"] = f"{r.draws}" + ("" if _nan(r.hardness) else f" ({r.hardness:.2f})")
        rows.append(row)
    return pd.DataFrame(rows)


def fidelity_display(fidelity: pd.DataFrame, bar: float | None = None) -> pd.DataFrame:
    """The fidelity table for reading: losses (nats) and the ratio at three digits, the two attacks' ASR in
    percent, and whether each epoch clears ``bar`` (default: :data:`~qadtr_core.defenses.inner.MIN_FIDELITY`)."""
    from .defenses.inner import MIN_FIDELITY

    bar = MIN_FIDELITY if bar is None else bar
    t = fidelity.copy()
    for c in ("clean loss", "training attack loss", "fresh attack loss", "fidelity"):
        t[c] = [("-" if _nan(v) else f"{v:.3f}") for v in t[c]]
    t = t.rename(columns={c: f"{c} (nats)" for c in ("clean loss", "training attack loss", "fresh attack loss")})
    for c in ("training attack ASR", "fresh attack ASR"):
        if c in t:
            t[f"{c} (%)"] = [pct(None if _nan(v) else 100 * v) for v in t.pop(c)]
    t[f"fidelity >= {bar}"] = ["-" if _nan(v) else ("yes" if v >= bar else "no") for v in fidelity.fidelity]
    return t


def random_precision_display(rp: pd.DataFrame) -> pd.DataFrame:
    """DWQ's random-precision deployment: per threat, clean and robust accuracy over the draws, ASR."""
    return pd.DataFrame({"defense": rp.defense, "threat": rp.threat, "draws": rp.draws, "n": rp.n,
                         "clean accuracy (%)": [pct(v) for v in rp.clean],
                         "robust accuracy (%) [95 %]": [interval(v, lo, hi) for v, lo, hi in
                                                        zip(rp.robust, rp.robust_ci_low, rp.robust_ci_high)],
                         "ASR (%)": [pct(v) for v in rp.asr], "widths drawn (attacked images)": rp["widths drawn"]})


def convergence_display(conv: pd.DataFrame) -> pd.DataFrame:
    """:func:`~qadtr_core.evaluation.defense_metrics.convergence` for reading, largest gap first."""
    t = conv.sort_values("gap", ascending=False)
    floor = t.null_floor if "null_floor" in t else [float("nan")] * len(t)
    return pd.DataFrame({"threat": t.threat, "attacked model": t.target, "steps (queries)": t.steps, "n": t.n,
                         "white-box ASR (%)": [pct(100 * v) for v in t.white_box_asr],
                         "at half the budget (%)": [pct(100 * v) for v in t.white_box_asr_half_steps],
                         "gain (points)": [pct(100 * v) for v in t.gap],
                         "null floor (%)": [pct(100 * v) for v in floor],
                         "converged": ["yes" if c else "no" for c in t.converged],
                         "image-steps run of the full budget": [
                             _cost(r, b) for r, b in zip(t.get("image_steps_run", [None] * len(t)),
                                                         t.get("image_steps_full_budget", [None] * len(t)))]})


def _cost(run: float | None, budget: float | None) -> str:
    """"238,540 of 2,643,200 (9.0 %)": what an early-stopped attack ran against its full budget; "-" if unknown."""
    if run is None or budget is None or run != run or budget != budget or not budget:
        return "-"
    return f"{int(run):,} of {int(budget):,} ({100 * run / budget:.1f} %)"


def attack_strength_display(strength: Sequence[Mapping]) -> pd.DataFrame:
    """A claim's ``attack_strength`` entries for reading: percent, the gain from doubling in points, and
    ``converged`` where the entries carry it (``scorecard.json``'s)."""
    s = list(strength)

    def half(a: Mapping) -> float | None:
        return a["white_box_asr_half_steps"]

    t = pd.DataFrame({"attack": [a["name"] for a in s], "steps": [a["steps"] for a in s],
                      "n": ["-" if a.get("n") is None else a["n"] for a in s],
                      "white-box ASR (%)": [pct(100 * a["white_box_asr"]) for a in s],
                      "at half the budget (%)": [pct(None if half(a) is None else 100 * half(a)) for a in s],
                      "gain from doubling (points)": [pct(None if half(a) is None else 100 * (a["white_box_asr"] - half(a)))
                                                      for a in s],
                      "null floor (%)": [pct(100 * (a.get("clean_floor") or 0.0)) for a in s]},
                     columns=["attack", "steps", "n", "white-box ASR (%)", "at half the budget (%)",
                              "gain from doubling (points)", "null floor (%)"])
    if any("converged" in a for a in s):
        t["converged"] = ["-" if "converged" not in a else ("yes" if a["converged"] else "no") for a in s]
    if any(a.get("image_steps_run") is not None for a in s):
        t["image-steps run of the full budget"] = [_cost(a.get("image_steps_run"), a.get("image_steps_full_budget"))
                                                   for a in s]
    return t


def claim_by_bits(claims: Mapping[str, Mapping[str, Mapping[str, float]]]) -> pd.DataFrame:
    """Per-width intervals of several claims: ``{column: {bits: interval}}`` -> one row per width."""
    widths = list(dict.fromkeys(b for v in claims.values() for b in v))
    return pd.DataFrame([{"bit-width": _width(b), **{c: (interval(v[b]["value"], v[b]["ci_low"], v[b]["ci_high"],
                                                                 signed=True) if b in v else "-")
                                                     for c, v in claims.items()}} for b in widths])
