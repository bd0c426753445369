"""**C7**: each of A-QAPA, DBWT and GIR contributes (the paper publishes no ablation figure).

Measurement (:func:`ablation_claim`): the drop of the mean unseen robust accuracy over widths when a
component is removed (QADT-R's unseen threats for every variant, so that all variants meet the same
threats), stored as ``increase`` (positive = the component helped); widths where the full model or the
variant collapsed are left out of that component's mean. Rule: :func:`verdict_c7`.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ..evaluation.defense_metrics import (
    NAN_CI,
    ROBUST_ACCURACY,
    adaptive_names,
    attack_strength,
    bootstrap,
    ci,
    excluded_widths,
    mean_of,
    robust,
)
from ..evaluation.robustness import Evaluation
from ..evaluation.threats import THREATS, PatchDistribution, Threat
from .c3_defense_gain import defends_given
from .common import Ruling, defense_claim_unreadable, fmt, widened

ID = "C7"
STATEMENT = 'Each of A-QAPA, DBWT and GIR contributes'
PAPER = 'not published'
CHAPTER = "03_ablations"
# The question the claim answers, for a reader outside the project.
QUESTION = 'Does each of A-QAPA, DBWT and GIR add robustness?'
# What the rule reads (a claim entry's own ``metric`` field, where a chapter writes one, wins).
METRIC = 'robust accuracy over all evaluation images (collapsed widths left out)'


def ablation_claim(ev: Evaluation, distributions: Mapping[str, PatchDistribution], bit_set: Sequence[int],
                   meta: Mapping, full: str = "QADT-R", removed: Mapping[str, str] | None = None,
                   n_boot: int = 2000, collapsed: Collection[tuple[str, int]] = (),
                   threats: Sequence[Threat] = THREATS, defends: Mapping[str, bool] | None = None) -> dict[str, dict]:
    """C7: drop of the mean unseen robust accuracy over widths when each component is removed (QADT-R's
    unseen threats), as ``increase`` (positive = the component helped); widths where the full model or
    the variant collapsed are left out of that component's mean (NaN if all are). ``defends``
    (:func:`~qadtr_core.evaluation.defense_metrics.defends_of`): whether the full model beats its undefended
    start; C7 carries it for the full model only (a variant that does not defend is a finding)."""
    removed = removed or {"A-QAPA": "without A-QAPA", "DBWT": "without DBWT", "GIR": "without GIR"}
    pi, bits = ev.per_image, list(bit_set)
    inc, inc_c, excluded = {}, {}, {}
    corrected = 1 - 0.05 / max(1, len(removed))  # "at least one component contributes": Bonferroni over them
    for comp, name in removed.items():
        out = excluded_widths(bits, [full, name], collapsed)
        kept = [b for b in bits if str(b) not in out]
        if out:
            excluded[comp] = out
        if not kept:
            inc[comp], inc_c[comp] = dict(NAN_CI), dict(NAN_CI)
            continue
        base = mean_of([robust(pi, distributions, full, b, "unseen", threats=threats) for b in kept])
        var = mean_of([robust(pi, distributions, name, b, "unseen", as_defense=full, threats=threats) for b in kept])
        rise = lambda idx, var=var, base=base: base(idx) - var(idx)  # noqa: E731
        inc[comp] = ci(bootstrap(rise, ev.n, n_boot))
        inc_c[comp] = ci(bootstrap(rise, ev.n, n_boot, level=corrected))
    return {"C7": {"increase": inc, "increase_corrected": inc_c, "excluded_bits": excluded, "n": ev.n,
                   "seeds": list(meta["seeds"]), "profile": meta["profile"], "metric": ROBUST_ACCURACY,
                   "defends": defends_given([full], collapsed, defends),
                   "attack_strength": attack_strength(ev, [full, *removed.values()], exclude=adaptive_names(threats),
                                                      collapsed=collapsed)}}


def smallest_rise(c: Mapping[str, Any]) -> tuple[str, Mapping[str, float]]:
    return min(c["increase"].items(), key=lambda kv: kv[1]["value"])


def verdict_c7(c: Mapping[str, Any]) -> Ruling:
    """**C7** (each of A-QAPA, DBWT and GIR contributes): the fall of the mean robust accuracy on QADT-R's
    unseen threats over widths when a component is removed (points, paired intervals; collapsed widths left
    out); called its *rise* below, as for an attack's success. *Inconclusive* if an attack has not converged, or
    if the full model does not beat its undefended start on its own seen threat (``defends``: removing a part
    of a defense that does not defend shows nothing, and a model near chance loses nothing by it). A
    component *contributes* if its rise is above 0 (lower bound) and not below 2 points (upper bound at
    least 2); it is *negligible* if its rise is below 2 points (upper bound: a rise under 2 points, or a
    fall, is none); else it is unresolved. *Reproduced* if every component contributes; *not reproduced*
    if every one is negligible; *partly* if at least one contributes on its interval Bonferroni-corrected for
    the number of components (``increase_corrected``; the rule takes the best of them); else *inconclusive*."""
    inc = c["increase"]
    ours = "removing " + ", ".join(f"{k} {fmt(v, unit=' pts')}" for k, v in inc.items())
    reading = c.get("reading") or f"removing {smallest_rise(c)[0]} (the smallest rise)"

    def ruling(verdict: str, reason: str | None = None) -> Ruling:
        return Ruling(ours, verdict, reason, reading)

    why = defense_claim_unreadable(c)
    if why:
        return ruling("inconclusive", why)
    negligible = {k: v["ci_high"] < 2 for k, v in inc.items()}
    contributes = {k: v["ci_low"] > 0 and not negligible[k] for k, v in inc.items()}
    if all(contributes.values()):
        return ruling("reproduced")
    if all(negligible.values()):
        return ruling("not reproduced")
    corrected = c.get("increase_corrected") or {k: widened(v, 1 - 0.05 / max(1, len(inc))) for k, v in inc.items()}
    if any(v["ci_low"] > 0 and not negligible[k] for k, v in corrected.items()):
        return ruling("partly")
    unresolved = [f"{k} {fmt(v, unit=' pts')}" for k, v in inc.items() if not negligible[k] and not contributes[k]]
    return ruling("inconclusive", "no component surely contributes; the rise straddles 0 and reaches 2 points for "
                                  + ", ".join(unresolved))
