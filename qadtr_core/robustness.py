"""Robustness of (defended) models against per-image patches: every threat, per image, with intervals.

The threats and the per-defense meaning of "seen" live in :mod:`qadtr_core.threats`. Here they are
run: :func:`evaluate_threats` crafts each threat's patches (white-box at each width, once on the
common FP surrogate for transfer, once per defense against its ensemble for the adaptive threat) and
keeps **per-image outcomes** (clean-correct, broken) so that every rate and every difference can get
an interval (:mod:`qadtr_core.stats`). It also keeps each crafting attack's strength curve (its ASR
against the model it attacked, after all and after half its steps), the convergence check of the
claims. ASR is untargeted, over the images the evaluated model classifies correctly when clean; the
worst case counts an image as broken if any threat broke it. Crafted patches are cached under the
attack config, the attacked models' hashes, the widths and the images.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .artifacts import cached_tensors
from .attacks.image_patch import ImagePatchConfig, image_patch_attack
from .metrics import predict
from .patches import Placement, apply_patch, central_box, make_mask
from .quant import FULL_PRECISION, set_bits
from .stats import wilson
from .threats import THREATS, WORST, PatchDistribution, Threat
from .utils import Member, fingerprint
from .zoo import TrainedModel


class Ensemble(nn.Module):
    """Mean log-probabilities over ``members`` (model, bit-width): the EOT target of the adaptive threat.

    For a shared-weight defense the members are one model at every width of its bit set; for
    per-width models (PBAT, QAT) they are the models of the set, each at its width.
    """

    def __init__(self, members: Sequence[Member]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.models = nn.ModuleList(dict.fromkeys(m for m, _ in members))  # so eval()/train() reach every member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0.0
        for model, b in self.members:
            set_bits(model, b)
            out = out + F.log_softmax(model(x), dim=1)
        return out / len(self.members)


def BitEnsemble(model: nn.Module, bit_set: Sequence[int]) -> Ensemble:  # noqa: N802 (kept name)
    """One model's mean log-probabilities over ``bit_set``."""
    return Ensemble([(model, b) for b in bit_set])


def attack_config(threat: Threat, steps: int, restarts: int, seed: int, location_opt: bool = False) -> ImagePatchConfig:
    """The per-image patch attack of ``threat`` (step 0.05, as in Rao et al.'s evaluation)."""
    return ImagePatchConfig(size=threat.size, shape=threat.shape, steps=steps, restarts=restarts, step_size=0.05,
                            avoid=None if threat.anywhere else central_box(10), seed=seed, location_opt=location_opt)


def craft(members: Sequence[Member], hashes: Sequence[str], x: torch.Tensor, y: torch.Tensor,
          cfg: ImagePatchConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Patched ``x`` crafted against ``members`` (one: white-box; several: their ensemble), and the record.

    The record holds ``ok`` (the attacked target classifies the clean image correctly) and the
    attack's ``success`` curve (:attr:`ImagePatches.success`). Patches and locations, not images, are
    cached, so a cache built on one device serves another.
    """
    def compute() -> dict[str, torch.Tensor]:
        target = Ensemble(members) if len(members) > 1 else set_bits(members[0][0], members[0][1])
        with torch.no_grad():
            ok = predict(target, x) == y
        found = image_patch_attack(target, x, y, cfg)
        return {"patches": found.patches.cpu(), "rows": found.placement.rows.cpu(), "cols": found.placement.cols.cpu(),
                "success": found.success.cpu(), "ok": ok.cpu()}

    key = {"attack": cfg, "models": list(hashes), "bits": [b for _, b in members], "n": len(x),
           "images": fingerprint(x), "record": "success+ok"}
    p = cached_tensors("defense_patches", key, compute)
    place = Placement(p["rows"], p["cols"], torch.zeros(len(x)), torch.ones(len(x)))
    return apply_patch(x, p["patches"].to(x), make_mask(cfg.size, cfg.shape).to(x), place), p


@dataclass
class Evaluation:
    """Per-image outcomes and attack strength of :func:`evaluate_threats`.

    Attributes:
        per_image: one row per (defense, bits, threat, image): ``clean_ok``, ``broken``.
        strength: one row per crafting attack: the attacked ``target`` (its ``defense`` and ``bits``; bits
            None for an ensemble), ``threat``, ``steps``, ``n_ok`` (images the target gets right),
            ``k_full`` / ``k_half`` (of those, fooled after all / half the steps).
        n: evaluation images.
    """

    per_image: pd.DataFrame
    strength: pd.DataFrame
    n: int


def _strength_row(threat: Threat, target: str, rec: dict[str, torch.Tensor], steps: int, defense: str,
                  bits: int | None) -> dict:
    ok, success = rec["ok"].bool(), rec["success"].bool()
    full, half = success[:, -1, steps], success[:, -1, steps // 2]
    return {"threat": threat.name, "target": target, "defense": defense, "bits": bits, "steps": steps,
            "n_ok": int(ok.sum()), "k_full": int((full & ok).sum()), "k_half": int((half & ok).sum())}


def evaluate_threats(defenses: Mapping[str, Mapping[int, TrainedModel]], x: torch.Tensor, y: torch.Tensor,
                     surrogate: TrainedModel | None = None, threats: Sequence[Threat] = THREATS, steps: int = 100,
                     restarts: int = 1, seed: int = 0, location_opt: bool = False, progress: bool = True) -> Evaluation:
    """Every threat against every defense at every bit-width, per image (see the module doc).

    ``defenses`` maps a name to ``{bits: TrainedModel}``. The transfer threat is crafted once on
    ``surrogate`` (an independently seeded undefended FP model, none of the evaluated ones; required if a
    threat has source "transfer"), at its own width. White-box threats attack only the images the
    evaluated model gets right when clean.
    """
    rows, strength = [], []
    n = len(x)
    transfer: dict[str, torch.Tensor] = {}
    for t in threats:
        if t.source == "transfer":
            if surrogate is None:
                raise ValueError(f"threat {t.name!r} transfers from a surrogate: pass surrogate=")
            cfg = attack_config(t, steps, restarts, seed, location_opt)
            transfer[t.name], rec = craft([(surrogate.model, surrogate.config.bits)], [surrogate.record["config_hash"]],
                                          x, y, cfg)
            strength.append(_strength_row(t, "FP surrogate", rec, steps, "FP surrogate", surrogate.config.bits))
    jobs = sum(len(per) for per in defenses.values()) * len(threats)
    bar = tqdm(total=jobs, disable=not progress, desc="threats", mininterval=2.0)
    for name, per_bits in defenses.items():
        members = [(tm.model, b) for b, tm in per_bits.items()]
        hashes = [tm.record["config_hash"] for tm in per_bits.values()]
        adaptive: dict[str, torch.Tensor] = {}
        for t in threats:
            if t.source == "adaptive":
                adaptive[t.name], rec = craft(members, hashes, x, y, attack_config(t, steps, restarts, seed, location_opt))
                strength.append(_strength_row(t, f"{name} ensemble", rec, steps, name, None))
        for b, tm in per_bits.items():
            with torch.no_grad():
                clean_ok = (predict(set_bits(tm.model, b), x) == y).cpu()
            idx = clean_ok.nonzero()[:, 0]
            for t in threats:
                bar.update()
                broken = torch.zeros(n, dtype=torch.bool)
                if len(idx):
                    if t.source == "white-box":
                        cfg = attack_config(t, steps, restarts, seed, location_opt)
                        adv, rec = craft([(tm.model, b)], [tm.record["config_hash"]], x[idx.to(x.device)],
                                         y[idx.to(y.device)], cfg)
                        strength.append(_strength_row(t, f"{name} {b} b", rec, steps, name, b))
                        with torch.no_grad():
                            broken[idx] = (predict(set_bits(tm.model, b), adv) != y[idx.to(y.device)]).cpu()
                    else:
                        adv = transfer[t.name] if t.source == "transfer" else adaptive[t.name]
                        with torch.no_grad():
                            broken = (predict(set_bits(tm.model, b), adv) != y).cpu() & clean_ok
                rows.append(pd.DataFrame({"defense": name, "bits": b, "threat": t.name, "image": np.arange(n),
                                          "clean_ok": clean_ok.numpy(), "broken": broken.numpy()}))
            set_bits(tm.model, tm.config.bits)
    bar.close()
    return Evaluation(pd.concat(rows, ignore_index=True), pd.DataFrame(strength), n)


def threat_kinds(per_image: pd.DataFrame, distributions: Mapping[str, PatchDistribution],
                 threats: Sequence[Threat] = THREATS, as_defense: Mapping[str, str] | None = None) -> pd.Series:
    """"seen" / "unseen" / "adaptive" for each row of ``per_image``, from its defense's distribution.

    ``as_defense`` reads one defense's outcomes under another's distribution (C4: the undefended
    model under PBAT's definition of seen).
    """
    by_name = {t.name: t for t in threats}
    as_defense = as_defense or {}

    def kind(d: str, b: int, th: str) -> str:
        return distributions[as_defense.get(d, d)].kind(by_name[th], int(b))

    keys = per_image[["defense", "bits", "threat"]].drop_duplicates()
    lookup = {tuple(k): kind(*k) for k in keys.itertuples(index=False)}
    return pd.Series([lookup[k] for k in zip(per_image.defense, per_image.bits, per_image.threat)], index=per_image.index)


def asr_table(per_image: pd.DataFrame, distributions: Mapping[str, PatchDistribution],
              threats: Sequence[Threat] = THREATS) -> pd.DataFrame:
    """One row per (defense, bits, threat) and each cell's worst case: kind, n, broken, asr and Wilson interval (%)."""
    t = per_image.assign(kind=threat_kinds(per_image, distributions, threats))
    worst = t.groupby(["defense", "bits", "image"], sort=False).agg(clean_ok=("clean_ok", "first"),
                                                                    broken=("broken", "any")).reset_index()
    worst = worst.assign(threat=WORST, kind="worst case")
    rows = []
    for (d, b, th, kind), g in pd.concat([t, worst]).groupby(["defense", "bits", "threat", "kind"], sort=False):
        n, k = int(g.clean_ok.sum()), int((g.broken & g.clean_ok).sum())
        ci = wilson(k, n)
        rows.append({"defense": d, "bits": b, "threat": th, "kind": kind, "n": n, "broken": k,
                     "asr": 100 * k / max(n, 1), "ci_low": 100 * ci.low, "ci_high": 100 * ci.high})
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Defense x bit-width ASR in the layout of TriQDef's Table 5: rows (defense, seen / unseen / worst case).

    ``table`` is an :func:`asr_table`. "seen" and "unseen" average that defense's own seen and unseen
    threats (NaN where it has none: nothing is seen by an undefended model); the adaptive threat
    enters only the worst case. A "mean" column averages the widths.
    """
    t = table[table.kind != "adaptive"]
    out = t.groupby(["defense", "kind", "bits"], sort=False).asr.mean().unstack("bits")
    out["mean"] = out.mean(axis=1)
    order = list(dict.fromkeys(table.defense))
    return out.reindex(pd.MultiIndex.from_product([order, ["seen", "unseen", "worst case"]], names=["defense", "ASR"]))


def clean_outcomes(defenses: Mapping[str, Mapping[int, TrainedModel]], x: torch.Tensor, y: torch.Tensor) -> pd.DataFrame:
    """Per image: is it classified correctly by each defense at each bit-width (``correct``)."""
    rows = []
    for name, per_bits in defenses.items():
        for b, tm in per_bits.items():
            with torch.no_grad():
                ok = (predict(set_bits(tm.model, b), x) == y).cpu().numpy()
            rows.append(pd.DataFrame({"defense": name, "bits": b, "image": np.arange(len(y)), "correct": ok}))
            set_bits(tm.model, tm.config.bits)
    return pd.concat(rows, ignore_index=True)


def clean_table(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Clean accuracy (percent) per defense and bit-width with n and its Wilson interval."""
    rows = []
    for (d, b), g in outcomes.groupby(["defense", "bits"], sort=False):
        ci = wilson(int(g.correct.sum()), len(g))
        rows.append({"defense": d, "bits": b, "clean_acc": 100 * ci.value, "ci_low": 100 * ci.low,
                     "ci_high": 100 * ci.high, "n": len(g)})
    return pd.DataFrame(rows)


__all__ = ["Ensemble", "BitEnsemble", "Evaluation", "attack_config", "craft", "evaluate_threats", "threat_kinds",
           "asr_table", "summary", "clean_outcomes", "clean_table", "FULL_PRECISION"]
