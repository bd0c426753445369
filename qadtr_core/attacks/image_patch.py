"""Per-image adversarial patch (Rao, Stutz and Schiele 2020, the attack PBAT trains against).

Every image gets its own patch at its own random location outside a given region (the central
10x10 by default). The patch starts uniform at random and takes signed-gradient steps that raise the
cross-entropy of the true label (untargeted) or lower that of a target. With location optimisation
(Rao et al.'s "RandLO"), each step also tries moving every patch by ``location_stride`` pixels in a
random direction and keeps the move where it raises the loss. With restarts, each restart draws a
new location and start. Each image keeps its **best iterate** over all steps and restarts: the first
patch that fools the model, else the one with the highest loss.

The attack records, per image, restart and step, whether the best iterate so far fools the model
(:attr:`ImagePatches.success`), so one run shows its own strength curve: the ASR it would have had
with half the steps or fewer restarts (the convergence check of Carlini et al. 2019) costs nothing.
All images of a batch are attacked at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import check_target
from ..patches import Box, Placement, Shape, apply_patch, central_box, make_mask, random_placement
from ..utils import eval_mode

# The four moves of location optimisation: up, down, left, right.
_MOVES = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1]])


@dataclass(frozen=True)
class ImagePatchConfig:
    """Hyperparameters, in paper units.

    Attributes:
        size: patch side in pixels (8 = 6.25 % of a 32x32 image, Rao et al.). (Default: 8)
        shape: "square" or "circle". (Default: "square")
        steps: signed-gradient steps per restart. (Default: 100)
        step_size: step in pixel units of [0, 1]. (Default: 0.05)
        restarts: attempts per image, each at a new location and start. (Default: 1)
        location_opt: try a random move of every patch each step and keep it where the loss rises
            (Rao et al.'s random location optimisation). (Default: False)
        location_stride: pixels per move. (Default: 2, Rao et al.'s stride)
        avoid: a box (row, col, h, w) the patch may not cover. (Default: the central 10x10)
        target: a target class, or None for untargeted. (Default: None)
        num_classes: classes of the attacked models (bounds ``target``). (Default: 10)
        seed: seeds locations, moves and starting patches. (Default: 0)
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
    location_opt: bool = False
    location_stride: int = 2

    def __post_init__(self) -> None:
        check_target(self.target, self.num_classes)
        if self.steps < 0 or self.restarts < 1:
            raise ValueError(f"steps must be >= 0 and restarts >= 1, got {self.steps}, {self.restarts}")
        if self.location_stride < 1:
            raise ValueError(f"location_stride must be a positive number of pixels, got {self.location_stride}")
        make_mask(self.size, self.shape)


@dataclass
class ImagePatches:
    """One patch per image and where it goes: ``patches`` ``(N, C, s, s)``, ``placement``, ``mask``.

    ``success`` (bool, ``(N, restarts, steps + 1)``) says whether restart ``r`` of image ``i`` had
    fooled the model within its first ``t`` steps (``t = 0`` is the random start), restarts counted
    independently, so any budget of fewer steps or restarts can be read off one run.
    """

    patches: torch.Tensor
    placement: Placement
    mask: torch.Tensor
    success: torch.Tensor | None = None

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The patched images (the same images the patches were crafted for)."""
        return apply_patch(images, self.patches, self.mask, self.placement)

    def fooled_within(self, steps: int, restarts: int | None = None) -> torch.Tensor:
        """Per image: fooled within ``steps`` steps of any of the first ``restarts`` restarts (default: all)."""
        if self.success is None:
            raise ValueError("these patches carry no per-step success record")
        n_r, n_t = self.success.shape[1], self.success.shape[2] - 1
        restarts = n_r if restarts is None else restarts
        if not 1 <= restarts <= n_r or not 0 <= steps <= n_t:
            raise ValueError(f"steps must be in 0..{n_t} and restarts in 1..{n_r}, got {steps}, {restarts}")
        return self.success[:, :restarts, steps].any(1)


def _per_image_loss(logits: torch.Tensor, y: torch.Tensor, target: int | None) -> torch.Tensor:
    """Per-image loss to *maximise*."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, torch.full_like(y, target), reduction="none")


def _fooled(logits: torch.Tensor, y: torch.Tensor, target: int | None) -> torch.Tensor:
    pred = logits.argmax(1)
    return pred != y if target is None else pred == target


def image_patch_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       config: ImagePatchConfig = ImagePatchConfig(), batch_size: int = 250) -> ImagePatches:
    """Craft one patch per image against ``model`` at its current bit-width (see module doc)."""
    if not torch.isfinite(images).all():
        raise ValueError("images must be finite")
    parts = [_attack_batch(model, images[i:i + batch_size], labels[i:i + batch_size], config, i)
             for i in range(0, len(images), batch_size)]
    patches = torch.cat([p.patches for p in parts])
    place = Placement(*(torch.cat([getattr(p.placement, f) for p in parts]) for f in ("rows", "cols", "angles", "scales")))
    return ImagePatches(patches, place, parts[0].mask, torch.cat([p.success for p in parts]))


def _allowed(rows: torch.Tensor, cols: torch.Tensor, size: int, image_size: int, avoid: Box | None) -> torch.Tensor:
    """Per image: the patch at (rows, cols) lies inside the image and misses ``avoid``."""
    ok = (rows >= 0) & (cols >= 0) & (rows + size <= image_size) & (cols + size <= image_size)
    if avoid is not None:
        ar, ac, ah, aw = avoid
        ok &= (rows + size <= ar) | (rows >= ar + ah) | (cols + size <= ac) | (cols >= ac + aw)
    return ok


def _attack_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ImagePatchConfig, offset: int) -> ImagePatches:
    n, c = x.shape[:2]
    dev = x.device
    mask = make_mask(cfg.size, cfg.shape).to(x)
    ones, zeros = torch.ones(n), torch.zeros(n)
    best_p = torch.zeros(n, c, cfg.size, cfg.size, dtype=x.dtype, device=dev)
    best_r = torch.zeros(n, dtype=torch.long)
    best_c = torch.zeros(n, dtype=torch.long)
    best_loss = torch.full((n,), -float("inf"), device=dev)
    best_fooled = torch.zeros(n, dtype=torch.bool, device=dev)
    success = torch.zeros(n, cfg.restarts, cfg.steps + 1, dtype=torch.bool)

    def keep_best(p: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, loss: torch.Tensor, fooled: torch.Tensor) -> None:
        # Prefer a patch that fools the model; among equals, the higher loss.
        better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
        best_p[better] = p.detach()[better]
        cpu = better.cpu()
        best_r[cpu], best_c[cpu] = rows[cpu], cols[cpu]
        best_loss[better], best_fooled[better] = loss[better], fooled[better]

    with eval_mode(model):
        for restart in range(cfg.restarts):
            g = torch.Generator().manual_seed(cfg.seed * 7919 + offset * 31 + restart)
            place = random_placement(n, cfg.size, g, x.shape[-1], cfg.avoid)
            rows, cols = place.rows.clone(), place.cols.clone()
            p = torch.rand(n, c, cfg.size, cfg.size, generator=g).to(x).requires_grad_(True)
            fooled_here = torch.zeros(n, dtype=torch.bool)  # this restart's own record
            for t in range(cfg.steps + 1):
                here = Placement(rows, cols, zeros, ones)
                logits = model(apply_patch(x, p, mask, here))
                loss = _per_image_loss(logits, y, cfg.target)
                with torch.no_grad():
                    fooled = _fooled(logits, y, cfg.target)
                    keep_best(p, rows, cols, loss.detach(), fooled)
                    fooled_here |= fooled.cpu()
                # Location step (RandLO): the patch content then takes the gradient of its old location.
                if cfg.location_opt and t < cfg.steps:
                    with torch.no_grad():
                        move = _MOVES[torch.randint(4, (n,), generator=g)] * cfg.location_stride
                        new_r, new_c = rows + move[:, 0], cols + move[:, 1]
                        ok = _allowed(new_r, new_c, cfg.size, x.shape[-1], cfg.avoid)
                        new_r, new_c = torch.where(ok, new_r, rows), torch.where(ok, new_c, cols)
                        logits_m = model(apply_patch(x, p, mask, Placement(new_r, new_c, zeros, ones)))
                        loss_m = _per_image_loss(logits_m, y, cfg.target)
                        fooled_m = _fooled(logits_m, y, cfg.target)
                        keep_best(p, new_r, new_c, loss_m, fooled_m)
                        fooled_here |= fooled_m.cpu()
                        accept = (ok.to(dev) & (loss_m > loss.detach())).cpu()
                        rows, cols = torch.where(accept, new_r, rows), torch.where(accept, new_c, cols)
                success[:, restart, t] = fooled_here
                if t == cfg.steps:
                    break
                grad, = torch.autograd.grad(loss.sum(), p)
                with torch.no_grad():
                    p += cfg.step_size * grad.sign()
                    p.clamp_(0, 1)
    return ImagePatches(best_p, Placement(best_r, best_c, torch.zeros(n), torch.ones(n)), mask, success)
