"""**B1** (beyond the paper): quantization to the lowest width keeps the robustness that can be *proven*
against a patch anywhere in the image (PatchCleanser's certificate, chapter 09).

The paper reports attacked (upper-bound) numbers only. This claim reads the other side of chapter 09's
bracket, the certified robust accuracy, which no attack can lower: it needs no attack to converge.

Measurement (:func:`b1_claim`): on the same images, for the per-width masking-fine-tuned models at the
chapter's largest patch size, the certified robust accuracy at the highest width certified (full precision,
32 bits, in every profile of the study) minus that at the lowest width (points, paired bootstrap over the
images); each width's certified and attacked robust accuracy beside it, and the multi-width model's drop
where it was certified. Rule: :func:`verdict_b1`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..stats import paired_bootstrap, wilson
from .common import Ruling, fmt

ID = "B1"
STATEMENT = ("Beyond the paper: quantization to the lowest width keeps certified robustness against a patch anywhere "
             "(PatchCleanser)")
PAPER = "not studied by the paper (attacked upper bounds only)"
CHAPTER = "09_certified"
# The question the claim answers, for a reader outside the project.
QUESTION = "Can as much robustness to a patch be proven at 2 bits as at full precision?"
# What the rule reads (a claim entry's own ``metric`` field, where a chapter writes one, wins).
METRIC = "certified robust accuracy of double masking over all evaluation images"
# The drop (points) below which the lowest width keeps the full-precision certified accuracy, and the least
# certified accuracy at full precision for there to be anything to keep (both fixed before any result).
KEEP_POINTS = 5.0
LEAST_CERTIFIED = 0.05


def _per_image(per_image: pd.DataFrame, model: str, bits: int, patch: int, field: str) -> np.ndarray:
    g = per_image[(per_image.model == model) & (per_image.bits == bits) & (per_image.patch == patch)]
    if g.empty:
        raise ValueError(f"no certified results for {model!r} at {bits} bits and a {patch} px patch")
    return g.sort_values("image")[field].to_numpy(float)


def _rate(v: np.ndarray) -> dict[str, float]:
    w = wilson(int(v.sum()), len(v))
    return {"value": w.value, "ci_low": w.low, "ci_high": w.high}


def b1_claim(per_image: pd.DataFrame, profile: str, seeds: Sequence[int], patch: int | None = None,
             model: str = "per-width", multiwidth: str = "multi-width", n_boot: int = 2000) -> dict[str, Any]:
    """The B1 entry from chapter 09's per-image table (:attr:`~qadtr_core.certified_study.CertifiedTable.per_image`):
    ``value`` = certified robust accuracy at the highest width minus at the lowest (points, paired
    bootstrap), at ``patch`` px (default: the largest size certified)."""
    patch = int(patch if patch is not None else per_image.patch.max())
    widths = sorted({int(b) for b in per_image.bits[(per_image.model == model) & (per_image.patch == patch)]},
                    reverse=True)
    if len(widths) < 2:
        raise ValueError(f"B1 compares two widths; {model!r} was certified at {widths} for a {patch} px patch")
    high, low = widths[0], widths[-1]

    def drop(name: str) -> dict[str, float]:
        a, b = (_per_image(per_image, name, w, patch, "certified") for w in (high, low))
        iv = paired_bootstrap(a, b, n_boot=n_boot)
        return {"value": 100 * iv.value, "ci_low": 100 * iv.low, "ci_high": 100 * iv.high}

    by_bits = {str(w): {"certified": _rate(_per_image(per_image, model, w, patch, "certified")),
                        "attacked_robust": _rate(_per_image(per_image, model, w, patch, "attacked_robust")),
                        "masked_clean": _rate(_per_image(per_image, model, w, patch, "masked_clean"))}
               for w in widths}
    out: dict[str, Any] = {**drop(model), "high_bits": high, "low_bits": low, "patch": patch, "model": model,
                           "by_bits": by_bits, "n": int(len(_per_image(per_image, model, high, patch, "certified"))),
                           "seeds": list(seeds), "profile": profile, "metric": METRIC,
                           "measure": f"certified robust accuracy at {high} bits minus at {low} bits, {patch} px patch, "
                                      f"{model} models (points, paired bootstrap)"}
    mw = per_image[(per_image.model == multiwidth) & (per_image.patch == patch)]
    if {high, low} <= {int(b) for b in mw.bits}:
        out["multiwidth"] = drop(multiwidth)
    return out


def verdict_b1(c: Mapping[str, Any]) -> Ruling:
    """**B1** (beyond the paper: quantization to the lowest width keeps certified robustness): d = certified
    robust accuracy at full precision minus at the lowest width (points, paired interval; a certificate is a
    proof, so no attack convergence enters). In this order (disjoint regions): *inconclusive* if the
    full-precision certified accuracy is not above 5 % (lower bound: there is nothing certified to keep, and a
    model that certifies nothing would keep it trivially); *does not hold* if d is at least 5 points (lower
    bound); *holds* if d is below 5 points (upper bound; a gain counts as keeping); else *inconclusive* (d
    straddles 5 points)."""
    hi, lo = str(c["high_bits"]), str(c["low_bits"])
    cert_hi = c["by_bits"][hi]["certified"]
    ours = (f"certified {fmt(cert_hi, 100, ' %')} at {hi} bits, {fmt(c['by_bits'][lo]['certified'], 100, ' %')} at {lo} "
            f"bits ({c['patch']} px patch); drop {fmt(c, unit=' pts')}")
    if "multiwidth" in c:
        ours += f"; multi-width model: drop {fmt(c['multiwidth'], unit=' pts')}"
    reading = f"{c.get('model', 'per-width')} models, {c['patch']} px patch, {hi} vs {lo} bits"
    if not cert_hi["ci_low"] > LEAST_CERTIFIED:
        return Ruling(ours, "inconclusive", f"the full-precision model certifies {fmt(cert_hi, 100, ' %')}: not above "
                                            f"{100 * LEAST_CERTIFIED:g} %, nothing to keep", reading)
    if c["ci_low"] >= KEEP_POINTS:
        return Ruling(ours, "does not hold", reading=reading)
    if c["ci_high"] < KEEP_POINTS:
        return Ruling(ours, "holds", reading=reading)
    return Ruling(ours, "inconclusive", f"the drop {fmt(c, unit=' pts')} straddles {KEEP_POINTS:g} points", reading)
