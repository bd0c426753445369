"""Claim values C3, C4, C5 and C7 with paired bootstrap intervals over the evaluation images.

Every defense is evaluated on the same images, so a difference between defenses is read with a
*paired* bootstrap: one resample of the images recomputes every side of the difference, all widths
included (:mod:`qadtr_core.stats`; the same resampling as :func:`~qadtr_core.stats.paired_bootstrap`,
generalised to statistics of many per-image arrays). All values are in percent / points.

- C3: mean over widths of (the better of PBAT and DWQ on unseen threats) minus QADT-R on unseen
  threats, each defense's "unseen" from its own training distribution; also per width and on the
  per-image worst case over every threat (adaptive included).
- C4: PBAT's generalisation gap (unseen minus seen ASR) minus the same gap of the undefended QAT
  models under PBAT's definitions (a 10x10 patch is stronger for every model).
- C5: clean-accuracy drop of QADT-R against the undefended multi-width model, its starting point.
- C7: rise of the mean unseen ASR over widths when a component is removed (QADT-R's unseen threats
  for every variant, so that all variants meet the same threats).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .robustness import Evaluation, threat_kinds
from .stats import Interval, paired_bootstrap, wilson
from .threats import THREATS, PatchDistribution, Threat

Stat = Callable[[np.ndarray], np.ndarray]  # resample indices (B, n) -> statistic (B,)


def bootstrap(stat: Stat, n: int, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile interval of ``stat`` over image resamples (the point value on the images as they are)."""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    point = float(stat(np.arange(n)[None])[0])
    vals = stat(idx)
    q = (1 - level) / 2
    return Interval(point, float(np.quantile(vals, q)), float(np.quantile(vals, 1 - q)))


def _ci(i: Interval) -> dict[str, float]:
    return {"value": i.value, "ci_low": i.low, "ci_high": i.high}


def rate(per_image: pd.DataFrame, distributions: Mapping[str, PatchDistribution], defense: str, bits: int,
         kind: str, as_defense: str | None = None, threats: Sequence[Threat] = THREATS) -> Stat:
    """ASR (%) of ``defense`` at ``bits`` over its threats of ``kind`` ("seen", "unseen", "worst case").

    Per image, the score is the share of those threats that broke it (worst case: any threat); the ASR
    is its mean over clean-correct images, i.e. the mean of the threats' ASRs.
    """
    g = per_image[(per_image.defense == defense) & (per_image.bits == bits)]
    if g.empty:
        raise ValueError(f"no outcomes for defense {defense!r} at {bits} bits")
    kinds = threat_kinds(g, distributions, threats, {defense: as_defense} if as_defense else None)
    ok = g[g.threat == g.threat.iloc[0]].sort_values("image").clean_ok.to_numpy(bool)
    wide = g.pivot(index="image", columns="threat", values="broken").sort_index()
    if kind == "worst case":
        u = wide.to_numpy(bool).any(1).astype(float)
    else:
        names = sorted(set(g.threat[kinds == kind]))
        if not names:
            raise ValueError(f"defense {defense!r} has no {kind} threat at {bits} bits")
        u = wide[names].to_numpy(float).mean(1)
    u = u * ok

    def stat(idx: np.ndarray) -> np.ndarray:
        return 100 * u[idx].sum(1) / np.maximum(ok[idx].sum(1), 1)

    return stat


def _mean(stats: Sequence[Stat]) -> Stat:
    return lambda idx: np.mean([s(idx) for s in stats], axis=0)


def attack_strength(ev: Evaluation) -> list[dict]:
    """One entry per evaluation attack (threat): white-box ASR of the crafting attack on what it attacked,
    after all and after half its steps (pooled over every model it was run against)."""
    out = []
    for threat, g in ev.strength.groupby("threat", sort=False):
        n = max(int(g.n_ok.sum()), 1)
        out.append({"name": threat, "white_box_asr": g.k_full.sum() / n, "white_box_asr_half_steps": g.k_half.sum() / n,
                    "clean_floor": 0.0, "steps": int(g.steps.iloc[0]), "n": int(g.n_ok.sum())})
    return out


def defense_claims(ev: Evaluation, clean: pd.DataFrame, distributions: Mapping[str, PatchDistribution],
                   bit_set: Sequence[int], meta: Mapping, undefended: str = "QAT (undefended)",
                   multiwidth: str = "multi-width (undefended)", ours: str = "QADT-R",
                   baselines: Sequence[str] = ("PBAT", "DWQ"), n_boot: int = 2000) -> dict[str, dict]:
    """C3, C4 and C5 in the scorecard's layout (``meta``: ``seeds``, ``profile``)."""
    pi, n, bits = ev.per_image, ev.n, list(bit_set)
    strength = attack_strength(ev)

    def red(kind: str, bs: Sequence[int]) -> Stat:
        per = []
        for b in bs:
            base = [rate(pi, distributions, d, b, kind) for d in baselines]
            mine = rate(pi, distributions, ours, b, kind)
            per.append(lambda idx, base=base, mine=mine: np.min([s(idx) for s in base], axis=0) - mine(idx))
        return _mean(per)

    c3 = {**_ci(bootstrap(red("unseen", bits), n, n_boot)),
          "by_bits": {str(b): _ci(bootstrap(red("unseen", [b]), n, n_boot)) for b in bits},
          "worst_case": _ci(bootstrap(red("worst case", bits), n, n_boot)),
          "n": n, "seeds": list(meta["seeds"]), "profile": meta["profile"], "attack_strength": strength}

    def gap(d: str, b: int) -> Stat:
        un = rate(pi, distributions, d, b, "unseen", as_defense="PBAT")
        se = rate(pi, distributions, d, b, "seen", as_defense="PBAT")
        return lambda idx: un(idx) - se(idx)

    low = min(bits)
    pbat_gap, undef_gap = _mean([gap("PBAT", b) for b in bits]), _mean([gap(undefended, b) for b in bits])
    g = pi[(pi.defense == "PBAT") & (pi.bits == low)]
    kinds = threat_kinds(g, distributions)
    ok = int(g[g.threat == g.threat.iloc[0]].clean_ok.sum())

    def asr_ci(kind: str) -> dict[str, float]:
        sub = g[(kinds == kind) & g.clean_ok]
        k = int(round(sub.groupby("threat").broken.sum().mean())) if len(sub) else 0
        w = wilson(k, ok)
        return {"value": 100 * w.value, "ci_low": 100 * w.low, "ci_high": 100 * w.high}

    c4 = {**_ci(bootstrap(lambda idx: pbat_gap(idx) - undef_gap(idx), n, n_boot)),
          "at_low_bits": {"bits": low, **_ci(bootstrap(lambda idx: gap("PBAT", low)(idx) - gap(undefended, low)(idx),
                                                       n, n_boot))},
          "pbat_gap": _ci(bootstrap(pbat_gap, n, n_boot)), "undefended_gap": _ci(bootstrap(undef_gap, n, n_boot)),
          "seen_low": asr_ci("seen"), "unseen_low": asr_ci("unseen"),
          "n": n, "seeds": list(meta["seeds"]), "profile": meta["profile"],
          "attack_strength": [s for s in strength if s["name"] != "adaptive EOT"]}

    def correct(d: str, b: int) -> np.ndarray:
        return clean[(clean.defense == d) & (clean.bits == b)].sort_values("image").correct.to_numpy(float)

    by_bits = {b: paired_bootstrap(correct(multiwidth, b), correct(ours, b), n_boot=n_boot) for b in bits}
    worst_b = max(bits, key=lambda b: by_bits[b].value)
    scale = lambda i: Interval(100 * i.value, 100 * i.low, 100 * i.high)  # noqa: E731
    diffs = np.stack([correct(multiwidth, b) - correct(ours, b) for b in bits])
    n_clean = diffs.shape[1]
    c5 = {**_ci(scale(by_bits[worst_b])), "bits": worst_b, "by_bits": {str(b): _ci(scale(i)) for b, i in by_bits.items()},
          "mean_drop": _ci(bootstrap(lambda idx: 100 * diffs[:, idx].mean(-1).mean(0), n_clean, n_boot)),
          "n": n_clean, "seeds": list(meta["seeds"]), "profile": meta["profile"]}
    return {"C3": c3, "C4": c4, "C5": c5}


def ablation_claim(ev: Evaluation, distributions: Mapping[str, PatchDistribution], bit_set: Sequence[int],
                   meta: Mapping, full: str = "QADT-R", removed: Mapping[str, str] | None = None,
                   n_boot: int = 2000) -> dict[str, dict]:
    """C7: rise of the mean unseen ASR over widths when each component is removed (QADT-R's unseen threats)."""
    removed = removed or {"A-QAPA": "without A-QAPA", "DBWT": "without DBWT", "GIR": "without GIR"}
    pi, bits = ev.per_image, list(bit_set)
    base = _mean([rate(pi, distributions, full, b, "unseen") for b in bits])
    inc = {}
    for comp, name in removed.items():
        var = _mean([rate(pi, distributions, name, b, "unseen", as_defense=full) for b in bits])
        inc[comp] = _ci(bootstrap(lambda idx, var=var: var(idx) - base(idx), ev.n, n_boot))
    return {"C7": {"increase": inc, "n": ev.n, "seeds": list(meta["seeds"]), "profile": meta["profile"],
                   "attack_strength": attack_strength(ev)}}
