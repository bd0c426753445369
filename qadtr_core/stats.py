"""Intervals for every rate and every difference the book reports.

- :func:`wilson`: the Wilson score interval of a share ``k / n`` (good at small n and near 0 or 1,
  unlike the normal approximation).
- :func:`paired_bootstrap`: the interval of a difference of two statistics measured on the *same*
  images (resampling images, not the two sides separately, so that their correlation is kept).
- :func:`bootstrap_mean`: the interval of a mean of per-image values (e.g. a similarity metric).
- :func:`across_seeds`: mean and a t interval over independent seeds.

All intervals are 95 % by default; resampling is seeded, so a table is the same on every rerun.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
# Student-t 97.5 % quantiles for 1..10 degrees of freedom (no scipy needed for a handful of seeds).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its ``low``-``high`` interval (same units as ``value``)."""

    value: float
    low: float
    high: float

    def excludes(self, x: float) -> bool:
        """True if ``x`` lies outside the interval (the estimate differs from ``x``)."""
        return x < self.low or x > self.high

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}value": self.value, f"{prefix}ci_low": self.low, f"{prefix}ci_high": self.high}

    def __str__(self) -> str:
        return f"{self.value:.3g} [{self.low:.3g}, {self.high:.3g}]"


def wilson(k: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval of ``k`` successes in ``n`` trials; ``n = 0`` gives ``(nan, 0, 1)``."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Interval(float("nan"), 0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def _resample_index(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_mean(values: Sequence[float] | np.ndarray, n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> Interval:
    """Percentile-bootstrap interval of the mean of per-image ``values``."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"values must be a non-empty 1-d sequence, got shape {v.shape}")
    means = v[_resample_index(len(v), n_boot, seed)].mean(1)
    a = (1 - level) / 2
    return Interval(float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                     statistic: Callable[[np.ndarray], np.ndarray] | None = None, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95, valid_a: np.ndarray | None = None, valid_b: np.ndarray | None = None) -> Interval:
    """Interval of ``stat(a) - stat(b)`` for per-image outcomes ``a`` and ``b`` on the same images.

    ``a`` and ``b`` are per-image values (e.g. 1 = the attack broke the image). The default statistic
    is the mean over the images each side counts: ``valid_a`` / ``valid_b`` (boolean, per image) say
    which images enter each side's denominator, as an ASR over clean-correct images needs; by default
    all do. One resample draws images once and recomputes both sides on it.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"a and b must be 1-d and of the same non-zero length, got {a.shape} and {b.shape}")
    va = np.ones_like(a, dtype=bool) if valid_a is None else np.asarray(valid_a, dtype=bool)
    vb = np.ones_like(b, dtype=bool) if valid_b is None else np.asarray(valid_b, dtype=bool)
    idx = _resample_index(len(a), n_boot, seed)

    def share(v: np.ndarray, m: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
        vv, mm = v[rows], m[rows]
        return (vv * mm).sum(-1) / np.maximum(mm.sum(-1), 1)

    if statistic is None:
        point = float(share(a, va, slice(None)) - share(b, vb, slice(None)))
        diffs = share(a, va, idx) - share(b, vb, idx)
    else:
        point = float(statistic(a[None])[0] - statistic(b[None])[0])
        diffs = statistic(a[idx]) - statistic(b[idx])
    q = (1 - level) / 2
    return Interval(point, float(np.quantile(diffs, q)), float(np.quantile(diffs, 1 - q)))


def across_seeds(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean over seeds with a Student-t interval; one seed gives ``(v, nan, nan)`` (no spread known)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        raise ValueError("no values")
    if len(v) == 1:
        return Interval(float(v[0]), float("nan"), float("nan"))
    if level != 0.95:
        raise ValueError(f"across_seeds supports level 0.95 only, got {level}")
    df = len(v) - 1
    t = _T975[df - 1] if df <= len(_T975) else Z95
    half = t * v.std(ddof=1) / math.sqrt(len(v))
    return Interval(float(v.mean()), float(v.mean() - half), float(v.mean() + half))
