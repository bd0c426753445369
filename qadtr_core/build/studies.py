"""The two defense experiments as functions: the defenses chapter and the ablation chapter.

The notebooks call :func:`defense_study` and :func:`ablation_study`; ``python -m qadtr_core.build.studies``
runs the same calls ahead of time (on a GPU, say) so that the notebooks find every model and every
crafted patch in the cache and only evaluate. Both studies use one evaluation: every threat of
:data:`~qadtr_core.evaluation.threats.THREATS` (or the profile's ``defense_threats``) at every width (or the
profile's ``defense_eval_bits``) on the first ``Profile.n_defense_eval`` test images (transfers from
one common surrogate, an independently seeded undefended FP model:
:func:`~qadtr_core.defenses.recipes.surrogate_config`; the universal patch crafted on its training images;
random search on what the gradient threats left, ``Profile.defense_rs_queries`` queries per image), DWQ's
random-precision inference (EOT, ``Profile.defense_rp_draws`` draws), L-inf PGD against DWQ and its start
(DWQ's own seen threat), kept per image, and clean accuracy per image on the first ``Profile.n_eval``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..data import Cifar10, load_cifar10, to_float
from ..defenses.recipes import ablation_configs, budget_table, defense_configs, fidelity_table, surrogate_config, train_all
from ..evaluation.defense_metrics import defends_of, defends_table, defense_entries, write_defenses_json
from ..evaluation.robustness import (
    PGD_THREAT,
    Evaluation,
    aqapa_table,
    asr_table,
    clean_outcomes,
    clean_table,
    collapse_table,
    collapsed_cells,
    evaluate_threats,
    gradient_norm_table,
    pgd_outcomes,
    random_precision_table,
    starts_of,
    surrogate_universal_patch,
)
from ..evaluation.threats import (
    THREATS,
    PatchDistribution,
    Threat,
    check_seen_threats,
    distribution_of,
    own_seen_threat,
    select_threats,
)
from ..profiles import Profile, get_profile
from ..train import TrainConfig
from ..zoo import TrainedModel, get_or_train

ATTACK_SEED_OFFSET = 4242  # evaluation attacks never share a seed with the training inner attacks
N_GRADIENT_NORM = 100  # evaluation images of the input-gradient norm table


@dataclass
class Study:
    """Models, per-image outcomes and tables of one experiment (percent; see :mod:`qadtr_core.evaluation.robustness`).

    Attributes:
        configs, models: per defense, ``{bits: ...}``.
        distributions: each defense's training patches (what "seen" means for it).
        evaluation: per-image threat outcomes and attack strength (n = ``n_eval`` images).
        threats: the :func:`~qadtr_core.evaluation.robustness.asr_table` of ``evaluation`` (robust accuracy and ASR,
            collapsed cells flagged).
        clean_per_image, clean: clean correctness per image and its table (n = ``n_clean`` images).
        budget: :func:`~qadtr_core.defenses.recipes.budget_table` with wall times.
        starts: each defense's undefended start (None for the undefended models).
        collapsed: the (defense, bits) cells flagged collapsed in their model's build record.
        seen: each defended model's own seen threat (DWQ: L-inf PGD, the attack it trains on).
        pgd: per-image PGD outcomes of the PGD-trained defenses and their starts.
        defends: :func:`~qadtr_core.evaluation.defense_metrics.defends_table`.
        collapse, gradient_norms, aqapa, fidelity, random_precision: the chapters' diagnostic tables.
        seed: the run's seed (the training seed of its defense models; their shared starts may be another's).
        eval_bits, threat_set: the widths and threats the threat matrix attacked (``Profile.defense_eval_bits``,
            ``Profile.defense_threats``); clean accuracy and the diagnostics cover every width of ``configs``.
    """

    configs: dict[str, dict[int, TrainConfig]]
    models: dict[str, dict[int, TrainedModel]]
    distributions: dict[str, PatchDistribution]
    evaluation: Evaluation
    threats: pd.DataFrame
    clean_per_image: pd.DataFrame
    clean: pd.DataFrame
    budget: pd.DataFrame
    n_eval: int
    n_clean: int
    starts: dict[str, str | None]
    collapsed: set[tuple[str, int]]
    seen: dict[str, str | None]
    pgd: pd.DataFrame
    defends: pd.DataFrame
    collapse: pd.DataFrame
    gradient_norms: pd.DataFrame
    aqapa: pd.DataFrame
    fidelity: pd.DataFrame
    random_precision: pd.DataFrame
    seed: int = 0
    eval_bits: list[int] = field(default_factory=list)
    threat_set: tuple[Threat, ...] = ()

    @property
    def attacks_every_cell(self) -> bool:
        """Whether the threat matrix attacked every width the models serve with every threat of
        :data:`~qadtr_core.evaluation.threats.THREATS` (the paper profile), not a subset of the cells."""
        served = sorted({b for per in self.configs.values() for b in per})
        return sorted(self.eval_bits) == served and tuple(self.threat_set) == THREATS

    def defends_by_defense(self) -> dict[str, bool]:
        """``{defense: beats its start on its own seen threat}``
        (:func:`~qadtr_core.evaluation.defense_metrics.defends_of`)."""
        return defends_of(self.defends)

    def entries(self, chapter: str) -> list[dict]:
        """This study's ``defenses.json`` entries (:func:`~qadtr_core.evaluation.defense_metrics.defense_entries`)."""
        return defense_entries(self.threats, self.clean, self.budget, self.models, self.starts, self.collapsed, chapter)

    def write_entries(self, path: str | Path, chapter: str, profile: str) -> dict:
        """Merge :meth:`entries` into ``defenses.json`` at ``path`` (the other chapters' and seeds' entries kept).
        Only the models trained at this run's seed are written: a start shared with another seed
        (``Profile.defense_start_seed``) is that seed's run's entry, so every model and width has one entry."""
        own = [e for e in self.entries(chapter) if e["seed"] == self.seed]
        return write_defenses_json(path, chapter, profile, own, seeds={self.seed})


def _strategy(per_bits: dict[int, TrainConfig]) -> str:
    return next(iter(per_bits.values())).strategy


def eval_widths(profile: Profile, bit_set: Sequence[int]) -> list[int]:
    """The widths of ``bit_set`` the threat matrix attacks: those of ``Profile.defense_eval_bits`` (every width
    if it is empty)."""
    chosen = profile.defense_eval_bits
    widths = [b for b in bit_set if not chosen or b in chosen]
    if not widths:
        raise ValueError(f"profile {profile.name!r} attacks the threats at {list(chosen)} bits only, and the "
                         f"chapter's bit set {list(bit_set)} has none of them")
    return widths


def run_study(configs: dict[str, dict[int, TrainConfig]], profile: Profile, seed: int = 0, data: Cifar10 | None = None,
              device: str = "cpu", progress: bool = True) -> Study:
    """Train (or load) every model of ``configs`` and evaluate it under the profile's threats at the profile's
    evaluated widths (:func:`eval_widths`) and, at every width, on clean images."""
    data = data or load_cifar10()
    bit_set = list(dict.fromkeys(b for per in configs.values() for b in per))
    widths, threats = eval_widths(profile, bit_set), select_threats(profile.defense_threats)
    dists = {name: distribution_of(next(iter(per.values())).strategy_params) for name, per in configs.items()}
    check_seen_threats(dists, widths, threats)
    models = train_all(configs, data, progress=progress, device=device)
    surrogate = get_or_train(surrogate_config(profile, seed), data, progress=progress, device=device)
    starts = starts_of(configs)
    collapsed = collapsed_cells(models)
    attack_seed = seed + ATTACK_SEED_OFFSET
    x, y = (t.to(device) for t in data.test_subset(profile.n_defense_eval))
    universal = {}
    if any(t.family == "universal" for t in threats):
        n_train = min(profile.n_patch_train, len(data.x_train))
        xt, yt = to_float(data.x_train[:n_train]).to(device), data.y_train[:n_train].to(device)
        universal = {t.name: surrogate_universal_patch(surrogate, xt, yt, t, profile.patch_steps, profile.patch_batch,
                                                       attack_seed, with_half=True)
                     for t in threats if t.family == "universal"}
        del xt, yt
    randomised = {name: tuple(next(iter(per.values())).strategy_params.bit_set) for name, per in configs.items()
                  if _strategy(per) == "dwq"}
    evaluated = {name: {b: tm for b, tm in per.items() if b in widths} for name, per in models.items()}
    ev = evaluate_threats(evaluated, x, y, surrogate, threats, steps=profile.defense_attack_steps,
                          restarts=profile.defense_attack_restarts, seed=attack_seed,
                          location_opt=profile.defense_location_opt, loss=profile.defense_attack_loss,
                          location_search=profile.defense_location_search, progress=progress, universal=universal,
                          rs_queries=profile.defense_rs_queries, randomised=randomised, rp_draws=profile.defense_rp_draws,
                          starts=starts)
    seen = {name: (PGD_THREAT if _strategy(configs[name]) == "dwq" else own_seen_threat(dists[name], widths, threats))
            for name, start in starts.items() if start}
    pgd_models = {m: evaluated[m] for name, th in seen.items() if th == PGD_THREAT for m in (name, starts[name])}
    pgd = pgd_outcomes(pgd_models, x, y, seed=attack_seed)
    defends = defends_table(pd.concat([ev.per_image, pgd], ignore_index=True), seen, starts, collapsed)
    xc, yc = (t.to(device) for t in data.test_subset(profile.n_eval))
    clean = clean_outcomes(models, xc, yc)
    k = min(N_GRADIENT_NORM, len(x))
    norms = gradient_norm_table(models, x[:k], y[:k], starts)
    budget = budget_table(configs, models, len(data.x_train))
    return Study(configs, models, dists, ev, asr_table(ev.per_image, dists, threats, collapsed=collapsed), clean,
                 clean_table(clean), budget, len(x), len(xc), starts, collapsed, seen, pgd, defends,
                 collapse_table(models), norms, aqapa_table(models), fidelity_table(models),
                 random_precision_table(ev.random_precision), seed=seed, eval_bits=widths, threat_set=threats)


def defense_study(profile: Profile, bit_set: Sequence[int], seed: int = 0, data: Cifar10 | None = None,
                  device: str = "cpu", progress: bool = True) -> Study:
    """Undefended QAT and multi-width models, PBAT, DWQ and QADT-R at every width of ``bit_set``."""
    return run_study(defense_configs(profile, bit_set, seed), profile, seed, data, device, progress)


def ablation_study(profile: Profile, bit_set: Sequence[int], seed: int = 0, data: Cifar10 | None = None,
                   device: str = "cpu", progress: bool = True) -> Study:
    """QADT-R with each component removed and each alone, with the undefended multi-width model for reference."""
    return run_study(ablation_configs(profile, bit_set, seed), profile, seed, data, device, progress)


def main(argv: list[str] | None = None) -> None:
    """``python -m qadtr_core.build.studies --profile quick [--device cuda]``: build both studies' caches."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--bits", type=int, nargs="*", default=[32, 8, 5, 4, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    profile, data = get_profile(args.profile), load_cifar10()
    for study in (defense_study, ablation_study):
        s = study(profile, args.bits, args.seed, data, args.device, progress=not args.quiet)
        print(s.budget.to_string(), flush=True)
        print(s.clean.round(1).to_string(), flush=True)
        print(s.threats.groupby(["defense", "threat"], sort=False)[["robust", "asr"]].mean().round(1).to_string(),
              flush=True)


if __name__ == "__main__":
    main()
