"""Defenses as training strategies over :func:`qadtr_core.train.train`: PBAT, DWQ and QADT-R."""
from __future__ import annotations

from ..train import BatchLoss, TrainConfig, standard_loss
from .dwq import DWQConfig, RandomPrecision, dwq_loss
from .pbat import PBATConfig, pbat_loss
from .qadtr import QADTR, QADTRConfig, gir_penalty

DEFENSES: tuple[str, ...] = ("standard", "pbat", "dwq", "qadtr")


def strategy_loss(config: TrainConfig) -> BatchLoss:
    """The batch loss of ``config.strategy`` with ``config.strategy_params`` (defaults when None)."""
    name, params = config.strategy, config.strategy_params
    if name == "standard":
        return standard_loss(config.label_smoothing)
    if name == "pbat":
        return pbat_loss(params or PBATConfig())
    if name == "dwq":
        return dwq_loss(params or DWQConfig())
    if name == "qadtr":
        return QADTR(params or QADTRConfig())
    raise ValueError(f"unknown defense {name!r}; allowed: {', '.join(DEFENSES)}")


__all__ = ["DEFENSES", "strategy_loss", "DWQConfig", "RandomPrecision", "dwq_loss", "PBATConfig", "pbat_loss",
           "QADTR", "QADTRConfig", "gir_penalty"]
