"""B1 (beyond the paper): certified robustness kept at the lowest width. Hand-built per-image tables with
hand-computed drops, the null case (nothing certified at full precision) and a strong effect."""
import numpy as np
import pandas as pd
import pytest

from qadtr_core.claims import judge, rule_text, scorecard
from qadtr_core.claims.b1_certified import b1_claim, verdict_b1


def _table(cert: dict[int, int], n: int = 200, model: str = "per-width", patch: int = 8) -> pd.DataFrame:
    """``cert[bits]`` images certified, the first ones of the set (so the lower width's certified images are a
    subset of the higher's: the paired drop is exactly the difference of the counts)."""
    rows = []
    for b, k in cert.items():
        c = np.arange(n) < k
        rows.append(pd.DataFrame({"model": model, "bits": b, "patch": patch, "image": range(n), "certified": c,
                                  "attacked_robust": c | (np.arange(n) < k + 10), "masked_clean": np.arange(n) < 150}))
    return pd.concat(rows, ignore_index=True)


def test_the_drop_is_the_paired_difference_in_points():
    c = b1_claim(_table({32: 100, 4: 96, 2: 90}), "test", [0])
    assert (c["high_bits"], c["low_bits"], c["patch"], c["n"]) == (32, 2, 8, 200)
    assert c["value"] == pytest.approx(100 * (100 - 90) / 200)  # 5 points
    assert c["by_bits"]["2"]["certified"]["value"] == pytest.approx(0.45)
    assert c["ci_low"] <= c["value"] <= c["ci_high"]


def test_a_kept_certificate_holds_and_a_lost_one_does_not():
    kept = b1_claim(_table({32: 100, 2: 99}, n=1000), "test", [0])
    assert verdict_b1(kept).verdict == "holds"
    lost = b1_claim(_table({32: 100, 2: 20}), "test", [0])  # 40 points lower
    assert lost["ci_low"] >= 5 and verdict_b1(lost).verdict == "does not hold"


def test_a_model_that_certifies_nothing_keeps_nothing():
    """The null: nothing certified at either width is a drop of 0, which must not read "holds"."""
    c = b1_claim(_table({32: 0, 2: 0}), "test", [0])
    assert c["value"] == 0
    r = verdict_b1(c)
    assert r.verdict == "inconclusive" and "nothing to keep" in r.reason


def test_a_drop_whose_interval_straddles_the_bar_is_inconclusive():
    c = b1_claim(_table({32: 60, 2: 50}, n=200), "test", [0])  # 5 points, interval about [2, 8]
    assert c["ci_low"] < 5 <= c["ci_high"]
    assert verdict_b1(c).verdict == "inconclusive"


def test_the_multi_width_model_is_read_beside_and_bad_input_is_refused():
    t = pd.concat([_table({32: 100, 2: 90}), _table({32: 80, 2: 40}, model="multi-width")])
    c = b1_claim(t, "test", [0])
    assert c["multiwidth"]["value"] == pytest.approx(20.0) and "multi-width model" in verdict_b1(c).ours
    with pytest.raises(ValueError, match="compares two widths"):
        b1_claim(_table({32: 10}), "test", [0])


def test_b1_is_a_scorecard_row_beyond_the_paper():
    c = b1_claim(_table({32: 100, 2: 99}, n=1000), "test", [0])
    card = scorecard({"B1": c})
    row = card[card.claim == "B1"].iloc[0]
    assert row.verdict == "holds" and "does not study" in row.answer and row.chapter == "09_certified"
    assert judge("B1", c).verdict == "holds" and "nothing certified to keep" in rule_text("B1")
    assert card.claim.tolist()[:7] == [f"C{i}" for i in range(1, 8)]
