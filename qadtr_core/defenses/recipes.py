"""The training recipe of every defended model under a profile: PBAT, DWQ, QADT-R and its ablations.

Equal training per bit-width (``protocol.md``): every defense gets ``steps_per_width(profile)``
optimiser steps at each width it serves, the same inner-attack budget (``defense_inner_steps`` signed
steps per batch, carried across batches, :mod:`qadtr_core.defenses.carry`), and starts from an
undefended model of equal training:

- PBAT at bit-width *b* is fine-tuned from the undefended QAT model at *b* (one model per width), for
  ``steps_per_width`` steps.
- DWQ and QADT-R (and every ablation) serve the whole bit set from one switchable model, so they get
  ``len(bit_set)`` times as many steps, starting from the undefended multi-width model
  (:func:`qadtr_core.zoo.multiwidth_config`), whose every width was trained like the QAT models.

:func:`budget_table` records, per defense, the start model, steps per width, inner steps and wall time.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pandas as pd

from ..data import Cifar10
from ..profiles import Profile
from ..quant import FULL_PRECISION, check_bits
from ..train import TrainConfig, check_bit_set
from ..zoo import TrainedModel, get_or_train, multiwidth_config, qat_config
from .dwq import DWQConfig
from .pbat import PBATConfig
from .qadtr import QADTRConfig

UNDEFENDED = "QAT (undefended)"
MULTIWIDTH = "multi-width (undefended)"

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


def steps_per_width(profile: Profile) -> int:
    """Optimiser steps every defense gets at each bit-width it serves under ``profile``."""
    return profile.defense_epochs * max(1, profile.defense_n_train // profile.defense_batch)


def _fine_tune(profile: Profile, parent: TrainConfig, bits: int, widths: int, strategy: str, params: object) -> TrainConfig:
    return dataclasses.replace(parent, bits=bits, epochs=profile.defense_epochs * widths, lr=profile.defense_lr,
                               batch_size=profile.defense_batch, n_train=profile.defense_n_train, schedule="cosine",
                               init=parent, strategy=strategy, strategy_params=params)


def pbat_config(profile: Profile, bits: int, seed: int = 0) -> TrainConfig:
    """PBAT at ``bits``, fine-tuned from the QAT model at ``bits`` (the FP model at 32)."""
    check_bits(bits)
    params = PBATConfig(inner_steps=profile.defense_inner_steps, seed=seed)
    return _fine_tune(profile, qat_config(profile, bits, seed), bits, 1, "pbat", params)


def dwq_config(profile: Profile, bit_set: Sequence[int], seed: int = 0) -> TrainConfig:
    """DWQ over ``bit_set`` (random-precision adversarial training), fine-tuned from the multi-width model."""
    bit_set = check_bit_set(tuple(bit_set))
    params = DWQConfig(bit_set=bit_set, pgd_steps=profile.defense_inner_steps, seed=seed)
    return _fine_tune(profile, multiwidth_config(profile, bit_set, seed), FULL_PRECISION, len(bit_set), "dwq", params)


def qadtr_config(profile: Profile, bit_set: Sequence[int], seed: int = 0, ablation: str = "QADT-R") -> TrainConfig:
    """QADT-R over ``bit_set`` with the components of ``ablation`` (a key of :data:`ABLATIONS`) switched off."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; allowed: {', '.join(ABLATIONS)}")
    bit_set = check_bit_set(tuple(bit_set))
    params = QADTRConfig(bit_set=bit_set, inner_steps=profile.defense_inner_steps, seed=seed, **ABLATIONS[ablation])
    return _fine_tune(profile, multiwidth_config(profile, bit_set, seed), FULL_PRECISION, len(bit_set), "qadtr", params)


def defense_configs(profile: Profile, bit_set: Sequence[int], seed: int = 0) -> dict[str, dict[int, TrainConfig]]:
    """The model evaluated for each defense at each width: undefended QAT and multi-width, PBAT, DWQ, QADT-R."""
    bit_set = check_bit_set(tuple(bit_set))
    multi, dwq, qadtr = (multiwidth_config(profile, bit_set, seed), dwq_config(profile, bit_set, seed),
                         qadtr_config(profile, bit_set, seed))
    return {
        UNDEFENDED: {b: qat_config(profile, b, seed) for b in bit_set},
        MULTIWIDTH: {b: multi for b in bit_set},
        "PBAT": {b: pbat_config(profile, b, seed) for b in bit_set},
        "DWQ": {b: dwq for b in bit_set},
        "QADT-R": {b: qadtr for b in bit_set},
    }


def ablation_configs(profile: Profile, bit_set: Sequence[int], seed: int = 0,
                     variants: Sequence[str] | None = None) -> dict[str, dict[int, TrainConfig]]:
    """The undefended multi-width model (QADT-R's start) for reference, then QADT-R and its ``variants``
    (default: every ablation of :data:`ABLATIONS`)."""
    bit_set = check_bit_set(tuple(bit_set))
    multi = multiwidth_config(profile, bit_set, seed)
    out = {MULTIWIDTH: {b: multi for b in bit_set}}
    for name in variants or ABLATIONS:
        cfg = qadtr_config(profile, bit_set, seed, name)
        out[name] = {b: cfg for b in bit_set}
    return out


def _inner(config: TrainConfig) -> tuple[int, str]:
    p = config.strategy_params
    if hasattr(p, "pgd_steps"):
        return p.pgd_steps, "L-inf signed steps" + (" (carried)" if p.carry else " (PGD, random start)")
    if hasattr(p, "inner_steps"):
        return p.inner_steps, "patch signed steps" + (" (carried)" if p.carry else " (random start)")
    return 0, "none"


def _start(config: TrainConfig) -> str:
    parent = config.init
    if parent is None:
        return "scratch"
    if parent.strategy == "multiwidth":
        return MULTIWIDTH
    return "FP model" if parent.init is None else f"QAT {parent.bits} b"


def budget_table(configs: Mapping[str, Mapping[int, TrainConfig]],
                 models: Mapping[str, Mapping[int, TrainedModel]] | None = None, n_train: int = 50000) -> pd.DataFrame:
    """Per defense: start model, widths served, optimiser steps per width, inner steps and wall time.

    A shared-weight model's steps are divided by the widths it serves; a per-width model lists its own.
    ``n_train`` caps each config's ``n_train`` (the size of the training set used). Wall time
    (``train seconds``) is summed over a defense's distinct models and needs ``models``.
    """
    rows = []
    for name, per_bits in configs.items():
        distinct = list(dict.fromkeys(per_bits.values()))
        served = {c: [b for b, cc in per_bits.items() if cc == c] for c in distinct}
        per_width = []
        for c in distinct:
            steps = c.epochs * max(1, min(c.n_train, n_train) // c.batch_size)
            per_width += [steps // len(served[c])] * len(served[c])
        inner, kind = _inner(distinct[0])
        row = {"defense": name, "start model": ", ".join(dict.fromkeys(_start(c) for c in distinct)),
               "models": len(distinct), "widths served": len(per_bits),
               "steps per width": per_width[0] if len(set(per_width)) == 1 else "/".join(map(str, per_width)),
               "inner steps": inner, "inner attack": kind, "batch": distinct[0].batch_size}
        if models is not None:
            hashes = {}
            for b, tm in models[name].items():
                hashes[tm.record["config_hash"]] = tm.record.get("train_seconds", float("nan"))
            row["train seconds"] = sum(hashes.values())
        rows.append(row)
    return pd.DataFrame(rows)


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
