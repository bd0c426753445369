"""Transfer across bit-widths: craft at (source model, s bits), evaluate at (target model, t bits).

Every attack reduces to *adversarial versions of the same evaluation images* per source; the
evaluation is then the same for patches and pixels: each target classifies the clean and the
adversarial images, and the attack success rate (ASR) follows ``protocol.md`` with its n. The result
is a tidy table (one row per source-target pair) and, from it, the source x target matrix.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..artifacts import cached_tensors
from ..attacks.image_patch import ImagePatchConfig, ImagePatches, image_patch_attack
from ..attacks.universal_patch import UniversalPatchAttack, UniversalPatchConfig
from ..data import to_float
from ..metrics import Rate, predict
from ..patches import Placement, apply_patch, make_mask, random_placement
from ..quant import bits as at_bits
from ..stats import Interval, wilson
from ..utils import Member, fingerprint
from .strength import MIN_PASSES, TOLERANCE, converge_universal

# Per-image outcomes of one (source, target) cell: (hits, valid), boolean arrays over the images.
# The rate is hits[valid].mean(); keeping the images lets every difference get a paired interval.
Outcomes = tuple[np.ndarray, np.ndarray]


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


def converged_universal_patch(source: Member, source_id: str, x_train: torch.Tensor, y_train: torch.Tensor,
                              config: UniversalPatchConfig, x_eval: torch.Tensor, y_eval: torch.Tensor, placement: Placement,
                              progress: bool = False) -> tuple[torch.Tensor, pd.DataFrame, dict[int, torch.Tensor]]:
    """A universal patch run until converged (:func:`~qadtr_core.evaluation.strength.converge_universal`), cached.

    The white-box ASR on ``(x_eval, y_eval)`` at ``placement`` decides when to stop. Returns the patch,
    its white-box strength curve (steps, asr, k, n, ci_low, ci_high, budget_exhausted) and the patch at
    every checkpoint, so that transfer along the curve can be evaluated on any target later.
    """

    mask = make_mask(config.size, config.shape)

    def white_box(patch: torch.Tensor) -> Rate:
        adv = apply_patch(x_eval, patch, mask, placement)
        k, n = rate_of(attack_outcomes(source[0], source[1], adv, x_eval, y_eval, config.target))
        return Rate(k, n, "universal patch ASR")

    def compute() -> dict:
        attack = UniversalPatchAttack([source], x_train, y_train, config)
        patch, curve, checkpoints = converge_universal(attack, white_box, progress=progress)
        return {"patch": patch.cpu(), "curve": curve.to_dict(orient="list"),
                "checkpoints": {str(k): v for k, v in checkpoints.items()}}

    key = {"attack": config, "source": source_id, "bits": source[1], "n_train": len(x_train),
           "eval": fingerprint(x_eval), "placement": [placement.rows.tolist(), placement.cols.tolist()],
           "stopping_rule": {"tolerance": TOLERANCE, "min_passes": MIN_PASSES, "on": "|gain|"}}
    out = cached_tensors("converged_universal_patches", key, compute)
    return out["patch"], pd.DataFrame(out["curve"]), {int(k): v for k, v in out["checkpoints"].items()}


def fp_universal_config(profile: Any, size: int, target: int | None, seed: int = 0) -> UniversalPatchConfig:
    """The universal patch crafted on the FP model under ``profile``: the doubling schedule up to the
    profile's convergence budget (the same config in every chapter that uses it)."""
    return UniversalPatchConfig(size=size, target=target, steps=profile.patch_max_steps, first_phase=profile.patch_first_phase,
                                batch_size=profile.patch_batch, seed=seed)


def fp_universal_patch(profile: Any, fp: Any, data: Any, size: int = 6, target: int | None = 0, seed: int = 0,
                       device: str | torch.device = "cpu", progress: bool = False
                       ) -> tuple[torch.Tensor, pd.DataFrame, dict[int, torch.Tensor], Placement]:
    """The converged universal patch of the FP model (a :class:`~qadtr_core.zoo.TrainedModel`) and its
    evaluation placements: the one patch the transferability, alignment, attribution and visibility
    chapters share (read from the cache when an earlier chapter crafted it)."""
    cfg = fp_universal_config(profile, size, target, seed)
    x_eval, y_eval = (t.to(device) for t in data.test_subset(profile.n_attack))
    x_train = to_float(data.x_train[: profile.n_patch_train]).to(device)
    place = evaluation_placement(len(x_eval), cfg, seed=seed + 12345)
    patch, curve, checkpoints = converged_universal_patch((fp.model, 32), fp.record["config_hash"], x_train,
                                                          data.y_train[: profile.n_patch_train].to(device), cfg, x_eval,
                                                          y_eval, place, progress=progress)
    return patch, curve, checkpoints, place


def image_patches_per_source(sources: Mapping[str, Member], source_ids: Mapping[str, str], images: torch.Tensor,
                             labels: torch.Tensor, config: ImagePatchConfig) -> dict[str, ImagePatches]:
    """Per-image patches (with their per-step success record) crafted at each source, cached."""

    out = {}
    for name, (model, b) in sources.items():
        def compute(model: nn.Module = model, b: int = b) -> dict[str, torch.Tensor]:
            with at_bits(model, b):
                found = image_patch_attack(model, images, labels, config)
            return {"patches": found.patches.cpu(), "rows": found.placement.rows.cpu(), "cols": found.placement.cols.cpu(),
                    "success": found.success}

        key = {"attack": config, "source": source_ids[name], "bits": b, "images": fingerprint(images)}
        d = cached_tensors("image_patches", key, compute)
        n = len(images)
        out[name] = ImagePatches(d["patches"], Placement(d["rows"], d["cols"], torch.zeros(n), torch.ones(n)),
                                 make_mask(config.size, config.shape), d["success"])
    return out


def evaluation_placement(n: int, config: UniversalPatchConfig, seed: int = 12345) -> Placement:
    """Fixed, seeded placements of the evaluation images (the same for every source and target)."""
    return random_placement(n, config.size, torch.Generator().manual_seed(seed), 32, config.avoid,
                            config.max_angle, config.scale_range)


def attack_outcomes(model: nn.Module, bits: int, adv: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                    target_class: int | None = None, clean_pred: torch.Tensor | None = None) -> Outcomes:
    """Per-image outcomes of ``adv`` on ``model`` at ``bits``, as the protocol defines ASR.

    Untargeted: valid = classified correctly when clean, hit = misclassified when attacked.
    Targeted: valid = label is not the target, hit = classified as the target when attacked.
    """
    with at_bits(model, bits):
        pred = predict(model, adv).cpu()
        if target_class is None:
            clean = (predict(model, images) if clean_pred is None else clean_pred).cpu()
            valid = clean == labels.cpu()
            hits = pred != labels.cpu()
        else:
            valid = labels.cpu() != target_class
            hits = pred == target_class
    return hits.numpy(), valid.numpy()


def clean_floor(model: nn.Module, bits: int, images: torch.Tensor, labels: torch.Tensor, target_class: int) -> Outcomes:
    """Targeted "ASR" of the clean images: non-target images the model already calls the target."""
    return attack_outcomes(model, bits, images, images, labels, target_class)


def random_patch_floor(model: nn.Module, bits: int, images: torch.Tensor, labels: torch.Tensor, size: int,
                       placement: Placement, target_class: int | None = None, shape: str = "square",
                       seed: int = 0, per_image: bool = False) -> Outcomes:
    """The null of a patch attack: outcomes (as :func:`attack_outcomes`) of a uniformly random patch of
    ``size`` and ``shape`` at ``placement``, one shared patch (a universal attack's null) or, with
    ``per_image``, one per image (a per-image attack's), drawn from ``seed``. Targeted, the floor is the
    larger of this and :func:`clean_floor` (images the model already calls the target), so that neither
    a patch nor the model's own bias passes for an attack."""
    g = torch.Generator().manual_seed(seed)
    c = images.shape[1]
    patch = torch.rand(*((len(images),) if per_image else ()), c, size, size, generator=g).to(images)
    adv = apply_patch(images, patch, make_mask(size, shape).to(images), placement)
    out = attack_outcomes(model, bits, adv, images, labels, target_class)
    if target_class is None:
        return out
    clean = clean_floor(model, bits, images, labels, target_class)
    return out if rate_of(out)[0] >= rate_of(clean)[0] else clean


def rate_of(outcomes: Outcomes) -> tuple[int, int]:
    """``(k, n)``: hits among valid images, and valid images."""
    hits, valid = outcomes
    return int((hits & valid).sum()), int(valid.sum())


def transfer_outcomes(adversarial: Mapping[str, torch.Tensor], targets: Mapping[str, Member], images: torch.Tensor,
                      labels: torch.Tensor, target_class: int | None = None) -> dict[tuple[str, str], Outcomes]:
    """Per-image outcomes of every source's adversarial images on every target."""
    clean = {}
    for name, (model, b) in targets.items():
        with at_bits(model, b):
            clean[name] = predict(model, images)
    out = {}
    for src, adv in adversarial.items():
        if adv.shape != images.shape:
            raise ValueError(f"adversarial images of source {src!r} have shape {tuple(adv.shape)}, "
                             f"expected {tuple(images.shape)}")
        for tgt, (model, b) in targets.items():
            out[(src, tgt)] = attack_outcomes(model, b, adv, images, labels, target_class, clean[tgt])
    return out


def outcome_table(outcomes: Mapping[tuple[str, str], Outcomes], target_class: int | None = None) -> pd.DataFrame:
    """Tidy table of :func:`transfer_outcomes`: source, target, asr, k, n, Wilson ci_low/ci_high, white_box."""
    definition = ("untargeted ASR over clean-correct images" if target_class is None
                  else f"targeted ASR (target {target_class}) over non-target images")
    rows = []
    for (src, tgt), o in outcomes.items():
        k, n = rate_of(o)
        ci = wilson(k, n)
        rows.append({"source": src, "target": tgt, "asr": ci.value, "ci_low": ci.low, "ci_high": ci.high, "k": k, "n": n,
                     "definition": definition, "white_box": src == tgt})
    return pd.DataFrame(rows)


def transfer_table(adversarial: Mapping[str, torch.Tensor], targets: Mapping[str, Member], images: torch.Tensor,
                   labels: torch.Tensor, target_class: int | None = None) -> pd.DataFrame:
    """ASR of every source's adversarial images on every target, with Wilson 95 % intervals.

    Args:
        adversarial: source name -> adversarial versions of ``images`` (same order).
        targets: target name -> (model, bit-width).
        images, labels: the clean evaluation images and their labels.
        target_class: the class of a targeted attack, or None for untargeted ASR.

    Returns:
        A tidy DataFrame: source, target, asr (a share), ci_low, ci_high, k, n, definition, white_box.
    """
    return outcome_table(transfer_outcomes(adversarial, targets, images, labels, target_class), target_class)


def _asr(o: Outcomes, index: np.ndarray | None) -> float:
    """The rate of ``o`` (over the images ``index``, a bootstrap draw); NaN where no image is valid, so that
    a resample without a valid image is dropped rather than scored 0."""
    hits, valid = (o[0], o[1]) if index is None else (o[0][index], o[1][index])
    n = int(valid.sum())
    return float((hits & valid).sum() / n) if n else float("nan")


def relative_transfer(outcomes: Mapping[tuple[str, str], Outcomes], names: list[str], index: np.ndarray | None = None,
                      floors: Mapping[str, Outcomes] | None = None) -> float:
    """Mean off-diagonal ASR over mean diagonal (white-box) ASR among ``names`` (sources = targets).

    With ``floors`` (target name -> outcomes of a null attack of the same kind on that target, e.g. a
    random patch), every ASR counts only its excess over the target's floor, so an attack that does
    nothing cannot look like one that transfers perfectly; NaN when the white-box excess is not positive.
    ``index`` resamples the images (a bootstrap draw); by default all images count once.
    """
    def excess(a: str, b: str) -> float:
        return _asr(outcomes[(a, b)], index) - (_asr(floors[b], index) if floors else 0.0)

    diag = float(np.mean([excess(a, a) for a in names]))
    off = float(np.mean([excess(a, b) for a in names for b in names if a != b]))
    return off / diag if diag > 1e-12 else float("nan")


def white_box_excess(outcomes: Mapping[tuple[str, str], Outcomes], names: list[str], floors: Mapping[str, Outcomes] | None,
                     index: np.ndarray | None = None) -> float:
    """Mean white-box ASR over ``names`` minus the mean floor (how much the attack does at all)."""
    return float(np.mean([_asr(outcomes[(a, a)], index) - (_asr(floors[a], index) if floors else 0.0) for a in names]))


def relative_transfer_interval(outcomes: Mapping[tuple[str, str], Outcomes], names: list[str],
                               baseline: Mapping[tuple[str, str], Outcomes] | None = None, n_boot: int = 1000,
                               seed: int = 0, floors: Mapping[str, Outcomes] | None = None,
                               baseline_floors: Mapping[str, Outcomes] | None = None) -> Interval:
    """Bootstrap interval (images resampled) of :func:`relative_transfer`, or of its difference to
    ``baseline``'s (the same images, the same resamples: a paired interval). Draws where a side's
    white-box excess vanishes are dropped; if the point estimate itself is undefined, all three are NaN."""
    def stat(idx: np.ndarray | None) -> float:
        value = relative_transfer(outcomes, names, idx, floors)
        return value - relative_transfer(baseline, names, idx, baseline_floors) if baseline else value

    n = len(next(iter(outcomes.values()))[0])
    point = stat(None)
    if np.isnan(point):
        return Interval(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draws = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)])
    draws = draws[~np.isnan(draws)]
    if not len(draws):  # no resample defines it
        return Interval(point, float("nan"), float("nan"))
    return Interval(point, float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975)))


def white_box_excess_interval(outcomes: Mapping[tuple[str, str], Outcomes], names: list[str],
                              floors: Mapping[str, Outcomes] | None, n_boot: int = 1000, seed: int = 0) -> Interval:
    """Bootstrap interval of :func:`white_box_excess` (images resampled, floors paired)."""
    n = len(next(iter(outcomes.values()))[0])
    rng = np.random.default_rng(seed)
    draws = np.array([white_box_excess(outcomes, names, floors, rng.integers(0, n, n)) for _ in range(n_boot)])
    draws = draws[~np.isnan(draws)]  # resamples without a valid image
    if not len(draws):
        return Interval(float("nan"), float("nan"), float("nan"))
    return Interval(white_box_excess(outcomes, names, floors), float(np.quantile(draws, 0.025)),
                    float(np.quantile(draws, 0.975)))


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
