"""DWQ, Double-Win Quant (Fu et al. 2021): random-precision adversarial training and inference.

Training: every batch runs at one bit-width of ``bit_set`` (one BatchNorm per bit-width) on L-inf
adversarial examples crafted at that same bit-width. DWQ draws the width at random; we cycle through
the set (``schedule="cycle"``, as QADT-R and the multi-width model do), so that every width gets exactly
the same number of steps (equal training per width); ``"sample"`` draws it. With ``carry`` (default; the reconstruction
choice applied alike to PBAT and QADT-R, :mod:`qadtr_core.defenses.carry`) the perturbation of each
width is carried from batch to batch and refreshed by ``pgd_steps`` projected signed steps ("free"
adversarial training); without it each batch runs PGD from a random start (DWQ: 7 steps). Inference:
:class:`RandomPrecision` wraps the trained model and draws a bit-width per forward pass, the
randomness DWQ relies on; adaptive attacks must average over it (EOT), not attack one fixed width.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.pgd import PGDConfig, pgd_attack
from ..quant import set_bits
from ..train import TrainConfig, check_bit_set, draw_bits, register_strategy
from ..utils import seeded_generator, stream_seed
from .carry import CarriedStrategy, PerturbationBank


@dataclass(frozen=True)
class DWQConfig:
    """DWQ hyperparameters.

    Attributes:
        bit_set: bit-widths trained and drawn at inference. (Default: (32, 8, 5, 4, 2), the study's set;
            DWQ itself used 4..16 bits)
        pgd_steps: signed steps of the training attack per batch (DWQ: 7 from a random start).
            (Default: 1, with ``carry``)
        eps: L-inf radius. (Default: 8/255)
        step_size: step of the signed steps. (Default: 2/255)
        carry: carry each width's perturbation across batches ("free" training). (Default: True)
        schedule: "cycle" through ``bit_set`` (equal steps per width) or "sample" it per batch. (Default: "cycle")
        seed: seeds the bit draws and the starts. (Default: 0)
    """

    bit_set: tuple[int, ...] = (32, 8, 5, 4, 2)
    pgd_steps: int = 1
    eps: float = 8 / 255
    step_size: float = 2 / 255
    carry: bool = True
    schedule: Literal["cycle", "sample"] = "cycle"
    seed: int = 0

    def __post_init__(self) -> None:
        check_bit_set(self.bit_set)
        draw_bits(self.bit_set, self.seed, 0, self.schedule)  # an unknown schedule is a clear error
        if self.pgd_steps < 0 or self.step_size <= 0 or not 0 <= self.eps <= 1:
            raise ValueError(f"need pgd_steps >= 0, step_size > 0 and 0 <= eps <= 1; got {self.pgd_steps}, "
                             f"{self.step_size}, {self.eps}")

    def train_bits(self, step: int) -> int:
        """The bit-width of training step ``step``."""
        return draw_bits(self.bit_set, self.seed, step, self.schedule)

    def carried_cells(self) -> int:
        """One carried perturbation per bit-width."""
        return len(self.bit_set)


class DWQ(CarriedStrategy):
    """The DWQ batch loss: cross-entropy on adversarial examples at a randomly drawn bit-width."""

    def __init__(self, config: DWQConfig = DWQConfig()) -> None:
        self.config = config
        self.bank = PerturbationBank()

    def inner(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """Adversarial versions of the whole batch at the model's current width."""
        cfg = self.config
        if not cfg.carry:
            return pgd_attack(model, x, y, PGDConfig(eps=cfg.eps, step_size=cfg.step_size, steps=cfg.pgd_steps,
                                                     seed=stream_seed(cfg.seed, step)))
        return self.bank.attack(model, x, y, f"{getattr(model, 'qadtr_bits', 32)}b", cfg.eps, cfg.pgd_steps,
                                cfg.step_size, seeded_generator(cfg.seed, step))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        set_bits(model, self.config.train_bits(step))
        logits = model(self.inner(model, x, y, step))
        return F.cross_entropy(logits, y), logits


def dwq_loss(config: DWQConfig = DWQConfig()) -> DWQ:
    """The DWQ batch loss (see :class:`DWQ`)."""
    return DWQ(config)


register_strategy("dwq", lambda c: DWQ(c.strategy_params or DWQConfig()))


class RandomPrecision(nn.Module):
    """Inference at a random bit-width per forward pass (DWQ's random-precision inference).

    ``generator`` makes the draws repeatable; the wrapped model keeps its own bit-width afterwards.
    """

    def __init__(self, model: nn.Module, bit_set: Sequence[int], seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.bit_set = check_bit_set(bit_set)
        self.generator = torch.Generator().manual_seed(seed)  # one stream for the whole inference run
        self.last_bits: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_bits = self.bit_set[int(torch.randint(len(self.bit_set), (1,), generator=self.generator))]
        set_bits(self.model, self.last_bits)
        return self.model(x)
