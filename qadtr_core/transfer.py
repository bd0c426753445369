"""Transfer across bit-widths: craft at (source model, s bits), evaluate at (target model, t bits).

Every attack reduces to *adversarial versions of the same evaluation images* per source; the
evaluation is then the same for patches and pixels: each target classifies the clean and the
adversarial images, and the attack success rate (ASR) follows ``protocol.md`` with its n. The result
is a tidy table (one row per source-target pair) and, from it, the source x target matrix.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd
import torch
from torch import nn

from .artifacts import cached_tensors
from .attacks.universal_patch import UniversalPatchAttack, UniversalPatchConfig
from .metrics import predict, targeted_asr, untargeted_asr
from .patches import Placement, apply_patch, make_mask, random_placement
from .quant import bits as at_bits

Member = tuple[nn.Module, int]


def patched_versions(patches: Mapping[str, torch.Tensor], images: torch.Tensor, mask: torch.Tensor,
                     placement: Placement) -> dict[str, torch.Tensor]:
    """The evaluation images with each source's universal patch at the same placements."""
    return {src: apply_patch(images, p, mask, placement).detach() for src, p in patches.items()}


def craft_per_source(sources: Mapping[str, Member], craft: Callable[[nn.Module], torch.Tensor],
                     cache_keys: Mapping[str, object] | None = None, kind: str = "adversarial") -> dict[str, torch.Tensor]:
    """Run ``craft(model)`` once per source, with the model switched to the source's bit-width.

    With ``cache_keys`` (source name -> everything the result depends on), results are cached in the
    artifact store under ``kind`` and reused.
    """
    out = {}
    for name, (model, b) in sources.items():
        def run(model: nn.Module = model, b: int = b) -> dict[str, torch.Tensor]:
            with at_bits(model, b):
                return {"x": craft(model).detach()}
        out[name] = (cached_tensors(kind, cache_keys[name], run) if cache_keys else run())["x"]
    return out


def universal_patches(sources: Mapping[str, Member], images: torch.Tensor, labels: torch.Tensor,
                      config: UniversalPatchConfig, cache_keys: Mapping[str, object] | None = None,
                      progress: bool = False) -> dict[str, torch.Tensor]:
    """One universal patch per source, crafted at the source's bit-width (cached when keys are given)."""
    def craft(model: nn.Module) -> torch.Tensor:
        return UniversalPatchAttack([(model, getattr(model, "qadtr_bits", 32))], images, labels, config).run(progress=progress)

    keys = {k: {"attack": config, "source": v, "n_images": len(images)} for k, v in cache_keys.items()} if cache_keys else None
    return craft_per_source(sources, craft, keys, kind="universal_patches")


def evaluation_placement(n: int, config: UniversalPatchConfig, seed: int = 12345) -> Placement:
    """Fixed, seeded placements of the evaluation images (the same for every source and target)."""
    return random_placement(n, config.size, torch.Generator().manual_seed(seed), 32, config.avoid,
                            config.max_angle, config.scale_range)


def transfer_table(adversarial: Mapping[str, torch.Tensor], targets: Mapping[str, Member], images: torch.Tensor,
                   labels: torch.Tensor, target_class: int | None = None) -> pd.DataFrame:
    """ASR of every source's adversarial images on every target.

    Args:
        adversarial: source name -> adversarial versions of ``images`` (same order).
        targets: target name -> (model, bit-width).
        images, labels: the clean evaluation images and their labels.
        target_class: the class of a targeted attack, or None for untargeted ASR.

    Returns:
        A tidy DataFrame: source, target, asr (a share), k, n, definition, white_box (source == target).
    """
    clean = {}
    for name, (model, b) in targets.items():
        with at_bits(model, b):
            clean[name] = predict(model, images)
    rows = []
    for src, adv in adversarial.items():
        if adv.shape != images.shape:
            raise ValueError(f"adversarial images of source {src!r} have shape {tuple(adv.shape)}, expected {tuple(images.shape)}")
        for tgt, (model, b) in targets.items():
            with at_bits(model, b):
                pred = predict(model, adv)
            rate = untargeted_asr(clean[tgt], pred, labels) if target_class is None else targeted_asr(pred, labels, target_class)
            rows.append({"source": src, "target": tgt, "asr": rate.value, "k": rate.k, "n": rate.n,
                         "definition": rate.definition, "white_box": src == tgt})
    return pd.DataFrame(rows)


def add_relative(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``relative``: each ASR divided by its source's white-box ASR (source == target)."""
    wb = table[table.white_box].set_index("source")["asr"]
    out = table.copy()
    out["white_box_asr"] = out["source"].map(wb)
    out["relative"] = out["asr"] / out["white_box_asr"]
    return out


def asr_matrix(table: pd.DataFrame, value: str = "asr") -> pd.DataFrame:
    """The source x target matrix of ``value`` (rows: sources, columns: targets, in table order)."""
    order_s = list(dict.fromkeys(table["source"]))
    order_t = list(dict.fromkeys(table["target"]))
    return table.pivot(index="source", columns="target", values=value).loc[order_s, order_t]
