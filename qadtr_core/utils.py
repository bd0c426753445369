"""Small helpers every module shares: eval mode for a block, seeded generators, the ``Member`` type."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

Member = tuple[nn.Module, int]  # a model and the bit-width to run it at


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Run a block with every model in eval mode, restoring each one's previous mode afterwards.

    Attacks and evaluations run in eval mode so that BatchNorm uses (and never updates) its running
    statistics, as a deployed model does.
    """
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


@contextlib.contextmanager
def input_gradients_only(*models: nn.Module) -> Iterator[None]:
    """Run a block with no parameter of ``models`` requiring a gradient, restoring each one's flag afterwards.

    An attack needs the gradient of its input only. With the parameters frozen, no parameter gradient is
    computed or accumulated, and :func:`~qadtr_core.quant.fake_quant` skips its step-size gradient (LSQ's
    term: a 2-bit ResNet-20 forward and backward took 0.83 s with it and 0.62 s without, benchmarks/README.md):
    the input gradient is the same, bit for bit. A parameter frozen before the block stays frozen.
    """
    seen: dict[int, nn.Parameter] = {}
    for m in models:
        for p in m.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    for p in seen.values():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in seen.values():
            p.requires_grad_(True)


def stream_seed(seed: int, *stream: int) -> int:
    """A seed for the random stream ``stream`` (e.g. a step number, an offset) of run ``seed``.

    Different runs and different streams of one run never share a seed (for the small integers the
    study uses), and the value is the same on every machine.
    """
    s = int(seed)
    for v in stream:
        s = (s * 1_000_003 + int(v)) % (2**63 - 1)
    return s


def seeded_generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`stream_seed` (``seed``, ``*stream``)."""
    return torch.Generator().manual_seed(stream_seed(seed, *stream))


def default_device() -> str:
    """``"cuda"`` when a CUDA device is available, else ``"cpu"``: the default of every library entry
    point that trains, crafts or evaluates (the notebooks' stored smoke defaults stay ``"cpu"``)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def fingerprint(x: torch.Tensor) -> str:
    """A short hash of images in [0, 1] as 8-bit pixels (the same on every device): part of the cache key
    of anything crafted for those images."""
    import hashlib

    pixels = (x.detach() * 255).round().to(torch.uint8).cpu().numpy().tobytes()
    return hashlib.sha256(pixels).hexdigest()[:16]


def bit_label(key: int | str) -> str:
    """The label of a bit-width: "FP" for 32, "4b" for 4; a name (e.g. "PTQ 4b") passes through, "fp" -> "FP"."""
    if isinstance(key, str):
        return "FP" if key.upper() == "FP" else key
    return "FP" if int(key) == 32 else f"{int(key)}b"
