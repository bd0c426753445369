"""Defenses as training strategies over :func:`qadtr_core.train.train`: PBAT, DWQ and QADT-R.

Importing this package registers every defense with :func:`qadtr_core.train.register_strategy`
(each module registers itself); :func:`strategy_loss` is re-exported from :mod:`qadtr_core.train`.
"""
from __future__ import annotations

from ..train import registered_strategies, strategy_loss
from .dwq import DWQ, DWQConfig, RandomPrecision, dwq_loss
from .pbat import PBAT, PBATConfig, pbat_loss
from .qadtr import QADTR, QADTRConfig, gir_penalty


def defenses() -> tuple[str, ...]:
    """The registered strategy names (undefended and defenses)."""
    return registered_strategies()


__all__ = ["strategy_loss", "registered_strategies", "defenses", "DWQ", "DWQConfig", "RandomPrecision", "dwq_loss",
           "PBAT", "PBATConfig", "pbat_loss", "QADTR", "QADTRConfig", "gir_penalty"]
