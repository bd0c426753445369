"""Small hand-made data and models for tests and smoke runs (shipped in the package, like captum.testing)."""
from __future__ import annotations

import torch
from torch import nn

from .data import Cifar10


def synthetic_cifar(n_train: int = 256, n_test: int = 64, seed: int = 0) -> Cifar10:
    """A learnable stand-in for CIFAR-10: class ``c`` is noise plus a bright square at a class-specific place.

    Images are uint8 ``(N, 3, 32, 32)`` like the real set, so every code path (augmentation included) runs.
    """
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 10
        x = torch.randint(0, 100, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        for c in range(10):
            r, col = 4 + 6 * (c // 4), 4 + 7 * (c % 4)
            x[y == c, c % 3, r : r + 6, col : col + 6] = 250
        return x, y

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return Cifar10(xtr, ytr, xte, yte, source=f"synthetic(seed={seed})")


class ChannelMeanModel(nn.Module):
    """``logits = W @ mean_colour(x)``: class 0 likes red and dislikes green and blue (weights +-5),
    class 1 the opposite; the other eight classes score 0. A patch that is pure red pushes towards 0."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.zeros(10, 3)
        w[0] = torch.tensor([5.0, -5.0, -5.0])
        w[1] = torch.tensor([-5.0, 5.0, 5.0])
        self.register_buffer("w", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) @ self.w.T


class RegionModel(nn.Module):
    """Looks only at the region ``rows x cols``: ``logits = W @ mean_colour(x[..., rows, cols])``."""

    def __init__(self, rows: slice = slice(0, 8), cols: slice = slice(0, 8)) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols
        self.inner = ChannelMeanModel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x[..., self.rows, self.cols])


def colour_images(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 3x12x12 images of one dominant colour of varying strength: red ones are class 0 and green-blue
    ones class 1 for a mean-colour model, some by a wide margin, some by a hair (certification tests)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 3, 12, 12, generator=g) * 0.2
    strength = torch.linspace(0.05, 0.8, n // 2)
    x[: n // 2, 0] += strength[:, None, None] + 0.2
    x[n // 2 :, 1:] += (strength[:, None, None, None] / 2 + 0.1)
    y = torch.cat([torch.zeros(n // 2, dtype=torch.long), torch.ones(n // 2, dtype=torch.long)])
    return x.clamp(0, 1), y


class TwoWidthToy(nn.Module):
    """A two-width toy on the mean colour whose widths disagree: at 32 bits class 0 wins while red exceeds
    green (``10 (r - g)``), at 2 bits while blue stays below 0.37 (``10 (0.37 - b)``). A patch crafted at
    one width moves only that width's colours; only one crafted against both flips both."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, g, b = x.mean((2, 3)).unbind(1)
        margin = 10 * (r - g) if getattr(self, "qadtr_bits", 32) == 32 else 10 * (0.37 - b)
        out = torch.zeros(len(x), 10)
        out[:, 0], out[:, 1] = margin / 2, -margin / 2
        return out
