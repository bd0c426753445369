"""**C3**: QADT-R lowers ASR by up to 25 points against PBAT and DWQ (read on robust accuracy).

Measurement (:func:`c3_claim`): mean over widths of QADT-R's robust accuracy minus the better of PBAT's and
DWQ's, on the threats unseen by **all three** defenses at that width
(:func:`~qadtr_core.evaluation.defense_metrics.common_unseen`: the intersection of their own "unseen" sets),
so that every side of the difference averages the same threats; also per width (at 95 % and,
``by_bits_corrected``, Bonferroni-corrected for the number of widths, which the rule reads when it takes the
best width) and on the per-image worst case over every threat (random search included). Points, paired
bootstrap over the evaluation images; a width where a compared model collapsed is left out. Rule:
:func:`verdict_c3`.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from ..evaluation.defense_metrics import (
    NAN_CI,
    ROBUST_ACCURACY,
    Stat,
    adaptive_names,
    attack_strength,
    bootstrap,
    ci,
    common_unseen,
    excluded_widths,
    mean_of,
    robust,
)
from ..evaluation.robustness import Evaluation
from ..evaluation.threats import THREATS, PatchDistribution, Threat
from .common import Ruling, defense_claim_unreadable, fmt, widened

ID = "C3"
STATEMENT = 'QADT-R lowers ASR by up to 25 points against PBAT and DWQ'
PAPER = 'up to 25 points'
CHAPTER = "02_defenses"
# The question the claim answers, for a reader outside the project.
QUESTION = 'Does QADT-R beat PBAT and DWQ, by up to 25 points, on patches none of them trained on?'
# What the rule reads (a claim entry's own ``metric`` field, where a chapter writes one, wins).
METRIC = 'robust accuracy over all evaluation images (collapsed widths left out)'

def defends_given(compared: Sequence[str], collapsed: Collection[tuple[str, int]],
                  defends: Mapping[str, bool] | None) -> dict[str, bool]:
    """``{defense: defends}`` for the ``compared`` defenses that ``defends`` names or that collapsed at some
    width: a defense collapsed at a width it serves does not defend (as in
    :func:`~qadtr_core.evaluation.defense_metrics.defends_table`), given or not."""
    flagged = {d for d, _ in collapsed}
    return {d: bool((defends or {}).get(d, True)) and d not in flagged
            for d in compared if d in (defends or {}) or d in flagged}


def c3_claim(ev: Evaluation, distributions: Mapping[str, PatchDistribution], bit_set: Sequence[int], meta: Mapping,
             ours: str = "QADT-R", baselines: Sequence[str] = ("PBAT", "DWQ"), n_boot: int = 2000,
             collapsed: Collection[tuple[str, int]] = (), defends: Mapping[str, bool] | None = None,
             threats: Sequence[Threat] = THREATS) -> dict[str, Any]:
    """The C3 entry (``meta``: ``seeds``, ``profile``; ``collapsed``: the flagged (defense, bits) cells;
    ``defends``: :func:`~qadtr_core.evaluation.defense_metrics.defends_of` of the defends table)."""
    pi, n, bits = ev.per_image, ev.n, list(bit_set)
    compared = [*baselines, ours]

    def gain(kind: str, bs: Sequence[int]) -> Stat:
        per = []
        for b in bs:
            names = common_unseen(pi, distributions, compared, b, threats) if kind == "unseen" else None
            if kind == "unseen" and not names:
                raise ValueError(f"no threat is unseen by all of {', '.join(compared)} at {b} bits")
            base = [robust(pi, distributions, d, b, kind, threats=threats, names=names) for d in baselines]
            mine = robust(pi, distributions, ours, b, kind, threats=threats, names=names)
            per.append(lambda idx, base=base, mine=mine: mine(idx) - np.max([s(idx) for s in base], axis=0))
        return mean_of(per)

    out = excluded_widths(bits, compared, collapsed)
    kept = [b for b in bits if str(b) not in out]
    corrected = 1 - 0.05 / len(bits)  # the rule takes the best width: Bonferroni over the widths
    return {**(ci(bootstrap(gain("unseen", kept), n, n_boot)) if kept else NAN_CI),
            "by_bits": {str(b): ci(bootstrap(gain("unseen", [b]), n, n_boot)) for b in kept},
            "by_bits_corrected": {str(b): ci(bootstrap(gain("unseen", [b]), n, n_boot, level=corrected)) for b in kept},
            "worst_case": ci(bootstrap(gain("worst case", kept), n, n_boot)) if kept else dict(NAN_CI),
            "excluded_bits": out, "defends": defends_given(compared, collapsed, defends),
            "n": n, "seeds": list(meta["seeds"]), "profile": meta["profile"], "metric": ROBUST_ACCURACY,
            "attack_strength": attack_strength(ev, compared, exclude=adaptive_names(threats), collapsed=collapsed)}


def _by_bits_corrected(c: Mapping[str, Any]) -> dict[str, Mapping[str, float]]:
    """C3's per-width intervals, Bonferroni-corrected for the number of widths (stored by
    :func:`qadtr_core.claims.defense_chapter.defense_claims`; widened from the 95 % ones for older entries)."""
    stored = c.get("by_bits_corrected")
    if stored:
        return dict(stored)
    level = 1 - 0.05 / max(1, len(c["by_bits"]))
    return {b: widened(v, level) for b, v in c["by_bits"].items()}


def verdict_c3(c: Mapping[str, Any]) -> Ruling:
    """**C3** (QADT-R lowers ASR by up to 25 points against PBAT and DWQ): per bit-width, QADT-R's robust
    accuracy on the threats unseen by all three minus the better baseline's (points, paired intervals; a
    width where a compared model collapsed is left out); ``value`` is the mean over widths.
    *Inconclusive* if an attack has not converged, or if a defense the claim compares does not beat its
    undefended start on its own seen threat (``defends``). Then, in this order (disjoint regions): *not reproduced*
    if the mean is below 2 points (whole interval: a reduction under 2 points is none); *reproduced* if
    some width's reduction is at least 15 points, read on its interval Bonferroni-corrected for the w
    widths (each at 1 - 0.05/w, since the best of w is taken), and the mean and the mean reduction of the
    worst case over all threats (adaptive included) are above 0 (lower bounds); *partly* if the mean is
    above 0 (lower bound); else *inconclusive*."""
    ours = f"mean reduction on unseen patches {fmt(c, unit=' pts')}; worst case {fmt(c['worst_case'], unit=' pts')}"
    reading = c.get("reading") or "mean over widths, on the threats unseen by all three defenses"

    def ruling(verdict: str, reason: str | None = None) -> Ruling:
        return Ruling(ours, verdict, reason, reading)

    if unreadable := defense_claim_unreadable(c):
        return ruling("inconclusive", unreadable)
    if c["ci_high"] < 2:
        return ruling("not reproduced")
    best_low = max(v["ci_low"] for v in _by_bits_corrected(c).values())
    if best_low >= 15 and c["ci_low"] > 0 and c["worst_case"]["ci_low"] > 0:
        return ruling("reproduced")
    if c["ci_low"] > 0:
        return ruling("partly")
    return ruling("inconclusive", f"the mean reduction {fmt(c, unit=' pts')} straddles 0 and reaches 2 points")
