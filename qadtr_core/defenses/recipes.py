"""The training recipe of every defended model under a profile: PBAT, DWQ, QADT-R and its ablations.

Equal training per bit-width (``protocol.md``): every defense gets ``steps_per_width(profile)``
optimiser steps at each width it serves, the same inner-attack budget (``defense_inner_steps`` steps of
its own attack, crafted for each batch's images from a fresh start, :mod:`qadtr_core.defenses.inner`),
and starts from an undefended model of equal training:

- PBAT at bit-width *b* is fine-tuned from the undefended QAT model at *b* (one model per width), for
  ``steps_per_width`` steps.
- DWQ and QADT-R (and every ablation) serve the whole bit set from one switchable model, so they get
  ``len(bit_set)`` times as many steps, cycling through the widths (equal steps at each), starting from
  the undefended multi-width model (:func:`qadtr_core.zoo.multiwidth_config`), whose every width got
  the steps of its QAT model.

:func:`budget_table` records, per defense, the start model, the steps it takes at each width (counted
from its own schedule), inner steps and wall time; :func:`fidelity_table` shows, per model and epoch, the
training attack's loss gain against a fresh 20-step attack's on the same images. :func:`surrogate_config`
is the common transfer surrogate of the defense chapters.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pandas as pd

from ..data import Cifar10
from ..profiles import Profile
from ..quant import FULL_PRECISION, check_bits
from ..train import TrainConfig, check_bit_set, steps_by_width, total_steps
from ..zoo import TrainedModel, fp_config, get_or_train, multiwidth_config, qat_config
from .dwq import DWQConfig
from .pbat import PBATConfig
from .qadtr import QADTRConfig

SURROGATE_SEED_OFFSET = 1000  # the transfer surrogate never shares a seed with an evaluated model
UNDEFENDED = "QAT (undefended)"
MULTIWIDTH = "multi-width (undefended)"

# QADT-R with components switched off: the full method, each component removed, each component alone
# (a profile may keep fewer: Profile.ablation_variants).
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


def start_seed(profile: Profile, seed: int) -> int:
    """The seed of the undefended start (and of the transfer surrogate's seed base) that the defense models
    of training seed ``seed`` fine-tune from: ``profile.defense_start_seed`` where the profile shares one
    chain of starts between its defense seeds, else ``seed`` itself."""
    return seed if profile.defense_start_seed is None else profile.defense_start_seed


def _fine_tune(profile: Profile, parent: TrainConfig, bits: int, widths: int, strategy: str, params: object,
               seed: int) -> TrainConfig:
    return dataclasses.replace(parent, bits=bits, epochs=profile.defense_epochs * widths, lr=profile.defense_lr,
                               batch_size=profile.defense_batch, n_train=profile.defense_n_train, schedule="cosine",
                               init=parent, strategy=strategy, strategy_params=params, seed=seed)


def pbat_config(profile: Profile, bits: int, seed: int = 0) -> TrainConfig:
    """PBAT at ``bits`` and training seed ``seed``, fine-tuned from the QAT model at ``bits`` (the FP model at
    32) of seed :func:`start_seed`."""
    check_bits(bits)
    params = PBATConfig(inner_steps=profile.defense_inner_steps, probe_every=profile.defense_probe_every, seed=seed)
    return _fine_tune(profile, qat_config(profile, bits, start_seed(profile, seed)), bits, 1, "pbat", params, seed)


def dwq_config(profile: Profile, bit_set: Sequence[int], seed: int = 0) -> TrainConfig:
    """DWQ over ``bit_set`` (random-precision adversarial training), fine-tuned from the multi-width model."""
    bit_set = check_bit_set(tuple(bit_set))
    params = DWQConfig(bit_set=bit_set, pgd_steps=profile.defense_inner_steps, probe_every=profile.defense_probe_every,
                       seed=seed)
    return _fine_tune(profile, multiwidth_config(profile, bit_set, start_seed(profile, seed)), FULL_PRECISION,
                      len(bit_set), "dwq", params, seed)


def qadtr_config(profile: Profile, bit_set: Sequence[int], seed: int = 0, ablation: str = "QADT-R") -> TrainConfig:
    """QADT-R over ``bit_set`` with the components of ``ablation`` (a key of :data:`ABLATIONS`) switched off."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; allowed: {', '.join(ABLATIONS)}")
    bit_set = check_bit_set(tuple(bit_set))
    params = QADTRConfig(bit_set=bit_set, inner_steps=profile.defense_inner_steps, block_steps=steps_per_width(profile),
                         probe_every=profile.defense_probe_every, seed=seed, **ABLATIONS[ablation])
    return _fine_tune(profile, multiwidth_config(profile, bit_set, start_seed(profile, seed)), FULL_PRECISION,
                      len(bit_set), "qadtr", params, seed)


def defense_configs(profile: Profile, bit_set: Sequence[int], seed: int = 0) -> dict[str, dict[int, TrainConfig]]:
    """The model evaluated for each defense at each width: undefended QAT and multi-width, PBAT, DWQ, QADT-R."""
    bit_set = check_bit_set(tuple(bit_set))
    start = start_seed(profile, seed)
    multi, dwq, qadtr = (multiwidth_config(profile, bit_set, start), dwq_config(profile, bit_set, seed),
                         qadtr_config(profile, bit_set, seed))
    return {
        UNDEFENDED: {b: qat_config(profile, b, start) for b in bit_set},
        MULTIWIDTH: {b: multi for b in bit_set},
        "PBAT": {b: pbat_config(profile, b, seed) for b in bit_set},
        "DWQ": {b: dwq for b in bit_set},
        "QADT-R": {b: qadtr for b in bit_set},
    }


def ablation_configs(profile: Profile, bit_set: Sequence[int], seed: int = 0,
                     variants: Sequence[str] | None = None) -> dict[str, dict[int, TrainConfig]]:
    """The undefended multi-width model (QADT-R's start) for reference, then QADT-R and its ``variants``
    (default: the profile's ``ablation_variants``, else every ablation of :data:`ABLATIONS`)."""
    bit_set = check_bit_set(tuple(bit_set))
    multi = multiwidth_config(profile, bit_set, start_seed(profile, seed))
    out = {MULTIWIDTH: {b: multi for b in bit_set}}
    for name in variants or profile.ablation_variants or ABLATIONS:
        cfg = qadtr_config(profile, bit_set, seed, name)
        out[name] = {b: cfg for b in bit_set}
    return out


def _inner(config: TrainConfig) -> tuple[int, str]:
    p = config.strategy_params
    if hasattr(p, "pgd_steps"):
        return p.pgd_steps, "L-inf PGD, random start, per batch"
    if hasattr(p, "inner_steps"):
        return p.inner_steps, "per-image patch, signed steps" + (" with location optimisation" if p.location_opt else "")
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
    """Per defense: start model, widths served, optimiser steps at each width, inner steps and wall time.

    The steps at each width are *counted* from the schedule each strategy itself follows
    (:func:`~qadtr_core.train.steps_by_width` over the config's total steps): a per-width model takes all
    its steps at its width, a shared-weight model splits them as its schedule does (DWQ, QADT-R: random
    per batch with equal steps per width; without DBWT: contiguous blocks of equal length; the multi-width
    model: in proportion to the QAT budgets). "steps per width" is their common value when the served
    widths all get the same, else the list. ``n_train`` caps each config's ``n_train`` (the size of the
    training set used). Wall time (``train seconds``) is summed over a defense's distinct models and
    needs ``models``.
    """
    rows = []
    widths = list(dict.fromkeys(b for per_bits in configs.values() for b in per_bits))
    for name, per_bits in configs.items():
        distinct = list(dict.fromkeys(per_bits.values()))
        counts = {c: steps_by_width(c, n_train) for c in distinct}
        at = {b: counts[c].get(b, 0) for b, c in per_bits.items()}
        inner, kind = _inner(distinct[0])
        row = {"defense": name, "start model": ", ".join(dict.fromkeys(_start(c) for c in distinct)),
               "models": len(distinct), "widths served": len(per_bits),
               "steps per width": (next(iter(at.values())) if len(set(at.values())) == 1
                                   else " / ".join(f"{b} b: {k}" for b, k in at.items())),
               **{f"steps at {b} b": at.get(b, float("nan")) for b in widths},
               "total steps": sum(total_steps(c, n_train) for c in distinct),
               "inner steps": inner, "inner attack": kind, "batch": distinct[0].batch_size}
        if models is not None:
            hashes = {}
            for _b, tm in models[name].items():
                hashes[tm.record["config_hash"]] = tm.record.get("train_seconds", float("nan"))
            row["train seconds"] = sum(hashes.values())
        rows.append(row)
    return pd.DataFrame(rows)


def fidelity_table(models: Mapping[str, Mapping[int, TrainedModel]]) -> pd.DataFrame:
    """Per defense, model and epoch, from the training history (:mod:`qadtr_core.defenses.inner`): the mean
    cross-entropy of the probed training images clean, under the training attack and under a fresh
    20-step attack of the same kind on the same images at the same width, and ``fidelity``, the share of
    the fresh attack's loss gain the training attack reaches (the chapter requires at least
    :data:`~qadtr_core.defenses.inner.MIN_FIDELITY`), and each attack's ASR over the clean-correct probed
    images (fractions). Models without an inner attack are left out; a model trained before a field was
    recorded shows NaN there (the ASRs: the bundled models trained before they were recorded)."""
    rows = []
    for name, per_bits in models.items():
        seen: dict[str, list[int]] = {}
        for b, tm in per_bits.items():
            if _inner(tm.config)[0]:
                seen.setdefault(tm.record["config_hash"], []).append(b)
        for _h, bs in seen.items():
            tm = per_bits[bs[0]]
            model = f"{bs[0]} b" if len(bs) == 1 else "shared"
            for e in tm.record.get("history", []):
                rows.append({"defense": name, "model": model, "epoch": e.get("epoch"),
                             "clean loss": e.get("inner_loss_clean", float("nan")),
                             "training attack loss": e.get("inner_loss_train", float("nan")),
                             "fresh attack loss": e.get("inner_loss_fresh", float("nan")),
                             "fidelity": e.get("fidelity", float("nan")),
                             "training attack ASR": e.get("inner_asr_train", float("nan")),
                             "fresh attack ASR": e.get("inner_asr_fresh", float("nan"))})
    return pd.DataFrame(rows, columns=["defense", "model", "epoch", "clean loss", "training attack loss",
                                       "fresh attack loss", "fidelity", "training attack ASR", "fresh attack ASR"])


def surrogate_config(profile: Profile, seed: int = 0) -> TrainConfig:
    """The common transfer surrogate of every defense: an undefended FP model seeded independently
    (``seed + SURROGATE_SEED_OFFSET``), so that it is neither the 32-bit undefended model nor PBAT-32's
    parent (for which "transfer" would be white-box). Defense seeds that share their starts
    (``profile.defense_start_seed``) share the surrogate too."""
    return fp_config(profile, start_seed(profile, seed) + SURROGATE_SEED_OFFSET)


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
