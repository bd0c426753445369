"""PatchCleanser certification (Xiang, Mahloujifar and Mittal, USENIX Security 2022) for any classifier.

PatchCleanser needs nothing of the model but its predictions, so it certifies every bit-width of a
model alike: it runs at whatever width :func:`qadtr_core.quant.set_bits` set.

- **Mask set** (:func:`mask_set`): for a ``p`` px patch on an ``n`` px side and a budget of ``k`` masks
  per side, the stride is ``s = ceil((n - p + 1) / k)``, the mask side ``m = p + s - 1`` (at most ``n``)
  and the mask positions ``0, s, 2s, ...`` with the last clamped to ``n - m``; the 2-D masks are the
  products of the 1-D positions. Every placement of the patch then lies entirely inside some mask
  (:func:`covers`). That gives ``ceil((n - p + 1) / s) <= k`` masks per side, as in the paper's code:
  fewer than ``k`` when the clamped last position coincides (e.g. 5 for ``n = 32, p = 8, k = 6``).
- **Masking** fills the masked pixels with a constant, ``fill`` (default 0.5, mid grey). PatchCleanser
  fills 0 *after* normalisation; for its ViT and BiT models (mean = std = 0.5) that is 0.5 in [0, 1].
  For our models (CIFAR-10 normalisation) the exact equivalent is the per-channel CIFAR-10 mean,
  ``fill=models.CIFAR10_MEAN`` (about 0.47); a per-channel tuple is accepted.
- **Double masking** (:func:`double_masking_predict`, the paper's Algorithm 1): the one-mask predictions
  first; unanimous -> that label (case I). Else, for every mask whose one-mask label differs from the
  majority label (a *disagreer*, in mask order), the two-mask predictions of that mask with every mask
  of the set (itself included); if they are unanimous the output is the disagreer's label (case II),
  else the next disagreer is tried; when none passes, the majority label (case III). At most one label
  can pass (the pair ``(i, j)`` is the same image as ``(j, i)``), so the order only sets the cost.
  Ties for the majority go to the largest label, which is what the paper's code does for up to 16 labels.
- **Certificate** (:func:`certify`): an image is certified for its label iff every two-mask prediction
  (``i == j`` included, i.e. the one-mask ones too) is the label; then no patch of at most ``p`` px
  anywhere on the image changes the double-masking prediction (the paper's Theorem 1).

All masked copies are built on the images' device and evaluated in batches of ``batch_size``; each
prediction is computed once and cached. Certification runs the one-mask round for every image (double
masking needs it anyway), and the two-mask round only for images whose one-mask predictions are all
right, each image stopping at the first batch that holds a wrong prediction: uncertified images cost
about ``K`` forward passes, certified ones ``K (K + 1) / 2`` (``K`` masks).

**Base models** (the masking fine-tune PatchCleanser gives its classifiers) are training strategies of
:func:`qadtr_core.train.train`, registered here: ``"masked"`` (:class:`MaskedTrainingConfig`: cross-entropy
on images carrying one or two random masks of the mask set, :func:`random_mask_augment`, at the config's
bit-width) and ``"masked_multiwidth"`` (:class:`MaskedMultiWidthConfig`: the same, the bit-width of a
switchable model drawn per batch with :func:`qadtr_core.train.draw_bits`'s "shuffle", so that every width
gets the same steps). :func:`qadtr_core.zoo.masked_config` and :func:`~qadtr_core.zoo.masked_multiwidth_config`
build the study's configs.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .quant import get_bits, set_bits
from .stats import Z95, Interval, wilson
from .train import BatchLoss, TrainConfig, check_bit_set, draw_bits, register_strategy
from .utils import eval_mode, seeded_generator

log = logging.getLogger(__name__)

Fill = float | tuple[float, ...]
# Images per internal chunk of certification (bounds the cached prediction maps, K x K per image).
_CHUNK = 1024


@dataclass(frozen=True)
class MaskSet:
    """A PatchCleanser mask set and its geometry (see module doc).

    Attributes:
        masks: bool ``(K, n, n)``, True where a mask covers the pixel, in row-major order of positions.
        image_size: the image side ``n`` (pixels).
        patch_size: the side ``p`` of the square patches the set covers (pixels).
        mask_size: the mask side ``m = p + s - 1`` (pixels, at most ``n``).
        stride: the stride ``s`` between mask positions (pixels).
        positions: the 1-D positions of the masks' top/left edges (pixels).
    """

    masks: torch.Tensor
    image_size: int
    patch_size: int
    mask_size: int
    stride: int
    positions: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def per_side(self) -> int:
        """Masks per side (``len(positions)``; at most the requested ``masks_per_side``)."""
        return len(self.positions)


def mask_set(image_size: int, patch_size: int, masks_per_side: int) -> MaskSet:
    """The paper's rectangular mask set for ``patch_size`` px patches on ``image_size`` px square images."""
    for name, v in (("image_size", image_size), ("patch_size", patch_size), ("masks_per_side", masks_per_side)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be at least 1 px, got {image_size}")
    if not 1 <= patch_size <= image_size:
        raise ValueError(f"patch size {patch_size} px must be from 1 to the image size {image_size} px")
    if masks_per_side < 1:
        raise ValueError(f"masks_per_side must be at least 1, got {masks_per_side}")
    n, p, k = image_size, patch_size, masks_per_side
    stride = math.ceil((n - p + 1) / k)
    size = min(p + stride - 1, n)
    positions = list(range(0, n - size + 1, stride))
    if positions[-1] != n - size:
        positions.append(n - size)
    if len(positions) < k:
        log.info("mask set for a %d px patch on %d px: %d masks per side (of %d asked)", p, n, len(positions), k)
    line = torch.zeros(len(positions), n, dtype=torch.bool)
    for t, pos in enumerate(positions):
        line[t, pos : pos + size] = True
    masks = (line[:, None, :, None] & line[None, :, None, :]).reshape(-1, n, n)
    if not covers(masks, p):
        raise AssertionError(f"internal error: the mask set for p={p}, n={n}, k={k} misses a patch location")
    return MaskSet(masks, n, p, size, stride, tuple(positions))


def _mask_tensor(masks: MaskSet | torch.Tensor) -> torch.Tensor:
    m = masks.masks if isinstance(masks, MaskSet) else masks
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.dim() != 3 or len(m) == 0:
        shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
        raise ValueError(f"masks must be a MaskSet or a non-empty bool tensor (K, H, W), got {shape}")
    return m


def uncovered(masks: MaskSet | torch.Tensor, patch_size: int) -> torch.Tensor:
    """Top-left corners ``(row, col)`` of the ``patch_size`` px patch placements no mask contains, ``(U, 2)``."""
    m = _mask_tensor(masks)
    h, w = m.shape[-2:]
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or not 1 <= patch_size <= min(h, w):
        raise ValueError(f"patch size {patch_size!r} px must be an integer from 1 to the image size {min(h, w)} px")
    # Masked pixels in each patch-sized window, per mask: a mask contains the patch iff all are masked.
    inside = F.avg_pool2d(m[:, None].double(), patch_size, stride=1) * patch_size**2
    contained = (inside > patch_size**2 - 0.5).any(0)[0]  # (H - p + 1, W - p + 1)
    return (~contained).nonzero()


def covers(masks: MaskSet | torch.Tensor, patch_size: int) -> bool:
    """True iff for every placement of a ``patch_size`` px square patch some mask contains the whole patch."""
    return len(uncovered(masks, patch_size)) == 0


def _fill_tensor(fill: Fill, channels: int, like: torch.Tensor) -> torch.Tensor:
    values = (fill,) * channels if isinstance(fill, (int, float)) and not isinstance(fill, bool) else tuple(fill)
    if len(values) != channels or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values):
        raise ValueError(f"fill must be a value in [0, 1] or one per channel ({channels}), got {fill!r}")
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, channels, 1, 1)


def _check_inputs(images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got {getattr(images, 'shape', type(images).__name__)}")
    if tuple(images.shape[-2:]) != tuple(masks.shape[-2:]):
        raise ValueError(f"masks are {tuple(masks.shape[-2:])} px, the images {tuple(images.shape[-2:])} px")
    if not torch.isfinite(images).all() or (images.numel() and (images.min() < 0 or images.max() > 1)):
        raise ValueError("images must be finite and in [0, 1]")
    if labels is not None and (labels.shape != (len(images),) or labels.dtype.is_floating_point):
        raise ValueError(f"labels must be integer class indices of shape ({len(images)},), got {tuple(labels.shape)}")


def _check_settings(fill: Fill, channels: int, batch_size: int) -> None:
    _fill_tensor(fill, channels, torch.zeros(0))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def apply_masks(images: torch.Tensor, masks: torch.Tensor, fill: Fill = 0.5) -> torch.Tensor:
    """``images`` with the pixels where ``masks`` (bool ``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)``) is True
    set to ``fill``."""
    m = masks.to(images.device)
    m = m[:, None] if m.dim() == 3 else m
    return torch.where(m, _fill_tensor(fill, images.shape[1], images), images)


class _PairOracle:
    """Base-model predictions on images with the union of masks ``i`` and ``j`` filled (``i == j``: one
    mask), computed on request in batches and cached: ``pred[n, i, j]`` (-1 until computed)."""

    def __init__(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, fill: Fill, batch_size: int) -> None:
        _check_settings(fill, images.shape[1], batch_size)
        self.model, self.x, self.batch_size = model, images, batch_size
        self.masks = masks.to(images.device)
        self.fill = _fill_tensor(fill, images.shape[1], images)
        n, k = len(images), len(masks)
        self.pred = torch.full((n, k, k), -1, dtype=torch.int32)
        self.forwards = torch.zeros(n, dtype=torch.long)

    def run(self, img: torch.Tensor, i: torch.Tensor, j: torch.Tensor, expect: torch.Tensor | None = None) -> None:
        """Compute the pairs ``(img[t], i[t], j[t])`` (CPU long tensors, grouped by image). With ``expect``
        (the label each item should get), an image's remaining items are dropped from the batch after
        one of its predictions differs from it."""
        todo = self.pred[img, i, j] < 0
        img, i, j = img[todo], i[todo], j[todo]
        expect = None if expect is None else expect[todo]
        stopped = torch.zeros(len(self.x), dtype=torch.bool)
        dev = self.x.device
        for start in range(0, len(img), self.batch_size):
            sl = slice(start, start + self.batch_size)
            b_img, b_i, b_j = img[sl], i[sl], j[sl]
            keep = ~stopped[b_img]
            if not keep.any():
                continue
            b_img, b_i, b_j = b_img[keep], b_i[keep], b_j[keep]
            di, dj = b_i.to(dev), b_j.to(dev)
            m = (self.masks[di] | self.masks[dj])[:, None]
            pred = self.model(torch.where(m, self.fill, self.x[b_img.to(dev)])).argmax(1).cpu().to(torch.int32)
            self.pred[b_img, b_i, b_j] = pred
            self.pred[b_img, b_j, b_i] = pred
            self.forwards += torch.bincount(b_img, minlength=len(self.x))
            if expect is not None:
                wrong = pred != expect[sl][keep].to(torch.int32)
                stopped[b_img[wrong]] = True

    def one_mask(self) -> torch.Tensor:
        """Compute (if needed) and return every image's one-mask predictions, ``(N, K)``."""
        n, k = self.pred.shape[:2]
        img = torch.arange(n).repeat_interleave(k)
        diag = torch.arange(k).repeat(n)
        self.run(img, diag, diag)
        return self.pred.diagonal(dim1=1, dim2=2)

    def double_masking(self) -> torch.Tensor:
        """The double-masking label of every image (Algorithm 1), ``(N,)`` on the CPU."""
        one = self.one_mask().long()
        n, k = one.shape
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        counts = torch.zeros(n, int(one.max()) + 1, dtype=torch.long).scatter_add_(1, one, torch.ones_like(one))
        top = counts.shape[1] - 1
        majority = top - counts.flip(1).argmax(1)  # ties -> the largest label
        out = majority.clone()
        disagree = one != majority[:, None]
        undecided = disagree.any(1)  # unanimous: case I, the label itself
        rank = disagree.long().cumsum(1) - 1  # the r-th disagreer of an image has rank r
        ar = torch.arange(k)
        for r in range(k):
            here = undecided & (disagree.sum(1) > r)
            if not here.any():
                break
            rows = here.nonzero()[:, 0]
            m0 = ((rank[rows] == r) & disagree[rows]).long().argmax(1)
            label = one[rows, m0]
            known = self.pred[rows, m0].long()
            hopeless = ((known >= 0) & (known != label[:, None])).any(1)  # a cached pair already disagrees
            rows, m0, label = rows[~hopeless], m0[~hopeless], label[~hopeless]
            self.run(rows.repeat_interleave(k), m0.repeat_interleave(k), ar.repeat(len(rows)), label.repeat_interleave(k))
            passed = (self.pred[rows, m0].long() == label[:, None]).all(1)
            out[rows[passed]] = label[passed]  # case II
            undecided[rows[passed]] = False
        return out  # the rest: case III, the majority label


@torch.no_grad()
def double_masking_predict(model: nn.Module, images: torch.Tensor, masks: MaskSet | torch.Tensor, fill: Fill = 0.5,
                           batch_size: int = 512, return_forwards: bool = False
                           ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """PatchCleanser's prediction for ``images`` (in [0, 1]) with ``model`` at its current bit-width, in eval
    mode: labels ``(N,)`` on the images' device; with ``return_forwards``, also the masked copies
    evaluated per image ``(N,)`` (CPU)."""
    m = _mask_tensor(masks)
    _check_inputs(images, m)
    _check_settings(fill, images.shape[1], batch_size)
    parts, forwards = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]
    with eval_mode(model):
        for s in range(0, len(images), _CHUNK):
            oracle = _PairOracle(model, images[s : s + _CHUNK], m, fill, batch_size)
            parts.append(oracle.double_masking())
            forwards.append(oracle.forwards)
    labels = torch.cat(parts).to(images.device)
    return (labels, torch.cat(forwards)) if return_forwards else labels


def double_masking_classifier(model: nn.Module, masks: MaskSet | torch.Tensor, fill: Fill = 0.5,
                              batch_size: int = 512) -> Callable[[torch.Tensor], torch.Tensor]:
    """The defended classifier as a function of images: labels by double masking (for black-box attacks)."""
    return lambda images: double_masking_predict(model, images, masks, fill, batch_size)


@dataclass(frozen=True)
class CertifyConfig:
    """PatchCleanser settings, in paper units.

    Attributes:
        patch_size: side of the square patch certified against, in pixels (8 = 6.25 % of a 32x32
            image, the study's threat). (Default: 8)
        masks_per_side: the budget ``k`` of masks per side (the paper's default 6, i.e. at most 36
            masks). (Default: 6)
        fill: value of masked pixels, in [0, 1], or one per channel (see module doc). (Default: 0.5)
        batch_size: masked copies per forward pass. (Default: 512)
    """

    patch_size: int = 8
    masks_per_side: int = 6
    fill: Fill = 0.5
    batch_size: int = 512

    def __post_init__(self) -> None:
        if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, int) or self.patch_size < 1:
            raise ValueError(f"patch_size must be a positive number of pixels, got {self.patch_size!r}")
        if isinstance(self.masks_per_side, bool) or not isinstance(self.masks_per_side, int) or self.masks_per_side < 1:
            raise ValueError(f"masks_per_side must be a positive integer, got {self.masks_per_side!r}")
        channels = len(self.fill) if isinstance(self.fill, tuple) else 1
        _check_settings(self.fill, channels, self.batch_size)


@dataclass
class CertifiedResult:
    """Per-image outcome of :func:`certify` (bool/long tensors ``(N,)`` on the CPU).

    Attributes:
        clean_correct: the undefended model classifies the clean image right.
        masked_correct: the double-masking prediction (``masked_pred``) is the label.
        certified: every two-mask prediction is the label (robust to any patch of ``patch_size`` px).
        masked_pred: the double-masking prediction.
        forwards: images the model evaluated per image (the clean one and the masked copies).
        seconds: wall-clock time of the whole call (all images).
        patch_size, num_masks, bits: the certified patch side, the size of the mask set and the
            model's bit-width during certification.
    """

    clean_correct: torch.Tensor
    masked_correct: torch.Tensor
    certified: torch.Tensor
    masked_pred: torch.Tensor
    forwards: torch.Tensor
    seconds: float
    patch_size: int
    num_masks: int
    bits: int

    def __len__(self) -> int:
        return len(self.certified)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / len(self) if len(self) else float("nan")

    def intervals(self, z: float = Z95) -> dict[str, Interval]:
        """Wilson intervals of clean, masked (double-masking) and certified accuracy over all images."""
        n = len(self)
        return {name: wilson(int(v.sum()), n, z) for name, v in (
            ("clean_accuracy", self.clean_correct), ("masked_accuracy", self.masked_correct),
            ("certified_accuracy", self.certified))}


@torch.no_grad()
def certify(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, masks: MaskSet | torch.Tensor | None = None,
            config: CertifyConfig = CertifyConfig()) -> CertifiedResult:
    """Certify ``images`` (in [0, 1]) for ``labels`` with ``model`` at its current bit-width, in eval mode.

    ``masks`` defaults to :func:`mask_set` of ``config.patch_size`` and ``config.masks_per_side``; given
    masks must cover every placement of a ``config.patch_size`` px patch. ``config.fill`` and
    ``config.batch_size`` apply either way.
    """
    start = time.perf_counter()
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got {getattr(images, 'shape', type(images).__name__)}")
    if masks is None:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"the default mask set needs square images, got {tuple(images.shape[-2:])}")
        masks = mask_set(images.shape[-1], config.patch_size, config.masks_per_side)
    m = _mask_tensor(masks)
    if isinstance(masks, MaskSet) and masks.patch_size != config.patch_size:
        raise ValueError(f"the mask set is for {masks.patch_size} px patches, config.patch_size is {config.patch_size}")
    _check_inputs(images, m, labels)
    if config.patch_size > min(images.shape[-2:]) or not covers(m, config.patch_size):
        raise ValueError(f"the masks do not cover every placement of a {config.patch_size} px patch; "
                         "a certificate needs a covering mask set (see mask_set)")
    labels_cpu = labels.cpu().long()
    k = len(m)
    upper = torch.triu_indices(k, k, offset=1)
    out: dict[str, list[torch.Tensor]] = {f: [] for f in ("clean", "masked", "cert", "pred", "fw")}
    with eval_mode(model):
        for s in range(0, len(images), _CHUNK):
            x, y = images[s : s + _CHUNK], labels_cpu[s : s + _CHUNK]
            oracle = _PairOracle(model, x, m, config.fill, config.batch_size)
            clean = torch.cat([model(x[t : t + config.batch_size]).argmax(1).cpu()
                               for t in range(0, len(x), config.batch_size)])
            one_ok = (oracle.one_mask().long() == y[:, None]).all(1)
            cand = one_ok.nonzero()[:, 0]
            img = cand.repeat_interleave(upper.shape[1])
            oracle.run(img, upper[0].repeat(len(cand)), upper[1].repeat(len(cand)), y[img])
            cert = (oracle.pred.long() == y[:, None, None]).flatten(1).all(1)
            pred = oracle.double_masking()
            out["clean"].append(clean == y)
            out["masked"].append(pred == y)
            out["cert"].append(cert)
            out["pred"].append(pred)
            out["fw"].append(oracle.forwards + 1)
    cat = {f: torch.cat(v) if v else torch.zeros(0, dtype=torch.bool if f in ("clean", "masked", "cert") else torch.long)
           for f, v in out.items()}
    return CertifiedResult(cat["clean"], cat["masked"], cat["cert"], cat["pred"], cat["fw"],
                           time.perf_counter() - start, config.patch_size, k, get_bits(model))


def random_mask_augment(x: torch.Tensor, masks: MaskSet | torch.Tensor, generator: torch.Generator, max_masks: int = 2,
                        fill: Fill = 0.5) -> torch.Tensor:
    """Mask every image of ``x`` with between 1 and ``max_masks`` masks drawn at random from the mask set.

    The number of masks per image is uniform in ``1..max_masks`` and the masks are drawn uniformly with
    replacement (from the CPU ``generator``), so a batch shows the model what double masking will: one-
    and two-mask images. (PatchCleanser fine-tuned its models with Cutout, two random squares per image;
    drawing from the mask set itself trains on exactly the masked images it will be asked about.)
    """
    m = _mask_tensor(masks)
    if isinstance(max_masks, bool) or not isinstance(max_masks, int) or max_masks < 1:
        raise ValueError(f"max_masks must be a positive integer, got {max_masks!r}")
    if x.dim() != 4 or tuple(x.shape[-2:]) != tuple(m.shape[-2:]):
        raise ValueError(f"x must be (N, C, {m.shape[-2]}, {m.shape[-1]}) to match the masks, got {tuple(x.shape)}")
    n = len(x)
    count = torch.randint(1, max_masks + 1, (n,), generator=generator)
    pick = torch.randint(len(m), (n, max_masks), generator=generator)
    used = (torch.arange(max_masks)[None] < count[:, None]).to(x.device)
    union = (m.to(x.device)[pick.to(x.device)] & used[:, :, None, None]).any(1)
    return apply_masks(x, union, fill)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class MaskedTrainingConfig:
    """PatchCleanser's masking fine-tune of a base model, as the params of the ``"masked"`` strategy.

    Every training image gets between 1 and ``max_masks`` masks drawn uniformly (with replacement) from
    the mask set of ``patch_size`` and ``masks_per_side`` for the batch's image size (:func:`mask_set`,
    :func:`random_mask_augment`), so the model learns on exactly the one- and two-mask images double
    masking will show it. (PatchCleanser fine-tuned with Cutout, two random squares per image; masks of
    the set itself are the reconstruction.) The masks of step ``t`` are drawn from ``(seed, t)``, so a
    resumed run repeats exactly.

    Attributes:
        patch_size: side (px) of the patch whose mask set the masks come from (the largest patch the
            model will be certified against: its masks are the largest).
        masks_per_side: the mask set's budget ``k`` per side (see :func:`mask_set`).
        max_masks: masks per image at most (uniform in ``1..max_masks``). (Default: 2, double masking's)
        fill: value of masked pixels in [0, 1], or one per channel (as :class:`CertifyConfig`). (Default: 0.5)
        seed: seeds the masks drawn. (Default: 0)
    """

    patch_size: int
    masks_per_side: int
    max_masks: int = 2
    fill: Fill = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        _check_positive_int("patch_size", self.patch_size)
        _check_positive_int("masks_per_side", self.masks_per_side)
        _check_positive_int("max_masks", self.max_masks)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        channels = len(self.fill) if isinstance(self.fill, tuple) else 1
        _fill_tensor(self.fill, channels, torch.zeros(0))


@dataclass(frozen=True)
class MaskedMultiWidthConfig:
    """The masking fine-tune of a switchable multi-width model (the ``"masked_multiwidth"`` strategy).

    Attributes:
        masking: the masks, as for one width.
        bit_set: the widths served; the width of step ``t`` is ``draw_bits(bit_set, masking.seed, t,
            "shuffle")``: random per batch, each width once in every run of ``len(bit_set)`` steps, so
            all get the same steps. (Default: (32, 8, 5, 4, 2), the study's bit set)
    """

    masking: MaskedTrainingConfig
    bit_set: tuple[int, ...] = (32, 8, 5, 4, 2)

    def __post_init__(self) -> None:
        if not isinstance(self.masking, MaskedTrainingConfig):
            raise ValueError(f"masking must be a MaskedTrainingConfig, got {type(self.masking).__name__}")
        check_bit_set(self.bit_set)

    def train_bits(self, step: int) -> int:
        """The width of training step ``step``."""
        return draw_bits(self.bit_set, self.masking.seed, step, "shuffle")


def masked_loss(config: MaskedTrainingConfig, label_smoothing: float = 0.0,
                multiwidth: MaskedMultiWidthConfig | None = None) -> BatchLoss:
    """Cross-entropy on randomly masked images (see :class:`MaskedTrainingConfig`) at the model's current
    width, or, with ``multiwidth``, at ``multiwidth.train_bits(step)``."""
    sets: dict[tuple[int, str], torch.Tensor] = {}

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"masked training needs square images, got {tuple(x.shape[-2:])}")
        key = (x.shape[-1], str(x.device))
        if key not in sets:
            sets[key] = mask_set(x.shape[-1], config.patch_size, config.masks_per_side).masks.to(x.device)
        if multiwidth is not None:
            set_bits(model, multiwidth.train_bits(step))
        masked = random_mask_augment(x, sets[key], seeded_generator(config.seed, step, 31), config.max_masks, config.fill)
        logits = model(masked)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return loss


def _masked_strategy(config: TrainConfig) -> BatchLoss:
    params = config.strategy_params
    if not isinstance(params, MaskedTrainingConfig):
        raise ValueError(f"strategy 'masked' needs a MaskedTrainingConfig as strategy_params, got {type(params).__name__}")
    return masked_loss(params, config.label_smoothing)


def _masked_multiwidth_strategy(config: TrainConfig) -> BatchLoss:
    params = config.strategy_params
    if not isinstance(params, MaskedMultiWidthConfig):
        raise ValueError("strategy 'masked_multiwidth' needs a MaskedMultiWidthConfig as strategy_params, "
                         f"got {type(params).__name__}")
    return masked_loss(params.masking, config.label_smoothing, params)


register_strategy("masked", _masked_strategy)
register_strategy("masked_multiwidth", _masked_multiwidth_strategy)
