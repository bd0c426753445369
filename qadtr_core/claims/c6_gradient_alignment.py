"""**C6**: input gradients across bit-widths have a low cosine but a high structural similarity (the paper:
cosine 0.05-0.25, HOG cosine about 0.8).

Measurement (:func:`c6_claim`): per-image metrics averaged over bit pairs, each against its baselines:
chance (the same metric between mismatched images) and two independently seeded FP models.
Rule: :func:`verdict_c6`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..stats import bootstrap_mean
from .common import Ruling, above, fmt, interval, widened

ID = "C6"
STATEMENT = 'Input gradients across bit-widths: low cosine, high structural similarity'
PAPER = 'cosine 0.05-0.25, HOG cosine about 0.8'
CHAPTER = "04_gradient_alignment"
# The question the claim answers, for a reader outside the project.
QUESTION = 'Are input gradients of different bit-widths dissimilar in direction yet similar in structure?'
# What the rule reads (a claim entry's own ``metric`` field, where a chapter writes one, wins).
METRIC = 'HOG cosine of input gradients across bit-widths, over its baseline'


def per_image_mean(table: pd.DataFrame, metric: str) -> np.ndarray:
    """Per-image value of ``metric`` averaged over the bit pairs of a ``pairwise_alignment`` table."""
    t = table[table.metric == metric]
    return t.groupby("image", sort=True)["value"].mean().to_numpy()


def c6_claim(aligned: pd.DataFrame, null: pd.DataFrame, profile: str, seeds: Sequence[int],
             seed_baseline: pd.DataFrame | None = None) -> dict[str, Any]:
    """The C6 entry from per-image alignment tables of the bit pairs and of their baselines.

    ``value`` is the HOG cosine's excess (mean over pairs, per image, bootstrap interval) over the
    binding baseline: chance (``null``: mismatched images) or, when given, ``seed_baseline`` (two
    independently seeded FP models on the same images), whichever excess has the lower bound lower (an
    interval, not a point value, chooses; the rule reads both).
    """
    out: dict[str, Any] = {}
    metrics = (("cosine", "cosine"), ("HOG cosine", "hog"), ("edge IoU", "edge_iou"))
    for metric, key in metrics:
        a, z = per_image_mean(aligned, metric), per_image_mean(null, metric)
        out[key] = interval(bootstrap_mean(a))
        out[f"{key}_null"] = interval(bootstrap_mean(z))
        out[f"{key}_excess"] = interval(bootstrap_mean(a - z))
    headline, baseline = out["hog_excess"], "chance (mismatched images)"
    if seed_baseline is not None:
        out["seed_baseline"] = {key: interval(bootstrap_mean(per_image_mean(seed_baseline, metric)))
                                for metric, key in metrics}
        hog_seed = per_image_mean(seed_baseline, "HOG cosine")
        out["hog_excess_seed"] = interval(bootstrap_mean(per_image_mean(aligned, "HOG cosine") - hog_seed))
        if out["hog_excess_seed"]["ci_low"] < out["hog_excess"]["ci_low"]:
            headline, baseline = out["hog_excess_seed"], "two independently seeded FP models"
    cos = aligned[aligned.metric == "cosine"].groupby("pair", sort=False)["value"].mean()
    return {**headline, **out, "baseline": baseline, "cosine_by_pair": {k: float(v) for k, v in cos.items()},
            "n": int(aligned.image.nunique()), "seeds": list(seeds), "profile": profile,
            "measure": "per-image metrics of input gradients, mean over bit pairs, against the stronger baseline",
            "paper": {"cosine": [0.05, 0.25], "hog": 0.8, "edge_iou": 0.15}}


def verdict_c6(c: Mapping[str, Any]) -> Ruling:
    """**C6** (low gradient cosine, high structural similarity), each metric against its baselines: chance
    (the same metric between mismatched images) and two independently seeded FP models on the same images,
    where measured. Structure holds if the HOG cosine exceeds every baseline by at least 0.1 (lower bounds),
    fails if it exceeds some baseline by less (upper bound, Bonferroni-corrected for the baselines); low
    cosine holds if the mean cosine is at most 0.25 (upper bound), fails if above (lower bound). *Reproduced*
    if both hold; *not reproduced* if structure fails; *partly* if structure holds and low cosine fails; else
    *inconclusive*."""
    baseline = c.get("baseline", "chance")
    ours = (f"cosine {fmt(c['cosine'], digits=2)} (chance {c['cosine_null']['value']:.2f}); HOG cosine "
            f"{fmt(c['hog'], digits=2)}, over {baseline} by {fmt(c, digits=2)}")
    reading = c.get("reading") or f"HOG cosine over {baseline}"
    excesses = [c] + [c[k] for k in ("hog_excess", "hog_excess_seed") if isinstance(c.get(k), Mapping)]
    readings = [above(e, 0.1) for e in excesses]
    k = len({(e["value"], e["ci_low"], e["ci_high"]) for e in excesses})  # the distinct baselines
    short = [e for e in excesses if widened(e, 1 - 0.05 / k)["ci_high"] < 0.1]  # "some baseline": corrected
    structure = False if short else (True if all(r is True for r in readings) else None)
    low_cos = above({"ci_low": -c["cosine"]["ci_high"], "ci_high": -c["cosine"]["ci_low"]}, -0.25)
    if structure is True and low_cos is True:
        return Ruling(ours, "reproduced", reading=reading)
    if structure is False:
        return Ruling(ours, "not reproduced", reading=reading)
    if structure is True and low_cos is False:
        return Ruling(ours, "partly", reading=reading)
    if structure is None:
        open_ = next((e for e, r in zip(excesses, readings) if r is not True), c)
        return Ruling(ours, "inconclusive", f"the HOG excess {fmt(open_, digits=2)} straddles 0.1", reading)
    return Ruling(ours, "inconclusive", f"the cosine {fmt(c['cosine'], digits=2)} straddles 0.25", reading)
