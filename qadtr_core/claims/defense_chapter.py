"""The claims the defenses chapter writes, C3, C4 and C5, in one call."""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import pandas as pd

from ..evaluation.robustness import Evaluation
from ..evaluation.threats import THREATS, PatchDistribution, Threat
from .c3_defense_gain import c3_claim
from .c4_pbat_gap import c4_claim
from .c5_clean_accuracy import c5_claim


def defense_claims(ev: Evaluation, clean: pd.DataFrame, distributions: Mapping[str, PatchDistribution],
                   bit_set: Sequence[int], meta: Mapping, undefended: str = "QAT (undefended)",
                   multiwidth: str = "multi-width (undefended)", ours: str = "QADT-R",
                   baselines: Sequence[str] = ("PBAT", "DWQ"), n_boot: int = 2000,
                   collapsed: Collection[tuple[str, int]] = (), defends: Mapping[str, bool] | None = None,
                   threats: Sequence[Threat] = THREATS, eval_bits: Sequence[int] | None = None) -> dict[str, dict]:
    """C3, C4 and C5 in the scorecard's layout (:func:`~qadtr_core.claims.c3_defense_gain.c3_claim`,
    :func:`~qadtr_core.claims.c4_pbat_gap.c4_claim`, :func:`~qadtr_core.claims.c5_clean_accuracy.c5_claim`).
    C3 and C4 read the widths the threats were evaluated at, ``eval_bits`` (``Study.eval_bits``; default
    ``bit_set``), C5 (clean accuracy) every width of ``bit_set``. A collapse at a width the threats did not
    attack gates neither C3 nor C4 (the defends table, their other gate, reads the attacked widths too)."""
    attacked = list(bit_set if eval_bits is None else eval_bits)
    collapsed = {(d, b) for d, b in collapsed if int(b) in attacked}
    return {"C3": c3_claim(ev, distributions, attacked, meta, ours=ours, baselines=baselines, n_boot=n_boot,
                           collapsed=collapsed, defends=defends, threats=threats),
            "C4": c4_claim(ev, distributions, attacked, meta, undefended=undefended, n_boot=n_boot, collapsed=collapsed,
                           defends=defends, threats=threats),
            "C5": c5_claim(clean, bit_set, meta, multiwidth=multiwidth, ours=ours, n_boot=n_boot)}
