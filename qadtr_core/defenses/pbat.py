"""PBAT: patch-based adversarial training (Rao, Stutz and Schiele 2020), at one bit-width.

Each batch, a share ``adv_fraction`` (half, as in Rao et al.) of the images gets a per-image adversarial
patch crafted *for that image against the current weights*: a random location outside the central
region, uniform random content, ``inner_steps`` signed-gradient steps with location optimisation
(Rao et al.'s RandLO, stride 2), the best iterate kept (:func:`~qadtr_core.defenses.inner.patch_inner`,
the evaluation's per-image attack with one restart). The loss mixes clean and patched cross-entropy in
the same proportion. The inner attack runs in eval mode (BatchNorm statistics untouched), at the width
the model serves. Its fidelity (the share of a fresh 20-step attack's loss gain it reaches) is probed
every ``probe_every`` steps (:mod:`qadtr_core.defenses.inner`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation.threats import PatchDistribution
from ..patches import Box, central_box
from ..train import TrainConfig, register_strategy
from ..utils import stream_seed
from .inner import FRESH_STEP_SIZE, FRESH_STEPS, InnerStrategy, check_inner, patch_inner


@dataclass(frozen=True)
class PBATConfig:
    """PBAT hyperparameters (Rao et al.'s CIFAR-10 values where they exist).

    Attributes:
        patch_size: training patch side in pixels. (Default: 8)
        inner_steps: signed-gradient steps of the per-image inner attack, from a fresh random start every
            batch. (Default: 10)
        inner_step_size: inner step in [0, 1] pixel units; None = ``1 / inner_steps``, so that a pixel can cross
            the whole range in the inner steps (the evaluation's 20-step attack takes 0.05 = 1/20 too).
            (Default: None)
        location_opt: optimise each patch's location during the inner steps (Rao et al.). (Default: True)
        adv_fraction: share of each batch that is patched. (Default: 0.5)
        avoid: region the patch may not cover. (Default: the central 10x10)
        probe_every: training steps between fidelity probes (0 = never). (Default: 50)
        seed: seeds the inner attack's locations and starts. (Default: 0)
    """

    patch_size: int = 8
    inner_steps: int = 10
    inner_step_size: float | None = None
    location_opt: bool = True
    adv_fraction: float = 0.5
    avoid: Box | None = central_box(10)
    probe_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.adv_fraction <= 1.0:
            raise ValueError(f"adv_fraction {self.adv_fraction} must be in (0, 1]")
        check_inner(self.inner_steps, self.step_size)

    @property
    def step_size(self) -> float:
        """The inner step: ``inner_step_size``, else ``1 / inner_steps``."""
        return self.inner_step_size or 1.0 / self.inner_steps

    def training_patches(self) -> PatchDistribution:
        """8x8 squares outside the centre, crafted at the width the model serves."""
        return PatchDistribution(sizes=(self.patch_size,), anywhere=self.avoid is None, source_bits=None)


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


class PBAT(InnerStrategy):
    """The PBAT batch loss (a trainer ``loss_fn``); its only state is the fidelity record of the epoch."""

    def __init__(self, config: PBATConfig = PBATConfig()) -> None:
        self.config = config
        self.probe_every = config.probe_every

    def inner(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """The first ``adv_fraction`` of the batch with per-image patches crafted for them, at the model's width."""
        cfg = self.config
        k = n_patched(cfg.adv_fraction, len(x))
        return patch_inner(model, x[:k], y[:k], cfg.patch_size, cfg.inner_steps, cfg.step_size, cfg.avoid,
                           stream_seed(cfg.seed, step) % 2**31, cfg.location_opt)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        adv = self.inner(model, x, y, step)
        k = len(adv)
        self.maybe_probe(step, model, x[:k], y[:k], adv, lambda: patch_inner(
            model, x[:k], y[:k], cfg.patch_size, FRESH_STEPS, FRESH_STEP_SIZE, cfg.avoid,
            stream_seed(cfg.seed, step, 1) % 2**31, True))
        logits = model(torch.cat([adv, x[k:]]))
        return mixed_loss(logits, y, k, cfg.adv_fraction), logits


def pbat_loss(config: PBATConfig = PBATConfig()) -> PBAT:
    """The PBAT batch loss at the model's current bit-width (set by the trainer from ``TrainConfig.bits``)."""
    return PBAT(config)


def _factory(config: TrainConfig) -> PBAT:
    return PBAT(config.strategy_params or PBATConfig())


register_strategy("pbat", _factory)
