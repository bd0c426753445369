"""DWQ, Double-Win Quant (Fu et al. 2021): random-precision adversarial training and inference.

Training: every batch runs at a bit-width drawn from ``bit_set`` (one BatchNorm per bit-width) on
L-inf PGD examples crafted at that same bit-width. Inference: :class:`RandomPrecision` wraps the
trained model and draws a bit-width per forward pass, the randomness DWQ relies on; adaptive attacks
must average over it (EOT), not attack one fixed width.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.pgd import PGDConfig, pgd_attack
from ..quant import check_bits, set_bits
from ..train import BatchLoss


def check_bit_set(bit_set: Sequence[int]) -> tuple[int, ...]:
    """A non-empty tuple of valid, distinct bit-widths, or ``ValueError``."""
    if not bit_set:
        raise ValueError("the bit set is empty; give at least one of 2..8 or 32")
    if len(set(bit_set)) != len(bit_set):
        raise ValueError(f"the bit set {tuple(bit_set)} repeats a bit-width")
    return tuple(check_bits(b) for b in bit_set)


def draw_bits(bit_set: Sequence[int], seed: int, step: int, schedule: str = "sample") -> int:
    """The bit-width of training step ``step``: cycling through ``bit_set`` or drawn uniformly (seeded)."""
    if schedule == "cycle":
        return bit_set[step % len(bit_set)]
    if schedule == "sample":
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return bit_set[int(torch.randint(len(bit_set), (1,), generator=g))]
    raise ValueError(f"unknown bit schedule {schedule!r}; allowed: 'cycle', 'sample'")


@dataclass(frozen=True)
class DWQConfig:
    """DWQ hyperparameters.

    Attributes:
        bit_set: bit-widths trained and drawn at inference. (Default: (32, 8, 5, 4, 2), the study's set;
            DWQ itself used 4..16 bits)
        pgd_steps: PGD steps of the training attack (DWQ: 7). (Default: 7)
        eps: L-inf radius. (Default: 8/255)
        step_size: PGD step. (Default: 2/255)
        seed: seeds the bit draws and the PGD starts. (Default: 0)
    """

    bit_set: tuple[int, ...] = (32, 8, 5, 4, 2)
    pgd_steps: int = 7
    eps: float = 8 / 255
    step_size: float = 2 / 255
    seed: int = 0

    def __post_init__(self) -> None:
        check_bit_set(self.bit_set)


def dwq_loss(config: DWQConfig = DWQConfig()) -> BatchLoss:
    """The DWQ batch loss: cross-entropy on PGD examples at a randomly drawn bit-width."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        set_bits(model, draw_bits(config.bit_set, config.seed, step))
        adv = pgd_attack(model, x, y, PGDConfig(eps=config.eps, step_size=config.step_size, steps=config.pgd_steps,
                                                seed=config.seed * 1_000_003 + step))
        logits = model(adv)
        return F.cross_entropy(logits, y), logits

    return loss


class RandomPrecision(nn.Module):
    """Inference at a random bit-width per forward pass (DWQ's random-precision inference).

    ``generator`` makes the draws repeatable; the wrapped model keeps its own bit-width afterwards.
    """

    def __init__(self, model: nn.Module, bit_set: Sequence[int], seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.bit_set = check_bit_set(bit_set)
        self.generator = torch.Generator().manual_seed(seed)
        self.last_bits: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_bits = self.bit_set[int(torch.randint(len(self.bit_set), (1,), generator=self.generator))]
        set_bits(self.model, self.last_bits)
        return self.model(x)
