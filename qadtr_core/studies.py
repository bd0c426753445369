"""The two defense experiments as functions: the defenses chapter and the ablation chapter.

The notebooks call :func:`defense_study` and :func:`ablation_study`; ``python -m qadtr_core.studies``
runs the same calls ahead of time (on a GPU, say) so that the notebooks find every model and every
crafted patch in the cache and only evaluate. Both studies use one evaluation: every threat of
:data:`~qadtr_core.robustness.THREATS` on the first ``Profile.n_defense_eval`` test images, and clean
accuracy on the first ``Profile.n_eval``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from .data import Cifar10, load_cifar10
from .defenses.recipes import ablation_configs, defense_configs, train_all
from .profiles import Profile, get_profile
from .robustness import THREATS, clean_table, evaluate_threats
from .train import TrainConfig
from .zoo import TrainedModel

ATTACK_SEED_OFFSET = 4242  # evaluation attacks never share a seed with the training inner attacks


@dataclass
class Study:
    """Models, clean accuracy and threat table of one experiment (percent; see :mod:`qadtr_core.robustness`)."""

    configs: dict[str, dict[int, TrainConfig]]
    models: dict[str, dict[int, TrainedModel]]
    clean: pd.DataFrame
    threats: pd.DataFrame
    n_eval: int
    n_clean: int


def run_study(configs: dict[str, dict[int, TrainConfig]], profile: Profile, seed: int = 0, data: Cifar10 | None = None,
              device: str = "cpu", progress: bool = True) -> Study:
    """Train (or load) every model of ``configs`` and evaluate it under every threat and on clean images."""
    data = data or load_cifar10()
    models = train_all(configs, data, progress=progress, device=device)
    x, y = (t.to(device) for t in data.test_subset(profile.n_defense_eval))
    table = evaluate_threats(models, x, y, THREATS, steps=profile.defense_attack_steps,
                             restarts=profile.defense_attack_restarts, seed=seed + ATTACK_SEED_OFFSET, progress=progress)
    xc, yc = (t.to(device) for t in data.test_subset(profile.n_eval))
    return Study(configs, models, clean_table(models, xc, yc), table, len(x), len(xc))


def defense_study(profile: Profile, bit_set: Sequence[int], seed: int = 0, data: Cifar10 | None = None,
                  device: str = "cpu", progress: bool = True) -> Study:
    """Undefended QAT, PBAT, DWQ and QADT-R at every width of ``bit_set``."""
    return run_study(defense_configs(profile, bit_set, seed), profile, seed, data, device, progress)


def ablation_study(profile: Profile, bit_set: Sequence[int], seed: int = 0, data: Cifar10 | None = None,
                   device: str = "cpu", progress: bool = True) -> Study:
    """QADT-R with each component removed and each alone, with undefended QAT for reference."""
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
        print(s.clean.round(1).to_string(), flush=True)
        print(s.threats.groupby(["defense", "threat"], sort=False).asr.mean().round(1).to_string(), flush=True)


if __name__ == "__main__":
    main()
