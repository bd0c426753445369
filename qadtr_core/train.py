"""One training loop for every model of the study: full precision, QAT, multi-width and the defenses.

A *strategy* supplies the loss of a batch; the loop owns the optimiser, the schedule, the seeded data
order, the checkpoint after every epoch and the resume after an interruption. Resuming gives the same
weights as an uninterrupted run because each epoch's shuffling and augmentation come from a generator
seeded by ``(seed, epoch)``.

Strategies are *registered*, not chained: :func:`register_strategy` maps a name to a factory
``TrainConfig -> BatchLoss`` and :func:`strategy_loss` looks it up. This module registers the two
undefended strategies ("standard" and "multiwidth"); each defense module registers itself when it is
imported (``import qadtr_core.defenses``), so adding a defense touches only its own file.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .artifacts import CorruptArtifact, load_tensors, save_tensors
from .data import Cifar10, batches
from .quant import FULL_PRECISION, check_bits, set_bits
from .utils import seeded_generator

log = logging.getLogger(__name__)

# (model, images, labels, global step) -> (loss, logits used for the running accuracy). The step lets a
# strategy derive its own randomness from (seed, step), so that a resumed run repeats exactly.
BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model (its hash names the checkpoint).

    Attributes:
        arch: network name (see :func:`qadtr_core.models.build_model`).
        bits: bit-width trained at (32 = full precision). (Default: 32)
        epochs: passes over the ``n_train`` training images.
        lr: peak learning rate (SGD, Nesterov momentum 0.9).
        batch_size: images per step. (Default: 128)
        n_train: how many training images, from the start of the set. (Default: 50000)
        schedule: "onecycle" (warm-up then anneal; from scratch) or "cosine" (fine-tuning).
        weight_decay: L2 on convolution and linear weights only (not steps, not BatchNorm). (Default: 5e-4)
        label_smoothing: cross-entropy label smoothing. (Default: 0.0)
        seed: seeds the initialisation, the data order and the augmentation. (Default: 0)
        profile: name of the profile the config was made for (provenance).
        init: the config of the model this one is fine-tuned from, or None for training from scratch.
        strategy: name of the batch-loss strategy ("standard" = cross-entropy at ``bits``).
        strategy_params: the strategy's own frozen config, if any.
    """

    arch: str
    epochs: int
    lr: float
    bits: int = FULL_PRECISION
    batch_size: int = 128
    n_train: int = 50000
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0
    profile: str = "custom"
    init: TrainConfig | None = None
    strategy: str = "standard"
    strategy_params: object | None = field(default=None)

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.epochs < 1 or self.batch_size < 1 or self.n_train < 1:
            raise ValueError(f"epochs, batch_size and n_train must be positive, got {self.epochs}, {self.batch_size}, {self.n_train}")
        if self.schedule not in ("onecycle", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}; allowed: 'onecycle', 'cosine'")


def trained_widths(config: TrainConfig) -> set[int]:
    """Every bit-width a config trains at: its own, plus its strategy's bit set (multi-width, DWQ, QADT-R)."""
    return {config.bits, *getattr(config.strategy_params, "bit_set", ())}


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
        g = seeded_generator(seed, step)
        return bit_set[int(torch.randint(len(bit_set), (1,), generator=g))]
    raise ValueError(f"unknown bit schedule {schedule!r}; allowed: 'cycle', 'sample'")


StrategyFactory = Callable[[TrainConfig], BatchLoss]
_STRATEGIES: dict[str, StrategyFactory] = {}


def register_strategy(name: str, factory: StrategyFactory) -> StrategyFactory:
    """Make ``TrainConfig(strategy=name)`` train with ``factory(config)`` (returns ``factory``).

    Re-registering a name replaces its factory (a reloaded module); the name must be a non-empty string.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a strategy name must be a non-empty string, got {name!r}")
    _STRATEGIES[name] = factory
    return factory


def registered_strategies() -> tuple[str, ...]:
    """The names :func:`strategy_loss` knows now, in registration order."""
    return tuple(_STRATEGIES)


def strategy_loss(config: TrainConfig) -> BatchLoss:
    """The batch loss of ``config.strategy`` (built by its registered factory from ``config``)."""
    try:
        factory = _STRATEGIES[config.strategy]
    except KeyError:
        raise ValueError(
            f"unknown strategy {config.strategy!r}; registered: {', '.join(_STRATEGIES)} "
            "(defenses register themselves when qadtr_core.defenses is imported)") from None
    return factory(config)


def standard_loss(label_smoothing: float = 0.0) -> BatchLoss:
    """Cross-entropy at the model's current bit-width."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return loss


@dataclass(frozen=True)
class MultiWidthConfig:
    """The undefended multi-width model: plain cross-entropy, the bit-width cycling every batch.

    It is the starting point of the shared-weight defenses (DWQ, QADT-R) and the clean-accuracy
    reference of C5: one switchable model (one BatchNorm per width) trained like the per-width QAT
    models, without any attack, so that a defense's effect is not confused with a post-training start.

    Attributes:
        bit_set: the widths served, each visited once per ``len(bit_set)`` batches. (Default: (32, 8, 5, 4, 2))
    """

    bit_set: tuple[int, ...] = (32, 8, 5, 4, 2)

    def __post_init__(self) -> None:
        check_bit_set(self.bit_set)


def multiwidth_loss(config: MultiWidthConfig = MultiWidthConfig(), label_smoothing: float = 0.0) -> BatchLoss:
    """Cross-entropy at width ``bit_set[step % len(bit_set)]`` (the trainer's step counter)."""
    ce = standard_loss(label_smoothing)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        set_bits(model, draw_bits(config.bit_set, 0, step, "cycle"))
        return ce(model, x, y, step)

    return loss


register_strategy("standard", lambda c: standard_loss(c.label_smoothing))
register_strategy("multiwidth", lambda c: multiwidth_loss(c.strategy_params or MultiWidthConfig(), c.label_smoothing))


def _optimizer(model: nn.Module, cfg: TrainConfig, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    decay = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=0.9, nesterov=True,
    )
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.2,
                                                    div_factor=10.0, final_div_factor=100.0)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.0)
    return opt, sched


def train(
    model: nn.Module,
    data: Cifar10,
    cfg: TrainConfig,
    checkpoint: Path | None = None,
    loss_fn: BatchLoss | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``model`` in place under ``cfg``; returns one record per epoch (loss, accuracy, seconds).

    With ``checkpoint``, the full training state is saved there after every epoch and a run that
    finds a valid one resumes from it (a corrupt one is discarded and training starts over).
    """
    loss_fn = loss_fn or standard_loss(cfg.label_smoothing)
    n = min(cfg.n_train, len(data.x_train))
    x, y = data.x_train[:n], data.y_train[:n]
    steps_per_epoch = max(1, n // cfg.batch_size)
    opt, sched = _optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        try:
            state = load_tensors(checkpoint)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            history, start = list(state["history"]), int(state["epoch"])
            if hasattr(loss_fn, "load_state_dict") and "strategy" in state:
                loss_fn.load_state_dict(state["strategy"])
        except (CorruptArtifact, KeyError, RuntimeError) as e:
            log.warning("ignoring unusable training checkpoint %s: %s", checkpoint, e)
    set_bits(model, cfg.bits)
    device = next(model.parameters()).device
    model.to(memory_format=torch.channels_last)  # faster convolutions on CPU (oneDNN) and GPU (cuDNN)
    for epoch in range(start, cfg.epochs):
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)  # kept: existing checkpoints depend on it
        t0, tot_loss, correct, seen = time.perf_counter(), 0.0, 0, 0
        bar = tqdm(batches(x, y, cfg.batch_size, gen, train=True), total=steps_per_epoch, disable=not progress,
                   mininterval=2.0,
                   desc=f"{cfg.arch} {cfg.bits}b {cfg.strategy} epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for i, (xb, yb) in enumerate(bar):
            xb = xb.to(device).contiguous(memory_format=torch.channels_last)
            yb = yb.to(device)
            loss, logits = loss_fn(model, xb, yb, epoch * steps_per_epoch + i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
            bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        history.append({"epoch": epoch + 1, "loss": tot_loss / seen, "train_acc": correct / seen,
                        "seconds": time.perf_counter() - t0})
        if checkpoint is not None:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "history": history, "epoch": epoch + 1}
            if hasattr(loss_fn, "state_dict"):  # a strategy with state of its own (QADT-R's A-QAPA averages)
                state["strategy"] = loss_fn.state_dict()
            save_tensors(checkpoint, state)
    model.eval()
    return history
