"""Robustness of (defended) models against per-image patches: seen, unseen, transfer and adaptive threats.

A *threat* is one way of crafting per-image patches (Rao et al.'s attack, untargeted) against a model
at a bit-width. "Seen" is the configuration PBAT trains with (8x8 squares outside the central 10x10,
crafted at the evaluated bit-width); the others change one thing at a time:

- size (10x10), shape (a circle of diameter 8), location (anywhere, the centre included);
- source bit-width: crafted on the same defense's 32-bit model, evaluated at each bit-width;
- adaptive: crafted against the defense's expectation over its bit set (EOT over bit-widths, the
  attack that a random-precision or multi-width defense must withstand; Athalye et al. 2018). It is
  only defined for a model that serves several bit-widths.

ASR is untargeted, over the evaluation images that the model at that bit-width classifies correctly
when clean. The *worst case* counts an image as broken if any threat broke it (the attacker picks per
image). Every crafted set is cached under the attack config, the model's hash and the bit-width(s).
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .artifacts import cached_tensors
from .attacks.image_patch import ImagePatchConfig, image_patch_attack
from .metrics import predict
from .patches import Placement, Shape, apply_patch, central_box, make_mask
from .quant import FULL_PRECISION, set_bits
from .zoo import TrainedModel

Source = Literal["white-box", "32-bit", "eot"]


@dataclass(frozen=True)
class Threat:
    """One per-image patch threat (see the module doc).

    Attributes:
        name: label in tables.
        size: patch side in pixels. (Default: 8)
        shape: "square" or "circle". (Default: "square")
        anywhere: patches may cover the central 10x10 (PBAT never trains there). (Default: False)
        source: "white-box" (crafted at the evaluated width), "32-bit" (on the defense's 32-bit model)
            or "eot" (against the mean over the bit set). (Default: "white-box")
    """

    name: str
    size: int = 8
    shape: Shape = "square"
    anywhere: bool = False
    source: Source = "white-box"

    @property
    def seen(self) -> bool:
        return self == SEEN


SEEN = Threat("seen: 8x8 square outside the centre")
THREATS: tuple[Threat, ...] = (
    SEEN,
    Threat("unseen size: 10x10 square", size=10),
    Threat("unseen shape: circle, 8 px", shape="circle"),
    Threat("unseen location: anywhere", anywhere=True),
    Threat("unseen bit-width: crafted at 32 bits", source="32-bit"),
    Threat("adaptive: EOT over the bit set", source="eot"),
)


class BitEnsemble(nn.Module):
    """A model's mean log-probabilities over ``bit_set``: the EOT surrogate of a multi-width defense."""

    def __init__(self, model: nn.Module, bit_set: Sequence[int]) -> None:
        super().__init__()
        self.model, self.bit_set = model, tuple(bit_set)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0.0
        for b in self.bit_set:
            set_bits(self.model, b)
            out = out + F.log_softmax(self.model(x), dim=1)
        return out / len(self.bit_set)


def attack_config(threat: Threat, steps: int, restarts: int, seed: int) -> ImagePatchConfig:
    """The per-image patch attack of ``threat`` (step 0.05, as in Rao et al.'s evaluation)."""
    return ImagePatchConfig(size=threat.size, shape=threat.shape, steps=steps, restarts=restarts, step_size=0.05,
                            avoid=None if threat.anywhere else central_box(10), seed=seed)


def fingerprint(x: torch.Tensor) -> str:
    """A short hash of images in [0, 1] as 8-bit pixels (the same on every device)."""
    pixels = (x.detach() * 255).round().to(torch.uint8).cpu().numpy().tobytes()
    return hashlib.sha256(pixels).hexdigest()[:16]


def _craft(model: nn.Module, bit_set: Sequence[int], x: torch.Tensor, y: torch.Tensor, cfg: ImagePatchConfig,
           model_hash: str) -> torch.Tensor:
    """Patched images crafted against ``model`` at one width (or, with several, against their mean).

    The patches and their locations (not the images) are cached, so a cache built on one device
    serves another.
    """
    def compute() -> dict[str, torch.Tensor]:
        target = BitEnsemble(model, bit_set) if len(bit_set) > 1 else set_bits(model, bit_set[0])
        found = image_patch_attack(target, x, y, cfg)
        return {"patches": found.patches.cpu(), "rows": found.placement.rows.cpu(), "cols": found.placement.cols.cpu()}

    key = {"attack": cfg, "model": model_hash, "bits": list(bit_set), "n": len(x), "images": fingerprint(x)}
    p = cached_tensors("defense_patches", key, compute)
    place = Placement(p["rows"], p["cols"], torch.zeros(len(x)), torch.ones(len(x)))
    return apply_patch(x, p["patches"].to(x), make_mask(cfg.size, cfg.shape).to(x), place)


def evaluate_threats(defenses: Mapping[str, Mapping[int, TrainedModel]], x: torch.Tensor, y: torch.Tensor,
                     threats: Sequence[Threat] = THREATS, steps: int = 100, restarts: int = 1, seed: int = 0,
                     progress: bool = True) -> pd.DataFrame:
    """ASR of every threat against every defense at every bit-width, plus each cell's worst case.

    ``defenses`` maps a defense name to ``{bits: TrainedModel}``; a defense whose bit-widths share one
    model is a multi-width model and also meets the adaptive EOT threat. Returns one row per (defense,
    bits, threat) with ``asr`` (percent), ``n`` (clean-correct images) and ``broken`` (images fooled).
    """
    rows = []
    jobs = [(d, b, t) for d, per in defenses.items() for b in per for t in threats]
    bar = tqdm(total=len(jobs), disable=not progress, desc="threats", mininterval=2.0)
    for name, per_bits in defenses.items():
        bit_set = tuple(per_bits)
        shared = len({id(tm.model) for tm in per_bits.values()}) == 1 and len(bit_set) > 1
        for b, tm in per_bits.items():
            with torch.no_grad():
                clean_ok = predict(set_bits(tm.model, b), x) == y
            any_broken = torch.zeros_like(clean_ok)
            for threat in threats:
                bar.update()
                cfg = attack_config(threat, steps, restarts, seed)
                if threat.source == "eot":
                    if not shared:
                        continue
                    adv = _craft(tm.model, bit_set, x, y, cfg, tm.record["config_hash"])
                elif threat.source == "32-bit":
                    src_bits = FULL_PRECISION if FULL_PRECISION in per_bits else max(bit_set)
                    if b == src_bits:
                        continue
                    src = per_bits[src_bits]
                    adv = _craft(src.model, (src_bits,), x, y, cfg, src.record["config_hash"])
                else:
                    adv = _craft(tm.model, (b,), x, y, cfg, tm.record["config_hash"])
                with torch.no_grad():
                    broken = clean_ok & (predict(set_bits(tm.model, b), adv) != y)
                any_broken |= broken
                rows.append(_row(name, b, threat.name, threat.seen, broken, clean_ok))
            rows.append(_row(name, b, "worst case (any threat)", False, any_broken, clean_ok))
            set_bits(tm.model, tm.config.bits)
    bar.close()
    return pd.DataFrame(rows)


def _row(defense: str, bits: int, threat: str, seen: bool, broken: torch.Tensor, clean_ok: torch.Tensor) -> dict:
    n = int(clean_ok.sum())
    return {"defense": defense, "bits": bits, "threat": threat, "seen": seen, "n": n, "broken": int(broken.sum()),
            "asr": 100.0 * int(broken.sum()) / max(n, 1)}


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Defense x bit-width ASR in the layout of TriQDef's Table 5: rows (defense, seen / unseen / worst case).

    "unseen" is the mean ASR over the unseen threats (size, shape, location, source bit-width); the
    adaptive EOT threat enters only the worst case. A "mean" column averages the bit-widths: for a
    random-precision defense it approximates the expected ASR when each input meets a uniformly drawn
    width (each width has its own clean-correct denominator).
    """
    t = table.copy()
    kind = t.threat.map(lambda s: "seen" if s.startswith("seen") else "worst case" if s.startswith("worst")
                        else "unseen" if s.startswith("unseen") else "adaptive")
    t["kind"] = kind
    t = t[t.kind != "adaptive"]
    out = t.groupby(["defense", "kind", "bits"], sort=False).asr.mean().unstack("bits")
    out["mean"] = out.mean(axis=1)
    order = list(dict.fromkeys(table.defense))
    out = out.reindex(pd.MultiIndex.from_product([order, ["seen", "unseen", "worst case"]], names=["defense", "ASR"]))
    return out


def clean_table(defenses: Mapping[str, Mapping[int, TrainedModel]], x: torch.Tensor, y: torch.Tensor) -> pd.DataFrame:
    """Clean accuracy (percent) of every defense at every bit-width, with n."""
    rows = []
    for name, per_bits in defenses.items():
        for b, tm in per_bits.items():
            with torch.no_grad():
                acc = (predict(set_bits(tm.model, b), x) == y).float().mean().item()
            rows.append({"defense": name, "bits": b, "clean_acc": 100 * acc, "n": len(y)})
            set_bits(tm.model, tm.config.bits)
    return pd.DataFrame(rows)



def defense_claims(asr: pd.DataFrame, clean: pd.DataFrame, undefended: str = "QAT (undefended)",
                   ours: str = "QADT-R", baselines: Sequence[str] = ("PBAT", "DWQ")) -> dict[str, dict]:
    """Claim values C3 (QADT-R vs the better baseline), C4 (PBAT seen vs unseen), C5 (clean accuracy).

    ``asr`` is a :func:`summary` table, ``clean`` a :func:`clean_table`; all values in percent / points.
    """
    bit_cols = [c for c in asr.columns if c != "mean"]
    best = {k: asr.loc[list(baselines)].xs(k, level="ASR")[bit_cols].min() for k in ("unseen", "worst case")}
    red = {k: best[k] - asr.loc[(ours, k), bit_cols] for k in best}
    pbat_gap = asr.loc[("PBAT", "unseen"), bit_cols] - asr.loc[("PBAT", "seen"), bit_cols]
    low = min(bit_cols)
    acc = clean.pivot(index="defense", columns="bits", values="clean_acc")
    drop = acc.loc[undefended] - acc.loc[ours]
    return {
        "C3": {"reduction_unseen_max": float(red["unseen"].max()), "reduction_unseen_mean": float(red["unseen"].mean()),
               "reduction_worst_mean": float(red["worst case"].mean()),
               "by_bits": {int(b): float(v) for b, v in red["unseen"].items()}},
        "C4": {"bits_low": int(low), "seen_low": float(asr.loc[("PBAT", "seen"), low]),
               "unseen_low": float(asr.loc[("PBAT", "unseen"), low]), "gap_mean": float(pbat_gap.mean())},
        "C5": {"max_drop": float(drop.max()), "mean_drop": float(drop.mean()),
               "by_bits": {int(b): float(v) for b, v in drop.items()}},
    }


def ablation_claim(asr: pd.DataFrame, full: str = "QADT-R",
                   removed: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Claim value C7: how much the mean unseen ASR rises when each component is removed (points)."""
    removed = removed or {"A-QAPA": "without A-QAPA", "DBWT": "without DBWT", "GIR": "without GIR"}
    base = asr.loc[(full, "unseen"), "mean"]
    return {"C7": {"increase": {c: float(asr.loc[(name, "unseen"), "mean"] - base) for c, name in removed.items()}}}
