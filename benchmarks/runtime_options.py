"""Do the CUDA runtime options keep results within noise of plain fp32? (A prepared GPU check.)

Trains the same config under three runtimes, each into its own cache root (the options are not part of
the cache key): plain fp32 with CPU-resident data, GPU-resident data, and GPU-resident data with bf16
autocast; reports wall time per epoch and clean accuracy with its Wilson interval on the first n_eval
test images, per seed. "Within noise" = the bf16 accuracy lies inside the fp32 run's interval and the
seed-to-seed spread. Channels-last is always on (train.py).

Run on a GPU: ``python benchmarks/runtime_options.py --device cuda --arch resnet20 --epochs 10 --seeds 0 1``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n-train", type=int, default=50000)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--bits", type=int, nargs="+", default=[32, 4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()

    from qadtr_core.data import load_cifar10
    from qadtr_core.metrics import clean_accuracy
    from qadtr_core.stats import wilson
    from qadtr_core.train import TrainConfig
    from qadtr_core.zoo import get_or_train

    data = load_cifar10()
    x, y = (t.to(args.device) for t in data.test_subset(args.n_eval))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{args.arch}, {args.epochs} epochs on {args.n_train} images, {name}, torch {torch.__version__}")
    for bits in args.bits:
        for seed in args.seeds:
            cfg = TrainConfig(arch=args.arch, epochs=args.epochs, lr=0.2, bits=bits, batch_size=128, n_train=args.n_train,
                              seed=seed, profile="runtime-check")
            for label, gpu_data, bf16 in (("fp32", False, False), ("fp32 gpu-data", True, False),
                                          ("bf16 gpu-data", True, True)):
                with tempfile.TemporaryDirectory() as root:
                    os.environ["QADTR_ARTIFACTS"] = root
                    t0 = time.perf_counter()
                    tm = get_or_train(cfg, data, progress=False, device=args.device, gpu_data=gpu_data, bf16=bf16)
                    wall = time.perf_counter() - t0
                    acc = clean_accuracy(tm.model, x, y)
                    ci = wilson(acc.k, acc.n)
                    print(f"{bits:>2} bits seed {seed} {label:14}: {wall / args.epochs:6.1f} s/epoch, clean accuracy "
                          f"{100 * ci.value:.1f} % [{100 * ci.low:.1f}, {100 * ci.high:.1f}] (n={acc.n})", flush=True)


if __name__ == "__main__":
    main()
