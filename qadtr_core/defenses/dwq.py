"""DWQ, Double-Win Quant (Fu et al. 2021): random-precision adversarial training and inference.

Training: every batch runs at one bit-width of ``bit_set`` (one BatchNorm per bit-width, switchable) on
L-inf PGD adversarial examples crafted for the batch's images at that same bit-width against the current
weights: ``pgd_steps`` steps from a random start in the 8/255 ball (DWQ's training setting), step
2.5 eps / steps (:func:`~qadtr_core.defenses.inner.pgd_inner`). The width is random per batch: by default
``schedule="shuffle"`` draws it without replacement within each run of ``len(bit_set)`` batches, so that
every width also gets exactly the same number of steps (equal training per width); ``"sample"`` draws it
independently, ``"cycle"`` cycles. Inference: :class:`RandomPrecision` wraps the trained model and draws a
bit-width per forward pass, the randomness DWQ relies on; adaptive attacks must average over it (EOT).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..quant import set_bits
from ..train import check_bit_schedule, check_bit_set, draw_bits, register_strategy
from ..utils import stream_seed
from .inner import FRESH_STEPS, InnerStrategy, check_inner, pgd_inner


@dataclass(frozen=True)
class DWQConfig:
    """DWQ hyperparameters.

    Attributes:
        bit_set: bit-widths trained and drawn at inference. (Default: (32, 8, 5, 4, 2), the study's set;
            DWQ itself used 4..16 bits)
        pgd_steps: PGD steps of the training attack per batch, from a random start (DWQ: 7). (Default: 10)
        eps: L-inf radius. (Default: 8/255, DWQ's training setting)
        schedule: "shuffle" (random per batch, equal steps per width), "sample" or "cycle". (Default: "shuffle")
        probe_every: training steps between fidelity probes (0 = never). (Default: 50)
        seed: seeds the bit draws and the starts. (Default: 0)
    """

    bit_set: tuple[int, ...] = (32, 8, 5, 4, 2)
    pgd_steps: int = 10
    eps: float = 8 / 255
    schedule: Literal["cycle", "sample", "shuffle"] = "shuffle"
    probe_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        check_bit_set(self.bit_set)
        check_bit_schedule(self.schedule)  # an unknown schedule is a clear error
        if not 0 < self.eps <= 1:
            raise ValueError(f"need 0 < eps <= 1, got {self.eps}")
        check_inner(self.pgd_steps, self.eps)

    def train_bits(self, step: int) -> int:
        """The bit-width of training step ``step``."""
        return draw_bits(self.bit_set, self.seed, step, self.schedule)


class DWQ(InnerStrategy):
    """The DWQ batch loss: cross-entropy on PGD examples of the batch at a randomly drawn bit-width."""

    def __init__(self, config: DWQConfig = DWQConfig()) -> None:
        self.config = config
        self.probe_every = config.probe_every

    def inner(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """PGD examples of the whole batch at the model's current width."""
        cfg = self.config
        return pgd_inner(model, x, y, cfg.eps, cfg.pgd_steps, stream_seed(cfg.seed, step) % 2**31)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        set_bits(model, cfg.train_bits(step))
        adv = self.inner(model, x, y, step)
        self.maybe_probe(step, model, x, y, adv,
                         lambda: pgd_inner(model, x, y, cfg.eps, FRESH_STEPS, stream_seed(cfg.seed, step, 1) % 2**31))
        logits = model(adv)
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
