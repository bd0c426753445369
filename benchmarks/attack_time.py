"""Wall time of the evaluation attacks on a cached quick-profile QAT model: the per-image patch and PGD.

    .venv/bin/python benchmarks/attack_time.py [--bits 2] [--n 128] [--steps 20] [--restarts 3] [--threads 1]

The per-image patch runs at the quick threat settings (8x8, location optimisation, margin loss) without
early stopping, so every run does the same work (``n x restarts x steps`` image-steps); PGD runs 10
steps at 8/255. Each is timed ``--reps`` times after one warm-up run, and the table gives the fastest and
the slowest. It uses only the public API, so the same file times an older commit too
(``PYTHONPATH=<that checkout> python benchmarks/attack_time.py``), which is how the changes recorded in
benchmarks/README.md were measured. Needs the quick QAT model at ``--bits`` in the cache (``make
import``); measure on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import torch

from qadtr_core import zoo
from qadtr_core.attacks.image_patch import ImagePatchConfig, image_patch_attack
from qadtr_core.attacks.pgd import PGDConfig, pgd_attack
from qadtr_core.data import load_cifar10
from qadtr_core.profiles import get_profile


def _commit() -> str:
    import qadtr_core

    root = Path(qadtr_core.__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _times(fn, reps: int) -> list[float]:
    fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = zoo.get_or_train(zoo.qat_config(get_profile("quick"), args.bits), progress=False, device="cpu").model.eval()
    x, y = load_cifar10().test_subset(args.n)
    cfg = ImagePatchConfig(size=8, steps=args.steps, restarts=args.restarts, location_opt=True, loss="margin", seed=0)
    load = os.getloadavg()[0]
    patch = _times(lambda: image_patch_attack(model, x, y, cfg), args.reps)
    pgd = _times(lambda: pgd_attack(model, x, y, PGDConfig()), args.reps)
    print(f"commit {_commit()}, torch {torch.__version__}, {args.threads} thread(s), {args.bits} bits, n={args.n}, "
          f"load average before {load:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"| per-image patch {args.steps} x {args.restarts} | {min(patch):.1f}-{max(patch):.1f} s |")
    print(f"| PGD-10 | {min(pgd):.1f}-{max(pgd):.1f} s |")


if __name__ == "__main__":
    main()
