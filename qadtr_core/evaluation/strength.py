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
  attack at half its steps, the null floor, the steps, how far a universal patch moved between its
  last two checkpoints, what a per-image attack cost (image-steps run against its full budget), and
  whether it converged.

An attack converged (:func:`is_converged`) when doubling its steps added less than :data:`TOLERANCE`
*and* it does something: its white-box ASR lies above its null floor (what a random patch scores), and a
patch that did not move between its last two checkpoints has stalled, not converged. An attack that fools nothing is never
converged, so that no claim is refuted by it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import pandas as pd
import torch

from ..attacks.image_patch import ImagePatches
from ..attacks.universal_patch import UniversalPatchAttack
from ..metrics import Rate
from ..stats import wilson

TOLERANCE = 0.02  # doubling the steps must add less than 2 points of white-box ASR
MIN_PASSES = 1.0  # ... and a universal patch must have met every training image once, on average


@dataclass(frozen=True)
class AttackStrength:
    """The strength of one attack behind a claim (rates as fractions).

    Attributes:
        name: the attack, as the chapter names it.
        white_box_asr: its ASR against the model it was crafted on.
        white_box_asr_half_steps: the same attack stopped at half its steps.
        clean_floor: the rate the metric gives without the attack's optimisation: its null attack, a
            random patch of the same kind at the same places (targeted: or the images already classified
            as the target, where that is higher; :func:`~qadtr_core.evaluation.transfer.random_patch_floor`);
            0 where the caller has none.
        steps: the steps it ran.
        n: images behind ``white_box_asr``.
        budget_exhausted: the profile's step budget ended before the stopping rule was met.
        checkpoint_linf: L-inf distance between the patches of its last two checkpoints (universal
            patches; None where no patch checkpoints exist, e.g. per-image attacks).
        image_steps_run: image-steps a per-image attack ran (fewer than its full budget with early
            stopping; see :class:`~qadtr_core.attacks.image_patch.ImagePatches`); None where unknown or
            not a per-image attack.
        image_steps_full_budget: its full budget, images x restarts x steps; None where unknown.
    """

    name: str
    white_box_asr: float
    white_box_asr_half_steps: float
    clean_floor: float
    steps: int
    n: int = 0
    budget_exhausted: bool = False
    checkpoint_linf: float | None = None
    image_steps_run: int | None = None
    image_steps_full_budget: int | None = None

    @property
    def gain_from_doubling(self) -> float:
        return self.white_box_asr - self.white_box_asr_half_steps

    @property
    def converged(self) -> bool:
        """Converged by :func:`is_converged`: doubling the steps (from half to all) added less than
        :data:`TOLERANCE`, the white-box ASR is above the null floor and the patch still moved."""
        return self.why_not_converged() is None

    def why_not_converged(self) -> str | None:
        """Why the attack does not count as converged (None if it does); see :func:`not_converged_reason`."""
        return not_converged_reason(self.white_box_asr, self.white_box_asr_half_steps, clean_floor=self.clean_floor,
                                    n=self.n, checkpoint_linf=self.checkpoint_linf)

    def record(self) -> dict:
        """The JSON entry of ``attack_strength`` in the scorecard (plus ``converged``); an unknown
        half-steps ASR (NaN: only one checkpoint) and an unknown checkpoint distance are written as None."""
        out = {**asdict(self), "converged": self.converged}
        for k in ("white_box_asr_half_steps", "checkpoint_linf"):
            if out[k] is not None and math.isnan(out[k]):
                out[k] = None
        return out


def _unknown(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def not_converged_reason(asr: float, asr_half_steps: float | None, tolerance: float = TOLERANCE,
                         clean_floor: float | None = 0.0, n: int | None = 0,
                         checkpoint_linf: float | None = None) -> str | None:
    """Why an attack is not converged, in words, or None if it is (see :func:`is_converged`)."""
    if _unknown(asr_half_steps):
        return "only one checkpoint: the gain from doubling its steps is unknown"
    gain = asr - asr_half_steps
    if not gain < tolerance:
        return f"doubling its steps still added {100 * gain:.1f} points of white-box ASR"
    if not gain > -tolerance:  # a universal patch can lose what it had: its last checkpoint is no plateau
        return f"doubling its steps lowered its white-box ASR by {-100 * gain:.1f} points: unstable"
    floor = 0.0 if _unknown(clean_floor) else float(clean_floor)
    n = int(n or 0)
    low = wilson(min(n, max(0, round(asr * n))), n).low if n > 0 else asr
    if not low > floor:
        bound = f" (lower bound {100 * low:.1f} %)" if n > 0 else ""
        return (f"its white-box ASR, {100 * asr:.1f} %{bound}, is not above its null floor, "
                f"{100 * floor:.1f} %: it does nothing")
    if not _unknown(checkpoint_linf) and not checkpoint_linf > 0:
        return "its patch did not move between its last two checkpoints (L-inf distance 0): stalled"
    return None


def is_converged(asr: float, asr_half_steps: float | None, tolerance: float = TOLERANCE,
                 clean_floor: float | None = 0.0, n: int | None = 0, checkpoint_linf: float | None = None) -> bool:
    """Whether an attack converged: going from half the steps to all of them changed its ASR by less than
    ``tolerance`` (a gain as large is an attack still improving, a loss as large an unstable one), *and* its
    white-box excess over ``clean_floor`` is positive (the Wilson lower bound of its ASR on ``n`` images lies
    above the floor; the point value where ``n`` is unknown), *and*, where
    the L-inf distance between its last two checkpoint patches is known, the patch moved (a distance of
    0 is a stalled optimiser). An unknown half-steps ASR (None or NaN) never counts as converged, nor
    does an attack that fools nothing: ``is_converged(0, 0)`` is False."""
    return not_converged_reason(asr, asr_half_steps, tolerance, clean_floor, n, checkpoint_linf) is None


def patch_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """L-inf distance between two patches (the largest change of any pixel and channel)."""
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


def converge_universal(attack: UniversalPatchAttack, white_box: Callable[[torch.Tensor], Rate],
                       extra: dict[str, Callable[[torch.Tensor], Rate]] | None = None, tolerance: float = TOLERANCE,
                       min_passes: float = MIN_PASSES, progress: bool = False
                       ) -> tuple[torch.Tensor, pd.DataFrame, dict[int, torch.Tensor]]:
    """Run ``attack`` (doubling schedule) until doubling adds less than ``tolerance`` white-box ASR.

    ``white_box(patch)`` returns the white-box rate of a patch; ``extra`` names more evaluations
    (e.g. the transfer to the 2-bit model), recorded on the same checkpoints. Returns the final patch,
    the curve (one row per checkpoint and evaluation: steps, rate, k, n, Wilson interval, and
    ``checkpoint_linf``, the L-inf distance of the checkpoint's patch from the previous one, NaN at the
    first) and the patch at every checkpoint (so that any other model can be evaluated on the same curve later).
    Stops after the first checkpoint whose ASR differs from the previous one's by less than ``tolerance`` and
    the attack has seen at least ``min_passes`` passes over its training images (so that an early
    plateau, before the patch has met most images, does not pass for convergence), or at the
    configured ``steps`` (then the last row's ``budget_exhausted`` is True unless the rule was met).
    """
    cfg = attack.config
    ends = cfg.phase_ends()
    rows: list[dict] = []
    checkpoints: dict[int, torch.Tensor] = {}
    previous: float | None = None
    last: torch.Tensor | None = None
    for end in ends:
        patch = attack.run(end - attack.step, progress=progress)
        checkpoints[end] = patch.detach().cpu().clone()
        moved = float("nan") if last is None else patch_distance(checkpoints[end], last)
        last = checkpoints[end]
        stop = False
        for name, fn in {"white-box": white_box, **(extra or {})}.items():
            r = fn(patch)
            ci = wilson(r.k, r.n)
            rows.append({"steps": end, "evaluated on": name, "asr": r.value, "k": r.k, "n": r.n,
                         "ci_low": ci.low, "ci_high": ci.high, "checkpoint_linf": moved})
            if name == "white-box":
                seen = end * cfg.batch_size / max(1, len(attack.images))
                stop = previous is not None and abs(r.value - previous) < tolerance and seen >= min_passes
                previous = r.value
        if stop:
            break
    curve = pd.DataFrame(rows)
    curve["budget_exhausted"] = attack.step >= cfg.steps and not _met(curve, tolerance)
    return attack.patch.detach().clone(), curve, checkpoints


def _met(curve: pd.DataFrame, tolerance: float) -> bool:
    wb = curve[curve["evaluated on"] == "white-box"].asr.tolist()
    return len(wb) >= 2 and abs(wb[-1] - wb[-2]) < tolerance


def universal_strength(name: str, curve: pd.DataFrame, clean_floor: float,
                       checkpoints: Mapping[int, torch.Tensor] | None = None) -> AttackStrength:
    """The :class:`AttackStrength` of a universal patch from its :func:`converge_universal` curve.

    With one checkpoint only (no doubling measured), the half-steps ASR is unknown (NaN), so the
    attack never counts as converged. The L-inf distance between the last two checkpoint patches is
    read from ``checkpoints`` (the patches :func:`converge_universal` returns) where given, else from
    the curve's ``checkpoint_linf`` column where it has one (curves cached before it existed have not:
    the distance is then unknown and only the ASR rule applies).
    """
    wb = curve[curve["evaluated on"] == "white-box"].sort_values("steps")
    last = wb.iloc[-1]
    half = float(wb.iloc[-2].asr) if len(wb) >= 2 else float("nan")
    linf: float | None = None
    if checkpoints is not None and len(checkpoints) >= 2:
        a, b = sorted(checkpoints)[-2:]
        linf = patch_distance(checkpoints[b], checkpoints[a])
    elif "checkpoint_linf" in wb and len(wb) >= 2 and not math.isnan(float(last.checkpoint_linf)):
        linf = float(last.checkpoint_linf)
    return AttackStrength(name, float(last.asr), half, clean_floor, int(last.steps), int(last.n),
                          bool(curve.budget_exhausted.iloc[-1]), linf)


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
    restarts, whichever loses more (so a budget still short in either dimension shows). The record
    carries the image-steps the attack ran and its full budget where the patches have them, over every
    image attacked (not only the ``valid`` ones); an early-stopped run reads the same ASR and halves as
    a full one, only its cost differs."""
    valid = valid.cpu().bool()
    n = int(valid.sum())
    n_r, n_t = found.success.shape[1], found.success.shape[2] - 1

    def asr(steps: int, restarts: int) -> float:
        return int((found.fooled_within(steps, restarts) & valid).sum()) / max(n, 1)

    full = asr(n_t, n_r)
    half = min(asr(n_t // 2, n_r), asr(n_t, max(1, n_r // 2)) if n_r > 1 else full)
    run, budget = getattr(found, "image_steps_run", None), getattr(found, "image_steps_full_budget", None)
    return AttackStrength(name, full, half, clean_floor, n_t, n,
                          image_steps_run=None if run is None else int(run),
                          image_steps_full_budget=None if budget is None else int(budget))
