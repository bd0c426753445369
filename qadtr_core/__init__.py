"""qadtr_core: the library behind the QADT-R reproduction (quantized CIFAR ResNets, attacks, defenses, analyses).

The names below are imported on first use (PEP 562), so that ``import qadtr_core.bookconfig`` (the book
build, which runs without torch) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "VALID_BITS": "quant", "bits": "quant", "check_bits": "quant", "get_bits": "quant", "prepare_bits": "quant",
    "set_bits": "quant", "build_model": "models", "Profile": "profiles", "get_profile": "profiles",
    "load_cifar10": "data",
    "CertifyConfig": "certify", "double_masking_predict": "certify", "mask_set": "certify",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
