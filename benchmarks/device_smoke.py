"""Run every training and attack path once on a device (``--device cuda``) with synthetic data.

Checks that the library is device-agnostic (no hidden CPU tensors) and times the paper profile's
units of work: a ResNet training epoch at 32 and 2 bits and one universal-patch step.
Run: ``python benchmarks/device_smoke.py --device cuda [--arch resnet56]``.
"""
from __future__ import annotations

import argparse
import time

import torch

from qadtr_core.attacks import (
    ImagePatchConfig,
    PGDConfig,
    UniversalPatchAttack,
    UniversalPatchConfig,
    image_patch_attack,
    pgd_attack,
)
from qadtr_core.data import Cifar10
from qadtr_core.models import build_model
from qadtr_core.quant import prepare_bits, set_bits
from qadtr_core.train import TrainConfig, train


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="resnet56")
    ap.add_argument("--n-train", type=int, default=10000)
    args = ap.parse_args()
    dev = args.device
    g = torch.Generator().manual_seed(0)
    n = args.n_train
    data = Cifar10(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (n,), generator=g),
                   torch.randint(0, 256, (500, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (500,), generator=g),
                   source="synthetic")
    print(f"{args.arch} on {dev} ({torch.cuda.get_device_name() if dev.startswith('cuda') else 'cpu'}), "
          f"torch {torch.__version__}")
    for bits in (32, 2):
        torch.manual_seed(0)
        model = build_model(args.arch).to(dev)
        prepare_bits(model, bits)
        cfg = TrainConfig(arch=args.arch, epochs=1, lr=0.1, bits=bits, batch_size=128, n_train=n)
        t0 = time.perf_counter()
        train(model, data, cfg, progress=False)
        _sync(dev)
        dt = time.perf_counter() - t0
        print(f"train {bits:>2} bits: {n / dt:8.0f} images/s -> a 50k-image epoch in {50000 / (n / dt):6.1f} s")
    model.eval()
    x, y = data.test_subset(256)
    x, y = x.to(dev), y.to(dev)
    set_bits(model, 2)
    attack = UniversalPatchAttack([(model, 2)], x, y, UniversalPatchConfig(steps=20, batch_size=128))
    attack.run(2)
    _sync(dev)
    t0 = time.perf_counter()
    attack.run(20)
    _sync(dev)
    print(f"universal patch step (batch 128, 2 bits): {1000 * (time.perf_counter() - t0) / 20:.1f} ms")
    t0 = time.perf_counter()
    res = image_patch_attack(model, x, y, ImagePatchConfig(steps=100, restarts=1))
    _sync(dev)
    print(f"per-image patch, 100 steps on 256 images: {time.perf_counter() - t0:.1f} s; patch device {res.patches.device}")
    t0 = time.perf_counter()
    adv = pgd_attack(model, x, y, PGDConfig())
    _sync(dev)
    print(f"PGD-10 on 256 images: {time.perf_counter() - t0:.2f} s; output device {adv.device}")


if __name__ == "__main__":
    main()
