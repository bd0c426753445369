"""**C5**: QADT-R keeps clean accuracy (the paper: within a few points).

Measurement (:func:`c5_claim`): the clean-accuracy drop of QADT-R against the undefended multi-width model,
its starting point, per width (points, paired bootstrap) and its mean over widths. Rule: :func:`verdict_c5`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..evaluation.defense_metrics import bootstrap, ci
from ..stats import Interval, paired_bootstrap, wilson
from .common import Ruling, fmt, interval, near_chance, widened

ID = "C5"
STATEMENT = 'QADT-R keeps clean accuracy'
PAPER = 'within a few points'
CHAPTER = "02_defenses"
# The question the claim answers, for a reader outside the project.
QUESTION = 'Does QADT-R keep the clean accuracy of the undefended model?'
# What the rule reads (a claim entry's own ``metric`` field, where a chapter writes one, wins).
METRIC = 'clean accuracy'


def c5_claim(clean: pd.DataFrame, bit_set: Sequence[int], meta: Mapping, multiwidth: str = "multi-width (undefended)",
             ours: str = "QADT-R", n_boot: int = 2000) -> dict[str, Any]:
    """The C5 entry from a :func:`~qadtr_core.evaluation.robustness.clean_table` of per-image correctness
    (``meta``: ``seeds``, ``profile``); the headline is the width of the largest drop. ``start_clean``: the
    undefended model's own clean accuracy per width (fractions, Wilson), which the rule checks."""
    bits = list(bit_set)

    def correct(d: str, b: int) -> np.ndarray:
        return clean[(clean.defense == d) & (clean.bits == b)].sort_values("image").correct.to_numpy(float)

    by_bits = {b: paired_bootstrap(correct(multiwidth, b), correct(ours, b), n_boot=n_boot) for b in bits}
    corrected = 1 - 0.05 / len(bits)  # "some width drops more than 5": Bonferroni over the widths
    by_bits_c = {b: paired_bootstrap(correct(multiwidth, b), correct(ours, b), n_boot=n_boot, level=corrected)
                 for b in bits}
    worst_b = max(bits, key=lambda b: by_bits[b].value)
    scale = lambda i: Interval(100 * i.value, 100 * i.low, 100 * i.high)  # noqa: E731
    diffs = np.stack([correct(multiwidth, b) - correct(ours, b) for b in bits])
    n_clean = diffs.shape[1]
    return {**ci(scale(by_bits[worst_b])), "bits": worst_b, "by_bits": {str(b): ci(scale(i)) for b, i in by_bits.items()},
            "by_bits_corrected": {str(b): ci(scale(i)) for b, i in by_bits_c.items()},
            "mean_drop": ci(bootstrap(lambda idx: 100 * diffs[:, idx].mean(-1).mean(0), n_clean, n_boot)),
            "start_clean": {str(b): interval(wilson(int(correct(multiwidth, b).sum()), len(correct(multiwidth, b))))
                            for b in bits},
            "n": n_clean, "seeds": list(meta["seeds"]), "profile": meta["profile"]}


def verdict_c5(c: Mapping[str, Any]) -> Ruling:
    """**C5** (QADT-R keeps clean accuracy): the drop of clean accuracy against the undefended multi-width
    model, per bit-width (points, paired intervals). A width where the undefended model's own clean
    accuracy is near chance (``start_clean``, :func:`~.common.near_chance`; an entry without it is not
    checked) is unreadable: no drop can be read against a broken start. In this order (disjoint regions):
    *not reproduced* if some readable width drops more than 5 points (lower bound of its interval Bonferroni-
    corrected for the number of widths, since the rule takes the worst of them), whatever the mean;
    *inconclusive* if some width is unreadable; *reproduced* if every width's drop is at most 3 points
    (upper bound); *partly* if the mean drop over widths is at most 5 (upper bound); else *inconclusive*."""
    ours = f"largest drop {fmt(c, unit=' pts')}; mean {fmt(c['mean_drop'], unit=' pts')}"
    reading = c.get("reading") or (f"largest drop over widths, at {c['bits']} bits" if "bits" in c
                                   else "largest drop over widths")
    broken = [b for b, acc in (c.get("start_clean") or {}).items() if near_chance(acc)]
    corrected = c.get("by_bits_corrected") or {b: widened(v, 1 - 0.05 / max(1, len(c["by_bits"])))
                                               for b, v in c["by_bits"].items()}
    if any(v["ci_low"] > 5 for b, v in corrected.items() if b not in broken):
        return Ruling(ours, "not reproduced", reading=reading)
    if broken:
        return Ruling(ours, "inconclusive", "the undefended start's clean accuracy is near chance at "
                      + ", ".join(f"{b} bits ({fmt(c['start_clean'][b], 100, ' %')})" for b in broken)
                      + ": no drop can be read against a broken start", reading)
    by = c["by_bits"].values()
    if all(v["ci_high"] <= 3 for v in by):
        return Ruling(ours, "reproduced", reading=reading)
    if c["mean_drop"]["ci_high"] <= 5:
        return Ruling(ours, "partly", reading=reading)
    return Ruling(ours, "inconclusive", f"the mean drop {fmt(c['mean_drop'], unit=' pts')} reaches above 5 points "
                                        "while no width's drop is surely above 5", reading)
