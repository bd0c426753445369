"""The inner attacks of every defense, crafted for the images of the batch against the current weights.

Each training batch gets perturbations made *for its own images*, from a fresh random start, by
``steps`` iterations of the attack its paper trains on (one shared number, ``Profile.defense_inner_steps``,
so that no defense gets a stronger inner attack than another):

- :func:`patch_inner`: Rao et al.'s per-image patch (PBAT, and QADT-R's A-QAPA inside the quantized
  model at the sampled width and size): a random location outside the avoided region, uniform random
  content, ``steps`` signed-gradient steps with location optimisation (each step also tries a move of
  ``location_stride`` pixels and keeps it where the loss rises), the best iterate per image. It is
  :func:`~qadtr_core.attacks.image_patch.image_patch_attack` itself with one restart: one way to craft a
  patch, for training and for evaluation.
- :func:`pgd_inner`: L-inf PGD from a random start in the ball (DWQ's training attack, Madry et al.),
  step ``2.5 eps / steps`` (Madry et al.'s rule for few steps).

The model runs in eval mode while the attack is crafted (BatchNorm statistics untouched), at whatever
width it is set to. Nothing is carried from batch to batch, so a resumed run repeats exactly.

**Fidelity** (:class:`FidelityMeter`): every ``probe_every`` training steps a strategy runs a *fresh*
attack of the same kind on the same images at the same width (the per-image patch with 20 steps and
location optimisation, or 20-step PGD) and records the mean cross-entropy of the clean images, of the
training attack's images and of the fresh attack's images, and the share of the clean-correct probed images
each attack fools (its ASR); the trainer reads the sums once per epoch
(``inner_record()``), giving ``fidelity = (train - clean) / (fresh - clean)``, the share of the fresh
attack's loss gain that the training attack reaches. The defenses chapter requires at least 0.8.
Where the training attack runs as many steps as the fresh one (the quick and paper profiles: 20), the ratio
is about 1 by construction, up to the seeds' noise: the bar then guards against an inner attack made cheaper
(fewer or larger steps, patches carried from other images), not against a weak attack algorithm, which
the chapters' converged evaluation attacks (1,600 steps x 4 restarts) and the "does every defense defend"
table judge.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.image_patch import ImagePatchConfig, image_patch_attack
from ..attacks.pgd import PGDConfig, pgd_attack
from ..patches import Box
from ..utils import eval_mode

FRESH_STEPS = 20  # the fresh attack the training attack is compared with (issue 17: 20 steps)
FRESH_STEP_SIZE = 0.05  # the evaluation step of the per-image patch (protocol.md)
MIN_FIDELITY = 0.8  # the training attack must reach this share of the fresh attack's loss gain


def check_inner(steps: int, step_size: float) -> None:
    """``steps >= 1`` and ``step_size > 0``, else ``ValueError`` (a defense without an inner attack is QAT)."""
    if steps < 1 or not step_size > 0:
        raise ValueError(f"inner steps must be >= 1 and the step size > 0, got {steps} and {step_size}")


def patch_inner(model: nn.Module, x: torch.Tensor, y: torch.Tensor, size: int, steps: int, step_size: float,
                avoid: Box | None, seed: int, location_opt: bool = True, location_stride: int = 2) -> torch.Tensor:
    """``x`` with a per-image patch crafted for each image by ``steps`` signed steps (see the module doc)."""
    cfg = ImagePatchConfig(size=size, steps=steps, step_size=step_size, restarts=1, avoid=avoid, seed=seed,
                           location_opt=location_opt, location_stride=location_stride)
    found = image_patch_attack(model, x, y, cfg, batch_size=len(x))
    return found.apply(x).detach()


def pgd_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s step for a ``steps``-step PGD at radius ``eps``: 2.5 eps / steps."""
    return 2.5 * eps / steps


def pgd_inner(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, seed: int) -> torch.Tensor:
    """``x`` plus an L-inf PGD perturbation of radius ``eps`` after ``steps`` steps from a random start."""
    return pgd_attack(model, x, y, PGDConfig(eps=eps, step_size=pgd_step_size(eps, steps), steps=steps, seed=seed),
                      batch_size=len(x))


def mean_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy of ``x`` (eval mode, no gradients) at the model's current width."""
    return ce_and_predictions(model, x, y)[0]


def ce_and_predictions(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy of ``x`` and the predicted labels, from one forward pass (eval mode, no gradients)."""
    with torch.no_grad(), eval_mode(model):
        logits = model(x)
        return float(F.cross_entropy(logits, y)), logits.argmax(1)


class FidelityMeter:
    """Sums of the clean, training-attack and fresh-attack cross-entropies of the probed batches, and of the
    images each attack fools among the clean-correct ones, per epoch."""

    def __init__(self) -> None:
        self.clean, self.train, self.fresh, self.probes = 0.0, 0.0, 0.0, 0
        self.n_ok, self.fooled_train, self.fooled_fresh = 0, 0, 0

    def add(self, clean: float, train: float, fresh: float, n_ok: int = 0, fooled_train: int = 0,
            fooled_fresh: int = 0) -> None:
        self.clean, self.train, self.fresh, self.probes = (self.clean + clean, self.train + train,
                                                          self.fresh + fresh, self.probes + 1)
        self.n_ok, self.fooled_train, self.fooled_fresh = (self.n_ok + n_ok, self.fooled_train + fooled_train,
                                                           self.fooled_fresh + fooled_fresh)

    def read(self) -> dict[str, float]:
        """``inner_loss_clean``, ``inner_loss_train``, ``inner_loss_fresh`` (means over the probes since the last
        read), ``fidelity``, ``probes`` and, where a probed image was clean-correct, ``inner_asr_train`` /
        ``inner_asr_fresh`` (the share of the clean-correct probed images each attack fools) with ``inner_n_ok``;
        empty when nothing was probed. Starts again from zero."""
        if not self.probes:
            return {}
        c, t, f = self.clean / self.probes, self.train / self.probes, self.fresh / self.probes
        out = {"inner_loss_clean": c, "inner_loss_train": t, "inner_loss_fresh": f,
               "fidelity": fidelity_ratio(c, t, f), "probes": self.probes}
        if self.n_ok:
            out.update(inner_asr_train=self.fooled_train / self.n_ok, inner_asr_fresh=self.fooled_fresh / self.n_ok,
                       inner_n_ok=self.n_ok)
        self.__init__()
        return out


def fidelity_ratio(clean: float, train: float, fresh: float) -> float:
    """The share of the fresh attack's loss gain over the clean loss that the training attack reaches
    (NaN when the fresh attack gains nothing)."""
    gain = fresh - clean
    return (train - clean) / gain if gain > 1e-9 else float("nan")


class InnerStrategy:
    """A batch loss with an inner attack and its fidelity probe (PBAT, DWQ, QADT-R).

    Subclasses set ``probe_every`` and call :meth:`maybe_probe` with the batch they attacked; the
    trainer reads :meth:`inner_record` once per epoch into the training history.
    """

    probe_every: int = 50

    def _meter(self) -> FidelityMeter:
        if not hasattr(self, "_fidelity"):
            self._fidelity = FidelityMeter()
        return self._fidelity

    def maybe_probe(self, step: int, model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor,
                    fresh) -> None:
        """Every ``probe_every`` steps (and at step 0): record the clean, training and fresh losses of
        ``x`` (``fresh()`` crafts the fresh attack on the same images at the same width)."""
        if self.probe_every <= 0 or step % self.probe_every:
            return
        (clean, p0), (train, p1), (fr, p2) = (ce_and_predictions(model, z, y) for z in (x, adv, fresh()))
        ok = p0 == y
        self._meter().add(clean, train, fr, int(ok.sum()), int((ok & (p1 != y)).sum()), int((ok & (p2 != y)).sum()))

    def inner_record(self) -> dict[str, float]:
        """The fidelity record since the last call (per epoch, read by the trainer)."""
        return self._meter().read()
