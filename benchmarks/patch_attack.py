"""Universal-patch optimisation step: ours against IBM ART's AdversarialPatchPyTorch, and the floor.

Same model, batch (128), 6x6 patch, EOT over location and rotation (+-22.5 deg). Prints steps per
second for both, their ratio, and the time of a bare forward + backward of the model on the batch
(the floor no patch step can beat). With ``--asr-steps N`` and a cached quick-profile FP model, both
attacks also run N steps on real training images and their targeted ASR is compared on the same test
images and placements. ART is a benchmark-only extra: ``pip install adversarial-robustness-toolbox``.

Run: ``python benchmarks/patch_attack.py [--arch resnet20] [--steps 10] [--asr-steps 100]``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from qadtr_core.attacks import UniversalPatchAttack, UniversalPatchConfig
from qadtr_core.models import build_model


def floor_seconds(model, x, y, reps: int) -> float:
    x = x.clone().requires_grad_(True)
    for i in range(reps + 1):
        if i == 1:
            t0 = time.perf_counter()
        torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return (time.perf_counter() - t0) / reps


def ours_seconds(model, x, y, cfg: UniversalPatchConfig, steps: int) -> tuple[float, torch.Tensor]:
    attack = UniversalPatchAttack([(model, 32)], x, y, cfg)
    attack.run(1)
    t0 = time.perf_counter()
    patch = attack.run(steps)
    return (time.perf_counter() - t0) / steps, patch


def art_seconds(model, x, y, cfg: UniversalPatchConfig, steps: int) -> tuple[float, torch.Tensor]:
    from art.attacks.evasion import AdversarialPatchPyTorch
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    scale = cfg.size / x.shape[-1]  # ART scales a patch relative to the image edge
    ap = AdversarialPatchPyTorch(clf, rotation_max=cfg.max_angle, scale_min=scale, scale_max=scale,
                                 learning_rate=cfg.step_size, max_iter=steps, batch_size=len(x),
                                 patch_shape=(3, cfg.size, cfg.size), patch_type="square",
                                 optimizer="Adam", targeted=cfg.target is not None, verbose=False)
    target = np.full(len(x), cfg.target if cfg.target is not None else 0)
    onehot = np.eye(10, dtype=np.float32)[target if cfg.target is not None else y.numpy()]
    t0 = time.perf_counter()
    patch, _ = ap.generate(x=x.numpy(), y=onehot)
    return (time.perf_counter() - t0) / steps, torch.from_numpy(np.asarray(patch)).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--asr-steps", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(args.arch).eval()
    x, y = torch.rand(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    cfg = UniversalPatchConfig(size=6, target=0, batch_size=args.batch, max_angle=22.5, steps=args.steps)
    print(f"{args.arch}, batch {args.batch}, 6x6 patch, EOT location + rotation 22.5 deg, {torch.get_num_threads()} threads")
    floor = floor_seconds(model, x, y, 3)
    ours, _ = ours_seconds(model, x, y, cfg, args.steps)
    print(f"floor (bare forward+backward): {1000 * floor:7.1f} ms")
    print(f"ours:                          {1000 * ours:7.1f} ms/step  {1 / ours:6.2f} steps/s  {ours / floor:.2f}x the floor")
    try:
        art, _ = art_seconds(model, x, y, cfg, max(2, args.steps // 2))
        print(f"ART AdversarialPatchPyTorch:   {1000 * art:7.1f} ms/step  {1 / art:6.2f} steps/s  "
              f"ours is {art / ours:.2f}x faster")
    except ImportError:
        print("ART is not installed (pip install adversarial-robustness-toolbox): comparison skipped")
        return
    if args.asr_steps:
        compare_asr(args.asr_steps)


def compare_asr(steps: int) -> None:
    """Targeted ASR of both patches after ``steps`` steps on the cached quick-profile FP model."""
    from qadtr_core.artifacts import artifact_dir
    from qadtr_core.data import load_cifar10, to_float
    from qadtr_core.evaluation.transfer import evaluation_placement
    from qadtr_core.metrics import predict, targeted_asr
    from qadtr_core.patches import apply_patch, make_mask
    from qadtr_core.profiles import get_profile
    from qadtr_core.zoo import fp_config, get_or_train

    config = fp_config(get_profile("quick"))
    if not (artifact_dir("models", config) / "model.pt").exists():
        print("no cached quick-profile FP model (run `make book` first): ASR comparison skipped")
        return
    data = load_cifar10()
    model = get_or_train(config, data).model
    x_train, y_train = to_float(data.x_train[:2048]), data.y_train[:2048]
    x_eval, y_eval = data.test_subset(500)
    cfg = UniversalPatchConfig(size=6, target=0, batch_size=128, max_angle=22.5, steps=steps)
    place = evaluation_placement(len(x_eval), cfg)
    ours = UniversalPatchAttack([(model, 32)], x_train, y_train, cfg).run()
    _, art = art_seconds(model, x_train[y_train != 0][:128], y_train[y_train != 0][:128], cfg, steps)
    for name, patch in (("ours", ours), ("ART", art)):
        r = targeted_asr(predict(model, apply_patch(x_eval, patch, make_mask(6), place)), y_eval, 0)
        print(f"{name}: targeted ASR after {steps} steps (batch 128): {r}")


if __name__ == "__main__":
    main()
