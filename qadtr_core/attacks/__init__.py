"""Patch and pixel attacks: universal patch (EOT), per-image patch (Rao et al.), L-inf PGD (captum)."""
from .image_patch import ImagePatchConfig, ImagePatches, image_patch_attack
from .pgd import PGDConfig, pgd_attack
from .random_search import RandomSearchConfig, RandomSearchPatches, random_search_patch
from .universal_patch import UniversalPatchAttack, UniversalPatchConfig, patch_loss, universal_patch

__all__ = ["ImagePatchConfig", "ImagePatches", "image_patch_attack", "PGDConfig", "pgd_attack",
           "RandomSearchConfig", "RandomSearchPatches", "random_search_patch",
           "UniversalPatchAttack", "UniversalPatchConfig", "patch_loss", "universal_patch"]
