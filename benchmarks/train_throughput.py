"""Training throughput (images/s) of one model at 32, 8, 4 and 2 bits, and the fake-quant overhead.

Run: ``python benchmarks/train_throughput.py [--arch resnet20] [--batch 256] [--steps 8]``.
Aim: a quantized step costs at most 1.3x a full-precision one. Synthetic data, so no data set needed.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from qadtr_core.models import build_model
from qadtr_core.quant import prepare_bits, set_bits


def throughput(arch: str, bits: int, batch: int, steps: int, warmup: int = 2, device: str = "cpu") -> float:
    torch.manual_seed(0)
    model = build_model(arch).to(device, memory_format=torch.channels_last).train()
    prepare_bits(model, bits)
    set_bits(model, bits)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device != "cpu":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    print(f"{args.arch}, batch {args.batch}, {args.steps} timed steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}")
    results = {b: throughput(args.arch, b, args.batch, args.steps, device=args.device) for b in (32, 8, 4, 2)}
    for b, ips in results.items():
        print(f"{b:>2} bits: {ips:8.1f} images/s   step cost vs full precision: {results[32] / ips:.2f}x")


if __name__ == "__main__":
    main()
