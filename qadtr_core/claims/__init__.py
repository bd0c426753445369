"""The paper's claims, one module per claim: its statement, its question, its measurement and its verdict
rule (the rule's docstring is the rule the scorecard prints).

- C1 :mod:`~qadtr_core.claims.c1_transfer`: :func:`c1_claim`, :func:`verdict_c1`
- C2 :mod:`~qadtr_core.claims.c2_pixel_transfer`: :func:`c2_claim`, :func:`verdict_c2`
- C3 :mod:`~qadtr_core.claims.c3_defense_gain`: :func:`c3_claim`, :func:`verdict_c3`
- C4 :mod:`~qadtr_core.claims.c4_pbat_gap`: :func:`c4_claim`, :func:`verdict_c4`
- C5 :mod:`~qadtr_core.claims.c5_clean_accuracy`: :func:`c5_claim`, :func:`verdict_c5`
- C6 :mod:`~qadtr_core.claims.c6_gradient_alignment`: :func:`c6_claim`, :func:`verdict_c6`
- C7 :mod:`~qadtr_core.claims.c7_ablation`: :func:`ablation_claim`, :func:`verdict_c7`
- B1 (beyond the paper) :mod:`~qadtr_core.claims.b1_certified`: :func:`b1_claim`, :func:`verdict_b1`

:mod:`~qadtr_core.claims.common` holds what the rules share (the :class:`Ruling`, intervals against
thresholds, convergence); :mod:`~qadtr_core.claims.defense_chapter` computes C3, C4 and C5 in one call;
:mod:`~qadtr_core.claims.scorecard` gathers the rules, aggregates seeds and writes ``scorecard.json``.
The names below are the package's public surface.
"""
from .b1_certified import b1_claim, verdict_b1
from .c1_transfer import PatchReading, c1_claim, verdict_c1
from .c2_pixel_transfer import c2_claim, verdict_c2
from .c3_defense_gain import c3_claim, verdict_c3
from .c4_pbat_gap import c4_claim, verdict_c4
from .c5_clean_accuracy import c5_claim, verdict_c5
from .c6_gradient_alignment import c6_claim, per_image_mean, verdict_c6
from .c7_ablation import ablation_claim, verdict_c7
from .common import (
    FINDINGS_ALLOWED,
    VERDICTS_ALLOWED,
    Ruling,
    above,
    claims_path,
    converged,
    corrected_level,
    interval,
    rate_interval,
    save_claims,
)
from .defense_chapter import defense_claims
from .scorecard import (
    BEYOND,
    CLAIMS,
    METRICS,
    QUESTIONS,
    VERDICTS,
    answer,
    judge,
    load_claims,
    rule_text,
    scorecard,
    scorecard_record,
    write_scorecard,
)

__all__ = [
    "BEYOND", "CLAIMS", "FINDINGS_ALLOWED", "METRICS", "QUESTIONS", "VERDICTS", "VERDICTS_ALLOWED", "PatchReading",
    "Ruling", "ablation_claim", "above", "answer", "b1_claim", "c1_claim", "c2_claim", "c3_claim", "c4_claim",
    "c5_claim", "c6_claim", "claims_path", "converged", "corrected_level", "defense_claims", "interval", "judge",
    "load_claims", "per_image_mean", "rate_interval", "rule_text", "save_claims", "scorecard", "scorecard_record",
    "verdict_b1", "verdict_c1", "verdict_c2", "verdict_c3", "verdict_c4", "verdict_c5", "verdict_c6", "verdict_c7",
    "write_scorecard",
]
