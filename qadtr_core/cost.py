"""Training cost of a strategy relative to standard QAT: seconds per step and peak memory.

Each measurement runs the strategy's batch loss, backward pass and optimiser step on a random batch of
the config's size for a randomly initialised model of its architecture (cost does not depend on the
weights). On a CPU, each strategy runs in a child process so that its peak resident memory
(``ru_maxrss``, read for that child alone through ``os.wait4``) is its own; an idle child that loads
everything but takes no step gives the baseline subtracted from every peak. On CUDA, the peak is
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
from .quant import prepare_bits
from .train import TrainConfig


def _measure(config: TrainConfig, steps: int, device: str) -> dict[str, float]:
    """Time ``steps`` training steps (after one warm-up step) in this process."""
    from .defenses import strategy_loss

    torch.manual_seed(config.seed)
    model = build_model(config.arch).to(device)  # type: ignore[arg-type]
    for b in {config.bits, *getattr(config.strategy_params, "bit_set", ())}:
        prepare_bits(model, b)
    x = torch.rand(config.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (config.batch_size,), device=device)
    loss_fn = strategy_loss(config)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
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
    return out


def _child(config: TrainConfig | None, steps: int, threads: int) -> dict[str, float]:
    """Run one measurement (or, with ``config=None``, only the imports) in a child; add its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        job, result = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl"
        job.write_bytes(pickle.dumps((config, steps, str(result))))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.Popen([sys.executable, "-m", "qadtr_core.cost", str(job)], env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"cost measurement child failed with exit code {proc.returncode}")
        out = pickle.loads(result.read_bytes()) if result.exists() else {}
    out["peak_mb"] = usage.ru_maxrss / 1024  # Linux reports kilobytes
    return out


def training_cost(configs: dict[str, TrainConfig], reference: str, steps: int = 3, device: str = "cpu",
                  threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Seconds per step and peak memory of each config, and their ratios to ``configs[reference]``.

    ``peak_mb`` is the memory the training step itself needs: on a CPU, the child's peak resident
    memory minus that of an idle child (imports, model, batch; no step).
    """
    if reference not in configs:
        raise ValueError(f"reference {reference!r} is not one of {', '.join(configs)}")
    threads = threads or torch.get_num_threads()
    if device.startswith("cuda"):
        raw = {name: _measure(cfg, steps, device) for name, cfg in configs.items()}
        base = 0.0
    else:
        base = _child(None, steps, threads)["peak_mb"]
        raw = {name: _child(cfg, steps, threads) for name, cfg in configs.items()}
    ref_mem = raw[reference]["peak_mb"] - base
    out = {}
    for name, r in raw.items():
        mem = max(r["peak_mb"] - base, 0.0)
        out[name] = {"seconds_per_step": r["seconds_per_step"], "peak_mb": mem, "batch_size": configs[name].batch_size,
                     "time_ratio": r["seconds_per_step"] / raw[reference]["seconds_per_step"],
                     # below a megabyte the step hides inside the import-time peak: no meaningful ratio
                     "memory_ratio": mem / ref_mem if ref_mem >= 1.0 else float("nan"), "device": device, "steps": steps}
    return out


def _main(job_path: str) -> None:
    config, steps, result = pickle.loads(Path(job_path).read_bytes())
    if config is None:  # the idle baseline: the same imports and a model, no step
        build_model("resnet20")
        out = {"seconds_per_step": 0.0}
    else:
        out = _measure(config, steps, "cpu")
    Path(result).write_bytes(pickle.dumps(out))


if __name__ == "__main__":
    _main(sys.argv[1])
