"""Compute budgets: ``smoke`` (CI, minutes), ``quick`` (2 CPU cores, about an hour), ``paper`` (a GPU).

A profile changes budgets (epochs, images, steps), never the definitions of ``protocol.md``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .models import Arch


@dataclass(frozen=True)
class Profile:
    """Training and evaluation budgets of one profile.

    Attributes:
        name: "smoke", "quick" or "paper".
        arch: the network every chapter uses.
        n_train: training images (the first ``n_train`` of the 50,000; 50,000 = all).
        fp_epochs: full-precision training epochs.
        qat_epochs: QAT fine-tuning epochs per bit-width, starting from the full-precision model.
        qat_epochs_by_bits: ``(bits, epochs)`` pairs overriding ``qat_epochs`` (8 bits needs little,
            2 bits needs most).
        batch_size: training batch size.
        fp_lr: peak learning rate of full-precision training (one-cycle SGD).
        qat_lr: peak learning rate of QAT fine-tuning (cosine decay).
        n_eval: evaluation images (the first ``n_eval`` test images; the first 1,000 are pixel-exact).
        n_calib: images used to calibrate post-training quantization.
        n_attack: evaluation images for attacks (the first ``n_attack`` test images).
        patch_steps: universal-patch optimisation steps; patch_batch: images per step.
        n_patch_train: training images a universal patch is optimised on.
        image_patch_steps, image_patch_restarts: budget of the per-image patch attack (Rao et al.).
        n_attribution: images per attribution map statistic; ig_steps: Integrated-Gradients steps.
        n_location, location_stride: images and grid step (pixels) of the ASR-by-position map.
        defense_n_train, defense_epochs, defense_batch, defense_lr: fine-tuning budget of every defense
            (PBAT, DWQ, QADT-R and the ablations alike), from the undefended models, cosine decay.
        defense_inner_steps: inner-attack steps of every defense (PBAT's and QADT-R's patch steps, DWQ's
            PGD steps), one number so that no defense gets a stronger inner attack than another.
        n_defense_eval: evaluation images of the defense chapters; defense_attack_steps and
            defense_attack_restarts: the per-image patch attack that evaluates them.
    """

    name: str
    arch: Arch
    n_train: int
    fp_epochs: int
    qat_epochs: int
    batch_size: int
    fp_lr: float
    qat_lr: float
    n_eval: int
    n_calib: int = 512
    qat_epochs_by_bits: tuple[tuple[int, int], ...] = ()
    n_attack: int = 1000
    patch_steps: int = 500
    patch_batch: int = 128
    n_patch_train: int = 10000
    image_patch_steps: int = 100
    image_patch_restarts: int = 3
    n_attribution: int = 500
    ig_steps: int = 50
    n_location: int = 1000
    location_stride: int = 1
    defense_n_train: int = 50000
    defense_epochs: int = 10
    defense_batch: int = 128
    defense_lr: float = 0.01
    defense_inner_steps: int = 10
    n_defense_eval: int = 1000
    defense_attack_steps: int = 100
    defense_attack_restarts: int = 3

    def qat_epochs_for(self, bits: int) -> int:
        """QAT epochs at ``bits`` under this profile."""
        return dict(self.qat_epochs_by_bits).get(bits, self.qat_epochs)


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", "smallcnn", n_train=5000, fp_epochs=3, qat_epochs=1, batch_size=128,
                     fp_lr=0.2, qat_lr=0.02, n_eval=200, n_calib=256,
                     n_attack=100, patch_steps=25, patch_batch=32, n_patch_train=1000, image_patch_steps=5,
                     image_patch_restarts=1, n_attribution=16, ig_steps=16, n_location=64, location_stride=8,
                     defense_n_train=512, defense_epochs=1, defense_batch=64, defense_lr=0.01, defense_inner_steps=2,
                     n_defense_eval=48, defense_attack_steps=5, defense_attack_restarts=1),
    "quick": Profile("quick", "resnet20", n_train=50000, fp_epochs=15, qat_epochs=2, batch_size=256,
                     fp_lr=0.3, qat_lr=0.02, n_eval=1000, qat_epochs_by_bits=((8, 1), (2, 4)),
                     n_attack=500, patch_steps=200, patch_batch=64, n_patch_train=5000, image_patch_steps=20,
                     image_patch_restarts=1, n_attribution=64, ig_steps=32, n_location=200, location_stride=3,
                     defense_n_train=10000, defense_epochs=1, defense_batch=128, defense_lr=0.01, defense_inner_steps=5,
                     n_defense_eval=200, defense_attack_steps=20, defense_attack_restarts=1),
    "paper": Profile("paper", "resnet56", n_train=50000, fp_epochs=200, qat_epochs=30, batch_size=128,
                     fp_lr=0.1, qat_lr=0.01, n_eval=1000),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; an unknown name raises ``ValueError`` listing the allowed ones."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)}") from None
