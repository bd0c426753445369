"""qadtr_core: the library behind the QADT-R reproduction (quantized CIFAR ResNets, attacks, defenses, analyses).

The names below are imported on first use (PEP 562), so that ``import qadtr_core.build.bookconfig`` (the book
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

# The package's rooms: ``evaluation`` (transfer, threats, robustness, strength), ``claims`` (one module per
# claim: its measurement and its rule, and the scorecard), ``build`` (the job graph, the command line, the
# bundles, the book's configuration, cost estimates, seeds, studies). A module that moved into one of them is
# still reachable by its old name as an attribute (``from qadtr_core import jobs``), imported on first use.
_MOVED = {name: f"build.{name}" for name in ("jobs", "cli", "bundle", "models_bundle", "bookconfig", "estimates",
                                               "seeds", "studies")}
_MOVED.update({name: f"evaluation.{name}" for name in ("transfer", "threats", "robustness", "strength")})
_MOVED["scorecard"] = "claims"  # the old module's names (the rules, load_claims, scorecard) are the package's

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _MOVED:
        value = importlib.import_module(f".{_MOVED[name]}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
