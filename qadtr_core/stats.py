"""Intervals for every rate and every difference the book reports.

- :func:`wilson`: the Wilson score interval of a share ``k / n`` (good at small n and near 0 or 1,
  unlike the normal approximation).
- :func:`paired_bootstrap`: the interval of a difference of two statistics measured on the *same*
  images (resampling images, not the two sides separately, so that their correlation is kept).
- :func:`bootstrap_mean`: the interval of a mean of per-image values (e.g. a similarity metric).
- :func:`across_seeds`: mean and a Student-t interval over independent seeds (:func:`student_t_quantile`,
  exact for every number of degrees of freedom, without scipy).

All intervals are 95 % by default; resampling is seeded, so a table is the same on every rerun.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """A point estimate with its ``low``-``high`` interval (same units as ``value``); ``dropped`` counts the
    bootstrap resamples left out of the percentiles because their statistic was undefined (NaN)."""

    value: float
    low: float
    high: float
    dropped: int = field(default=0, compare=False)

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
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exactly 0 (1) at k = 0 (n), not a rounding residue
    high = 1.0 if k == n else min(1.0, centre + half)
    return Interval(p, low, high)


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

    A resample in which one side has no valid image has no rate on that side: its difference is NaN
    and it is left out of the percentiles (``dropped`` counts them; all dropped gives NaN bounds). A
    custom ``statistic`` (rows of per-image values -> one value per row) sees the values only, so it
    cannot be combined with ``valid_a`` / ``valid_b`` (ValueError; mask inside the statistic instead).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"a and b must be 1-d and of the same non-zero length, got {a.shape} and {b.shape}")
    if statistic is not None and (valid_a is not None or valid_b is not None):
        raise ValueError("a custom statistic cannot take valid_a / valid_b (it would silently ignore them): "
                         "apply the masks inside the statistic, or use the default share")
    va = np.ones_like(a, dtype=bool) if valid_a is None else np.asarray(valid_a, dtype=bool)
    vb = np.ones_like(b, dtype=bool) if valid_b is None else np.asarray(valid_b, dtype=bool)
    if va.shape != a.shape or vb.shape != b.shape:
        raise ValueError(f"valid_a / valid_b must have the shape of a and b, {a.shape}; got {va.shape} and {vb.shape}")
    idx = _resample_index(len(a), n_boot, seed)

    def share(v: np.ndarray, m: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
        vv, mm = v[rows], m[rows]
        count = mm.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, (vv * mm).sum(-1) / np.maximum(count, 1), np.nan)

    if statistic is None:
        point = float(share(a, va, slice(None)) - share(b, vb, slice(None)))
        diffs = share(a, va, idx) - share(b, vb, idx)
    else:
        point = float(statistic(a[None])[0] - statistic(b[None])[0])
        diffs = np.asarray(statistic(a[idx]) - statistic(b[idx]), dtype=float)
    kept = diffs[~np.isnan(diffs)]
    dropped = int(len(diffs) - len(kept))
    if len(kept) == 0:
        return Interval(point, float("nan"), float("nan"), dropped)
    q = (1 - level) / 2
    return Interval(point, float(np.quantile(kept, q)), float(np.quantile(kept, 1 - q)), dropped)


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom (Abramowitz & Stegun 26.7.3-4: finite
    sums in cos(theta), theta = atan(t / sqrt(df)), exact for integer df)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df == 1:
        return 2 * theta / math.pi
    term, total = 1.0, 1.0
    if df % 2 == 1:
        for k in range(1, (df - 1) // 2):  # 1 + 2/3 c^2 + (2*4)/(3*5) c^4 + ... up to c^(df-3)
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return (2 / math.pi) * (theta + s * math.cos(theta) * total)
    for k in range(1, df // 2):  # 1 + 1/2 c^2 + (1*3)/(2*4) c^4 + ... up to c^(df-2)
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def student_t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` (a positive integer) degrees of freedom, for
    ``0.5 <= p < 1``: the root of the exact distribution function, found by bisection to 1e-12."""
    if int(df) != df or df < 1:
        raise ValueError(f"df must be a positive integer, got {df}")
    if not 0.5 <= p < 1:
        raise ValueError(f"p must lie in [0.5, 1), got {p}")
    df, target = int(df), 2 * p - 1  # P(|T| <= t) = 2 p - 1
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < target:
        hi *= 2
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < target else (lo, mid)
    return (lo + hi) / 2


def across_seeds(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean over seeds with a Student-t interval (t with n - 1 degrees of freedom, whatever n); one seed
    gives ``(v, nan, nan)`` (no spread known)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        raise ValueError("no values")
    if len(v) == 1:
        return Interval(float(v[0]), float("nan"), float("nan"))
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    t = student_t_quantile(1 - (1 - level) / 2, len(v) - 1)
    half = t * v.std(ddof=1) / math.sqrt(len(v))
    return Interval(float(v.mean()), float(v.mean() - half), float(v.mean() + half))
