"""Spatial sensitivity with Captum: where does each bit-width look, and how much at the patch?

Four attribution methods give one non-negative ``(N, 1, H, W)`` map per image:

- **Occlusion** with a patch-sized window (the primary map: it needs no gradients, so
  straight-through artefacts cannot fool it); evidence = drop of the target logit, positive part;
- **Saliency**: absolute input gradient (a straight-through surrogate on a quantized model);
- **Integrated Gradients** (batched with ``internal_batch_size`` to bound memory), positive part;
- **LayerGradCam** on the last block, upsampled to the image, positive part.

:func:`in_region_share` gives the share of a map's mass inside a region (the patch), and
:func:`location_asr` the targeted ASR of a patch at every position of a grid.
"""
from __future__ import annotations

from typing import Literal

import pandas as pd
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency
from torch import nn

from ..metrics import predict, targeted_asr
from ..patches import apply_patch, fixed_placement
from ..utils import eval_mode

Method = Literal["occlusion", "saliency", "integrated_gradients", "gradcam"]
METHODS: tuple[str, ...] = ("occlusion", "saliency", "integrated_gradients", "gradcam")


def last_block(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM reads: the last residual block of a CIFAR ResNet, the last activation of the small CNN."""
    if hasattr(model, "layers"):
        return model.layers[-1]
    if hasattr(model, "acts"):
        return model.acts[-1]
    raise ValueError(f"no Grad-CAM layer known for {type(model).__name__}; pass `layer=`")


def attribution_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: Method, window: int = 8,
                    stride: int = 4, ig_steps: int = 32, internal_batch_size: int = 64,
                    layer: nn.Module | None = None) -> torch.Tensor:
    """Non-negative attribution maps ``(N, 1, H, W)`` of ``target`` at the model's current bit-width."""
    with eval_mode(model):
        c = x.shape[1]
        x = x.detach().clone().requires_grad_(method != "occlusion")  # captum would switch it on with a warning
        if method == "occlusion":
            attr = Occlusion(model).attribute(x, target=target, sliding_window_shapes=(c, window, window),
                                              strides=(c, stride, stride), baselines=0.0)
            out = attr.clamp_min(0).sum(1, keepdim=True)
        elif method == "saliency":
            out = Saliency(model).attribute(x, target=target, abs=True).sum(1, keepdim=True)
        elif method == "integrated_gradients":
            attr = IntegratedGradients(model).attribute(x, target=target, n_steps=ig_steps,
                                                        internal_batch_size=internal_batch_size)
            out = attr.clamp_min(0).sum(1, keepdim=True)
        elif method == "gradcam":
            cam = LayerGradCam(model, layer or last_block(model)).attribute(x, target=target)
            out = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear").clamp_min(0)
        else:
            raise ValueError(f"unknown attribution method {method!r}; allowed: {', '.join(METHODS)}")
    return out.detach()


def in_region_share(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per-image share of attribution mass inside ``region`` (``(N or 1, 1, H, W)``, 0/1); NaN for an empty map."""
    total = maps.flatten(1).sum(1)
    inside = (maps * region).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.full_like(total, float("nan")))


def location_asr(model: nn.Module, x: torch.Tensor, y: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor,
                 target: int, stride: int = 2) -> pd.DataFrame:
    """Targeted ASR of ``patch`` placed at every grid position (top-left ``row``, ``col``; step ``stride`` px)."""
    s, h = patch.shape[-1], x.shape[-1]
    rows = []
    for r in range(0, h - s + 1, stride):
        for c in range(0, h - s + 1, stride):
            adv = apply_patch(x, patch, mask, fixed_placement(len(x), r, c))
            rate = targeted_asr(predict(model, adv), y, target)
            rows.append({"row": r, "col": c, "asr": rate.value, "n": rate.n})
    return pd.DataFrame(rows)
