"""Small hand-made data and models for tests and smoke runs (shipped in the package, like captum.testing)."""
from __future__ import annotations

import torch

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
