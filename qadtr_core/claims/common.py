"""What every claim module shares: the verdict a rule returns (:class:`Ruling`), reading an interval
against a threshold, whether the attacks behind a claim converged, the gate of the defense claims, the
interval layout of a claim entry, and where a chapter writes its entries.

Rates are fractions, differences are in their own units, every interval is 95 % unless its name says it
is corrected (Bonferroni-corrected for the number of readings or widths a rule picks the best of).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from statistics import NormalDist
from typing import Any

from ..artifacts import artifact_root, write_json
from ..evaluation.strength import not_converged_reason
from ..evaluation.transfer import Outcomes, rate_of
from ..stats import Z95, Interval, wilson

VERDICTS_ALLOWED = ("reproduced", "partly", "not reproduced", "inconclusive")
# The verdicts of a question beyond the paper (B claims): there is no paper figure to reproduce, so the rule
# says whether the stated hypothesis holds.
FINDINGS_ALLOWED = ("holds", "does not hold", "inconclusive")


ASR = "ASR over clean-correct images"


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
        if verdict not in (*VERDICTS_ALLOWED, *FINDINGS_ALLOWED):
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


CHANCE = 0.10  # clean accuracy of a guess among CIFAR-10's ten classes
WORKING_MARGIN = 0.10  # a working classifier's clean accuracy lies surely more than this above chance


def near_chance(acc: Mapping[str, float]) -> bool:
    """Whether a clean-accuracy interval (fractions) fails to lie surely above chance plus
    :data:`WORKING_MARGIN` (its lower bound <= 20 % on CIFAR-10). ASR over the few clean-correct images of
    a model that close to chance says nothing about attacks on working networks, so no claim reads it."""
    return acc["ci_low"] <= CHANCE + WORKING_MARGIN


def above(iv: Mapping[str, float], threshold: float) -> bool | None:
    """True if the whole interval is at or above ``threshold``, False if wholly below, None if it straddles."""
    if iv["ci_low"] >= threshold:
        return True
    if iv["ci_high"] < threshold:
        return False
    return None


def attack_problem(a: Mapping[str, Any]) -> str | None:
    """Why one ``attack_strength`` record is not converged (None if it is), by :mod:`qadtr_core.evaluation.strength`."""
    return not_converged_reason(a["white_box_asr"], a.get("white_box_asr_half_steps"), clean_floor=a.get("clean_floor", 0.0),
                                n=a.get("n", 0), checkpoint_linf=a.get("checkpoint_linf"))


def unconverged(claim: Mapping[str, Any]) -> list[str]:
    """``"<attack>: <why>"`` for every attack behind the claim that has not converged."""
    return [f"{a['name']}: {why}" for a in claim.get("attack_strength", []) if (why := attack_problem(a))]


def converged(claim: Mapping[str, Any]) -> bool:
    """Every attack behind the claim converged (a claim without attacks counts as converged)."""
    return not unconverged(claim)


def unconverged_reason(claim: Mapping[str, Any]) -> str:
    return "not converged: " + "; ".join(unconverged(claim))


def _not_defending(c: Mapping[str, Any]) -> str | None:
    """Why a defense claim cannot be read: the defenses of ``defends`` that do not beat their start (or None)."""
    weak = [d for d, ok in c.get("defends", {}).items() if not ok]
    return f"{', '.join(weak)} does not beat its undefended start on its own seen threat" if weak else None


def defense_claim_unreadable(c: Mapping[str, Any]) -> str | None:
    """Why a claim that compares defenses cannot be read at all (an unconverged attack, or a defense that
    does not beat its start), or None: the gate of C3 and C4."""
    return unconverged_reason(c) if not converged(c) else _not_defending(c)


def fmt(iv: Mapping[str, float], scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
    v, lo, hi = (scale * iv[k] for k in ("value", "ci_low", "ci_high"))
    return f"{v:.{digits}f}{unit} [{lo:.{digits}f}, {hi:.{digits}f}]"


def z_of(level: float) -> float:
    return NormalDist().inv_cdf(1 - (1 - level) / 2)


def widened(iv: Mapping[str, float], level: float) -> dict[str, float]:
    """A 95 % interval widened to ``level`` on each side by the normal ratio of quantiles (for entries
    written before the corrected interval was stored; the stored one, where present, is always read)."""
    r = z_of(level) / Z95
    v = iv["value"]
    return {"value": v, "ci_low": v - r * (v - iv["ci_low"]), "ci_high": v + r * (iv["ci_high"] - v)}


def interval(iv: Interval) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high"}`` of an interval (the layout of every claim entry)."""
    return {"value": float(iv.value), "ci_low": float(iv.low), "ci_high": float(iv.high)}


def rate_interval(outcomes: Outcomes, level: float = 0.95) -> Interval:
    """Wilson interval of the rate of per-image outcomes."""
    z = Z95 if level == 0.95 else NormalDist().inv_cdf(1 - (1 - level) / 2)
    return wilson(*rate_of(outcomes), z=z)


def corrected_level(n_tried: int, level: float = 0.95) -> float:
    """The Bonferroni-corrected level of each of ``n_tried`` intervals whose best one is picked (95 %
    over the family: 1 - 0.05 / n_tried each)."""
    return 1 - (1 - level) / max(1, int(n_tried))


def claims_path(chapter: str, profile: str, seed: int, root: Path | None = None) -> Path:
    """Where a chapter writes its claim entries for one seed."""
    return (root or artifact_root()) / "results" / chapter / profile / f"claims-seed{seed}.json"


def save_claims(chapter: str, profile: str, seed: int, claims: Mapping[str, dict]) -> Path:
    """Write a chapter's claim entries (atomically) for :func:`qadtr_core.claims.scorecard.load_claims`."""
    path = claims_path(chapter, profile, seed)
    write_json(path, dict(claims))
    return path
