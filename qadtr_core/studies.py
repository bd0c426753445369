"""The two defense experiments as functions: the defenses chapter and the ablation chapter.

The notebooks call :func:`defense_study` and :func:`ablation_study`; ``python -m qadtr_core.studies``
runs the same calls ahead of time (on a GPU, say) so that the notebooks find every model and every
crafted patch in the cache and only evaluate. Both studies use one evaluation: every threat of
:data:`~qadtr_core.threats.THREATS` on the first ``Profile.n_defense_eval`` test images (transfer from
one common surrogate, an independently seeded undefended FP model: :func:`~qadtr_core.defenses.recipes.surrogate_config`),
kept per image, and clean accuracy per image on
the first ``Profile.n_eval``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from .data import Cifar10, load_cifar10
from .defenses.recipes import ablation_configs, budget_table, defense_configs, surrogate_config, train_all
from .profiles import Profile, get_profile
from .robustness import Evaluation, asr_table, clean_outcomes, clean_table, evaluate_threats
from .threats import THREATS, PatchDistribution, distribution_of
from .train import TrainConfig
from .zoo import TrainedModel, get_or_train

ATTACK_SEED_OFFSET = 4242  # evaluation attacks never share a seed with the training inner attacks


@dataclass
class Study:
    """Models, per-image outcomes and tables of one experiment (percent; see :mod:`qadtr_core.robustness`).

    Attributes:
        configs, models: per defense, ``{bits: ...}``.
        distributions: each defense's training patches (what "seen" means for it).
        evaluation: per-image threat outcomes and attack strength (n = ``n_eval`` images).
        threats: the :func:`~qadtr_core.robustness.asr_table` of ``evaluation``.
        clean_per_image, clean: clean correctness per image and its table (n = ``n_clean`` images).
        budget: :func:`~qadtr_core.defenses.recipes.budget_table` with wall times.
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


def run_study(configs: dict[str, dict[int, TrainConfig]], profile: Profile, seed: int = 0, data: Cifar10 | None = None,
              device: str = "cpu", progress: bool = True) -> Study:
    """Train (or load) every model of ``configs`` and evaluate it under every threat and on clean images."""
    data = data or load_cifar10()
    models = train_all(configs, data, progress=progress, device=device)
    surrogate = get_or_train(surrogate_config(profile, seed), data, progress=progress, device=device)
    dists = {name: distribution_of(next(iter(per.values())).strategy_params) for name, per in configs.items()}
    x, y = (t.to(device) for t in data.test_subset(profile.n_defense_eval))
    ev = evaluate_threats(models, x, y, surrogate, THREATS, steps=profile.defense_attack_steps,
                          restarts=profile.defense_attack_restarts, seed=seed + ATTACK_SEED_OFFSET,
                          location_opt=profile.defense_location_opt, progress=progress)
    xc, yc = (t.to(device) for t in data.test_subset(profile.n_eval))
    clean = clean_outcomes(models, xc, yc)
    budget = budget_table(configs, models, len(data.x_train))
    return Study(configs, models, dists, ev, asr_table(ev.per_image, dists), clean, clean_table(clean), budget,
                 len(x), len(xc))


def defense_study(profile: Profile, bit_set: Sequence[int], seed: int = 0, data: Cifar10 | None = None,
                  device: str = "cpu", progress: bool = True) -> Study:
    """Undefended QAT and multi-width models, PBAT, DWQ and QADT-R at every width of ``bit_set``."""
    return run_study(defense_configs(profile, bit_set, seed), profile, seed, data, device, progress)


def ablation_study(profile: Profile, bit_set: Sequence[int], seed: int = 0, data: Cifar10 | None = None,
                   device: str = "cpu", progress: bool = True) -> Study:
    """QADT-R with each component removed and each alone, with the undefended multi-width model for reference."""
    return run_study(ablation_configs(profile, bit_set, seed), profile, seed, data, device, progress)


def main(argv: list[str] | None = None) -> None:
    """``python -m qadtr_core.studies --profile quick [--device cuda]``: build both studies' caches."""
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
        print(s.threats.groupby(["defense", "threat"], sort=False).asr.mean().round(1).to_string(), flush=True)


if __name__ == "__main__":
    main()
