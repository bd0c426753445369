"""Robustness of (defended) models against patches: every threat, per image, with intervals.

The threats and the per-defense meaning of "seen" live in :mod:`qadtr_core.evaluation.threats`. Here they are
run: :func:`evaluate_threats` crafts each threat's patches (white-box at each width; once on the common
FP surrogate for the transfers; a gradient-free random search on what the gradient threats left; EOT
against a randomised predictor) and keeps **per-image outcomes** (clean-correct, broken) so that every
rate and every difference can get an interval (:mod:`qadtr_core.stats`). It also keeps each crafting
attack's strength curve (its ASR against the model it attacked, after all and after half its steps or
queries), the convergence check of the claims.

Two rates per cell (a model at one width and a threat):

- **robust accuracy** (the headline): over *all* evaluation images, the share classified correctly both
  clean and attacked (:func:`~qadtr_core.metrics.robust_accuracy`; a model that is wrong everywhere scores
  0, never "robust");
- **ASR**: untargeted, over the images the evaluated model classifies correctly when clean.

The worst case counts an image as broken if any threat broke it. A *collapsed* cell (the model's
``collapse_check`` in its build record: clean accuracy more than 10 points below its undefended start at
that width, :func:`~qadtr_core.zoo.collapse_check`) is flagged in every table (:func:`collapsed_cells`).

DWQ's deployment is **random-precision inference** (:class:`~qadtr_core.defenses.dwq.RandomPrecision`): a
width drawn per forward pass. Where a defense is named in ``randomised``, it is also evaluated that way
(:attr:`Evaluation.random_precision`): the EOT threat crafted against the mean log-probabilities over the
bit set (the attack averages the loss over every width the predictor may draw, at every step), the
transfers, and a random search against the random predictor itself, each scored against the
random-precision predictor over ``rp_draws`` seeded draws. Crafted patches are cached under the attack
config, the attacked models' hashes, the widths and the images.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..artifacts import cached_tensors
from ..attacks.image_patch import ImagePatchConfig, image_patch_attack, image_steps_of
from ..attacks.pgd import PGDConfig, pgd_attack
from ..attacks.random_search import RandomSearchConfig, random_search_patch
from ..attacks.universal_patch import UniversalPatchAttack, UniversalPatchConfig
from ..defenses.dwq import RandomPrecision
from ..metrics import input_gradient_norm, predict
from ..patches import Placement, apply_patch, central_box, make_mask, random_placement
from ..quant import FULL_PRECISION, set_bits
from ..stats import bootstrap_mean, wilson
from ..utils import Member, fingerprint, seeded_generator, stream_seed
from ..zoo import TrainedModel
from .threats import CENTRE, EOT_THREAT, THREATS, WORST, PatchDistribution, Threat, white_box_twin
from .transfer import attack_outcomes, random_patch_floor, rate_of

RP_SEED_OFFSET = 5151  # the random-precision draws of the evaluation never share a seed with an attack
PGD_THREAT = "L-inf PGD 8/255, 20 steps"  # DWQ's own training threat, for the "does it defend" table


class Ensemble(nn.Module):
    """Mean log-probabilities over ``members`` (model, bit-width): the EOT target over a set of widths.

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


def attack_config(threat: Threat, steps: int, restarts: int, seed: int, location_opt: bool = False,
                  early_stop: bool = False, loss: str = "ce", location_search: int = 1) -> ImagePatchConfig:
    """The per-image patch attack of ``threat`` (step 0.05, as in Rao et al.'s evaluation). For the centre
    region it runs inside the central box (:func:`craft`), so it avoids nothing there. ``early_stop``: stop
    on an image once it is fooled (:class:`~qadtr_core.attacks.ImagePatchConfig`): for white-box threats,
    whose patches are scored on the model they were crafted on; never for patches crafted to transfer.
    ``loss``: "ce" or "margin" (CW-style, :class:`~qadtr_core.attacks.ImagePatchConfig`); ``location_search``:
    candidate start locations per restart (:class:`~qadtr_core.attacks.ImagePatchConfig`)."""
    avoid = central_box(CENTRE) if threat.region == "outside centre" else None
    return ImagePatchConfig(size=threat.size, shape=threat.shape, steps=steps, restarts=restarts, step_size=0.05,
                            avoid=avoid, seed=seed, location_opt=location_opt, early_stop=early_stop, loss=loss,
                            location_search=location_search)


class _InBox(nn.Module):
    """``model`` on ``images`` whose ``box`` (row, col, h, w) is replaced by the first C channels of its input.

    The input is the box's crop with one extra channel holding each image's index ((i + 0.5) / N,
    constant over the crop), so that the attack, run on the crop, may evaluate any subset of the images
    in any order: the index travels with the row. A patch smaller than the crop covers at most one of its
    four corners, so the median of the corners is the index.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, box: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.model, self.images, self.box = model, images, box

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, n = self.images.shape[1], len(self.images)
        code = z[:, c]
        corners = torch.stack([code[:, 0, 0], code[:, 0, -1], code[:, -1, 0], code[:, -1, -1]], 1)
        idx = (corners.median(1).values.detach() * n).long().clamp(0, n - 1)
        r, col, h, w = self.box
        full = self.images[idx.to(self.images.device)].clone()
        full[:, :, r:r + h, col:col + w] = z[:, :c]
        return self.model(full)


# Rows (restart, image) of one forward and backward pass of the per-image attack: 250 images x 32 restarts at
# once ran a 2-bit ResNet-20 out of 24 GiB on the CPU (2026-12-04); chunking changes no result.
MAX_ROWS = 2048


def _image_patches(target: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ImagePatchConfig,
                   region: str, on_batch=None) -> dict[str, torch.Tensor]:
    """Rao et al.'s per-image attack; for ``region="centre"`` run on the central box's crop (see :class:`_InBox`)."""
    if region != "centre":
        found = image_patch_attack(target, x, y, cfg, on_batch=on_batch, max_rows=MAX_ROWS)
        return {"patches": found.patches, "rows": found.placement.rows, "cols": found.placement.cols,
                "success": found.success}
    r, col, h, w = central_box(CENTRE, x.shape[-1])
    n = len(x)
    code = ((torch.arange(n, dtype=x.dtype, device=x.device) + 0.5) / n)[:, None, None, None].expand(n, 1, h, w)
    z = torch.cat([x[:, :, r:r + h, col:col + w], code], 1)
    found = image_patch_attack(_InBox(target, x, (r, col, h, w)), z, y, cfg, batch_size=max(1, n), on_batch=on_batch,
                               max_rows=MAX_ROWS)
    return {"patches": found.patches[:, :x.shape[1]], "rows": found.placement.rows + r,
            "cols": found.placement.cols + col, "success": found.success}


def craft(members: Sequence[Member], hashes: Sequence[str], x: torch.Tensor, y: torch.Tensor,
          cfg: ImagePatchConfig, region: str = "outside centre", on_batch=None
          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Patched ``x`` crafted against ``members`` (one: white-box; several: their ensemble), and the record.

    The record holds ``ok`` (the attacked target classifies the clean image correctly) and the
    attack's ``success`` curve (:attr:`ImagePatches.success`). Patches and locations, not images, are
    cached, so a cache built on one device serves another. ``on_batch`` is passed to
    :func:`~qadtr_core.attacks.image_patch.image_patch_attack` (progress; not called on a cache hit).
    """
    def compute() -> dict[str, torch.Tensor]:
        target = Ensemble(members) if len(members) > 1 else set_bits(members[0][0], members[0][1])
        with torch.no_grad():
            ok = predict(target, x) == y
        found = _image_patches(target, x, y, cfg, region, on_batch)
        return {"patches": found["patches"].cpu(), "rows": found["rows"].cpu(), "cols": found["cols"].cpu(),
                "success": found["success"].cpu(), "ok": ok.cpu()}

    key = {"attack": cfg, "models": list(hashes), "bits": [b for _, b in members], "n": len(x),
           "images": fingerprint(x), "record": "success+ok"}
    if region == "centre":  # the other regions keep the keys they always had
        key["region"] = region
    p = cached_tensors("defense_patches", key, compute)
    place = Placement(p["rows"], p["cols"], torch.zeros(len(x)), torch.ones(len(x)))
    return apply_patch(x, p["patches"].to(x), make_mask(cfg.size, cfg.shape).to(x), place), p


class UniversalPatch(NamedTuple):
    """A universal patch of ``steps`` steps with the same attack at half the budget (``half``: its own run of
    ``steps // 2`` steps, with its own cosine decay, so a finished attack is compared with a finished attack);
    its convergence is read off the two."""

    patch: torch.Tensor
    half: torch.Tensor
    steps: int


def surrogate_universal_patch(surrogate: TrainedModel, x_train: torch.Tensor, y_train: torch.Tensor,
                              threat: Threat, steps: int, batch_size: int, seed: int = 0,
                              with_half: bool = False) -> torch.Tensor | UniversalPatch:
    """The untargeted universal patch of ``threat`` crafted on the FP surrogate (Adam, EOT over locations
    outside the centre, one cosine decay over ``steps``; the transferability chapter's attack), cached;
    ``with_half``: a :class:`UniversalPatch` with the same attack run at half the steps (its own schedule; a
    mid-run iterate would be taken before the decay anneals it, and would overstate the gain from doubling),
    from which :func:`evaluate_threats` reads the attack's convergence; it costs half a run more."""
    avoid = central_box(CENTRE) if threat.region == "outside centre" else None
    cfg = UniversalPatchConfig(size=threat.size, shape=threat.shape, target=None, steps=steps, batch_size=batch_size,
                               schedule="cosine", avoid=avoid, seed=seed)

    members = [(surrogate.model, surrogate.config.bits)]

    def compute() -> dict[str, torch.Tensor]:
        patch = UniversalPatchAttack(members, x_train, y_train, cfg).run().cpu()
        half_cfg = dataclasses.replace(cfg, steps=max(1, steps // 2))
        return {"patch": patch, "half": UniversalPatchAttack(members, x_train, y_train, half_cfg).run().cpu()}

    key = {"attack": cfg, "model": surrogate.record["config_hash"], "bits": surrogate.config.bits, "n": len(x_train),
           "images": fingerprint(x_train), "record": "patch+half-budget run"}
    found = cached_tensors("defense_universal_patches", key, compute)
    return UniversalPatch(found["patch"], found["half"], steps) if with_half else found["patch"]


def _universal_placement(n: int, threat: Threat, seed: int, image_size: int = 32) -> Placement:
    """One seeded random place per image for a universal patch of ``threat`` (outside the centre)."""
    avoid = central_box(CENTRE) if threat.region == "outside centre" else None
    return random_placement(n, threat.size, seeded_generator(seed, 77), image_size, avoid)


def _universal_applied(x: torch.Tensor, patch: torch.Tensor, threat: Threat, seed: int) -> torch.Tensor:
    """``x`` with the universal patch at one seeded random place per image (outside the centre)."""
    place = _universal_placement(len(x), threat, seed, x.shape[-1])
    return apply_patch(x, patch.to(x), make_mask(threat.size, threat.shape).to(x), place)


def _universal_strength_row(threat: Threat, surrogate: TrainedModel, x: torch.Tensor, y: torch.Tensor,
                            patch: torch.Tensor, half: torch.Tensor, steps: int, seed: int) -> dict:
    """The universal patch's white-box strength on the surrogate it was crafted on, over the evaluation images the
    surrogate gets right, at the places the defenses meet it: after all and half its steps, and its null (one
    uniformly random patch at the same places)."""
    model, b = surrogate.model, surrogate.config.bits
    place = _universal_placement(len(x), threat, seed, x.shape[-1])
    k_full, n_ok = rate_of(attack_outcomes(model, b, _universal_applied(x, patch, threat, seed), x, y))
    k_half, _ = rate_of(attack_outcomes(model, b, _universal_applied(x, half, threat, seed), x, y))
    k_floor, _ = rate_of(random_patch_floor(model, b, x, y, threat.size, place, shape=threat.shape,
                                            seed=stream_seed(seed, 43)))
    return {"threat": threat.name, "target": "FP surrogate", "defense": "FP surrogate", "bits": b, "steps": steps,
            "n_ok": n_ok, "k_full": k_full, "k_half": k_half, "k_floor": k_floor}


def _random_search(target: nn.Module, key_models: Sequence[str], x: torch.Tensor, y: torch.Tensor, threat: Threat,
                   queries: int, seed: int) -> dict[str, torch.Tensor]:
    """Sparse-RS patches of ``threat``'s size against ``target`` on ``x`` (cached), with ``fooled`` and ``queries``."""
    cfg = RandomSearchConfig(size=threat.size, queries=queries, avoid=central_box(CENTRE), seed=seed)

    def compute() -> dict[str, torch.Tensor]:
        found = random_search_patch(target, x, y, cfg)
        return {"patches": found.patches.cpu(), "rows": found.placement.rows.cpu(), "cols": found.placement.cols.cpu(),
                "fooled": found.fooled.cpu(), "queries": found.queries.cpu()}

    key = {"attack": cfg, "models": list(key_models), "n": len(x), "images": fingerprint(x)}
    return cached_tensors("defense_random_search", key, compute)


def _apply_found(x: torch.Tensor, rec: Mapping[str, torch.Tensor], size: int) -> torch.Tensor:
    place = Placement(rec["rows"], rec["cols"], torch.zeros(len(x)), torch.ones(len(x)))
    return apply_patch(x, rec["patches"].to(x), make_mask(size).to(x), place)


@dataclass
class Evaluation:
    """Per-image outcomes and attack strength of :func:`evaluate_threats`.

    Attributes:
        per_image: one row per (defense, bits, threat, image): ``clean_ok``, ``broken`` (only where clean_ok).
        strength: one row per crafting attack: the attacked ``target`` (its ``defense`` and ``bits``; bits
            None for an ensemble or a random predictor), ``threat``, ``steps`` (queries for random search),
            ``n_ok`` (images attacked that the target gets right), ``k_full`` / ``k_half`` (of those, fooled
            after all / half the budget: half the steps or half the restarts, whichever fools fewer; the
            universal patch: its half-budget run) and, where measured, ``k_floor`` (of those, fooled by the
            cell's null: a random patch at the attack's places; the white-box cells and the universal patch).
        n: evaluation images.
        random_precision: one row per (defense, draw, threat, image) of the randomised deployments:
            ``clean_ok`` and ``broken`` in that draw, with the widths the predictor drew (``clean_bits``,
            ``attack_bits``); empty when no defense is randomised.
    """

    per_image: pd.DataFrame
    strength: pd.DataFrame
    n: int
    random_precision: pd.DataFrame = field(default_factory=pd.DataFrame)


def _floor_hits(model: nn.Module, bits: int, x: torch.Tensor, y: torch.Tensor, threat: Threat,
                rec: Mapping[str, torch.Tensor], seed: int) -> int:
    """The null of a white-box cell: images of ``x`` (all clean-correct) that a uniformly random patch of the
    threat's size and shape, one per image, at the places the attack chose (``rec``), already fools."""
    place = Placement(rec["rows"], rec["cols"], torch.zeros(len(x)), torch.ones(len(x)))
    k, _ = rate_of(random_patch_floor(model, bits, x, y, threat.size, place, shape=threat.shape,
                                      seed=stream_seed(seed, 41), per_image=True))
    return k


def _strength_row(threat: Threat, target: str, rec: Mapping[str, torch.Tensor], steps: int, defense: str,
                  bits: int | None, k_floor: int | None = None, early_stop: bool = False) -> dict:
    ok, success = rec["ok"].bool(), rec["success"].bool()
    # fooled by any restart within all / half the steps (as ImagePatches.fooled_within), with or without
    # early stopping: under early stopping a restart's record is cumulative, without it each restart's own.
    # The halved attack is half the steps or half the restarts, whichever fools fewer (as image_patch_strength),
    # so a budget still short in either dimension shows.
    n_r = success.shape[1]
    full, half_steps = success[:, :, steps].any(1), success[:, :, steps // 2].any(1)
    k_half = int((half_steps & ok).sum())
    if n_r > 1:
        k_half = min(k_half, int((success[:, :n_r // 2, steps].any(1) & ok).sum()))
    row = {"threat": threat.name, "target": target, "defense": defense, "bits": bits, "steps": steps,
           "n_ok": int(ok.sum()), "k_full": int((full & ok).sum()), "k_half": k_half,
           # what the run cost, over every image attacked (image_steps_of: read off the record)
           "image_steps_run": image_steps_of(success, early_stop),
           "image_steps_full_budget": len(success) * n_r * (success.shape[2] - 1)}
    if k_floor is not None:  # the cell's null (_floor_hits), among the same images
        row["k_floor"] = int(k_floor)
    return row


def _rs_strength_row(threat: Threat, target: str, rec: Mapping[str, torch.Tensor], queries: int, defense: str,
                     bits: int | None) -> dict:
    fooled, used = rec["fooled"].bool(), rec["queries"]
    return {"threat": threat.name, "target": target, "defense": defense, "bits": bits, "steps": queries,
            "n_ok": len(fooled), "k_full": int(fooled.sum()), "k_half": int((fooled & (used <= queries // 2)).sum())}


def _pred(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return predict(model, x).cpu()


def evaluate_threats(defenses: Mapping[str, Mapping[int, TrainedModel]], x: torch.Tensor, y: torch.Tensor,
                     surrogate: TrainedModel | None = None, threats: Sequence[Threat] = THREATS, steps: int = 100,
                     restarts: int = 1, seed: int = 0, location_opt: bool = False, progress: bool = True,
                     universal: Mapping[str, torch.Tensor] | None = None, rs_queries: int = 1000,
                     randomised: Mapping[str, Sequence[int]] | None = None, rp_draws: int = 5,
                     starts: Mapping[str, str | None] | None = None, loss: str = "ce",
                     location_search: int = 1) -> Evaluation:
    """Every threat against every defense at every bit-width, per image (see the module doc).

    ``defenses`` maps a name to ``{bits: TrainedModel}``. The transfers are crafted once on ``surrogate``
    (an independently seeded undefended FP model, none of the evaluated ones; required if a threat has
    source "transfer"), at its own width; a universal threat's patch comes from ``universal`` (threat name
    -> patch, :func:`surrogate_universal_patch`). White-box threats attack only the images the evaluated
    model gets right when clean; random search (``rs_queries`` queries per image) attacks only those no
    other threat of the cell broke. ``randomised`` maps a defense (one shared model) to the bit set its
    random-precision inference draws from (see the module doc; ``rp_draws`` draws). ``starts`` maps a defense
    to its undefended start in ``defenses`` (:func:`starts_of`), whose patches a "start transfer" threat
    applies to it (crafted on the start at the same width, on every image); a defense without a start, or
    whose start was not evaluated at that width, meets its own white-box attack of the same patch there.
    ``location_search``: candidate start locations per restart of every per-image attack (:func:`attack_config`).
    """
    rows, strength, rp_rows = [], [], []
    n = len(x)
    y_cpu = y.cpu()
    universal = universal or {}
    transfer: dict[str, torch.Tensor] = {}
    for t in threats:
        if t.source != "transfer":
            continue
        if surrogate is None:
            raise ValueError(f"threat {t.name!r} transfers from a surrogate: pass surrogate=")
        if t.family == "universal":
            if t.name not in universal:
                raise ValueError(f"threat {t.name!r} is a universal patch: pass universal={{{t.name!r}: patch}}")
            u = universal[t.name]
            transfer[t.name] = _universal_applied(x, u.patch if isinstance(u, UniversalPatch) else u, t, seed)
            if isinstance(u, UniversalPatch):  # its convergence, on the surrogate it was crafted on
                strength.append(_universal_strength_row(t, surrogate, x, y, u.patch, u.half, u.steps, seed))
            continue
        cfg = attack_config(t, steps, restarts, seed, location_opt, loss=loss, location_search=location_search)
        transfer[t.name], rec = craft([(surrogate.model, surrogate.config.bits)], [surrogate.record["config_hash"]],
                                      x, y, cfg, t.region)
        strength.append(_strength_row(t, "FP surrogate", rec, steps, "FP surrogate", surrogate.config.bits))
    starts = starts or {}
    for name, s in starts.items():
        if s is not None and s not in defenses:
            raise ValueError(f"{name!r} starts from {s!r}, which is not among the evaluated models {sorted(defenses)}")
    from_start: dict[tuple[str, int, str], torch.Tensor] = {}

    def start_transfer(t: Threat, name: str, b: int) -> torch.Tensor | None:
        """The images patched on ``name``'s start at ``b`` (None: no start, or the start lacks that width)."""
        s = starts.get(name)
        if s is None or b not in defenses[s]:
            return None
        if (s, b, t.name) not in from_start:
            stm = defenses[s][b]
            cfg = attack_config(t, steps, restarts, seed, location_opt, loss=loss, location_search=location_search)
            from_start[(s, b, t.name)], rec = craft([(stm.model, b)], [stm.record["config_hash"]], x, y, cfg, t.region)
            # its convergence on the start it was crafted on (shown; an adaptive threat enters no claim's strength)
            strength.append(_strength_row(t, f"{s} {b} b (start)", rec, steps, s, b))
            set_bits(stm.model, stm.config.bits)
        return from_start[(s, b, t.name)]

    def own_white_box(t: Threat) -> str | None:
        """The white-box threat with ``t``'s patch (what a model without a start meets as its start transfer)."""
        twin = white_box_twin(t, threats)
        return twin.name if twin else None

    gradient = [t for t in threats if not t.adaptive]
    from_starts = [t for t in threats if t.source == "start transfer"]
    searches = [t for t in threats if t.source == "random search"]
    jobs = sum(len(per) for per in defenses.values()) * len(threats)
    bar = tqdm(total=jobs, disable=not progress, desc="threats", mininterval=2.0)
    for name, per_bits in defenses.items():
        for b, tm in per_bits.items():
            model, h = set_bits(tm.model, b), tm.record["config_hash"]
            clean_ok = _pred(model, x) == y_cpu
            idx = clean_ok.nonzero()[:, 0]
            broken_by: dict[str, torch.Tensor] = {}
            for t in gradient:
                bar.update()
                broken = torch.zeros(n, dtype=torch.bool)
                if len(idx) and t.source == "white-box":  # scored where it was crafted: stop once fooled
                    cfg = attack_config(t, steps, restarts, seed, location_opt, early_stop=True, loss=loss,
                                        location_search=location_search)
                    xs, ys = x[idx.to(x.device)], y[idx.to(y.device)]
                    adv, rec = craft([(model, b)], [h], xs, ys, cfg, t.region)
                    floor = _floor_hits(model, b, xs, ys, t, rec, seed)
                    strength.append(_strength_row(t, f"{name} {b} b", rec, steps, name, b, floor, early_stop=True))
                    set_bits(model, b)
                    broken[idx] = _pred(model, adv) != y_cpu[idx]
                elif len(idx):
                    broken = (_pred(model, transfer[t.name]) != y_cpu) & clean_ok
                broken_by[t.name] = broken
            for t in from_starts:
                bar.update()
                adv = start_transfer(t, name, b)
                if adv is None:
                    own = own_white_box(t)
                    if own is None or own not in broken_by:
                        raise ValueError(f"{name!r} has no start and no white-box threat with the patch of {t.name!r}")
                    broken_by[t.name] = broken_by[own].clone()
                else:
                    set_bits(model, b)
                    broken_by[t.name] = (_pred(model, adv) != y_cpu) & clean_ok
            left = clean_ok.clone()
            for broken in broken_by.values():
                left &= ~broken
            for t in searches:
                bar.update()
                broken = torch.zeros(n, dtype=torch.bool)
                keep = left.nonzero()[:, 0]
                if len(keep):
                    xs, ys = x[keep.to(x.device)], y[keep.to(y.device)]
                    rec = _random_search(model, [h, str(b)], xs, ys, t, rs_queries, seed)
                    strength.append(_rs_strength_row(t, f"{name} {b} b", rec, rs_queries, name, b))
                    set_bits(model, b)
                    broken[keep] = _pred(model, _apply_found(xs, rec, t.size)) != y_cpu[keep]
                broken_by[t.name] = broken
            for t in threats:
                rows.append(pd.DataFrame({"defense": name, "bits": b, "threat": t.name, "image": np.arange(n),
                                          "clean_ok": clean_ok.numpy(), "broken": broken_by[t.name].numpy()}))
            set_bits(tm.model, tm.config.bits)
    bar.close()
    for name, bit_set in (randomised or {}).items():
        per_bits = defenses[name]
        models = list(dict.fromkeys(tm.model for tm in per_bits.values()))
        if len(models) != 1:
            raise ValueError(f"random-precision inference needs one shared model; {name!r} has {len(models)}")
        tm = next(iter(per_bits.values()))
        rp_rows.append(_random_precision(name, tm, list(bit_set), x, y, threats, transfer, steps, restarts, seed,
                                         location_opt, rs_queries, rp_draws, strength, loss, location_search))
        set_bits(tm.model, tm.config.bits)
    rp = pd.concat(rp_rows, ignore_index=True) if rp_rows else pd.DataFrame(
        columns=["defense", "draw", "threat", "image", "clean_ok", "broken", "clean_bits", "attack_bits"])
    return Evaluation(pd.concat(rows, ignore_index=True), pd.DataFrame(strength), n, rp)


def _rp_predict(model: nn.Module, bit_set: Sequence[int], x: torch.Tensor, seed: int) -> tuple[torch.Tensor, int]:
    """Labels of ``x`` under one random-precision forward pass seeded by ``seed``, and the width drawn."""
    rp = RandomPrecision(model, bit_set, seed=seed)
    pred = _pred(rp, x)
    return pred, int(rp.last_bits)


def _random_precision(name: str, tm: TrainedModel, bit_set: list[int], x: torch.Tensor, y: torch.Tensor,
                      threats: Sequence[Threat], transfer: Mapping[str, torch.Tensor], steps: int, restarts: int,
                      seed: int, location_opt: bool, rs_queries: int, draws: int, strength: list,
                      loss: str = "ce", location_search: int = 1) -> pd.DataFrame:
    """The random-precision deployment of one shared model: EOT, the transfers and random search, per draw.

    Draw ``d`` scores the clean images and each threat's images with its own seeded random-precision
    forward pass (``stream_seed(seed + RP_SEED_OFFSET, d, j)``), so every draw is repeatable and
    independent of the others. Random search runs against the random predictor on the images that are
    clean-correct and unbroken by every gradient threat in every draw.
    """
    n, model, h = len(x), tm.model, tm.record["config_hash"]
    y_cpu = y.cpu()
    cfg = attack_config(EOT_THREAT, steps, restarts, seed, location_opt, loss=loss, location_search=location_search)
    eot, rec = craft([(model, b) for b in bit_set], [h] * len(bit_set), x, y, cfg)
    strength.append(_strength_row(EOT_THREAT, f"{name} random precision", rec, steps, name, None))
    advs = {EOT_THREAT.name: eot, **{t.name: transfer[t.name] for t in threats if t.source == "transfer"}}
    base = seed + RP_SEED_OFFSET
    out: list[dict] = []
    clean = {}
    for d in range(draws):
        clean[d] = _rp_predict(model, bit_set, x, stream_seed(base, d, 0))
        for j, (th, adv) in enumerate(advs.items(), start=1):
            pred, drawn = _rp_predict(model, bit_set, adv, stream_seed(base, d, j))
            ok = clean[d][0] == y_cpu
            out.append({"draw": d, "threat": th, "clean_ok": ok, "broken": ok & (pred != y_cpu),
                        "clean_bits": clean[d][1], "attack_bits": drawn})
    searches = [t for t in threats if t.source == "random search"]
    if searches:
        left = torch.ones(n, dtype=torch.bool)
        for r in out:
            left &= r["clean_ok"] & ~r["broken"]
        for k, t in enumerate(searches, start=len(advs) + 1):
            keep = left.nonzero()[:, 0]
            broken_rs = {d: torch.zeros(n, dtype=torch.bool) for d in range(draws)}
            drawn_rs = {d: -1 for d in range(draws)}
            if len(keep):
                xs, ys = x[keep.to(x.device)], y[keep.to(y.device)]
                target = RandomPrecision(model, bit_set, seed=stream_seed(base, 999, k))
                found = _random_search(target, [h, "random precision", *map(str, bit_set), str(base)], xs, ys, t,
                                       rs_queries, seed)
                strength.append(_rs_strength_row(t, f"{name} random precision", found, rs_queries, name, None))
                adv = _apply_found(xs, found, t.size)
                for d in range(draws):
                    pred, drawn_rs[d] = _rp_predict(model, bit_set, adv, stream_seed(base, d, k))
                    ok = clean[d][0][keep] == y_cpu[keep]
                    broken_rs[d][keep] = ok & (pred != y_cpu[keep])
            for d in range(draws):
                out.append({"draw": d, "threat": t.name, "clean_ok": clean[d][0] == y_cpu, "broken": broken_rs[d],
                            "clean_bits": clean[d][1], "attack_bits": drawn_rs[d]})
    return pd.concat([pd.DataFrame({"defense": name, "draw": r["draw"], "threat": r["threat"], "image": np.arange(n),
                                    "clean_ok": r["clean_ok"].numpy(), "broken": r["broken"].numpy(),
                                    "clean_bits": r["clean_bits"], "attack_bits": r["attack_bits"]}) for r in out],
                     ignore_index=True)


def pgd_outcomes(defenses: Mapping[str, Mapping[int, TrainedModel]], x: torch.Tensor, y: torch.Tensor,
                 eps: float = 8 / 255, steps: int = 20, seed: int = 0) -> pd.DataFrame:
    """Per image, L-inf PGD at ``eps`` (``steps`` steps of 2.5 eps / steps from a random start: DWQ's own
    training attack at full strength) against each model at each width, in :attr:`Evaluation.per_image`'s
    layout (threat :data:`PGD_THREAT`). Cached per model, width and images."""
    cfg = PGDConfig(eps=eps, step_size=2.5 * eps / steps, steps=steps, seed=seed)
    y_cpu, rows = y.cpu(), []
    for name, per_bits in defenses.items():
        for b, tm in per_bits.items():
            model = set_bits(tm.model, b)
            clean_ok = _pred(model, x) == y_cpu

            def compute(model: nn.Module = model) -> dict[str, torch.Tensor]:
                return {"pred": _pred(model, pgd_attack(model, x, y, cfg))}

            key = {"attack": cfg, "model": tm.record["config_hash"], "bits": b, "n": len(x), "images": fingerprint(x)}
            pred = cached_tensors("defense_pgd", key, compute)["pred"]
            rows.append(pd.DataFrame({"defense": name, "bits": b, "threat": PGD_THREAT, "image": np.arange(len(x)),
                                      "clean_ok": clean_ok.numpy(), "broken": (clean_ok & (pred != y_cpu)).numpy()}))
            set_bits(tm.model, tm.config.bits)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["defense", "bits", "threat", "image", "clean_ok", "broken"])


def collapsed_cells(models: Mapping[str, Mapping[int, TrainedModel]]) -> set[tuple[str, int]]:
    """The (defense, bits) cells whose model's build record lists ``bits`` as collapsed
    (:func:`~qadtr_core.zoo.collapse_check`); models without the check (undefended ones) never are."""
    out = set()
    for name, per_bits in models.items():
        for b, tm in per_bits.items():
            if int(b) in {int(c) for c in tm.record.get("collapse_check", {}).get("collapsed", [])}:
                out.add((name, int(b)))
    return out


def collapse_table(models: Mapping[str, Mapping[int, TrainedModel]]) -> pd.DataFrame:
    """Per defended model and width it serves (from its build record's ``collapse_check``): its clean
    accuracy and its undefended start's (percent, the check's first n test images), the drop, and
    whether the width collapsed (a drop of more than the check's ``max_drop_points``). Models without a
    check (undefended ones) are left out."""
    rows, seen = [], set()
    for name, per_bits in models.items():
        for tm in per_bits.values():
            check, h = tm.record.get("collapse_check"), tm.record.get("config_hash")
            if not check or (name, h) in seen:
                continue
            seen.add((name, h))
            for b, acc in sorted(check["clean"].items(), key=lambda kv: -int(kv[0])):
                start = check["start_clean"][b]
                rows.append({"defense": name, "bits": int(b), "clean": acc, "start clean": start, "drop": start - acc,
                             "collapsed": int(b) in {int(c) for c in check["collapsed"]}, "n": check["n"],
                             "max drop": check["max_drop_points"]})
    return pd.DataFrame(rows, columns=["defense", "bits", "clean", "start clean", "drop", "collapsed", "n", "max drop"])


def gradient_norm_table(models: Mapping[str, Mapping[int, TrainedModel]], x: torch.Tensor, y: torch.Tensor,
                        starts: Mapping[str, str | None]) -> pd.DataFrame:
    """Mean input-gradient L2 norm of the cross-entropy (:func:`~qadtr_core.metrics.input_gradient_norm`) per
    model and width, beside its undefended start's at the same width and their ratio (a gradient-masking
    indicator: a defense whose ratio is far below 1 may hide its gradient rather than resist)."""
    norms: dict[tuple[str, int], float] = {}
    for name, per_bits in models.items():
        for b, tm in per_bits.items():
            set_bits(tm.model, b)
            norms[name, b] = input_gradient_norm(tm.model, x, y)
            set_bits(tm.model, tm.config.bits)
    rows = []
    for (name, b), g in norms.items():
        start = starts.get(name)
        s = norms.get((start, b)) if start else None
        rows.append({"defense": name, "bits": b, "gradient norm": g, "start": start or "-",
                     "start gradient norm": s if s is not None else float("nan"),
                     "ratio": g / s if s else float("nan")})
    return pd.DataFrame(rows)


def starts_of(configs: Mapping[str, Mapping[int, object]]) -> dict[str, str | None]:
    """Each defense's undefended start in ``configs``: the entry whose config at every width is the
    defense's parent (``config.init``) at that width (PBAT at b: QAT at b; DWQ, QADT-R: the multi-width
    model); None for a model with no such entry (the undefended ones)."""
    out: dict[str, str | None] = {}
    for name, per_bits in configs.items():
        out[name] = next((other for other, ob in configs.items() if other != name and all(
            b in ob and getattr(c, "init", None) is not None and c.init == ob[b] for b, c in per_bits.items())), None)
    return out


def distinct_models(models: Mapping[str, Mapping[int, TrainedModel]]) -> Iterator[tuple[str, TrainedModel]]:
    """``(name, model)`` once per trained model of ``models`` (a multi-width model serves several widths)."""
    done = set()
    for name, per_bits in models.items():
        for tm in per_bits.values():
            if (name, tm.record.get("config_hash")) not in done:
                done.add((name, tm.record.get("config_hash")))
                yield name, tm


def aqapa_table(models: Mapping[str, Mapping[int, TrainedModel]]) -> pd.DataFrame:
    """A-QAPA's sampler per model, epoch and (width, size) cell, from the training history: the draws and
    the mean hardness (cross-entropy of the cell's patched images at the cell's own width). Models without
    A-QAPA (no ``aqapa_draws`` in their history) are left out."""
    rows = []
    for name, tm in distinct_models(models):
        for e in tm.record.get("history", []):
            for cell, k in (e.get("aqapa_draws") or {}).items():
                b, s = cell.split("b_")
                rows.append({"defense": name, "epoch": e.get("epoch"), "bits": int(b), "size": int(s.rstrip("px")),
                             "draws": int(k), "hardness": (e.get("aqapa_loss") or {}).get(cell, float("nan"))})
    return pd.DataFrame(rows, columns=["defense", "epoch", "bits", "size", "draws", "hardness"])


def crafted_width_table(models: Mapping[str, Mapping[int, TrainedModel]]) -> pd.DataFrame:
    """Per model and width trained at: the patched batches (over all epochs of the training history) and the
    share of them whose patches were crafted at that same width (QADT-R crafts at A-QAPA's cell width and
    trains at DBWT's batch width; ``patch_widths`` in its history). Models without that record are left out."""
    rows = []
    for name, tm in distinct_models(models):
        total: dict[int, int] = {}
        same: dict[int, int] = {}
        for e in tm.record.get("history", []):
            for pair, k in (e.get("patch_widths") or {}).items():
                trained, crafted = (int(p.rstrip("b")) for p in pair.split("<-"))
                total[trained] = total.get(trained, 0) + int(k)
                same[trained] = same.get(trained, 0) + (int(k) if trained == crafted else 0)
        for b in sorted(total, reverse=True):
            rows.append({"defense": name, "bits": b, "patched batches": total[b],
                         "crafted at the same width (%)": 100 * same[b] / max(total[b], 1)})
    return pd.DataFrame(rows, columns=["defense", "bits", "patched batches", "crafted at the same width (%)"])


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
              threats: Sequence[Threat] = THREATS, collapsed: Collection[tuple[str, int]] = ()) -> pd.DataFrame:
    """One row per (defense, bits, threat) and each cell's worst case: kind, then **robust accuracy** over all
    ``n_images`` images (``robust``, Wilson interval ``robust_ci_low`` / ``robust_ci_high``) and the ASR
    over the ``n`` clean-correct images (``broken``, ``asr``, ``ci_low``, ``ci_high``), all in percent,
    and ``collapsed`` (the cell is flagged, :func:`collapsed_cells`)."""
    t = per_image.assign(kind=threat_kinds(per_image, distributions, threats))
    worst = t.groupby(["defense", "bits", "image"], sort=False).agg(clean_ok=("clean_ok", "first"),
                                                                    broken=("broken", "any")).reset_index()
    worst = worst.assign(threat=WORST, kind="worst case")
    flagged = {(d, int(b)) for d, b in collapsed}
    rows = []
    for (d, b, th, kind), g in pd.concat([t, worst]).groupby(["defense", "bits", "threat", "kind"], sort=False):
        n, k = int(g.clean_ok.sum()), int((g.broken & g.clean_ok).sum())
        m, r = len(g), int((g.clean_ok & ~g.broken).sum())
        ci, rci = wilson(k, n), wilson(r, m)
        rows.append({"defense": d, "bits": b, "threat": th, "kind": kind, "n_images": m, "robust": 100 * r / max(m, 1),
                     "robust_ci_low": 100 * rci.low, "robust_ci_high": 100 * rci.high, "n": n, "broken": k,
                     "asr": 100 * k / max(n, 1), "ci_low": 100 * ci.low, "ci_high": 100 * ci.high,
                     "collapsed": (d, int(b)) in flagged})
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame, metric: str = "robust") -> pd.DataFrame:
    """Defense x bit-width ``metric`` ("robust": robust accuracy, the headline; "asr") in the layout of
    TriQDef's Table 5: rows (defense, seen / unseen / worst case).

    ``table`` is an :func:`asr_table`. "seen" and "unseen" average that defense's own seen and unseen
    threats (NaN where it has none: nothing is seen by an undefended model); random search and EOT
    enter only the worst case. A "mean" column averages the widths. Collapsed cells keep their value
    here; :func:`flag_collapsed` marks them for display.
    """
    if metric not in ("robust", "asr"):
        raise ValueError(f"unknown metric {metric!r}; allowed: 'robust', 'asr'")
    t = table[table.kind != "adaptive"]
    out = t.groupby(["defense", "kind", "bits"], sort=False)[metric].mean().unstack("bits")
    out["mean"] = out.mean(axis=1)
    order = list(dict.fromkeys(table.defense))
    return out.reindex(pd.MultiIndex.from_product([order, ["seen", "unseen", "worst case"]],
                                                  names=["defense", "robust accuracy" if metric == "robust" else "ASR"]))


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


def random_precision_table(rp: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """Per randomised defense and threat (and the worst case over them, per draw): clean accuracy and robust
    accuracy under the random-precision predictor, averaged over the draws (percent; the robust interval is
    a bootstrap over images of each image's share of robust draws), the ASR over the draws' clean-correct
    images, and the widths drawn."""
    if rp.empty:
        return pd.DataFrame(columns=["defense", "threat", "draws", "n", "clean", "robust", "robust_ci_low",
                                     "robust_ci_high", "asr", "widths drawn"])
    worst = rp.groupby(["defense", "draw", "image"], sort=False).agg(
        clean_ok=("clean_ok", "first"), broken=("broken", "any"), attack_bits=("attack_bits", "first")).reset_index()
    rows = []
    for (d, th), g in pd.concat([rp, worst.assign(threat=WORST)]).groupby(["defense", "threat"], sort=False):
        robust = (g.clean_ok & ~g.broken).groupby(g.image).mean().to_numpy(float)
        iv = bootstrap_mean(robust, n_boot=n_boot)
        ok = int(g.clean_ok.sum())
        widths = sorted({int(b) for b in g.attack_bits if int(b) > 0}) if th != WORST else []
        rows.append({"defense": d, "threat": th, "draws": int(g.draw.nunique()), "n": int(g.image.nunique()),
                     "clean": 100 * float(g.clean_ok.mean()), "robust": 100 * iv.value, "robust_ci_low": 100 * iv.low,
                     "robust_ci_high": 100 * iv.high, "asr": 100 * int((g.broken & g.clean_ok).sum()) / max(ok, 1),
                     "widths drawn": ", ".join(map(str, widths)) or "-"})
    return pd.DataFrame(rows)


__all__ = ["Ensemble", "BitEnsemble", "Evaluation", "attack_config", "craft", "evaluate_threats", "threat_kinds",
           "asr_table", "summary", "clean_outcomes", "clean_table", "collapsed_cells", "collapse_table",
           "gradient_norm_table", "starts_of", "aqapa_table", "pgd_outcomes", "random_precision_table",
           "surrogate_universal_patch", "PGD_THREAT", "FULL_PRECISION"]
