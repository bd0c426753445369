"""Claim values C3, C4, C5 and C7 with paired bootstrap intervals over the evaluation images.

Every defense is evaluated on the same images, so a difference between defenses is read with a
*paired* bootstrap: one resample of the images recomputes every side of the difference, all widths
included (:mod:`qadtr_core.stats`; the same resampling as :func:`~qadtr_core.stats.paired_bootstrap`,
generalised to statistics of many per-image arrays). All values are in percent / points.

- C3: mean over widths of (the better of PBAT and DWQ) minus QADT-R, on the threats unseen by **all
  three** defenses at that width (:func:`common_unseen`: the intersection of their own "unseen" sets),
  so that every side of the difference averages the same threats (each defense's own unseen mean, a
  different set of threats per defense, stays in the descriptive tables only); also per width (at
  95 % and, ``by_bits_corrected``, Bonferroni-corrected for the number of widths, which the rule reads
  when it takes the best width) and on the per-image worst case over every threat (adaptive included).
- C4: PBAT's generalisation gap (unseen minus seen ASR) minus the same gap of the undefended QAT
  models under PBAT's definitions (a 10x10 patch is stronger for every model).
- C5: clean-accuracy drop of QADT-R against the undefended multi-width model, its starting point.
- C7: rise of the mean unseen ASR over widths when a component is removed (QADT-R's unseen threats
  for every variant, so that all variants meet the same threats).

Attack convergence is checked per attacked model (:func:`convergence`); each claim's
``attack_strength`` keeps, per threat, the entry of the model behind that claim whose attack gained the
most from its second half of steps (the worst case), so that an attack still improving against a
defended model is not hidden by pooling it with the models it had already broken.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .robustness import Evaluation, threat_kinds
from .stats import Interval, paired_bootstrap, wilson
from .strength import is_converged
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


def common_unseen(per_image: pd.DataFrame, distributions: Mapping[str, PatchDistribution], defenses: Sequence[str],
                  bits: int, threats: Sequence[Threat] = THREATS) -> list[str]:
    """The threats evaluated at ``bits`` that are unseen for every one of ``defenses`` (sorted names)."""
    by_name = {t.name: t for t in threats}
    present = sorted(set(per_image.threat[per_image.bits == bits]))
    return [th for th in present if all(distributions[d].kind(by_name[th], int(bits)) == "unseen" for d in defenses)]


def rate(per_image: pd.DataFrame, distributions: Mapping[str, PatchDistribution], defense: str, bits: int,
         kind: str, as_defense: str | None = None, threats: Sequence[Threat] = THREATS,
         names: Sequence[str] | None = None) -> Stat:
    """ASR (%) of ``defense`` at ``bits`` over its threats of ``kind`` ("seen", "unseen", "worst case"),
    or over the threats ``names`` when given (``kind`` then only tells the worst case apart).

    Per image, the score is the share of those threats that broke it (worst case: any threat); the ASR
    is its mean over clean-correct images, i.e. the mean of the threats' ASRs.
    """
    g = per_image[(per_image.defense == defense) & (per_image.bits == bits)]
    if g.empty:
        raise ValueError(f"no outcomes for defense {defense!r} at {bits} bits")
    ok = g[g.threat == g.threat.iloc[0]].sort_values("image").clean_ok.to_numpy(bool)
    wide = g.pivot(index="image", columns="threat", values="broken").sort_index()
    if kind == "worst case":
        u = wide.to_numpy(bool).any(1).astype(float)
    else:
        if names is None:
            kinds = threat_kinds(g, distributions, threats, {defense: as_defense} if as_defense else None)
            names = sorted(set(g.threat[kinds == kind]))
        if not names:
            raise ValueError(f"defense {defense!r} has no {kind} threat at {bits} bits")
        u = wide[list(names)].to_numpy(float).mean(1)
    u = u * ok

    def stat(idx: np.ndarray) -> np.ndarray:
        return 100 * u[idx].sum(1) / np.maximum(ok[idx].sum(1), 1)

    return stat


def _mean(stats: Sequence[Stat]) -> Stat:
    return lambda idx: np.mean([s(idx) for s in stats], axis=0)


def convergence(ev: Evaluation) -> pd.DataFrame:
    """Per crafting attack (threat x attacked model: a defense at one width, its ensemble, the surrogate):
    white-box ASR after all and after half its steps (fractions), the gap and whether it converged."""
    st = ev.strength
    n = st.n_ok.clip(lower=1)
    out = st.assign(n=st.n_ok, white_box_asr=st.k_full / n, white_box_asr_half_steps=st.k_half / n)
    out = out.assign(gap=out.white_box_asr - out.white_box_asr_half_steps)
    out["converged"] = [is_converged(a, h, n=int(k)) for a, h, k in zip(out.white_box_asr, out.white_box_asr_half_steps,
                                                                       out.n)]
    return out[["threat", "target", "defense", "bits", "steps", "n", "white_box_asr", "white_box_asr_half_steps",
                "gap", "converged"]]


def attack_strength(ev: Evaluation, defenses: Sequence[str] | None = None,
                    exclude: Sequence[str] = ()) -> list[dict]:
    """One entry per evaluation attack (threat, except ``exclude``): the attacked model of ``defenses``
    (default: all; the transfer threat's only target, the FP surrogate, always counts) whose attack
    gained most from its second half of steps, named "<threat> on <target>" (see :func:`convergence`)."""
    conv = convergence(ev)
    out = []
    for threat, g in conv.groupby("threat", sort=False):
        if threat in exclude:
            continue
        if defenses is not None:
            g = g[g.defense.isin([*defenses, "FP surrogate"]) & (g.n > 0)]
        if g.empty:
            continue
        r = g.loc[g.gap.idxmax()]
        out.append({"name": f"{threat} on {r.target}", "white_box_asr": float(r.white_box_asr),
                    "white_box_asr_half_steps": float(r.white_box_asr_half_steps), "clean_floor": 0.0,
                    "steps": int(r.steps), "n": int(r.n)})
    return out


def defense_claims(ev: Evaluation, clean: pd.DataFrame, distributions: Mapping[str, PatchDistribution],
                   bit_set: Sequence[int], meta: Mapping, undefended: str = "QAT (undefended)",
                   multiwidth: str = "multi-width (undefended)", ours: str = "QADT-R",
                   baselines: Sequence[str] = ("PBAT", "DWQ"), n_boot: int = 2000) -> dict[str, dict]:
    """C3, C4 and C5 in the scorecard's layout (``meta``: ``seeds``, ``profile``)."""
    pi, n, bits = ev.per_image, ev.n, list(bit_set)
    compared = [*baselines, ours]

    def red(kind: str, bs: Sequence[int]) -> Stat:
        per = []
        for b in bs:
            names = common_unseen(pi, distributions, compared, b) if kind == "unseen" else None
            if kind == "unseen" and not names:
                raise ValueError(f"no threat is unseen by all of {', '.join(compared)} at {b} bits")
            base = [rate(pi, distributions, d, b, kind, names=names) for d in baselines]
            mine = rate(pi, distributions, ours, b, kind, names=names)
            per.append(lambda idx, base=base, mine=mine: np.min([s(idx) for s in base], axis=0) - mine(idx))
        return _mean(per)

    corrected = 1 - 0.05 / len(bits)  # the rule takes the best width: Bonferroni over the widths
    c3 = {**_ci(bootstrap(red("unseen", bits), n, n_boot)),
          "by_bits": {str(b): _ci(bootstrap(red("unseen", [b]), n, n_boot)) for b in bits},
          "by_bits_corrected": {str(b): _ci(bootstrap(red("unseen", [b]), n, n_boot, level=corrected)) for b in bits},
          "worst_case": _ci(bootstrap(red("worst case", bits), n, n_boot)),
          "n": n, "seeds": list(meta["seeds"]), "profile": meta["profile"],
          "attack_strength": attack_strength(ev, compared)}

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
          "attack_strength": attack_strength(ev, ["PBAT", undefended],
                                             exclude=[t.name for t in THREATS if t.source == "adaptive"])}

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
                   "attack_strength": attack_strength(ev, [full, *removed.values()])}}
