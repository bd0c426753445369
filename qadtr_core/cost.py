"""Training cost of a strategy relative to standard QAT: seconds per step and peak memory.

Each measurement runs the strategy's batch loss, backward pass and optimiser step on a random batch of
the config's size for a randomly initialised model of its architecture (cost does not depend on the
weights). On a CPU (Linux), each strategy runs in a fresh child process; after the setup the child
resets its peak-memory mark (``/proc/self/clear_refs``) and reports the peak resident memory of the
steps above the resident memory they started from. On CUDA, the peak is
``torch.cuda.max_memory_allocated`` in this process.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .models import build_model
from .quant import prepare_bits, set_bits
from .train import TrainConfig, trained_widths

PROC = Path("/proc/self")


def _proc_kb(field: str) -> float:
    for line in (PROC / "status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _measure(config: TrainConfig, steps: int, device: str) -> dict[str, float]:
    """Time ``steps`` training steps (after one warm-up step) in this process, and their peak memory."""
    from .defenses import strategy_loss

    torch.manual_seed(config.seed)
    model = build_model(config.arch).to(device)  # type: ignore[arg-type]
    for b in trained_widths(config):
        prepare_bits(model, b)
    x = torch.rand(config.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (config.batch_size,), device=device)
    # A trained model has every width's quantizer steps set; initialising them (a grid search per layer)
    # is a one-off cost that would otherwise land in the timed steps of multi-width strategies only.
    with torch.no_grad():
        for b in trained_widths(config):
            set_bits(model, b)(x[:16])
    set_bits(model, config.bits)
    loss_fn = strategy_loss(config)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    elif PROC.exists():
        (PROC / "clear_refs").write_text("5")  # reset the peak mark (VmHWM) to the current RSS
        start_kb = _proc_kb("VmRSS")
    seconds = 0.0
    for step in range(steps + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, _ = loss_fn(model, x, y, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step > 0:  # the first step pays one-off allocations
            seconds += time.perf_counter() - t0
    out = {"seconds_per_step": seconds / max(1, steps)}
    if device.startswith("cuda"):
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:  # without Linux's /proc the CPU peak is not measured
        out["peak_mb"] = (_proc_kb("VmHWM") - start_kb) / 1024 if PROC.exists() else float("nan")
    return out


def _child(config: TrainConfig, steps: int, threads: int) -> dict[str, float]:
    """Run one measurement in a fresh child process (its own allocator and peak)."""
    with tempfile.TemporaryDirectory() as tmp:
        job, result = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl"
        job.write_bytes(pickle.dumps((config, steps, str(result))))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run([sys.executable, "-m", "qadtr_core.cost", str(job)], env=env)
        if done.returncode != 0 or not result.exists():
            raise RuntimeError(f"cost measurement child failed with exit code {done.returncode}")
        return pickle.loads(result.read_bytes())


def training_cost(configs: dict[str, TrainConfig], reference: str, steps: int = 3, device: str = "cpu",
                  threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Seconds per step and peak memory of each config, and their ratios to ``configs[reference]``.

    ``peak_mb`` is the memory the training steps add to what the process held before them.
    """
    if reference not in configs:
        raise ValueError(f"reference {reference!r} is not one of {', '.join(configs)}")
    threads = threads or torch.get_num_threads()
    measure = ((lambda cfg: _measure(cfg, steps, device)) if device.startswith("cuda")
               else (lambda cfg: _child(cfg, steps, threads)))
    raw = {name: measure(cfg) for name, cfg in configs.items()}
    ref = raw[reference]
    out = {}
    for name, r in raw.items():
        out[name] = {"seconds_per_step": r["seconds_per_step"], "peak_mb": r["peak_mb"],
                     "batch_size": configs[name].batch_size, "time_ratio": r["seconds_per_step"] / ref["seconds_per_step"],
                     "memory_ratio": r["peak_mb"] / ref["peak_mb"] if ref["peak_mb"] > 0 else float("nan"),
                     "device": device, "steps": steps}
    return out


def _main(job_path: str) -> None:
    config, steps, result = pickle.loads(Path(job_path).read_bytes())
    Path(result).write_bytes(pickle.dumps(_measure(config, steps, "cpu")))


if __name__ == "__main__":
    _main(sys.argv[1])
