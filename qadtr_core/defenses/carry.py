"""Carried inner attacks: adversarial patches and perturbations kept across batches ("free" training).

Crafting a per-image patch from a random start every batch (Rao et al.'s inner loop, 10-25 steps)
makes a training step cost many forward-backward passes. "Free" adversarial training (Shafahi et al.
2019) keeps the perturbation of the previous minibatch as the start of the next one, so that a few
refresh steps per batch accumulate into a strong attack over training; "fast" training (Wong et al.
2020) shows one signed step per batch suffices when the start is good. We apply the same idea to
patches (a reconstruction choice, documented in the methods chapter):

- :class:`PatchBank` keeps, per *cell* (a bit-width and patch size), one patch per patched slot of
  the batch. Each batch draws new random locations (outside the avoided region), starts from the
  cell's carried patches (uniform noise the first time) and takes ``steps`` signed-gradient steps
  against the current model in eval mode; the result is stored for the cell's next batch.
- :class:`PerturbationBank` does the same for DWQ's L-inf pixel perturbation, per bit-width.

The bank is part of the strategy's state (saved with every training checkpoint), so a resumed run
repeats exactly. ``steps`` is the shared inner-attack budget (``Profile.defense_inner_steps``).

Each bank also measures that the carried attack still works: the mean cross-entropy (eval mode, at the
attacked width) of its images before the refresh steps (the carried patches at their new locations: the
loss the first step computes anyway) and after them (one extra forward without gradients). The
trainer reads it once per epoch (:meth:`InnerLossMeter.read`, via the strategy's ``inner_record()``)
into the training history: ``inner_loss_before`` / ``inner_loss_after``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..patches import Box, apply_patch, make_mask, random_placement
from ..utils import eval_mode


def _check(steps: int, step_size: float) -> None:
    if steps < 0 or step_size <= 0:
        raise ValueError(f"inner steps must be >= 0 and the step size > 0, got {steps} and {step_size}")


class InnerLossMeter:
    """Sums of the inner attack's per-image cross-entropy before and after its steps, until read."""

    def __init__(self) -> None:
        self.before, self.after, self.n = 0.0, 0.0, 0

    def add(self, before_sum: float, after_sum: float, n: int) -> None:
        self.before, self.after, self.n = self.before + before_sum, self.after + after_sum, self.n + n

    def read(self) -> dict[str, float]:
        """``inner_loss_before`` / ``inner_loss_after`` (means over the attacked images since the last
        read; empty when none), then start again from zero."""
        out = {"inner_loss_before": self.before / self.n, "inner_loss_after": self.after / self.n} if self.n else {}
        self.__init__()
        return out


def _ce_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y, reduction="sum"))


class _Bank:
    """What a carried inner attack keeps: one tensor per cell (``carried``) and its loss meter."""

    def __init__(self) -> None:
        self.carried: dict[str, torch.Tensor] = {}
        self.meter = InnerLossMeter()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.carried.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.carried = {k: v.clone() for k, v in state.items()}


class CarriedStrategy:
    """A batch loss whose inner attack is carried in ``self.bank``: the bank is its checkpointed state and
    its meter gives the trainer the inner attack's loss gain once per epoch."""

    bank: _Bank

    def inner_record(self) -> dict[str, float]:
        """Mean inner-attack loss before / after the refresh steps since the last call (per epoch, by the trainer)."""
        return self.bank.meter.read()

    def state_dict(self) -> dict:
        return {"bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.bank.load_state_dict(state["bank"])


class PatchBank(_Bank):
    """Per-cell patches carried from batch to batch (see the module doc)."""

    def start(self, cell: str, k: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
        """The carried patches of ``cell`` (uniform noise when none, or when the slot count changed)."""
        p = self.carried.get(cell)
        if p is None or p.shape != (k, channels, size, size):
            p = torch.rand(k, channels, size, size, generator=generator)
        return p

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cell: str, size: int, steps: int,
               step_size: float, avoid: Box | None, generator: torch.Generator) -> torch.Tensor:
        """``x`` patched at fresh random locations with ``cell``'s patches after ``steps`` refresh steps.

        The model runs in eval mode (BatchNorm statistics untouched) at whatever bit-width it is set to.
        """
        _check(steps, step_size)
        place = random_placement(len(x), size, generator, x.shape[-1], avoid)
        mask = make_mask(size).to(x)
        p = self.start(cell, len(x), x.shape[1], size, generator).to(x)
        before = None
        with eval_mode(model):
            for _ in range(steps):
                p.requires_grad_(True)
                loss = F.cross_entropy(model(apply_patch(x, p, mask, place)), y, reduction="sum")
                before = float(loss.detach()) if before is None else before
                grad, = torch.autograd.grad(loss, p)
                p = (p.detach() + step_size * grad.sign()).clamp_(0, 1)
            after = _ce_sum(model, apply_patch(x, p.detach(), mask, place), y)
        self.meter.add(after if before is None else before, after, len(x))
        self.carried[cell] = p.detach()
        return apply_patch(x, p.detach(), mask, place).detach()


class PerturbationBank(_Bank):
    """Per-bit-width L-inf perturbations carried from batch to batch (free adversarial training)."""

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cell: str, eps: float, steps: int,
               step_size: float, generator: torch.Generator) -> torch.Tensor:
        """``x + delta`` after ``steps`` projected signed steps from ``cell``'s carried ``delta``."""
        _check(steps, step_size)
        d = self.carried.get(cell)
        if d is None or d.shape != x.shape:
            d = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
        d = d.to(x)
        before = None
        with eval_mode(model):
            for _ in range(steps):
                d.requires_grad_(True)
                loss = F.cross_entropy(model((x + d).clamp(0, 1)), y, reduction="sum")
                before = float(loss.detach()) if before is None else before
                grad, = torch.autograd.grad(loss, d)
                d = (d.detach() + step_size * grad.sign()).clamp_(-eps, eps)
            d = ((x + d).clamp(0, 1) - x).detach()
            after = _ce_sum(model, x + d, y)
        self.meter.add(after if before is None else before, after, len(x))
        self.carried[cell] = d
        return (x + d).detach()
