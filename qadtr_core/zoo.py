"""The one door to every trained model: ``get_or_train(config)``.

A model is named by the hash of its full :class:`~qadtr_core.train.TrainConfig` (its parent's config
included), cached under ``artifacts/models/<hash>/`` with a record of its provenance, and trained only
when no valid checkpoint exists. So any notebook can run alone, and a warm cache retrains nothing.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .artifacts import (
    CorruptArtifact,
    artifact_dir,
    cache_version,
    file_lock,
    load_tensors,
    provenance,
    read_json,
    save_tensors,
    write_json,
)
from .certify import MaskedMultiWidthConfig, MaskedTrainingConfig
from .data import Cifar10, load_cifar10, to_float
from .models import build_model
from .profiles import Profile
from .quant import FULL_PRECISION, check_bits, prepare_bits, set_bits
from .quant import bits as at_bits
from .train import BatchLoss, MultiWidthConfig, TrainConfig, check_bit_set, strategy_loss, train, trained_widths
from .utils import default_device

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """A model ready for evaluation (eval mode, at ``config.bits``) and its provenance record."""

    model: nn.Module
    config: TrainConfig
    record: dict[str, Any]


def fp_config(profile: Profile, seed: int = 0) -> TrainConfig:
    """Full-precision training from scratch under ``profile``'s budget (one-cycle SGD)."""
    return TrainConfig(arch=profile.arch, epochs=profile.fp_epochs, lr=profile.fp_lr, batch_size=profile.batch_size,
                       n_train=profile.n_train, schedule="onecycle", seed=seed, profile=profile.name)


def qat_config(profile: Profile, bits: int, seed: int = 0) -> TrainConfig:
    """QAT fine-tuning at ``bits`` from the full-precision model (cosine decay)."""
    check_bits(bits)
    parent = fp_config(profile, seed)
    if bits == FULL_PRECISION:
        return parent
    return dataclasses.replace(parent, bits=bits, epochs=profile.qat_epochs_for(bits), lr=profile.qat_lr, schedule="cosine",
                               init=parent)


def multiwidth_shares(profile: Profile, bit_set: tuple[int, ...]) -> tuple[int, ...]:
    """Epochs of the multi-width model at each width of ``bit_set``: that width's QAT epochs
    (``profile.qat_epochs_for``); at 32 bits, whose FP parent is already 32-bit trained, the smallest QAT
    budget of the set (1 when the set is 32 bits alone), a stated reconstruction choice."""
    low = [profile.qat_epochs_for(b) for b in bit_set if b != FULL_PRECISION]
    return tuple(profile.qat_epochs_for(b) if b != FULL_PRECISION else min(low, default=1) for b in bit_set)


def multiwidth_config(profile: Profile, bit_set: tuple[int, ...] = (32, 8, 5, 4, 2), seed: int = 0) -> TrainConfig:
    """The undefended multi-width model over ``bit_set``, fine-tuned from the full-precision model.

    Plain cross-entropy, same batch, images and learning rate as the per-width QAT models; each width
    gets exactly the steps its QAT model gets (:func:`multiwidth_shares` epochs' worth), visited in a fixed
    interleaved order (:func:`~qadtr_core.train.interleave`; e.g. at 2 bits four times as often as at 8
    bits when QAT gives them 4 and 1 epochs). The starting point of DWQ and QADT-R and the clean-accuracy
    reference of C5.
    """
    bit_set = check_bit_set(tuple(bit_set))
    parent = fp_config(profile, seed)
    shares = multiwidth_shares(profile, bit_set)
    return dataclasses.replace(parent, epochs=sum(shares), lr=profile.qat_lr, schedule="cosine", init=parent,
                               strategy="multiwidth", strategy_params=MultiWidthConfig(bit_set, shares))


def masked_config(profile: Profile, bits: int, seed: int = 0, patch_size: int | None = None) -> TrainConfig:
    """PatchCleanser's base model at ``bits``: the QAT model (the FP model at 32 bits) fine-tuned with the
    masking augmentation (strategy "masked", :class:`~qadtr_core.certify.MaskedTrainingConfig`).

    ``profile.certify_epochs`` epochs at every width (equal steps), at the QAT learning rate with cosine
    decay, on the masks of ``profile.certify_masks_per_side`` for ``patch_size`` px patches (default: the
    largest of ``profile.certify_patch_sizes``, whose masks are the largest; one model serves every size).
    """
    check_bits(bits)
    parent = qat_config(profile, bits, seed)
    params = MaskedTrainingConfig(_masking_patch(profile, patch_size), profile.certify_masks_per_side, seed=seed)
    return dataclasses.replace(parent, epochs=profile.certify_epochs, lr=profile.qat_lr, schedule="cosine", init=parent,
                               strategy="masked", strategy_params=params)


def masked_multiwidth_config(profile: Profile, bit_set: tuple[int, ...] = (32, 8, 5, 4, 2), seed: int = 0,
                             patch_size: int | None = None) -> TrainConfig:
    """The multi-width model (:func:`multiwidth_config` over ``bit_set``) fine-tuned with the masking
    augmentation at every width of ``bit_set`` in turn (strategy "masked_multiwidth": the width drawn per
    batch without replacement within each run of ``len(bit_set)`` batches), ``len(bit_set) x
    profile.certify_epochs`` epochs: each width gets the steps of one per-width :func:`masked_config`."""
    bit_set = check_bit_set(tuple(bit_set))
    parent = multiwidth_config(profile, bit_set, seed)
    masking = MaskedTrainingConfig(_masking_patch(profile, patch_size), profile.certify_masks_per_side, seed=seed)
    return dataclasses.replace(parent, epochs=profile.certify_epochs * len(bit_set), lr=profile.qat_lr,
                               schedule="cosine", init=parent, strategy="masked_multiwidth",
                               strategy_params=MaskedMultiWidthConfig(masking, bit_set))


def _masking_patch(profile: Profile, patch_size: int | None) -> int:
    if patch_size is not None:
        return patch_size
    if not profile.certify_patch_sizes:
        raise ValueError(f"profile {profile.name!r} certifies no patch size; give patch_size")
    return max(profile.certify_patch_sizes)


def get_or_train(
    config: TrainConfig,
    data: Cifar10 | None = None,
    loss_fn: BatchLoss | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    gpu_data: bool | None = None,
    bf16: bool = False,
) -> TrainedModel:
    """Load the model of ``config`` from the cache, training it (and its parents) if needed.

    ``loss_fn`` overrides the batch loss; by default it is built from ``config.strategy`` and
    ``config.strategy_params`` (standard cross-entropy, PBAT, DWQ or QADT-R). The model is returned on
    ``device`` (default: :func:`~qadtr_core.utils.default_device`) and trained there, parents included;
    checkpoints are always written from CPU copies. Training holds the artifact's inter-process lock
    (:func:`~qadtr_core.artifacts.file_lock`), so two processes never train the same model.

    Runtime options (not part of the config, so they do not change the cache key; recorded in the
    model's record): ``gpu_data`` keeps the training images on the GPU (default: on when ``device`` is
    CUDA); ``bf16`` trains under bfloat16 autocast on CUDA (default off: that it stays within noise of
    fp32 has not been shown yet, which needs a GPU run). Both are ignored on the CPU.
    """
    device = device or default_device()
    d = artifact_dir("models", config)
    if (tm := _load_cached(config, d, device)) is not None:
        return tm
    with file_lock(d):
        if (tm := _load_cached(config, d, device)) is not None:  # built by another process while we waited
            return tm
        return _train_model(config, d, data, loss_fn, progress, device, gpu_data, bf16)


def _load_cached(config: TrainConfig, d, device: str | torch.device) -> TrainedModel | None:
    """The cached model of ``config`` in ``d`` on ``device``, or None (absent or corrupt)."""
    ckpt, rec_path = d / "model.pt", d / "record.json"
    model = build_model(config.arch)  # type: ignore[arg-type]
    if ckpt.exists() and rec_path.exists():
        try:
            model.load_state_dict(load_tensors(ckpt))
            record = read_json(rec_path)
            set_bits(model, config.bits).eval()
            return TrainedModel(model.to(device), config, record)
        except (CorruptArtifact, RuntimeError) as e:
            log.warning("rebuilding %s: %s", d.name, e)
    return None


def _train_model(config: TrainConfig, d, data: Cifar10 | None, loss_fn: BatchLoss | None, progress: bool,
                 device: str | torch.device, gpu_data: bool | None, bf16: bool) -> TrainedModel:
    """Train ``config`` (its parents first, on the same device) and write it to ``d``; the caller holds the lock."""
    ckpt, rec_path = d / "model.pt", d / "record.json"
    on_cuda = torch.device(device).type == "cuda"
    gpu_data = on_cuda if gpu_data is None else bool(gpu_data and on_cuda)
    bf16 = bool(bf16 and on_cuda)
    data = data or load_cifar10()
    torch.manual_seed(config.seed)
    model = build_model(config.arch)  # type: ignore[arg-type]
    if config.init is not None:
        parent = get_or_train(config.init, data, progress=progress, device=device, gpu_data=gpu_data, bf16=bf16)
        model.load_state_dict(parent.model.state_dict())
        # every width the strategy trains at and the parent did not starts from the parent's BatchNorms;
        # a width the parent trained keeps its learned BatchNorm and quantizer steps
        for b in sorted(trained_widths(config) - trained_widths(config.init)):
            prepare_bits(model, b, source_bits=config.init.bits)
    model.to(device)
    start = copy.deepcopy(model) if config.init is not None and config.strategy not in ("standard", "multiwidth") else None
    t0 = time.perf_counter()

    train_data = (dataclasses.replace(data, x_train=data.x_train.to(device), y_train=data.y_train.to(device)) if gpu_data
                  else data)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        history = train(model, train_data, config, checkpoint=d / "train_state.pt",
                        loss_fn=loss_fn or strategy_loss(config), progress=progress)
    record = {
        "config": config,
        "config_hash": d.name,  # the versioned cache key: what patches and tables name this model by
        "cache_version": cache_version("models"),
        "profile": config.profile,
        "seed": config.seed,
        "bits": config.bits,
        "n_train": min(config.n_train, len(data.x_train)),
        "history": history,
        "train_seconds": sum(h["seconds"] for h in history),
        "wall_seconds_this_run": time.perf_counter() - t0,
        "data_source": data.source,
        "device": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else str(device),
        "runtime": {"gpu_data": gpu_data, "bf16_autocast": bf16, "torch_threads": torch.get_num_threads()},
        "provenance": provenance(),
    }
    if start is not None:  # a defense: its clean accuracy at every width it serves against its own starting point
        record["collapse_check"] = collapse_check(model, start, sorted(trained_widths(config)), data)
    save_tensors(ckpt, {k: v.cpu() for k, v in model.state_dict().items()})
    write_json(rec_path, record)
    (d / "train_state.pt").unlink(missing_ok=True)
    (d / "train_state.pt.sha256").unlink(missing_ok=True)
    set_bits(model, config.bits).eval()
    return TrainedModel(model, config, record)


COLLAPSE_POINTS = 10.0  # a defense more than this many points of clean accuracy below its start, at a width it serves
N_COLLAPSE_CHECK = 1000  # test images of the check (the first ones, pixel-exact in the local copy)


def collapse_check(model: nn.Module, start: nn.Module, widths: list[int], data: Cifar10,
                   n: int = N_COLLAPSE_CHECK, max_drop: float = COLLAPSE_POINTS) -> dict[str, Any]:
    """Clean accuracy (%) of a defended ``model`` and of its undefended ``start`` at each width it serves, on
    the first ``n`` test images, and ``collapsed``: the widths where the defense falls more than
    ``max_drop`` points below its start (a model that wins robustness by breaking; every table that shows
    it flags it, and claims never count such a cell as robust). Both models keep their bit-width."""
    from .metrics import clean_accuracy

    x, y = data.test_subset(min(n, len(data.x_test)))
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    out: dict[str, Any] = {"n": len(y), "max_drop_points": max_drop, "clean": {}, "start_clean": {}, "collapsed": []}
    for b in widths:
        with at_bits(model, b), at_bits(start, b):
            a, s0 = 100 * clean_accuracy(model, x, y).value, 100 * clean_accuracy(start, x, y).value
        out["clean"][str(b)], out["start_clean"][str(b)] = a, s0
        if a < s0 - max_drop:
            out["collapsed"].append(b)
    return out


@torch.no_grad()
def post_training_quantize(fp: TrainedModel, bits: int, data: Cifar10, n_calib: int = 512) -> TrainedModel:
    """A copy of a full-precision model quantized to ``bits`` without training (PTQ contrast).

    BatchNorms are copied from full precision and the steps are set by minimising the quantization
    error on one batch of the first ``n_calib`` training images.
    """
    check_bits(bits)
    device = next(fp.model.parameters()).device
    model = build_model(fp.config.arch)  # type: ignore[arg-type]
    model.load_state_dict(fp.model.state_dict())
    prepare_bits(model, bits, source_bits=fp.config.bits)
    set_bits(model.to(device), bits).eval()
    model(to_float(data.x_train[:n_calib]).to(device))
    record = {**fp.record, "bits": bits, "method": "ptq", "n_calib": n_calib}
    return TrainedModel(model, dataclasses.replace(fp.config, bits=bits), record)


def baseline_models(profile: Profile, qat_bits: list[int], ptq_bits: list[int] = (), seed: int = 0,
                    data: Cifar10 | None = None, progress: bool = True,
                    device: str | torch.device | None = None) -> dict[str, tuple[TrainedModel, int]]:
    """The undefended models of the study by name: "FP", "8b" (QAT), ..., "PTQ 4b", each with its bit-width,
    on ``device`` (default: :func:`~qadtr_core.utils.default_device`)."""
    data = data or load_cifar10()
    device = device or default_device()
    fp = get_or_train(fp_config(profile, seed), data, progress=progress, device=device)
    out: dict[str, tuple[TrainedModel, int]] = {"FP": (fp, FULL_PRECISION)}
    for b in qat_bits:
        out[f"{b}b"] = (get_or_train(qat_config(profile, b, seed), data, progress=progress, device=device), b)
    for b in ptq_bits:
        out[f"PTQ {b}b"] = (post_training_quantize(fp, b, data, profile.n_calib), b)
    return out
