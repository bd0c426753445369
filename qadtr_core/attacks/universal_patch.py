"""Universal adversarial patch (Brown et al. 2017; LaVAN, Karmon et al. 2018) with EOT over placement.

One patch for all images: each step draws a batch of training images and a random placement per
image (location, optionally rotation and scale), pastes the patch, and moves it to raise the target
class (targeted) or the loss of the true class (untargeted). The loss can average over several
*members*: (model, bit-width) pairs, e.g. every bit-width of one switchable model, which is what
A-QAPA and the adaptive attacks use. Each step's randomness comes from ``(seed, step)``, so running
N steps, saving the state and running N more equals running 2N at once.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..metrics import check_target
from ..patches import Box, Shape, apply_patch, make_mask, random_placement
from ..quant import bits as at_bits
from ..quant import check_bits

Member = tuple[nn.Module, int]  # a model and the bit-width to run it at


@dataclass(frozen=True)
class UniversalPatchConfig:
    """Hyperparameters, in paper units.

    Attributes:
        size: patch side in pixels (6 = 3.5 % of a 32x32 image, TriQDef's LaVAN size). (Default: 6)
        shape: "square" or "circle". (Default: "square")
        target: target class, or None for an untargeted patch. (Default: 0, airplane)
        steps: optimisation steps. (Default: 500)
        batch_size: images per step. (Default: 128)
        step_size: Adam learning rate, or the signed-gradient step. (Default: 0.05)
        optimizer: "adam" or "sign". (Default: "adam")
        max_angle: EOT rotation range in degrees (0 = none). (Default: 0.0)
        scale_range: EOT scale range (1, 1 = none). (Default: (1.0, 1.0))
        avoid: a box (row, col, h, w) the patch may not cover, or None. (Default: None)
        num_classes: classes of the attacked models (bounds ``target``). (Default: 10)
        seed: seeds the initial patch, batches and placements. (Default: 0)
    """

    size: int = 6
    shape: Shape = "square"
    target: int | None = 0
    steps: int = 500
    batch_size: int = 128
    step_size: float = 0.05
    optimizer: Literal["adam", "sign"] = "adam"
    max_angle: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    avoid: Box | None = None
    seed: int = 0
    num_classes: int = 10

    def __post_init__(self) -> None:
        check_target(self.target, self.num_classes)
        if self.optimizer not in ("adam", "sign"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; allowed: 'adam', 'sign'")
        make_mask(self.size, self.shape)  # validates size and shape


def patch_loss(logits: torch.Tensor, labels: torch.Tensor, target: int | None) -> torch.Tensor:
    """The loss the patch minimises: CE to the target, or minus CE to the true label (untargeted)."""
    if target is None:
        return -F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, torch.full_like(labels, target))


class UniversalPatchAttack:
    """Optimise one patch against ``members``; ``run(n)`` continues where the last call stopped."""

    def __init__(self, members: Sequence[Member], images: torch.Tensor, labels: torch.Tensor,
                 config: UniversalPatchConfig = UniversalPatchConfig()) -> None:
        if not members:
            raise ValueError("the attack needs at least one (model, bit-width) member")
        for _, b in members:
            check_bits(b)
        if not torch.isfinite(images).all():
            raise ValueError("training images must be finite")
        self.members, self.images, self.labels, self.config = list(members), images, labels, config
        if config.target is not None:  # images of the target class teach nothing
            keep = labels != config.target
            self.images, self.labels = images[keep], labels[keep]
        self.mask = make_mask(config.size, config.shape).to(images)
        g = torch.Generator().manual_seed(config.seed)
        self.patch = torch.rand(images.shape[1], config.size, config.size, generator=g).to(images)
        self.patch.requires_grad_(True)
        self.opt = torch.optim.Adam([self.patch], lr=config.step_size) if config.optimizer == "adam" else None
        self.step = 0
        self.history: list[float] = []

    def loss_on(self, step: int) -> torch.Tensor:
        """The mean patch loss over members on the batch and placements of ``step``."""
        cfg = self.config
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 1)
        idx = torch.randint(0, len(self.images), (min(cfg.batch_size, len(self.images)),), generator=g)
        place = random_placement(len(idx), cfg.size, g, self.images.shape[-1], cfg.avoid, cfg.max_angle, cfg.scale_range)
        x = apply_patch(self.images[idx], self.patch, self.mask, place)
        total = 0.0
        for model, b in self.members:
            with at_bits(model, b):
                total = total + patch_loss(model(x), self.labels[idx], cfg.target)
        return total / len(self.members)

    def run(self, steps: int | None = None, progress: bool = False) -> torch.Tensor:
        """Take ``steps`` more steps (default: the configured total); returns the patch (detached)."""
        steps = self.config.steps - self.step if steps is None else steps
        modes = [m.training for m, _ in self.members]
        for m, _ in self.members:
            m.eval()
        for _ in tqdm(range(steps), disable=not progress, desc="universal patch", mininterval=2.0):
            loss = self.loss_on(self.step)
            grad, = torch.autograd.grad(loss, self.patch)
            with torch.no_grad():
                if self.opt is not None:
                    self.patch.grad = grad
                    self.opt.step()
                else:
                    self.patch -= self.config.step_size * grad.sign()
                self.patch.clamp_(0, 1)
            self.history.append(float(loss.detach()))
            self.step += 1
        for (m, _), mode in zip(self.members, modes):
            m.train(mode)
        return self.patch.detach().clone()

    def state_dict(self) -> dict:
        """Everything needed to continue: patch, optimiser state, step count, loss history."""
        return {"patch": self.patch.detach().clone(), "step": self.step, "history": list(self.history),
                "opt": self.opt.state_dict() if self.opt is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.patch.copy_(state["patch"])
        self.step, self.history = int(state["step"]), list(state["history"])
        if self.opt is not None:
            self.opt.load_state_dict(state["opt"])


def universal_patch(members: Sequence[Member], images: torch.Tensor, labels: torch.Tensor,
                    config: UniversalPatchConfig = UniversalPatchConfig(), progress: bool = False) -> torch.Tensor:
    """Craft a universal patch (``(C, size, size)`` in [0, 1]) against ``members``; see the module doc."""
    return UniversalPatchAttack(members, images, labels, config).run(progress=progress)
