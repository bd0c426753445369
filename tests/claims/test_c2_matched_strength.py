"""C2 reads PGD at the radius that matches the per-image patch's white-box strength."""
import pytest

from qadtr_core.claims.c2_pixel_transfer import MATCH_POINTS, matched_radius, verdict_c2


def test_the_matched_radius_is_the_one_closest_to_the_patch():
    curve = {0.25: 0.2, 0.5: 0.45, 1.0: 0.76, 2.0: 0.96, 4.0: 1.0}
    assert matched_radius(curve, 0.939) == 2.0
    assert matched_radius(curve, 0.5) == 0.5
    assert matched_radius({1.0: 0.4, 2.0: 0.6}, 0.5) == 1.0  # a tie: the smaller radius
    with pytest.raises(ValueError, match="at least one"):
        matched_radius({}, 0.5)


@pytest.mark.parametrize("gap, matched", [(MATCH_POINTS, True), (-MATCH_POINTS, True), (MATCH_POINTS + 0.1, False),
                                          (-59.4, False)])
def test_the_rule_compares_only_matched_strengths(gap, matched):
    iv = lambda v, lo, hi: {"value": v, "ci_low": lo, "ci_high": hi}  # noqa: E731
    c = {**iv(0.5, 0.4, 0.6), "pgd_relative": iv(0.2, 0.1, 0.3), "patch_relative": iv(0.8, 0.7, 0.9), "eps_255": 2.0,
         "pgd_white_box": iv(0.9, 0.88, 0.92), "patch_white_box": iv(0.9, 0.88, 0.92), "strength_gap": gap,
         "pgd_white_box_excess": iv(0.4, 0.3, 0.5), "patch_white_box_excess": iv(0.9, 0.8, 1.0), "attack_strength": []}
    r = verdict_c2(c)
    assert (r.verdict == "reproduced") is matched
    assert matched or "not matched" in r.reason
