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
    return Rate(int((adv_pred[keep] == target).sum()), int(keep.sum()),
                f"targeted ASR (target {target}) over non-target images")


def robust_accuracy(clean_pred: torch.Tensor, adv_pred: torch.Tensor, y: torch.Tensor) -> Rate:
    """Over *all* images: the share classified correctly both when clean and when attacked (a model that is
    wrong everywhere scores 0, never "robust")."""
    return Rate(int(((clean_pred == y) & (adv_pred == y)).sum()), len(y), "robust accuracy over all images")


def input_gradient_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250) -> float:
    """Mean over images of the L2 norm of d cross-entropy / d input at the model's current width (eval
    mode): a gradient-masking indicator, read against the undefended model's at the same width."""
    import torch.nn.functional as F

    total = 0.0
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].detach().requires_grad_(True)
            loss = F.cross_entropy(model(xb), y[i:i + batch_size], reduction="sum")
            grad, = torch.autograd.grad(loss, xb)
            total += float(grad.flatten(1).norm(dim=1).sum())
    return total / len(x)
