"""Scorecard verdicts on hand-made claim values, and the table from result files."""
from qadtr_core.artifacts import write_json
from qadtr_core.scorecard import (
    CLAIMS, load_claims, scorecard, verdict_c1, verdict_c2, verdict_c3, verdict_c4, verdict_c5, verdict_c6, verdict_c7,
)


def test_c1_verdicts():
    assert verdict_c1({"value": 0.73, "white_box": 0.9})[1] == "reproduced"
    assert verdict_c1({"value": 0.40, "white_box": 0.45})[1] == "partly"  # transfers, weaker attack
    assert verdict_c1({"value": 0.10, "white_box": 0.60})[1] == "not reproduced"


def test_c2_verdicts():
    assert verdict_c2({"pgd_offdiag_relative": 0.3, "patch_offdiag_relative": 0.9})[1] == "reproduced"
    assert verdict_c2({"pgd_offdiag_relative": 0.8, "patch_offdiag_relative": 0.9})[1] == "partly"
    assert verdict_c2({"pgd_offdiag_relative": 0.95, "patch_offdiag_relative": 0.9})[1] == "not reproduced"


def test_c6_verdicts():
    base = {"cosine_min": 0.0, "cosine_max": 0.3, "edge_iou_mean": 0.15}
    assert verdict_c6({**base, "cosine_mean": 0.1, "hog_mean": 0.8})[1] == "reproduced"
    assert verdict_c6({**base, "cosine_mean": 0.4, "hog_mean": 0.75})[1] == "partly"
    assert verdict_c6({**base, "cosine_mean": 0.6, "hog_mean": 0.7})[1] == "not reproduced"


def test_scorecard_has_one_row_per_claim_and_marks_missing_ones(tmp_path):
    write_json(tmp_path / "results" / "01_transferability" / "smoke" / "claims.json",
               {"C1": {"value": 0.8, "white_box": 0.9, "profile": "smoke", "n": 90}})
    claims = load_claims("smoke", root=tmp_path)
    table = scorecard(claims)
    assert list(table.claim) == list(CLAIMS) == ["C1", "C2", "C3", "C4", "C5", "C6", "C7"]
    row = table.set_index("claim").loc["C1"]
    assert row.verdict == "reproduced" and row.n == 90 and row.profile == "smoke"
    assert (table.set_index("claim").loc[["C2", "C3", "C7"], "verdict"] == "not measured").all()  # no results yet
    assert load_claims("quick", root=tmp_path) == {}


def test_c3_verdicts():
    base = {"reduction_worst_mean": 5.0}
    assert verdict_c3({**base, "reduction_unseen_max": 25.0, "reduction_unseen_mean": 12.0})[1] == "reproduced"
    assert verdict_c3({**base, "reduction_unseen_max": 25.0, "reduction_unseen_mean": 12.0,
                       "reduction_worst_mean": -1.0})[1] == "partly"  # gains vanish under the adaptive attack
    assert verdict_c3({**base, "reduction_unseen_max": 8.0, "reduction_unseen_mean": 2.0})[1] == "partly"
    assert verdict_c3({**base, "reduction_unseen_max": 3.0, "reduction_unseen_mean": -4.0})[1] == "not reproduced"


def test_c4_verdicts():
    assert verdict_c4({"bits_low": 2, "seen_low": 57.9, "unseen_low": 78.3, "gap_mean": 15.0})[1] == "reproduced"
    assert verdict_c4({"bits_low": 2, "seen_low": 60.0, "unseen_low": 65.0, "gap_mean": 4.0})[1] == "partly"
    assert verdict_c4({"bits_low": 2, "seen_low": 60.0, "unseen_low": 58.0, "gap_mean": 1.0})[1] == "not reproduced"


def test_c5_verdicts():
    assert verdict_c5({"max_drop": 2.5, "mean_drop": 1.0})[1] == "reproduced"
    assert verdict_c5({"max_drop": 9.0, "mean_drop": 4.0})[1] == "partly"
    assert verdict_c5({"max_drop": 20.0, "mean_drop": 9.0})[1] == "not reproduced"


def test_c7_verdicts():
    assert verdict_c7({"increase": {"A-QAPA": 3.0, "DBWT": 2.0, "GIR": 5.0}})[1] == "reproduced"
    assert verdict_c7({"increase": {"A-QAPA": 3.0, "DBWT": -1.0, "GIR": 0.5}})[1] == "partly"
    ours, verdict = verdict_c7({"increase": {"A-QAPA": 1.0, "DBWT": -1.0, "GIR": 0.5}})
    assert verdict == "not reproduced" and "GIR +0.5" in ours
