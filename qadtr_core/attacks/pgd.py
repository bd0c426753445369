"""L-inf PGD (Madry et al. 2018), the pixel-level contrast, through ``captum.robust.PGD``.

Captum's PGD serves as is once it is given a logits loss (its default ``-log(outputs)`` expects
probabilities) and the [0, 1] bounds; we add only a seeded random start and batching.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from captum.robust import PGD
from torch import nn

from ..utils import eval_mode, input_gradients_only


@dataclass(frozen=True)
class PGDConfig:
    """Hyperparameters (pixel units of [0, 1]).

    Attributes:
        eps: L-inf radius. (Default: 8/255)
        step_size: per-step size. (Default: 2/255)
        steps: iterations. (Default: 10)
        random_start: start uniformly inside the ball. (Default: True)
        seed: seeds the random start. (Default: 0)
    """

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.eps <= 1 and self.step_size > 0 and self.steps >= 0):
            raise ValueError(f"need 0 <= eps <= 1, step_size > 0, steps >= 0; got {self.eps}, {self.step_size}, {self.steps}")


def _ce_per_image(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def pgd_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: PGDConfig = PGDConfig(),
               batch_size: int = 250) -> torch.Tensor:
    """Untargeted L-inf PGD adversarial examples of ``images`` against ``model`` at its current bit-width."""
    if not torch.isfinite(images).all():
        raise ValueError("images must be finite")
    pgd = PGD(model, loss_func=_ce_per_image, lower_bound=0.0, upper_bound=1.0)
    # captum draws its random start from the global generator: it is seeded inside a fork of the global
    # state, so the caller's own random stream is left as it was (captum notes that it switches on input
    # gradients itself: that warning is silenced)
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), eval_mode(model), input_gradients_only(model), \
            warnings.catch_warnings():
        torch.manual_seed(config.seed)
        warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
        out = [pgd.perturb(images[i:i + batch_size], radius=config.eps, step_size=config.step_size,
                           step_num=config.steps, target=labels[i:i + batch_size], random_start=config.random_start)
               for i in range(0, len(images), batch_size)]
    return torch.cat(out).detach()
