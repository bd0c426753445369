"""Threats per defense, per-image evaluation, the seen table, and claim values with intervals on hand-made outcomes."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from qadtr_core.attacks.image_patch import image_patch_attack
from qadtr_core.claims import ablation_claim, defense_claims, verdict_c3
from qadtr_core.defenses import PBATConfig, QADTRConfig
from qadtr_core.evaluation.defense_metrics import attack_strength, common_unseen, convergence
from qadtr_core.evaluation.robustness import (
    BitEnsemble,
    Ensemble,
    Evaluation,
    asr_table,
    attack_config,
    clean_outcomes,
    clean_table,
    craft,
    evaluate_threats,
    summary,
)
from qadtr_core.evaluation.threats import NO_PATCHES, THREATS, WORST, PatchDistribution, Threat, distribution_of, seen_table
from qadtr_core.models import build_model
from qadtr_core.quant import prepare_bits, set_bits
from qadtr_core.testing import TwoWidthToy, synthetic_cifar
from qadtr_core.train import TrainConfig
from qadtr_core.zoo import TrainedModel

UNIVERSAL = "universal 8x8 from FP surrogate"
RS = "random search, 8x8"


def _tm(seed: int, bit_set=(32, 4, 2), model=None) -> TrainedModel:
    torch.manual_seed(seed)
    m = model or build_model("smallcnn")
    for b in bit_set:
        prepare_bits(m, b)
    return TrainedModel(m.eval(), TrainConfig(arch="smallcnn", epochs=1, lr=0.1, seed=seed), {"config_hash": f"model{seed}"})


def test_ensemble_averages_log_probabilities_over_members():
    a, b = _tm(0), _tm(1)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = (F.log_softmax(set_bits(a.model, 32)(x), 1) + F.log_softmax(set_bits(b.model, 2)(x), 1)) / 2
        assert torch.allclose(Ensemble([(a.model, 32), (b.model, 2)])(x), expected, atol=1e-5)
        assert torch.allclose(BitEnsemble(a.model, (4,))(x), F.log_softmax(set_bits(a.model, 4)(x), 1), atol=1e-6)


def test_seen_is_defined_per_defense_from_its_training_distribution():
    pbat, qadtr = distribution_of(PBATConfig()), distribution_of(QADTRConfig())
    no_aqapa = distribution_of(QADTRConfig(aqapa=False))
    by = {t.name: t for t in THREATS}
    assert pbat.sees(by["8x8 square"], 2) and not pbat.sees(by["10x10 square"], 2)
    assert qadtr.sees(by["10x10 square"], 2)
    # the 10 px circle is inscribed in QADT-R's trained 10x10 square: seen by it, unseen by PBAT's 8x8; the 4x16
    # bar fits no trained square; a square of an untrained size stays unseen (the protocol's sizes)
    assert qadtr.sees(by["circle, 10 px"], 2) and not pbat.sees(by["circle, 10 px"], 2)
    assert not qadtr.sees(by["4x16 bar, anywhere"], 2) and not qadtr.sees(by["4x4 square"], 2)
    assert not PatchDistribution(sizes=(10,), anywhere=False).sees(Threat("c", size=10, shape="circle", region="anywhere"), 32)
    assert not any(d.sees(by[name], 32) for d in (pbat, qadtr, NO_PATCHES)
                   for name in ("transfer from FP surrogate", UNIVERSAL, "8x8 in the centre"))
    assert no_aqapa.sees(by["8x8 square"], 32) and not no_aqapa.sees(by["8x8 square"], 4)
    table = seen_table({"PBAT": pbat, "QADT-R": qadtr, "DWQ": NO_PATCHES, "no A-QAPA": no_aqapa}, (32, 4)).set_index("threat")
    assert table.loc["10x10 square", "PBAT"] == "unseen" and table.loc["8x8 square", "PBAT"] == "seen"
    # QADT-R crafts at A-QAPA's cell width and trains at DBWT's batch width: seen, and labelled so
    assert table.loc["10x10 square", "QADT-R"] == "seen (crafted at another width for most batches)"
    assert table.loc["8x8 square", "DWQ"] == "unseen" and table.loc[RS, "PBAT"] == "adaptive"
    assert table.loc["8x8 square", "no A-QAPA"].startswith("seen at 32 b")
    with pytest.raises(ValueError, match="unknown threat source"):
        Threat("x", source="32-bit")
    with pytest.raises(ValueError, match="outside the central"):
        Threat("x", size=12)  # no 12 px box avoids the central 10x10 of a 32 px image


def test_the_adaptive_attack_beats_plain_transfer_on_a_known_weak_randomised_model():
    # Class-0 images (margin 0.5 at 32 bits, 0.7 at 2 bits); a 12x12 patch (14 % of the image) can flip
    # either width, but a patch crafted at 32 bits leaves blue at its random start: 2 bits stays right.
    x = torch.zeros(6, 3, 32, 32)
    x[:, 0], x[:, 1], x[:, 2] = 0.5, 0.45, 0.3
    y = torch.zeros(6, dtype=torch.long)
    target = TwoWidthToy()
    surrogate = set_bits(TwoWidthToy(), 32)  # honest: an independent model that equals the target at full precision
    cfg = attack_config(Threat("t", size=12, region="anywhere"), steps=30, restarts=1, seed=0)
    transfer = image_patch_attack(surrogate, x, y, cfg).apply(x)
    adaptive = image_patch_attack(Ensemble([(target, 32), (target, 2)]), x, y, cfg).apply(x)
    with torch.no_grad():
        pred = {b: (set_bits(target, b)(x).argmax(1), target(transfer).argmax(1), target(adaptive).argmax(1))
                for b in (32, 2)}
    assert all((clean == 0).all() for clean, _, _ in pred.values())
    assert (pred[32][1] != 0).all()  # the honest surrogate's patches do break the width it matches ...
    assert (pred[2][1] == 0).all()  # ... but not the other: attacking one width fails on the randomised model
    assert all((adv != 0).all() for _, _, adv in pred.values())  # EOT over the widths breaks every image at both


def test_evaluate_threats_is_per_image_symmetric_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path))
    d = synthetic_cifar(8, 12)
    x, y = d.x_test.float() / 255, d.y_test
    multi = _tm(1)
    defenses = {"single": {32: _tm(2), 2: _tm(3)}, "multi": {b: multi for b in (32, 4, 2)}}
    universal = {UNIVERSAL: torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))}
    kw = dict(surrogate=_tm(9), steps=2, progress=False, universal=universal, rs_queries=8)
    ev = evaluate_threats(defenses, x, y, **kw)
    pi = ev.per_image
    assert len(pi) == 12 * 5 * len(THREATS) and not (pi.broken & ~pi.clean_ok).any()
    assert (ev.strength.target == "FP surrogate").sum() == 1  # one common surrogate for every defense
    assert ev.random_precision.empty  # no defense is randomised here: no EOT at all
    # random search attacks exactly the images that no gradient threat of the cell broke
    for (dname, b), g in pi.groupby(["defense", "bits"]):
        wide = g.pivot(index="image", columns="threat", values="broken")
        ok = g[g.threat == RS].sort_values("image").clean_ok.to_numpy()
        left = ok & ~wide.drop(columns=RS).to_numpy(bool).any(1)
        assert not (wide[RS].to_numpy(bool) & ~left).any()
        rs = ev.strength[(ev.strength.threat == RS) & (ev.strength.target == f"{dname} {b} b")]
        assert (rs.n_ok.sum() if len(rs) else 0) == left.sum()
    dists = {"single": PatchDistribution(sizes=(8,)), "multi": NO_PATCHES}
    table = asr_table(pi, dists, collapsed={("single", 2)})
    worst = table[table.kind == "worst case"].set_index(["defense", "bits"])
    others = table[table.kind != "worst case"].groupby(["defense", "bits"])
    assert (worst.broken >= others.broken.max().reindex(worst.index)).all() and table.ci_low.le(table.asr).all()
    assert (worst.robust <= others.robust.min().reindex(worst.index) + 1e-9).all()
    assert table.robust_ci_low.le(table.robust).all() and (table.n_images == 12).all()
    assert set(table[table.collapsed].set_index(["defense", "bits"]).index) == {("single", 2)}
    s = summary(table)
    assert np.isnan(s.loc[("multi", "seen"), 32])  # nothing is seen by a model without patch training
    again = evaluate_threats(defenses, x, y, **kw)
    pd.testing.assert_frame_equal(pi, again.per_image)
    with pytest.raises(ValueError, match="surrogate"):
        evaluate_threats(defenses, x, y, steps=1, progress=False)
    with pytest.raises(ValueError, match="universal"):
        evaluate_threats(defenses, x, y, surrogate=_tm(9), steps=1, progress=False)


START = "transfer from its undefended start, 8x8"


def test_the_start_transfer_applies_the_starts_patches_to_the_defense(tmp_path, monkeypatch):
    """A defense meets the 8x8 patches crafted on its undefended start at the same width (on every image); a
    model without a start meets its own white-box 8x8 attack there."""
    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path))
    d = synthetic_cifar(8, 16)
    x, y = d.x_test.float() / 255, d.y_test
    start, other = _tm(4, (32,)), _tm(5, (32,))
    defenses = {"start": {32: start}, "defense": {32: other}}
    threats = [THREATS[0], next(t for t in THREATS if t.source == "start transfer")]  # the 8x8 square and it
    ev = evaluate_threats(defenses, x, y, threats=threats, steps=4, progress=False, starts={"defense": "start"})
    wide = {name: g.pivot(index="image", columns="threat", values="broken") for name, g in ev.per_image.groupby("defense")}
    assert (wide["start"][START] == wide["start"]["8x8 square"]).all()  # no start: its own white-box attack
    # the defense's start transfer is exactly the start's patches on it, not its own white-box attack
    cfg = attack_config(THREATS[0], 4, 1, 0)
    adv, _ = craft([(start.model, 32)], ["model4"], x, y, cfg)
    with torch.no_grad():
        ok = set_bits(other.model, 32)(x).argmax(1) == y
        want = (other.model(adv).argmax(1) != y) & ok
    assert (wide["defense"][START].to_numpy(bool) == want.numpy()).all()
    # the start's attack has its strength row (on the start, over every image it gets right)
    row = ev.strength[ev.strength.target == "start 32 b (start)"].iloc[0]
    assert row.threat == START and row.defense == "start" and row.n_ok == int((start.model(x).argmax(1) == y).sum())
    seen = seen_table({"defense": PatchDistribution(sizes=(8,))}, (32,)).set_index("threat")
    assert seen.loc[START, "defense"] == "adaptive"
    with pytest.raises(ValueError, match="not among the evaluated models"):
        evaluate_threats(defenses, x, y, threats=threats, steps=1, progress=False, starts={"defense": "missing"})


def test_the_universal_patch_records_its_convergence_on_the_surrogate(tmp_path, monkeypatch):
    """With the half-steps patch of the same run (surrogate_universal_patch(with_half=True)), the universal threat
    gets a strength row on the surrogate: full and half its steps at the places the defenses meet it, and its
    null (one random patch there), which the claims read like every other attack's."""
    from qadtr_core.evaluation.robustness import UniversalPatch, surrogate_universal_patch
    from qadtr_core.evaluation.transfer import attack_outcomes, rate_of

    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path))
    d = synthetic_cifar(16, 24)
    x, y = d.x_test.float() / 255, d.y_test
    sur = _tm(9, (32,))
    uni = next(t for t in THREATS if t.family == "universal")
    u = surrogate_universal_patch(sur, d.x_train.float() / 255, d.y_train, uni, steps=6, batch_size=8, with_half=True)
    assert isinstance(u, UniversalPatch) and u.steps == 6 and not torch.equal(u.patch, u.half)
    assert torch.equal(surrogate_universal_patch(sur, d.x_train.float() / 255, d.y_train, uni, 6, 8), u.patch)
    # the half is the same attack finished at 3 steps (its own cosine decay), not the 6-step run's iterate
    from qadtr_core.attacks.universal_patch import UniversalPatchAttack, UniversalPatchConfig
    from qadtr_core.patches import central_box

    cfg = UniversalPatchConfig(size=8, target=None, steps=6, batch_size=8, schedule="cosine", avoid=central_box(10))
    run = lambda c: UniversalPatchAttack([(sur.model, 32)], d.x_train.float() / 255, d.y_train, c)  # noqa: E731
    assert torch.equal(u.patch, run(cfg).run()) and torch.equal(u.half, run(dataclasses.replace(cfg, steps=3)).run())
    iterate = run(cfg)
    assert not torch.equal(u.half, iterate.run(3))
    ev = evaluate_threats({"m": {32: _tm(2, (32,))}}, x, y, sur, threats=(THREATS[0], uni), steps=2, progress=False,
                          universal={uni.name: u})
    row = ev.strength[ev.strength.threat == uni.name].iloc[0]
    assert (row.target, row.steps) == ("FP surrogate", 6)
    from qadtr_core.evaluation.robustness import _universal_applied
    k, n = rate_of(attack_outcomes(sur.model, 32, _universal_applied(x, u.patch, uni, 0), x, y))
    kh, _ = rate_of(attack_outcomes(sur.model, 32, _universal_applied(x, u.half, uni, 0), x, y))
    assert (row.n_ok, row.k_full, row.k_half) == (n, k, kh) and 0 <= row.k_floor <= n
    plain = evaluate_threats({"m": {32: _tm(2, (32,))}}, x, y, sur, threats=(THREATS[0], uni), steps=2,
                             progress=False, universal={uni.name: u.patch})
    assert uni.name not in set(plain.strength.threat)  # a bare patch has no half to read convergence from


def _outcomes(spec, n=100, clean=None):
    """Hand-made per-image outcomes: spec[(defense, bits, threat)] = number of broken images (of n; by default
    all clean-correct; ``clean[(defense, bits)]`` = how many are)."""
    rows = []
    for (d, b, th), k in spec.items():
        ok = np.arange(n) < (clean or {}).get((d, b), n)
        rows.append(pd.DataFrame({"defense": d, "bits": b, "threat": th, "image": np.arange(n), "clean_ok": ok,
                                  "broken": (np.arange(n) < k) & ok}))
    pi = pd.concat(rows, ignore_index=True)
    strength = pd.DataFrame([{"threat": "8x8 square", "target": "QADT-R 4 b", "defense": "QADT-R", "bits": 4, "steps": 10,
                              "n_ok": 100, "k_full": 90, "k_half": 88}])
    return Evaluation(pi, strength, n)


SEEN, BIG, CIRCLE, BAR = "8x8 square", "10x10 square", "circle, 10 px", "4x16 bar, anywhere"
DISTS = {"QAT (undefended)": NO_PATCHES, "PBAT": PatchDistribution(sizes=(8,)), "DWQ": NO_PATCHES,
         "QADT-R": PatchDistribution(sizes=(8, 10), source_bits=(4, 2))}


def _clean(n=100):
    return pd.concat([pd.DataFrame({"defense": d, "bits": b, "image": np.arange(n), "correct": np.arange(n) < a})
                      for d, b, a in [("multi-width (undefended)", 4, 90), ("multi-width (undefended)", 2, 85),
                                      ("QADT-R", 4, 88), ("QADT-R", 2, 80)]])


def test_claims_by_hand_on_robust_accuracy_with_intervals():
    asr = {"QAT (undefended)": (50, 70, 60), "PBAT": (20, 60, 50), "DWQ": (40, 50, 40), "QADT-R": (30, 30, 20)}
    spec = {(d, b, th): a + (10 if b == 2 else 0) for d, v in asr.items() for b in (4, 2)
            for th, a in zip((SEEN, BIG, BAR), v)}
    c = defense_claims(_outcomes(spec), _clean(), DISTS, (4, 2), {"seeds": [0], "profile": "test"}, n_boot=200)
    # every image clean-correct: robust = 100 - broken. C3 on the threats unseen by all three (the bar only):
    # QADT-R 80 - max(PBAT 50, DWQ 60) = 20 at 4 bits, 70 - 50 = 20 at 2 bits
    assert c["C3"]["value"] == pytest.approx(20) and c["C3"]["by_bits"]["2"]["value"] == pytest.approx(20)
    assert c["C3"]["ci_low"] <= c["C3"]["value"] <= c["C3"]["ci_high"] and set(c["C3"]["by_bits"]) == {"4", "2"}
    assert c["C3"]["metric"] == "robust accuracy" and c["C3"]["excluded_bits"] == {}
    # C4, white-box threats only: PBAT seen - unseen = 80 - 45 = 35; undefended under PBAT's definitions 50 - 35 = 15
    assert c["C4"]["value"] == pytest.approx(20) and c["C4"]["pbat_gap"]["value"] == pytest.approx(35)
    assert c["C4"]["seen_low"]["value"] == pytest.approx(30) and c["C4"]["at_low_bits"]["bits"] == 2
    assert c["C4"]["seen_low_robust"]["value"] == pytest.approx(70) and c["C4"]["metric"] == "robust accuracy"
    assert c["C5"]["value"] == pytest.approx(5) and c["C5"]["mean_drop"]["value"] == pytest.approx(3.5)
    strength = c["C3"]["attack_strength"][0]
    assert strength["white_box_asr"] == 0.9 and strength["white_box_asr_half_steps"] == 0.88


def test_c4_reads_white_box_threats_only():
    # a weak transfer (unseen) would drag PBAT's unseen mean down and fake a negative gap: it must not count
    spec = {(d, b, th): k for d in ("QAT (undefended)", "PBAT", "DWQ", "QADT-R") for b in (4, 2)
            for th, k in ((SEEN, 50 if d == "QAT (undefended)" else 20), (CIRCLE, 60), ("transfer from FP surrogate", 0))}
    c = defense_claims(_outcomes(spec), _clean(), DISTS, (4, 2), {"seeds": [0], "profile": "t"}, n_boot=100)["C4"]
    assert c["pbat_gap"]["value"] == pytest.approx(40)  # 80 - 40 on the white-box threats; with the transfer: 10
    assert c["threats"] == "white-box only"


def test_a_collapsed_cell_never_counts_as_robust_in_a_claim():
    # QADT-R at 2 bits collapsed: 10 images of 100 right, none broken (ASR 0 over them: "perfectly robust");
    # QADT-R at 4 bits is worse than the baselines. The collapsed width must not make C3 look good.
    spec = {}
    for d, k4 in (("QAT (undefended)", 60), ("PBAT", 30), ("DWQ", 30), ("QADT-R", 50)):
        for b in (4, 2):
            spec.update({(d, b, th): (0 if (d, b) == ("QADT-R", 2) else k4) for th in (SEEN, BIG, BAR)})
    clean = {("QADT-R", 2): 10}
    ev = _outcomes(spec, clean=clean)
    table = asr_table(ev.per_image, DISTS, collapsed={("QADT-R", 2)})
    cell = table[(table.defense == "QADT-R") & (table.bits == 2) & (table.threat == BAR)].iloc[0]
    assert cell.asr == 0 and cell.robust == pytest.approx(10) and cell.collapsed  # ASR rewards it; robust does not
    c3 = defense_claims(ev, _clean(), DISTS, (4, 2), {"seeds": [0], "profile": "t"}, n_boot=100,
                        collapsed={("QADT-R", 2)}, defends={"PBAT": True, "DWQ": True, "QADT-R": False})["C3"]
    assert set(c3["by_bits"]) == {"4"} and c3["excluded_bits"] == {"2": "QADT-R collapsed"}
    assert c3["value"] == pytest.approx(-20)  # 50 - 70 at 4 bits only
    assert c3["defends"] == {"PBAT": True, "DWQ": True, "QADT-R": False}
    everywhere = defense_claims(ev, _clean(), DISTS, (4, 2), {"seeds": [0], "profile": "t"}, n_boot=100,
                                collapsed={("QADT-R", 2), ("DWQ", 4)})["C3"]
    assert np.isnan(everywhere["value"]) and everywhere["by_bits"] == {}
    assert everywhere["defends"] == {"DWQ": False, "QADT-R": False}  # a collapsed defense never defends
    assert verdict_c3({**everywhere, "attack_strength": []})[1] == "inconclusive"  # no verdict, and no crash
    # a width the threats did not attack (Profile.defense_eval_bits) gates nothing: only 4 bits attacked here
    only4 = defense_claims(ev, _clean(), DISTS, (4, 2), {"seeds": [0], "profile": "t"}, n_boot=100,
                           collapsed={("QADT-R", 2)}, eval_bits=(4,))["C3"]
    assert only4["defends"] == {} and only4["excluded_bits"] == {}  # without the fix: {"QADT-R": False}
    assert set(only4["by_bits"]) == {"4"} and only4["value"] == pytest.approx(-20)


def test_c3_is_zero_when_every_defense_has_the_same_per_image_outcomes():
    rng = np.random.default_rng(0)
    threats = [SEEN, BIG, CIRCLE, BAR, "transfer from FP surrogate", RS]
    rate = dict(zip(threats, (0.2, 0.6, 0.3, 0.4, 0.1, 0.5)))  # 8x8 and 10x10 squares stronger than the rest
    outcome = {(b, th): rng.random(100) < rate[th] for b in (4, 2) for th in threats}
    pi = pd.concat([pd.DataFrame({"defense": d, "bits": b, "threat": th, "image": np.arange(100), "clean_ok": True,
                                  "broken": outcome[b, th]})
                    for d in ("QAT (undefended)", "PBAT", "DWQ", "QADT-R") for (b, th) in outcome], ignore_index=True)
    strength = pd.DataFrame([{"threat": SEEN, "target": "x", "defense": "PBAT", "bits": 4, "steps": 10,
                              "n_ok": 100, "k_full": 90, "k_half": 90}])
    dists = {**DISTS, "QADT-R": PatchDistribution(sizes=(6, 8, 10), source_bits=(4, 2))}
    clean = pd.concat([pd.DataFrame({"defense": d, "bits": b, "image": np.arange(100), "correct": True})
                       for d in ("multi-width (undefended)", "QADT-R") for b in (4, 2)])
    c3 = defense_claims(Evaluation(pi, strength, 100), clean, dists, (4, 2), {"seeds": [0], "profile": "t"},
                        n_boot=200)["C3"]
    # DWQ's own "unseen" holds the strong squares, QADT-R's does not: only the shared set makes this 0
    assert c3["value"] == pytest.approx(0) and c3["ci_low"] <= 0 <= c3["ci_high"]
    assert all(v["value"] == pytest.approx(0) and v["ci_low"] <= 0 <= v["ci_high"] for v in c3["by_bits"].values())
    assert common_unseen(pi, dists, ["PBAT", "DWQ", "QADT-R"], 4) == [BAR, "transfer from FP surrogate"]


def test_attack_convergence_is_per_model_and_claims_keep_the_worst_defended_one():
    rows = [(SEEN, "QAT (undefended)", 4, 400, 399, 399), (SEEN, "QAT (undefended)", 2, 400, 400, 400),
            (SEEN, "QADT-R", 4, 50, 30, 20), (SEEN, "PBAT", 4, 100, 50, 49),
            ("transfer from FP surrogate", "FP surrogate", 32, 100, 95, 95),
            (RS, "DWQ", 4, 80, 40, 30), (BAR, "QADT-R", 2, 80, 30, 30)]
    strength = pd.DataFrame([{"threat": th, "target": f"{d} {b} b", "defense": d, "bits": b,
                              "steps": 10, "n_ok": n, "k_full": kf, "k_half": kh} for th, d, b, n, kf, kh in rows])
    ev = Evaluation(pd.DataFrame(), strength, 100)
    conv = convergence(ev)
    assert len(conv) == len(rows) and list(conv.converged) == [True, True, False, True, True, False, True]
    # pooled over every model the 8x8 attack looked converged, (879 - 868) / 950 = 1.2 points; on QADT-R it gains 20
    entries = {e["name"]: e for e in attack_strength(ev, ["PBAT", "DWQ", "QADT-R"], exclude=[RS])}
    assert set(entries) == {"8x8 square on QADT-R 4 b", "transfer from FP surrogate on FP surrogate 32 b",
                            f"{BAR} on QADT-R 2 b"}  # random search is shown, never a claim's convergence check
    assert entries["8x8 square on QADT-R 4 b"]["white_box_asr"] - entries["8x8 square on QADT-R 4 b"][
        "white_box_asr_half_steps"] == pytest.approx(0.2)
    assert [e["name"] for e in attack_strength(ev, ["PBAT", "QAT (undefended)"], exclude=[RS, BAR])] == [
        "8x8 square on PBAT 4 b", "transfer from FP surrogate on FP surrogate 32 b"]
    # an attack that fools nothing on one defense (converged-looking: no gain) is that threat's entry, not the
    # model with the largest gain: a no-op would credit the defense with robustness
    noop = pd.concat([strength, pd.DataFrame([{"threat": SEEN, "target": "DWQ 4 b", "defense": "DWQ", "bits": 4,
                                               "steps": 10, "n_ok": 90, "k_full": 0, "k_half": 0}])])
    entries = {e["name"]: e for e in attack_strength(Evaluation(pd.DataFrame(), noop, 100), ["PBAT", "DWQ"],
                                                     exclude=[RS, BAR])}
    assert "8x8 square on DWQ 4 b" in entries and entries["8x8 square on DWQ 4 b"]["white_box_asr"] == 0
    # ... unless the claim leaves that cell out (collapsed): then the worst of the cells it reads
    kept = attack_strength(Evaluation(pd.DataFrame(), noop, 100), ["PBAT", "DWQ"], exclude=[RS, BAR],
                           collapsed=[("DWQ", 4)])
    assert [e["name"] for e in kept] == ["8x8 square on PBAT 4 b", "transfer from FP surrogate on FP surrogate 32 b"]


def test_a_defense_attack_no_better_than_a_random_patch_is_not_converged():
    """The null floor of a white-box cell (a random patch per image at the attack's places): an attack fooling
    3 % where random patches fool 5 % does nothing, however flat its curve; the claims' entry says so."""
    rows = [{"threat": SEEN, "target": "PBAT 2 b", "defense": "PBAT", "bits": 2, "steps": 10, "n_ok": 500,
             "k_full": 15, "k_half": 15, "k_floor": 25},
            {"threat": BAR, "target": "PBAT 2 b", "defense": "PBAT", "bits": 2, "steps": 10, "n_ok": 500,
             "k_full": 300, "k_half": 299, "k_floor": 25}]
    ev = Evaluation(pd.DataFrame(), pd.DataFrame(rows), 500)
    conv = convergence(ev)
    assert list(conv.converged) == [False, True] and list(conv.null_floor) == [0.05, 0.05]
    entry = {e["name"]: e for e in attack_strength(ev, ["PBAT"])}[f"{SEEN} on PBAT 2 b"]
    assert entry["clean_floor"] == pytest.approx(0.05)
    from qadtr_core.evaluation.strength import not_converged_reason
    assert "null floor" in not_converged_reason(entry["white_box_asr"], entry["white_box_asr_half_steps"],
                                                clean_floor=entry["clean_floor"], n=entry["n"])
    # without a measured floor (older records) the floor is 0 and the same attack reads converged
    old = convergence(Evaluation(pd.DataFrame(), pd.DataFrame(rows).drop(columns="k_floor"), 500))
    assert list(old.converged) == [True, True]


def test_the_white_box_cells_record_their_random_patch_floor(tmp_path, monkeypatch):
    """evaluate_threats measures the null floor of every white-box cell, on the images that cell attacked,
    with a random patch per image at the places its attack chose (the same count by hand)."""
    from qadtr_core.evaluation.transfer import random_patch_floor, rate_of
    from qadtr_core.patches import Placement
    from qadtr_core.utils import stream_seed

    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path))
    d = synthetic_cifar(8, 40)
    x, y = d.x_test.float() / 255, d.y_test
    m = _tm(2)
    ev = evaluate_threats({"m": {32: m}}, x, y, threats=(THREATS[0],), steps=2, progress=False)
    row = ev.strength.iloc[0]
    ok = (set_bits(m.model, 32)(x).argmax(1) == y).nonzero()[:, 0]
    cfg = attack_config(THREATS[0], 2, 1, 0, False, early_stop=True)
    _, rec = craft([(m.model, 32)], ["model2"], x[ok], y[ok], cfg, THREATS[0].region)
    place = Placement(rec["rows"], rec["cols"], torch.zeros(len(ok)), torch.ones(len(ok)))
    k, n = rate_of(random_patch_floor(m.model, 32, x[ok], y[ok], 8, place, seed=stream_seed(0, 41), per_image=True))
    assert (row.n_ok, row.k_floor) == (n, k) == (len(ok), k) and "null_floor" in convergence(ev)


def test_ablation_claim_by_hand_on_robust_accuracy():
    spec = {}
    for d, a in [("QADT-R", 30), ("without A-QAPA", 40), ("without DBWT", 29), ("without GIR", 35)]:
        spec.update({(d, 4, CIRCLE): a, (d, 4, SEEN): 0, (d, 2, CIRCLE): a, (d, 2, SEEN): 0})
    q = PatchDistribution(sizes=(8,), source_bits=(4, 2))
    dists = {"QADT-R": q, "without A-QAPA": NO_PATCHES, "without DBWT": q, "without GIR": q}
    c = ablation_claim(_outcomes(spec), dists, (4, 2), {"seeds": [0], "profile": "test"}, n_boot=200)
    assert c["C7"]["defends"] == {}  # no defends table given, nothing collapsed: no gate
    gated = ablation_claim(_outcomes(spec), dists, (4, 2), {"seeds": [0], "profile": "test"}, n_boot=50,
                           defends={"QADT-R": False, "without GIR": False})
    assert gated["C7"]["defends"] == {"QADT-R": False}  # the full model only: a weak variant is a finding
    inc = c["C7"]["increase"]
    assert {k: round(v["value"], 6) for k, v in inc.items()} == {"A-QAPA": 10.0, "DBWT": -1.0, "GIR": 5.0}
    assert all(v["ci_low"] <= v["value"] <= v["ci_high"] for v in inc.values()) and c["C7"]["metric"] == "robust accuracy"
    # the case: "without DBWT" collapsed at 2 bits (10 % right, nothing broken: ASR 0) must not count
    ev = _outcomes({**spec, ("without DBWT", 2, CIRCLE): 0}, clean={("without DBWT", 2): 10})
    flagged = ablation_claim(ev, dists, (4, 2), {"seeds": [0], "profile": "t"}, n_boot=100,
                             collapsed={("without DBWT", 2)})["C7"]
    assert flagged["increase"]["DBWT"]["value"] == pytest.approx(-1.0)  # 4 bits only
    assert flagged["excluded_bits"] == {"DBWT": {"2": "without DBWT collapsed"}}
    every = ablation_claim(ev, dists, (2,), {"seeds": [0], "profile": "t"}, n_boot=100, collapsed={("without DBWT", 2)})
    assert np.isnan(every["C7"]["increase"]["DBWT"]["value"])


def test_clean_table_counts_every_width_with_wilson_intervals():
    d = synthetic_cifar(8, 10)
    tm = _tm(4)
    t = clean_table(clean_outcomes({"m": {32: tm, 2: tm}}, d.x_test.float() / 255, d.y_test))
    assert list(t.bits) == [32, 2] and (t.n == 10).all() and (t.ci_low <= t.clean_acc).all()


def test_a_model_wrong_everywhere_has_robust_accuracy_zero_not_asr_zero():
    pi = pd.DataFrame({"defense": "broken", "bits": 4, "threat": SEEN, "image": np.arange(50), "clean_ok": False,
                       "broken": False})
    row = asr_table(pi, {"broken": NO_PATCHES})
    w = row[row.threat == WORST].iloc[0]
    assert w.asr == 0 and w.n == 0 and w.robust == 0 and w.n_images == 50


def test_the_strength_record_counts_an_image_fooled_by_any_restart():
    """Without early stopping each restart's success record is its own: an image fooled by the first restart
    only is fooled (as ImagePatches.fooled_within says), not lost to the last restart's record."""
    from qadtr_core.evaluation.robustness import _strength_row

    success = torch.zeros(3, 2, 5, dtype=torch.bool)  # (images, restarts, steps + 1)
    success[0, 0, 2:] = True  # image 0: the first restart, from step 2
    success[1, 1, 4:] = True  # image 1: the second restart, only at the last step
    row = _strength_row(THREATS[0], "m 2 b", {"ok": torch.tensor([True, True, True]), "success": success}, 4, "m", 2)
    # half the steps keeps image 0 only; half the restarts (the first) keeps image 0 only as well
    assert (row["n_ok"], row["k_full"], row["k_half"]) == (3, 2, 1)


def test_the_halved_defense_attack_is_half_the_steps_or_half_the_restarts_whichever_fools_fewer():
    """An attack whose every success comes from its last restart, early in its steps, halves to nothing by
    halving its restarts (not its steps): the doubling rule must see it (as image_patch_strength does)."""
    from qadtr_core.evaluation.robustness import _strength_row

    n = 500
    success = torch.zeros(n, 4, 11, dtype=torch.bool)
    success[:200, 3, 1:] = True  # 200 images, fooled by restart 4 of 4 from its first step
    ok = torch.ones(n, dtype=torch.bool)
    row = _strength_row(THREATS[0], "m 2 b", {"ok": ok, "success": success}, 10, "m", 2)
    assert (row["k_full"], row["k_half"]) == (200, 0)
    one = _strength_row(THREATS[0], "m 2 b", {"ok": ok, "success": success[:, 3:]}, 10, "m", 2)
    assert (one["k_full"], one["k_half"]) == (200, 200)  # one restart: only the steps halve


def test_the_strength_record_carries_what_the_attack_cost(tmp_path, monkeypatch):
    """The defense chapters cache success records, not costs: the strength row reads the image-steps an
    early-stopped white-box attack ran back off its record (what the run itself counted), and
    attack_strength passes them on to the scorecard beside the full budget."""
    from qadtr_core.attacks.image_patch import ImagePatchConfig
    from qadtr_core.evaluation.robustness import _strength_row

    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 64, 10)).eval()
    x = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    cfg = ImagePatchConfig(size=6, steps=8, restarts=2, location_opt=True, early_stop=True, seed=3, location_search=3)
    found = image_patch_attack(model, x, y, cfg, batch_size=24)
    rec = {"ok": torch.ones(24, dtype=torch.bool), "success": found.success}
    row = _strength_row(THREATS[0], "m 32 b", rec, 8, "m", 32, early_stop=True)
    assert row["image_steps_run"] == found.image_steps_run < row["image_steps_full_budget"] == 24 * 2 * 8
    assert _strength_row(THREATS[0], "m 32 b", rec, 8, "m", 32)["image_steps_run"] == 24 * 2 * 8  # full runs
    d = synthetic_cifar(8, 12)
    ev = evaluate_threats({"m": {32: _tm(2, (32,))}}, d.x_test.float() / 255, d.y_test, threats=(THREATS[0],),
                          steps=4, restarts=2, progress=False, location_opt=True, location_search=2)
    (entry,) = attack_strength(ev)
    white = ev.strength[ev.strength.threat == THREATS[0].name].iloc[0]
    assert entry["image_steps_run"] == int(white.image_steps_run) <= entry["image_steps_full_budget"]
    assert entry["image_steps_full_budget"] == int(white.n_ok) * 2 * 4
