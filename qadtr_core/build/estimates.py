"""GPU cost estimates of the study's units of work: the one place for measured per-step costs.

Every number here is a measurement with its source; what the cost of a chapter is made of (which models,
how many attack steps) is counted by :mod:`qadtr_core.build.jobs` from the profile and the notebook's own
parameters. The results are *estimates*: a step's cost on another GPU, another torch version or another
batch size differs, and a defense's GPU step ratio has not been measured (the CPU ratios stand in).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..quant import FULL_PRECISION


@dataclass(frozen=True)
class UnitCosts:
    """Seconds per unit of work of one architecture on one GPU.

    Attributes:
        epoch_fp, epoch_quant: a training epoch of 50,000 images (batch 128) at 32 bits and at 2 bits
            (the slowest width; used for every quantized width).
        universal_step: one universal-patch step, batch 128, 2 bits.
        image_patch_image_step: one step of the per-image patch attack, per image.
        pgd10_image: PGD-10 per image.
        source: where the numbers were measured.
    """

    epoch_fp: float
    epoch_quant: float
    universal_step: float
    image_patch_image_step: float
    pgd10_image: float
    source: str

    def epoch(self, bits: int) -> float:
        """Seconds per 50,000-image epoch at ``bits``."""
        return self.epoch_fp if bits == FULL_PRECISION else self.epoch_quant


_H100 = "benchmarks/README.md: device_smoke.py --device cuda on one NVIDIA H100 80GB, torch 2.11.0+cu130, 2026-11-27"

# Measured per-step costs (benchmarks/README.md, table "One NVIDIA H100 80GB").
GPU_UNIT_COSTS: dict[str, UnitCosts] = {
    "resnet56": UnitCosts(epoch_fp=23.4, epoch_quant=26.3, universal_step=0.0703,
                          image_patch_image_step=8.5 / (100 * 256), pgd10_image=0.86 / 256, source=_H100),
    "resnet20": UnitCosts(epoch_fp=15.4, epoch_quant=12.3, universal_step=0.0246,
                          image_patch_image_step=4.1 / (100 * 256), pgd10_image=0.30 / 256, source=_H100),
}
# No GPU measurement of the smoke profile's small CNN: ResNet-20's costs bound it from above.
GPU_UNIT_COSTS["smallcnn"] = GPU_UNIT_COSTS["resnet20"]

# A defense's training step relative to a plain QAT step. Measured on 2 idle CPU cores (ResNet-20, batch 128,
# QAT and PBAT at 4 bits, DWQ and QADT-R over their bit set, 20 inner steps per batch: the profiles' faithful
# defenses; benchmarks/README.md, "Defense step cost at 20 inner steps"); no GPU ratio has been measured yet.
STRATEGY_STEP_RATIO: dict[str, float] = {"standard": 1.0, "multiwidth": 1.0, "pbat": 9.98, "dwq": 14.00, "qadtr": 9.53}
STRATEGY_RATIO_SOURCE = ("benchmarks/README.md: benchmarks/defense_cost.py --steps 12 --threads 2 on 2 idle CPU cores, "
                         "ResNet-20, batch 128, 20 inner steps (the profiles'), 2026-12-02, one run (no GPU ratio measured)")


def unit_costs(arch: str) -> UnitCosts:
    """The measured unit costs of ``arch`` (ResNet-20's for an architecture without a measurement)."""
    return GPU_UNIT_COSTS.get(arch, GPU_UNIT_COSTS["resnet20"])


def training_seconds(arch: str, bits: int, epochs: int, n_train: int, strategy: str = "standard") -> float:
    """Estimated GPU seconds to train ``epochs`` over ``n_train`` images at ``bits`` with ``strategy``."""
    u = unit_costs(arch)
    base = u.epoch(bits) if strategy == "standard" else u.epoch_quant  # defense ratios are relative to a QAT step
    return epochs * min(n_train, 50000) / 50000 * base * STRATEGY_STEP_RATIO.get(strategy, max(STRATEGY_STEP_RATIO.values()))


def universal_patch_seconds(arch: str, steps: int, batch: int) -> float:
    """Estimated GPU seconds of one universal patch of ``steps`` steps at batch ``batch``."""
    return steps * unit_costs(arch).universal_step * batch / 128


def image_patch_seconds(arch: str, n_images: int, steps: int, restarts: int) -> float:
    """Estimated GPU seconds of the per-image patch attack on ``n_images`` images, linear in image-steps (the
    full budget). The restarts run side by side in one pass per step, which costs a launch-bound GPU less
    than this (measured at 256 images, one restart); not yet measured with restarts."""
    return n_images * steps * restarts * unit_costs(arch).image_patch_image_step


def pgd_seconds(arch: str, n_images: int) -> float:
    """Estimated GPU seconds of PGD-10 on ``n_images`` images."""
    return n_images * unit_costs(arch).pgd10_image
