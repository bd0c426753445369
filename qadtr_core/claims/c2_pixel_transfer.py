"""**C2**: pixel-level attacks transfer poorly across bit-widths (the paper: low off-diagonal success, DWQ).

Relative transfer depends on strength (an attack that breaks everything white-box has no room to lose), so
the two attacks are compared at **matched strength**: PGD at the radius of the grid whose white-box ASR on
the FP model is closest to the per-image patch's (:func:`matched_radius`); the rule reads the difference
only if the paired interval of the two white-box ASRs' difference lies within :data:`MATCH_POINTS` points.

Measurement (:func:`c2_claim`): PGD at that radius against the per-image patch: the difference of their
relative transfer (mean off-diagonal over mean diagonal ASR among the widths the per-image patch was
crafted at, ``Profile.image_patch_source_bits``: at the quick profile FP and 2 bits, both ways), each above
its null attack's floor, paired bootstrap over images. Rule: :func:`verdict_c2`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ..evaluation.strength import AttackStrength
from ..evaluation.transfer import Outcomes, relative_transfer_interval, white_box_excess_interval
from ..stats import paired_bootstrap
from .common import Ruling, converged, fmt, interval, rate_interval, unconverged_reason

ID = "C2"
STATEMENT = 'Pixel-level attacks transfer poorly across bit-widths'
PAPER = 'low off-diagonal success (DWQ)'
CHAPTER = "01_transferability"
# The question the claim answers, for a reader outside the project.
QUESTION = 'Do pixel-level (PGD) attacks transfer across bit-widths worse than patches do?'
# What the rule reads (a claim entry's own ``metric`` field, where a chapter writes one, wins).
METRIC = "relative transfer of the ASR over clean-correct images, above each attack's null floor"


# The largest gap (points) between PGD's and the patch's white-box ASR on the FP model at which their relative
# transfer is compared (fixed before any result).
MATCH_POINTS = 10.0


def matched_radius(white_box_by_eps: Mapping[float, float], target: float) -> float:
    """The radius of ``white_box_by_eps`` (eps -> white-box ASR, fractions) whose ASR is closest to ``target``
    (the per-image patch's white-box ASR); ties: the smaller radius."""
    if not white_box_by_eps:
        raise ValueError("matched_radius needs at least one PGD radius")
    return float(min(sorted(white_box_by_eps), key=lambda e: abs(white_box_by_eps[e] - target)))


def c2_claim(pgd: Mapping[tuple[str, str], Outcomes], patch: Mapping[tuple[str, str], Outcomes], names: list[str],
             eps: float, eps_curve: pd.DataFrame, strengths: Sequence[AttackStrength], profile: str,
             seeds: Sequence[int], pgd_floor: Mapping[str, Outcomes] | None = None,
             patch_floor: Mapping[str, Outcomes] | None = None, n_boot: int = 1000) -> dict[str, Any]:
    """The C2 entry: relative transfer of the per-image patch minus that of PGD at ``eps`` (paired),
    each counted above its null attack's floor per target (a random patch; random noise in the ball), with
    both attacks' white-box ASR on ``names[0]`` (the FP model) and ``strength_gap``, PGD's minus the patch's
    (points), which the rule requires within :data:`MATCH_POINTS`."""
    diff = relative_transfer_interval(patch, names, baseline=pgd, n_boot=n_boot, floors=patch_floor,
                                      baseline_floors=pgd_floor)
    src = names[0]
    pgd_wb, patch_wb = rate_interval(pgd[(src, src)]), rate_interval(patch[(src, src)])
    (a, va), (b, vb) = pgd[(src, src)], patch[(src, src)]
    gap = paired_bootstrap(a, b, n_boot=n_boot, valid_a=va, valid_b=vb)  # the same images: a paired interval
    return {**interval(diff),
            "pgd_white_box": interval(pgd_wb), "patch_white_box": interval(patch_wb),
            "strength_gap": 100 * gap.value,
            "strength_gap_interval": {"value": 100 * gap.value, "ci_low": 100 * gap.low, "ci_high": 100 * gap.high},
            "matched_on": src,
            "pgd_relative": interval(relative_transfer_interval(pgd, names, n_boot=n_boot, floors=pgd_floor)),
            "patch_relative": interval(relative_transfer_interval(patch, names, n_boot=n_boot, floors=patch_floor)),
            "pgd_white_box_excess": interval(white_box_excess_interval(pgd, names, pgd_floor, n_boot)),
            "patch_white_box_excess": interval(white_box_excess_interval(patch, names, patch_floor, n_boot)),
            "eps_255": eps, "eps_curve": eps_curve.to_dict(orient="records"), "bit_widths": names,
            "n": len(next(iter(pgd.values()))[0]), "seeds": list(seeds), "profile": profile,
            "attack_strength": [s.record() for s in strengths],
            "measure": "relative transfer above each attack's null floor (mean off-diagonal / mean white-box excess ASR "
                       f"among {', '.join(names)}, each crafted and evaluated at each): per-image patch minus PGD"}


def verdict_c2(c: Mapping[str, Any]) -> Ruling:
    """**C2** (pixel attacks transfer poorly), read on the widths the per-image patch was crafted at (every
    QAT width, or the profile's ``image_patch_source_bits``: fewer cells, the same definition) at matched strength (the PGD
    radius whose white-box ASR on FP is closest to the per-image patch's): d = the per-image patch's relative
    transfer minus PGD's (paired interval; the DWQ model's reading is shown beside it). *Inconclusive* if an
    attack has not converged, if the two white-box ASRs are not within 10 points of each other (the whole
    paired interval of their difference; else no radius of the grid matches the patch, and relative transfer
    depends on strength), or if either attack does nothing (its
    white-box excess over its null floor is not above 0). Then, in this
    order (disjoint regions): *not reproduced* if the whole interval of d lies below 0.1 (PGD transfers
    about as well as the patch, or better: a difference under 0.1 is no difference); *reproduced* if d > 0
    and PGD keeps less than half its white-box ASR (both whole intervals); *partly* if d > 0 only; else
    *inconclusive*."""
    ours = (f"relative transfer: PGD (eps {c['eps_255']:g}/255) {fmt(c['pgd_relative'], digits=2)}, "
            f"per-image patch {fmt(c['patch_relative'], digits=2)}; difference {fmt(c, digits=2)}")
    if "dwq" in c:  # the DWQ figure's own setting, shown beside the QAT reading the rule judges
        ours += f"; one DWQ model across its widths: difference {fmt(c['dwq']['difference'], digits=2)}"
    matched = (f", matched strength: white-box {fmt(c['pgd_white_box'], 100, ' %')} vs "
               f"{fmt(c['patch_white_box'], 100, ' %')}" if "pgd_white_box" in c else "")
    reading = c.get("reading") or f"per-image patch minus PGD at eps {c['eps_255']:g}/255 (relative transfer{matched})"

    def ruling(verdict: str, reason: str | None = None) -> Ruling:
        return Ruling(ours, verdict, reason, reading)

    if not converged(c):
        return ruling("inconclusive", unconverged_reason(c))
    gap = c.get("strength_gap_interval") or ({"value": c["strength_gap"], "ci_low": c["strength_gap"],
                                              "ci_high": c["strength_gap"]} if "strength_gap" in c else None)
    if gap is not None and not -MATCH_POINTS <= gap["ci_low"] <= gap["ci_high"] <= MATCH_POINTS:
        return ruling("inconclusive", f"strengths not matched: PGD's white-box ASR minus the per-image patch's is "
                                      f"{fmt(gap, unit=' pts')}, not within {MATCH_POINTS:g} points (whole interval)")
    if any(math.isnan(c[k]) for k in ("value", "ci_low", "ci_high")):
        return ruling("inconclusive", "the difference could not be computed (NaN)")
    for k, who in (("pgd_white_box_excess", "PGD"), ("patch_white_box_excess", "the per-image patch")):
        if k in c and not c[k]["ci_low"] > 0:  # an attack that does nothing compares nothing
            return ruling("inconclusive", f"{who} does nothing white-box: its excess over its floor, "
                                          f"{fmt(c[k], digits=2)}, is not above 0")
    if c["ci_high"] < 0.1:
        return ruling("not reproduced")
    if c["ci_low"] > 0:
        return ruling("reproduced" if c["pgd_relative"]["ci_high"] < 0.5 else "partly")
    return ruling("inconclusive", f"the difference {fmt(c, digits=2)} straddles 0 and reaches 0.1")
