"""Claim values C1, C2 and C6 from per-image outcomes: the numbers the scorecard judges.

The chapters measure; this module turns measurements into claim entries, each with its interval,
n, profile, seeds and the strength of every attack behind it (``protocol.md``; the verdict rules
that read these entries live in :mod:`qadtr_core.scorecard`). Rates are fractions, differences are
in their own units, every interval is 95 % unless its name says it is corrected (C1's ``*_corrected``
intervals and its headline: Bonferroni-corrected for the number of readings).

- **C1** (patches transfer from FP to 2-bit QAT at > 70 %): every *reading* of the claim (targeted or
  untargeted, universal or per-image patch) gives its FP -> lowest-width ASR with a Wilson interval
  and its excess over its null floor with a paired bootstrap interval, each also at the level
  Bonferroni-corrected for the number of readings (the level the verdict reads); the headline is the
  strongest reading, a lower bound while its attack has not converged.
- **C2** (pixel attacks transfer poorly): PGD at the radius whose white-box ASR is closest to 50 %
  against the per-image patch: the difference of their relative transfer (mean off-diagonal over
  mean diagonal ASR among QAT widths), paired bootstrap over images.
- **C6** (low gradient cosine, high structural similarity): per-image metrics averaged over bit
  pairs, each against its chance baseline (the same metric between mismatched images).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from .artifacts import artifact_root, write_json
from .stats import Z95, Interval, bootstrap_mean, paired_bootstrap, wilson
from .strength import AttackStrength
from .transfer import Outcomes, rate_of, relative_transfer_interval, white_box_excess_interval


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


@dataclass
class PatchReading:
    """One reading of C1: a patch attack crafted on FP, its floor and its transfer to the lowest width.

    Attributes:
        name: e.g. "universal 6x6, targeted (airplane)".
        white_box: outcomes on the FP model it was crafted on.
        transfer: outcomes on the lowest-width QAT model.
        floor: outcomes of the clean (unpatched) images on the lowest-width model under the same
            definition (targeted: already the target; untargeted: None, the floor is 0).
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


def c1_claim(readings: Sequence[PatchReading], low: str, profile: str, seeds: Sequence[int]) -> dict[str, Any]:
    """The C1 entry: every reading, each with its transfer ASR and its excess over its floor also at the
    level Bonferroni-corrected for the number of readings (``transfer_corrected``,
    ``excess_over_floor_corrected``), and as the headline (``value``, ``ci_low``, ``ci_high``, at that
    corrected level) the *strongest* reading: the highest corrected lower bound of its transfer ASR
    (ties: the higher point value), converged or not. ``lower_bound`` is True while its attack has not
    converged (a stronger attack reaches at least as much)."""
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
            "target": low, "level": level, "attack_strength": [r.strength.record() for r in readings],
            "measure": f"ASR of patches crafted on the FP model, evaluated on the {low} QAT model "
                       f"(interval at {100 * level:.4g} %, Bonferroni-corrected for {len(readings)} readings)"}


def c2_claim(pgd: Mapping[tuple[str, str], Outcomes], patch: Mapping[tuple[str, str], Outcomes], names: list[str],
             eps: float, eps_curve: pd.DataFrame, strengths: Sequence[AttackStrength], profile: str,
             seeds: Sequence[int], pgd_floor: Mapping[str, Outcomes] | None = None,
             patch_floor: Mapping[str, Outcomes] | None = None, n_boot: int = 1000) -> dict[str, Any]:
    """The C2 entry: relative transfer of the per-image patch minus that of PGD at ``eps`` (paired),
    each counted above its null attack's floor per target (a random patch; random noise in the ball)."""
    diff = relative_transfer_interval(patch, names, baseline=pgd, n_boot=n_boot, floors=patch_floor,
                                      baseline_floors=pgd_floor)
    return {**interval(diff),
            "pgd_relative": interval(relative_transfer_interval(pgd, names, n_boot=n_boot, floors=pgd_floor)),
            "patch_relative": interval(relative_transfer_interval(patch, names, n_boot=n_boot, floors=patch_floor)),
            "pgd_white_box_excess": interval(white_box_excess_interval(pgd, names, pgd_floor, n_boot)),
            "patch_white_box_excess": interval(white_box_excess_interval(patch, names, patch_floor, n_boot)),
            "eps_255": eps, "eps_curve": eps_curve.to_dict(orient="records"), "bit_widths": names,
            "n": len(next(iter(pgd.values()))[0]), "seeds": list(seeds), "profile": profile,
            "attack_strength": [s.record() for s in strengths],
            "measure": "relative transfer above each attack's null floor (mean off-diagonal / mean white-box excess ASR "
                       "among FP and QAT widths): per-image patch minus PGD"}


def per_image_mean(table: pd.DataFrame, metric: str) -> np.ndarray:
    """Per-image value of ``metric`` averaged over the bit pairs of a ``pairwise_alignment`` table."""
    t = table[table.metric == metric]
    return t.groupby("image", sort=True)["value"].mean().to_numpy()


def c6_claim(aligned: pd.DataFrame, null: pd.DataFrame, profile: str, seeds: Sequence[int],
             seed_baseline: pd.DataFrame | None = None) -> dict[str, Any]:
    """The C6 entry from per-image alignment tables of the bit pairs and of their baselines.

    ``value`` is the HOG cosine's excess (mean over pairs, per image, bootstrap interval) over the
    stronger baseline: chance (``null``: mismatched images) or, when given, ``seed_baseline`` (two
    independently seeded FP models on the same images), whichever scores higher.
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
        if out["seed_baseline"]["hog"]["value"] > out["hog_null"]["value"]:
            headline, baseline = out["hog_excess_seed"], "two independently seeded FP models"
    cos = aligned[aligned.metric == "cosine"].groupby("pair", sort=False)["value"].mean()
    return {**headline, **out, "baseline": baseline, "cosine_by_pair": {k: float(v) for k, v in cos.items()},
            "n": int(aligned.image.nunique()), "seeds": list(seeds), "profile": profile,
            "measure": "per-image metrics of input gradients, mean over bit pairs, against the stronger baseline",
            "paper": {"cosine": [0.05, 0.25], "hog": 0.8, "edge_iou": 0.15}}


def claims_path(chapter: str, profile: str, seed: int, root: Path | None = None) -> Path:
    """Where a chapter writes its claim entries for one seed."""
    return (root or artifact_root()) / "results" / chapter / profile / f"claims-seed{seed}.json"


def save_claims(chapter: str, profile: str, seed: int, claims: Mapping[str, dict]) -> Path:
    """Write a chapter's claim entries (atomically) for :func:`qadtr_core.scorecard.load_claims`."""
    path = claims_path(chapter, profile, seed)
    write_json(path, dict(claims))
    return path
