"""Step cost of every defense relative to plain QAT, side by side in one run (issue 11's <= 3x target).

    .venv/bin/python benchmarks/defense_cost.py [--profile quick] [--steps 6] [--threads 2]

Each strategy runs ``--steps`` timed training steps (after one warm-up step) in a fresh child process
(`qadtr_core.cost.training_cost`): QAT at 4 bits, PBAT at 4 bits, DWQ and QADT-R over the bit set
(they draw or cycle their widths, as in training). Prints one table and the machine's load average
before and after, so a contended run shows itself. Measure on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

from qadtr_core.cost import training_cost
from qadtr_core.defenses.recipes import dwq_config, pbat_config, qadtr_config
from qadtr_core.profiles import get_profile
from qadtr_core.zoo import qat_config

BIT_SET = (32, 8, 5, 4, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    P = get_profile(args.profile)
    batch = P.defense_batch
    configs = {
        "QAT": dataclasses.replace(qat_config(P, 4), batch_size=batch),
        "PBAT": dataclasses.replace(pbat_config(P, 4), batch_size=batch),
        "DWQ": dataclasses.replace(dwq_config(P, BIT_SET), bits=4, batch_size=batch),
        "QADT-R": dataclasses.replace(qadtr_config(P, BIT_SET), bits=4, batch_size=batch),
    }
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    out = training_cost(configs, "QAT", steps=args.steps, threads=args.threads)
    wall = time.perf_counter() - t0
    print(f"{platform.node()} {os.cpu_count()} cpus, {args.threads} threads, {P.arch}, batch {batch}, "
          f"{args.steps} timed steps; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"{wall:.0f} s in all")
    print("| strategy | s / step | time vs QAT | peak MB | memory vs QAT |")
    print("|---|---|---|---|---|")
    for name, r in out.items():
        print(f"| {name} | {r['seconds_per_step']:.2f} | {r['time_ratio']:.2f} | {r['peak_mb']:.0f} "
              f"| {r['memory_ratio']:.2f} |")


if __name__ == "__main__":
    main()
