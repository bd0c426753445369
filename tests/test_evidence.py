"""Evidence: intervals, attack strength (convergence), claim values and verdict rules that can fail.

Every verdict rule is tested with a null attack (a patch that does nothing must never score
*reproduced* or *partly*) and with a synthetic strong effect (it must score *reproduced*).
"""
import numpy as np
import pandas as pd
import pytest
import torch

from qadtr_core.analysis.alignment import mismatched_alignment, pairwise_alignment
from qadtr_core.artifacts import write_json
from qadtr_core.attacks import ImagePatchConfig, UniversalPatchAttack, UniversalPatchConfig, image_patch_attack
from qadtr_core.claims import (
    CLAIMS,
    VERDICTS,
    PatchReading,
    c1_claim,
    c2_claim,
    c6_claim,
    load_claims,
    rule_text,
    scorecard,
    scorecard_record,
    verdict_c3,
    verdict_c4,
    verdict_c5,
    verdict_c7,
)
from qadtr_core.evaluation.strength import (
    AttackStrength,
    converge_universal,
    image_patch_curve,
    image_patch_strength,
    universal_strength,
)
from qadtr_core.evaluation.transfer import random_patch_floor
from qadtr_core.metrics import Rate, targeted_asr
from qadtr_core.patches import Placement, apply_patch, bounding_mask, make_mask, random_placement
from qadtr_core.stats import Interval, across_seeds, bootstrap_mean, paired_bootstrap, wilson
from qadtr_core.testing import ChannelMeanModel, RegionModel

WORKING = Interval(0.85, 0.82, 0.88)  # a working lowest-width model's clean accuracy


def _images(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(2, 10, (n,), generator=g)


# ---------------------------------------------------------------- intervals


def test_wilson_matches_hand_computed_values():
    iv = wilson(5, 10)
    assert iv.value == 0.5 and iv.low == pytest.approx(0.2366, abs=1e-4) and iv.high == pytest.approx(0.7634, abs=1e-4)
    zero = wilson(0, 10)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.2775, abs=1e-4)
    assert wilson(0, 0).low == 0.0 and wilson(0, 0).high == 1.0
    with pytest.raises(ValueError, match="k=11, n=10"):
        wilson(11, 10)


def test_paired_bootstrap_sees_a_paired_difference_that_unpaired_noise_would_hide():
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.5
    better = base | (rng.random(400) < 0.1)  # the same images, a few more hits
    iv = paired_bootstrap(better, base)
    assert iv.value == pytest.approx(better.mean() - base.mean())
    assert iv.low > 0  # paired: the difference is clearly positive
    null = paired_bootstrap(base, base)
    assert null.value == 0 and null.low == 0 and null.high == 0
    # denominators per side (ASR over clean-correct images)
    valid = np.arange(400) % 2 == 0
    masked = paired_bootstrap(better, base, valid_a=valid, valid_b=valid)
    assert masked.value == pytest.approx(better[valid].mean() - base[valid].mean())


def test_bootstrap_mean_and_seeds():
    v = np.linspace(0, 1, 101)
    iv = bootstrap_mean(v)
    assert iv.value == pytest.approx(0.5) and iv.low < 0.5 < iv.high
    one = across_seeds([0.3])
    assert one.value == 0.3 and np.isnan(one.low)
    three = across_seeds([0.2, 0.3, 0.4])  # mean 0.3, sd 0.1, t(2) = 4.303
    assert three.value == pytest.approx(0.3) and three.high - 0.3 == pytest.approx(4.303 * 0.1 / 3**0.5, rel=1e-3)


# ---------------------------------------------------------------- attack strength


def test_doubling_schedule_anneals_at_every_phase_end():
    cfg = UniversalPatchConfig(steps=16, first_phase=2, step_size=0.1)
    assert cfg.phase_ends() == [2, 4, 8, 16]
    assert cfg.step_size_at(0) == pytest.approx(0.1) and cfg.step_size_at(2) == pytest.approx(0.1)  # phase restarts
    assert cfg.step_size_at(7) < cfg.step_size_at(5) < cfg.step_size_at(4)
    with pytest.raises(ValueError, match="power of two"):
        UniversalPatchConfig(steps=12, first_phase=5)


def test_converge_universal_stops_once_doubling_adds_nothing():
    # A 24 px patch covers enough of the image for pure red to move the colour model to class 0.
    x, y = _images(48)
    place = random_placement(len(x), 24, torch.Generator().manual_seed(1))
    mask = make_mask(24)
    model = ChannelMeanModel()

    def white_box(patch):
        return targeted_asr(model(apply_patch(x, patch, mask, place)).argmax(1), y, 0)

    cfg = UniversalPatchConfig(size=24, target=0, steps=256, first_phase=4, batch_size=16, optimizer="sign", step_size=0.1)
    attack = UniversalPatchAttack([(model, 32)], x, y, cfg)
    patch, curve, _ = converge_universal(attack, white_box)
    assert attack.step < 256  # stopped early: the colour model is beaten within a few steps
    wb = curve[curve["evaluated on"] == "white-box"].asr.tolist()
    assert wb[-1] - wb[-2] < 0.02 and not curve.budget_exhausted.iloc[-1]
    assert wb[-1] >= 0.9 and patch[0].mean() > 0.9  # it stopped because it won (a red patch), not because it idled
    assert universal_strength("red", curve, 0.0).converged


def test_an_attack_still_improving_is_not_converged_and_says_the_budget_ended():
    x, y = _images(8)
    cfg = UniversalPatchConfig(size=6, target=0, steps=16, first_phase=2, batch_size=4)
    attack = UniversalPatchAttack([(ChannelMeanModel(), 32)], x, y, cfg)
    # a fake rate that keeps rising with the steps: 10 points per doubling
    patch, curve, _ = converge_universal(attack, lambda p: Rate(int(10 * np.log2(attack.step)), 100, "fake"))
    assert attack.step == 16 and curve.budget_exhausted.iloc[-1]
    s = universal_strength("rising", curve, 0.0)
    assert not s.converged and s.steps == 16 and s.gain_from_doubling == pytest.approx(0.1)


def test_a_single_checkpoint_is_never_converged():
    curve = pd.DataFrame({"steps": [100], "evaluated on": ["white-box"], "asr": [0.01], "k": [5], "n": [500],
                          "ci_low": [0.0], "ci_high": [0.02], "budget_exhausted": [True]})
    s = universal_strength("one checkpoint", curve, 0.0)
    assert not s.converged and s.record()["white_box_asr_half_steps"] is None


def test_image_patch_success_record_is_monotone_and_matches_the_best_iterate():
    torch.manual_seed(0)
    from qadtr_core.models import build_model

    model = build_model("smallcnn").eval()
    x, y = _images(24, seed=3)
    res = image_patch_attack(model, x, y, ImagePatchConfig(size=6, steps=6, restarts=2, step_size=0.1))
    assert res.success.shape == (24, 2, 7)
    steps = [res.fooled_within(t).sum() for t in range(7)]
    assert all(a <= b for a, b in zip(steps, steps[1:]))
    assert (res.fooled_within(6, 1) <= res.fooled_within(6, 2)).all()
    with torch.no_grad():
        fooled_now = model(res.apply(x)).argmax(1) != y
    assert torch.equal(fooled_now, res.fooled_within(6))  # the kept patch is the best iterate
    valid = torch.ones(24, dtype=torch.bool)
    curve = image_patch_curve(res, valid)
    assert set(curve.restarts) == {1, 2} and curve.asr.between(0, 1).all()
    s = image_patch_strength("per-image", res, valid)
    assert s.white_box_asr == pytest.approx(float(fooled_now.float().mean())) and s.steps == 6


def test_location_optimisation_moves_patches_onto_what_the_model_looks_at():
    # The model reads only the top-left 12x12 corner; its images are class 1 (green-blue), a red patch there
    # fools it. Patches that touch the corner climb into it; the others see a flat loss and stay (seeded: 27 vs 15).
    model = RegionModel(slice(0, 12), slice(0, 12))
    x, _ = _images(200, seed=5)
    y = torch.ones(200, dtype=torch.long)
    base = ImagePatchConfig(size=8, steps=40, step_size=0.1, avoid=None, seed=2)
    fixed = image_patch_attack(model, x, y, base)
    moving = image_patch_attack(model, x, y, ImagePatchConfig(**{**base.__dict__, "location_opt": True}))
    corner = lambda res: bounding_mask(res.placement, 8)[:, :, :12, :12].float().mean().item()  # noqa: E731
    assert moving.fooled_within(40).sum() >= fixed.fooled_within(40).sum() + 8
    assert corner(moving) > corner(fixed)


# ---------------------------------------------------------------- claims and verdicts


def _outcomes(rate, n=500, seed=0, valid=None):
    rng = np.random.default_rng(seed)
    return rng.random(n) < rate, np.ones(n, dtype=bool) if valid is None else valid


def _strength(converged=True, name="attack"):
    return AttackStrength(name, 0.9, 0.895 if converged else 0.7, 0.0, 100, 500)


class _CornerPixel(torch.nn.Module):
    """Class 3 where the top-left pixel's red exceeds 0.5 (``flip``: where it does not), else class 5."""

    def __init__(self, flip=False):
        super().__init__()
        self.flip = flip

    def forward(self, x):
        on = ((x[:, 0, 0, 0] > 0.5) != self.flip).float()
        logits = torch.zeros(len(x), 10)
        logits[:, 3], logits[:, 5] = on, 1 - on
        return logits


def test_random_patch_floor_is_the_null_of_a_patch_at_its_places_and_never_below_the_clean_floor():
    n = 400
    x, y = torch.zeros(n, 3, 8, 8), torch.full((n,), 5)
    at = lambda r: Placement(torch.full((n,), r), torch.full((n,), r), torch.zeros(n), torch.ones(n))  # noqa: E731
    rate = lambda o: (o[0] & o[1]).sum() / o[1].sum()  # noqa: E731
    model = _CornerPixel()
    # per image: a uniform patch over the decisive pixel flips about half the images, one elsewhere none
    over = random_patch_floor(model, 32, x, y, 2, at(0), seed=1, per_image=True)
    assert 0.4 < rate(over) < 0.6 and over[1].all()
    assert rate(random_patch_floor(model, 32, x, y, 2, at(4), seed=1, per_image=True)) == 0
    # one shared patch (a universal attack's null): every image has the same outcome
    shared = random_patch_floor(model, 32, x, y, 2, at(0), seed=1)
    assert shared[0].all() or not shared[0].any()
    # targeted (class 3): the random patch where the clean floor is 0, the clean floor where it is higher
    assert 0.4 < rate(random_patch_floor(model, 32, x, y, 2, at(0), target_class=3, seed=1, per_image=True)) < 0.6
    flipped = random_patch_floor(_CornerPixel(flip=True), 32, x, y, 2, at(0), target_class=3, seed=1, per_image=True)
    assert rate(flipped) == 1.0  # every clean image is already called the target


def test_c1_null_patch_is_never_reproduced_or_partly_and_a_strong_one_is_reproduced():
    floor = _outcomes(0.02, seed=1)
    # doubling adds nothing, but neither does the patch (white-box at its clean floor): not converged, so a
    # no-op attack never refutes the claim either
    null_strength = AttackStrength("null patch", 0.02, 0.02, 0.02, 100, 500)
    assert not null_strength.converged
    null = PatchReading("null patch", white_box=floor, transfer=floor, floor=floor, strength=null_strength)
    c = c1_claim([null], "2b", "test", [0], target_clean=WORKING)
    assert VERDICTS["C1"](c)[1] == "inconclusive" and "null patch" in VERDICTS["C1"](c).reason
    # untargeted: a random patch already breaks 15 % of images; an "attack" no stronger than that, white-box on
    # the model it was crafted on (its null floor there), has done nothing: it neither passes for partly nor
    # refutes the claim
    noise = _outcomes(0.15, seed=8)
    random_strength = AttackStrength("random patch", 0.15, 0.15, 0.15, 10, 500)
    untargeted_null = PatchReading("random patch", noise, noise, noise, random_strength)
    c = c1_claim([untargeted_null], "2b", "test", [0], target_clean=WORKING)
    assert VERDICTS["C1"](c)[1] == "inconclusive" and "does nothing" in VERDICTS["C1"](c).reason
    # a real white-box attack (90 % against a 15 % null) whose patches transfer at the null floor: not reproduced
    real_strength = AttackStrength("real, does not transfer", 0.9, 0.9, 0.15, 10, 500)
    real = PatchReading("real, does not transfer", _outcomes(0.9), noise, noise, real_strength)
    assert VERDICTS["C1"](c1_claim([real], "2b", "test", [0], target_clean=WORKING))[1] == "not reproduced"
    # the same readings on a lowest-width model near chance: no verdict either way
    broken = Interval(0.11, 0.085, 0.14)
    for readings in ([real], [null, PatchReading("strong", _outcomes(0.95), _outcomes(0.85, seed=2), floor, _strength())]):
        c = c1_claim(readings, "2b", "test", [0], target_clean=broken)
        assert VERDICTS["C1"](c)[1] == "inconclusive" and "near chance" in VERDICTS["C1"](c).reason
    strong = PatchReading("strong", white_box=_outcomes(0.95), transfer=_outcomes(0.85, seed=2), floor=floor,
                          strength=_strength())
    assert VERDICTS["C1"](c1_claim([null, strong], "2b", "test", [0], target_clean=WORKING))[1] == "reproduced"
    weak = PatchReading("weak but real", _outcomes(0.6), _outcomes(0.4, seed=3), floor, _strength())
    assert VERDICTS["C1"](c1_claim([weak], "2b", "test", [0], target_clean=WORKING))[1] == "partly"
    straddle = PatchReading("near 70", _outcomes(0.9), _outcomes(0.70, n=100, seed=4), _outcomes(0.02, n=100), _strength())
    assert VERDICTS["C1"](c1_claim([straddle], "2b", "test", [0], target_clean=WORKING))[1] == "inconclusive"
    unconverged = PatchReading("weak, still improving", _outcomes(0.6), _outcomes(0.4, seed=3), floor, _strength(False))
    c = c1_claim([unconverged], "2b", "test", [0], target_clean=WORKING)
    assert VERDICTS["C1"](c)[1] == "inconclusive"  # an unconverged attack cannot refute the claim
    # a weak converged attack beside a stronger one still improving: no verdict from the weak one
    stronger = PatchReading("stronger, still improving", _outcomes(0.9), _outcomes(0.5, seed=5), floor, _strength(False))
    assert VERDICTS["C1"](c1_claim([null, stronger], "2b", "test", [0], target_clean=WORKING))[1] == "inconclusive"


def test_c2_rules():
    names = ["FP", "8b", "2b"]

    def matrix(diag, off, seed=0):
        return {(a, b): _outcomes(diag if a == b else off, seed=seed + 7 * i) for i, (a, b) in
                enumerate((a, b) for a in names for b in names)}

    curve = pd.DataFrame({"eps_255": [1.0], "asr": [0.5]})
    # matched strength (white-box 90 % both): PGD keeps 0.1 / 0.9 of it, the patch nearly all
    strong = c2_claim(matrix(0.9, 0.1), matrix(0.9, 0.85, seed=100), names, 1.0, curve, [_strength()], "test", [0],
                      n_boot=200)
    assert abs(strong["strength_gap"]) <= 10 and VERDICTS["C2"](strong)[1] == "reproduced"
    # the same transfer at unmatched strength (PGD 50 % vs the patch's 90 % white-box) is no comparison
    unmatched = c2_claim(matrix(0.5, 0.1), matrix(0.9, 0.85, seed=100), names, 1.0, curve, [_strength()], "test", [0],
                         n_boot=200)
    assert unmatched["strength_gap"] < -30
    r = VERDICTS["C2"](unmatched)
    assert r.verdict == "inconclusive" and "not matched" in r.reason
    null = c2_claim(matrix(0.5, 0.45), matrix(0.5, 0.45), names, 1.0, curve, [_strength()], "test", [0], n_boot=200)
    assert VERDICTS["C2"](null)[1] == "not reproduced"
    # a patch that does nothing (at its random-patch floor everywhere) must not win C2 against a working PGD
    floor = {t: _outcomes(0.05, seed=300 + i) for i, t in enumerate(names)}
    idle = {(a, b): floor[b] for a in names for b in names}
    pgd_floor = {t: _outcomes(0.01, seed=400 + i) for i, t in enumerate(names)}
    c = c2_claim(matrix(0.5, 0.2), idle, names, 1.0, curve, [_strength()], "test", [0], pgd_floor=pgd_floor,
                 patch_floor=floor, n_boot=200)
    assert VERDICTS["C2"](c)[1] not in ("reproduced", "partly")
    assert VERDICTS["C2"]({**strong, "attack_strength": [_strength(False).record()]})[1] == "inconclusive"


def test_c6_null_gradients_fail_and_sign_scrambled_copies_pass():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, 3, 32, 32, generator=g).cumsum(-1).cumsum(-2)  # smooth, structured maps
    # strong: the same magnitude structure, signs scrambled per pixel (cosine ~ 0, HOG identical)
    signs = torch.randint(0, 2, base.shape, generator=g) * 2 - 1
    strong = {"FP": base, "2b": base.abs() * signs}
    c = c6_claim(pairwise_alignment(strong), mismatched_alignment(strong), "test", [0])
    assert VERDICTS["C6"](c)[1] == "reproduced"
    # if two independently seeded models agree just as much, the stronger baseline absorbs the structure
    signs2 = torch.randint(0, 2, base.shape, generator=g) * 2 - 1
    seeds = pairwise_alignment({"FP": base, "FP'": base.abs() * signs2})
    c = c6_claim(pairwise_alignment(strong), mismatched_alignment(strong), "test", [0], seed_baseline=seeds)
    assert c["baseline"].startswith("two independently") and VERDICTS["C6"](c)[1] == "not reproduced"
    # null: two unrelated gradient sets score what mismatched images score
    other = torch.randn(40, 3, 32, 32, generator=g).cumsum(-1).cumsum(-2)
    null = {"FP": base, "2b": other}
    c = c6_claim(pairwise_alignment(null), mismatched_alignment(null), "test", [0])
    assert VERDICTS["C6"](c)[1] in ("not reproduced", "inconclusive") and VERDICTS["C6"](c)[1] != "reproduced"
    assert c["hog_excess"]["ci_low"] < 0.1


def _iv(v, half=1.0):
    return {"value": v, "ci_low": v - half, "ci_high": v + half}


def test_c3_c4_c5_c7_rules_null_and_strong():
    # a null effect measured by a working, converged attack is "not reproduced"; the same null measured by an
    # attack that fools nothing (white-box ASR 0: "converged" only in that doubling adds nothing) is no verdict
    conv = [_strength().record()]
    noop = [AttackStrength("no-op", 0.0, 0.0, 0.0, 100, 500).record()]
    by = {str(b): _iv(0.0) for b in (32, 8, 2)}
    null3 = {**_iv(0.0), "by_bits": by, "worst_case": _iv(0.0), "attack_strength": conv}
    assert verdict_c3(null3)[1] == "not reproduced"
    assert verdict_c3({**null3, "attack_strength": noop})[1] == "inconclusive"
    strong3 = {**_iv(15.0), "by_bits": {**by, "2": _iv(22.0, 3)}, "worst_case": _iv(8.0), "attack_strength": conv}
    assert verdict_c3(strong3)[1] == "reproduced"
    assert verdict_c3({**strong3, "attack_strength": [_strength(False).record()]})[1] == "inconclusive"

    null4 = {**_iv(0.0), "at_low_bits": {"bits": 2, **_iv(0.0)}, "attack_strength": conv}
    assert verdict_c4(null4)[1] == "not reproduced"
    assert verdict_c4({**null4, "attack_strength": noop})[1] == "inconclusive"
    assert verdict_c4({**_iv(12.0), "at_low_bits": {"bits": 2, **_iv(20.0, 4)}, "attack_strength": conv})[1] == "reproduced"

    assert verdict_c5({**_iv(1.0), "by_bits": {"2": _iv(1.0)}, "mean_drop": _iv(0.5)})[1] == "reproduced"
    assert verdict_c5({**_iv(25.0), "by_bits": {"2": _iv(25.0)}, "mean_drop": _iv(8.0)})[1] == "not reproduced"
    # a start near chance at some width: no drop is read against it (QADT-R at chance too would read reproduced)
    starts = {"2": {"value": 0.10, "ci_low": 0.08, "ci_high": 0.13}, "32": {"value": 0.9, "ci_low": 0.87, "ci_high": 0.92}}
    r = verdict_c5({**_iv(1.0), "by_bits": {"2": _iv(1.0), "32": _iv(0.5)}, "mean_drop": _iv(0.5), "start_clean": starts})
    assert r[1] == "inconclusive" and "2 bits" in r.reason and "32 bits" not in r.reason
    working = {**starts, "2": {"value": 0.8, "ci_low": 0.76, "ci_high": 0.83}}
    # ... but a readable width that drops more than 5 points still refutes the claim
    drop = {**_iv(9.0), "by_bits": {"2": _iv(1.0), "32": _iv(9.0)}, "mean_drop": _iv(5.0), "start_clean": starts}
    assert verdict_c5(drop)[1] == "not reproduced"
    fine = {**_iv(1.0), "by_bits": {"2": _iv(1.0)}, "mean_drop": _iv(0.5), "start_clean": working}
    assert verdict_c5(fine)[1] == "reproduced"

    null7 = {"increase": {k: _iv(0.0, 0.5) for k in ("A-QAPA", "DBWT", "GIR")}, "attack_strength": conv}
    assert verdict_c7(null7)[1] == "not reproduced"
    assert verdict_c7({**null7, "attack_strength": noop})[1] == "inconclusive"
    strong7 = {"increase": {k: _iv(6.0) for k in ("A-QAPA", "DBWT", "GIR")}, "attack_strength": conv}
    assert verdict_c7(strong7)[1] == "reproduced"


def test_scorecard_reads_every_seed_and_writes_the_committed_layout(tmp_path):
    floor = _outcomes(0.02, seed=1)
    reading = PatchReading("strong", _outcomes(0.95), _outcomes(0.85, seed=2), floor, _strength())
    for seed, rate in ((0, 0.85), (1, 0.80)):
        entry = c1_claim([PatchReading("strong", _outcomes(0.95), _outcomes(rate, seed=seed), floor, _strength())],
                         "2b", "smoke", [seed], target_clean=WORKING)
        write_json(tmp_path / "results" / "01_transferability" / "smoke" / f"claims-seed{seed}.json", {"C1": entry})
    claims = load_claims("smoke", root=tmp_path)
    assert claims["C1"]["seeds"] == [0, 1] and len(claims["C1"]["per_seed"]) == 2
    table = scorecard(claims)
    assert list(table.claim) == list(CLAIMS) and table.set_index("claim").loc["C2", "verdict"] == "not measured"
    record = scorecard_record(claims, "smoke", "abc123")
    c1 = record["claims"]["C1"]
    assert record["profile"] == "smoke" and record["commit"] == "abc123"
    assert {"value", "ci_low", "ci_high", "n", "seeds", "profile", "verdict", "rule", "attack_strength"} <= set(c1)
    assert c1["verdict"] in ("reproduced", "partly", "not reproduced", "inconclusive")
    assert set(c1["attack_strength"][0]) == {"name", "white_box_asr", "white_box_asr_half_steps", "clean_floor", "steps",
                                             "converged", "n", "checkpoint_linf", "image_steps_run",
                                             "image_steps_full_budget"}
    assert "lower bound" in rule_text("C1")
    assert reading.entry()["converged"]


def test_seeds_are_each_judged_and_their_interval_never_shrinks(tmp_path):
    floor = _outcomes(0.02, seed=1)
    for seed, rate in ((0, 0.90), (1, 0.30)):  # one seed clears 70 %, the other does not: no verdict
        entry = c1_claim([PatchReading("p", _outcomes(0.95), _outcomes(rate, seed=seed), floor, _strength())], "2b", "q",
                         [seed], target_clean=WORKING)
        write_json(tmp_path / "results" / "01_transferability" / "q" / f"claims-seed{seed}.json", {"C1": entry})
    # an unseeded file with the same seed as a seeded one is a duplicate, not a third seed
    write_json(tmp_path / "results" / "01_transferability" / "q" / "claims.json", {"C1": entry})
    claims = load_claims("q", root=tmp_path)
    assert claims["C1"]["seeds"] == [0, 1] and len(claims["C1"]["per_seed"]) == 2
    row = scorecard(claims).set_index("claim").loc["C1"]
    assert row.verdict == "inconclusive" and "per-seed verdicts: reproduced" in row.ours
    widest = max(e["ci_high"] - e["ci_low"] for e in claims["C1"]["per_seed"])
    assert claims["C1"]["ci_high"] - claims["C1"]["ci_low"] >= widest
    # a build that ran the chapter at seed 0 only leaves the other seed's (stale) file out
    only0 = load_claims("q", root=tmp_path, seeds=lambda chapter: (0,))
    assert only0["C1"]["seeds"] == [0] and "per_seed" not in only0["C1"]
    assert scorecard(only0).set_index("claim").loc["C1"].verdict != "inconclusive"


def test_the_answer_figure_draws_each_points_interval():
    """The book's headline figure: every worst-case point carries its Wilson interval as an error bar,
    centred on the point (a figure that dropped the intervals, or misplaced them, fails)."""
    from matplotlib.collections import LineCollection

    from qadtr_core.plots import answer_figure

    rows = []
    for d, base in (("PBAT", 60.0), ("QADT-R", 40.0)):
        for b in (32, 8, 2):
            rows.append({"defense": d, "bits": b, "threat": "worst case (any threat)", "n": 100,
                         "asr": base + b / 8, "ci_low": base + b / 8 - 5, "ci_high": base + b / 8 + 7})
    fig = answer_figure(pd.DataFrame(rows), "test")
    segments = [seg for c in fig.axes[0].collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    spans = sorted((round(s[:, 1].min(), 6), round(s[:, 1].max(), 6)) for s in segments if len(s) == 2 and s[0, 0] == s[1, 0])
    want = sorted((r["ci_low"], r["ci_high"]) for r in rows)
    assert spans == want
    for s in segments:  # each bar's x is one of the plotted points' x
        pts = [tuple(np.round(p, 6)) for line in fig.axes[0].lines for p in line.get_xydata()]
        assert any(abs(s[0, 0] - px) < 1e-6 for px, _ in pts)


def test_an_attack_that_loses_its_asr_on_doubling_is_unstable_not_converged():
    from qadtr_core.evaluation.strength import is_converged, not_converged_reason

    assert not is_converged(0.40, 0.60, n=500)
    assert "lowered its white-box ASR by 20.0 points: unstable" in not_converged_reason(0.40, 0.60, n=500)
    assert is_converged(0.595, 0.60, n=500)  # a loss within the tolerance is a plateau


def test_c6_structure_must_clear_every_baseline_and_an_interval_picks_the_headline():
    iv = lambda v, h=0.02: {"value": v, "ci_low": v - h, "ci_high": v + h}  # noqa: E731
    base = {"cosine": iv(0.1), "cosine_null": iv(0.0), "hog": iv(0.8), "hog_null": iv(0.3), "baseline": "chance"}
    clear = {**base, **iv(0.5), "hog_excess": iv(0.5), "hog_excess_seed": iv(0.3)}
    assert VERDICTS["C6"](clear)[1] == "reproduced"
    # the headline clears 0.1, but the excess over the seeded models surely does not: structure fails
    assert VERDICTS["C6"]({**clear, "hog_excess_seed": iv(0.05)})[1] == "not reproduced"
    open_ = VERDICTS["C6"]({**clear, "hog_excess_seed": iv(0.1, 0.05)})
    assert open_[1] == "inconclusive" and "0.10 [0.05, 0.15] straddles 0.1" in open_.reason
