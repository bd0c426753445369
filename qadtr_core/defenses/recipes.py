"""The training recipe of every defended model under a profile: PBAT, DWQ, QADT-R and its ablations.

All defenses share one fine-tuning budget (``Profile.defense_*``: images, epochs, batch, learning rate,
inner-attack steps), so that none is favoured by a larger budget. Starting points:

- PBAT at bit-width *b* is fine-tuned from the undefended QAT model at *b* (one model per bit-width;
  PBAT trains at one width).
- DWQ and QADT-R train every width of the bit set in one switchable model, so they start from the
  full-precision model, every width's BatchNorm copied from it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..data import Cifar10
from ..profiles import Profile
from ..quant import FULL_PRECISION, check_bits
from ..train import TrainConfig
from ..zoo import TrainedModel, fp_config, get_or_train, qat_config
from .dwq import DWQConfig, check_bit_set
from .pbat import PBATConfig
from .qadtr import QADTRConfig

# QADT-R with components switched off: the full method, each component removed, each component alone.
ABLATIONS: dict[str, dict[str, bool]] = {
    "QADT-R": {},
    "without A-QAPA": {"aqapa": False},
    "without DBWT": {"dbwt": False},
    "without GIR": {"gir": False},
    "A-QAPA only": {"dbwt": False, "gir": False},
    "DBWT only": {"aqapa": False, "gir": False},
    "GIR only": {"aqapa": False, "dbwt": False},
}


def _fine_tune(profile: Profile, parent: TrainConfig, bits: int, strategy: str, params: object) -> TrainConfig:
    return dataclasses.replace(parent, bits=bits, epochs=profile.defense_epochs, lr=profile.defense_lr,
                               batch_size=profile.defense_batch, n_train=profile.defense_n_train, schedule="cosine",
                               init=parent, strategy=strategy, strategy_params=params)


def pbat_config(profile: Profile, bits: int, seed: int = 0) -> TrainConfig:
    """PBAT at ``bits``, fine-tuned from the QAT model at ``bits`` (the FP model at 32)."""
    check_bits(bits)
    params = PBATConfig(inner_steps=profile.defense_inner_steps, seed=seed)
    return _fine_tune(profile, qat_config(profile, bits, seed), bits, "pbat", params)


def dwq_config(profile: Profile, bit_set: Sequence[int], seed: int = 0) -> TrainConfig:
    """DWQ over ``bit_set`` (random-precision PGD training), fine-tuned from the FP model."""
    params = DWQConfig(bit_set=check_bit_set(tuple(bit_set)), pgd_steps=profile.defense_inner_steps, seed=seed)
    return _fine_tune(profile, fp_config(profile, seed), FULL_PRECISION, "dwq", params)


def qadtr_config(profile: Profile, bit_set: Sequence[int], seed: int = 0, ablation: str = "QADT-R") -> TrainConfig:
    """QADT-R over ``bit_set`` with the components of ``ablation`` (a key of :data:`ABLATIONS`) switched off."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; allowed: {', '.join(ABLATIONS)}")
    bit_set = check_bit_set(tuple(bit_set))
    params = QADTRConfig(bit_set=bit_set, inner_steps=profile.defense_inner_steps, seed=seed, **ABLATIONS[ablation])
    return _fine_tune(profile, fp_config(profile, seed), FULL_PRECISION, "qadtr", params)


def defense_configs(profile: Profile, bit_set: Sequence[int], seed: int = 0) -> dict[str, dict[int, TrainConfig]]:
    """The model evaluated for each defense at each bit-width: undefended QAT, PBAT, DWQ and QADT-R."""
    bit_set = check_bit_set(tuple(bit_set))
    dwq, qadtr = dwq_config(profile, bit_set, seed), qadtr_config(profile, bit_set, seed)
    return {
        "QAT (undefended)": {b: qat_config(profile, b, seed) for b in bit_set},
        "PBAT": {b: pbat_config(profile, b, seed) for b in bit_set},
        "DWQ": {b: dwq for b in bit_set},
        "QADT-R": {b: qadtr for b in bit_set},
    }


def ablation_configs(profile: Profile, bit_set: Sequence[int], seed: int = 0) -> dict[str, dict[int, TrainConfig]]:
    """Undefended QAT for reference, then QADT-R and every ablation of :data:`ABLATIONS`."""
    out = {"QAT (undefended)": {b: qat_config(profile, b, seed) for b in bit_set}}
    for name in ABLATIONS:
        cfg = qadtr_config(profile, bit_set, seed, name)
        out[name] = {b: cfg for b in bit_set}
    return out


def train_all(configs: dict[str, dict[int, TrainConfig]], data: Cifar10 | None = None, progress: bool = True,
              device: str = "cpu") -> dict[str, dict[int, TrainedModel]]:
    """Load or train every model of ``configs`` (one training per distinct config), on ``device``."""
    done: dict[TrainConfig, TrainedModel] = {}
    out: dict[str, dict[int, TrainedModel]] = {}
    for name, per_bits in configs.items():
        out[name] = {}
        for b, cfg in per_bits.items():
            if cfg not in done:
                done[cfg] = get_or_train(cfg, data, progress=progress, device=device)
            out[name][b] = done[cfg]
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m qadtr_core.defenses.recipes --profile quick``: train every defense and ablation ahead of time."""
    import argparse

    from ..data import load_cifar10
    from ..profiles import get_profile

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--bits", type=int, nargs="*", default=[32, 8, 5, 4, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ablations", action="store_true")
    args = ap.parse_args(argv)
    profile, data = get_profile(args.profile), load_cifar10()
    configs = defense_configs(profile, args.bits, args.seed)
    if not args.no_ablations:
        configs.update(ablation_configs(profile, args.bits, args.seed))
    for name, per_bits in train_all(configs, data).items():
        for b, tm in per_bits.items():
            print(f"{profile.name} {name} {b}b: {tm.record['config_hash']} trained in {tm.record['train_seconds']:.0f} s",
                  flush=True)


if __name__ == "__main__":
    main()
