"""Per-image adversarial patch (Rao, Stutz and Schiele 2020, the attack PBAT trains against).

Every image gets its own patch at its own random location outside a given region (the central
10x10 by default). The patch starts uniform at random and takes signed-gradient steps that raise the
cross-entropy of the true label (untargeted) or lower that of a target. With restarts, each restart
draws a new location and start, and each image keeps its best patch: the first that fools the model,
else the one with the highest loss. All images of a batch are attacked at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import check_target
from ..patches import Box, Placement, Shape, apply_patch, central_box, make_mask, random_placement


@dataclass(frozen=True)
class ImagePatchConfig:
    """Hyperparameters, in paper units.

    Attributes:
        size: patch side in pixels (8 = 6.25 % of a 32x32 image, Rao et al.). (Default: 8)
        shape: "square" or "circle". (Default: "square")
        steps: signed-gradient steps per restart. (Default: 100)
        step_size: step in pixel units of [0, 1]. (Default: 0.05)
        restarts: attempts per image, each at a new location. (Default: 1)
        avoid: a box (row, col, h, w) the patch may not cover. (Default: the central 10x10)
        target: a target class, or None for untargeted. (Default: None)
        num_classes: classes of the attacked models (bounds ``target``). (Default: 10)
        seed: seeds locations and starting patches. (Default: 0)
    """

    size: int = 8
    shape: Shape = "square"
    steps: int = 100
    step_size: float = 0.05
    restarts: int = 1
    avoid: Box | None = central_box(10)
    target: int | None = None
    seed: int = 0
    num_classes: int = 10

    def __post_init__(self) -> None:
        check_target(self.target, self.num_classes)
        if self.steps < 0 or self.restarts < 1:
            raise ValueError(f"steps must be >= 0 and restarts >= 1, got {self.steps}, {self.restarts}")
        make_mask(self.size, self.shape)


@dataclass
class ImagePatches:
    """One patch per image and where it goes: ``patches`` ``(N, C, s, s)``, ``placement``, ``mask``."""

    patches: torch.Tensor
    placement: Placement
    mask: torch.Tensor

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The patched images (the same images the patches were crafted for)."""
        return apply_patch(images, self.patches, self.mask, self.placement)


def _per_image_loss(logits: torch.Tensor, y: torch.Tensor, target: int | None) -> torch.Tensor:
    """Per-image loss to *maximise*."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, torch.full_like(y, target), reduction="none")


def image_patch_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       config: ImagePatchConfig = ImagePatchConfig(), batch_size: int = 250) -> ImagePatches:
    """Craft one patch per image against ``model`` at its current bit-width (see module doc)."""
    if not torch.isfinite(images).all():
        raise ValueError("images must be finite")
    parts = [_attack_batch(model, images[i:i + batch_size], labels[i:i + batch_size], config, i)
             for i in range(0, len(images), batch_size)]
    patches = torch.cat([p.patches for p in parts])
    place = Placement(*(torch.cat([getattr(p.placement, f) for p in parts]) for f in ("rows", "cols", "angles", "scales")))
    return ImagePatches(patches, place, parts[0].mask)


def _attack_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ImagePatchConfig, offset: int) -> ImagePatches:
    was_training = model.training
    model.eval()
    n, c = x.shape[:2]
    mask = make_mask(cfg.size, cfg.shape).to(x)
    best_p = torch.zeros(n, c, cfg.size, cfg.size, dtype=x.dtype, device=x.device)
    best_r = torch.zeros(n, dtype=torch.long, device=x.device)
    best_c = torch.zeros(n, dtype=torch.long, device=x.device)
    best_loss = torch.full((n,), -float("inf"), device=x.device)
    best_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    for restart in range(cfg.restarts):
        g = torch.Generator().manual_seed(cfg.seed * 7919 + offset * 31 + restart)
        place = random_placement(n, cfg.size, g, x.shape[-1], cfg.avoid)
        p = torch.rand(n, c, cfg.size, cfg.size, generator=g).to(x).requires_grad_(True)
        for _ in range(cfg.steps):
            loss = _per_image_loss(model(apply_patch(x, p, mask, place)), y, cfg.target)
            grad, = torch.autograd.grad(loss.sum(), p)
            with torch.no_grad():
                p += cfg.step_size * grad.sign()
                p.clamp_(0, 1)
        with torch.no_grad():
            logits = model(apply_patch(x, p, mask, place))
            loss = _per_image_loss(logits, y, cfg.target)
            pred = logits.argmax(1)
            fooled = pred != y if cfg.target is None else pred == cfg.target
            # Prefer a patch that fools the model; among equals, the higher loss.
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
            best_p[better] = p.detach()[better]
            best_r[better], best_c[better] = place.rows.to(x.device)[better], place.cols.to(x.device)[better]
            best_loss[better], best_fooled[better] = loss[better], fooled[better]
    model.train(was_training)
    return ImagePatches(best_p, Placement(best_r.cpu(), best_c.cpu(), torch.zeros(n), torch.ones(n)), mask)
