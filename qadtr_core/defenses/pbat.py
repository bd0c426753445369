"""PBAT: patch-based adversarial training (Rao, Stutz and Schiele 2020), at one bit-width.

Each batch, a share ``adv_fraction`` of the images gets a per-image adversarial patch at a random
location outside the central region; the loss mixes clean and patched cross-entropy in the same
proportion. The inner attack is signed-gradient steps on the patch pixels in eval mode (BatchNorm
statistics untouched). With ``carry`` (the default, a reconstruction choice shared with QADT-R, see
:mod:`qadtr_core.defenses.carry`) the patches start from those of the previous batch, so that
``inner_steps`` refresh steps per batch (1 by default) build up a strong attack at a cost of about
1.5x a QAT step; without it each batch starts from uniform noise, as in Rao et al. (10-25 steps).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..patches import Box, central_box
from ..quant import get_bits
from ..threats import PatchDistribution
from ..train import TrainConfig, register_strategy
from ..utils import seeded_generator
from .carry import CarriedStrategy, PatchBank


@dataclass(frozen=True)
class PBATConfig:
    """PBAT hyperparameters (Rao et al.'s CIFAR-10 values where they exist).

    Attributes:
        patch_size: training patch side in pixels. (Default: 8)
        inner_steps: signed-gradient steps of the inner attack per batch. (Default: 1, with ``carry``)
        inner_step_size: inner step in [0, 1] pixel units (Rao et al.: 0.1 for training). (Default: 0.1)
        adv_fraction: share of each batch that is patched. (Default: 0.5)
        carry: start each batch's patches from the previous batch's ("free" training). (Default: True)
        avoid: region the patch may not cover. (Default: the central 10x10)
        seed: seeds the inner attack's locations and starts. (Default: 0)
    """

    patch_size: int = 8
    inner_steps: int = 1
    inner_step_size: float = 0.1
    adv_fraction: float = 0.5
    carry: bool = True
    avoid: Box | None = central_box(10)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.adv_fraction <= 1.0:
            raise ValueError(f"adv_fraction {self.adv_fraction} must be in (0, 1]")
        if self.inner_steps < 0 or self.inner_step_size <= 0:
            raise ValueError(f"inner_steps must be >= 0 and inner_step_size > 0, got {self.inner_steps}, "
                             f"{self.inner_step_size}")

    def training_patches(self) -> PatchDistribution:
        """8x8 squares outside the centre, crafted at the width the model serves."""
        return PatchDistribution(sizes=(self.patch_size,), anywhere=self.avoid is None, source_bits=None)

    def carried_cells(self) -> int:
        """Patches are carried in one cell (the model's width, ``patch_size``): refreshed every batch."""
        return 1


def n_patched(fraction: float, batch: int) -> int:
    """How many images of a batch of ``batch`` get a patch (at least one)."""
    return max(1, int(round(fraction * batch)))


def mixed_loss(logits: torch.Tensor, y: torch.Tensor, k: int, fraction: float) -> torch.Tensor:
    """``fraction`` x mean CE of the first ``k`` (patched) images + the rest x mean CE of the others."""
    per_image = F.cross_entropy(logits, y, reduction="none")
    ce = fraction * per_image[:k].mean()
    if k < len(y):
        ce = ce + (1 - fraction) * per_image[k:].mean()
    return ce


class PBAT(CarriedStrategy):
    """The PBAT batch loss (a trainer ``loss_fn`` with state: the carried patches)."""

    def __init__(self, config: PBATConfig = PBATConfig()) -> None:
        self.config = config
        self.bank = PatchBank()

    def inner(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """The patched versions of the first ``adv_fraction`` of the batch, at the model's current width."""
        cfg = self.config
        k = n_patched(cfg.adv_fraction, len(x))
        cell = f"{get_bits(model)}b_{cfg.patch_size}px"
        if not cfg.carry:
            self.bank.carried.pop(cell, None)
        return self.bank.attack(model, x[:k], y[:k], cell, cfg.patch_size, cfg.inner_steps, cfg.inner_step_size,
                                cfg.avoid, seeded_generator(cfg.seed, step))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        adv = self.inner(model, x, y, step)
        k = len(adv)
        logits = model(torch.cat([adv, x[k:]]))
        return mixed_loss(logits, y, k, self.config.adv_fraction), logits


def pbat_loss(config: PBATConfig = PBATConfig()) -> PBAT:
    """The PBAT batch loss at the model's current bit-width (set by the trainer from ``TrainConfig.bits``)."""
    return PBAT(config)


def _factory(config: TrainConfig) -> PBAT:
    return PBAT(config.strategy_params or PBATConfig())


register_strategy("pbat", _factory)
