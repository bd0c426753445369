"""Patch masks and batched placement: the one way a patch is put on an image.

A patch is a ``(C, s, s)`` tensor in [0, 1] with a ``(1, s, s)`` mask (square, circle, or a bar: a
rectangle of a quarter of the side across the whole width, e.g. 4x16 in a 16 px box). Placement is
batched: every image gets its own location (top-left corner, in pixels) and optionally its own
rotation (degrees) and scale. Without rotation or scale the paste is pixel-exact (indexing); with them
it goes through ``affine_grid``/``grid_sample`` (bilinear). Both are differentiable in the patch.
Sizes are stated in pixels; :func:`area_share` gives the share of the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Shape = Literal["square", "circle", "bar"]
Box = tuple[int, int, int, int]  # (row, col, height, width)


def central_box(size: int = 10, image_size: int = 32) -> Box:
    """The central ``size x size`` region (Rao et al. exclude the central 10x10 on CIFAR-10)."""
    start = (image_size - size) // 2
    return (start, start, size, size)


def make_mask(size: int, shape: Shape = "square", image_size: int = 32) -> torch.Tensor:
    """A ``(1, size, size)`` float mask: all ones (square), the inscribed disc (circle), or a horizontal bar
    ``max(1, size // 4)`` px high across the whole width, centred vertically (bar: 4x16 in a 16 px box).
    Placement and the region a patch must avoid go by the ``size x size`` box, whatever the shape."""
    if not isinstance(size, int) or not 1 <= size <= image_size:
        raise ValueError(f"patch size {size!r} px must be an integer from 1 to the image size {image_size}")
    if shape == "square":
        return torch.ones(1, size, size)
    if shape == "circle":
        c = (size - 1) / 2
        yy, xx = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
        return ((yy**2 + xx**2) <= (size / 2) ** 2).float()[None]
    if shape == "bar":
        h = max(1, size // 4)
        top = (size - h) // 2
        mask = torch.zeros(1, size, size)
        mask[:, top:top + h] = 1.0
        return mask
    raise ValueError(f"unknown patch shape {shape!r}; allowed: 'square', 'circle', 'bar'")


def area_share(mask: torch.Tensor, image_size: int = 32) -> float:
    """Share of the image the mask covers (6x6 square on 32x32: 0.0352)."""
    return float(mask.sum()) / image_size**2


@dataclass(frozen=True)
class Placement:
    """Where each image of a batch gets its patch: top-left ``rows``/``cols`` (pixels), ``angles``
    (degrees) and ``scales``, each of shape ``(N,)``."""

    rows: torch.Tensor
    cols: torch.Tensor
    angles: torch.Tensor
    scales: torch.Tensor

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def is_plain(self) -> bool:
        return bool((self.angles == 0).all() and (self.scales == 1).all())

    def subset(self, idx: torch.Tensor | slice) -> Placement:
        return Placement(self.rows[idx], self.cols[idx], self.angles[idx], self.scales[idx])


def fixed_placement(n: int, row: int, col: int) -> Placement:
    """The same location for all ``n`` images, no rotation or scale."""
    full = lambda v: torch.full((n,), v, dtype=torch.long)  # noqa: E731
    return Placement(full(row), full(col), torch.zeros(n), torch.ones(n))


def _extent(size: int, angles: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Side of the axis-aligned box that holds the rotated, scaled patch (pixels)."""
    a = torch.deg2rad(angles)
    return torch.ceil(size * scales * (a.cos().abs() + a.sin().abs()) - 1e-6).long()


def random_placement(
    n: int,
    size: int,
    generator: torch.Generator,
    image_size: int = 32,
    avoid: Box | None = None,
    max_angle: float = 0.0,
    scale_range: tuple[float, float] = (1.0, 1.0),
) -> Placement:
    """Uniform random locations (and rotations in ``[-max_angle, max_angle]``, scales in ``scale_range``)
    such that the whole patch lies inside the image and its bounding box misses ``avoid``."""
    if size > image_size:
        raise ValueError(f"patch size {size} px is larger than the image ({image_size} px)")
    angles = (torch.rand(n, generator=generator) * 2 - 1) * max_angle
    lo, hi = scale_range
    scales = lo + torch.rand(n, generator=generator) * (hi - lo)
    ext = _extent(size, angles, scales)
    if (ext > image_size).any():
        raise ValueError(f"a {size} px patch scaled up to {hi} and rotated by {max_angle} deg "
                         f"does not fit a {image_size} px image")
    tries = 64
    span = (image_size - ext + 1).float()[:, None]
    # Bounding-box corners; the patch's own top-left is centred inside the box below.
    r = (torch.rand(n, tries, generator=generator) * span).long()
    c = (torch.rand(n, tries, generator=generator) * span).long()
    ok = torch.ones(n, tries, dtype=torch.bool)
    if avoid is not None:
        ar, ac, ah, aw = avoid
        e = ext[:, None]
        ok = (r + e <= ar) | (r >= ar + ah) | (c + e <= ac) | (c >= ac + aw)
    if not ok.any(1).all():
        raise ValueError(f"no location for a {size} px patch avoids the region {avoid} in a {image_size} px image")
    first = ok.float().argmax(1)
    pick = lambda t: t.gather(1, first[:, None])[:, 0]  # noqa: E731
    offset = (ext - size) // 2  # top-left of the unrotated patch, centred in its box
    return Placement(pick(r) + offset, pick(c) + offset, angles, scales)


def _check(images: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor, placement: Placement) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    s = patch.shape[-1]
    if patch.dim() not in (3, 4) or patch.shape[-2] != s or patch.shape[-3] != c:
        raise ValueError(f"patch must be ({c}, s, s) or (N, {c}, s, s), got {tuple(patch.shape)}")
    if s > min(h, w):
        raise ValueError(f"patch size {s} px is larger than the image ({h}x{w} px)")
    if mask.shape[-2:] != (s, s):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the patch size {s}")
    if len(placement) != n:
        raise ValueError(f"placement is for {len(placement)} images, the batch has {n}")
    if not torch.isfinite(patch).all() or not torch.isfinite(images).all():
        raise ValueError("images and patch must be finite (found NaN or inf)")
    if placement.is_plain:
        bad = (placement.rows < 0) | (placement.cols < 0) | (placement.rows + s > h) | (placement.cols + s > w)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"location (row {int(placement.rows[i])}, col {int(placement.cols[i])}) puts a {s} px "
                             f"patch outside the {h}x{w} image; allowed rows/cols: 0..{h - s}")


def apply_patch(images: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor, placement: Placement) -> torch.Tensor:
    """Paste ``patch`` (shared ``(C,s,s)`` or per-image ``(N,C,s,s)``) through ``mask`` into ``images``.

    ``out = images * (1 - M) + P * M`` with ``P``, ``M`` the placed patch and mask. Differentiable
    with respect to ``patch`` (and ``images``).
    """
    _check(images, patch, mask, placement)
    n, c, h, w = images.shape
    s = patch.shape[-1]
    mask = mask.to(images)
    patch = patch.to(images)
    if placement.is_plain:
        ar = torch.arange(s, device=images.device)
        rows = (placement.rows.to(images.device)[:, None] + ar)[:, :, None]  # (N, s, 1)
        cols = (placement.cols.to(images.device)[:, None] + ar)[:, None, :]  # (N, 1, s)
        idx = torch.arange(n, device=images.device)[:, None, None]
        hwc = images.permute(0, 2, 3, 1)
        region = hwc[idx, rows, cols]  # (N, s, s, C)
        p = patch.movedim(-3, -1)  # (s, s, C) or (N, s, s, C)
        m = mask.movedim(-3, -1)
        out = hwc.clone()
        out[idx, rows, cols] = region * (1 - m) + p * m
        return out.permute(0, 3, 1, 2)
    # Rotation/scale: draw patch and mask centred on an empty canvas, then move them with one affine warp.
    pad = ((h - s) // 2, h - s - (h - s) // 2)
    padc = ((w - s) // 2, w - s - (w - s) // 2)
    canvas_p = F.pad(patch.expand(n, c, s, s), (padc[0], padc[1], pad[0], pad[1]))
    canvas_m = F.pad(mask.expand(n, 1, s, s), (padc[0], padc[1], pad[0], pad[1]))
    if h != w:
        raise ValueError(f"rotated or scaled patches need square images, got {h}x{w}")
    a = torch.deg2rad(placement.angles.to(images))
    k = 1.0 / placement.scales.to(images)
    cos, sin = torch.cos(a) * k, torch.sin(a) * k
    # affine_grid maps each output point u to the canvas point v = A (u - u_c) + c: A rotates and
    # shrinks about the patch centre u_c (where it should land) and c is its centre on the canvas.
    ucy = 2 * (placement.rows.to(images) + s / 2) / h - 1
    ucx = 2 * (placement.cols.to(images) + s / 2) / w - 1
    cy, cx = 2 * (pad[0] + s / 2) / h - 1, 2 * (padc[0] + s / 2) / w - 1
    theta = torch.stack([torch.stack([cos, sin, cx - cos * ucx - sin * ucy], 1),
                         torch.stack([-sin, cos, cy + sin * ucx - cos * ucy], 1)], 1)
    grid = F.affine_grid(theta, (n, c + 1, h, w), align_corners=False)
    warped = F.grid_sample(torch.cat([canvas_p, canvas_m], 1), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    p, m = warped[:, :c], warped[:, c:]
    return images * (1 - m) + p * m


def bounding_mask(placement: Placement, size: int, image_size: int = 32) -> torch.Tensor:
    """``(N, 1, H, W)`` boolean map of each image's patch box (for in/out-of-patch analyses)."""
    n = len(placement)
    ext = _extent(size, placement.angles, placement.scales)
    off = (ext - size) // 2
    r0, c0 = placement.rows - off, placement.cols - off
    ar = torch.arange(image_size)
    inside_r = (ar[None] >= r0[:, None]) & (ar[None] < (r0 + ext)[:, None])
    inside_c = (ar[None] >= c0[:, None]) & (ar[None] < (c0 + ext)[:, None])
    return (inside_r[:, :, None] & inside_c[:, None, :])[:, None].expand(n, 1, image_size, image_size)


def patch_side_for_share(share: float, image_size: int = 32) -> int:
    """The square patch side (pixels) whose area is closest to ``share`` of the image."""
    return max(1, round(math.sqrt(share) * image_size))
