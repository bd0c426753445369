"""The patch threats of the defense chapters, and what "seen" means for each defense.

A *threat* is one way of crafting untargeted patches: its patch size, shape, the region it may go in,
its family (Rao et al.'s per-image patch, or one universal patch for every image) and its source:

- "white-box": crafted against the evaluated model at the evaluated width (Rao et al.'s attack);
- "transfer": crafted on one common surrogate, an undefended full-precision model seeded independently
  of every evaluated model (not the 32-bit undefended model, not PBAT-32's parent), and applied to every
  defense alike (so no defense meets a near-white-box "transfer" that another does not); the per-image
  patch of the 8x8 threat, and (family "universal") a universal 8x8 patch, a different attack family;
- "random search": gradient-free (Sparse-RS, :func:`~qadtr_core.attacks.random_search.random_search_patch`)
  against the evaluated model at the evaluated width, on the images no gradient threat broke, so that
  an input-gradient that points nowhere (gradient masking) does not pass for robustness;
- "start transfer": crafted white-box against the evaluated defense's own undefended start (PBAT at b: the
  QAT model at b; DWQ, QADT-R: the multi-width model at b) and applied to the defense: a fine-tune stays
  close to its start, so the start's patches are the nearest transfer an attacker without the defense's
  weights has (for an undefended model, its own white-box attack);
- "EOT": only where inference is randomised (DWQ's random precision): crafted against the expectation
  over the widths the predictor draws (the loss averaged over the bit set every step) and evaluated
  against the random-precision predictor itself.

The sizes, shapes and regions are chosen so that "unseen" means unseen (issue 18): squares of 4 and 12
px (no defense trains on either; no 12 px square fits outside the central 10x10 of a 32 px image, so it
always covers part of the centre), a 4x16 bar (not inside any square a defense trains on; its 16 px box
cannot avoid the centre either), a circle of diameter 10, an 8x8 patch *inside* the central 10x10 (the
region every defense's training avoids), and the two transfers. The 8x8 square (PBAT's and QADT-R's
training patch) and the 10x10 square (seen by QADT-R only) stay.

"Seen" is defined per defense by its own :class:`PatchDistribution` (the patches it trained on): a
white-box threat is seen when its size, shape, region and source width all lie inside it. A transfer is
unseen for every defense (none trains on another model's patches). Random search, the start transfer and
EOT are neither: they enter only the worst case ("adaptive").
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from ..patches import Shape, make_mask

Source = Literal["white-box", "transfer", "random search", "EOT", "start transfer"]
SOURCES: tuple[str, ...] = ("white-box", "transfer", "random search", "EOT", "start transfer")
Region = Literal["outside centre", "anywhere", "centre"]
REGIONS: tuple[str, ...] = ("outside centre", "anywhere", "centre")
Family = Literal["per-image", "universal"]
ADAPTIVE_SOURCES: tuple[str, ...] = ("random search", "EOT", "start transfer")  # only in the worst case
CENTRE = 10  # the central region every defense's training patches avoid (Rao et al.: the central 10x10)


@dataclass(frozen=True)
class Threat:
    """One patch threat (see the module doc).

    Attributes:
        name: label in tables.
        size: side in pixels of the patch's square box. (Default: 8)
        shape: "square", "circle" or "bar" (:func:`~qadtr_core.patches.make_mask`). (Default: "square")
        region: "outside centre" (the patch's box misses the central 10x10, as in training), "anywhere"
            (it may cover the centre) or "centre" (inside the central 10x10). (Default: "outside centre")
        source: "white-box", "transfer", "random search" or "EOT". (Default: "white-box")
        family: "per-image" (Rao et al.) or "universal" (one patch for every image; transfer only).
            (Default: "per-image")
    """

    name: str
    size: int = 8
    shape: Shape = "square"
    region: Region = "outside centre"
    source: Source = "white-box"
    family: Family = "per-image"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown threat source {self.source!r}; allowed: {', '.join(SOURCES)}")
        if self.region not in REGIONS:
            raise ValueError(f"unknown threat region {self.region!r}; allowed: {', '.join(REGIONS)}")
        if self.family not in ("per-image", "universal"):
            raise ValueError(f"unknown threat family {self.family!r}; allowed: 'per-image', 'universal'")
        if self.family == "universal" and self.source != "transfer":
            raise ValueError("a universal patch is evaluated as a transfer from the surrogate only")
        if self.region == "centre" and self.size >= CENTRE:
            raise ValueError(f"a patch inside the central {CENTRE}x{CENTRE} must be smaller than {CENTRE} px")
        if self.region == "outside centre" and self.size > (32 - CENTRE) // 2:
            raise ValueError(f"no {self.size} px box fits outside the central {CENTRE}x{CENTRE} of a 32 px image: "
                             "use region='anywhere'")
        make_mask(self.size, self.shape)

    @property
    def anywhere(self) -> bool:
        """The patch may lie in the central region (no defense trains there)."""
        return self.region != "outside centre"

    @property
    def adaptive(self) -> bool:
        """Random search, the start transfer and EOT: in the worst case only, neither seen nor unseen."""
        return self.source in ADAPTIVE_SOURCES


# Shapes of side ``size`` whose mask lies inside the ``size`` x ``size`` square (a bar of length ``size`` does
# too, but it is only 4 px wide: a 4x16 bar fits no square smaller than 16, which no defense trains on).
INSCRIBED_IN_SQUARE = ("circle", "bar")

THREATS: tuple[Threat, ...] = (
    Threat("8x8 square"),
    Threat("10x10 square", size=10),
    Threat("4x4 square", size=4),
    Threat("12x12 square, over the centre", size=12, region="anywhere"),
    Threat("4x16 bar, anywhere", size=16, shape="bar", region="anywhere"),
    Threat("circle, 10 px", size=10, shape="circle"),
    Threat("8x8 in the centre", region="centre"),
    Threat("transfer from FP surrogate", source="transfer"),
    Threat("universal 8x8 from FP surrogate", source="transfer", family="universal"),
    Threat("transfer from its undefended start, 8x8", source="start transfer"),
    Threat("random search, 8x8", source="random search"),
)
# The attack on a randomised predictor (DWQ's random-precision inference), never on a fixed-width model.
EOT_THREAT = Threat("EOT over the drawn widths, 8x8", source="EOT")
WORST = "worst case (any threat)"


def white_box_twin(threat: Threat, threats: Sequence[Threat]) -> Threat | None:
    """The white-box threat of ``threats`` with ``threat``'s patch (size, shape and region), or None."""
    return next((w for w in threats if w.source == "white-box"
                 and (w.size, w.shape, w.region) == (threat.size, threat.shape, threat.region)), None)


def select_threats(names: Sequence[str] = ()) -> tuple[Threat, ...]:
    """The threats of :data:`THREATS` named in ``names``, in :data:`THREATS`' order; all of them if empty
    (``Profile.defense_threats``). A start transfer needs the white-box threat of its patch beside it (a model
    without a start meets that attack instead)."""
    if not names:
        return THREATS
    known = {t.name: t for t in THREATS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown threat(s) {', '.join(map(repr, unknown))}; allowed: "
                         f"{', '.join(repr(t.name) for t in THREATS)}")
    chosen = tuple(t for t in THREATS if t.name in set(names))
    for t in chosen:
        if t.source == "start transfer" and white_box_twin(t, chosen) is None:
            raise ValueError(f"threat {t.name!r} needs the white-box threat of the same patch among the threats")
    return chosen


@dataclass(frozen=True)
class PatchDistribution:
    """The patches a defense trained on.

    Attributes:
        sizes: patch sides (pixels); empty = no patch training (undefended models, DWQ).
        shapes: patch shapes. (Default: ("square",))
        anywhere: training patches could cover the central region. (Default: False)
        source_bits: widths the training patches were crafted at, on the model itself; None = the
            width the model serves (a per-width model such as PBAT). (Default: None)
        cross_width: the patches were crafted at one width and trained on at another (QADT-R: A-QAPA's cell
            width, DBWT's batch width), so a threat crafted and evaluated at width b was trained on only in
            the share of batches whose two widths agreed; still "seen", and labelled so. (Default: False)
    """

    sizes: tuple[int, ...] = ()
    shapes: tuple[str, ...] = ("square",)
    anywhere: bool = False
    source_bits: tuple[int, ...] | None = None
    cross_width: bool = False

    def sees(self, threat: Threat, bits: int) -> bool:
        """True if ``threat`` at evaluated width ``bits`` lies inside this training distribution: a patch of a
        trained size and shape, or a shape other than a square that fits inside a trained square (a circle of
        diameter d is inscribed in the d x d square: a defense trained on 10x10 squares has seen every 10 px
        circle, which is a 10x10 patch that leaves its corners as they were), in a region it trained in.
        A *square* of an untrained size stays unseen, as the protocol defines its sizes, although a 4x4
        square also lies inside the 8x8 threat set in the same way."""
        if threat.source != "white-box":
            return False
        trained = threat.size in self.sizes and threat.shape in self.shapes
        inscribed = (threat.shape != "square" and "square" in self.shapes
                     and any(threat.size <= s for s in self.sizes) and threat.shape in INSCRIBED_IN_SQUARE)
        if not (trained or inscribed):
            return False
        if threat.anywhere and not self.anywhere:
            return False
        return self.source_bits is None or bits in self.source_bits

    def kind(self, threat: Threat, bits: int) -> str:
        """"seen", "unseen" or "adaptive" (random search, the start transfer and EOT are neither: they only enter
        the worst case)."""
        if threat.adaptive:
            return "adaptive"
        return "seen" if self.sees(threat, bits) else "unseen"


NO_PATCHES = PatchDistribution()


def distribution_of(strategy_params: object) -> PatchDistribution:
    """The training patches of a strategy's params (``training_patches()``), or none."""
    fn = getattr(strategy_params, "training_patches", None)
    return fn() if callable(fn) else NO_PATCHES


def own_seen_threat(dist: PatchDistribution, bit_set: Sequence[int], threats: Sequence[Threat] = THREATS) -> str | None:
    """The white-box threat a defense saw at the most widths of ``bit_set`` (the first such in ``threats``),
    or None if it saw none (no patch training)."""
    counts = [(sum(dist.sees(t, b) for b in bit_set), -i, t.name) for i, t in enumerate(threats) if t.source == "white-box"]
    best = max(counts, default=(0, 0, None))
    return best[2] if best[0] else None


def check_seen_threats(distributions: Mapping[str, PatchDistribution], bit_set: Sequence[int],
                       threats: Sequence[Threat]) -> None:
    """Raise ValueError if a defense that trained on patches has no seen threat among ``threats`` (a profile's
    ``defense_threats`` that left it out) while :data:`THREATS` has one: its defends-at-all row and C4 need it,
    so the study refuses before it trains or attacks anything."""
    for name, dist in distributions.items():
        own = own_seen_threat(dist, bit_set, THREATS)
        if own is not None and own_seen_threat(dist, bit_set, threats) is None:
            raise ValueError(f"{name} trained on {own!r} patches, but the threats {[t.name for t in threats]} leave "
                             f"out every threat it saw; add {own!r} to Profile.defense_threats")


def seen_table(distributions: Mapping[str, PatchDistribution], bit_set: Sequence[int],
               threats: Sequence[Threat] = THREATS) -> pd.DataFrame:
    """Which threat is seen or unseen for which defense: one row per threat (its name, source and family
    in the first columns), one column per defense.

    A cell reads "seen", "unseen", "adaptive" (worst case only) or, where it depends on the width,
    "seen at 32 b; else unseen"; a seen cell of a ``cross_width`` distribution adds "(crafted at another
    width for most batches)".
    """
    rows = []
    for t in threats:
        row = {"threat": t.name, "source": t.source + (" (universal)" if t.family == "universal" else "")}
        for name, dist in distributions.items():
            kinds = {b: dist.kind(t, b) for b in bit_set}
            if len(set(kinds.values())) == 1:
                row[name] = next(iter(kinds.values()))
            else:
                row[name] = "seen at " + ", ".join(f"{b} b" for b, k in kinds.items() if k == "seen") + "; else unseen"
            if dist.cross_width and "seen" in kinds.values():
                row[name] = row[name].replace("seen", "seen (crafted at another width for most batches)", 1)
        rows.append(row)
    return pd.DataFrame(rows)
