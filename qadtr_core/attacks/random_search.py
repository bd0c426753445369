"""Gradient-free per-image patch attack: random search in the manner of Sparse-RS (Croce et al., AAAI 2022).

Only the classifier's forward is called, so any black box works: a quantized model at any width, or a
non-differentiable defense such as PatchCleanser's double masking
(:func:`qadtr_core.certify.double_masking_classifier`). Every image gets a square patch at a random
location outside ``avoid``, starting from Sparse-RS's "random squares" (random squares of random
corners of the colour cube). Each query then tries one candidate per image:

- every ``update_loc_period``-th query a **location** move by up to ``sh`` pixels per axis, with ``sh``
  shrinking linearly from 0.75 of the image side to 0 over the budget (moves into ``avoid`` are redrawn);
- otherwise a **content** update: a random square of side ``s_it`` inside the patch is set to a random
  corner of the colour cube (a different colour when ``s_it = 1``), ``s_it = sqrt(p(t)) * size`` with
  Sparse-RS's piecewise-constant schedule ``p(t)`` (``p_init`` halving at 10, 50, 200, 500, 1000, 2000,
  4000, 6000 and 8000 of 10,000 queries, rescaled to the budget); once ``s_it`` reaches 1, the second
  half of the remaining budget flips single channels of single pixels.

With logits, a candidate replaces the current patch if it lowers the margin loss ``z_y - max_{k != y} z_k``
or fools the model (Sparse-RS's rule). With a predictor that returns only labels there is no loss:
``hard_label="walk"`` (default) accepts every candidate (a random walk, which keeps exploring), ``"keep"``
only a fooling one (every candidate is then a one-step neighbour of the start). An image stops at its
first fooling query; a candidate identical to the current patch and location is not queried.
Patches are pasted with :func:`qadtr_core.patches.apply_patch`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..patches import Box, Placement, apply_patch, central_box, make_mask, random_placement
from ..utils import eval_mode, seeded_generator
from .image_patch import _allowed

HardLabel = Literal["walk", "keep"]
_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # Sparse-RS's p halves after these (of 10,000)
_MOVE_TRIES = 16  # location draws per image and move, to find one outside ``avoid``
_INIT_SQUARES = 1000  # squares of the "random squares" start (Sparse-RS)


@dataclass(frozen=True)
class RandomSearchConfig:
    """Hyperparameters, in paper units (Sparse-RS's untargeted image-specific patches).

    Attributes:
        size: patch side in pixels (8 = 6.25 % of a 32x32 image, as :class:`ImagePatchConfig`). (Default: 8)
        queries: forward passes per image at most, the start included. (Default: 10000, Sparse-RS)
        p_init: initial share of the patch a content update changes (Sparse-RS's ``alpha_init``
            for patches). (Default: 0.4)
        update_loc_period: every this many queries a location move instead of a content update
            (Sparse-RS: 4 for untargeted attacks). (Default: 4)
        avoid: a box (row, col, h, w) the patch may not cover; None lets it go anywhere. (Default: the
            central 10x10, as :class:`ImagePatchConfig`)
        hard_label: with a label-only predictor, "walk" (accept every candidate) or "keep" (accept only
            a fooling one). (Default: "walk")
        seed: seeds locations, starts and updates. (Default: 0)
    """

    size: int = 8
    queries: int = 10000
    p_init: float = 0.4
    update_loc_period: int = 4
    avoid: Box | None = central_box(10)
    hard_label: HardLabel = "walk"
    seed: int = 0

    def __post_init__(self) -> None:
        make_mask(self.size)
        if isinstance(self.queries, bool) or not isinstance(self.queries, int) or self.queries < 1:
            raise ValueError(f"queries must be a positive integer, got {self.queries!r}")
        if not 0 < self.p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {self.p_init!r}")
        if isinstance(self.update_loc_period, bool) or not isinstance(self.update_loc_period, int) \
                or self.update_loc_period < 2:
            raise ValueError(f"update_loc_period must be an integer of at least 2 (queries), got {self.update_loc_period!r}")
        if self.hard_label not in ("walk", "keep"):
            raise ValueError(f"unknown hard_label rule {self.hard_label!r}; allowed: 'walk', 'keep'")


@dataclass
class RandomSearchPatches:
    """One patch per image and where it goes, as :class:`ImagePatches`: ``patches`` ``(N, C, s, s)``,
    ``placement``, ``mask``; plus ``fooled`` (bool ``(N,)``: the patched image fooled the predictor at
    some query) and ``queries`` (long ``(N,)``: queries spent; for a fooled image, the query that fooled it).
    For a fooled image the patch is the fooling one; otherwise the current one at the end."""

    patches: torch.Tensor
    placement: Placement
    mask: torch.Tensor
    fooled: torch.Tensor
    queries: torch.Tensor

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The patched images (the same images the patches were crafted for)."""
        return apply_patch(images, self.patches, self.mask, self.placement)

    def fooled_within(self, queries: int) -> torch.Tensor:
        """Per image: fooled within the first ``queries`` queries (any smaller budget, read off one run)."""
        return self.fooled & (self.queries <= queries)


def _p_selection(it: int, total: int, p_init: float) -> float:
    """Sparse-RS's schedule for patches, rescaled to a budget of ``total`` queries."""
    t = int(it / total * 10000)
    return p_init / 2 ** sum(t > b for b in _SCHEDULE)


def _side(it: int, cfg: RandomSearchConfig) -> int:
    return max(int(math.sqrt(_p_selection(it, cfg.queries, cfg.p_init)) * cfg.size), 1)


def _random_corners(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=g).float()


def _squares(n: int, size: int, side: torch.Tensor | int, g: torch.Generator) -> torch.Tensor:
    """Bool ``(n, size, size)``: per image a ``side`` px square at a uniform position inside the patch."""
    side = torch.as_tensor(side).expand(n)
    r = (torch.rand(n, generator=g) * (size - side + 1)).long()
    c = (torch.rand(n, generator=g) * (size - side + 1)).long()
    ar = torch.arange(size)
    rows = (ar[None] >= r[:, None]) & (ar[None] < (r + side)[:, None])
    cols = (ar[None] >= c[:, None]) & (ar[None] < (c + side)[:, None])
    return rows[:, :, None] & cols[:, None, :]


def _init_patches(n: int, c: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Sparse-RS's "random squares" start: 1000 squares of side ``1..ceil(sqrt(size)) - 1`` in random corners."""
    p = torch.zeros(n, c, size, size)
    high = max(math.ceil(size**0.5), 2)
    for _ in range(_INIT_SQUARES):
        side = torch.randint(1, high, (n,), generator=g)
        sq = _squares(n, size, side, g)
        p = torch.where(sq[:, None], _random_corners((n, c, 1, 1), g), p)
    return p


def _other_corner(old: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per row of ``old`` ``(n, C)`` (a corner of the colour cube), a uniformly random *other* corner."""
    flip = torch.zeros_like(old, dtype=torch.bool)
    todo = torch.ones(len(old), dtype=torch.bool)
    while todo.any():  # rejection: a non-zero flip pattern, uniform over the 2^C - 1 others
        draw = torch.randint(0, 2, (len(old), old.shape[1]), generator=g).bool()
        flip[todo] = draw[todo]
        todo = ~flip.any(1)
    return torch.where(flip, 1 - old, old)


class _Scorer:
    """Calls the predictor; works out once whether it returns logits ``(N, classes)`` or labels ``(N,)``."""

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.predict = predict
        self.hard: bool | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: (fooled, margin loss; 0 for labels), on the CPU."""
        out = self.predict(x)
        if not isinstance(out, torch.Tensor) or len(out) != len(x):
            raise ValueError(f"the predictor must return (N,) labels or (N, classes) logits for N={len(x)} images, "
                             f"got {getattr(out, 'shape', type(out).__name__)}")
        out = out.detach().cpu()
        hard = out.dim() == 1 and not out.dtype.is_floating_point
        if not hard and not (out.dim() == 2 and out.dtype.is_floating_point):
            raise ValueError(f"the predictor must return integer labels (N,) or float logits (N, classes), "
                             f"got {out.dtype} {tuple(out.shape)}")
        if self.hard is not None and hard != self.hard:
            raise ValueError("the predictor switched between labels and logits")
        self.hard = hard
        if hard:
            return out != y, torch.zeros(len(x))
        zy = out.gather(1, y[:, None])[:, 0]
        others = out.scatter(1, y[:, None], -float("inf")).amax(1)
        return out.argmax(1) != y, zy - others


@torch.no_grad()
def random_search_patch(predict: Callable[[torch.Tensor], torch.Tensor] | nn.Module, images: torch.Tensor,
                        labels: torch.Tensor, config: RandomSearchConfig = RandomSearchConfig(),
                        batch_size: int = 250) -> RandomSearchPatches:
    """Untargeted random-search patches against ``predict`` (images in [0, 1] -> logits or labels); see module doc.

    Images are attacked in batches of ``batch_size`` (an ``nn.Module`` runs in eval mode). Results are on
    the CPU except ``patches`` (on the images' device).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be square (N, C, H, H), got {getattr(images, 'shape', type(images).__name__)}")
    if not torch.isfinite(images).all() or (images.numel() and (images.min() < 0 or images.max() > 1)):
        raise ValueError("images must be finite and in [0, 1]")
    if labels.shape != (len(images),) or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be integer class indices of shape ({len(images)},), got {tuple(labels.shape)}")
    if config.size > images.shape[-1]:
        raise ValueError(f"patch size {config.size} px is larger than the image ({images.shape[-1]} px)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    scorer = _Scorer(predict)
    models = (predict,) if isinstance(predict, nn.Module) else ()
    with eval_mode(*models):
        parts = [_attack_batch(scorer, images[i : i + batch_size], labels[i : i + batch_size].cpu().long(), config, i)
                 for i in range(0, len(images), batch_size)]
    c, s = images.shape[1], config.size
    if not parts:
        empty = Placement(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.ones(0))
        return RandomSearchPatches(images.new_zeros(0, c, s, s), empty, make_mask(s).to(images),
                                   torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long))
    place = Placement(*(torch.cat([getattr(p.placement, f) for p in parts]) for f in ("rows", "cols", "angles", "scales")))
    return RandomSearchPatches(torch.cat([p.patches for p in parts]), place, parts[0].mask,
                               torch.cat([p.fooled for p in parts]), torch.cat([p.queries for p in parts]))


def _attack_batch(scorer: _Scorer, x: torch.Tensor, y: torch.Tensor, cfg: RandomSearchConfig,
                  offset: int) -> RandomSearchPatches:
    n, c, h = x.shape[:3]
    s = cfg.size
    g = seeded_generator(cfg.seed, offset)
    mask = make_mask(s).to(x)
    ones, zeros = torch.ones(n), torch.zeros(n)
    start = random_placement(n, s, g, h, cfg.avoid)
    rows, cols = start.rows.clone(), start.cols.clone()
    patch = _init_patches(n, c, s, g)

    def query(idx: torch.Tensor, p: torch.Tensor, r: torch.Tensor, cc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        place = Placement(r, cc, zeros[: len(idx)], ones[: len(idx)])
        return scorer(apply_patch(x[idx.to(x.device)], p.to(x), mask, place), y[idx])

    fooled, loss = query(torch.arange(n), patch, rows, cols)
    queries = torch.ones(n, dtype=torch.long)
    # Single-channel updates start halfway through what is left once the squares are down to 1 px.
    first_1px = next((t for t in range(cfg.queries) if _side(t, cfg) == 1), None)
    start_cu = None if first_1px is None else first_1px + (cfg.queries - first_1px) // 2
    for it in range(1, cfg.queries):
        if fooled.all():
            break
        side = _side(it, cfg)
        sh = int(max(0.75 * (cfg.queries - it) / cfg.queries * h, 0))
        new_p, new_r, new_c = patch, rows, cols
        # Draws for every image of the batch, so an image's stream does not depend on which others are done.
        if it % cfg.update_loc_period == 0 and sh > 0:
            d = torch.randint(-sh, sh + 1, (n, _MOVE_TRIES, 2), generator=g)
            cand_r = (rows[:, None] + d[..., 0]).clamp(0, h - s)
            cand_c = (cols[:, None] + d[..., 1]).clamp(0, h - s)
            ok = _allowed(cand_r, cand_c, s, h, cfg.avoid)
            pick = ok.float().argmax(1, keepdim=True)
            found = ok.any(1)
            new_r = torch.where(found, cand_r.gather(1, pick)[:, 0], rows)
            new_c = torch.where(found, cand_c.gather(1, pick)[:, 0], cols)
        elif start_cu is not None and it >= start_cu and side == 1:
            sq = _squares(n, s, 1, g)
            ch = torch.randint(0, c, (n,), generator=g)
            flip = sq[:, None] & (torch.arange(c)[None, :, None, None] == ch[:, None, None, None])
            new_p = torch.where(flip, 1 - patch, patch)
        else:
            sq = _squares(n, s, side, g)
            if side > 1:
                colour = _random_corners((n, c, 1, 1), g)
            else:
                old = (patch * sq[:, None]).sum((2, 3))  # the colour of the one selected pixel
                colour = _other_corner(old, g)[:, :, None, None]
            new_p = torch.where(sq[:, None], colour, patch)
        same = (new_r == rows) & (new_c == cols) & (new_p == patch).flatten(1).all(1)
        active = (~fooled & ~same).nonzero()[:, 0]
        if len(active) == 0:
            continue
        f_new, l_new = query(active, new_p[active], new_r[active], new_c[active])
        queries[active] += 1
        if scorer.hard:
            accept = f_new | torch.tensor(cfg.hard_label == "walk").expand(len(active))
        else:
            accept = f_new | (l_new < loss[active])
        upd = active[accept]
        patch = patch.clone()
        patch[upd], rows[upd], cols[upd] = new_p[upd], new_r[upd], new_c[upd]
        loss[upd], fooled[upd] = l_new[accept], f_new[accept]
    return RandomSearchPatches(patch.to(x), Placement(rows, cols, zeros, ones), mask, fooled, queries)
