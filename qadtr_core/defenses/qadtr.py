"""QADT-R as reconstructed (``protocol.md``): DBWT + A-QAPA + GIR, each switchable on its own.

- **DBWT** (dynamic bit-width training): the training bit-width changes every batch, drawn at random
  within each run of ``len(bit_set)`` batches (``schedule="shuffle"``: every width the same steps), one
  BatchNorm per bit-width. Off (the ablation "without DBWT"): the same widths and the same steps per
  width, but in contiguous blocks of ``block_steps`` batches in the bit set's order (32, then 8, ...), so
  that only the dynamic, per-batch change of width is removed.
- **A-QAPA** (adaptive quantization-aware patches): the training patches are per-image patches crafted
  for the batch's images inside the quantized model at a sampled (bit-width, size) cell, by the shared
  inner attack (:func:`~qadtr_core.defenses.inner.patch_inner`: ``inner_steps`` signed steps with
  location optimisation). The sampler favours the cells where the current model is weakest: a cell's
  hardness is the mean cross-entropy of its patched images *at the cell's own width* (an exponential
  moving average over the batches that drew it; a cell never drawn counts as the hardest drawn so far),
  and the draw is ``(1 - uniform_floor) * softmax(hardness / temperature) + uniform_floor / cells``, so
  that no cell is ever starved. Draw counts and mean hardness per cell are recorded every epoch
  (``aqapa_draws`` / ``aqapa_loss`` in the training history). Off: patches crafted at full precision
  with the middle size, as a plain patch-training baseline would.
- **GIR** (gradient-inconsistency regularization): ``gir_weight`` times :func:`gir_penalty` between the
  input gradients of the patched images at the step's width and at another width of the set (double
  backpropagation through the first; the second width's gradient is held fixed). The gradients are of
  the logit margin (true logit minus the largest other), which does not vanish as the model grows
  confident, and the penalty has a floor on the gradient norm, so that a vanishing input gradient cannot
  satisfy it (gradient masking). Eval mode, on the first ``gir_images`` patched images (0 = all).

The strategy keeps state (the A-QAPA hardness estimates and visit counts); the trainer saves it with
every checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation.threats import PatchDistribution
from ..patches import Box, central_box
from ..quant import FULL_PRECISION, set_bits
from ..quant import bits as at_bits
from ..train import check_bit_schedule, check_bit_set, draw_bits, register_strategy
from ..utils import eval_mode, seeded_generator, stream_seed
from .inner import FRESH_STEP_SIZE, FRESH_STEPS, InnerStrategy, check_inner, mean_ce, patch_inner
from .pbat import mixed_loss, n_patched


@dataclass(frozen=True)
class QADTRConfig:
    """QADT-R hyperparameters (all reconstruction choices; see the methods chapter).

    Attributes:
        bit_set: bit-widths of DBWT, A-QAPA and GIR. (Default: (32, 8, 5, 4, 2))
        dbwt: switch DBWT on. (Default: True)
        schedule: DBWT's "shuffle", "cycle" or "sample". (Default: "shuffle")
        block_steps: without DBWT, the steps of each contiguous width block (the recipe sets it to the
            steps per width, so that every width gets the same). (Default: 200)
        aqapa: switch A-QAPA on. (Default: True)
        patch_sizes: patch sides (pixels) A-QAPA draws from. (Default: (6, 8, 10))
        inner_steps, inner_step_size: signed steps of the per-image inner attack, from a fresh start every
            batch, and their size (None = ``1 / inner_steps``, as for PBAT). (Default: 10, None)
        location_opt: optimise each patch's location during the inner steps. (Default: True)
        adv_fraction: share of each batch that is patched. (Default: 0.5)
        ema: smoothing of the per-cell hardness. (Default: 0.9)
        temperature: softmax temperature (nats) of the cell distribution (large = uniform). (Default: 2.0)
        uniform_floor: share of the draw that is uniform over the cells. (Default: 0.25)
        gir: switch GIR on. (Default: True)
        gir_weight: weight of the GIR penalty. (Default: 1.0)
        gir_norm_floor: the norm floor of :func:`gir_penalty`. (Default: 0.5)
        gir_images: patched images the GIR penalty is computed on (0 = all of them). (Default: 16)
        avoid: region the training patches may not cover. (Default: the central 10x10)
        probe_every: training steps between fidelity probes (0 = never). (Default: 50)
        seed: seeds every draw. (Default: 0)
    """

    bit_set: tuple[int, ...] = (32, 8, 5, 4, 2)
    dbwt: bool = True
    schedule: Literal["cycle", "sample", "shuffle"] = "shuffle"
    block_steps: int = 200
    aqapa: bool = True
    patch_sizes: tuple[int, ...] = (6, 8, 10)
    inner_steps: int = 10
    inner_step_size: float | None = None
    location_opt: bool = True
    adv_fraction: float = 0.5
    ema: float = 0.9
    temperature: float = 2.0
    uniform_floor: float = 0.25
    gir: bool = True
    gir_weight: float = 1.0
    gir_norm_floor: float = 0.5
    gir_images: int = 16
    avoid: Box | None = central_box(10)
    probe_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        check_bit_set(self.bit_set)
        check_bit_schedule(self.schedule)  # an unknown schedule is a clear error
        if not self.patch_sizes:
            raise ValueError("patch_sizes is empty")
        if self.gir and len(self.bit_set) < 2:
            raise ValueError("GIR compares two bit-widths: the bit set needs at least two")
        if not 0.0 < self.adv_fraction <= 1.0:
            raise ValueError(f"adv_fraction {self.adv_fraction} must be in (0, 1]")
        check_inner(self.inner_steps, self.step_size)
        if self.gir_images < 0 or self.block_steps < 1:
            raise ValueError(f"gir_images must be >= 0 and block_steps >= 1, got {self.gir_images}, {self.block_steps}")
        if not self.temperature > 0 or not 0.0 <= self.uniform_floor <= 1.0 or not 0.0 <= self.ema < 1.0:
            raise ValueError(f"need temperature > 0, 0 <= uniform_floor <= 1 and 0 <= ema < 1; got {self.temperature}, "
                             f"{self.uniform_floor}, {self.ema}")
        if not 0.0 < self.gir_norm_floor <= 1.0:
            raise ValueError(f"gir_norm_floor {self.gir_norm_floor} must be in (0, 1]")

    @property
    def step_size(self) -> float:
        """The inner step: ``inner_step_size``, else ``1 / inner_steps``."""
        return self.inner_step_size or 1.0 / self.inner_steps

    def train_bits(self, step: int) -> int:
        """The bit-width of training step ``step``: DBWT's schedule, else the contiguous blocks."""
        if self.dbwt:
            return draw_bits(self.bit_set, self.seed, step, self.schedule)
        return self.bit_set[min(step // self.block_steps, len(self.bit_set) - 1)]

    def training_patches(self) -> PatchDistribution:
        """A-QAPA: every size of ``patch_sizes`` at every width of the bit set; off: the middle size at 32 bits.
        A-QAPA crafts at the sampled cell's width and the batch trains at DBWT's, so a white-box patch at
        width b was trained on only in the batches whose cell width was b as well (``cross_width``; the build
        record counts them: ``patch_widths``). Without A-QAPA the 32-bit batches train on 32-bit patches."""
        if self.aqapa:
            return PatchDistribution(sizes=tuple(self.patch_sizes), anywhere=self.avoid is None, source_bits=self.bit_set,
                                     cross_width=len(set(self.bit_set)) > 1)
        mid = self.patch_sizes[len(self.patch_sizes) // 2]
        return PatchDistribution(sizes=(mid,), anywhere=self.avoid is None, source_bits=(FULL_PRECISION,))


def gir_penalty(g1: torch.Tensor, g2: torch.Tensor, norm_floor: float = 0.5) -> torch.Tensor:
    """The GIR penalty between input gradients ``g1`` (trained through) and ``g2`` (held fixed), per image
    averaged: the squared cosine (0 = orthogonal, 1 = parallel) plus ``((floor - r) / floor)^2`` where the
    norm ratio ``r = |g1| / |g2|`` falls below ``floor``, so that shrinking ``g1`` to nothing costs as much
    as perfect alignment and can never satisfy the penalty."""
    g1, g2 = g1.flatten(1), g2.detach().flatten(1)
    n1, n2 = g1.norm(dim=1), g2.norm(dim=1).clamp_min(1e-12)
    # the cosine's own gradient grows as 1 / |g1|: below a thousandth of |g2| its denominator stops shrinking, so
    # the double backpropagation stays bounded where the norm floor is already pushing |g1| back up
    cos = (g1 * g2).sum(1) / (torch.maximum(n1, 1e-3 * n2) * n2)
    shortfall = F.relu(norm_floor - n1 / n2) / norm_floor
    return (cos.pow(2) + shortfall.pow(2)).mean()


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image: the true class's logit minus the largest other logit."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return true - other


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """d (-margin) / d x per image at the model's current bit-width: the direction an attacker ascends
    (differentiable itself when ``create_graph``)."""
    x = x.detach().requires_grad_(True)
    grad, = torch.autograd.grad(-margin(model(x), y).sum(), x, create_graph=create_graph)
    return grad


class QADTR(InnerStrategy):
    """The QADT-R batch loss; call it as the trainer's ``loss_fn``. ``last_terms`` holds the loss terms."""

    def __init__(self, config: QADTRConfig = QADTRConfig()) -> None:
        self.config = config
        self.probe_every = config.probe_every
        self.cells = [(b, s) for b in config.bit_set for s in config.patch_sizes]
        self.avg_loss = torch.zeros(len(self.cells))
        self.visits = torch.zeros(len(self.cells), dtype=torch.long)
        self._epoch_draws = torch.zeros(len(self.cells), dtype=torch.long)
        self._epoch_loss = torch.zeros(len(self.cells))
        self._epoch_widths: dict[str, int] = {}  # "<trained>b<-<crafted>b" -> patched batches this epoch
        self.last_terms: dict[str, float] = {}

    def state_dict(self) -> dict:
        return {"avg_loss": self.avg_loss.clone(), "visits": self.visits.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.avg_loss, self.visits = state["avg_loss"].clone(), state["visits"].clone()

    def train_bits(self, step: int) -> int:
        return self.config.train_bits(step)

    def check_steps(self, total: int) -> None:
        """Without DBWT, every width of the bit set must get its block of ``block_steps`` (the trainer calls this
        with the run's optimiser steps): else ``ValueError``, rather than widths that silently train 0 steps
        (``block_steps`` comes from the profile's ``defense_n_train``; a data set with fewer images runs fewer
        steps)."""
        cfg = self.config
        need = cfg.block_steps * len(cfg.bit_set)
        if not cfg.dbwt and total < need:
            served = sorted({cfg.train_bits(s) for s in range(total)}, key=cfg.bit_set.index)
            raise ValueError(f"without DBWT the {len(cfg.bit_set)} widths need {need} steps ({cfg.block_steps} each), "
                             f"the run has {total}: only {', '.join(map(str, served))} bits would train; give the "
                             f"run more images or steps, or set block_steps to {max(1, total // len(cfg.bit_set))}")

    def cell_probabilities(self) -> torch.Tensor:
        """A-QAPA's draw distribution over :attr:`cells` (see the module doc)."""
        cfg = self.config
        seen = self.visits > 0
        hardness = self.avg_loss.clone()
        hardness[~seen] = hardness[seen].max() if seen.any() else 0.0  # optimism for cells never drawn
        probs = torch.softmax(hardness / cfg.temperature, 0)
        return (1 - cfg.uniform_floor) * probs + cfg.uniform_floor / len(self.cells)

    def patch_cell(self, step: int) -> tuple[int, int, int]:
        """(index, bit-width, size) of the training patches of ``step``."""
        cfg = self.config
        if not cfg.aqapa:
            return -1, FULL_PRECISION, cfg.patch_sizes[len(cfg.patch_sizes) // 2]
        g = seeded_generator(cfg.seed, step + 7)
        i = int(torch.multinomial(self.cell_probabilities(), 1, generator=g))
        return i, *self.cells[i]

    def inner(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int,
              cell: tuple[int, int, int] | None = None) -> torch.Tensor:
        """The first ``adv_fraction`` of the batch with per-image patches crafted for them in ``step``'s cell."""
        cfg = self.config
        _, patch_bits, size = cell or self.patch_cell(step)
        k = n_patched(cfg.adv_fraction, len(x))
        with at_bits(model, patch_bits):
            return patch_inner(model, x[:k], y[:k], size, cfg.inner_steps, cfg.step_size, cfg.avoid,
                               stream_seed(cfg.seed, step) % 2**31, cfg.location_opt)

    def _record_cell(self, cell: int, loss: float) -> None:
        cfg = self.config
        first = self.visits[cell] == 0
        self.avg_loss[cell] = loss if first else cfg.ema * self.avg_loss[cell] + (1 - cfg.ema) * loss
        self.visits[cell] += 1
        self._epoch_draws[cell] += 1
        self._epoch_loss[cell] += loss

    def inner_record(self) -> dict:
        """The fidelity record and, with A-QAPA, per-cell draws and mean hardness since the last call."""
        out: dict = dict(super().inner_record())
        if self._epoch_widths:  # which width the patches were crafted at, per width they were trained at
            out["patch_widths"] = dict(self._epoch_widths)
        self._epoch_widths = {}
        if self.config.aqapa and int(self._epoch_draws.sum()):
            d = self._epoch_draws
            out["aqapa_draws"] = {f"{b}b_{s}px": int(n) for (b, s), n in zip(self.cells, d)}
            out["aqapa_loss"] = {f"{b}b_{s}px": (float(ls / n) if n else float("nan"))
                                 for (b, s), ls, n in zip(self.cells, self._epoch_loss, d)}
        self._epoch_draws = torch.zeros_like(self._epoch_draws)
        self._epoch_loss = torch.zeros_like(self._epoch_loss)
        return out

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        b = self.train_bits(step)
        cell, patch_bits, size = self.patch_cell(step)
        adv = self.inner(model, x, y, step, (cell, patch_bits, size))
        k = len(adv)
        with at_bits(model, patch_bits):
            if cell >= 0:  # A-QAPA: how hard this cell's patches are, at the cell's own width
                self._record_cell(cell, mean_ce(model, adv, y[:k]))
            self.maybe_probe(step, model, x[:k], y[:k], adv, lambda: patch_inner(
                model, x[:k], y[:k], size, FRESH_STEPS, FRESH_STEP_SIZE, cfg.avoid,
                stream_seed(cfg.seed, step, 1) % 2**31, True))
        pair = f"{b}b<-{patch_bits}b"
        self._epoch_widths[pair] = self._epoch_widths.get(pair, 0) + 1
        set_bits(model, b)
        logits = model(torch.cat([adv, x[k:]]))
        terms = {"ce": mixed_loss(logits, y, k, cfg.adv_fraction)}
        if cfg.gir:
            g = seeded_generator(cfg.seed, step + 13)
            others = [o for o in cfg.bit_set if o != b]
            b2 = others[int(torch.randint(len(others), (1,), generator=g))]
            m = k if cfg.gir_images == 0 else min(k, cfg.gir_images)
            with eval_mode(model):  # as an attacker sees the model; running statistics untouched
                g1 = input_gradient(model, adv[:m], y[:m], create_graph=True)
                with at_bits(model, b2):
                    g2 = input_gradient(model, adv[:m], y[:m], create_graph=False)  # the other width held fixed
            terms["gir"] = cfg.gir_weight * gir_penalty(g1, g2, cfg.gir_norm_floor)
        self.last_terms = {name: float(t.detach()) for name, t in terms.items()}
        self.last_terms.update(bits=b, patch_bits=patch_bits, patch_size=size)
        return sum(terms.values()), logits


register_strategy("qadtr", lambda c: QADTR(c.strategy_params or QADTRConfig()))
