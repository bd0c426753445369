"""Certified robustness across bit-widths (chapter 09): per model, width and patch size, the bracket
certified robust accuracy <= true robust accuracy <= robust accuracy under our strongest attacks.

For each cell (a base model at a bit-width, a patch size ``p``), on the same ``n`` test images:

- **clean**: the base model's accuracy on the clean images;
- **masked clean**: the accuracy of PatchCleanser's double-masking predictor (:mod:`qadtr_core.certify`)
  on the clean images;
- **certified**: the share certified for their label against any ``p`` px patch anywhere
  (:func:`qadtr_core.certify.certify`): a lower bound on the true robust accuracy;
- **attacked robust**: the share the double-masking predictor still classifies right under the attacks,
  an upper bound on the true robust accuracy. A certified image cannot be broken, so it counts as robust
  without being attacked; an image double masking already gets wrong counts as broken. The rest (right
  but not certified) meet, in turn, (1) the per-image patch (:func:`qadtr_core.attacks.image_patch_attack`,
  Rao et al.) crafted on the base model, the patch anywhere (``avoid=None``, the certificate's threat),
  the patched image then classified by double masking, and (2) on the images (1) did not break, the
  gradient-free random search (:func:`qadtr_core.attacks.random_search_patch`) over patch location and
  content on the end-to-end hard-label double-masking predictor. An image is robust if neither breaks it.

**Does the upper bound's attack converge?** A weak attack only widens the bracket (the upper bound stays an
upper bound), but a reader needs to know how loose it may be. With ``half_budget`` the same two attacks run
again at half their budgets (half the per-image steps, half the queries; the same restarts and seeds), and
:func:`~qadtr_core.evaluation.strength.not_converged_reason`, the study's rule, reads the attack success rate
on the attacked images at half against full budget: converged when doubling added less than 2 points and
the attack breaks something.

So ``certified <= attacked robust <= masked clean`` holds in every cell by construction. Every rate has its
Wilson 95 % interval (:func:`qadtr_core.stats.wilson`).
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .attacks import ImagePatchConfig, RandomSearchConfig, image_patch_attack, random_search_patch
from .certify import CertifiedResult, CertifyConfig, Fill, certify, double_masking_classifier, double_masking_predict, mask_set
from .data import Cifar10, load_cifar10
from .evaluation.strength import not_converged_reason
from .profiles import Profile
from .quant import bits as at_bits
from .stats import wilson
from .train import check_bit_set
from .utils import bit_label, default_device
from .zoo import TrainedModel, get_or_train, masked_config, masked_multiwidth_config

RATES: tuple[str, ...] = ("clean", "masked_clean", "certified", "attacked_robust")
RATE_LABELS: dict[str, str] = {"clean": "clean", "masked_clean": "double masking, clean",
                               "certified": "certified robust", "attacked_robust": "attacked robust"}


@dataclass(frozen=True)
class CertifiedStudyConfig:
    """Budgets of the measurement (paper units).

    Attributes:
        patch_sizes: patch sides (px) certified against and attacked with. (Default: (4, 6, 8))
        masks_per_side: PatchCleanser's mask budget ``k`` per side. (Default: 6, the paper's)
        rs_queries: random-search queries per attacked image; 0 = no random search. (Default: 1000)
        image_patch_steps, image_patch_restarts: the per-image patch's budget; 0 steps = no per-image
            patch. (Default: 100 x 3, the protocol's)
        image_patch_location_opt: the per-image patch optimises its location too. (Default: True)
        fill: value of masked pixels (see :class:`qadtr_core.certify.CertifyConfig`). (Default: 0.5)
        batch_size: masked copies per forward pass. (Default: 512)
        seed: seeds both attacks. (Default: 0)
        half_budget: also run both attacks at half their budgets, to read whether doubling still breaks more
            (see the module doc). (Default: True)
    """

    patch_sizes: tuple[int, ...] = (4, 6, 8)
    masks_per_side: int = 6
    rs_queries: int = 1000
    image_patch_steps: int = 100
    image_patch_restarts: int = 3
    image_patch_location_opt: bool = True
    fill: Fill = 0.5
    batch_size: int = 512
    seed: int = 0
    half_budget: bool = True

    def __post_init__(self) -> None:
        if not self.patch_sizes or len(set(self.patch_sizes)) != len(self.patch_sizes):
            raise ValueError(f"patch_sizes must be distinct patch sides, at least one, got {self.patch_sizes!r}")
        for p in self.patch_sizes:
            if isinstance(p, bool) or not isinstance(p, int) or p < 1:
                raise ValueError(f"every patch size must be a positive number of pixels, got {p!r}")
        for name in ("rs_queries", "image_patch_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer (0 = that attack is not run), got {v!r}")
        if not isinstance(self.half_budget, bool):
            raise ValueError(f"half_budget must be True or False, got {self.half_budget!r}")
        if isinstance(self.image_patch_restarts, bool) or not isinstance(self.image_patch_restarts, int) \
                or self.image_patch_restarts < 1:
            raise ValueError(f"image_patch_restarts must be a positive integer, got {self.image_patch_restarts!r}")
        CertifyConfig(self.patch_sizes[0], self.masks_per_side, self.fill, self.batch_size)  # checks the rest

    @classmethod
    def from_profile(cls, profile: Profile, seed: int = 0, **overrides: Any) -> CertifiedStudyConfig:
        """The budgets of ``profile``: its ``certify_*`` fields (``certify_image_patch_steps`` and
        ``_restarts`` for the per-image patch) and ``image_patch_location_opt``."""
        values = dict(patch_sizes=tuple(profile.certify_patch_sizes), masks_per_side=profile.certify_masks_per_side,
                      rs_queries=profile.certify_rs_queries, image_patch_steps=profile.certify_image_patch_steps,
                      image_patch_restarts=profile.certify_image_patch_restarts,
                      image_patch_location_opt=profile.image_patch_location_opt, seed=seed)
        return cls(**{**values, **overrides})

    def halved(self) -> CertifiedStudyConfig | None:
        """The same attacks at half their budgets (steps and queries halved, rounded down), or None when an
        attack that runs has a budget of 1, which cannot be halved."""
        if self.image_patch_steps == 1 or self.rs_queries == 1:
            return None
        return replace(self, image_patch_steps=self.image_patch_steps // 2, rs_queries=self.rs_queries // 2,
                       half_budget=False)

    def certify_config(self, patch_size: int) -> CertifyConfig:
        return CertifyConfig(patch_size, self.masks_per_side, self.fill, self.batch_size)


PER_WIDTH, MULTI_WIDTH = "per-width", "multi-width"


def certified_models(profile: Profile, bit_widths: list[int] | tuple[int, ...],
                     multiwidth_bit_set: list[int] | tuple[int, ...] = (32, 8, 5, 4, 2), seed: int = 0,
                     data: Cifar10 | None = None, device: str | torch.device | None = None,
                     progress: bool = True) -> dict[str, dict[int, TrainedModel]]:
    """The masking-fine-tuned base models by kind and width: ``"per-width"`` (:func:`~qadtr_core.zoo.masked_config`
    at each of ``bit_widths``) and, unless ``multiwidth_bit_set`` is empty, ``"multi-width"`` (the one
    :func:`~qadtr_core.zoo.masked_multiwidth_config` model over ``multiwidth_bit_set``, under each of
    ``bit_widths``, which it must serve). Trained (and their parents) when not cached."""
    widths = check_bit_set(tuple(bit_widths))
    data = data or load_cifar10()
    device = device or default_device()
    get = lambda cfg: get_or_train(cfg, data, progress=progress, device=device)  # noqa: E731
    out = {PER_WIDTH: {b: get(masked_config(profile, b, seed)) for b in widths}}
    if multiwidth_bit_set:
        served = check_bit_set(tuple(multiwidth_bit_set))
        if missing := [b for b in widths if b not in served]:
            raise ValueError(f"the multi-width bit set {served} does not serve the widths {missing}; "
                             f"allowed widths: {', '.join(map(str, served))}")
        mw = get(masked_multiwidth_config(profile, served, seed))
        out[MULTI_WIDTH] = {b: mw for b in widths}
    return out


@dataclass
class CertifiedCell:
    """One model at one width against one patch size (bool tensors ``(N,)`` on the CPU).

    Attributes:
        result: the certification (clean, double-masking and certified per image; its cost).
        attacked: the images the attacks ran on (double masking right, not certified).
        broken_image_patch: broken by the per-image patch (through double masking).
        broken_random_search: broken by the random search (run on the attacked images the per-image
            patch left).
        robust: double masking right and not broken (certified images included).
        rs_queries_spent: random-search queries per image (0 where it did not run), long ``(N,)``.
        seconds, certify_seconds, image_patch_seconds, random_search_seconds: wall time of the cell, and of
            its certification, per-image patch (with its double-masking check) and random search.
        broken_half: broken by the two attacks at half their budgets (``config.half_budget``; None where
            they did not run or a budget could not be halved).
        half_seconds: wall time of that second run.
    """

    result: CertifiedResult
    attacked: torch.Tensor
    broken_image_patch: torch.Tensor
    broken_random_search: torch.Tensor
    robust: torch.Tensor
    rs_queries_spent: torch.Tensor
    seconds: float
    certify_seconds: float
    image_patch_seconds: float = 0.0
    random_search_seconds: float = 0.0
    broken_half: torch.Tensor | None = None
    half_seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.robust)

    def counts(self) -> dict[str, int]:
        """Images right per rate (:data:`RATES`)."""
        r = self.result
        return {"clean": int(r.clean_correct.sum()), "masked_clean": int(r.masked_correct.sum()),
                "certified": int(r.certified.sum()), "attacked_robust": int(self.robust.sum())}

    def attack_success(self) -> tuple[int, int, int | None]:
        """Images attacked, broken by the attacks at their budgets, and broken at half (None if not run)."""
        attacked = int(self.attacked.sum())
        broken = int((self.broken_image_patch | self.broken_random_search).sum())
        half = None if self.broken_half is None else int(self.broken_half.sum())
        return attacked, broken, half

    def not_converged(self) -> str | None:
        """Why the attacks behind the upper bound do not count as converged (None if they do), by the
        study's rule on their success rate over the attacked images (see the module doc). None too when no
        image was left to attack: the upper bound is then the certified share itself."""
        attacked, broken, half = self.attack_success()
        if attacked == 0:  # every image right under double masking is certified: the bracket is closed
            return None
        return not_converged_reason(broken / attacked, None if half is None else half / attacked, n=attacked)


def certified_cell(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, patch_size: int,
                   config: CertifiedStudyConfig = CertifiedStudyConfig()) -> CertifiedCell:
    """Certify and attack ``images`` (in [0, 1], on the model's device) for ``labels`` with ``model`` at its
    current bit-width against ``patch_size`` px patches (see the module doc)."""
    t0 = time.perf_counter()
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be square (N, C, H, H), got {tuple(images.shape)}")
    if not 1 <= patch_size <= images.shape[-1]:
        raise ValueError(f"patch size {patch_size} px must be from 1 to the image size {images.shape[-1]} px")
    masks = mask_set(images.shape[-1], patch_size, config.masks_per_side)
    result = certify(model, images, labels, masks, config.certify_config(patch_size))
    certify_seconds = time.perf_counter() - t0
    attacked = result.masked_correct & ~result.certified
    broken_ip, broken_rs, queries, ip_seconds, rs_seconds = _attacks(model, images, labels, attacked, masks, patch_size,
                                                                     config)
    robust = result.masked_correct & ~broken_ip & ~broken_rs
    broken_half, t_half = None, time.perf_counter()
    half = config.halved() if config.half_budget else None
    if half is not None:
        ip_half, rs_half, *_ = _attacks(model, images, labels, attacked, masks, patch_size, half)
        broken_half = ip_half | rs_half
    t3 = time.perf_counter()
    return CertifiedCell(result, attacked, broken_ip, broken_rs, robust, queries, t3 - t0, certify_seconds, ip_seconds,
                         rs_seconds, broken_half, t3 - t_half)


def _attacks(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attacked: torch.Tensor, masks: torch.Tensor,
             patch_size: int, config: CertifiedStudyConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    """The per-image patch, then the random search on what it left, on the ``attacked`` images (bool ``(N,)``):
    broken by each (bool ``(N,)``), queries spent per image, and the seconds of each."""
    n, dev = len(images), images.device
    y = labels.to(dev)
    broken_ip = torch.zeros(n, dtype=torch.bool)
    broken_rs = torch.zeros(n, dtype=torch.bool)
    queries = torch.zeros(n, dtype=torch.long)
    t1 = time.perf_counter()
    if attacked.any() and config.image_patch_steps > 0:
        idx = attacked.nonzero()[:, 0]
        ip = ImagePatchConfig(size=patch_size, steps=config.image_patch_steps, restarts=config.image_patch_restarts,
                              location_opt=config.image_patch_location_opt, avoid=None, seed=config.seed)
        xa, ya = images[idx.to(dev)], y[idx.to(dev)]
        adv = image_patch_attack(model, xa, ya, ip).apply(xa).detach()
        pred = double_masking_predict(model, adv, masks, config.fill, config.batch_size)
        broken_ip[idx] = (pred != ya).cpu()
    t2 = time.perf_counter()
    left = attacked & ~broken_ip
    if left.any() and config.rs_queries > 0:
        idx = left.nonzero()[:, 0]
        rs = RandomSearchConfig(size=patch_size, queries=config.rs_queries, avoid=None, seed=config.seed)
        out = random_search_patch(double_masking_classifier(model, masks, config.fill, config.batch_size),
                                  images[idx.to(dev)], labels[idx.to(labels.device)].cpu(), rs)
        broken_rs[idx] = out.fooled
        queries[idx] = out.queries
    return broken_ip, broken_rs, queries, t2 - t1, time.perf_counter() - t2


@dataclass
class CertifiedTable:
    """The measurement over models, widths and patch sizes.

    Attributes:
        table: one row per (model, bits, patch): ``n``, ``masks_per_side`` (asked), ``num_masks`` (the
            set's size), each rate of :data:`RATES` as a share with ``<rate>_ci_low`` / ``<rate>_ci_high``,
            ``n_attacked``, ``broken_image_patch``, ``broken_random_search`` (counts), the budgets and the
            seconds of :class:`CertifiedCell`; ``attack_asr`` and ``attack_asr_half_budget`` (the attacks' success
            over the attacked images at their budgets and at half; NaN where unknown), ``attack_converged`` and
            ``attack_not_converged`` (why not, in words; empty when converged).
        per_image: one row per (model, bits, patch, image): ``clean``, ``masked_clean``, ``certified``,
            ``attacked_robust`` (booleans), ``label``, ``masked_pred``, ``rs_queries``.
        cells: the :class:`CertifiedCell` of every row, by ``(model, bits, patch)``.
    """

    table: pd.DataFrame
    per_image: pd.DataFrame
    cells: dict[tuple[str, int, int], CertifiedCell]


def certified_table(models: Mapping[str, Mapping[int, nn.Module]], images: torch.Tensor, labels: torch.Tensor,
                    config: CertifiedStudyConfig = CertifiedStudyConfig(), progress: bool = False) -> CertifiedTable:
    """:func:`certified_cell` for every model (by name: ``{bits: module}``; a multi-width model appears under
    each of its widths) and every patch size of ``config``; each model runs at its width for its cells and
    gets its previous width back."""
    rows, per_image, cells = [], [], {}
    todo = [(name, b, m, p) for name, per in models.items() for b, m in per.items() for p in config.patch_sizes]
    for name, b, model, p in tqdm(todo, disable=not progress, desc="certify", leave=False):
        with at_bits(model, b):
            cell = certified_cell(model, images, labels, p, config)
        cells[(name, b, p)] = cell
        counts, n = cell.counts(), len(cell)
        row: dict[str, Any] = {"model": name, "bits": b, "patch": p, "n": n, "masks_per_side": config.masks_per_side,
                               "num_masks": cell.result.num_masks}
        for rate in RATES:
            ci = wilson(counts[rate], n)
            row.update({rate: ci.value, f"{rate}_ci_low": ci.low, f"{rate}_ci_high": ci.high})
        attacked, broken, half = cell.attack_success()
        why = cell.not_converged()
        row.update({"attack_asr": broken / attacked if attacked else float("nan"),
                    "attack_asr_half_budget": half / attacked if attacked and half is not None else float("nan"),
                    "attack_converged": why is None, "attack_not_converged": why or ""})
        row.update({"n_attacked": attacked, "broken_image_patch": int(cell.broken_image_patch.sum()),
                    "broken_random_search": int(cell.broken_random_search.sum()), "rs_queries": config.rs_queries,
                    "image_patch_steps": config.image_patch_steps, "image_patch_restarts": config.image_patch_restarts,
                    "seconds": cell.seconds, "certify_seconds": cell.certify_seconds,
                    "image_patch_seconds": cell.image_patch_seconds, "random_search_seconds": cell.random_search_seconds,
                    "half_budget_seconds": cell.half_seconds})
        rows.append(row)
        r = cell.result
        per_image.append(pd.DataFrame({
            "model": name, "bits": b, "patch": p, "image": range(n), "label": labels.cpu().numpy(),
            "clean": r.clean_correct.numpy(), "masked_clean": r.masked_correct.numpy(), "certified": r.certified.numpy(),
            "attacked_robust": cell.robust.numpy(), "masked_pred": r.masked_pred.numpy(),
            "rs_queries": cell.rs_queries_spent.numpy()}))
    per = pd.concat(per_image, ignore_index=True) if per_image else pd.DataFrame()
    return CertifiedTable(pd.DataFrame(rows), per, cells)


ENTRY_FIELDS: tuple[str, ...] = ("model", "bits", "patch", "n",
                                 *(f"{r}{s}" for r in RATES for s in ("", "_ci_low", "_ci_high")),
                                 "masks_per_side", "num_masks", "seconds", "attack_asr", "attack_asr_half_budget",
                                 "attack_converged")


def certified_entries(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of :attr:`CertifiedTable.table` as ``certified.json`` entries (fractions, plain Python types; an
    unknown rate, NaN in the table, as None)."""
    out = []
    for row in table.to_dict("records"):
        entry = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items() if k in ENTRY_FIELDS}
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in entry.items()})
    return out


def _cell_columns(table: pd.DataFrame) -> dict[str, Any]:
    """The columns that name a cell for readers: model, bit-width (FP, 4b, ...) and patch."""
    return {"model": table["model"], "bit-width": table["bits"].map(bit_label),
            "patch": [f"{p}x{p} px" for p in table["patch"]]}


def _cell_text(value: float, low: float, high: float) -> str:
    return f"{100 * value:.1f} % [{100 * low:.1f}, {100 * high:.1f}]"


def reader_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table for readers: one row per model, width and patch; each rate in percent with one decimal and
    its Wilson 95 % interval in the same cell; human column names."""
    out = pd.DataFrame({**_cell_columns(table), "n": table["n"], "masks": table["num_masks"]})
    for rate in RATES:
        out[RATE_LABELS[rate]] = [_cell_text(v, lo, hi) for v, lo, hi in
                                  zip(table[rate], table[f"{rate}_ci_low"], table[f"{rate}_ci_high"])]
    out["gap (attacked - certified)"] = [f"{100 * (a - c):.1f} points" for a, c in zip(table["attacked_robust"],
                                                                                         table["certified"])]
    return out


def attack_table(table: pd.DataFrame) -> pd.DataFrame:
    """What the attacks behind the upper bound did, for readers: per cell the images attacked (double masking
    right, not certified), those broken by the per-image patch and by the random search on what it left,
    the attacks' success over the attacked images at half and at full budget with the convergence reading,
    and the seconds of each part (certification, each attack, the half-budget run, the whole cell)."""
    return pd.DataFrame({
        **_cell_columns(table),
        "attacked": table["n_attacked"],
        "broken: per-image patch": table["broken_image_patch"],
        "broken: random search": table["broken_random_search"],
        "attack success, half -> full budget": [
            _convergence_text(full, half, ok) for full, half, ok in
            zip(table["attack_asr"], table["attack_asr_half_budget"], table["attack_converged"])],
        **{f"{label} (s)": [f"{v:.0f}" for v in table[col]] for label, col in (
            ("certify", "certify_seconds"), ("per-image patch", "image_patch_seconds"),
            ("random search", "random_search_seconds"), ("half budget", "half_budget_seconds"), ("cell", "seconds"))},
    })


def _convergence_text(full: float, half: float, converged: bool) -> str:
    verdict = "converged" if converged else "not converged"
    if math.isnan(full):
        return f"nothing to attack ({verdict})"
    if math.isnan(half):
        return f"{100 * full:.1f} % (half budget not run; {verdict})"
    return f"{100 * half:.1f} % -> {100 * full:.1f} % ({100 * (full - half):+.1f} points; {verdict})"
