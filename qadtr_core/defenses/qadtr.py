"""QADT-R as reconstructed (``protocol.md``): DBWT + A-QAPA + GIR, each switchable on its own.

- **DBWT** (dynamic bit-width training): the training bit-width changes every batch, cycling through
  or drawn from ``bit_set`` (one BatchNorm per bit-width). Off: every batch at ``fixed_bits``.
- **A-QAPA** (adaptive quantization-aware patches): the training patches are per-image patches crafted
  inside the quantized model, at a bit-width and patch size drawn from a distribution that favours
  the (bit-width, size) cells with the highest recent attack loss (a softmax over an exponential
  moving average). Off: patches crafted at full precision with the middle size, as a plain
  patch-training baseline would.
- **GIR** (gradient-inconsistency regularization): ``gir_weight`` times the mean squared cosine
  between the input gradients of the patched images at the step's bit-width and at another bit-width
  of the set (double backpropagation), so that a patch optimised at one width stops helping at another.

The strategy keeps state (the A-QAPA loss averages); the trainer saves it with every checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.image_patch import ImagePatchConfig
from ..patches import Box, central_box
from ..quant import FULL_PRECISION, bits as at_bits, check_bits, set_bits
from .dwq import check_bit_set, draw_bits
from .pbat import patch_half


@dataclass(frozen=True)
class QADTRConfig:
    """QADT-R hyperparameters (all reconstruction choices; see the methods chapter).

    Attributes:
        bit_set: bit-widths of DBWT, A-QAPA and GIR. (Default: (32, 8, 5, 4, 2))
        dbwt: switch DBWT on. (Default: True)
        schedule: DBWT's "cycle" or "sample". (Default: "cycle")
        fixed_bits: the training bit-width when DBWT is off. (Default: 4)
        aqapa: switch A-QAPA on. (Default: True)
        patch_sizes: patch sides (pixels) A-QAPA draws from. (Default: (6, 8, 10))
        inner_steps, inner_step_size: the per-image patch inner loop. (Default: 10, 0.1)
        adv_fraction: share of each batch that is patched. (Default: 0.5)
        ema: smoothing of the per-cell attack loss. (Default: 0.9)
        temperature: softmax temperature of the cell distribution (large = uniform). (Default: 1.0)
        gir: switch GIR on. (Default: True)
        gir_weight: weight of the GIR penalty. (Default: 1.0)
        avoid: region the training patches may not cover. (Default: the central 10x10)
        seed: seeds every draw. (Default: 0)
    """

    bit_set: tuple[int, ...] = (32, 8, 5, 4, 2)
    dbwt: bool = True
    schedule: Literal["cycle", "sample"] = "cycle"
    fixed_bits: int = 4
    aqapa: bool = True
    patch_sizes: tuple[int, ...] = (6, 8, 10)
    inner_steps: int = 10
    inner_step_size: float = 0.1
    adv_fraction: float = 0.5
    ema: float = 0.9
    temperature: float = 1.0
    gir: bool = True
    gir_weight: float = 1.0
    avoid: Box | None = central_box(10)
    seed: int = 0

    def __post_init__(self) -> None:
        check_bit_set(self.bit_set)
        check_bits(self.fixed_bits)
        if not self.patch_sizes:
            raise ValueError("patch_sizes is empty")
        if self.gir and len(self.bit_set) < 2:
            raise ValueError("GIR compares two bit-widths: the bit set needs at least two")


def gir_penalty(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """Mean over images of the squared cosine between two input-gradient maps (0 = orthogonal, 1 = parallel)."""
    cos = F.cosine_similarity(g1.flatten(1), g2.flatten(1), dim=1, eps=1e-12)
    return cos.pow(2).mean()


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """d CE / d x at the model's current bit-width (differentiable itself when ``create_graph``)."""
    x = x.detach().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(x), y), x, create_graph=create_graph)
    return grad


class QADTR:
    """The QADT-R batch loss; call it as the trainer's ``loss_fn``. ``last_terms`` holds the loss terms."""

    def __init__(self, config: QADTRConfig = QADTRConfig()) -> None:
        self.config = config
        self.cells = [(b, s) for b in config.bit_set for s in config.patch_sizes]
        self.avg_loss = torch.zeros(len(self.cells))
        self.last_terms: dict[str, float] = {}

    def state_dict(self) -> dict:
        return {"avg_loss": self.avg_loss.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.avg_loss = state["avg_loss"].clone()

    def train_bits(self, step: int) -> int:
        cfg = self.config
        return draw_bits(cfg.bit_set, cfg.seed, step, cfg.schedule) if cfg.dbwt else cfg.fixed_bits

    def patch_cell(self, step: int) -> tuple[int, int, int]:
        """(index, bit-width, size) of the training patches of ``step``."""
        cfg = self.config
        if not cfg.aqapa:
            return -1, FULL_PRECISION, cfg.patch_sizes[len(cfg.patch_sizes) // 2]
        probs = torch.softmax(self.avg_loss / cfg.temperature, 0)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 7)
        i = int(torch.multinomial(probs, 1, generator=g))
        return i, *self.cells[i]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        b = self.train_bits(step)
        cell, patch_bits, size = self.patch_cell(step)
        inner = ImagePatchConfig(size=size, steps=cfg.inner_steps, step_size=cfg.inner_step_size, avoid=cfg.avoid,
                                 seed=cfg.seed * 1_000_003 + step)
        with at_bits(model, patch_bits):
            mixed = patch_half(model, x, y, inner, cfg.adv_fraction)
        k = max(1, int(round(cfg.adv_fraction * len(x))))
        set_bits(model, b)
        logits = model(mixed)
        per_image = F.cross_entropy(logits, y, reduction="none")
        ce = (1 - cfg.adv_fraction) * per_image[k:].mean() if k < len(x) else per_image.new_zeros(())
        ce = ce + cfg.adv_fraction * per_image[:k].mean()
        terms = {"ce": ce}
        if cell >= 0:  # A-QAPA: remember how hard this cell's patches were
            self.avg_loss[cell] = cfg.ema * self.avg_loss[cell] + (1 - cfg.ema) * float(per_image[:k].mean().detach())
        if cfg.gir:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 13)
            others = [o for o in cfg.bit_set if o != b]
            b2 = others[int(torch.randint(len(others), (1,), generator=g))]
            g1 = input_gradient(model, mixed[:k], y[:k], create_graph=True)
            with at_bits(model, b2):
                g2 = input_gradient(model, mixed[:k], y[:k], create_graph=True)
            terms["gir"] = cfg.gir_weight * gir_penalty(g1, g2)
        self.last_terms = {name: float(t.detach()) for name, t in terms.items()}
        self.last_terms.update(bits=b, patch_bits=patch_bits, patch_size=size)
        return sum(terms.values()), logits
