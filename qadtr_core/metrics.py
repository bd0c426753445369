"""Clean accuracy and attack success rates, exactly as ``protocol.md`` defines them.

Every rate comes with its ``n``: the number of images the rate is a share of.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .utils import eval_mode


@dataclass(frozen=True)
class Rate:
    """A share ``k / n`` with its definition, so that no rate is reported without its n."""

    k: int
    n: int
    definition: str

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def __str__(self) -> str:
        return f"{100 * self.value:.1f} % (n={self.n}, {self.definition})"


def check_target(target: int | None, num_classes: int) -> None:
    """Raise ``ValueError`` unless ``target`` is None (untargeted) or a class index below ``num_classes``."""
    if target is not None and not 0 <= target < num_classes:
        raise ValueError(f"target class {target} out of range; allowed: 0..{num_classes - 1} or None (untargeted)")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels of ``x`` (images in [0, 1]) at the model's current bit-width, in eval mode."""
    with eval_mode(model):
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> Rate:
    """Share of ``x`` classified as ``y``."""
    pred = predict(model, x, batch_size)
    return Rate(int((pred == y).sum()), len(y), "clean accuracy")


def untargeted_asr(clean_pred: torch.Tensor, adv_pred: torch.Tensor, y: torch.Tensor) -> Rate:
    """Among images classified correctly when clean, the share misclassified when attacked."""
    ok = clean_pred == y
    return Rate(int((adv_pred[ok] != y[ok]).sum()), int(ok.sum()), "untargeted ASR over clean-correct images")


def targeted_asr(adv_pred: torch.Tensor, y: torch.Tensor, target: int) -> Rate:
    """Among images whose label is not ``target``, the share classified as ``target`` when attacked."""
    keep = y != target
    return Rate(int((adv_pred[keep] == target).sum()), int(keep.sum()), f"targeted ASR (target {target}) over non-target images")
