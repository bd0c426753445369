"""The one door to every trained model: ``get_or_train(config)``.

A model is named by the hash of its full :class:`~qadtr_core.train.TrainConfig` (its parent's config
included), cached under ``artifacts/models/<hash>/`` with a record of its provenance, and trained only
when no valid checkpoint exists. So any notebook can run alone, and a warm cache retrains nothing.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .artifacts import CorruptArtifact, artifact_dir, cache_version, load_tensors, provenance, read_json, save_tensors, write_json
from .data import Cifar10, load_cifar10, to_float
from .models import build_model
from .profiles import Profile
from .quant import FULL_PRECISION, check_bits, prepare_bits, set_bits
from .train import BatchLoss, TrainConfig, train, trained_widths


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
    return dataclasses.replace(parent, bits=bits, epochs=profile.qat_epochs_for(bits), lr=profile.qat_lr, schedule="cosine", init=parent)


def get_or_train(
    config: TrainConfig,
    data: Cifar10 | None = None,
    loss_fn: BatchLoss | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> TrainedModel:
    """Load the model of ``config`` from the cache, training it (and its parents) if needed.

    ``loss_fn`` overrides the batch loss; by default it is built from ``config.strategy`` and
    ``config.strategy_params`` (standard cross-entropy, PBAT, DWQ or QADT-R). The model is returned on
    ``device`` and trained there; checkpoints are always written from CPU copies.
    """
    d = artifact_dir("models", config)
    ckpt, rec_path = d / "model.pt", d / "record.json"
    model = build_model(config.arch)  # type: ignore[arg-type]
    if ckpt.exists() and rec_path.exists():
        try:
            model.load_state_dict(load_tensors(ckpt))
            record = read_json(rec_path)
            set_bits(model, config.bits).eval()
            return TrainedModel(model.to(device), config, record)
        except (CorruptArtifact, RuntimeError) as e:
            print(f"rebuilding {d.name}: {e}")
    data = data or load_cifar10()
    torch.manual_seed(config.seed)
    model = build_model(config.arch)  # type: ignore[arg-type]
    if config.init is not None:
        parent = get_or_train(config.init, data, progress=progress)
        model.load_state_dict(parent.model.state_dict())
        # every width the strategy trains at starts from the parent's BatchNorms
        for b in trained_widths(config):
            prepare_bits(model, b, source_bits=config.init.bits)
    model.to(device)
    t0 = time.perf_counter()
    from .defenses import strategy_loss  # defenses build on train; imported here to keep imports pointing down

    history = train(model, data, config, checkpoint=d / "train_state.pt", loss_fn=loss_fn or strategy_loss(config),
                    progress=progress)
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
        "provenance": provenance(),
    }
    save_tensors(ckpt, {k: v.cpu() for k, v in model.state_dict().items()})
    write_json(rec_path, record)
    (d / "train_state.pt").unlink(missing_ok=True)
    (d / "train_state.pt.sha256").unlink(missing_ok=True)
    set_bits(model, config.bits).eval()
    return TrainedModel(model, config, record)


@torch.no_grad()
def post_training_quantize(fp: TrainedModel, bits: int, data: Cifar10, n_calib: int = 512) -> TrainedModel:
    """A copy of a full-precision model quantized to ``bits`` without training (PTQ contrast).

    BatchNorms are copied from full precision and the steps are set by minimising the quantization
    error on one batch of the first ``n_calib`` training images.
    """
    check_bits(bits)
    model = build_model(fp.config.arch)  # type: ignore[arg-type]
    model.load_state_dict(fp.model.state_dict())
    prepare_bits(model, bits, source_bits=fp.config.bits)
    set_bits(model, bits).eval()
    model(to_float(data.x_train[:n_calib]))
    record = {**fp.record, "bits": bits, "method": "ptq", "n_calib": n_calib}
    return TrainedModel(model, dataclasses.replace(fp.config, bits=bits), record)


def baseline_models(profile: Profile, qat_bits: list[int], ptq_bits: list[int] = (), seed: int = 0,
                    data: Cifar10 | None = None, progress: bool = True) -> dict[str, tuple[TrainedModel, int]]:
    """The undefended models of the study by name: "FP", "8b" (QAT), ..., "PTQ 4b", each with its bit-width."""
    data = data or load_cifar10()
    fp = get_or_train(fp_config(profile, seed), data, progress=progress)
    out: dict[str, tuple[TrainedModel, int]] = {"FP": (fp, FULL_PRECISION)}
    for b in qat_bits:
        out[f"{b}b"] = (get_or_train(qat_config(profile, b, seed), data, progress=progress), b)
    for b in ptq_bits:
        out[f"PTQ {b}b"] = (post_training_quantize(fp, b, data, profile.n_calib), b)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m qadtr_core.zoo --profile quick --bits 8 5 4 2``: build the baseline models ahead of time."""
    import argparse

    from .profiles import get_profile

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--bits", type=int, nargs="*", default=[8, 5, 4, 2])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    profile = get_profile(args.profile)
    data = load_cifar10()
    x, y = data.test_subset(profile.n_eval)
    from .metrics import clean_accuracy

    for b in [FULL_PRECISION, *args.bits]:
        tm = get_or_train(qat_config(profile, b, args.seed), data)
        print(f"{profile.name} {profile.arch} {b:>2} bits: {clean_accuracy(tm.model, x, y)}, "
              f"trained in {tm.record['train_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
