"""The reproduction scorecard: each claim of the paper, its figure, ours with an interval, and a verdict.

The verdict rules are fixed here, before any result is read, and printed in the book (each rule is
its function's docstring). They read intervals, never bare point values, and they can abstain:

- *reproduced* / *partly* / *not reproduced* need the interval on the right side of the claim's
  threshold, and every attack behind the claim converged (doubling its steps added less than 2
  points of white-box ASR, :mod:`qadtr_core.strength`);
- *inconclusive* is the verdict where an attack has not converged or an interval straddles a threshold;
- *not measured*: the chapter has not produced results at this profile.

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

import pandas as pd

from .artifacts import CorruptArtifact, artifact_root, read_json, write_json
from .stats import across_seeds, wilson
from .strength import is_converged

log = logging.getLogger(__name__)

VERDICTS_ALLOWED = ("reproduced", "partly", "not reproduced", "inconclusive")

CLAIMS: dict[str, tuple[str, str, str]] = {
    "C1": ("Patches transfer from FP to QAT models with ASR > 70 % even at 2 bits", "> 70 % (73.08 % on 2-bit ResNet-56)", "01_transferability"),
    "C2": ("Pixel-level attacks transfer poorly across bit-widths", "low off-diagonal success (DWQ)", "01_transferability"),
    "C3": ("QADT-R lowers ASR by up to 25 points against PBAT and DWQ", "up to 25 points", "02_defenses"),
    "C4": ("PBAT resists seen patches but not unseen ones", "57.86 % seen vs 78.34 % unseen at 2 bits", "02_defenses"),
    "C5": ("QADT-R keeps clean accuracy", "within a few points", "02_defenses"),
    "C6": ("Input gradients across bit-widths: low cosine, high structural similarity", "cosine 0.05-0.25, HOG cosine about 0.8", "04_gradient_alignment"),
    "C7": ("Each of A-QAPA, DBWT and GIR contributes", "not published", "03_ablations"),
}


def above(iv: Mapping[str, float], threshold: float) -> bool | None:
    """True if the whole interval is at or above ``threshold``, False if wholly below, None if it straddles."""
    if iv["ci_low"] >= threshold:
        return True
    if iv["ci_high"] < threshold:
        return False
    return None


def converged(claim: Mapping[str, Any]) -> bool:
    """Every attack behind the claim converged (a claim without attacks counts as converged)."""
    return all(is_converged(a["white_box_asr"], a["white_box_asr_half_steps"]) for a in claim.get("attack_strength", []))


def _fmt(iv: Mapping[str, float], scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
    v, lo, hi = (scale * iv[k] for k in ("value", "ci_low", "ci_high"))
    return f"{v:.{digits}f}{unit} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _reading_clears(r: Mapping[str, Any], threshold: float, n_readings: int) -> bool:
    """A reading's transfer ASR is above ``threshold`` at a Bonferroni-corrected 95 % level over the
    ``n_readings`` readings tried (picking the best of several readings must not inflate the claim)."""
    n = int(r.get("n") or 0)
    if n == 0:
        return False
    z = NormalDist().inv_cdf(1 - 0.025 / max(1, n_readings))
    return wilson(round(r["transfer"]["value"] * n), n, z=z).low >= threshold


def verdict_c1(c: Mapping[str, Any]) -> tuple[str, str]:
    """**C1** (patch ASR from FP to the lowest-width QAT model > 70 %), over every reading (targeted and
    untargeted, universal and per-image patches). *Reproduced* if some reading's interval, Bonferroni-corrected
    for the number of readings, lies at or above 70 % (converged or not: an ASR is a lower bound on what a
    stronger attack reaches). Otherwise *inconclusive* unless every reading's attack converged; then judged
    on the strongest reading: *inconclusive* if its interval straddles 70 %; below 70 %, *partly* if it beats
    its null floor (the clean floor, or a random patch) by at least 10 points (lower bound of a paired
    interval: patches transfer, weaker than claimed), else *not reproduced*."""
    readings = c["readings"]
    chosen = next((r for r in readings if r["name"] == c.get("reading")), readings[0])
    ours = (f"{_fmt(c, 100, ' %')} ({c['reading']}, white-box {_fmt(chosen['white_box'], 100, ' %')}); "
            f"best of {len(readings)} readings")
    if any(_reading_clears(r, 0.70, len(readings)) for r in readings):
        return ours, "reproduced"
    if not all(r["converged"] for r in readings):
        return ours, "inconclusive"
    strongest = max(readings, key=lambda r: r["transfer"]["value"])
    if above(strongest["transfer"], 0.70) is None:
        return ours, "inconclusive"
    if strongest["excess_over_floor"]["ci_low"] >= 0.10:
        return ours, "partly"
    return ours, "not reproduced"


def verdict_c2(c: Mapping[str, Any]) -> tuple[str, str]:
    """**C2** (pixel attacks transfer poorly), read on the FP and QAT models at the PGD radius whose
    white-box ASR is closest to 50 %: d = the per-image patch's relative transfer minus PGD's (paired
    interval; the DWQ model's reading is shown beside it). *Inconclusive* if
    an attack has not converged. *Reproduced* if d > 0 and PGD keeps less than half its white-box ASR
    (both whole intervals); *partly* if d > 0 only; *not reproduced* if d < 0.1 (the whole interval:
    PGD transfers about as well as the patch); else *inconclusive*."""
    ours = (f"relative transfer: PGD (eps {c['eps_255']:g}/255) {_fmt(c['pgd_relative'], digits=2)}, "
            f"per-image patch {_fmt(c['patch_relative'], digits=2)}; difference {_fmt(c, digits=2)}")
    if "dwq" in c:  # the DWQ figure's own setting, shown beside the QAT reading the rule judges
        ours += f"; one DWQ model across its widths: difference {_fmt(c['dwq']['difference'], digits=2)}"
    if not converged(c) or any(math.isnan(c[k]) for k in ("value", "ci_low", "ci_high")):
        return ours, "inconclusive"
    for k in ("pgd_white_box_excess", "patch_white_box_excess"):  # an attack that does nothing compares nothing
        if k in c and not c[k]["ci_low"] > 0:
            return ours, "inconclusive"
    if c["ci_low"] > 0:
        return ours, "reproduced" if c["pgd_relative"]["ci_high"] < 0.5 else "partly"
    if c["ci_high"] < 0.1:
        return ours, "not reproduced"
    return ours, "inconclusive"


def verdict_c3(c: Mapping[str, Any]) -> tuple[str, str]:
    """**C3** (QADT-R lowers ASR by up to 25 points against PBAT and DWQ): per bit-width, the better
    baseline's unseen ASR minus QADT-R's (points, paired intervals); ``value`` is the mean over widths.
    *Inconclusive* if an attack has not converged. *Reproduced* if some width's reduction is at least
    15 points (lower bound), the mean is above 0 and so is the mean reduction of the worst case over all
    threats (adaptive included); *partly* if the mean is above 0; *not reproduced* if the mean is below 2
    points (whole interval); else *inconclusive*."""
    ours = f"mean reduction on unseen patches {_fmt(c, unit=' pts')}; worst case {_fmt(c['worst_case'], unit=' pts')}"
    if not converged(c):
        return ours, "inconclusive"
    best_low = max(v["ci_low"] for v in c["by_bits"].values())
    if best_low >= 15 and c["ci_low"] > 0 and c["worst_case"]["ci_low"] > 0:
        return ours, "reproduced"
    if c["ci_low"] > 0:
        return ours, "partly"
    if c["ci_high"] < 2:
        return ours, "not reproduced"
    return ours, "inconclusive"


def verdict_c4(c: Mapping[str, Any]) -> tuple[str, str]:
    """**C4** (PBAT resists seen patches, not unseen ones) as a generalisation gap: PBAT's unseen-minus-seen
    ASR gap minus the same gap of the undefended model (points, paired intervals). *Inconclusive* if an
    attack has not converged. *Reproduced* if the relative gap at the lowest width is at least 10 points
    (lower bound; the paper's is about 20); *partly* if the mean relative gap over widths is above 0;
    *not reproduced* if the mean is below 3 points and the lowest width's below 10 (whole intervals);
    else *inconclusive*."""
    low = c["at_low_bits"]
    ours = f"relative gap, mean over widths {_fmt(c, unit=' pts')}; at {low.get('bits', '?')} bits {_fmt(low, unit=' pts')}"
    if not converged(c):
        return ours, "inconclusive"
    if low["ci_low"] >= 10:
        return ours, "reproduced"
    if c["ci_low"] > 0:
        return ours, "partly"
    if c["ci_high"] < 3 and low["ci_high"] < 10:
        return ours, "not reproduced"
    return ours, "inconclusive"


def verdict_c5(c: Mapping[str, Any]) -> tuple[str, str]:
    """**C5** (QADT-R keeps clean accuracy): the drop of clean accuracy against the undefended multi-width
    model, per bit-width (points, paired intervals). *Reproduced* if every width's drop is at most 3 points
    (upper bound); *partly* if the mean drop over widths is at most 5 (upper bound); *not reproduced* if some
    width drops more than 5 points (lower bound); else *inconclusive*."""
    ours = f"largest drop {_fmt(c, unit=' pts')}; mean {_fmt(c['mean_drop'], unit=' pts')}"
    by = c["by_bits"].values()
    if all(v["ci_high"] <= 3 for v in by):
        return ours, "reproduced"
    if c["mean_drop"]["ci_high"] <= 5:
        return ours, "partly"
    if any(v["ci_low"] > 5 for v in by):
        return ours, "not reproduced"
    return ours, "inconclusive"


def verdict_c6(c: Mapping[str, Any]) -> tuple[str, str]:
    """**C6** (low gradient cosine, high structural similarity), each metric against its baseline: the
    stronger of chance (the same metric between mismatched images) and two independently seeded FP models
    on the same images, where measured. Structure holds if the HOG cosine exceeds that baseline by at least
    0.1 (lower bound), fails if by less (upper bound); low cosine holds if the mean cosine is at most 0.25
    (upper bound), fails if above (lower bound). *Reproduced* if both hold; *not reproduced* if structure
    fails; *partly* if structure holds and low cosine fails; else *inconclusive*."""
    ours = (f"cosine {_fmt(c['cosine'], digits=2)} (chance {c['cosine_null']['value']:.2f}); HOG cosine "
            f"{_fmt(c['hog'], digits=2)}, over {c.get('baseline', 'chance')} by {_fmt(c, digits=2)}")
    structure = above(c, 0.1)
    low_cos = above({"ci_low": -c["cosine"]["ci_high"], "ci_high": -c["cosine"]["ci_low"]}, -0.25)
    if structure is True and low_cos is True:
        return ours, "reproduced"
    if structure is False:
        return ours, "not reproduced"
    if structure is True and low_cos is False:
        return ours, "partly"
    return ours, "inconclusive"


def verdict_c7(c: Mapping[str, Any]) -> tuple[str, str]:
    """**C7** (each of A-QAPA, DBWT and GIR contributes): the rise of the mean unseen ASR over widths when a
    component is removed (points, paired intervals). *Inconclusive* if an attack has not converged.
    *Reproduced* if every rise is above 0 (lower bound); *partly* if at least one is; *not reproduced* if
    every rise is below 2 points (upper bound); else *inconclusive*."""
    inc = c["increase"]
    ours = "removing " + ", ".join(f"{k} {_fmt(v, unit=' pts')}" for k, v in inc.items())
    if not converged(c):
        return ours, "inconclusive"
    lows = [v["ci_low"] > 0 for v in inc.values()]
    if all(lows):
        return ours, "reproduced"
    if any(lows):
        return ours, "partly"
    if all(v["ci_high"] < 2 for v in inc.values()):
        return ours, "not reproduced"
    return ours, "inconclusive"


VERDICTS: dict[str, Callable[[Mapping[str, Any]], tuple[str, str]]] = {
    "C1": verdict_c1, "C2": verdict_c2, "C3": verdict_c3, "C4": verdict_c4, "C5": verdict_c5,
    "C6": verdict_c6, "C7": verdict_c7}


def rule_text(claim: str) -> str:
    """The verdict rule of ``claim`` as printed in the book."""
    return " ".join((VERDICTS[claim].__doc__ or "").split())


def _aggregate(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """One claim entry from several seeds: the first seed's entry with ``value`` replaced by the mean over
    seeds and its interval by the envelope of every seed's interval and the t interval across seeds (never
    narrower than one seed's); ``per_seed`` keeps every entry, and :func:`judge` rules on each of them."""
    if len(entries) == 1:
        return entries[0]
    seeds = sorted({s for e in entries for s in e.get("seeds", [])})
    first = dict(entries[0])
    if all("value" in e for e in entries):
        iv = across_seeds([e["value"] for e in entries])
        lows = [e.get("ci_low", math.nan) for e in entries] + [iv.low]
        highs = [e.get("ci_high", math.nan) for e in entries] + [iv.high]
        first.update(value=iv.value, ci_low=min(v for v in lows if not math.isnan(v)),
                     ci_high=max(v for v in highs if not math.isnan(v)))
    first.update(seeds=seeds, per_seed=entries, n=sum(int(e.get("n") or 0) for e in entries))
    return first


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


def judge(claim: str, c: Mapping[str, Any]) -> tuple[str, str]:
    """``(ours, verdict)`` of a claim entry; with several seeds, each seed is judged by the rule and the
    verdict stands only if every seed agrees (else *inconclusive*: the seeds disagree)."""
    ours, verdict = VERDICTS[claim](c)
    if "per_seed" in c:
        each = [VERDICTS[claim](e)[1] for e in c["per_seed"]]
        verdict = each[0] if len(set(each)) == 1 else "inconclusive"
        ours += f"; {len(each)} seeds, per-seed verdicts: {', '.join(each)}"
    return ours, verdict


def scorecard(claims: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per claim C1..C7: the claim, the paper's figure, ours with its interval, profile, n,
    seeds, verdict and chapter."""
    rows = []
    for cid, (text, paper, chapter) in CLAIMS.items():
        c = claims.get(cid)
        if c is None:
            ours, verdict, profile, n, seeds = "-", "not measured", "-", "-", "-"
        else:
            ours, verdict = judge(cid, c)
            profile, n, seeds = c.get("profile", "-"), c.get("n", "-"), ", ".join(map(str, c.get("seeds", [])))
        rows.append({"claim": cid, "statement": text, "paper": paper, "ours": ours, "profile": profile, "n": n,
                     "seeds": seeds, "verdict": verdict, "chapter": chapter})
    return pd.DataFrame(rows)


def scorecard_record(claims: Mapping[str, dict[str, Any]], profile: str, commit: str) -> dict[str, Any]:
    """The committed ``scorecard.json``: one entry per measured claim with value, interval, n, seeds,
    profile, verdict, rule and the strength of every attack behind it."""
    out = {}
    for cid in CLAIMS:
        c = claims.get(cid)
        if c is None:
            continue
        _, verdict = judge(cid, c)
        value = c.get("value")
        if value is None and cid == "C7":  # C7 has one interval per component: report the smallest rise
            comp = min(c["increase"].values(), key=lambda v: v["value"])
            value, lo, hi = comp["value"], comp["ci_low"], comp["ci_high"]
        else:
            lo, hi = c.get("ci_low"), c.get("ci_high")
        out[cid] = {"value": value, "ci_low": lo, "ci_high": hi, "n": c.get("n"), "seeds": c.get("seeds", []),
                    "profile": c.get("profile", profile), "verdict": verdict, "rule": rule_text(cid),
                    "attack_strength": [{k: a[k] for k in ("name", "white_box_asr", "white_box_asr_half_steps",
                                                           "clean_floor", "steps")} for a in c.get("attack_strength", [])]}
    return {"profile": profile, "commit": commit, "claims": out}


def write_scorecard(claims: Mapping[str, dict[str, Any]], profile: str, commit: str, path: Path) -> dict[str, Any]:
    """Write :func:`scorecard_record` to ``path`` atomically and return it."""
    record = scorecard_record(claims, profile, commit)
    write_json(Path(path), record)
    return record
