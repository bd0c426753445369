"""One training loop for every model of the study: full precision, QAT, multi-width and the defenses.

A *strategy* supplies the loss of a batch; the loop owns the optimiser, the schedule, the seeded data
order, the checkpoint after every epoch and the resume after an interruption. Resuming gives the same
weights as an uninterrupted run because each epoch's shuffling and augmentation come from a generator
seeded by ``(seed, epoch)``.

Strategies are *registered*, not chained: :func:`register_strategy` maps a name to a factory
``TrainConfig -> BatchLoss`` and :func:`strategy_loss` looks it up. This module registers the two
undefended strategies ("standard" and "multiwidth"); each defense module registers itself when it is
imported (``import qadtr_core.defenses``), so adding a defense touches only its own file, and so does
PatchCleanser's masking fine-tune (``qadtr_core.certify``: "masked", "masked_multiwidth").
:func:`strategy_loss` imports those modules (:data:`STRATEGY_MODULES`) when it meets a name not registered yet.
"""
from __future__ import annotations

import copy
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

from .artifacts import load_tensors, save_tensors
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
            raise ValueError(f"epochs, batch_size and n_train must be positive, "
                             f"got {self.epochs}, {self.batch_size}, {self.n_train}")
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


BIT_SCHEDULES: tuple[str, ...] = ("cycle", "sample", "shuffle")


def check_bit_schedule(schedule: str) -> str:
    """``schedule`` if it is one of :data:`BIT_SCHEDULES` (checked without torch, so that a config built at
    import time imports under the documentation's mocks too), else a ValueError naming the allowed ones."""
    if schedule not in BIT_SCHEDULES:
        raise ValueError(f"unknown bit schedule {schedule!r}; allowed: {', '.join(repr(s) for s in BIT_SCHEDULES)}")
    return schedule


def draw_bits(bit_set: Sequence[int], seed: int, step: int, schedule: str = "sample") -> int:
    """The bit-width of training step ``step``: cycling through ``bit_set`` ("cycle"), drawn uniformly
    ("sample"), or drawn at random without replacement within each run of ``len(bit_set)`` steps
    ("shuffle": random per batch, yet every width gets the same steps); all seeded."""
    if schedule == "cycle":
        return bit_set[step % len(bit_set)]
    if schedule == "sample":
        g = seeded_generator(seed, step)
        return bit_set[int(torch.randint(len(bit_set), (1,), generator=g))]
    if schedule == "shuffle":
        k = len(bit_set)
        order = torch.randperm(k, generator=seeded_generator(seed, step // k, 17))
        return bit_set[int(order[step % k])]
    raise ValueError(f"unknown bit schedule {schedule!r}; allowed: 'cycle', 'sample', 'shuffle'")


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


# The modules that register strategies when imported: the defenses, and PatchCleanser's masking fine-tune.
# A name not registered yet is looked up again after importing them, so that any config of the study
# trains in a fresh process whatever it imported.
STRATEGY_MODULES: tuple[str, ...] = ("qadtr_core.defenses", "qadtr_core.certify")


def strategy_loss(config: TrainConfig) -> BatchLoss:
    """The batch loss of ``config.strategy`` (built by its registered factory from ``config``)."""
    if config.strategy not in _STRATEGIES:
        import importlib

        for module in STRATEGY_MODULES:
            importlib.import_module(module)
    try:
        factory = _STRATEGIES[config.strategy]
    except KeyError:
        raise ValueError(
            f"unknown strategy {config.strategy!r}; registered: {', '.join(_STRATEGIES)} "
            f"(strategies register themselves when their module is imported: {', '.join(STRATEGY_MODULES)})") from None
    return factory(config)


def standard_loss(label_smoothing: float = 0.0) -> BatchLoss:
    """Cross-entropy at the model's current bit-width."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return loss


def interleave(bit_set: Sequence[int], shares: Sequence[int]) -> tuple[int, ...]:
    """A fixed period of bit-widths visiting ``bit_set[i]`` exactly ``shares[i]`` times, spread evenly.

    Smooth weighted round-robin: each slot, every width gains its share and the one with the most credit
    (ties: the earlier width) is taken and pays the period's length; e.g. shares (1, 2) give (w2, w1, w2).
    """
    if len(shares) != len(bit_set) or any(int(s) < 1 for s in shares):
        raise ValueError(f"need one positive share per width of {tuple(bit_set)}, got {tuple(shares)}")
    total, credit, out = sum(shares), [0] * len(shares), []
    for _ in range(total):
        credit = [c + s for c, s in zip(credit, shares)]
        i = max(range(len(credit)), key=lambda j: (credit[j], -j))
        credit[i] -= total
        out.append(bit_set[i])
    return tuple(out)


@dataclass(frozen=True)
class MultiWidthConfig:
    """The undefended multi-width model: plain cross-entropy, the bit-width changing every batch.

    It is the starting point of the shared-weight defenses (DWQ, QADT-R) and the clean-accuracy
    reference of C5: one switchable model (one BatchNorm per width) trained like the per-width QAT
    models, without any attack, so that a defense's effect is not confused with a post-training start.

    Attributes:
        bit_set: the widths served. (Default: (32, 8, 5, 4, 2))
        shares: steps of each width per period of :func:`interleave` (e.g. its per-width QAT epochs, so
            that every width gets the steps its QAT model gets); empty = one each (plain cycling). (Default: ())
    """

    bit_set: tuple[int, ...] = (32, 8, 5, 4, 2)
    shares: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_bit_set(self.bit_set)
        if self.shares:
            interleave(self.bit_set, self.shares)

    def train_bits(self, step: int) -> int:
        """The width of training step ``step``: the fixed interleaved period, repeated."""
        period = interleave(self.bit_set, self.shares) if self.shares else self.bit_set
        return period[step % len(period)]


def multiwidth_loss(config: MultiWidthConfig = MultiWidthConfig(), label_smoothing: float = 0.0) -> BatchLoss:
    """Cross-entropy at width ``config.train_bits(step)`` (the trainer's step counter)."""
    ce = standard_loss(label_smoothing)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        set_bits(model, config.train_bits(step))
        return ce(model, x, y, step)

    return loss


def total_steps(config: TrainConfig, n_train: int | None = None) -> int:
    """Optimiser steps of ``config`` (``n_train`` caps its ``n_train``: the size of the training set used)."""
    n = config.n_train if n_train is None else min(config.n_train, n_train)
    return config.epochs * max(1, n // config.batch_size)


def step_bits(config: TrainConfig, step: int) -> int:
    """The bit-width training step ``step`` of ``config`` runs at: its strategy's ``train_bits(step)``
    (multi-width, DWQ, QADT-R: the schedule the strategy itself uses), else ``config.bits``."""
    fn = getattr(config.strategy_params, "train_bits", None)
    return fn(step) if callable(fn) else config.bits


def steps_by_width(config: TrainConfig, n_train: int | None = None) -> dict[int, int]:
    """Optimiser steps ``config`` takes at each bit-width, counted from its schedule (widths never
    visited are absent)."""
    counts: dict[int, int] = {}
    for step in range(total_steps(config, n_train)):
        b = step_bits(config, step)
        counts[b] = counts.get(b, 0) + 1
    return counts


register_strategy("standard", lambda c: standard_loss(c.label_smoothing))
register_strategy("multiwidth", lambda c: multiwidth_loss(c.strategy_params or MultiWidthConfig(), c.label_smoothing))


def _optimizer(model: nn.Module, cfg: TrainConfig,
               steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
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


def _inner_record(loss_fn: BatchLoss) -> dict[str, float]:
    """The strategy's inner-attack losses since the last call (``inner_record()``; empty when it has none)."""
    fn = getattr(loss_fn, "inner_record", None)
    return fn() if callable(fn) else {}


def _resume(checkpoint: Path, model: nn.Module, opt: torch.optim.Optimizer,
            sched: torch.optim.lr_scheduler.LRScheduler, loss_fn: BatchLoss) -> tuple[list[dict[str, float]], int]:
    """(history, next epoch) from ``checkpoint`` with model, optimiser, scheduler and strategy state all
    applied, or ([], 0) with none of them changed (a warning says why): never a half-resumed run.

    Everything is loaded into temporary copies first and applied only when every part loaded.
    """
    stateful = hasattr(loss_fn, "load_state_dict") and hasattr(loss_fn, "state_dict")
    try:
        state = load_tensors(checkpoint)
        tmp_model = copy.deepcopy(model)
        tmp_model.load_state_dict(state["model"])
        copy.deepcopy(opt).load_state_dict(state["optimizer"])  # checks the groups and the state against the model
        copy.deepcopy(sched).load_state_dict(state["scheduler"])
        if stateful:
            copy.deepcopy(loss_fn).load_state_dict(state["strategy"])  # a missing strategy state is an unusable checkpoint
        history, start = list(state["history"]), int(state["epoch"])
    except Exception as e:  # noqa: BLE001 (any failure means: start over, with a warning)
        log.warning("ignoring unusable training checkpoint %s (starting over): %s: %s", checkpoint, type(e).__name__, e)
        return [], 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if stateful:
        loss_fn.load_state_dict(state["strategy"])
    return history, start


def train(
    model: nn.Module,
    data: Cifar10,
    cfg: TrainConfig,
    checkpoint: Path | None = None,
    loss_fn: BatchLoss | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``model`` in place under ``cfg``; returns one record per epoch (loss, accuracy, seconds, and
    ``inner_loss_before`` / ``inner_loss_after`` when the strategy records its inner attack's loss).

    With ``checkpoint``, the full training state is saved there after every epoch and a run that
    finds a valid one resumes from it, model, optimiser, scheduler and strategy state together; one
    that cannot be fully loaded (corrupt, or any part unusable) is discarded with a warning and
    training starts over.
    """
    loss_fn = loss_fn or standard_loss(cfg.label_smoothing)
    n = min(cfg.n_train, len(data.x_train))
    x, y = data.x_train[:n], data.y_train[:n]
    steps_per_epoch = max(1, n // cfg.batch_size)
    opt, sched = _optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    check = getattr(loss_fn, "check_steps", None)
    if callable(check):  # a strategy whose schedule needs enough steps (QADT-R's width blocks without DBWT)
        check(cfg.epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        history, start = _resume(Path(checkpoint), model, opt, sched, loss_fn)
    set_bits(model, cfg.bits)
    device = next(model.parameters()).device
    model.to(memory_format=torch.channels_last)  # faster convolutions on CPU (oneDNN) and GPU (cuDNN)
    for epoch in range(start, cfg.epochs):
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)  # kept: existing checkpoints depend on it
        t0, tot_loss, correct, seen = time.perf_counter(), 0.0, 0, 0
        _inner_record(loss_fn)  # discard what an interrupted epoch may have left
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
                        "seconds": time.perf_counter() - t0, **_inner_record(loss_fn)})
        if checkpoint is not None:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "history": history, "epoch": epoch + 1}
            if hasattr(loss_fn, "state_dict"):  # a strategy with state of its own (QADT-R's A-QAPA averages)
                state["strategy"] = loss_fn.state_dict()
            save_tensors(checkpoint, state)
    model.eval()
    return history
