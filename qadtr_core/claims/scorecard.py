"""The reproduction scorecard: each claim of the paper, its figure, ours with an interval, and a verdict.

The verdict rules are fixed in the claim modules (:mod:`qadtr_core.claims`, one per claim, each with its
measurement), before any result is read, and printed in the book (each rule is its function's docstring);
this module gathers them, aggregates seeds and writes ``scorecard.json``. The rules read intervals, never
bare point values, and they can abstain:

- *reproduced* / *partly* / *not reproduced* need the interval on the right side of the claim's
  threshold, and every attack behind the claim converged (doubling its steps added less than 2
  points of white-box ASR, its white-box ASR is above its null floor and its patch still moved:
  :func:`qadtr_core.evaluation.strength.is_converged`);
- *inconclusive* is the verdict where an attack has not converged or an interval straddles a threshold;
  the record says which (``reason``);
- *not measured*: the chapter has not produced results at this profile.

The regions of each rule are disjoint: a rule lists them in the order it tests them, a failure or
equivalence region (an effect too small to count) before *partly*. Where a rule takes the best of
several intervals (C1's readings, C3's and C5's widths, C7's components), each is Bonferroni-corrected for how
many were tried.

An ASR that already exceeds a claim's threshold is a lower bound on what a converged attack reaches,
so C1 can be *reproduced* by an unconverged attack, never refuted by one.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..artifacts import CorruptArtifact, artifact_root, read_json, write_json
from ..stats import across_seeds
from . import (
    b1_certified,
    c1_transfer,
    c2_pixel_transfer,
    c3_defense_gain,
    c4_pbat_gap,
    c5_clean_accuracy,
    c6_gradient_alignment,
    c7_ablation,
)
from .common import FINDINGS_ALLOWED, VERDICTS_ALLOWED, Ruling, attack_problem

log = logging.getLogger(__name__)

_MODULES = {"C1": c1_transfer, "C2": c2_pixel_transfer, "C3": c3_defense_gain, "C4": c4_pbat_gap,
            "C5": c5_clean_accuracy, "C6": c6_gradient_alignment, "C7": c7_ablation, "B1": b1_certified}
# The questions beyond the paper (rows "beyond the paper" of the scorecard; verdicts from FINDINGS_ALLOWED).
BEYOND: tuple[str, ...] = tuple(c for c in _MODULES if c.startswith("B"))
__all__ = ["BEYOND", "FINDINGS_ALLOWED", "VERDICTS_ALLOWED", "CLAIMS", "METRICS", "QUESTIONS", "VERDICTS", "answer",
           "judge", "load_claims", "rule_text", "scorecard", "scorecard_record", "write_scorecard"]
# claim id -> (statement, the paper's figure, the chapter that measures it)
CLAIMS: dict[str, tuple[str, str, str]] = {c: (m.STATEMENT, m.PAPER, m.CHAPTER) for c, m in _MODULES.items()}
METRICS: dict[str, str] = {c: m.METRIC for c, m in _MODULES.items()}
QUESTIONS: dict[str, str] = {c: m.QUESTION for c, m in _MODULES.items()}
VERDICTS: dict[str, Callable[[Mapping[str, Any]], Ruling]] = {c: getattr(m, f"verdict_{c.lower()}")
                                                              for c, m in _MODULES.items()}


def rule_text(claim: str) -> str:
    """The verdict rule of ``claim`` as printed in the book."""
    return " ".join((VERDICTS[claim].__doc__ or "").split())


_ANY_FLAGS = ("lower_bound", "budget_exhausted")  # flags that hold for the aggregate if they hold for any seed


_DROP = object()


def _label(e: Mapping[str, Any]) -> str:
    seeds = e.get("seeds", [])
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def _is_interval(v: Any) -> bool:
    return isinstance(v, Mapping) and all(isinstance(v.get(k), (int, float)) and not isinstance(v.get(k), bool)
                                          for k in ("value", "ci_low", "ci_high"))


def _interval_over_seeds(ivs: list[Mapping[str, float]]) -> dict[str, float]:
    """Mean over seeds; the envelope of every seed's interval and the t interval across seeds."""
    values = [float(v["value"]) for v in ivs]
    t = across_seeds(values) if not any(math.isnan(x) for x in values) else None
    lows = [v for v in [*(float(iv["ci_low"]) for iv in ivs), t.low if t else math.nan] if not math.isnan(v)]
    highs = [v for v in [*(float(iv["ci_high"]) for iv in ivs), t.high if t else math.nan] if not math.isnan(v)]
    return {"value": t.value if t else math.nan, "ci_low": min(lows) if lows else math.nan,
            "ci_high": max(highs) if highs else math.nan}


def _merge(key: str, values: list[Any], labels: list[str]) -> Any:
    """One field over seeds by the rules of :func:`_aggregate` (``_DROP``: the field is left out)."""
    first = values[0]
    if all(isinstance(v, Mapping) for v in values):
        out: dict[str, Any] = {}
        if all(_is_interval(v) for v in values):
            out.update(_interval_over_seeds(values))
        for k in first:
            if k in out or not all(k in v for v in values):
                continue
            m = _merge(k, [v[k] for v in values], labels)
            if m is not _DROP:
                out[k] = m
        return out
    if all(isinstance(v, list) and v and all(isinstance(x, Mapping) and "name" in x for x in v) for v in values):
        by_name = [{x["name"]: x for x in v} for v in values]
        return [m for x in first if all(x["name"] in d for d in by_name)
                and (m := _merge(key, [d[x["name"]] for d in by_name], labels)) is not _DROP]
    if all(v == first for v in values):
        return first
    if all(isinstance(v, bool) for v in values):
        return any(values) if key in _ANY_FLAGS else all(values)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return min(values) if key == "n" else float(np.mean(values))
    if all(isinstance(v, str) for v in values):
        return "; ".join(f"{lab}: {v}" for lab, v in zip(labels, values))
    return _DROP


def _aggregate(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """One claim entry from several seeds' entries (:func:`judge` still rules on each seed's own entry,
    kept in ``per_seed``). Every interval (``value``, ``ci_low``, ``ci_high``), at any depth, becomes the
    mean over seeds with the envelope of every seed's interval and the Student-t interval across seeds
    (never narrower than one seed's). Lists of named entries (C1's readings) are matched by name, those
    missing from some seed left out; ``attack_strength`` keeps every seed's attacks, named with their seed,
    so that a claim is converged only if every seed's attacks are. A field equal in every seed is kept; a
    number that differs becomes the mean over seeds, except ``n``: the images per seed (the seeds reuse
    the images, so ``n`` is never summed), the smallest, with ``n_per_seed`` beside it; a flag that
    differs holds only if it holds for every seed (``lower_bound``, ``budget_exhausted``: for any seed);
    a label that differs lists each seed's; anything else that differs is left out."""
    if len(entries) == 1:
        return entries[0]
    labels = [_label(e) for e in entries]
    rest = [{k: v for k, v in e.items() if k not in ("attack_strength", "seeds", "per_seed")} for e in entries]
    out = _merge("", rest, labels)
    if any("attack_strength" in e for e in entries):
        out["attack_strength"] = [{**a, "name": f"{a['name']} ({lab})"}
                                  for e, lab in zip(entries, labels) for a in e.get("attack_strength", [])]
    ns = [int(e.get("n") or 0) for e in entries]
    out.update(seeds=sorted({s for e in entries for s in e.get("seeds", [])}), per_seed=entries, n=min(ns),
               n_per_seed=ns)
    return out


def load_claims(profile: str, root: Path | None = None,
                seeds: Callable[[str], Collection[int]] | None = None) -> dict[str, dict[str, Any]]:
    """Every claim entry the chapters wrote at ``profile`` (``results/<chapter>/<profile>/claims*.json``),
    one per seed (a ``claims-seed<k>.json`` file wins over an unseeded ``claims.json`` for the same seeds),
    aggregated over seeds where several exist.

    ``seeds`` (chapter -> the seeds a build ran it at, e.g. :func:`qadtr_core.build.jobs.chapter_seeds`):
    a chapter's file of any other seed is left out (an earlier build's, or a one-off run's, never enters
    this scorecard); None reads every file."""
    found: dict[str, dict[tuple, tuple[bool, dict[str, Any]]]] = {}
    for path in sorted((root or artifact_root()).glob(f"results/*/{profile}/claims*.json")):
        seeded = path.name.startswith("claims-seed")
        allowed = None if seeds is None else set(seeds(path.parent.parent.name))
        try:
            entries = read_json(path)
        except CorruptArtifact as e:
            log.warning("skipping %s: %s", path, e)
            continue
        for cid, entry in entries.items():
            key = tuple(entry.get("seeds", []))
            if allowed is not None and not set(key) <= allowed:
                log.info("left out of the scorecard: %s of %s (seeds %s, not run by this build)", cid, path, list(key))
                continue
            previous = found.setdefault(cid, {}).get(key)
            if previous is None or (seeded and not previous[0]):
                found[cid][key] = (seeded, entry)
    return {cid: _aggregate([e for _, e in by_seed.values()]) for cid, by_seed in found.items()}


def judge(claim: str, c: Mapping[str, Any]) -> Ruling:
    """``(ours, verdict)`` of a claim entry, a :class:`Ruling` (with ``reason`` and ``reading``); with several
    seeds, each seed is judged by the rule and the verdict stands only if every seed agrees (else
    *inconclusive*: the seeds disagree)."""
    ruled = VERDICTS[claim](c)
    if "per_seed" not in c:
        return ruled
    each = [VERDICTS[claim](e) for e in c["per_seed"]]
    verdicts = [r[1] for r in each]
    labels = [_label(e) for e in c["per_seed"]]
    verdict = verdicts[0] if len(set(verdicts)) == 1 else "inconclusive"
    ours = ruled[0] + f"; {len(each)} seeds, per-seed verdicts: {', '.join(verdicts)}"
    reason = None
    if len(set(verdicts)) > 1:
        reason = "the seeds disagree: " + ", ".join(f"{lab} {v}" for lab, v in zip(labels, verdicts))
    elif verdict == "inconclusive":
        reasons = [r.reason for r in each]
        reason = reasons[0] if len(set(reasons)) == 1 else "; ".join(f"{lab}: {r}" for lab, r in zip(labels, reasons))
    return Ruling(ours, verdict, reason, ruled.reading, ruled.headline)


_ANSWERS = {"reproduced": "Yes, as the paper says", "not reproduced": "No, unlike the paper",
            "partly": "Partly", "inconclusive": "Not decided at this budget", "not measured": "Not measured yet",
            "holds": "Yes", "does not hold": "No"}


def answer(cid: str, c: Mapping[str, Any] | None) -> str:
    """A plain-language answer to the claim's question, computed from the same results and rule as its
    verdict: the verdict in words, what we measured (and on which reading), what the paper reports, and,
    where the verdict is *inconclusive*, why (the rule's reason)."""
    _, paper, _ = CLAIMS[cid]
    if c is None:
        return f"{_ANSWERS['not measured']}: no result of this claim at this profile (the paper: {paper})."
    ruled = judge(cid, c)
    reading = f" ({ruled.reading})" if ruled.reading else ""
    paper_says = "the paper does not study it" if cid in BEYOND else f"the paper reports {paper}"
    out = f"{_ANSWERS.get(ruled[1], ruled[1])}: we measured {ruled[0]}{reading}; {paper_says}."
    if ruled.reason:
        out += f" Why: {ruled.reason}."
    return out


def scorecard(claims: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per claim C1..C7, then the questions beyond the paper (:data:`BEYOND`, claim ids B1...): the
    claim, its question and plain-language :func:`answer`, the paper's figure, ours with its interval,
    profile, n, seeds, verdict and chapter."""
    rows = []
    for cid, (text, paper, chapter) in CLAIMS.items():
        c = claims.get(cid)
        if c is None:
            ours, verdict, profile, n, seeds = "-", "not measured", "-", "-", "-"
        else:
            ours, verdict = judge(cid, c)
            profile, n, seeds = c.get("profile", "-"), c.get("n", "-"), ", ".join(map(str, c.get("seeds", [])))
        rows.append({"claim": cid, "statement": text, "question": QUESTIONS[cid], "answer": answer(cid, c),
                     "paper": paper, "ours": ours, "profile": profile, "n": n, "seeds": seeds, "verdict": verdict,
                     "chapter": chapter})
    return pd.DataFrame(rows)


def scorecard_record(claims: Mapping[str, dict[str, Any]], profile: str, commit: str) -> dict[str, Any]:
    """The committed ``scorecard.json``: one entry per measured claim with value, interval, n (images per
    seed), seeds, profile, verdict, rule, ``reading`` (which reading or attack the headline value is; C1: its
    strongest reading, marked as a lower bound while its attack has not converged), ``metric`` (what the
    rule reads), ``reason`` (why *inconclusive*; None otherwise) and the strength of every attack behind it (with its
    ``n``, the L-inf distance between its last two checkpoint patches where it has checkpoints, and its image-steps)."""
    out = {}
    for cid in CLAIMS:
        c = claims.get(cid)
        if c is None:
            continue
        ruled = judge(cid, c)
        value = c.get("value")
        if ruled.headline is not None:  # the rule chose the headline among several readings (C1: the strongest)
            value, lo, hi = (ruled.headline[k] for k in ("value", "ci_low", "ci_high"))
        elif value is None and cid == "C7":  # C7 has one interval per component: report the smallest rise
            _, comp = c7_ablation.smallest_rise(c)
            value, lo, hi = comp["value"], comp["ci_low"], comp["ci_high"]
        else:
            lo, hi = c.get("ci_low"), c.get("ci_high")
        out[cid] = {"value": value, "ci_low": lo, "ci_high": hi, "n": c.get("n"), "seeds": c.get("seeds", []),
                    "profile": c.get("profile", profile), "verdict": ruled[1], "rule": rule_text(cid),
                    "reading": ruled.reading, "metric": c.get("metric", METRICS[cid]), "reason": ruled.reason,
                    "answer": answer(cid, c),
                    "attack_strength": [{**{k: a[k] for k in ("name", "white_box_asr", "white_box_asr_half_steps",
                                                              "clean_floor", "steps")},
                                         "converged": attack_problem(a) is None,
                                         **{k: a.get(k) for k in ("n", "checkpoint_linf", "image_steps_run",
                                                                  "image_steps_full_budget")}}
                                        for a in c.get("attack_strength", [])]}
    return {"profile": profile, "commit": commit, "claims": out}


def write_scorecard(claims: Mapping[str, dict[str, Any]], profile: str, commit: str, path: Path) -> dict[str, Any]:
    """Write :func:`scorecard_record` to ``path`` atomically and return it."""
    record = scorecard_record(claims, profile, commit)
    write_json(Path(path), record)
    return record
