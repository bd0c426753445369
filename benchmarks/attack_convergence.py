"""Does the defense chapters' white-box patch attack converge on a given cached quick model?

    .venv/bin/python benchmarks/attack_convergence.py [--defense pbat] [--bits 32] [--seed 0]
        [--threat "8x8 square"] [--n 500] [--steps 1600] [--restarts 4] [--threads 2]

Runs the per-image patch exactly as the defense chapters run a white-box threat
(:func:`~qadtr_core.evaluation.robustness.attack_config` with location optimisation, the margin loss and
early stopping, on the clean-correct images among the first ``--n`` test images, through
:func:`~qadtr_core.evaluation.robustness.craft`, so the patches land in the same cache entry the chapter
reads), then reads off the one run the ASR at every halving of steps and restarts, and applies the study's
doubling rule (:func:`~qadtr_core.evaluation.strength.not_converged_reason`, 2 points) to the larger of the
two halvings. ``profiles.py`` records such a measurement on the 2-bit PBAT model; this script repeats it on
any other model. After every batch of 250 images it prints the same table over the images attacked so
far, so a run stopped early still reports (on fewer images: its n says how many). It never trains: the
model must be in the cache (``make import``). Measure on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from qadtr_core.artifacts import artifact_dir
from qadtr_core.data import load_cifar10
from qadtr_core.defenses.recipes import pbat_config
from qadtr_core.evaluation.robustness import attack_config, craft
from qadtr_core.evaluation.strength import not_converged_reason
from qadtr_core.evaluation.threats import THREATS
from qadtr_core.metrics import predict
from qadtr_core.profiles import get_profile
from qadtr_core.quant import set_bits
from qadtr_core.stats import wilson
from qadtr_core.zoo import fp_config, get_or_train, qat_config

WHITE_BOX = {t.name: t for t in THREATS if t.source == "white-box"}


def _config(defense: str, bits: int, seed: int):
    profile = get_profile("quick")
    if defense == "pbat":
        return pbat_config(profile, bits, seed)
    return fp_config(profile, seed) if bits == 32 else qat_config(profile, bits, seed)


def _pct(k: int, n: int) -> str:
    ci = wilson(k, n)
    return f"{100 * k / max(n, 1):.1f} % [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"


def _report(success: torch.Tensor, s: int, r: int) -> None:
    """The ASR table of ``success`` (images x restarts x steps + 1) at every halving, and the doubling rule."""
    n = len(success)

    def k(steps: int, restarts: int) -> int:
        return int(success[:, :restarts, steps].any(1).sum())

    restarts = sorted({max(1, r // 2), r})
    print("| steps | " + " | ".join(f"ASR, {q} restart(s)" for q in restarts) + " |")
    print("|---|" + "---|" * len(restarts))
    steps = s
    while steps >= max(1, s // 16):
        print(f"| {steps} | " + " | ".join(_pct(k(steps, q), n) for q in restarts) + " |")
        steps //= 2
    full = k(s, r) / max(n, 1)
    half_steps, half_restarts = k(s // 2, r) / max(n, 1), k(s, max(1, r // 2)) / max(n, 1)
    half = min(half_steps, half_restarts) if r > 1 else half_steps
    why = not_converged_reason(full, half, n=n)
    print(f"doubling the steps adds {100 * (full - half_steps):.1f} points, doubling the restarts "
          f"{100 * (full - half_restarts):.1f}: " + ("converged by the 2-point rule" if why is None
                                                     else f"not converged ({why})"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--defense", choices=("qat", "pbat"), default="pbat",
                    help="the undefended QAT/FP model or the per-width PBAT model at --bits")
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0, help="the model's training seed (the attack's seed is 0)")
    ap.add_argument("--threat", default="8x8 square", help=f"one of: {', '.join(WHITE_BOX)}")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--location-search", type=int, default=1,
                    help="candidate start locations per restart (1: one random location, as before)")
    args = ap.parse_args(argv)
    if args.threat not in WHITE_BOX:
        ap.error(f"--threat {args.threat!r} is not a white-box patch threat; allowed: {', '.join(WHITE_BOX)}")
    if args.steps < 2 or args.restarts < 1 or args.n < 1:
        ap.error(f"need --steps >= 2, --restarts >= 1 and --n >= 1, got {args.steps}, {args.restarts}, {args.n}")
    try:
        config = _config(args.defense, args.bits, args.seed)
    except ValueError as e:
        ap.error(str(e))
    if not (artifact_dir("models", config) / "model.pt").exists():
        print(f"error: the {args.defense} model at {args.bits} bits, seed {args.seed}, is not in the cache "
              f"({artifact_dir('models', config)}); import the bundle first (make import)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    tm = get_or_train(config, progress=False, device="cpu")
    model = set_bits(tm.model, args.bits).eval()
    x, y = load_cifar10().test_subset(args.n)
    idx = (predict(model, x) == y).nonzero()[:, 0]
    threat = WHITE_BOX[args.threat]
    cfg = attack_config(threat, args.steps, args.restarts, seed=0, location_opt=True, early_stop=True, loss="margin",
                        location_search=args.location_search)
    load = os.getloadavg()[0]
    n = len(idx)
    s, r = args.steps, args.restarts
    t0 = time.perf_counter()
    done: list[torch.Tensor] = []
    ran = [0, 0]  # image-steps run, and their full budget, so far

    def progress(offset: int, found) -> None:
        # An interrupted run still reports: the table over the images attacked so far, after every batch.
        done.append(found.success.bool())
        ran[0], ran[1] = ran[0] + found.image_steps_run, ran[1] + found.image_steps_full_budget
        seen = sum(len(d) for d in done)
        if seen < n:
            print(f"-- after {seen} of {n} images, {time.perf_counter() - t0:.0f} s, "
                  f"{ran[0]:,} image-steps run of a full budget of {ran[1]:,}")
            _report(torch.cat(done), s, r)
            sys.stdout.flush()

    _, rec = craft([(model, args.bits)], [tm.record["config_hash"]], x[idx], y[idx], cfg, threat.region,
                   on_batch=progress)
    seconds = time.perf_counter() - t0
    print(f"{args.defense} {args.bits} b seed {args.seed} (key {tm.record['config_hash'][:8]}), {args.threat}, "
          f"{n} clean-correct of the first {args.n} test images, {s} x {r}, {args.threads} thread(s), "
          f"{seconds:.0f} s (0 s: read from the cache), load average before {load:.2f}, after {os.getloadavg()[0]:.2f}")
    _report(rec["success"].bool(), s, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
