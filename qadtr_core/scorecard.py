"""The reproduction scorecard: each claim of the paper, its figure, ours with an interval, and a verdict.

The verdict rules are fixed here, before any result is read, and printed in the book (each rule is
its function's docstring). They read intervals, never bare point values, and they can abstain:

- *reproduced* / *partly* / *not reproduced* need the interval on the right side of the claim's
  threshold, and every attack behind the claim converged (doubling its steps added less than 2
  points of white-box ASR, its white-box ASR is above its clean floor and its patch still moved:
  :func:`qadtr_core.strength.is_converged`);
- *inconclusive* is the verdict where an attack has not converged or an interval straddles a threshold;
  the record says which (``reason``);
- *not measured*: the chapter has not produced results at this profile.

The regions of each rule are disjoint: a rule lists them in the order it tests them, a failure or
equivalence region (an effect too small to count) before *partly*. Where a rule takes the best of
several intervals (C1's readings, C3's widths), each is Bonferroni-corrected for how many were tried.

An ASR that already exceeds a claim's threshold is a lower bound on what a converged attack reaches,
so C1 can be *reproduced* by an unconverged attack, never refuted by one.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable

import numpy as np
import pandas as pd

from .artifacts import CorruptArtifact, artifact_root, read_json, write_json
from .stats import Z95, across_seeds, wilson
from .strength import not_converged_reason

log = logging.getLogger(__name__)

VERDICTS_ALLOWED = ("reproduced", "partly", "not reproduced", "inconclusive")

CLAIMS: dict[str, tuple[str, str, str]] = {
    "C1": ("Patches transfer from FP to QAT models with ASR > 70 % even at 2 bits", "> 70 % (73.08 % on 2-bit ResNet-56)",
           "01_transferability"),
    "C2": ("Pixel-level attacks transfer poorly across bit-widths", "low off-diagonal success (DWQ)", "01_transferability"),
    "C3": ("QADT-R lowers ASR by up to 25 points against PBAT and DWQ", "up to 25 points", "02_defenses"),
    "C4": ("PBAT resists seen patches but not unseen ones", "57.86 % seen vs 78.34 % unseen at 2 bits", "02_defenses"),
    "C5": ("QADT-R keeps clean accuracy", "within a few points", "02_defenses"),
    "C6": ("Input gradients across bit-widths: low cosine, high structural similarity",
           "cosine 0.05-0.25, HOG cosine about 0.8", "04_gradient_alignment"),
    "C7": ("Each of A-QAPA, DBWT and GIR contributes", "not published", "03_ablations"),
}

ASR = "ASR over clean-correct images"
# The metric each rule reads (a claim entry's own ``metric`` field, where a chapter writes one, wins).
METRICS: dict[str, str] = {
    "C1": f"{ASR} (targeted readings: over images not of the target class)",
    "C2": f"relative transfer of the {ASR}, above each attack's null floor",
    "C3": "robust accuracy over all evaluation images (collapsed widths left out)",
    "C4": "robust accuracy over all evaluation images, white-box threats",
    "C5": "clean accuracy",
    "C6": "HOG cosine of input gradients across bit-widths, over its baseline",
    "C7": "robust accuracy over all evaluation images (collapsed widths left out)",
}


class Ruling(tuple):
    """What a rule returns: the pair ``(ours, verdict)`` (it unpacks and indexes as that pair), with
    ``reason`` (why *inconclusive*: which attack did not converge, or which interval straddles what;
    None for any other verdict), ``reading`` (which reading or attack the headline value is) and
    ``headline`` (the headline interval where the rule chooses it among several, as C1 does; else None)."""

    reason: str | None
    reading: str | None
    headline: Mapping[str, float] | None

    def __new__(cls, ours: str, verdict: str, reason: str | None = None, reading: str | None = None,
                headline: Mapping[str, float] | None = None) -> "Ruling":
        if verdict not in VERDICTS_ALLOWED:
            raise ValueError(f"unknown verdict {verdict!r}")
        if verdict == "inconclusive" and not reason:
            raise ValueError("an inconclusive verdict must say why")
        self = super().__new__(cls, (ours, verdict))
        self.reason = reason if verdict == "inconclusive" else None
        self.reading = reading
        self.headline = headline
        return self

    @property
    def ours(self) -> str:
        return self[0]

    @property
    def verdict(self) -> str:
        return self[1]


def above(iv: Mapping[str, float], threshold: float) -> bool | None:
    """True if the whole interval is at or above ``threshold``, False if wholly below, None if it straddles."""
    if iv["ci_low"] >= threshold:
        return True
    if iv["ci_high"] < threshold:
        return False
    return None


def _attack_problem(a: Mapping[str, Any]) -> str | None:
    """Why one ``attack_strength`` record is not converged (None if it is), by :mod:`qadtr_core.strength`."""
    return not_converged_reason(a["white_box_asr"], a.get("white_box_asr_half_steps"), clean_floor=a.get("clean_floor", 0.0),
                                n=a.get("n", 0), checkpoint_linf=a.get("checkpoint_linf"))


def unconverged(claim: Mapping[str, Any]) -> list[str]:
    """``"<attack>: <why>"`` for every attack behind the claim that has not converged."""
    return [f"{a['name']}: {why}" for a in claim.get("attack_strength", []) if (why := _attack_problem(a))]


def converged(claim: Mapping[str, Any]) -> bool:
    """Every attack behind the claim converged (a claim without attacks counts as converged)."""
    return not unconverged(claim)


def _not_converged_reason(claim: Mapping[str, Any]) -> str:
    return "not converged: " + "; ".join(unconverged(claim))


def _fmt(iv: Mapping[str, float], scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
    v, lo, hi = (scale * iv[k] for k in ("value", "ci_low", "ci_high"))
    return f"{v:.{digits}f}{unit} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _z(level: float) -> float:
    return NormalDist().inv_cdf(1 - (1 - level) / 2)


def _widened(iv: Mapping[str, float], level: float) -> dict[str, float]:
    """A 95 % interval widened to ``level`` on each side by the normal ratio of quantiles (for entries
    written before the corrected interval was stored; the stored one, where present, is always read)."""
    r = _z(level) / Z95
    v = iv["value"]
    return {"value": v, "ci_low": v - r * (v - iv["ci_low"]), "ci_high": v + r * (iv["ci_high"] - v)}


def _c1_intervals(r: Mapping[str, Any], level: float) -> tuple[dict[str, float], dict[str, float]]:
    """A C1 reading's transfer ASR and its excess over its floor, both at the corrected ``level``."""
    transfer = r.get("transfer_corrected")
    if transfer is None:
        n = int(r.get("n") or 0)
        w = wilson(min(n, round(r["transfer"]["value"] * n)), n, z=_z(level)) if n else None
        transfer = {"value": r["transfer"]["value"], "ci_low": w.low, "ci_high": w.high} if w else \
            {"value": math.nan, "ci_low": 0.0, "ci_high": 1.0}
    excess = r.get("excess_over_floor_corrected") or _widened(r["excess_over_floor"], level)
    return transfer, excess


def verdict_c1(c: Mapping[str, Any]) -> Ruling:
    """**C1** (patch ASR from FP to the lowest-width QAT model > 70 %), over its k readings (targeted and
    untargeted, universal and per-image patches). Every interval is Bonferroni-corrected for the k readings
    (each at 1 - 0.05/k): the Wilson interval of a reading's ASR and the paired interval of its excess over
    its null floor (targeted: the clean floor; untargeted: random patches at the same places). A reading
    *clears* 70 % if its ASR's lower bound is at least 70 % and its excess's lower bound is above 0.
    *Reproduced* if some reading clears 70 %, converged or not (an ASR is a lower bound on what a stronger
    attack reaches). Otherwise *inconclusive* if some reading's ASR interval straddles 70 %, or some reading
    lies above 70 % without clearing its floor (random patches already break the model that often), or some
    reading's attack has not converged. Otherwise (every reading wholly below 70 %, every attack converged)
    *partly* if some reading beats its floor by at least 10 points (lower bound: patches transfer, weaker
    than claimed), else *not reproduced*. The headline is the strongest reading (the highest lower bound),
    a lower bound while its attack has not converged."""
    readings = c["readings"]
    k = len(readings)
    level = 1 - 0.05 / max(1, k)
    records = {a["name"]: a for a in c.get("attack_strength", [])}

    def problem(r: Mapping[str, Any]) -> str | None:
        rec = records.get(r["name"])
        why = _attack_problem(rec) if rec is not None else None
        return why or (None if r.get("converged") else "not converged")

    ivs = {r["name"]: _c1_intervals(r, level) for r in readings}
    chosen = max(readings, key=lambda r: (ivs[r["name"]][0]["ci_low"], r["transfer"]["value"]))
    headline = ivs[chosen["name"]][0]
    lower = problem(chosen) is not None
    reading = chosen["name"] + (" (lower bound: its attack has not converged)" if lower else "")
    ours = (f"{_fmt(headline, 100, ' %')} ({chosen['name']}{', a lower bound' if lower else ''}, white-box "
            f"{_fmt(chosen['white_box'], 100, ' %')}); strongest of {k} readings, intervals at {100 * level:.4g} %")

    def ruling(verdict: str, reason: str | None = None) -> Ruling:
        return Ruling(ours, verdict, reason, reading, headline)

    if any(t["ci_low"] >= 0.70 and e["ci_low"] > 0 for t, e in ivs.values()):
        return ruling("reproduced")
    straddle = [f"{name} {_fmt(t, 100, ' %')} straddles 70 %" for name, (t, _) in ivs.items() if above(t, 0.70) is None]
    at_floor = [f"{name} is above 70 % but not above its floor (excess {_fmt(e, 100, ' pts')})"
                for name, (t, e) in ivs.items() if above(t, 0.70) is True]
    if straddle or at_floor:
        return ruling("inconclusive", "; ".join(straddle + at_floor))
    stalled = [f"{r['name']}: {problem(r)}" for r in readings if problem(r)]
    if stalled:
        return ruling("inconclusive", "below 70 %, but not converged: " + "; ".join(stalled))
    if any(e["ci_low"] >= 0.10 for _, e in ivs.values()):
        return ruling("partly")
    return ruling("not reproduced")


def verdict_c2(c: Mapping[str, Any]) -> Ruling:
    """**C2** (pixel attacks transfer poorly), read on the FP and QAT models at the PGD radius whose
    white-box ASR is closest to 50 %: d = the per-image patch's relative transfer minus PGD's (paired
    interval; the DWQ model's reading is shown beside it). *Inconclusive* if an attack has not converged or
    either attack does nothing (its white-box excess over its null floor is not above 0). Then, in this
    order (disjoint regions): *not reproduced* if the whole interval of d lies below 0.1 (PGD transfers
    about as well as the patch, or better: a difference under 0.1 is no difference); *reproduced* if d > 0
    and PGD keeps less than half its white-box ASR (both whole intervals); *partly* if d > 0 only; else
    *inconclusive*."""
    ours = (f"relative transfer: PGD (eps {c['eps_255']:g}/255) {_fmt(c['pgd_relative'], digits=2)}, "
            f"per-image patch {_fmt(c['patch_relative'], digits=2)}; difference {_fmt(c, digits=2)}")
    if "dwq" in c:  # the DWQ figure's own setting, shown beside the QAT reading the rule judges
        ours += f"; one DWQ model across its widths: difference {_fmt(c['dwq']['difference'], digits=2)}"
    reading = c.get("reading") or f"per-image patch minus PGD at eps {c['eps_255']:g}/255 (relative transfer)"

    def ruling(verdict: str, reason: str | None = None) -> Ruling:
        return Ruling(ours, verdict, reason, reading)

    if not converged(c):
        return ruling("inconclusive", _not_converged_reason(c))
    if any(math.isnan(c[k]) for k in ("value", "ci_low", "ci_high")):
        return ruling("inconclusive", "the difference could not be computed (NaN)")
    for k, who in (("pgd_white_box_excess", "PGD"), ("patch_white_box_excess", "the per-image patch")):
        if k in c and not c[k]["ci_low"] > 0:  # an attack that does nothing compares nothing
            return ruling("inconclusive", f"{who} does nothing white-box: its excess over its floor, "
                                          f"{_fmt(c[k], digits=2)}, is not above 0")
    if c["ci_high"] < 0.1:
        return ruling("not reproduced")
    if c["ci_low"] > 0:
        return ruling("reproduced" if c["pgd_relative"]["ci_high"] < 0.5 else "partly")
    return ruling("inconclusive", f"the difference {_fmt(c, digits=2)} straddles 0 and reaches 0.1")


def _not_defending(c: Mapping[str, Any]) -> str | None:
    """Why a defense claim cannot be read: the defenses of ``defends`` that do not beat their start (or None)."""
    weak = [d for d, ok in c.get("defends", {}).items() if not ok]
    return f"{', '.join(weak)} does not beat its undefended start on its own seen threat" if weak else None


def _defense_claim_unreadable(c: Mapping[str, Any]) -> str | None:
    """Why a claim that compares defenses cannot be read at all (an unconverged attack, or a defense that
    does not beat its start), or None: the gate of C3 and C4."""
    return _not_converged_reason(c) if not converged(c) else _not_defending(c)


def _by_bits_corrected(c: Mapping[str, Any]) -> dict[str, Mapping[str, float]]:
    """C3's per-width intervals, Bonferroni-corrected for the number of widths (stored by
    :func:`qadtr_core.defense_claims.defense_claims`; widened from the 95 % ones for older entries)."""
    stored = c.get("by_bits_corrected")
    if stored:
        return dict(stored)
    level = 1 - 0.05 / max(1, len(c["by_bits"]))
    return {b: _widened(v, level) for b, v in c["by_bits"].items()}


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
    ours = f"mean reduction on unseen patches {_fmt(c, unit=' pts')}; worst case {_fmt(c['worst_case'], unit=' pts')}"
    reading = c.get("reading") or "mean over widths, on the threats unseen by all three defenses"

    def ruling(verdict: str, reason: str | None = None) -> Ruling:
        return Ruling(ours, verdict, reason, reading)

    if unreadable := _defense_claim_unreadable(c):
        return ruling("inconclusive", unreadable)
    if c["ci_high"] < 2:
        return ruling("not reproduced")
    best_low = max(v["ci_low"] for v in _by_bits_corrected(c).values())
    if best_low >= 15 and c["ci_low"] > 0 and c["worst_case"]["ci_low"] > 0:
        return ruling("reproduced")
    if c["ci_low"] > 0:
        return ruling("partly")
    return ruling("inconclusive", f"the mean reduction {_fmt(c, unit=' pts')} straddles 0 and reaches 2 points")


def verdict_c4(c: Mapping[str, Any]) -> Ruling:
    """**C4** (PBAT resists seen patches, not unseen ones) as a generalisation gap: PBAT's seen-minus-unseen
    robust-accuracy gap on white-box threats minus the same gap of the undefended model (points, paired
    intervals). *Inconclusive* if an
    attack has not converged, or if PBAT does not beat its undefended start on its own seen threat
    (``defends``). A relative gap is credited only where PBAT's own gap (``pbat_gap``) is above 0 (lower
    bound). Then, in this order (disjoint regions): *reproduced* if credited and the relative gap at
    the lowest width is at least 10 points (lower bound; the paper's is about 20); *not reproduced* if the
    mean relative gap over widths is below 3 points and the lowest width's below 10 (whole intervals: a gap
    that small is none, even if above 0); *partly* if credited and the mean is above 0 (lower bound); else
    *inconclusive*."""
    low = c["at_low_bits"]
    bits = low.get("bits", "?")
    ours = f"relative gap, mean over widths {_fmt(c, unit=' pts')}; at {bits} bits {_fmt(low, unit=' pts')}"
    reading = c.get("reading") or "mean relative gap over widths"

    def ruling(verdict: str, reason: str | None = None) -> Ruling:
        return Ruling(ours, verdict, reason, reading)

    if unreadable := _defense_claim_unreadable(c):
        return ruling("inconclusive", unreadable)
    own = c.get("pbat_gap")
    credited = own is None or own["ci_low"] > 0  # PBAT's own gap must be positive before a relative gap counts
    if credited and low["ci_low"] >= 10:
        return ruling("reproduced")
    if c["ci_high"] < 3 and low["ci_high"] < 10:
        return ruling("not reproduced")
    if credited and c["ci_low"] > 0:
        return ruling("partly")
    if not credited:
        return ruling("inconclusive", f"PBAT's own gap {_fmt(own, unit=' pts')} is not above 0: no gap to credit")
    if c["ci_high"] >= 3:
        return ruling("inconclusive", f"the mean gap {_fmt(c, unit=' pts')} straddles 0 and reaches 3 points")
    return ruling("inconclusive", f"the mean gap is below 3 points, but the gap at {bits} bits "
                                  f"{_fmt(low, unit=' pts')} straddles 10 points")


def verdict_c5(c: Mapping[str, Any]) -> Ruling:
    """**C5** (QADT-R keeps clean accuracy): the drop of clean accuracy against the undefended multi-width
    model, per bit-width (points, paired intervals). In this order (disjoint regions): *reproduced* if every
    width's drop is at most 3 points (upper bound); *not reproduced* if some width drops more than 5 points
    (lower bound), whatever the mean; *partly* if the mean drop over widths is at most 5 (upper bound);
    else *inconclusive*."""
    ours = f"largest drop {_fmt(c, unit=' pts')}; mean {_fmt(c['mean_drop'], unit=' pts')}"
    reading = c.get("reading") or (f"largest drop over widths, at {c['bits']} bits" if "bits" in c
                                   else "largest drop over widths")
    by = c["by_bits"].values()
    if all(v["ci_high"] <= 3 for v in by):
        return Ruling(ours, "reproduced", reading=reading)
    if any(v["ci_low"] > 5 for v in by):
        return Ruling(ours, "not reproduced", reading=reading)
    if c["mean_drop"]["ci_high"] <= 5:
        return Ruling(ours, "partly", reading=reading)
    return Ruling(ours, "inconclusive", f"the mean drop {_fmt(c['mean_drop'], unit=' pts')} reaches above 5 points "
                                        "while no width's drop is surely above 5", reading)


def verdict_c6(c: Mapping[str, Any]) -> Ruling:
    """**C6** (low gradient cosine, high structural similarity), each metric against its baseline: the
    stronger of chance (the same metric between mismatched images) and two independently seeded FP models
    on the same images, where measured. Structure holds if the HOG cosine exceeds that baseline by at least
    0.1 (lower bound), fails if by less (upper bound); low cosine holds if the mean cosine is at most 0.25
    (upper bound), fails if above (lower bound). *Reproduced* if both hold; *not reproduced* if structure
    fails; *partly* if structure holds and low cosine fails; else *inconclusive*."""
    baseline = c.get("baseline", "chance")
    ours = (f"cosine {_fmt(c['cosine'], digits=2)} (chance {c['cosine_null']['value']:.2f}); HOG cosine "
            f"{_fmt(c['hog'], digits=2)}, over {baseline} by {_fmt(c, digits=2)}")
    reading = c.get("reading") or f"HOG cosine over {baseline}"
    structure = above(c, 0.1)
    low_cos = above({"ci_low": -c["cosine"]["ci_high"], "ci_high": -c["cosine"]["ci_low"]}, -0.25)
    if structure is True and low_cos is True:
        return Ruling(ours, "reproduced", reading=reading)
    if structure is False:
        return Ruling(ours, "not reproduced", reading=reading)
    if structure is True and low_cos is False:
        return Ruling(ours, "partly", reading=reading)
    if structure is None:
        return Ruling(ours, "inconclusive", f"the HOG excess {_fmt(c, digits=2)} straddles 0.1", reading)
    return Ruling(ours, "inconclusive", f"the cosine {_fmt(c['cosine'], digits=2)} straddles 0.25", reading)


def _smallest_rise(c: Mapping[str, Any]) -> tuple[str, Mapping[str, float]]:
    return min(c["increase"].items(), key=lambda kv: kv[1]["value"])


def verdict_c7(c: Mapping[str, Any]) -> Ruling:
    """**C7** (each of A-QAPA, DBWT and GIR contributes): the fall of the mean robust accuracy on QADT-R's
    unseen threats over widths when a component is removed (points, paired intervals; collapsed widths left
    out); called its *rise* below, as for an attack's success. *Inconclusive* if an attack has not converged. A
    component *contributes* if its rise is above 0 (lower bound) and not below 2 points (upper bound at
    least 2); it is *negligible* if its rise is below 2 points (upper bound: a rise under 2 points, or a
    fall, is none); else it is unresolved. *Reproduced* if every component contributes; *not reproduced*
    if every one is negligible; *partly* if at least one contributes; else *inconclusive*."""
    inc = c["increase"]
    ours = "removing " + ", ".join(f"{k} {_fmt(v, unit=' pts')}" for k, v in inc.items())
    reading = c.get("reading") or f"removing {_smallest_rise(c)[0]} (the smallest rise)"

    def ruling(verdict: str, reason: str | None = None) -> Ruling:
        return Ruling(ours, verdict, reason, reading)

    if not converged(c):
        return ruling("inconclusive", _not_converged_reason(c))
    negligible = {k: v["ci_high"] < 2 for k, v in inc.items()}
    contributes = {k: v["ci_low"] > 0 and not negligible[k] for k, v in inc.items()}
    if all(contributes.values()):
        return ruling("reproduced")
    if all(negligible.values()):
        return ruling("not reproduced")
    if any(contributes.values()):
        return ruling("partly")
    unresolved = [f"{k} {_fmt(v, unit=' pts')}" for k, v in inc.items() if not negligible[k] and not contributes[k]]
    return ruling("inconclusive", "no component surely contributes; the rise straddles 0 and reaches 2 points for "
                                  + ", ".join(unresolved))


VERDICTS: dict[str, Callable[[Mapping[str, Any]], Ruling]] = {
    "C1": verdict_c1, "C2": verdict_c2, "C3": verdict_c3, "C4": verdict_c4, "C5": verdict_c5,
    "C6": verdict_c6, "C7": verdict_c7}


def rule_text(claim: str) -> str:
    """The verdict rule of ``claim`` as printed in the book."""
    return " ".join((VERDICTS[claim].__doc__ or "").split())


_ANY_FLAGS = ("lower_bound", "budget_exhausted")  # flags that hold for the aggregate if they hold for any seed
_DROP = object()


def _label(e: Mapping[str, Any]) -> str:
    seeds = e.get("seeds", [])
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def _is_interval(v: Any) -> bool:
    return isinstance(v, Mapping) and all(isinstance(v.get(k), (int, float)) and not isinstance(v.get(k), bool)
                                          for k in ("value", "ci_low", "ci_high"))


def _interval_over_seeds(ivs: list[Mapping[str, float]]) -> dict[str, float]:
    """Mean over seeds; the envelope of every seed's interval and the t interval across seeds."""
    values = [float(v["value"]) for v in ivs]
    t = across_seeds(values) if not any(math.isnan(x) for x in values) else None
    lows = [v for v in [*(float(iv["ci_low"]) for iv in ivs), t.low if t else math.nan] if not math.isnan(v)]
    highs = [v for v in [*(float(iv["ci_high"]) for iv in ivs), t.high if t else math.nan] if not math.isnan(v)]
    return {"value": t.value if t else math.nan, "ci_low": min(lows) if lows else math.nan,
            "ci_high": max(highs) if highs else math.nan}


def _merge(key: str, values: list[Any], labels: list[str]) -> Any:
    """One field over seeds by the rules of :func:`_aggregate` (``_DROP``: the field is left out)."""
    first = values[0]
    if all(isinstance(v, Mapping) for v in values):
        out: dict[str, Any] = {}
        if all(_is_interval(v) for v in values):
            out.update(_interval_over_seeds(values))
        for k in first:
            if k in out or not all(k in v for v in values):
                continue
            m = _merge(k, [v[k] for v in values], labels)
            if m is not _DROP:
                out[k] = m
        return out
    if all(isinstance(v, list) and v and all(isinstance(x, Mapping) and "name" in x for x in v) for v in values):
        by_name = [{x["name"]: x for x in v} for v in values]
        return [m for x in first if all(x["name"] in d for d in by_name)
                and (m := _merge(key, [d[x["name"]] for d in by_name], labels)) is not _DROP]
    if all(v == first for v in values):
        return first
    if all(isinstance(v, bool) for v in values):
        return any(values) if key in _ANY_FLAGS else all(values)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return min(values) if key == "n" else float(np.mean(values))
    if all(isinstance(v, str) for v in values):
        return "; ".join(f"{lab}: {v}" for lab, v in zip(labels, values))
    return _DROP


def _aggregate(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """One claim entry from several seeds' entries (:func:`judge` still rules on each seed's own entry,
    kept in ``per_seed``). Every interval (``value``, ``ci_low``, ``ci_high``), at any depth, becomes the
    mean over seeds with the envelope of every seed's interval and the Student-t interval across seeds
    (never narrower than one seed's). Lists of named entries (C1's readings) are matched by name, those
    missing from some seed left out; ``attack_strength`` keeps every seed's attacks, named with their seed,
    so that a claim is converged only if every seed's attacks are. A field equal in every seed is kept; a
    number that differs becomes the mean over seeds, except ``n``: the images per seed (the seeds reuse
    the images, so ``n`` is never summed), the smallest, with ``n_per_seed`` beside it; a flag that
    differs holds only if it holds for every seed (``lower_bound``, ``budget_exhausted``: for any seed);
    a label that differs lists each seed's; anything else that differs is left out."""
    if len(entries) == 1:
        return entries[0]
    labels = [_label(e) for e in entries]
    rest = [{k: v for k, v in e.items() if k not in ("attack_strength", "seeds", "per_seed")} for e in entries]
    out = _merge("", rest, labels)
    if any("attack_strength" in e for e in entries):
        out["attack_strength"] = [{**a, "name": f"{a['name']} ({lab})"}
                                  for e, lab in zip(entries, labels) for a in e.get("attack_strength", [])]
    ns = [int(e.get("n") or 0) for e in entries]
    out.update(seeds=sorted({s for e in entries for s in e.get("seeds", [])}), per_seed=entries, n=min(ns),
               n_per_seed=ns)
    return out


def load_claims(profile: str, root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every claim entry the chapters wrote at ``profile`` (``results/<chapter>/<profile>/claims*.json``),
    one per seed (a ``claims-seed<k>.json`` file wins over an unseeded ``claims.json`` for the same seeds),
    aggregated over seeds where several exist."""
    found: dict[str, dict[tuple, tuple[bool, dict[str, Any]]]] = {}
    for path in sorted((root or artifact_root()).glob(f"results/*/{profile}/claims*.json")):
        seeded = path.name.startswith("claims-seed")
        try:
            entries = read_json(path)
        except CorruptArtifact as e:
            log.warning("skipping %s: %s", path, e)
            continue
        for cid, entry in entries.items():
            key = tuple(entry.get("seeds", []))
            previous = found.setdefault(cid, {}).get(key)
            if previous is None or (seeded and not previous[0]):
                found[cid][key] = (seeded, entry)
    return {cid: _aggregate([e for _, e in by_seed.values()]) for cid, by_seed in found.items()}


def judge(claim: str, c: Mapping[str, Any]) -> Ruling:
    """``(ours, verdict)`` of a claim entry, a :class:`Ruling` (with ``reason`` and ``reading``); with several
    seeds, each seed is judged by the rule and the verdict stands only if every seed agrees (else
    *inconclusive*: the seeds disagree)."""
    ruled = VERDICTS[claim](c)
    if "per_seed" not in c:
        return ruled
    each = [VERDICTS[claim](e) for e in c["per_seed"]]
    verdicts = [r[1] for r in each]
    labels = [_label(e) for e in c["per_seed"]]
    verdict = verdicts[0] if len(set(verdicts)) == 1 else "inconclusive"
    ours = ruled[0] + f"; {len(each)} seeds, per-seed verdicts: {', '.join(verdicts)}"
    reason = None
    if len(set(verdicts)) > 1:
        reason = "the seeds disagree: " + ", ".join(f"{lab} {v}" for lab, v in zip(labels, verdicts))
    elif verdict == "inconclusive":
        reasons = [r.reason for r in each]
        reason = reasons[0] if len(set(reasons)) == 1 else "; ".join(f"{lab}: {r}" for lab, r in zip(labels, reasons))
    return Ruling(ours, verdict, reason, ruled.reading, ruled.headline)


# The question each claim answers, for a reader outside the project.
QUESTIONS: dict[str, str] = {
    "C1": "Do patches crafted on the full-precision model still fool 2-bit models more than 70 % of the time?",
    "C2": "Do pixel-level (PGD) attacks transfer across bit-widths worse than patches do?",
    "C3": "Does QADT-R beat PBAT and DWQ, by up to 25 points, on patches none of them trained on?",
    "C4": "Does PBAT resist the patches it trained on but not unseen ones?",
    "C5": "Does QADT-R keep the clean accuracy of the undefended model?",
    "C6": "Are input gradients of different bit-widths dissimilar in direction yet similar in structure?",
    "C7": "Does each of A-QAPA, DBWT and GIR add robustness?",
}
_ANSWERS = {"reproduced": "Yes, as the paper says", "not reproduced": "No, unlike the paper",
            "partly": "Partly", "inconclusive": "Not decided at this budget", "not measured": "Not measured yet"}


def answer(cid: str, c: Mapping[str, Any] | None) -> str:
    """A plain-language answer to the claim's question, computed from the same results and rule as its
    verdict: the verdict in words, what we measured (and on which reading), what the paper reports, and,
    where the verdict is *inconclusive*, why (the rule's reason)."""
    _, paper, _ = CLAIMS[cid]
    if c is None:
        return f"{_ANSWERS['not measured']}: no result of this claim at this profile (the paper: {paper})."
    ruled = judge(cid, c)
    reading = f" ({ruled.reading})" if ruled.reading else ""
    out = f"{_ANSWERS.get(ruled[1], ruled[1])}: we measured {ruled[0]}{reading}; the paper reports {paper}."
    if ruled.reason:
        out += f" Why: {ruled.reason}."
    return out


def scorecard(claims: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per claim C1..C7: the claim, its question and plain-language :func:`answer`, the paper's
    figure, ours with its interval, profile, n, seeds, verdict and chapter."""
    rows = []
    for cid, (text, paper, chapter) in CLAIMS.items():
        c = claims.get(cid)
        if c is None:
            ours, verdict, profile, n, seeds = "-", "not measured", "-", "-", "-"
        else:
            ours, verdict = judge(cid, c)
            profile, n, seeds = c.get("profile", "-"), c.get("n", "-"), ", ".join(map(str, c.get("seeds", [])))
        rows.append({"claim": cid, "statement": text, "question": QUESTIONS[cid], "answer": answer(cid, c),
                     "paper": paper, "ours": ours, "profile": profile, "n": n, "seeds": seeds, "verdict": verdict,
                     "chapter": chapter})
    return pd.DataFrame(rows)


def scorecard_record(claims: Mapping[str, dict[str, Any]], profile: str, commit: str) -> dict[str, Any]:
    """The committed ``scorecard.json``: one entry per measured claim with value, interval, n (images per
    seed), seeds, profile, verdict, rule, ``reading`` (which reading or attack the headline value is; C1: its
    strongest reading, marked as a lower bound while its attack has not converged), ``metric`` (what the
    rule reads), ``reason`` (why *inconclusive*; None otherwise) and the strength of every attack behind it."""
    out = {}
    for cid in CLAIMS:
        c = claims.get(cid)
        if c is None:
            continue
        ruled = judge(cid, c)
        value = c.get("value")
        if ruled.headline is not None:  # the rule chose the headline among several readings (C1: the strongest)
            value, lo, hi = (ruled.headline[k] for k in ("value", "ci_low", "ci_high"))
        elif value is None and cid == "C7":  # C7 has one interval per component: report the smallest rise
            _, comp = _smallest_rise(c)
            value, lo, hi = comp["value"], comp["ci_low"], comp["ci_high"]
        else:
            lo, hi = c.get("ci_low"), c.get("ci_high")
        out[cid] = {"value": value, "ci_low": lo, "ci_high": hi, "n": c.get("n"), "seeds": c.get("seeds", []),
                    "profile": c.get("profile", profile), "verdict": ruled[1], "rule": rule_text(cid),
                    "reading": ruled.reading, "metric": c.get("metric", METRICS[cid]), "reason": ruled.reason,
                    "answer": answer(cid, c),
                    "attack_strength": [{**{k: a[k] for k in ("name", "white_box_asr", "white_box_asr_half_steps",
                                                              "clean_floor", "steps")},
                                         "converged": _attack_problem(a) is None,
                                         **{k: a.get(k) for k in ("image_steps_run", "image_steps_full_budget")}}
                                        for a in c.get("attack_strength", [])]}
    return {"profile": profile, "commit": commit, "claims": out}


def write_scorecard(claims: Mapping[str, dict[str, Any]], profile: str, commit: str, path: Path) -> dict[str, Any]:
    """Write :func:`scorecard_record` to ``path`` atomically and return it."""
    record = scorecard_record(claims, profile, commit)
    write_json(Path(path), record)
    return record
