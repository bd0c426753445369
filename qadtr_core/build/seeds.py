"""Seeds as the unit of scale: a chapter's result table over several seeds, as means with t intervals.

``qadtr build --seeds 0 1 2`` runs every chapter once per seed; :func:`~qadtr_core.artifacts.save_table`
keeps a copy of each table per seed (``results/<chapter>/<profile>/seeds/<seed>/``). A chapter (or the
scorecard) then reads them with :func:`seed_tables` and summarises them with :func:`aggregate_seeds`,
which uses :func:`qadtr_core.stats.across_seeds` (mean and Student-t 95 % interval; one seed gives no
interval).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from ..artifacts import artifact_root, load_table
from ..stats import across_seeds


def available_seeds(chapter: str, profile: str, name: str) -> list[int]:
    """The seeds for which ``name`` of ``chapter`` was saved under ``profile``."""
    d = artifact_root() / "results" / chapter / profile / "seeds"
    return sorted(int(p.parent.name) for p in d.glob(f"*/{name}.csv") if p.parent.name.isdigit())


def seed_tables(chapter: str, profile: str, name: str, seeds: Iterable[int] | None = None) -> dict[int, pd.DataFrame]:
    """The per-seed copies of a result table (default: every seed found)."""
    seeds = available_seeds(chapter, profile, name) if seeds is None else list(seeds)
    return {s: load_table(chapter, profile, name, seed=s)[0] for s in seeds}


def aggregate_seeds(tables: Mapping[int, pd.DataFrame] | Sequence[pd.DataFrame], value: str,
                    by: Sequence[str]) -> pd.DataFrame:
    """One row per group ``by``: the mean of ``value`` over seeds, its 95 % t interval and the seed count.

    Each table is first reduced to one value per group (its mean within the seed), so that a seed
    counts once whatever its number of rows. Columns: ``*by, value, ci_low, ci_high, n_seeds``.
    """
    frames = tables.values() if isinstance(tables, Mapping) else tables
    per_seed = [t.groupby(list(by), sort=False)[value].mean() for t in frames]
    if not per_seed:
        raise ValueError("no tables to aggregate")
    stacked = pd.concat(per_seed, axis=1)
    rows = []
    for group, vals in stacked.iterrows():
        v = vals.dropna().to_numpy()
        ci = across_seeds(v)
        keys = group if isinstance(group, tuple) else (group,)
        rows.append({**dict(zip(by, keys)), value: ci.value, "ci_low": ci.low, "ci_high": ci.high, "n_seeds": len(v)})
    return pd.DataFrame(rows)
