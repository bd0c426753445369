"""The per-image patch threats of the defense chapters, and what "seen" means for each defense.

A *threat* is one way of crafting untargeted per-image patches (Rao et al.'s attack): its patch size,
shape, whether it may cover the central 10x10, and its source:

- "white-box": crafted against the evaluated model at the evaluated width;
- "transfer": crafted on one common surrogate, an undefended full-precision model seeded independently
  of every evaluated model (not the 32-bit undefended model, not PBAT-32's parent), and applied to every
  defense alike (so no defense meets a near-white-box "transfer" that another does not);
- "adaptive": crafted against the defense's expectation over what it serves: its mean log-probability
  over the bit set (a shared-weight model) or over its per-width models as an ensemble (PBAT,
  undefended QAT). It enters the worst case, never the seen/unseen means.

"Seen" is defined per defense by its own :class:`PatchDistribution` (the patches it trained on):
a white-box threat is seen when its size, shape, location rule and source width all lie inside it.
Transfer from another model is unseen for every defense (none trains on another model's patches).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from .patches import Shape, make_mask

Source = Literal["white-box", "transfer", "adaptive"]
SOURCES: tuple[str, ...] = ("white-box", "transfer", "adaptive")


@dataclass(frozen=True)
class Threat:
    """One per-image patch threat (see the module doc).

    Attributes:
        name: label in tables.
        size: patch side in pixels. (Default: 8)
        shape: "square" or "circle". (Default: "square")
        anywhere: patches may cover the central 10x10 (no defense trains there). (Default: False)
        source: "white-box", "transfer" or "adaptive". (Default: "white-box")
    """

    name: str
    size: int = 8
    shape: Shape = "square"
    anywhere: bool = False
    source: Source = "white-box"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown threat source {self.source!r}; allowed: {', '.join(SOURCES)}")
        make_mask(self.size, self.shape)


THREATS: tuple[Threat, ...] = (
    Threat("8x8 square"),
    Threat("10x10 square", size=10),
    Threat("circle, 8 px", shape="circle"),
    Threat("8x8 anywhere", anywhere=True),
    Threat("transfer from FP surrogate", source="transfer"),
    Threat("adaptive EOT", source="adaptive"),
)
WORST = "worst case (any threat)"


@dataclass(frozen=True)
class PatchDistribution:
    """The patches a defense trained on.

    Attributes:
        sizes: patch sides (pixels); empty = no patch training (undefended models, DWQ).
        shapes: patch shapes. (Default: ("square",))
        anywhere: training patches could cover the central region. (Default: False)
        source_bits: widths the training patches were crafted at, on the model itself; None = the
            width the model serves (a per-width model such as PBAT). (Default: None)
    """

    sizes: tuple[int, ...] = ()
    shapes: tuple[str, ...] = ("square",)
    anywhere: bool = False
    source_bits: tuple[int, ...] | None = None

    def sees(self, threat: Threat, bits: int) -> bool:
        """True if ``threat`` at evaluated width ``bits`` lies inside this training distribution."""
        if threat.source != "white-box" or threat.size not in self.sizes or threat.shape not in self.shapes:
            return False
        if threat.anywhere and not self.anywhere:
            return False
        return self.source_bits is None or bits in self.source_bits

    def kind(self, threat: Threat, bits: int) -> str:
        """"seen", "unseen" or "adaptive" (the adaptive threat is neither: it only enters the worst case)."""
        if threat.source == "adaptive":
            return "adaptive"
        return "seen" if self.sees(threat, bits) else "unseen"


NO_PATCHES = PatchDistribution()


def distribution_of(strategy_params: object) -> PatchDistribution:
    """The training patches of a strategy's params (``training_patches()``), or none."""
    fn = getattr(strategy_params, "training_patches", None)
    return fn() if callable(fn) else NO_PATCHES


def seen_table(distributions: Mapping[str, PatchDistribution], bit_set: Sequence[int],
               threats: Sequence[Threat] = THREATS) -> pd.DataFrame:
    """Which threat is seen or unseen for which defense: rows threats, columns defenses.

    A cell reads "seen", "unseen", "adaptive" or, where it depends on the width, "seen at 32 b" etc.
    """
    rows = {}
    for t in threats:
        row = {}
        for name, dist in distributions.items():
            kinds = {b: dist.kind(t, b) for b in bit_set}
            if len(set(kinds.values())) == 1:
                row[name] = next(iter(kinds.values()))
            else:
                row[name] = "seen at " + ", ".join(f"{b} b" for b, k in kinds.items() if k == "seen") + "; else unseen"
        rows[t.name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("threat")
