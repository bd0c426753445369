"""**C4**: PBAT resists seen patches but not unseen ones (the paper: 57.86 % seen vs 78.34 % unseen ASR at
2 bits), read as a generalisation gap on robust accuracy.

Measurement (:func:`c4_claim`): PBAT's generalisation gap (seen minus unseen robust accuracy, on the
**white-box** threats only) minus the same gap of the undefended QAT models under PBAT's definitions (a
10x10 patch is stronger for every model); ``pbat_gap`` (PBAT's own gap) is stored beside it, which the rule
requires to be positive. Points, paired bootstrap over the evaluation images; a width where PBAT or the
undefended model collapsed is left out. Rule: :func:`verdict_c4`.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ..evaluation.defense_metrics import (
    NAN_CI,
    ROBUST_ACCURACY,
    Stat,
    adaptive_names,
    attack_strength,
    bootstrap,
    ci,
    excluded_widths,
    mean_of,
    robust,
)
from ..evaluation.robustness import Evaluation, threat_kinds
from ..evaluation.threats import THREATS, PatchDistribution, Threat
from ..stats import wilson
from .c3_defense_gain import defends_given
from .common import Ruling, defense_claim_unreadable, fmt

ID = "C4"
STATEMENT = 'PBAT resists seen patches but not unseen ones'
PAPER = '57.86 % seen vs 78.34 % unseen at 2 bits'
CHAPTER = "02_defenses"
# The question the claim answers, for a reader outside the project.
QUESTION = 'Does PBAT resist the patches it trained on but not unseen ones?'
# What the rule reads (a claim entry's own ``metric`` field, where a chapter writes one, wins).
METRIC = 'robust accuracy over all evaluation images, white-box threats'


def c4_claim(ev: Evaluation, distributions: Mapping[str, PatchDistribution], bit_set: Sequence[int], meta: Mapping,
             undefended: str = "QAT (undefended)", n_boot: int = 2000, collapsed: Collection[tuple[str, int]] = (),
             defends: Mapping[str, bool] | None = None, threats: Sequence[Threat] = THREATS) -> dict[str, Any]:
    """The C4 entry (arguments as :func:`~qadtr_core.claims.c3_defense_gain.c3_claim`'s)."""
    pi, n, bits = ev.per_image, ev.n, list(bit_set)

    def gap(d: str, b: int) -> Stat:
        se = robust(pi, distributions, d, b, "seen", as_defense="PBAT", threats=threats, sources=("white-box",))
        un = robust(pi, distributions, d, b, "unseen", as_defense="PBAT", threats=threats, sources=("white-box",))
        return lambda idx: se(idx) - un(idx)

    out = excluded_widths(bits, ["PBAT", undefended], collapsed)
    kept = [b for b in bits if str(b) not in out]
    if kept:
        low = min(kept)
        pbat_gap, undef_gap = mean_of([gap("PBAT", b) for b in kept]), mean_of([gap(undefended, b) for b in kept])
        g = pi[(pi.defense == "PBAT") & (pi.bits == low)]
        kinds = threat_kinds(g, distributions, threats)
        source = {t.name: t.source for t in threats}
        wb = g.threat.map(source) == "white-box"
        ok = int(g[g.threat == g.threat.iloc[0]].clean_ok.sum())

        def asr_ci(kind: str) -> dict[str, float]:
            sub = g[(kinds == kind) & wb & g.clean_ok]
            k = int(round(sub.groupby("threat").broken.sum().mean())) if len(sub) else 0
            w = wilson(k, ok)
            return {"value": 100 * w.value, "ci_low": 100 * w.low, "ci_high": 100 * w.high}

        def robust_ci(kind: str) -> dict[str, float]:
            return ci(bootstrap(robust(pi, distributions, "PBAT", low, kind, threats=threats, sources=("white-box",)),
                                n, n_boot))

        c4 = {**ci(bootstrap(lambda idx: pbat_gap(idx) - undef_gap(idx), n, n_boot)),
              "at_low_bits": {"bits": low, **ci(bootstrap(lambda idx: gap("PBAT", low)(idx) - gap(undefended, low)(idx),
                                                          n, n_boot))},
              "pbat_gap": ci(bootstrap(pbat_gap, n, n_boot)), "undefended_gap": ci(bootstrap(undef_gap, n, n_boot)),
              "seen_low": asr_ci("seen"), "unseen_low": asr_ci("unseen"),
              "seen_low_robust": robust_ci("seen"), "unseen_low_robust": robust_ci("unseen")}
    else:
        c4 = {**NAN_CI, "at_low_bits": {"bits": min(bits), **NAN_CI}, "pbat_gap": dict(NAN_CI),
              "undefended_gap": dict(NAN_CI), "seen_low": dict(NAN_CI), "unseen_low": dict(NAN_CI),
              "seen_low_robust": dict(NAN_CI), "unseen_low_robust": dict(NAN_CI)}
    c4.update({"excluded_bits": out, "defends": defends_given(["PBAT"], collapsed, defends),
               "threats": "white-box only", "n": n, "seeds": list(meta["seeds"]), "profile": meta["profile"],
               "metric": ROBUST_ACCURACY,
               "attack_strength": attack_strength(ev, ["PBAT", undefended],
                                                  exclude=adaptive_names(threats) + [t.name for t in threats
                                                                                     if t.source != "white-box"],
                                                  collapsed=collapsed)})
    return c4


def verdict_c4(c: Mapping[str, Any]) -> Ruling:
    """**C4** (PBAT resists seen patches, not unseen ones) as a generalisation gap: PBAT's seen-minus-unseen
    robust-accuracy gap on white-box threats minus the same gap of the undefended model (points, paired
    intervals). *Inconclusive* if an
    attack has not converged, or if PBAT does not beat its undefended start on its own seen threat
    (``defends``). A relative gap is credited only where PBAT's own gap (``pbat_gap``) is above 0 (lower
    bound). Then, in this order (disjoint regions): *reproduced* if credited and the relative gap at
    the lowest width is at least 10 points (lower bound; the paper's is about 20); *not reproduced* if the
    mean relative gap over widths is below 3 points and the lowest width's below 10 (whole intervals: a gap
    that small is none, even if above 0), or if PBAT's own gap is below 0 (upper bound: PBAT resists its seen
    patch no better than the unseen ones, whatever the undefended model does); *partly* if credited and the
    mean is above 0 (lower bound); else *inconclusive*."""
    low = c["at_low_bits"]
    bits = low.get("bits", "?")
    ours = f"relative gap, mean over widths {fmt(c, unit=' pts')}; at {bits} bits {fmt(low, unit=' pts')}"
    if c.get("pbat_gap") is not None:  # the rule reads it too: a reader sees why a large relative gap may not count
        ours += f"; PBAT's own seen-minus-unseen gap {fmt(c['pbat_gap'], unit=' pts')}"
    reading = c.get("reading") or "mean relative gap over widths"

    def ruling(verdict: str, reason: str | None = None) -> Ruling:
        return Ruling(ours, verdict, reason, reading)

    if unreadable := defense_claim_unreadable(c):
        return ruling("inconclusive", unreadable)
    own = c.get("pbat_gap")
    credited = own is None or own["ci_low"] > 0  # PBAT's own gap must be positive before a relative gap counts
    if credited and low["ci_low"] >= 10:
        return ruling("reproduced")
    if c["ci_high"] < 3 and low["ci_high"] < 10:
        return ruling("not reproduced")
    if own is not None and own["ci_high"] < 0:  # PBAT resists its seen patch no better than the unseen ones
        return ruling("not reproduced")
    if credited and c["ci_low"] > 0:
        return ruling("partly")
    if not credited:
        return ruling("inconclusive", f"PBAT's own gap {fmt(own, unit=' pts')} is not above 0: no gap to credit")
    if c["ci_high"] >= 3:
        return ruling("inconclusive", f"the mean gap {fmt(c, unit=' pts')} straddles 0 and reaches 3 points")
    return ruling("inconclusive", f"the mean gap is below 3 points, but the gap at {bits} bits "
                                  f"{fmt(low, unit=' pts')} straddles 10 points")
