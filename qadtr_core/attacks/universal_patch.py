"""Universal adversarial patch (Brown et al. 2017; LaVAN, Karmon et al. 2018) with EOT over placement.

One patch for all images: each step draws a batch of training images and a random placement per
image (location, optionally rotation and scale), pastes the patch, and moves it to raise the target
class (targeted) or the loss of the true class (untargeted). The loss can average over several
*members*: (model, bit-width) pairs, e.g. every bit-width of one switchable model, which is what
A-QAPA and the adaptive attacks use. Each step's randomness comes from ``(seed, step)``, so running
N steps, saving the state and running N more equals running 2N at once.

The step size decays. With the default ``schedule="doubling"`` it follows a cosine from
``step_size`` to zero within each *phase*, and the phases end at ``first_phase * 2^k`` steps (each
phase as long as all earlier ones together): every phase end is a finished, annealed attack with
twice the steps of the previous one, which is exactly what the convergence rule of Carlini et al.
(2019) compares ("does doubling the steps still add anything?"), without running each budget anew.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..metrics import check_target
from ..patches import Box, Shape, apply_patch, make_mask, random_placement
from ..quant import bits as at_bits
from ..quant import check_bits
from ..utils import Member, eval_mode, input_gradients_only, seeded_generator

Schedule = Literal["constant", "cosine", "doubling"]


@dataclass(frozen=True)
class UniversalPatchConfig:
    """Hyperparameters, in paper units.

    Attributes:
        size: patch side in pixels (6 = 3.5 % of a 32x32 image, TriQDef's LaVAN size). (Default: 6)
        shape: "square" or "circle". (Default: "square")
        target: target class, or None for an untargeted patch. (Default: 0, airplane)
        steps: optimisation steps. (Default: 500)
        batch_size: images per step. (Default: 128)
        step_size: peak Adam learning rate, or the peak signed-gradient step. (Default: 0.05)
        optimizer: "adam" or "sign". (Default: "adam")
        schedule: step-size decay: "constant", "cosine" (one decay over ``steps``) or "doubling"
            (a cosine decay within each phase; phases end at ``first_phase * 2^k``). (Default: "doubling")
        first_phase: steps of the first phase of the doubling schedule; 0 = ``steps`` (one phase).
            ``steps`` must be ``first_phase`` times a power of two. (Default: 0)
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
    schedule: Schedule = "doubling"
    first_phase: int = 0
    max_angle: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    avoid: Box | None = None
    seed: int = 0
    num_classes: int = 10

    def __post_init__(self) -> None:
        check_target(self.target, self.num_classes)
        if self.optimizer not in ("adam", "sign"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; allowed: 'adam', 'sign'")
        if self.schedule not in ("constant", "cosine", "doubling"):
            raise ValueError(f"unknown schedule {self.schedule!r}; allowed: 'constant', 'cosine', 'doubling'")
        if self.steps < 1 or self.first_phase < 0:
            raise ValueError(f"steps must be >= 1 and first_phase >= 0, got {self.steps}, {self.first_phase}")
        if self.schedule == "doubling" and self.first_phase:
            ratio = self.steps / self.first_phase
            if ratio != int(ratio) or int(ratio) & (int(ratio) - 1):
                raise ValueError(f"steps {self.steps} must be first_phase {self.first_phase} times a power of two "
                                 f"(e.g. {self.first_phase * 2 ** max(0, round(math.log2(max(ratio, 1))))})")
        make_mask(self.size, self.shape)  # validates size and shape

    def phase_ends(self) -> list[int]:
        """Steps at which the step size has annealed to zero: the doubling checkpoints (else ``[steps]``)."""
        if self.schedule != "doubling" or not self.first_phase:
            return [self.steps]
        ends, e = [], self.first_phase
        while e <= self.steps:
            ends.append(e)
            e *= 2
        return ends

    def step_size_at(self, step: int) -> float:
        """The step size of step ``step`` (0-based) under the schedule."""
        if self.schedule == "constant":
            return self.step_size
        start, end = 0, self.steps
        if self.schedule == "doubling":
            for e in self.phase_ends():
                if step < e:
                    end = e
                    break
                start = e
        frac = (step - start) / max(1, end - start)
        return self.step_size * 0.5 * (1 + math.cos(math.pi * frac))


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
        g = seeded_generator(cfg.seed, step + 1)
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
        models = [m for m, _ in self.members]
        with eval_mode(*models), input_gradients_only(*models):
            for _ in tqdm(range(steps), disable=not progress, desc="universal patch", mininterval=2.0):
                lr = self.config.step_size_at(self.step)
                loss = self.loss_on(self.step)
                grad, = torch.autograd.grad(loss, self.patch)
                with torch.no_grad():
                    if self.opt is not None:
                        for group in self.opt.param_groups:
                            group["lr"] = lr
                        self.patch.grad = grad
                        self.opt.step()
                    else:
                        self.patch -= lr * grad.sign()
                    self.patch.clamp_(0, 1)
                self.history.append(float(loss.detach()))
                self.step += 1
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
