"""PBAT: patch-based adversarial training (Rao, Stutz and Schiele 2020), at one bit-width.

Each batch, a share ``adv_fraction`` of the images gets a per-image patch crafted against the current
model (signed-gradient inner loop, random location outside the central region, the attack of
:mod:`qadtr_core.attacks.image_patch`); the loss mixes clean and patched cross-entropy in the same
proportion. The inner attack runs in eval mode so that it does not pollute BatchNorm statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.image_patch import ImagePatchConfig, image_patch_attack
from ..patches import Box, central_box
from ..train import BatchLoss


@dataclass(frozen=True)
class PBATConfig:
    """PBAT hyperparameters (Rao et al.'s CIFAR-10 values where they exist).

    Attributes:
        patch_size: training patch side in pixels. (Default: 8)
        inner_steps: signed-gradient steps of the inner attack (Rao et al. train with 25). (Default: 10)
        inner_step_size: inner step in [0, 1] pixel units (Rao et al.: 0.1 for training). (Default: 0.1)
        adv_fraction: share of each batch that is patched. (Default: 0.5)
        avoid: region the patch may not cover. (Default: the central 10x10)
        seed: seeds the inner attack's locations and starts. (Default: 0)
    """

    patch_size: int = 8
    inner_steps: int = 10
    inner_step_size: float = 0.1
    adv_fraction: float = 0.5
    avoid: Box | None = central_box(10)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.adv_fraction <= 1.0:
            raise ValueError(f"adv_fraction {self.adv_fraction} must be in (0, 1]")


def patch_half(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ImagePatchConfig, fraction: float) -> torch.Tensor:
    """``x`` with its first ``fraction`` of images replaced by their per-image adversarial patches."""
    k = max(1, int(round(fraction * len(x))))
    was_training = model.training
    model.eval()
    adv = image_patch_attack(model, x[:k], y[:k], cfg).apply(x[:k]).detach()
    model.train(was_training)
    return torch.cat([adv, x[k:]])


def pbat_loss(config: PBATConfig = PBATConfig()) -> BatchLoss:
    """The PBAT batch loss at the model's current bit-width (set by the trainer from ``TrainConfig.bits``)."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        inner = ImagePatchConfig(size=config.patch_size, steps=config.inner_steps, step_size=config.inner_step_size,
                                 avoid=config.avoid, seed=config.seed * 1_000_003 + step)
        mixed = patch_half(model, x, y, inner, config.adv_fraction)
        logits = model(mixed)
        per_image = F.cross_entropy(logits, y, reduction="none")
        k = max(1, int(round(config.adv_fraction * len(x))))
        w = torch.cat([torch.full((k,), config.adv_fraction / k), torch.full((len(x) - k,), (1 - config.adv_fraction) / max(1, len(x) - k))])
        return (per_image * w.to(per_image)).sum(), logits

    return loss
