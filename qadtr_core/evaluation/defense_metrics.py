"""The measurements of the defense chapters: robust accuracy and ASR per defense, width and threat kind as
statistics of image resamples, attack convergence per attacked model, the "does every defense defend" table,
and the entries of ``defenses.json`` (the claims C3, C4, C5 and C7 read them: :mod:`qadtr_core.claims`).

Every defense is evaluated on the same images, so a difference between defenses is read with a
*paired* bootstrap: one resample of the images recomputes every side of the difference, all widths
included (:mod:`qadtr_core.stats`; the same resampling as :func:`~qadtr_core.stats.paired_bootstrap`,
generalised to statistics of many per-image arrays). All values are in percent / points.

C3, C4 and C7 are read on **robust accuracy** (over *all* evaluation images, the share classified correctly
both clean and attacked; a model that is wrong everywhere scores 0, never robust), each with the sign that
makes a positive value support the claim, as the ASR differences they replace did:

- C3: mean over widths of QADT-R's robust accuracy minus the better of PBAT's and DWQ's, on the threats
  unseen by **all three** defenses at that width (:func:`common_unseen`: the intersection of their own
  "unseen" sets), so that every side of the difference averages the same threats; also per width (at
  95 % and, ``by_bits_corrected``, Bonferroni-corrected for the number of widths, which the rule reads
  when it takes the best width) and on the per-image worst case over every threat (random search included).
- C4: PBAT's generalisation gap (seen minus unseen robust accuracy, on the **white-box** threats only)
  minus the same gap of the undefended QAT models under PBAT's definitions (a 10x10 patch is stronger for
  every model); ``pbat_gap`` (PBAT's own gap) is stored beside it, which the rule requires to be positive.
- C5: clean-accuracy drop of QADT-R against the undefended multi-width model, its starting point.
- C7: drop of the mean unseen robust accuracy over widths when a component is removed (QADT-R's unseen
  threats for every variant, so that all variants meet the same threats); stored as ``increase`` (the rule's
  field: positive = the component helped).

**Collapsed cells** (a model's build record lists the width in ``collapse_check["collapsed"]``: its clean
accuracy fell more than 10 points below its undefended start's there) never count as robust. The
decision: a width at which any model a difference compares is collapsed is *left out* of that claim (of
its mean and of its per-width entries; ``excluded_bits`` names it and why), rather than scored as 0 robust,
because a 0 would hand the other side of the difference a win it did not earn (a collapsed baseline
would make QADT-R look better). Where every width is left out, the value is NaN. A collapsed defense also
fails :func:`defends_table`'s test, so the claims that rest on it read *inconclusive*.

**Does every defense defend** (:func:`defends_table`): each defense's white-box robust accuracy on its own
seen threat (PBAT, QADT-R: the 8x8 square; DWQ: L-inf PGD at 8/255, the attack it trains on) against its
undefended start's (PBAT at b: QAT at b; DWQ, QADT-R: the multi-width model), paired intervals per width
and on the mean over the widths. A defense *defends* if no width it serves collapsed and the mean
difference's lower bound is above 0; C3 and C4 carry ``defends`` (per defense they rest on; a defense
collapsed at any width it serves is entered as not defending even where no table was passed), and the
rule reads *inconclusive* where one does not.

Attack convergence is checked per attacked model (:func:`convergence`); each claim's
``attack_strength`` keeps, per threat, the entry of the model behind that claim on which the attack is
least converged (the worst case: one where it did not converge, also one where it fooled nothing, else the
one whose attack gained the most from its second half of steps), so that an attack still improving
against a defended model, or failing on it outright, is not hidden by pooling it with the models it had
already broken. An attack that fools nothing on a defended model, or no more than a random patch at the
same places does (its null floor), is no evidence of robustness (perfect robustness and masked gradients
read the same), so it holds the claim at *inconclusive*; cells a claim
leaves out (collapsed ones) do not enter. Random search and EOT
(supplementary attacks on what the gradient threats left, or on a randomised predictor) are shown in the
chapters' convergence tables, but do not enter ``attack_strength``: on the images no gradient attack
broke, a random search that breaks nothing is a finding, not an attack that "does nothing".
"""
from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..artifacts import artifact_root, file_lock, read_json, write_json
from ..stats import Interval, paired_bootstrap
from ..zoo import TrainedModel
from .robustness import Evaluation, threat_kinds
from .strength import is_converged
from .threats import EOT_THREAT, THREATS, WORST, PatchDistribution, Threat

Stat = Callable[[np.ndarray], np.ndarray]  # resample indices (B, n) -> statistic (B,)


ROBUST_ACCURACY = "robust accuracy"


NAN_CI = {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan}


def bootstrap(stat: Stat, n: int, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile interval of ``stat`` over image resamples (the point value on the images as they are)."""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    point = float(stat(np.arange(n)[None])[0])
    vals = stat(idx)
    q = (1 - level) / 2
    return Interval(point, float(np.quantile(vals, q)), float(np.quantile(vals, 1 - q)))


def ci(i: Interval) -> dict[str, float]:
    return {"value": i.value, "ci_low": i.low, "ci_high": i.high}


def adaptive_names(threats: Sequence[Threat]) -> list[str]:
    return [t.name for t in threats if t.adaptive] + [EOT_THREAT.name]


def common_unseen(per_image: pd.DataFrame, distributions: Mapping[str, PatchDistribution], defenses: Sequence[str],
                  bits: int, threats: Sequence[Threat] = THREATS) -> list[str]:
    """The threats evaluated at ``bits`` that are unseen for every one of ``defenses`` (sorted names)."""
    by_name = {t.name: t for t in threats}
    present = sorted(set(per_image.threat[per_image.bits == bits]))
    return [th for th in present if all(distributions[d].kind(by_name[th], int(bits)) == "unseen" for d in defenses)]


def _cell(per_image: pd.DataFrame, defense: str, bits: int) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    g = per_image[(per_image.defense == defense) & (per_image.bits == bits)]
    if g.empty:
        raise ValueError(f"no outcomes for defense {defense!r} at {bits} bits")
    ok = g[g.threat == g.threat.iloc[0]].sort_values("image").clean_ok.to_numpy(bool)
    wide = g.pivot(index="image", columns="threat", values="broken").sort_index()
    return g, ok, wide


def _names(g: pd.DataFrame, distributions: Mapping[str, PatchDistribution], defense: str, kind: str,
           as_defense: str | None, threats: Sequence[Threat], sources: Sequence[str] | None) -> list[str]:
    kinds = threat_kinds(g, distributions, threats, {defense: as_defense} if as_defense else None)
    source = {t.name: t.source for t in threats}
    return sorted(th for th in set(g.threat[kinds == kind]) if sources is None or source.get(th) in sources)


def rate(per_image: pd.DataFrame, distributions: Mapping[str, PatchDistribution], defense: str, bits: int,
         kind: str, as_defense: str | None = None, threats: Sequence[Threat] = THREATS,
         names: Sequence[str] | None = None, sources: Sequence[str] | None = None) -> Stat:
    """ASR (%) of ``defense`` at ``bits`` over its threats of ``kind`` ("seen", "unseen", "worst case"),
    or over the threats ``names`` when given (``kind`` then only tells the worst case apart); ``sources``
    keeps only threats of those sources (C4: white-box).

    Per image, the score is the share of those threats that broke it (worst case: any threat); the ASR
    is its mean over clean-correct images, i.e. the mean of the threats' ASRs.
    """
    g, ok, wide = _cell(per_image, defense, bits)
    if kind == "worst case":
        u = wide.to_numpy(bool).any(1).astype(float)
    else:
        names = list(names) if names is not None else _names(g, distributions, defense, kind, as_defense, threats,
                                                               sources)
        if not names:
            raise ValueError(f"defense {defense!r} has no {kind} threat at {bits} bits")
        u = wide[names].to_numpy(float).mean(1)
    u = u * ok

    def stat(idx: np.ndarray) -> np.ndarray:
        return 100 * u[idx].sum(1) / np.maximum(ok[idx].sum(1), 1)

    return stat


def robust(per_image: pd.DataFrame, distributions: Mapping[str, PatchDistribution], defense: str, bits: int,
           kind: str, as_defense: str | None = None, threats: Sequence[Threat] = THREATS,
           names: Sequence[str] | None = None, sources: Sequence[str] | None = None) -> Stat:
    """Robust accuracy (%) of ``defense`` at ``bits`` over all images, on its threats of ``kind`` (or
    ``names``; ``sources`` as in :func:`rate`): per image, the share of those threats under which it stays
    correct (clean-correct and not broken; worst case: correct under every threat), averaged over images."""
    g, ok, wide = _cell(per_image, defense, bits)
    if kind == "worst case":
        u = (~wide.to_numpy(bool).any(1)).astype(float)
    else:
        names = list(names) if names is not None else _names(g, distributions, defense, kind, as_defense, threats,
                                                               sources)
        if not names:
            raise ValueError(f"defense {defense!r} has no {kind} threat at {bits} bits")
        u = (~wide[names].to_numpy(bool)).astype(float).mean(1)
    u = u * ok

    def stat(idx: np.ndarray) -> np.ndarray:
        return 100 * u[idx].mean(1)

    return stat


def mean_of(stats: Sequence[Stat]) -> Stat:
    return lambda idx: np.mean([s(idx) for s in stats], axis=0)


def excluded_widths(bits: Sequence[int], who: Sequence[str], collapsed: Collection[tuple[str, int]]) -> dict[str, str]:
    """``{bits: "<defense> collapsed"}`` for every width at which a model of ``who`` collapsed."""
    flagged = {(d, int(b)) for d, b in collapsed}
    out = {}
    for b in bits:
        bad = [d for d in who if (d, int(b)) in flagged]
        if bad:
            out[str(b)] = ", ".join(bad) + " collapsed"
    return out


def convergence(ev: Evaluation) -> pd.DataFrame:
    """Per crafting attack (threat x attacked model: a defense at one width, its ensemble or random
    predictor, the surrogate): white-box ASR after all and after half its budget (half the steps or half the
    restarts, whichever fools fewer; random search: queries; fractions), its null floor (``null_floor``: a
    uniformly random patch per image at the places the attack chose, on the same images, or for the universal
    patch one random patch at its places; 0 where not measured: the surrogate's per-image patches, the start
    transfer, EOT, random search), the gap and whether it converged (the doubling rule, and its
    ASR's Wilson lower bound above the floor: an attack no better than a random patch does nothing)."""
    st = ev.strength
    n = st.n_ok.clip(lower=1)
    floor = (st.k_floor / n).fillna(0.0) if "k_floor" in st else pd.Series(0.0, index=st.index)
    out = st.assign(n=st.n_ok, white_box_asr=st.k_full / n, white_box_asr_half_steps=st.k_half / n, null_floor=floor)
    out = out.assign(gap=out.white_box_asr - out.white_box_asr_half_steps)
    out["converged"] = [is_converged(a, h, clean_floor=f, n=int(k)) for a, h, f, k in
                        zip(out.white_box_asr, out.white_box_asr_half_steps, out.null_floor, out.n)]
    cost = [c for c in ("image_steps_run", "image_steps_full_budget") if c in out]
    return out[["threat", "target", "defense", "bits", "steps", "n", "white_box_asr", "white_box_asr_half_steps",
                "null_floor", "gap", "converged", *cost]]


def attack_strength(ev: Evaluation, defenses: Sequence[str] | None = None,
                    exclude: Sequence[str] = (), collapsed: Collection[tuple[str, int]] = ()) -> list[dict]:
    """One entry per evaluation attack (threat, except ``exclude``): the attacked model of ``defenses``
    (default: all; the transfer threats' only target, the FP surrogate, always counts: its per-image patches and
    its universal patch, read at half and all of its steps) on which the attack
    is least converged, named "<threat> on <target>" (see :func:`convergence`): a model on which it did not
    converge first (also one it fooled nothing on: a no-op attack on one defense would credit that defense
    with robustness), then the one whose attack gained most from its second half of steps. The
    ``collapsed`` (defense, bits) cells, which the claims leave out, do not count."""
    conv = convergence(ev)
    gone = {(d, int(b)) for d, b in collapsed}
    if gone:  # a row without a width (NaN) is no collapsed cell
        conv = conv[[not (b == b and b is not None and (d, int(b)) in gone) for d, b in zip(conv.defense, conv.bits)]]
    out = []
    for threat, g in conv.groupby("threat", sort=False):
        if threat in exclude:
            continue
        if defenses is not None:
            g = g[g.defense.isin([*defenses, "FP surrogate"]) & (g.n > 0)]
        if g.empty:
            continue
        r = g.loc[g.assign(open_=~g.converged.astype(bool)).sort_values(["open_", "gap"], ascending=False,
                                                                          kind="stable").index[0]]
        out.append({"name": f"{threat} on {r.target}", "white_box_asr": float(r.white_box_asr),
                    "white_box_asr_half_steps": float(r.white_box_asr_half_steps), "clean_floor": float(r.null_floor),
                    "steps": int(r.steps), "n": int(r.n),
                    # what the attack cost on that model (image-steps run against its full budget; None where
                    # unknown: random search, the universal patch, results from before it was recorded)
                    **{k: (None if k not in r or r[k] != r[k] else int(r[k]))
                       for k in ("image_steps_run", "image_steps_full_budget")}})
    return out


def _robust_per_image(per_image: pd.DataFrame, defense: str, bits: int, threat: str) -> np.ndarray | None:
    g = per_image[(per_image.defense == defense) & (per_image.bits == bits) & (per_image.threat == threat)]
    if g.empty:
        return None
    g = g.sort_values("image")
    return (g.clean_ok.to_numpy(bool) & ~g.broken.to_numpy(bool)).astype(float)


def defends_table(per_image: pd.DataFrame, seen: Mapping[str, str | None], starts: Mapping[str, str | None],
                  collapsed: Collection[tuple[str, int]] = (), n_boot: int = 2000) -> pd.DataFrame:
    """Does every defense defend? Per defense of ``seen`` (defense -> its own seen threat) and width: its
    white-box robust accuracy and ASR on that threat beside its undefended start's (``starts``), the
    paired bootstrap interval of the robust-accuracy difference (points), and a row "mean" over the widths
    it serves with the verdict ``defends``: True if no width collapsed and the mean difference's lower
    bound is above 0 (see the module doc). A defense without a seen threat or a start is left out."""
    flagged = {(d, int(b)) for d, b in collapsed}
    rows = []
    for d, threat in seen.items():
        start = starts.get(d)
        if not threat or not start:
            continue
        bits = sorted({int(b) for b in per_image.bits[(per_image.defense == d) & (per_image.threat == threat)]},
                      reverse=True)
        per, diffs = [], []
        for b in bits:
            a, s = _robust_per_image(per_image, d, b, threat), _robust_per_image(per_image, start, b, threat)
            if a is None or s is None:
                continue
            iv = paired_bootstrap(a, s, n_boot=n_boot)
            g = per_image[(per_image.defense == d) & (per_image.bits == b) & (per_image.threat == threat)]
            gs = per_image[(per_image.defense == start) & (per_image.bits == b) & (per_image.threat == threat)]
            asr = 100 * (g.broken & g.clean_ok).sum() / max(int(g.clean_ok.sum()), 1)
            asr_s = 100 * (gs.broken & gs.clean_ok).sum() / max(int(gs.clean_ok.sum()), 1)
            is_c = (d, b) in flagged
            per.append({"defense": d, "start": start, "threat": threat, "bits": str(b), "robust": 100 * a.mean(),
                        "start robust": 100 * s.mean(), "difference": 100 * iv.value, "ci_low": 100 * iv.low,
                        "ci_high": 100 * iv.high, "asr": asr, "start asr": asr_s, "collapsed": is_c, "n": len(a),
                        "defends": (not is_c) and iv.low > 0})
            diffs.append(a - s)
        if not per:
            continue
        stack = np.stack(diffs)
        m = bootstrap(lambda idx, stack=stack: 100 * stack[:, idx].mean(-1).mean(0), stack.shape[1], n_boot)
        any_c = any(dd == d for dd, _ in flagged)  # a collapse at any width it serves, evaluated here or not
        rows.extend(per)
        rows.append({"defense": d, "start": start, "threat": threat, "bits": "mean",
                     "robust": float(np.mean([r["robust"] for r in per])),
                     "start robust": float(np.mean([r["start robust"] for r in per])), "difference": m.value,
                     "ci_low": m.low, "ci_high": m.high, "asr": float(np.mean([r["asr"] for r in per])),
                     "start asr": float(np.mean([r["start asr"] for r in per])), "collapsed": any_c,
                     "n": per[0]["n"], "defends": (not any_c) and m.low > 0})
    return pd.DataFrame(rows, columns=["defense", "start", "threat", "bits", "robust", "start robust", "difference",
                                       "ci_low", "ci_high", "asr", "start asr", "collapsed", "n", "defends"])


def defends_of(table: pd.DataFrame) -> dict[str, bool]:
    """``{defense: defends}`` from the "mean" rows of a :func:`defends_table`."""
    m = table[table.bits == "mean"]
    return {str(d): bool(v) for d, v in zip(m.defense, m.defends)}


def _none_if_nan(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def defense_entries(threats: pd.DataFrame, clean: pd.DataFrame, budget: pd.DataFrame,
                    models: Mapping[str, Mapping[int, TrainedModel]], starts: Mapping[str, str | None],
                    collapsed: Collection[tuple[str, int]] = (), chapter: str = "") -> list[dict[str, Any]]:
    """One ``defenses.json`` entry per model and width: ``defense``, ``bits``, ``seed``, ``steps`` (optimiser
    steps at that width, from the budget table), ``fidelity`` (the last epoch's; None without an inner
    attack), ``clean`` (clean accuracy, %), ``robust`` with ``robust_ci_low`` / ``robust_ci_high`` (the
    worst-case robust accuracy over every threat, %, Wilson interval), ``start_robust`` (its undefended
    start's, None for an undefended model), ``n`` (evaluation images), ``collapsed`` (bool), and
    ``chapter``, ``start``, ``robust_reading``. ``threats`` is an :func:`~qadtr_core.evaluation.robustness.asr_table`,
    ``clean`` a :func:`~qadtr_core.evaluation.robustness.clean_table`. A width the threat matrix did not
    attack (``Profile.defense_eval_bits``) keeps its entry, with ``robust``, its interval, ``start_robust`` and
    ``n`` None and ``robust_reading`` saying so: no number stands in for an attack that did not run."""
    flagged = {(d, int(b)) for d, b in collapsed}
    worst = threats[threats.threat == WORST].set_index(["defense", "bits"])
    acc = clean.set_index(["defense", "bits"]).clean_acc
    steps = budget.set_index("defense")
    out = []
    for d, per_bits in models.items():
        for b, tm in per_bits.items():
            history = tm.record.get("history") or [{}]
            start = starts.get(d)
            col = f"steps at {b} b"
            k = steps.loc[d, col] if d in steps.index and col in steps.columns else None
            entry = {"chapter": chapter, "defense": d, "bits": int(b), "seed": int(tm.config.seed),
                     "steps": None if k is None or (isinstance(k, float) and math.isnan(k)) else int(k),
                     "fidelity": _none_if_nan(history[-1].get("fidelity")), "clean": float(acc.loc[(d, b)]),
                     "start": start, "collapsed": (d, int(b)) in flagged}
            if (d, b) in worst.index:
                w = worst.loc[(d, b)]
                has_start = start is not None and (start, b) in worst.index
                entry.update({"robust": float(w.robust), "robust_ci_low": float(w.robust_ci_low),
                              "robust_ci_high": float(w.robust_ci_high),
                              "start_robust": float(worst.loc[(start, b)].robust) if has_start else None,
                              "n": int(w.n_images),
                              "robust_reading": "worst case over every threat attacked (white-box, transfer, "
                                                "random search; the profile's Profile.defense_threats)"})
            else:
                entry.update({"robust": None, "robust_ci_low": None, "robust_ci_high": None, "start_robust": None,
                              "n": None, "robust_reading": "not attacked: the profile's threat matrix leaves out "
                                                           "this width (Profile.defense_eval_bits)"})
            out.append(entry)
    return out


def write_defenses_json(path: str | Path, chapter: str, profile: str, entries: Sequence[Mapping[str, Any]],
                        seeds: Collection[int] | None = None) -> dict:
    """Write ``entries`` of ``chapter`` into ``defenses.json`` at ``path``, replacing this chapter's entries of
    ``seeds`` (default: the entries' own seeds) and keeping the other chapters' and seeds' entries where the
    file already holds the same profile; returns it.
    The read and the write hold a lock in the artifact cache, so that two seeds' runs of a chapter writing
    at once (a build with several workers) keep each other's entries."""
    path = Path(path)
    with file_lock(artifact_root() / "locks" / "defenses-json"):
        old = read_json(path) if path.exists() else {}
        seeds = {e["seed"] for e in entries} if seeds is None else set(seeds)
        kept = [e for e in old.get("entries", []) if old.get("profile") == profile
                and not (e.get("chapter") == chapter and e.get("seed") in seeds)]
        record = {"profile": profile, "entries": sorted([*kept, *entries], key=lambda e: (e["chapter"], e["seed"]))}
        write_json(path, record)
    return record
