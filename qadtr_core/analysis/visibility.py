"""Patch visibility: how much of the image a patch needs, and how visible it is.

Three ways to make a patch less visible, each a pure function of the patched images:

- smaller **area** (pick the patch side from a share of the image, :func:`patch_side_for_share`);
- lower **opacity** ``alpha``: ``x * (1 - alpha M) + alpha P M`` (``alpha = 0`` leaves the image unchanged);
- an **L-inf budget** inside the patch: ``x + clip(P - x, -eps, eps)`` on the mask, so the patch
  perturbs the pixels it covers by at most ``eps``.

and two image-quality measures of patched against clean images, SSIM (Gaussian window, Wang et al.
2004) and PSNR.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..patches import Placement, apply_patch


def blend_patch(images: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor, placement: Placement,
                alpha: float = 1.0) -> torch.Tensor:
    """Paste the patch at opacity ``alpha`` in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"opacity {alpha} must be in [0, 1]")
    return apply_patch(images, patch, mask * alpha, placement)


def budget_patch(images: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor, placement: Placement,
                 eps: float) -> torch.Tensor:
    """Paste the patch but move every covered pixel by at most ``eps`` (L-inf) from its clean value."""
    if eps < 0:
        raise ValueError(f"L-inf budget {eps} must be >= 0")
    full = apply_patch(images, patch, mask, placement)
    return (images + (full - images).clamp(-eps, eps)).clamp(0, 1)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1] (inf for identical images)."""
    mse = (x - ref).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(x: torch.Tensor, ref: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM of images in [0, 1], averaged over channels and pixels (1 for identical images).

    A 7x7 Gaussian window (sigma 1.5) suits 32x32 images; constants as in Wang et al. (K1 0.01, K2 0.03).
    """
    c = x.shape[1]
    w = _gaussian_window(window, sigma).to(x).expand(c, 1, window, window)
    pad = window // 2

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), w, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = filt(x), filt(ref)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(ref * ref) - my**2, filt(x * ref) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)
