"""Masks and batched placement: pixel-exact pastes, bounds, the avoided region, clear errors."""
import pytest
import torch

from qadtr_core.patches import (
    Placement,
    apply_patch,
    area_share,
    bounding_mask,
    central_box,
    fixed_placement,
    make_mask,
    random_placement,
)


def test_ones_on_zeros_land_exactly_where_asked():
    img = torch.zeros(2, 3, 32, 32)
    out = apply_patch(img, torch.ones(3, 5, 5), make_mask(5), Placement(torch.tensor([3, 27]), torch.tensor([7, 0]),
                                                                     torch.zeros(2), torch.ones(2)))
    expected = torch.zeros(2, 3, 32, 32)
    expected[0, :, 3:8, 7:12] = 1
    expected[1, :, 27:32, 0:5] = 1
    assert torch.equal(out, expected)


def test_per_image_patches_and_mask_blend():
    img = torch.full((2, 1, 8, 8), 0.5)
    patches = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    out = apply_patch(img, patches, mask, fixed_placement(2, 1, 1))
    assert out[0, 0, 1:3, 1:3].tolist() == [[0.0, 0.5], [0.5, 0.0]]
    assert out[1, 0, 1:3, 1:3].tolist() == [[1.0, 0.5], [0.5, 1.0]]
    assert (out[:, :, 3:] == 0.5).all()


def test_masks_have_the_given_shape_and_area():
    assert make_mask(6).shape == (1, 6, 6) and area_share(make_mask(6)) == pytest.approx(36 / 1024)
    disc = make_mask(8, "circle")
    assert disc.shape == (1, 8, 8) and 40 <= disc.sum() <= 56  # about pi * 4^2 = 50
    assert disc[0, 0, 0] == 0 and disc[0, 4, 4] == 1


def test_gradient_reaches_the_patch_only_through_the_mask():
    patch = torch.rand(3, 4, 4, requires_grad=True)
    mask = make_mask(4, "circle")
    apply_patch(torch.rand(5, 3, 32, 32), patch, mask, fixed_placement(5, 2, 2)).sum().backward()
    assert torch.equal(patch.grad, 5 * mask.expand(3, 4, 4))


def test_random_placement_avoids_the_centre_and_stays_inside():
    g = torch.Generator().manual_seed(0)
    place = random_placement(2000, 8, g, avoid=central_box(10))
    box = bounding_mask(place, 8)
    assert box.sum((1, 2, 3)).eq(64).all()
    assert not box[:, :, 11:21, 11:21].any()
    assert place.rows.min() == 0 and place.rows.max() == 24  # the full range is reachable


def test_rotated_and_scaled_patches_stay_in_range_and_inside():
    g = torch.Generator().manual_seed(1)
    place = random_placement(64, 6, g, max_angle=30, scale_range=(0.8, 1.2))
    out = apply_patch(torch.rand(64, 3, 32, 32), torch.rand(3, 6, 6), make_mask(6), place)
    assert out.min() >= 0 and out.max() <= 1
    assert bounding_mask(place, 6).sum((1, 2, 3)).gt(0).all()


@pytest.mark.parametrize("bad,match", [
    (dict(size=40), "larger than the image"),
    (dict(row=30), r"location \(row 30, col 0\).*allowed rows/cols: 0..27"),
    (dict(nan=True), "finite"),
])
def test_bad_inputs_are_clear_errors(bad, match):
    size = bad.get("size", 5)
    img = torch.rand(1, 3, 32, 32)
    if bad.get("nan"):
        img[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=match):
        apply_patch(img, torch.rand(3, size, size), torch.ones(1, size, size), fixed_placement(1, bad.get("row", 0), 0))


def test_impossible_requests_are_refused():
    g = torch.Generator()
    with pytest.raises(ValueError, match="patch size 33 px"):
        make_mask(33)
    with pytest.raises(ValueError, match="unknown patch shape"):
        make_mask(4, "star")
    with pytest.raises(ValueError, match="no location"):
        random_placement(4, 30, g, avoid=central_box(10))
