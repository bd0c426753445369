"""Gradient alignment across bit-widths (TriQDef Table 3): cosine, edge IoU and HOG cosine.

The input gradient of the loss is computed for the same images at several bit-widths; each pair of
bit-widths is then compared per image with three metrics:

- **cosine**: cosine similarity of the raw gradients (sign-sensitive: negated maps give -1);
- **edge IoU**: IoU of the strongest Sobel edges of the gradient-magnitude maps (the top
  ``edge_quantile`` of edge strength per image);
- **HOG cosine**: cosine of histogram-of-oriented-gradients descriptors of the magnitude maps
  (cells of ``cell`` pixels, ``bins`` unsigned orientations), a structural similarity.

Edge IoU and HOG read the magnitude ``sum_c |g_c|``, so they ignore the sign. A ``region`` mask
restricts every metric to, e.g., the inside or the outside of a patch.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..quant import bits as at_bits
from ..utils import bit_label, eval_mode

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bit_widths: Sequence[int]) -> dict[int, torch.Tensor]:
    """d CE(model(x), y) / d x at each bit-width (eval mode), as ``{bits: (N, C, H, W)}``."""
    out = {}
    with eval_mode(model):
        for b in bit_widths:
            xb = x.detach().clone().requires_grad_(True)
            with at_bits(model, b):
                out[b], = torch.autograd.grad(F.cross_entropy(model(xb), y, reduction="sum"), xb)
    return out


def member_gradients(members: dict[str, tuple[nn.Module, int]], x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Input gradients of the same images for several (model, bit-width) members, by member name."""
    return {name: input_gradients(model, x, y, [b])[b] for name, (model, b) in members.items()}


def _flat(g: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    return (g if region is None else g * region).flatten(1)


def cosine(g1: torch.Tensor, g2: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image cosine similarity of two gradient batches (optionally inside ``region``)."""
    return F.cosine_similarity(_flat(g1, region), _flat(g2, region), dim=1, eps=1e-20)


def magnitude(g: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` gradient-magnitude map: the sum of absolute values over channels."""
    return g.abs().sum(1, keepdim=True)


def sobel(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical Sobel responses of ``(N, 1, H, W)`` maps (replicate padding)."""
    kx = _SOBEL_X.to(m)[None, None]
    padded = F.pad(m, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kx), F.conv2d(padded, kx.transpose(2, 3))


def edge_map(g: torch.Tensor, quantile: float = 0.9) -> torch.Tensor:
    """Boolean ``(N, 1, H, W)``: pixels whose Sobel edge strength is in the top ``1 - quantile`` of the image."""
    gx, gy = sobel(magnitude(g))
    strength = (gx**2 + gy**2).sqrt().flatten(1)
    thresh = torch.quantile(strength, quantile, dim=1, keepdim=True)
    return ((strength >= thresh) & (strength > 0)).view_as(gx)


def edge_iou(g1: torch.Tensor, g2: torch.Tensor, region: torch.Tensor | None = None, quantile: float = 0.9) -> torch.Tensor:
    """Per-image IoU of the edge maps of two gradient batches (1 for identical or negated maps)."""
    e1, e2 = edge_map(g1, quantile), edge_map(g2, quantile)
    if region is not None:
        r = region.bool().expand_as(e1)
        e1, e2 = e1 & r, e2 & r
    inter = (e1 & e2).flatten(1).sum(1).float()
    union = (e1 | e2).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def hog(m: torch.Tensor, cell: int = 4, bins: int = 9) -> torch.Tensor:
    """HOG descriptors ``(N, bins * cells)`` of ``(N, 1, H, W)`` maps: magnitude-weighted histograms of
    unsigned gradient orientation in ``cell x cell`` cells, each cell L2-normalised."""
    gx, gy = sobel(m)
    mag = (gx**2 + gy**2).sqrt()
    ang = torch.atan2(gy, gx) % math.pi  # unsigned orientation in [0, pi)
    idx = (ang / math.pi * bins).long().clamp_(0, bins - 1)
    onehot = F.one_hot(idx[:, 0], bins).permute(0, 3, 1, 2).to(m) * mag  # (N, bins, H, W)
    cells = F.avg_pool2d(onehot, cell) * cell * cell  # (N, bins, H/cell, W/cell)
    cells = cells / cells.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return cells.flatten(1)


def hog_cosine(g1: torch.Tensor, g2: torch.Tensor, region: torch.Tensor | None = None, cell: int = 4,
               bins: int = 9) -> torch.Tensor:
    """Per-image cosine of the HOG descriptors of the two magnitude maps (optionally inside ``region``)."""
    m1, m2 = magnitude(g1), magnitude(g2)
    if region is not None:
        m1, m2 = m1 * region, m2 * region
    return F.cosine_similarity(hog(m1, cell, bins), hog(m2, cell, bins), dim=1, eps=1e-20)


METRICS = {"cosine": cosine, "edge IoU": edge_iou, "HOG cosine": hog_cosine}


def pairwise_alignment(grads: dict, region: torch.Tensor | None = None,
                       pairs: Sequence[tuple] | None = None) -> pd.DataFrame:
    """Tidy per-image table: pair ("fp-4b"), metric, image index, value, for every pair of bit-widths."""
    pairs = pairs or list(itertools.combinations(grads, 2))
    rows = []
    for a, b in pairs:
        for name, fn in METRICS.items():
            values = fn(grads[a], grads[b], region)
            rows += [{"pair": f"{bit_label(a)}-{bit_label(b)}", "metric": name, "image": i, "value": float(v)}
                     for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def mismatched_alignment(grads: dict, region: torch.Tensor | None = None, pairs: Sequence[tuple] | None = None,
                         shift: int = 1) -> pd.DataFrame:
    """The chance baseline of :func:`pairwise_alignment`: the same pairs and metrics, but the second
    gradient of each pair belongs to another image (the batch rolled by ``shift``).

    Gradient maps of unrelated images share generic structure (smoothness, border effects, the HOG
    of any natural-looking map), so a similarity is only evidence of alignment above this baseline.
    """
    if len(next(iter(grads.values()))) < 2:
        raise ValueError("the mismatched baseline needs at least two images")
    rolled = {k: g.roll(shift, 0) for k, g in grads.items()}
    pairs = pairs or list(itertools.combinations(grads, 2))
    rows = []
    for a, b in pairs:
        for name, fn in METRICS.items():
            r = None if region is None else region
            values = fn(grads[a], rolled[b], r)
            rows += [{"pair": f"{bit_label(a)}-{bit_label(b)}", "metric": name, "image": i, "value": float(v)}
                     for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and n per pair and metric, in TriQDef Table 3's layout (metrics x pairs)."""
    g = table.groupby(["metric", "pair"], sort=False)["value"]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(), "n": g.count()}).reset_index()
