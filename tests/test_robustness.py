"""Threat evaluation of defended models, the Table-5 summary, and claim values on hand-made tables."""
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from qadtr_core.models import build_model
from qadtr_core.quant import prepare_bits, set_bits
from qadtr_core.robustness import (
    SEEN, THREATS, BitEnsemble, Threat, ablation_claim, clean_table, defense_claims, evaluate_threats, summary,
)
from qadtr_core.testing import synthetic_cifar
from qadtr_core.train import TrainConfig
from qadtr_core.zoo import TrainedModel


def _tm(seed: int, bit_set=(32, 4, 2)) -> TrainedModel:
    torch.manual_seed(seed)
    m = build_model("smallcnn")
    for b in bit_set:
        prepare_bits(m, b)
    cfg = TrainConfig(arch="smallcnn", epochs=1, lr=0.1, seed=seed)
    return TrainedModel(m.eval(), cfg, {"config_hash": f"model{seed}"})


def test_bit_ensemble_averages_log_probabilities_over_widths():
    tm = _tm(0)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = sum(F.log_softmax(set_bits(tm.model, b)(x), 1) for b in (32, 2)) / 2
        assert torch.allclose(BitEnsemble(tm.model, (32, 2))(x), expected, atol=1e-5)
        assert torch.allclose(BitEnsemble(tm.model, (4,))(x), F.log_softmax(set_bits(tm.model, 4)(x), 1), atol=1e-6)


def test_only_pbats_training_configuration_is_seen():
    assert SEEN.seen and [t.seen for t in THREATS].count(True) == 1
    assert not Threat("other", size=8, shape="circle").seen


def test_evaluate_threats_rows_worst_case_and_skips(tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path))
    d = synthetic_cifar(8, 12)
    x, y = d.x_test.float() / 255, d.y_test
    multi = _tm(1)
    defenses = {"single": {32: _tm(2), 2: _tm(3)}, "multi": {b: multi for b in (32, 4, 2)}}
    t = evaluate_threats(defenses, x, y, steps=2, progress=False)
    cells = t.groupby(["defense", "bits"])
    for (name, b), cell in cells:
        assert cell.n.nunique() == 1  # one denominator per cell: its clean-correct images
        worst = cell[cell.threat.str.startswith("worst")].iloc[0]
        others = cell[~cell.threat.str.startswith("worst")]
        assert worst.broken >= others.broken.max() and worst.broken <= others.broken.sum()
        has_eot = (others.threat.str.startswith("adaptive")).any()
        assert has_eot == (name == "multi")  # EOT over the bit set only for a model serving several widths
        assert (others.threat.str.contains("crafted at 32")).any() == (b != 32)
    assert t.asr.between(0, 100).all()
    again = evaluate_threats(defenses, x, y, steps=2, progress=False)  # from the cache, same numbers
    pd.testing.assert_frame_equal(t, again)


def _table(rows):
    return pd.DataFrame([{"defense": d, "bits": b, "threat": th, "seen": th.startswith("seen"), "n": 100,
                          "broken": a, "asr": float(a)} for d, b, th, a in rows])


def test_summary_layout_and_means_by_hand():
    rows = []
    for d, seen, unseen1, unseen2, worst in [("PBAT", 20, 60, 40, 70), ("DWQ", 50, 55, 45, 80), ("QADT-R", 30, 30, 20, 50)]:
        for b, shift in ((4, 0), (2, 10)):
            rows += [(d, b, "seen: 8x8", seen + shift), (d, b, "unseen size", unseen1 + shift),
                     (d, b, "unseen shape", unseen2 + shift), (d, b, "adaptive: EOT", 99),
                     (d, b, "worst case (any threat)", worst + shift)]
    s = summary(_table(rows))
    assert list(s.index.get_level_values(0).unique()) == ["PBAT", "DWQ", "QADT-R"]
    assert s.loc[("PBAT", "unseen"), 4] == 50 and s.loc[("PBAT", "unseen"), 2] == 60  # mean of the unseen threats
    assert s.loc[("PBAT", "seen"), "mean"] == 25 and s.loc[("DWQ", "worst case"), 2] == 90
    clean = pd.DataFrame([{"defense": d, "bits": b, "clean_acc": a, "n": 100} for d, b, a in [
        ("QAT (undefended)", 4, 88), ("QAT (undefended)", 2, 84), ("QADT-R", 4, 86), ("QADT-R", 2, 79)]])
    c = defense_claims(s, clean)
    # unseen: PBAT 50/60, DWQ 50/60, QADT-R 25/35 -> reductions 25 and 25
    assert c["C3"]["reduction_unseen_max"] == 25 and c["C3"]["reduction_unseen_mean"] == 25
    assert c["C3"]["reduction_worst_mean"] == 20  # min(PBAT 70/80, DWQ 80/90) - QADT-R 50/60
    assert c["C4"] == {"bits_low": 2, "seen_low": 30.0, "unseen_low": 60.0, "gap_mean": 30.0}
    assert c["C5"]["max_drop"] == 5 and c["C5"]["mean_drop"] == 3.5


def test_ablation_claim_by_hand():
    rows = []
    for d, a in [("QADT-R", 30), ("without A-QAPA", 40), ("without DBWT", 29), ("without GIR", 35)]:
        rows += [(d, 4, "seen: 8x8", 0), (d, 4, "unseen shape", a), (d, 4, "worst case (any threat)", a)]
    c = ablation_claim(summary(_table(rows)))
    assert c == {"C7": {"increase": {"A-QAPA": 10.0, "DBWT": -1.0, "GIR": 5.0}}}


def test_clean_table_counts_every_width():
    d = synthetic_cifar(8, 10)
    tm = _tm(4)
    t = clean_table({"m": {32: tm, 2: tm}}, d.x_test.float() / 255, d.y_test)
    assert list(t.bits) == [32, 2] and (t.n == 10).all() and t.clean_acc.between(0, 100).all()


@pytest.mark.parametrize("bad", [{"size": 40}, {"shape": "star"}])
def test_threat_with_an_impossible_patch_is_a_clear_error(bad, tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path))
    d = synthetic_cifar(8, 4)
    with pytest.raises(ValueError):
        evaluate_threats({"m": {32: _tm(5)}}, d.x_test.float() / 255, d.y_test, threats=(Threat("bad", **bad),),
                         steps=1, progress=False)
