"""**C1**: patches transfer from the FP model to the lowest-width QAT model with ASR > 70 % (the paper:
73.08 % on 2-bit ResNet-56).

Measurement (:func:`c1_claim`): every *reading* of the claim (targeted or untargeted, universal or per-image
patch) gives its FP -> lowest-width ASR with a Wilson interval and its excess over its null floor with a
paired bootstrap interval, each also at the level Bonferroni-corrected for the number of readings (the level
the rule reads); the headline is the strongest reading, a lower bound while its attack has not converged.
Rule: :func:`verdict_c1`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..evaluation.strength import AttackStrength
from ..evaluation.transfer import Outcomes, rate_of
from ..stats import Interval, paired_bootstrap, wilson
from .common import (
    Ruling,
    above,
    attack_problem,
    corrected_level,
    fmt,
    interval,
    near_chance,
    rate_interval,
    widened,
    z_of,
)

ID = "C1"
STATEMENT = 'Patches transfer from FP to QAT models with ASR > 70 % even at 2 bits'
PAPER = '> 70 % (73.08 % on 2-bit ResNet-56)'
CHAPTER = "01_transferability"
# The question the claim answers, for a reader outside the project.
QUESTION = 'Do patches crafted on the full-precision model still fool 2-bit models more than 70 % of the time?'
# What the rule reads (a claim entry's own ``metric`` field, where a chapter writes one, wins).
METRIC = 'ASR over clean-correct images (targeted readings: over images not of the target class)'


@dataclass
class PatchReading:
    """One reading of C1: a patch attack crafted on FP, its floor and its transfer to the lowest width.

    Attributes:
        name: e.g. "universal 6x6, targeted (airplane)".
        white_box: outcomes on the FP model it was crafted on.
        transfer: outcomes on the lowest-width QAT model.
        floor: outcomes of the reading's null attack on the lowest-width model under the same definition
            (:func:`~qadtr_core.evaluation.transfer.random_patch_floor`: a random patch of the same size at
            the same places; targeted, or the clean images already called the target where that is
            higher); None: a floor of 0.
        strength: the attack's white-box strength (converged or not).
    """

    name: str
    white_box: Outcomes
    transfer: Outcomes
    floor: Outcomes | None
    strength: AttackStrength

    def excess_over_floor(self, seed: int = 0, level: float = 0.95) -> Interval:
        hits, valid = self.transfer
        if self.floor is None:
            return rate_interval(self.transfer, level)
        return paired_bootstrap(hits, self.floor[0], valid_a=valid, valid_b=self.floor[1], seed=seed, level=level)

    def entry(self) -> dict[str, Any]:
        floor = 0.0 if self.floor is None else rate_interval(self.floor).value
        return {"name": self.name, "white_box": interval(rate_interval(self.white_box)),
                "transfer": interval(rate_interval(self.transfer)), "floor": floor,
                "excess_over_floor": interval(self.excess_over_floor()), "converged": self.strength.converged,
                "steps": self.strength.steps, "n": rate_of(self.transfer)[1]}


def c1_claim(readings: Sequence[PatchReading], low: str, profile: str, seeds: Sequence[int], *,
             target_clean: Interval) -> dict[str, Any]:
    """The C1 entry: ``target_clean``, the clean accuracy of the lowest-width model on the evaluation
    images (so that the rule never reads a model that close to chance, :func:`~.common.near_chance`); every
    reading, each with its transfer ASR and its excess over its floor also at the level Bonferroni-corrected
    for the number of readings (``transfer_corrected``, ``excess_over_floor_corrected``); and as the
    headline (``value``, ``ci_low``, ``ci_high``, at that corrected level) the *strongest* reading: the
    highest corrected lower bound of its transfer ASR (ties: the higher point value), converged or not.
    ``lower_bound`` is True while its attack has not converged (a stronger attack reaches at least as much)."""
    if not readings:
        raise ValueError("C1 needs at least one patch reading")
    level = corrected_level(len(readings))
    entries = []
    for r in readings:
        e = r.entry()
        e["transfer_corrected"] = interval(rate_interval(r.transfer, level))
        e["excess_over_floor_corrected"] = interval(r.excess_over_floor(level=level))
        entries.append(e)
    best = max(entries, key=lambda e: (e["transfer_corrected"]["ci_low"], e["transfer"]["value"]))
    return {**best["transfer_corrected"], "reading": best["name"], "lower_bound": not best["converged"],
            "readings": entries, "n": best["n"], "seeds": list(seeds), "profile": profile, "threshold": 0.70,
            "target": low, "target_clean": interval(target_clean), "level": level,
            "attack_strength": [r.strength.record() for r in readings],
            "measure": f"ASR of patches crafted on the FP model, evaluated on the {low} QAT model "
                       f"(interval at {100 * level:.4g} %, Bonferroni-corrected for {len(readings)} readings)"}


def _c1_intervals(r: Mapping[str, Any], level: float) -> tuple[dict[str, float], dict[str, float]]:
    """A C1 reading's transfer ASR and its excess over its floor, both at the corrected ``level``."""
    transfer = r.get("transfer_corrected")
    if transfer is None:
        n = int(r.get("n") or 0)
        w = wilson(min(n, round(r["transfer"]["value"] * n)), n, z=z_of(level)) if n else None
        transfer = {"value": r["transfer"]["value"], "ci_low": w.low, "ci_high": w.high} if w else \
            {"value": math.nan, "ci_low": 0.0, "ci_high": 1.0}
    excess = r.get("excess_over_floor_corrected") or widened(r["excess_over_floor"], level)
    return transfer, excess


def verdict_c1(c: Mapping[str, Any]) -> Ruling:
    """**C1** (patch ASR from FP to the lowest-width QAT model > 70 %), over its k readings (targeted and
    untargeted, universal and per-image patches). Every interval is Bonferroni-corrected for the k readings
    (each at 1 - 0.05/k): the Wilson interval of a reading's ASR and the paired interval of its excess over
    its null floor (a random patch of its size at its places; targeted, or the clean images already called
    the target where that is higher). A reading *clears* 70 % if its ASR's lower bound is at least 70 % and
    its excess's lower bound is above 0. First, *inconclusive* if the lowest-width model's clean accuracy is
    near chance (``target_clean``, :func:`~.common.near_chance`; an entry without it is not checked): a
    broken model neither refutes nor supports the claim. Then *reproduced* if some reading clears 70 %,
    converged or not (an ASR is a lower bound on what a stronger attack reaches). Otherwise *inconclusive*
    if some reading's ASR interval straddles 70 %, or some reading lies above 70 % without clearing its
    floor (random patches already break the model that often), or some reading's attack has not converged
    (an attack no stronger white-box than its null, on the model it was crafted on, has not converged:
    :func:`~qadtr_core.evaluation.strength.not_converged_reason`). Otherwise (every reading wholly below
    70 %, every attack converged) *partly* if some reading beats its floor by at least 10 points (lower
    bound: patches transfer, weaker than claimed), else *not reproduced*. The headline is the strongest
    reading (the highest lower bound), a lower bound while its attack has not converged."""
    readings = c["readings"]
    k = len(readings)
    level = 1 - 0.05 / max(1, k)
    records = {a["name"]: a for a in c.get("attack_strength", [])}

    def problem(r: Mapping[str, Any]) -> str | None:
        rec = records.get(r["name"])
        why = attack_problem(rec) if rec is not None else None
        return why or (None if r.get("converged") else "not converged")

    ivs = {r["name"]: _c1_intervals(r, level) for r in readings}
    chosen = max(readings, key=lambda r: (ivs[r["name"]][0]["ci_low"], r["transfer"]["value"]))
    headline = ivs[chosen["name"]][0]
    lower = problem(chosen) is not None
    reading = chosen["name"] + (" (lower bound: its attack has not converged)" if lower else "")
    ours = (f"{fmt(headline, 100, ' %')} ({chosen['name']}{', a lower bound' if lower else ''}, white-box "
            f"{fmt(chosen['white_box'], 100, ' %')}); strongest of {k} readings, intervals at {100 * level:.4g} %")

    def ruling(verdict: str, reason: str | None = None) -> Ruling:
        return Ruling(ours, verdict, reason, reading, headline)

    if (clean := c.get("target_clean")) is not None and near_chance(clean):
        return ruling("inconclusive", f"the {c.get('target', 'lowest-width')} model's clean accuracy, "
                                      f"{fmt(clean, 100, ' %')}, is near chance: it is no working network to transfer to")
    if any(t["ci_low"] >= 0.70 and e["ci_low"] > 0 for t, e in ivs.values()):
        return ruling("reproduced")
    straddle = [f"{name} {fmt(t, 100, ' %')} straddles 70 %" for name, (t, _) in ivs.items() if above(t, 0.70) is None]
    at_floor = [f"{name} is above 70 % but not above its floor (excess {fmt(e, 100, ' pts')})"
                for name, (t, e) in ivs.items() if above(t, 0.70) is True]
    if straddle or at_floor:
        return ruling("inconclusive", "; ".join(straddle + at_floor))
    stalled = [f"{r['name']}: {problem(r)}" for r in readings if problem(r)]
    if stalled:
        return ruling("inconclusive", "below 70 %, but not converged: " + "; ".join(stalled))
    if any(e["ci_low"] >= 0.10 for _, e in ivs.values()):
        return ruling("partly")
    return ruling("not reproduced")
