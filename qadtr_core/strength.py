"""Attack strength: is an attack converged, and how strong is it white-box?

Carlini et al. (2019, "On Evaluating Adversarial Robustness") ask of every attack behind a claim:
does doubling its steps still raise its success? This module measures exactly that, and the chapters
show it before they read any transfer:

- :func:`converge_universal` runs a universal patch attack with the doubling schedule phase by phase,
  evaluates its white-box ASR at the end of every phase (each phase end has twice the steps of the
  previous one), and stops when doubling adds less than :data:`TOLERANCE` or the budget ends.
- :func:`image_patch_curve` reads the same curve off one run of the per-image attack (it records its
  best iterate per step and restart).
- :class:`AttackStrength` is the record the scorecard keeps per attack: white-box ASR, the same
  attack at half its steps, the clean floor, the steps, and whether it converged.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pandas as pd
import torch

from .attacks.image_patch import ImagePatches
from .attacks.universal_patch import UniversalPatchAttack
from .metrics import Rate
from .stats import wilson

TOLERANCE = 0.02  # doubling the steps must add less than 2 points of white-box ASR
MIN_PASSES = 1.0  # ... and a universal patch must have met every training image once, on average


@dataclass(frozen=True)
class AttackStrength:
    """The strength of one attack behind a claim (rates as fractions).

    Attributes:
        name: the attack, as the chapter names it.
        white_box_asr: its ASR against the model it was crafted on.
        white_box_asr_half_steps: the same attack stopped at half its steps.
        clean_floor: the rate the metric gives without any attack (targeted: images already classified
            as the target; untargeted: 0 by definition).
        steps: the steps it ran.
        n: images behind ``white_box_asr``.
        budget_exhausted: the profile's step budget ended before the stopping rule was met.
    """

    name: str
    white_box_asr: float
    white_box_asr_half_steps: float
    clean_floor: float
    steps: int
    n: int = 0
    budget_exhausted: bool = False

    @property
    def gain_from_doubling(self) -> float:
        return self.white_box_asr - self.white_box_asr_half_steps

    @property
    def converged(self) -> bool:
        """Doubling the steps (from half to all) added less than :data:`TOLERANCE`."""
        return is_converged(self.white_box_asr, self.white_box_asr_half_steps)

    def record(self) -> dict:
        """The JSON entry of ``attack_strength`` in the scorecard (plus ``converged``); an unknown
        half-steps ASR (NaN: only one checkpoint) is written as None."""
        out = {**asdict(self), "converged": self.converged}
        if math.isnan(out["white_box_asr_half_steps"]):
            out["white_box_asr_half_steps"] = None
        return out


def is_converged(asr: float, asr_half_steps: float | None, tolerance: float = TOLERANCE) -> bool:
    """Whether going from half the steps to all of them added less than ``tolerance`` (an unknown
    half-steps ASR, None or NaN, never counts as converged)."""
    if asr_half_steps is None or math.isnan(asr_half_steps):
        return False
    return asr - asr_half_steps < tolerance


def converge_universal(attack: UniversalPatchAttack, white_box: Callable[[torch.Tensor], Rate],
                       extra: dict[str, Callable[[torch.Tensor], Rate]] | None = None, tolerance: float = TOLERANCE,
                       min_passes: float = MIN_PASSES, progress: bool = False
                       ) -> tuple[torch.Tensor, pd.DataFrame, dict[int, torch.Tensor]]:
    """Run ``attack`` (doubling schedule) until doubling adds less than ``tolerance`` white-box ASR.

    ``white_box(patch)`` returns the white-box rate of a patch; ``extra`` names more evaluations
    (e.g. the transfer to the 2-bit model), recorded on the same checkpoints. Returns the final patch,
    the curve (one row per checkpoint and evaluation: steps, rate, k, n, Wilson interval) and the
    patch at every checkpoint (so that any other model can be evaluated on the same curve later).
    Stops after the first checkpoint where the gain over the previous one is below ``tolerance`` and
    the attack has seen at least ``min_passes`` passes over its training images (so that an early
    plateau, before the patch has met most images, does not pass for convergence), or at the
    configured ``steps`` (then the last row's ``budget_exhausted`` is True unless the rule was met).
    """
    cfg = attack.config
    ends = cfg.phase_ends()
    rows: list[dict] = []
    checkpoints: dict[int, torch.Tensor] = {}
    previous: float | None = None
    for end in ends:
        patch = attack.run(end - attack.step, progress=progress)
        checkpoints[end] = patch.cpu()
        stop = False
        for name, fn in {"white-box": white_box, **(extra or {})}.items():
            r = fn(patch)
            ci = wilson(r.k, r.n)
            rows.append({"steps": end, "evaluated on": name, "asr": r.value, "k": r.k, "n": r.n,
                         "ci_low": ci.low, "ci_high": ci.high})
            if name == "white-box":
                seen = end * cfg.batch_size / max(1, len(attack.images))
                stop = previous is not None and r.value - previous < tolerance and seen >= min_passes
                previous = r.value
        if stop:
            break
    curve = pd.DataFrame(rows)
    curve["budget_exhausted"] = attack.step >= cfg.steps and not _met(curve, tolerance)
    return attack.patch.detach().clone(), curve, checkpoints


def _met(curve: pd.DataFrame, tolerance: float) -> bool:
    wb = curve[curve["evaluated on"] == "white-box"].asr.tolist()
    return len(wb) >= 2 and wb[-1] - wb[-2] < tolerance


def universal_strength(name: str, curve: pd.DataFrame, clean_floor: float) -> AttackStrength:
    """The :class:`AttackStrength` of a universal patch from its :func:`converge_universal` curve.

    With one checkpoint only (no doubling measured), the half-steps ASR is unknown (NaN), so the
    attack never counts as converged.
    """
    wb = curve[curve["evaluated on"] == "white-box"].sort_values("steps")
    last = wb.iloc[-1]
    half = float(wb.iloc[-2].asr) if len(wb) >= 2 else float("nan")
    return AttackStrength(name, float(last.asr), half, clean_floor, int(last.steps), int(last.n),
                          bool(curve.budget_exhausted.iloc[-1]))


def image_patch_curve(found: ImagePatches, valid: torch.Tensor) -> pd.DataFrame:
    """ASR against steps for each number of restarts, from one run's success record.

    ``valid`` (bool per image) marks the images the rate counts (untargeted: clean-correct).
    """
    if found.success is None:
        raise ValueError("the patches carry no success record")
    valid = valid.cpu().bool()
    n = int(valid.sum())
    n_r, n_t = found.success.shape[1], found.success.shape[2] - 1
    rows = []
    for r in range(1, n_r + 1):
        for t in sorted({*range(0, n_t + 1, max(1, n_t // 20)), n_t, n_t // 2}):
            k = int((found.fooled_within(t, r) & valid).sum())
            ci = wilson(k, n)
            rows.append({"restarts": r, "steps": t, "asr": k / max(n, 1), "k": k, "n": n,
                         "ci_low": ci.low, "ci_high": ci.high})
    return pd.DataFrame(rows)


def image_patch_strength(name: str, found: ImagePatches, valid: torch.Tensor, clean_floor: float = 0.0) -> AttackStrength:
    """White-box strength of a per-image attack and the same attack halved: half its steps, or half its
    restarts, whichever loses more (so a budget still short in either dimension shows)."""
    valid = valid.cpu().bool()
    n = int(valid.sum())
    n_r, n_t = found.success.shape[1], found.success.shape[2] - 1

    def asr(steps: int, restarts: int) -> float:
        return int((found.fooled_within(steps, restarts) & valid).sum()) / max(n, 1)

    full = asr(n_t, n_r)
    half = min(asr(n_t // 2, n_r), asr(n_t, max(1, n_r // 2)) if n_r > 1 else full)
    return AttackStrength(name, full, half, clean_floor, n_t, n)
