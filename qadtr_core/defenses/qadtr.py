"""QADT-R as reconstructed (``protocol.md``): DBWT + A-QAPA + GIR, each switchable on its own.

- **DBWT** (dynamic bit-width training): the training bit-width changes every batch, cycling through
  or drawn from ``bit_set`` (one BatchNorm per bit-width). Off: every batch at ``fixed_bits``.
- **A-QAPA** (adaptive quantization-aware patches): the training patches are per-image patches crafted
  inside the quantized model, at a bit-width and patch size drawn from a distribution that favours
  the (bit-width, size) cells with the highest recent attack loss (a softmax over an exponential
  moving average). Off: patches crafted at full precision with the middle size, as a plain
  patch-training baseline would. With ``carry`` (default, as for PBAT) each cell's patches are
  carried across batches and refreshed by ``inner_steps`` signed steps (:mod:`.carry`).
- **GIR** (gradient-inconsistency regularization): ``gir_weight`` times the mean squared cosine
  between the input gradients of the patched images at the step's bit-width and at another bit-width
  of the set (double backpropagation), so that a patch optimised at one width stops helping at another.
  The gradients are taken in eval mode, as an attacker sees the model (BatchNorm running statistics
  used, never updated), on the first ``gir_images`` patched images (a reconstruction choice that
  bounds the cost of double backpropagation; 0 = all).

The strategy keeps state (the A-QAPA loss averages, the carried patches); the trainer saves it with
every checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..patches import Box, central_box
from ..quant import FULL_PRECISION, bits as at_bits, check_bits, set_bits
from ..threats import PatchDistribution
from ..train import TrainConfig, check_bit_set, draw_bits, register_strategy
from ..utils import eval_mode, seeded_generator
from .carry import CarriedStrategy, PatchBank
from .pbat import mixed_loss, n_patched


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
        inner_steps, inner_step_size: signed steps of the patch inner loop per batch. (Default: 1, 0.1)
        adv_fraction: share of each batch that is patched. (Default: 0.5)
        carry: start each cell's patches from its previous batch's ("free" training). (Default: True)
        ema: smoothing of the per-cell attack loss. (Default: 0.9)
        temperature: softmax temperature of the cell distribution (large = uniform). (Default: 1.0)
        gir: switch GIR on. (Default: True)
        gir_weight: weight of the GIR penalty. (Default: 1.0)
        gir_images: patched images the GIR penalty is computed on (0 = all of them). (Default: 16)
        avoid: region the training patches may not cover. (Default: the central 10x10)
        seed: seeds every draw. (Default: 0)
    """

    bit_set: tuple[int, ...] = (32, 8, 5, 4, 2)
    dbwt: bool = True
    schedule: Literal["cycle", "sample"] = "cycle"
    fixed_bits: int = 4
    aqapa: bool = True
    patch_sizes: tuple[int, ...] = (6, 8, 10)
    inner_steps: int = 1
    inner_step_size: float = 0.1
    adv_fraction: float = 0.5
    carry: bool = True
    ema: float = 0.9
    temperature: float = 1.0
    gir: bool = True
    gir_weight: float = 1.0
    gir_images: int = 16
    avoid: Box | None = central_box(10)
    seed: int = 0

    def __post_init__(self) -> None:
        check_bit_set(self.bit_set)
        check_bits(self.fixed_bits)
        if not self.patch_sizes:
            raise ValueError("patch_sizes is empty")
        if self.gir and len(self.bit_set) < 2:
            raise ValueError("GIR compares two bit-widths: the bit set needs at least two")
        if not 0.0 < self.adv_fraction <= 1.0:
            raise ValueError(f"adv_fraction {self.adv_fraction} must be in (0, 1]")
        if self.inner_steps < 0 or self.gir_images < 0:
            raise ValueError(f"inner_steps and gir_images must be >= 0, got {self.inner_steps}, {self.gir_images}")

    def train_bits(self, step: int) -> int:
        """The bit-width of training step ``step``: DBWT's schedule, else ``fixed_bits``."""
        return draw_bits(self.bit_set, self.seed, step, self.schedule) if self.dbwt else self.fixed_bits

    def carried_cells(self) -> int:
        """Cells whose patches are carried separately: (bit-width, size) pairs with A-QAPA, else one."""
        return len(self.bit_set) * len(self.patch_sizes) if self.aqapa else 1

    def training_patches(self) -> PatchDistribution:
        """A-QAPA: every size of ``patch_sizes`` at every width of the bit set; off: the middle size at 32 bits."""
        if self.aqapa:
            return PatchDistribution(sizes=tuple(self.patch_sizes), anywhere=self.avoid is None, source_bits=self.bit_set)
        mid = self.patch_sizes[len(self.patch_sizes) // 2]
        return PatchDistribution(sizes=(mid,), anywhere=self.avoid is None, source_bits=(FULL_PRECISION,))


def gir_penalty(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """Mean over images of the squared cosine between two input-gradient maps (0 = orthogonal, 1 = parallel)."""
    cos = F.cosine_similarity(g1.flatten(1), g2.flatten(1), dim=1, eps=1e-12)
    return cos.pow(2).mean()


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """d CE / d x at the model's current bit-width (differentiable itself when ``create_graph``)."""
    x = x.detach().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(x), y), x, create_graph=create_graph)
    return grad


class QADTR(CarriedStrategy):
    """The QADT-R batch loss; call it as the trainer's ``loss_fn``. ``last_terms`` holds the loss terms."""

    def __init__(self, config: QADTRConfig = QADTRConfig()) -> None:
        self.config = config
        self.cells = [(b, s) for b in config.bit_set for s in config.patch_sizes]
        self.avg_loss = torch.zeros(len(self.cells))
        self.bank = PatchBank()
        self.last_terms: dict[str, float] = {}

    def state_dict(self) -> dict:
        return {"avg_loss": self.avg_loss.clone(), "bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.avg_loss = state["avg_loss"].clone()
        self.bank.load_state_dict(state.get("bank", {}))

    def train_bits(self, step: int) -> int:
        return self.config.train_bits(step)

    def patch_cell(self, step: int) -> tuple[int, int, int]:
        """(index, bit-width, size) of the training patches of ``step``."""
        cfg = self.config
        if not cfg.aqapa:
            return -1, FULL_PRECISION, cfg.patch_sizes[len(cfg.patch_sizes) // 2]
        probs = torch.softmax(self.avg_loss / cfg.temperature, 0)
        g = seeded_generator(cfg.seed, step + 7)
        i = int(torch.multinomial(probs, 1, generator=g))
        return i, *self.cells[i]

    def inner(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int,
              cell: tuple[int, int, int] | None = None) -> torch.Tensor:
        """The patched versions of the first ``adv_fraction`` of the batch, crafted in ``step``'s cell."""
        cfg = self.config
        _, patch_bits, size = cell or self.patch_cell(step)
        k = n_patched(cfg.adv_fraction, len(x))
        key = f"{patch_bits}b_{size}px"
        if not cfg.carry:
            self.bank.carried.pop(key, None)
        with at_bits(model, patch_bits):
            return self.bank.attack(model, x[:k], y[:k], key, size, cfg.inner_steps, cfg.inner_step_size, cfg.avoid,
                                    seeded_generator(cfg.seed, step))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        b = self.train_bits(step)
        cell, patch_bits, size = self.patch_cell(step)
        adv = self.inner(model, x, y, step, (cell, patch_bits, size))
        k = len(adv)
        set_bits(model, b)
        logits = model(torch.cat([adv, x[k:]]))
        per_image = F.cross_entropy(logits.detach(), y, reduction="none")
        terms = {"ce": mixed_loss(logits, y, k, cfg.adv_fraction)}
        if cell >= 0:  # A-QAPA: remember how hard this cell's patches were
            self.avg_loss[cell] = cfg.ema * self.avg_loss[cell] + (1 - cfg.ema) * float(per_image[:k].mean())
        if cfg.gir:
            g = seeded_generator(cfg.seed, step + 13)
            others = [o for o in cfg.bit_set if o != b]
            b2 = others[int(torch.randint(len(others), (1,), generator=g))]
            m = k if cfg.gir_images == 0 else min(k, cfg.gir_images)
            with eval_mode(model):  # as an attacker sees the model; running statistics untouched
                g1 = input_gradient(model, adv[:m], y[:m], create_graph=True)
                with at_bits(model, b2):
                    g2 = input_gradient(model, adv[:m], y[:m], create_graph=True)
            terms["gir"] = cfg.gir_weight * gir_penalty(g1, g2)
        self.last_terms = {name: float(t.detach()) for name, t in terms.items()}
        self.last_terms.update(bits=b, patch_bits=patch_bits, patch_size=size)
        return sum(terms.values()), logits


register_strategy("qadtr", lambda c: QADTR(c.strategy_params or QADTRConfig()))
