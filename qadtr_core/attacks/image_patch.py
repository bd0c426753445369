"""Per-image adversarial patch (Rao, Stutz and Schiele 2020, the attack PBAT trains against).

Every image gets its own patch at its own random location outside a given region (the central
10x10 by default). The patch starts uniform at random and takes signed-gradient steps that raise a
loss of the true label (untargeted) or lower it for a target: the cross-entropy (default) or the
CW-style logit margin (Carlini and Wagner 2017), with a constant or a decaying step size. With
location optimisation (Rao et al.'s "RandLO"), each step also tries moving every patch by
``location_stride`` pixels in a random direction and keeps the move where it raises the loss. With
restarts, each restart draws a new location and start; with a location search (``location_search``), a
restart scores its start content at several random locations (forward passes only) and starts at the
worst one for the model: on a patch-trained model each restart otherwise stalls near where it started (a
new location fooled more images than sixteen times the steps, ``benchmarks/README.md``). Each image
keeps its **best iterate** over all steps and restarts: if any patch fooled the model, the fooling one
with the highest loss (with early stopping: the earliest restart's first fooling patch), else the one
with the highest loss.

The attack records, per image, restart and step, whether the best iterate so far fools the model
(:attr:`ImagePatches.success`), so one run shows its own strength curve: the ASR it would have had
with half the steps or fewer restarts (the convergence check of Carlini et al. 2019) costs nothing.
All images of a batch are attacked at once, and so are all restarts: each step is one forward and
backward pass over every (restart, image) pair still attacked, which is what makes restarts cheap on a
GPU (the pass costs about the same for a few hundred rows as for a few thousand). Each restart draws
from its own generator and each pair follows its own trajectory, so the records and kept patches are
exactly those of running the restarts one after another, wherever a row's result does not depend on how
many rows share its pass. That held in every check made on the CPU (tiny models, and 30 steps on a quantized
ResNet-20); it is not guaranteed, since a math library may pick other kernels for a larger batch (a GPU one
more often), and over hundreds of signed steps a last-bit difference can become another trajectory.
``batch_size`` counts images: a pass holds up to ``batch_size x restarts`` rows. The random draws (starts,
locations, moves) are seeded per batch, by ``seed``, the index of the batch's first image and the restart,
so a run repeats exactly at the same ``batch_size``; another ``batch_size`` draws other starts from the same
distribution (the defenses' inner attacks, which trained the bundled models, depend on this scheme, so it stays).

**Early stopping** (``early_stop=True``) attacks an image only while its record is open: restart ``r``
stops attacking it from the step after it, or any earlier restart of the same image, first fooled it
(so a restart never runs past the step at which an earlier one had fooled the image, and not at all
past the random start on images fooled there). Later steps run on the remaining pairs alone, which is
the saving. Every step and restart is drawn from the same seeds as without early stopping, so the
pairs that stay are attacked exactly as in a full run, and :meth:`ImagePatches.fooled_within` gives
the same answer for every number of steps and restarts (the white-box ASR and its whole curve are
unchanged; only which fooling patch is kept may differ). Since the restarts run side by side, restart ``r``
attacks an image from step 0 until the step after it, or an earlier restart, first fooled it (a later
restart's success never stops an earlier one, so that every restart's record, and with it the ASR of
fewer restarts, stays exact). That is at most one image-step more per image and
later restart than a schedule in which restart ``r`` stops at step ``t`` as soon as an earlier restart had
fooled the image within ``t`` steps (the tests bound it exactly); it is more than running the restarts
strictly one after another, where restart ``r`` would attack only the images every earlier restart left
unfooled after all its steps (an image restart 0 fooled at step ``t`` costs each later restart up to
``t + 1`` image-steps here, none there): the price of one pass per step for all restarts, which a GPU
pays back.
Patches meant to *transfer* keep the full budget (the default), since a stronger source patch
transfers better. :attr:`ImagePatches.image_steps_run` says what a run cost against
:attr:`ImagePatches.image_steps_full_budget`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import check_target
from ..patches import Box, Placement, Shape, apply_patch, central_box, make_mask, random_placement
from ..utils import eval_mode, input_gradients_only

# The four moves of location optimisation: up, down, left, right.
_MOVES = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1]])

StepSchedule = Literal["constant", "cosine", "steps"]
Loss = Literal["ce", "margin"]
STEP_SCHEDULES: tuple[str, ...] = ("constant", "cosine", "steps")
LOSSES: tuple[str, ...] = ("ce", "margin")


@dataclass(frozen=True)
class ImagePatchConfig:
    """Hyperparameters, in paper units.

    Attributes:
        size: patch side in pixels (8 = 6.25 % of a 32x32 image, Rao et al.). (Default: 8)
        shape: "square" or "circle". (Default: "square")
        steps: signed-gradient steps per restart. (Default: 100)
        step_size: step in pixel units of [0, 1] (the first step's, under a decaying schedule). (Default: 0.05)
        restarts: attempts per image, each at a new location and start. (Default: 1)
        location_opt: try a random move of every patch each step and keep it where the loss rises
            (Rao et al.'s random location optimisation). (Default: False)
        location_stride: pixels per move. (Default: 2, Rao et al.'s stride)
        avoid: a box (row, col, h, w) the patch may not cover. (Default: the central 10x10)
        target: a target class, or None for untargeted. (Default: None)
        num_classes: classes of the attacked models (bounds ``target``). (Default: 10)
        seed: seeds locations, moves and starting patches. (Default: 0)
        early_stop: stop attacking an image in a restart once that restart or an earlier one has fooled
            it (see the module doc); the success record, and so the ASR for any steps and restarts,
            is that of the full run, the kept patch is the earliest restart's that fooled, at its first
            fooling step. Not for patches crafted to transfer. (Default: False)
        step_schedule: the step size over the steps of a restart (``t = 0 .. steps - 1``; see
            :meth:`step_sizes`): "constant" (``step_size`` throughout), "cosine" (cosine decay from
            ``step_size`` at the first step to ``step_size * final_step_fraction`` at the last) or
            "steps" (``step_size``, halved from step ``steps / 2`` on and halved again from
            ``3 steps / 4`` on). (Default: "constant")
        final_step_fraction: the last step's share of ``step_size`` under "cosine", in [0, 1]. (Default: 0.1)
        loss: the per-image loss the patch raises: "ce" (cross-entropy of the true label; targeted: minus
            that of the target) or "margin" (CW-style: the largest other logit minus the true label's;
            targeted: the target's logit minus the largest other). (Default: "ce")
        location_search: candidate start locations per restart: each restart scores its random start
            content at its own random location and ``location_search - 1`` more (forward passes only, no
            gradient) and starts at the one with the highest loss; 1 starts at the one random location.
            Each restart searches on its own, so fewer restarts read off one run stay exact.
            (Default: 1)
    """

    size: int = 8
    shape: Shape = "square"
    steps: int = 100
    step_size: float = 0.05
    restarts: int = 1
    avoid: Box | None = central_box(10)
    target: int | None = None
    seed: int = 0
    num_classes: int = 10
    location_opt: bool = False
    location_stride: int = 2
    early_stop: bool = False
    step_schedule: StepSchedule = "constant"
    final_step_fraction: float = 0.1
    loss: Loss = "ce"
    location_search: int = 1

    def __post_init__(self) -> None:
        check_target(self.target, self.num_classes)
        if isinstance(self.location_search, bool) or not isinstance(self.location_search, int) or self.location_search < 1:
            raise ValueError(f"location_search must be a whole number of candidate locations >= 1, "
                             f"got {self.location_search!r}")
        if self.steps < 0 or self.restarts < 1:
            raise ValueError(f"steps must be >= 0 and restarts >= 1, got {self.steps}, {self.restarts}")
        if self.location_stride < 1:
            raise ValueError(f"location_stride must be a positive number of pixels, got {self.location_stride}")
        if not isinstance(self.early_stop, bool):
            raise ValueError(f"early_stop must be True or False, got {self.early_stop!r}")
        if self.step_schedule not in STEP_SCHEDULES:
            raise ValueError(f"unknown step_schedule {self.step_schedule!r}; allowed: "
                             + ", ".join(repr(s) for s in STEP_SCHEDULES))
        if not 0.0 <= self.final_step_fraction <= 1.0:
            raise ValueError(f"final_step_fraction must be in [0, 1], got {self.final_step_fraction!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; allowed: " + ", ".join(repr(s) for s in LOSSES))
        make_mask(self.size, self.shape)

    def step_sizes(self) -> list[float]:
        """The step size of each of the ``steps`` signed-gradient steps of a restart (see ``step_schedule``)."""
        n, eta = self.steps, self.step_size
        if self.step_schedule == "constant":
            return [eta] * n
        if self.step_schedule == "steps":
            return [eta / 4 if 4 * t >= 3 * n else eta / 2 if 2 * t >= n else eta for t in range(n)]
        f = self.final_step_fraction
        return [eta * (f + (1 - f) * (1 + math.cos(math.pi * t / (n - 1))) / 2) if n > 1 else eta for t in range(n)]

    @property
    def image_steps_per_image(self) -> int:
        """The full budget of one image: ``restarts * steps`` image-steps."""
        return self.restarts * self.steps


@dataclass
class ImagePatches:
    """One patch per image and where it goes: ``patches`` ``(N, C, s, s)``, ``placement``, ``mask``.

    ``success`` (bool, ``(N, restarts, steps + 1)``) says whether restart ``r`` of image ``i`` had
    fooled the model within its first ``t`` steps (``t = 0`` is the random start), restarts counted
    independently, so any budget of fewer steps or restarts can be read off one run. With early
    stopping, ``success[i, r, t]`` is whether *any of restarts 0..r* had fooled image ``i`` within ``t``
    steps (the cumulative record: where restart ``r`` skipped the image because an earlier restart had
    fooled it within ``t`` steps, it reads True), so :meth:`fooled_within` gives the full run's answer
    for every ``steps`` and ``restarts``, while one restart's column alone is no longer that restart's
    own success.

    ``image_steps_run``: image-steps the attack ran (one image-step: one (restart, image) pair's forward
    and backward pass, with its location try, at a step ``t < steps``; with early stopping, restart ``r``
    runs image ``i`` at step ``t`` unless restart ``r`` or an earlier one had fooled it before step ``t``,
    so a pair first fooled at step ``t`` ran ``t + 1`` of them, the one that found it fooled included).
    ``image_steps_full_budget``: images x restarts x steps, what it runs without early stopping.
    Both None where unknown (patches from before these were recorded). ``location_queries``: forward-only
    evaluations of the start location search (images x restarts x (location_search - 1); about a third of
    an image-step each), None where unknown.
    """

    patches: torch.Tensor
    placement: Placement
    mask: torch.Tensor
    success: torch.Tensor | None = None
    image_steps_run: int | None = None
    image_steps_full_budget: int | None = None
    location_queries: int | None = None

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The patched images (the same images the patches were crafted for)."""
        return apply_patch(images, self.patches, self.mask, self.placement)

    def fooled_within(self, steps: int, restarts: int | None = None) -> torch.Tensor:
        """Per image: fooled within ``steps`` steps of any of the first ``restarts`` restarts (default: all)."""
        if self.success is None:
            raise ValueError("these patches carry no per-step success record")
        n_r, n_t = self.success.shape[1], self.success.shape[2] - 1
        restarts = n_r if restarts is None else restarts
        if not 1 <= restarts <= n_r or not 0 <= steps <= n_t:
            raise ValueError(f"steps must be in 0..{n_t} and restarts in 1..{n_r}, got {steps}, {restarts}")
        return self.success[:, :restarts, steps].any(1)


def _margin(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per image: the largest logit other than ``label``'s minus ``label``'s."""
    own = logits.gather(1, label[:, None])[:, 0]
    others = logits.masked_fill(F.one_hot(label, logits.shape[1]).bool(), -float("inf")).amax(1)
    return others - own


def _per_image_loss(logits: torch.Tensor, y: torch.Tensor, target: int | None, loss: Loss = "ce") -> torch.Tensor:
    """Per-image loss to *maximise* (see :attr:`ImagePatchConfig.loss`)."""
    if loss == "margin":
        return _margin(logits, y) if target is None else -_margin(logits, torch.full_like(y, target))
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, torch.full_like(y, target), reduction="none")


def _fooled(logits: torch.Tensor, y: torch.Tensor, target: int | None) -> torch.Tensor:
    pred = logits.argmax(1)
    return pred != y if target is None else pred == target


def image_patch_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       config: ImagePatchConfig = ImagePatchConfig(), batch_size: int = 250,
                       on_batch: Callable[[int, ImagePatches], None] | None = None,
                       max_rows: int | None = None) -> ImagePatches:
    """Craft one patch per image against ``model`` at its current bit-width (see module doc); ``batch_size``
    images at a time, each pass holding their ``config.restarts`` restarts side by side. ``on_batch(offset,
    found)``, if given, is called after each batch with its first image's index and its result (progress
    for long runs; it changes nothing). ``max_rows`` bounds the rows of one forward (and backward) pass:
    a step over more (restart, image) rows runs in chunks of at most that many, which bounds memory
    (``batch_size x restarts`` rows of a quantized ResNet at once can exceed a CPU machine's) and changes
    nothing else, since every row's loss and gradient are its own (None: one pass for all rows)."""
    if not torch.isfinite(images).all():
        raise ValueError("images must be finite")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ValueError(f"max_rows must be a whole number >= 1 or None, got {max_rows!r}")
    parts = []
    for i in range(0, len(images), batch_size):
        parts.append(_attack_batch(model, images[i:i + batch_size], labels[i:i + batch_size], config, i, max_rows))
        if on_batch is not None:
            on_batch(i, parts[-1])
    patches = torch.cat([p.patches for p in parts])
    place = Placement(*(torch.cat([getattr(p.placement, f) for p in parts]) for f in ("rows", "cols", "angles", "scales")))
    return ImagePatches(patches, place, parts[0].mask, torch.cat([p.success for p in parts]),
                        sum(p.image_steps_run for p in parts), sum(p.image_steps_full_budget for p in parts),
                        sum(p.location_queries for p in parts))


def _allowed(rows: torch.Tensor, cols: torch.Tensor, size: int, image_size: int, avoid: Box | None) -> torch.Tensor:
    """Per image: the patch at (rows, cols) lies inside the image and misses ``avoid``."""
    ok = (rows >= 0) & (cols >= 0) & (rows + size <= image_size) & (cols + size <= image_size)
    if avoid is not None:
        ar, ac, ah, aw = avoid
        ok &= (rows + size <= ar) | (rows >= ar + ah) | (cols + size <= ac) | (cols >= ac + aw)
    return ok


def _attack_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ImagePatchConfig, offset: int,
                  max_rows: int | None = None) -> ImagePatches:
    # The restarts run side by side, one batch row per restart and image (row r * n + i: restart r of image i),
    # so a step costs one forward and backward pass for all restarts. Each restart draws from its own
    # generator, and each row follows exactly the trajectory it would follow run alone, so the records and
    # the kept patches are those of running the restarts one after another (see _pick_restart).
    n, c = x.shape[:2]
    n_r = cfg.restarts
    dev = x.device
    mask = make_mask(cfg.size, cfg.shape).to(x)
    gens = [torch.Generator().manual_seed(_restart_seed(cfg.seed, offset, r)) for r in range(n_r)]
    starts = [(random_placement(n, cfg.size, g, x.shape[-1], cfg.avoid), torch.rand(n, c, cfg.size, cfg.size, generator=g))
              for g in gens]
    rows = torch.cat([pl.rows for pl, _ in starts]).clone()
    cols = torch.cat([pl.cols for pl, _ in starts]).clone()
    p = torch.cat([start for _, start in starts]).to(x)
    xr, yr = (x, y) if n_r == 1 else (x.repeat(n_r, 1, 1, 1), y.repeat(n_r))
    rows_n = n * n_r
    ones, zeros = torch.ones(rows_n), torch.zeros(rows_n)
    best_p = torch.zeros(rows_n, c, cfg.size, cfg.size, dtype=x.dtype, device=dev)
    best_r = torch.zeros(rows_n, dtype=torch.long)
    best_c = torch.zeros(rows_n, dtype=torch.long)
    best_loss = torch.full((rows_n,), -float("inf"), device=dev)
    best_fooled = torch.zeros(rows_n, dtype=torch.bool, device=dev)
    own = torch.zeros(rows_n, dtype=torch.bool)  # each row's own record: fooled so far
    success = torch.zeros(n, n_r, cfg.steps + 1, dtype=torch.bool)
    sizes = cfg.step_sizes()
    image_steps = 0

    def record() -> torch.Tensor:
        # (n, restarts): each restart's own record, or with early stopping the cumulative one (any of 0..r).
        rec = own.view(n_r, n)
        return (rec.cummax(0).values if cfg.early_stop else rec).t()

    def loss_of(p: torch.Tensor, idx: torch.Tensor | None, rows: torch.Tensor, cols: torch.Tensor,
                grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # The loss and "fooled" of the rows ``idx`` (None: all) with patches ``p`` at (rows, cols), and with
        # ``grad`` the loss's gradient in ``p``; at most ``max_rows`` rows per pass (each row's loss is its own).
        m = len(p)
        step = m if max_rows is None else max_rows
        losses, fooled, grads = [], [], []
        for a in range(0, m, max(step, 1)):
            e = min(a + step, m)
            if idx is None and e - a == len(xr):  # every row in one pass: no copy
                xs, ys = xr, yr
            else:
                at = torch.arange(a, e) if idx is None else idx[a:e]
                xs, ys = xr[at.to(dev)], yr[at.to(dev)]
            pc = p[a:e].detach().requires_grad_(True) if grad else p[a:e]
            logits = model(apply_patch(xs, pc, mask, Placement(rows[a:e], cols[a:e], zeros[:e - a], ones[:e - a])))
            loss = _per_image_loss(logits, ys, cfg.target, cfg.loss)
            if grad:
                g, = torch.autograd.grad(loss.sum(), pc)
                grads.append(g)
            losses.append(loss.detach())
            fooled.append(_fooled(logits.detach(), ys, cfg.target))
        return torch.cat(losses), torch.cat(fooled), torch.cat(grads) if grad else None

    def keep_best(idx: torch.Tensor | None, p: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                  loss: torch.Tensor, fooled: torch.Tensor) -> None:
        # Per row: prefer a patch that fools the model; among equals, the higher loss (early stop: the first that fools).
        if idx is None:
            bf, bl = best_fooled, best_loss
        else:
            bf, bl = best_fooled[idx.to(dev)], best_loss[idx.to(dev)]
        better = _better(fooled, loss, bf, bl, cfg.early_stop)
        cpu = better.cpu()
        if idx is None:
            best_p[better] = p.detach()[better]
            best_r[cpu], best_c[cpu] = rows[cpu], cols[cpu]
            best_loss[better], best_fooled[better] = loss[better], fooled[better]
            return
        sel = idx[cpu]
        sel_dev = sel.to(dev)
        best_p[sel_dev] = p.detach()[better]
        best_r[sel], best_c[sel] = rows[cpu], cols[cpu]
        best_loss[sel_dev], best_fooled[sel_dev] = loss[better], fooled[better]

    location_queries = 0
    if cfg.location_search > 1:
        # Each restart starts where its random start content scores the highest loss among its own
        # ``location_search`` random locations (its first draw and ``location_search - 1`` more).
        extra = [[random_placement(n, cfg.size, g, x.shape[-1], cfg.avoid) for _ in range(cfg.location_search - 1)]
                 for g in gens]
        with torch.no_grad(), eval_mode(model):
            best = loss_of(p, None, rows, cols)[0]
            for m in range(cfg.location_search - 1):
                cr = torch.cat([extra[r][m].rows for r in range(n_r)])
                cc = torch.cat([extra[r][m].cols for r in range(n_r)])
                lm = loss_of(p, None, cr, cc)[0]
                up = (lm > best).cpu()
                rows[up], cols[up] = cr[up], cc[up]
                best = torch.maximum(best, lm)
        location_queries = rows_n * (cfg.location_search - 1)
    with eval_mode(model), input_gradients_only(model):
        for t in range(cfg.steps + 1):
            idx: torch.Tensor | None = None  # the rows attacked at this step (None: all)
            if cfg.early_stop:
                # A row's record is closed once its restart, or an earlier restart of its image, has fooled it.
                settled = record().t().reshape(-1)  # back to row order
                if settled.all():  # every record is closed from here on
                    success[:, :, t:] = True
                    break
                idx = (~settled).nonzero()[:, 0]
            at = slice(None) if idx is None else idx
            pa = p if idx is None else p[idx.to(dev)]
            ra, ca = rows[at], cols[at]
            # the gradient of the patch at its current location (taken before the location step moves it)
            loss, fooled, grad = loss_of(pa, idx, ra, ca, grad=t < cfg.steps)
            with torch.no_grad():
                keep_best(idx, pa, ra, ca, loss, fooled)
                fooled_cpu = fooled.cpu()
                own[at] |= fooled_cpu
            # Location step (RandLO): the patch content then takes the gradient of its old location.
            if cfg.location_opt and t < cfg.steps:
                with torch.no_grad():
                    move = torch.cat([_MOVES[torch.randint(4, (n,), generator=g)] for g in gens]) * cfg.location_stride
                    # Early stop: only the rows still unfooled try a move (the others leave now).
                    try_ = torch.ones(len(ra), dtype=torch.bool) if idx is None else ~fooled_cpu
                    sub = None if idx is None else idx[try_]
                    if sub is None or len(sub):
                        mv = move if sub is None else move[sub]
                        old_r, old_c = ra[try_], ca[try_]
                        new_r, new_c = old_r + mv[:, 0], old_c + mv[:, 1]
                        ok = _allowed(new_r, new_c, cfg.size, x.shape[-1], cfg.avoid)
                        new_r, new_c = torch.where(ok, new_r, old_r), torch.where(ok, new_c, old_c)
                        pm = pa.detach() if sub is None else pa.detach()[try_.to(dev)]
                        loss_m, fooled_m, _ = loss_of(pm, sub, new_r, new_c)
                        keep_best(sub, pm, new_r, new_c, loss_m, fooled_m)
                        to = slice(None) if sub is None else sub
                        own[to] |= fooled_m.cpu()
                        accept = (ok.to(dev) & (loss_m > loss.detach()[try_.to(dev)])).cpu()
                        rows[to], cols[to] = torch.where(accept, new_r, old_r), torch.where(accept, new_c, old_c)
            success[:, :, t] = record()
            if t == cfg.steps:
                break
            image_steps += len(ra)
            with torch.no_grad():
                step = (pa.detach() + sizes[t] * grad.sign()).clamp_(0, 1)
                if idx is None:
                    p = step
                else:
                    p[idx.to(dev)] = step
    pick = _pick_restart(best_fooled.cpu().view(n_r, n), best_loss.cpu().view(n_r, n), cfg.early_stop)
    row = pick * n + torch.arange(n)
    return ImagePatches(best_p[row.to(dev)], Placement(best_r[row], best_c[row], torch.zeros(n), torch.ones(n)), mask,
                        success, image_steps, n * cfg.restarts * cfg.steps, location_queries)


def image_steps_of(success: torch.Tensor, early_stop: bool) -> int:
    """The image-steps a run with the success record ``success`` (images x restarts x steps + 1, as
    :attr:`ImagePatches.success`) ran: the full budget without early stopping; with it, restart ``r`` runs
    image ``i`` at step 0 and at every later step ``t < steps`` whose record ``success[i, r, t - 1]`` was
    still open (the cumulative record closes a row; see the module doc). Equal to
    :attr:`ImagePatches.image_steps_run` of the run that wrote the record, so cached records need not store it."""
    n, n_r, steps = success.shape[0], success.shape[1], success.shape[2] - 1
    if steps == 0:
        return 0
    if not early_stop:
        return n * n_r * steps
    return n * n_r + int((~success[:, :, :steps - 1].bool()).sum())


def _restart_seed(seed: int, offset: int, restart: int) -> int:
    """The seed of one restart's generator (its locations, moves and start) for the batch starting at image ``offset``."""
    return seed * 7919 + offset * 31 + restart


def _better(fooled: torch.Tensor, loss: torch.Tensor, best_fooled: torch.Tensor, best_loss: torch.Tensor,
            early_stop: bool) -> torch.Tensor:
    """Where a candidate beats the best so far: it fools and the best does not, or both fool or both do not and
    its loss is higher; with early stopping a best that fools is never replaced (the first that fools stays)."""
    better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
    return better & ~best_fooled if early_stop else better


def _pick_restart(fooled: torch.Tensor, loss: torch.Tensor, early_stop: bool) -> torch.Tensor:
    """Per image, the restart whose best patch is kept, from each restart's best (``(restarts, n)``): the one
    that would be kept had the restarts run one after another, each compared with the best of those before it
    by :func:`_better` (ties go to the earlier restart)."""
    pick = torch.zeros(fooled.shape[1], dtype=torch.long)
    bf, bl = fooled[0].clone(), loss[0].clone()
    for r in range(1, len(fooled)):
        better = _better(fooled[r], loss[r], bf, bl, early_stop)
        pick[better], bf[better], bl[better] = r, fooled[r][better], loss[r][better]
    return pick
