"""qadtr_core: the library behind the QADT-R reproduction (quantized CIFAR ResNets, attacks, defenses, analyses)."""
from .quant import VALID_BITS, bits, check_bits, get_bits, prepare_bits, set_bits
from .models import build_model
from .profiles import Profile, get_profile
from .data import load_cifar10

__all__ = ["VALID_BITS", "bits", "check_bits", "get_bits", "prepare_bits", "set_bits", "build_model",
           "Profile", "get_profile", "load_cifar10"]
