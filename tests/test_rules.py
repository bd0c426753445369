"""The holes of the verdict rules (issue 18, item 5), each pinned by a case that the rules once got wrong.

Each test names the hole it closes; the stub inputs are the smallest entries the rule reads.
"""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from qadtr_core.artifacts import write_json
from qadtr_core.attacks import UniversalPatchAttack, UniversalPatchConfig
from qadtr_core.claims import (
    CLAIMS,
    VERDICTS,
    PatchReading,
    c1_claim,
    load_claims,
    scorecard,
    scorecard_record,
    verdict_c2,
    verdict_c3,
    verdict_c4,
    verdict_c5,
    verdict_c7,
)
from qadtr_core.claims.scorecard import _aggregate
from qadtr_core.evaluation.strength import AttackStrength, converge_universal, is_converged, universal_strength
from qadtr_core.metrics import Rate
from qadtr_core.stats import Interval, across_seeds, paired_bootstrap
from qadtr_core.testing import ChannelMeanModel

WORKING = Interval(0.85, 0.82, 0.88)  # a working lowest-width model's clean accuracy


def _exact(k, n, seed=0):
    """Per-image outcomes with exactly ``k`` hits of ``n`` (all images valid), shuffled."""
    hits = np.arange(n) < k
    np.random.default_rng(seed).shuffle(hits)
    return hits, np.ones(n, dtype=bool)


def _converged(name="attack", asr=0.9, n=500):
    return AttackStrength(name, asr, asr - 0.005, 0.0, 100, n)


def _unconverged(name="attack"):
    return AttackStrength(name, 0.9, 0.7, 0.0, 100, 500)


def _iv(v, lo, hi):
    return {"value": v, "ci_low": lo, "ci_high": hi}


CONV = [_converged().record()]


# ---------------------------------------------------------------- 1. C1 and the null floor


def test_c1_random_patch_on_a_model_random_patches_break_85_percent_is_never_reproduced():
    # a random "patch": its transfer is what another random patch scores; both break 85 % of images
    transfer, floor = _exact(425, 500, seed=1), _exact(425, 500, seed=2)
    random_patch = PatchReading("random patch", transfer, transfer, floor, AttackStrength("random", 0.85, 0.85, 0.0, 10, 500))
    c = c1_claim([random_patch], "2b", "test", [0], target_clean=WORKING)
    assert c["ci_low"] >= 0.70  # far above 70 % ...
    ruling = VERDICTS["C1"](c)
    assert ruling[1] == "inconclusive"  # ... but no better than its floor: nothing to credit
    assert "floor" in ruling.reason
    # a real patch on the same model, clearly above its floor as well as above 70 %, is reproduced
    real = PatchReading("real patch", _exact(490, 500), _exact(480, 500, seed=3), floor, _converged())
    assert VERDICTS["C1"](c1_claim([random_patch, real], "2b", "test", [0], target_clean=WORKING))[1] == "reproduced"


# ---------------------------------------------------------------- 2. one interval for C1


def test_c1_298_of_400_against_70_percent_is_judged_on_the_corrected_interval_only():
    # 298/400 = 74.5 %: the plain 95 % Wilson interval [70.01, 78.5] clears 70 %, the interval corrected for the
    # two readings tried, [69.3, 79.1], does not: C1 must read the same (corrected) interval everywhere
    floor = _exact(8, 400, seed=9)
    near = PatchReading("74.5 %", _exact(380, 400), _exact(298, 400, seed=4), floor, _converged())
    weak = PatchReading("weak", _exact(200, 400), _exact(40, 400, seed=5), floor, _converged())
    c = c1_claim([near, weak], "2b", "test", [0], target_clean=WORKING)
    assert c["reading"] == "74.5 %" and c["ci_low"] < 0.70 < c["ci_high"]  # the headline is the corrected interval
    ruling = VERDICTS["C1"](c)
    assert ruling[1] == "inconclusive" and "straddles 70 %" in ruling.reason


# ---------------------------------------------------------------- 3. every straddling reading counts


def test_c1_a_straddling_reading_makes_c1_inconclusive_unless_another_clears():
    floor = _exact(20, 1000, seed=1)
    precise = PatchReading("precise, below", _exact(900, 1000), _exact(660, 1000, seed=2), floor, _converged())
    # few images: 18/30 = 60 % by point value, its interval reaches past 70 %
    vague = PatchReading("vague", _exact(27, 30), _exact(18, 30, seed=3), _exact(1, 30), _converged(n=30))
    c = c1_claim([precise, vague], "2b", "test", [0], target_clean=WORKING)
    ruling = VERDICTS["C1"](c)
    assert ruling[1] == "inconclusive" and "vague" in ruling.reason
    strong = PatchReading("strong", _exact(990, 1000), _exact(900, 1000, seed=4), floor, _converged())
    assert VERDICTS["C1"](c1_claim([precise, vague, strong], "2b", "test", [0], target_clean=WORKING))[1] == "reproduced"
    # without the straddling reading, the precise one (converged, far above its floor) is partly
    assert VERDICTS["C1"](c1_claim([precise], "2b", "test", [0], target_clean=WORKING))[1] == "partly"


def test_c1_headline_is_the_strongest_reading_and_a_lower_bound_while_unconverged():
    floor = _exact(10, 500, seed=1)
    universal = PatchReading("universal", _exact(300, 500), _exact(60, 500, seed=2), floor, _converged())
    per_image = PatchReading("per-image", _exact(470, 500), _exact(180, 500, seed=3), floor, _unconverged("per-image"))
    c = c1_claim([universal, per_image], "2b", "test", [0], target_clean=WORKING)
    assert c["reading"] == "per-image" and c["lower_bound"] and c["value"] == pytest.approx(0.36)
    ruling = VERDICTS["C1"](c)
    assert ruling[1] == "inconclusive" and "per-image" in ruling.reason and "converged" in ruling.reason
    assert "lower bound" in ruling[0]
    out = scorecard_record({"C1": c}, "test", "abc")["claims"]["C1"]
    assert out["reading"].startswith("per-image") and "lower bound" in out["reading"]
    assert out["metric"].startswith("ASR over clean-correct images") and "per-image" in out["reason"]


# ---------------------------------------------------------------- 4. a no-op attack never converged


def test_an_attack_that_fools_nothing_or_does_not_move_is_never_converged():
    assert not is_converged(0, 0)
    assert not is_converged(0.02, 0.02, clean_floor=0.02)  # at its clean floor: it does nothing
    assert is_converged(0.0004, 0.0004, n=5000)  # 2 of 5000: its Wilson lower bound, 0.0001, is above 0
    assert is_converged(0.4, 0.395) and is_converged(0.4, 0.395, checkpoint_linf=0.1)
    assert not is_converged(0.4, 0.4, checkpoint_linf=0.0)  # the patch did not move: stalled, not converged
    noop = AttackStrength("no-op", 0.0, 0.0, 0.0, 100, 500)
    assert not noop.converged and not noop.record()["converged"]
    curve = pd.DataFrame({"steps": [500, 1000], "evaluated on": ["white-box"] * 2, "asr": [0.087, 0.087], "k": [78, 78],
                          "n": [897, 897], "ci_low": [0.07, 0.07], "ci_high": [0.1, 0.1], "budget_exhausted": [False, False]})
    assert universal_strength("6x6", curve, 0.012).converged  # no checkpoint distance known: the ASR rule alone
    stalled = universal_strength("6x6", curve, 0.012, checkpoints={500: torch.ones(3, 6, 6), 1000: torch.ones(3, 6, 6)})
    assert stalled.checkpoint_linf == 0.0 and not stalled.converged
    moved = universal_strength("6x6", curve, 0.012, checkpoints={500: torch.ones(3, 6, 6), 1000: torch.zeros(3, 6, 6)})
    assert moved.checkpoint_linf == 1.0 and moved.converged and moved.record()["checkpoint_linf"] == 1.0
    assert not universal_strength("6x6", curve.assign(checkpoint_linf=[math.nan, 0.0]), 0.012).converged


def test_converge_universal_records_how_far_the_patch_moved_between_checkpoints():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32, generator=g), torch.randint(2, 10, (8,), generator=g)
    cfg = UniversalPatchConfig(size=6, target=0, steps=8, first_phase=2, batch_size=4)
    attack = UniversalPatchAttack([(ChannelMeanModel(), 32)], x, y, cfg)
    _, curve, checkpoints = converge_universal(attack, lambda p: Rate(30, 100, "fake"))
    linf = curve.drop_duplicates("steps").set_index("steps").checkpoint_linf
    assert math.isnan(linf.iloc[0]) and (linf.iloc[1:] >= 0).all()
    ends = sorted(checkpoints)
    assert linf.iloc[-1] == pytest.approx(float((checkpoints[ends[-1]] - checkpoints[ends[-2]]).abs().max()))
    assert universal_strength("fake", curve, 0.0).checkpoint_linf == pytest.approx(linf.iloc[-1])


def test_a_noop_attack_behind_a_null_effect_gives_no_verdict():
    noop = [AttackStrength("no-op", 0.0, 0.0, 0.0, 100, 500).record()]
    by = {str(b): _iv(0.0, -1, 1) for b in (32, 8, 2)}
    assert verdict_c3({**_iv(0.0, -1, 1), "by_bits": by, "worst_case": _iv(0, -1, 1),
                       "attack_strength": noop})[1] == "inconclusive"
    assert verdict_c4({**_iv(0.0, -1, 1), "at_low_bits": {"bits": 2, **_iv(0, -1, 1)},
                       "attack_strength": noop})[1] == "inconclusive"
    inc = {k: _iv(0.0, -0.5, 0.5) for k in ("A-QAPA", "DBWT", "GIR")}
    ruling = verdict_c7({"increase": inc, "attack_strength": noop})
    assert ruling[1] == "inconclusive" and "no-op" in ruling.reason
    # the JSON layout of defense_claims (no "converged" key, n beside the rates) is read the same way
    assert verdict_c7({"increase": inc, "attack_strength": [{"name": "x", "white_box_asr": 0.0,
                                                             "white_box_asr_half_steps": 0.0}]})[1] == "inconclusive"


# ---------------------------------------------------------------- 5. disjoint regions


def _c2(d, pgd=(0.6, 0.5, 0.7)):
    return {**_iv(*d), "pgd_relative": _iv(*pgd), "patch_relative": _iv(0.8, 0.7, 0.9), "eps_255": 1.0,
            "pgd_white_box_excess": _iv(0.4, 0.3, 0.5), "patch_white_box_excess": _iv(0.9, 0.8, 1.0), "attack_strength": CONV}


@pytest.mark.parametrize("d, pgd, want", [
    ((0.05, 0.02, 0.08), (0.6, 0.5, 0.7), "not reproduced"),  # in (0, 0.1): equivalence wins over partly
    ((0.05, 0.02, 0.08), (0.3, 0.2, 0.4), "not reproduced"),  # ... and over reproduced
    ((0.05, 0.00, 0.09), (0.6, 0.5, 0.7), "not reproduced"),
    ((0.06, 0.02, 0.10), (0.6, 0.5, 0.7), "partly"),  # upper bound at 0.1 exactly: not below it
    ((0.06, 0.02, 0.10), (0.3, 0.2, 0.4), "reproduced"),
    ((0.10, 0.00, 0.20), (0.3, 0.2, 0.4), "inconclusive"),  # lower bound 0 is not above 0
    ((-0.2, -0.3, -0.1), (0.6, 0.5, 0.7), "not reproduced"),
])
def test_c2_regions_are_disjoint_at_their_boundaries(d, pgd, want):
    assert verdict_c2(_c2(d, pgd))[1] == want


@pytest.mark.parametrize("mean, low, want", [
    ((1.5, 0.5, 2.5), (4, -1, 9), "not reproduced"),  # mean in (0, 3): equivalence wins over partly
    ((1.5, 0.5, 3.0), (4, -1, 9), "partly"),  # upper bound at 3 exactly
    ((1.5, 0.5, 2.5), (5, 0, 10), "partly"),  # lowest width's upper bound at 10: not below it
    ((12, 8, 16), (15, 10, 20), "reproduced"),  # lowest width's lower bound at 10 exactly
    ((1.5, 0.0, 3.5), (4, -1, 9), "inconclusive"),
])
def test_c4_regions_are_disjoint_at_their_boundaries(mean, low, want):
    c = {**_iv(*mean), "at_low_bits": {"bits": 2, **_iv(*low)}, "attack_strength": CONV}
    assert verdict_c4(c)[1] == want


@pytest.mark.parametrize("widths, mean, want", [
    ({"2": (8, 6, 10), "8": (1, 0, 2)}, (4.5, 3, 5), "not reproduced"),  # one width drops 8 [6, 10], mean <= 5
    ({"2": (7, 5, 9), "8": (1, 0, 2)}, (4, 3, 5), "partly"),  # lower bound at 5 exactly: not above 5
    ({"2": (2, 1, 3), "8": (1, 0, 3)}, (1.5, 0.5, 2.5), "reproduced"),  # every upper bound at 3 exactly
    ({"2": (4, 2, 6), "8": (4, 2, 6)}, (4, 2.5, 5.5), "inconclusive"),
])
def test_c5_regions_are_disjoint_at_their_boundaries(widths, mean, want):
    by = {b: _iv(*v) for b, v in widths.items()}
    worst = max(by.values(), key=lambda v: v["value"])
    assert verdict_c5({**worst, "by_bits": by, "mean_drop": _iv(*mean)})[1] == want


def test_c3_and_c7_regions_are_disjoint():
    by = {str(b): _iv(1.0, 0.2, 1.8) for b in (8, 2)}
    small = {**_iv(1.0, 0.5, 1.5), "by_bits": by, "worst_case": _iv(1.0, 0.5, 1.5), "attack_strength": CONV}
    assert verdict_c3(small)[1] == "not reproduced"  # a reduction within (0, 2) points is none
    assert verdict_c3({**small, "ci_high": 2.0})[1] == "partly"
    # every rise in (0, 2) points: every component negligible, not "every component contributes"
    assert verdict_c7({"increase": {k: _iv(1.0, 0.5, 1.5) for k in "ABC"}, "attack_strength": CONV})[1] == "not reproduced"
    mixed = {"A": _iv(5, 3, 7), "B": _iv(1.0, 0.5, 1.5), "C": _iv(5, 3, 7)}
    assert verdict_c7({"increase": mixed, "attack_strength": CONV})[1] == "partly"
    assert verdict_c7({"increase": {**mixed, "B": _iv(2.5, 0.5, 4.5)}, "attack_strength": CONV})[1] == "reproduced"


# ---------------------------------------------------------------- 6. C3: Bonferroni over widths


def test_c3_takes_the_best_width_on_intervals_corrected_for_the_number_of_widths():
    # 20 [15.5, 24.5] at 95 % clears 15 at one of five widths; corrected for five widths (99 %) it does not
    by = {str(b): _iv(0.0, -3, 3) for b in (32, 8, 5, 4)} | {"2": _iv(20.0, 15.5, 24.5)}
    c = {**_iv(4.0, 1.0, 7.0), "by_bits": by, "worst_case": _iv(3.0, 1.0, 5.0), "attack_strength": CONV}
    assert verdict_c3(c)[1] == "partly"
    # where defense_claims stored the corrected bootstrap intervals, those are read
    wide = {b: {**v, "ci_low": v["ci_low"] - 1} for b, v in by.items()}
    assert verdict_c3({**c, "by_bits_corrected": {**wide, "2": _iv(20.0, 15.2, 24.8)}})[1] == "reproduced"
    assert verdict_c3({**c, "by_bits_corrected": {**wide, "2": _iv(20.0, 14.8, 25.2)}})[1] == "partly"


def test_defense_claims_store_per_width_intervals_corrected_for_the_widths():
    from qadtr_core.claims import defense_claims
    from qadtr_core.evaluation.robustness import Evaluation
    from qadtr_core.evaluation.threats import NO_PATCHES, PatchDistribution

    rng = np.random.default_rng(0)
    threats = ["8x8 square", "circle, 10 px"]  # "circle, 8 px" became a 10 px circle (issue 18: unseen threats)
    pi = pd.concat([pd.DataFrame({"defense": d, "bits": b, "threat": th, "image": np.arange(100), "clean_ok": True,
                                  "broken": rng.random(100) < (0.3 if d == "QADT-R" else 0.5)})
                    for d in ("QAT (undefended)", "PBAT", "DWQ", "QADT-R") for b in (4, 2) for th in threats],
                   ignore_index=True)
    strength = pd.DataFrame([{"threat": "8x8 square", "target": "x", "defense": "PBAT", "bits": 4, "steps": 10,
                              "n_ok": 100, "k_full": 90, "k_half": 90}])
    dists = {"QAT (undefended)": NO_PATCHES, "PBAT": PatchDistribution(sizes=(8,)), "DWQ": NO_PATCHES,
             "QADT-R": PatchDistribution(sizes=(8,), source_bits=(4, 2))}
    clean = pd.concat([pd.DataFrame({"defense": d, "bits": b, "image": np.arange(100), "correct": True})
                       for d in ("multi-width (undefended)", "QADT-R") for b in (4, 2)])
    c3 = defense_claims(Evaluation(pi, strength, 100), clean, dists, (4, 2), {"seeds": [0], "profile": "t"}, n_boot=400)["C3"]
    for b, v in c3["by_bits"].items():
        w = c3["by_bits_corrected"][b]
        assert w["value"] == v["value"] and w["ci_low"] <= v["ci_low"] and w["ci_high"] >= v["ci_high"]


# ---------------------------------------------------------------- 7. seeds, t quantiles, bootstrap edge cases


def test_across_seeds_uses_student_t_for_every_df():
    for n, t in ((12, 2.2009852), (31, 2.0422725), (3, 4.3026527)):  # df = 11 and 30: t, not the normal 1.960
        v = np.linspace(0, 1, n)
        iv = across_seeds(v)
        assert iv.high - iv.value == pytest.approx(t * v.std(ddof=1) / n ** 0.5, rel=1e-6)


def test_student_t_quantiles_match_the_tables():
    from qadtr_core.stats import student_t_quantile

    for df, want in ((1, 12.7062047), (2, 4.3026527), (7, 2.3646243), (10, 2.2281389), (11, 2.2009852),
                     (30, 2.0422725), (120, 1.9799304)):
        assert student_t_quantile(0.975, df) == pytest.approx(want, abs=1e-6)
    assert student_t_quantile(0.995, 4) == pytest.approx(4.6040949, abs=1e-6)
    v = np.linspace(0, 1, 12)
    assert across_seeds(v, level=0.99).high > across_seeds(v).high


def test_paired_bootstrap_drops_resamples_without_a_valid_image():
    a, b = np.ones(5), np.zeros(5)
    valid_a = np.array([True, False, False, False, False])  # one valid image: about a third of resamples miss it
    iv = paired_bootstrap(a, b, valid_a=valid_a, n_boot=1000)
    assert iv.value == 1.0 and iv.low == 1.0 and iv.high == 1.0  # a resample without it is no evidence, not a 0
    assert 200 < iv.dropped < 500
    none = paired_bootstrap(a, b, valid_a=np.zeros(5, dtype=bool), n_boot=100)
    assert math.isnan(none.value) and math.isnan(none.low) and none.dropped == 100


def test_paired_bootstrap_refuses_a_custom_statistic_with_denominators():
    a, b = np.ones(10), np.zeros(10)
    with pytest.raises(ValueError, match="valid_a"):
        paired_bootstrap(a, b, statistic=lambda v: v.mean(-1), valid_a=np.ones(10, dtype=bool))
    assert paired_bootstrap(a, b, statistic=lambda v: v.mean(-1)).value == 1.0


def test_seed_aggregation_averages_nested_fields_and_keeps_n_per_seed(tmp_path):
    floor = _exact(10, 500, seed=1)
    strengths = {0: _converged(), 1: _unconverged()}
    for seed, k in ((0, 450), (1, 400)):
        r = PatchReading("p", _exact(480, 500), _exact(k, 500, seed=seed), floor, strengths[seed])
        write_json(tmp_path / "results" / "01_transferability" / "q" / f"claims-seed{seed}.json",
                   {"C1": c1_claim([r], "2b", "q", [seed], target_clean=WORKING)})
    c = load_claims("q", root=tmp_path)["C1"]
    assert c["seeds"] == [0, 1] and c["n"] == 500  # images per seed, not 1000
    r = c["readings"][0]
    assert r["transfer"]["value"] == pytest.approx(0.85)  # the mean of 0.90 and 0.80, not seed 0's 0.90
    assert r["transfer"]["ci_low"] <= 0.80 and not r["converged"]  # converged only if every seed's attack did
    assert [a["name"] for a in c["attack_strength"]] == ["attack (seed 0)", "attack (seed 1)"]
    record = scorecard_record({"C1": c}, "q", "abc")["claims"]["C1"]
    assert record["n"] == 500 and record["seeds"] == [0, 1]
    # a label the seeds disagree on is shown per seed; a number they disagree on is averaged
    agg = _aggregate([{**_iv(1.0, 0, 2), "bits": 2, "note": "a", "seeds": [0], "n": 10, "x": {"y": 1.0}},
                      {**_iv(3.0, 2, 4), "bits": 4, "note": "b", "seeds": [1], "n": 12, "x": {"y": 3.0}}])
    assert agg["note"] == "seed 0: a; seed 1: b" and agg["x"]["y"] == 2.0 and agg["n"] == 10 and agg["n_per_seed"] == [10, 12]


def test_every_claim_in_the_record_has_reading_metric_and_reason():
    floor = _exact(10, 500, seed=1)
    c1 = c1_claim([PatchReading("p", _exact(480, 500), _exact(450, 500), floor, _converged())], "2b", "t", [0],
                  target_clean=WORKING)
    by = {str(b): _iv(1.0, 0.5, 1.5) for b in (8, 2)}
    claims = {"C1": c1, "C2": _c2((0.06, 0.02, 0.10)),
              "C3": {**_iv(1.0, -1, 3), "by_bits": by, "worst_case": _iv(1, 0, 2),
                     "attack_strength": [_unconverged("8x8").record()]},
              "C4": {**_iv(1.0, -1, 3), "at_low_bits": {"bits": 2, **_iv(1, -1, 12)}, "attack_strength": CONV},
              "C5": {**_iv(1.0, 0, 2), "bits": 2, "by_bits": {"2": _iv(1, 0, 2)}, "mean_drop": _iv(1, 0, 2)},
              "C6": {**_iv(0.2, 0.15, 0.25), "cosine": _iv(0.1, 0.05, 0.15), "cosine_null": _iv(0, 0, 0),
                     "hog": _iv(0.9, 0.85, 0.95)},
              "C7": {"increase": {k: _iv(5, 3, 7) for k in "AB"}, "attack_strength": CONV},
              "B1": {**_iv(1.0, -1.0, 3.0), "high_bits": 32, "low_bits": 2, "patch": 8,
                     "by_bits": {"32": {"certified": _iv(0.4, 0.35, 0.45)}, "2": {"certified": _iv(0.39, 0.34, 0.44)}}}}
    out = scorecard_record(claims, "t", "abc")["claims"]
    assert set(out) == set(CLAIMS)
    for cid, e in out.items():
        assert {"reading", "metric", "reason"} <= set(e) and e["metric"], cid
        assert (e["reason"] is not None) == (e["verdict"] == "inconclusive"), cid
    assert out["C1"]["reading"] == "p" and out["C2"]["reading"].startswith("per-image patch")
    assert "8x8" in out["C3"]["reason"] and "straddles" in out["C4"]["reason"]
    assert set(scorecard(claims).verdict) <= {"reproduced", "partly", "not reproduced", "inconclusive", "holds",
                                              "does not hold"}
    assert out["B1"]["verdict"] == "holds" and out["B1"]["attack_strength"] == []


def test_every_claim_gets_a_plain_answer_computed_from_its_rule():
    from qadtr_core.claims import QUESTIONS, answer, judge

    assert set(QUESTIONS) == set(CLAIMS) and answer("C1", None).startswith("Not measured yet")
    by = {str(b): _iv(1.0, 0.5, 1.5) for b in (8, 2)}
    c3 = {**_iv(1.0, -1, 3), "by_bits": by, "worst_case": _iv(1, 0, 2), "attack_strength": [_unconverged("8x8").record()]}
    text = answer("C3", c3)
    assert text.startswith("Not decided at this budget: we measured " + judge("C3", c3)[0])
    assert "the paper reports up to 25 points" in text and "Why: not converged: 8x8" in text
    c5 = {**_iv(1.0, 0, 2), "bits": 2, "by_bits": {"2": _iv(1, 0, 2)}, "mean_drop": _iv(1, 0, 2)}
    assert judge("C5", c5)[1] == "reproduced" and answer("C5", c5).startswith("Yes, as the paper says")
    assert "Why:" not in answer("C5", c5)
    row = scorecard({"C3": c3}).set_index("claim").loc["C3"]
    assert row["answer"] == text and row["question"] == QUESTIONS["C3"]
    entry = scorecard_record({"C3": c3}, "t", "abc")["claims"]["C3"]
    assert entry["answer"] == text and entry["attack_strength"][0]["converged"] is False


def test_a_transfer_resample_without_a_valid_image_is_dropped_not_scored_zero():
    from qadtr_core.evaluation.transfer import relative_transfer, white_box_excess_interval

    n = 10
    hits, every, first = np.ones(n, bool), np.ones(n, bool), np.zeros(n, bool)
    first[0] = True  # (a -> b) counts image 0 only
    out = {("a", "a"): (hits, every), ("b", "b"): (hits, every), ("a", "b"): (hits, first), ("b", "a"): (hits, every)}
    assert relative_transfer(out, ["a", "b"]) == 1.0
    assert math.isnan(relative_transfer(out, ["a", "b"], np.arange(1, n)))  # no valid (a -> b) image in the draw
    # a white-box cell with no valid image at all: no interval, rather than one around a made-up 0
    empty = {("a", "a"): (hits, np.zeros(n, bool))}
    iv = white_box_excess_interval(empty, ["a"], None, n_boot=20)
    assert math.isnan(iv.value) and math.isnan(iv.low) and math.isnan(iv.high)


def test_c5_reads_some_width_s_drop_on_its_bonferroni_corrected_interval():
    # one of five widths drops 6 [5.5, 6.5] at 95 %: corrected for taking the worst of five it is 6 [4.9, 7.1]
    by = {b: _iv(1, 0, 2) for b in ("32", "8", "5", "4")} | {"2": _iv(6, 5.5, 6.5)}
    c = {**_iv(6, 5.5, 6.5), "bits": 2, "by_bits": by, "mean_drop": _iv(2, 1, 3)}
    assert verdict_c5(c)[1] == "not reproduced"  # an older entry: widened from 95 % (z 2.58 / 1.96): still above 5
    corrected = {**by, "2": _iv(6, 4.9, 7.1)}
    assert verdict_c5({**c, "by_bits_corrected": corrected})[1] == "partly"  # not surely above 5 among five widths


def test_c7_partly_reads_the_best_component_on_its_bonferroni_corrected_interval():
    # one of three components rises 3 [0.5, 5.5] at 95 %; corrected for taking the best of three: 3 [-0.2, 6.2]
    inc = {"A-QAPA": _iv(3, 0.5, 5.5), "DBWT": _iv(0, -2, 2.5), "GIR": _iv(0, -2, 2.5)}
    c = {"increase": inc, "attack_strength": CONV}
    assert verdict_c7(c)[1] == "inconclusive"  # an older entry: widened from 95 % (z 2.39 / 1.96): not above 0
    assert verdict_c7({**c, "increase_corrected": {**inc, "A-QAPA": _iv(3, 1.0, 5.0)}})[1] == "partly"
    assert verdict_c7({**c, "increase_corrected": {**inc, "A-QAPA": _iv(3, -0.2, 6.2)}})[1] == "inconclusive"
