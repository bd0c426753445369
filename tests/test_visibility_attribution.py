"""Visibility measures and Captum attribution on tiny hand-built models."""
import pytest
import torch

from qadtr_core.analysis.attribution import METHODS, attribution_map, in_region_share, location_asr
from qadtr_core.analysis.visibility import blend_patch, budget_patch, psnr, ssim
from qadtr_core.models import build_model
from qadtr_core.patches import fixed_placement, make_mask
from qadtr_core.testing import ChannelMeanModel, RegionModel


def test_ssim_and_psnr_of_an_image_with_itself():
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-5)
    assert torch.isinf(psnr(x, x)).all()
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert (ssim(noisy, x) < 0.95).all() and (psnr(noisy, x) < 25).all()


@pytest.mark.parametrize("window, sigma", [(11, 1.5), (7, 0.9)])  # torchmetrics sizes its window from sigma
def test_ssim_and_psnr_agree_with_torchmetrics_on_real_images(window, sigma):
    tm = pytest.importorskip("torchmetrics.functional.image")
    from qadtr_core.data import DataError, load_cifar10

    try:
        x = load_cifar10().test_subset(32)[0]
    except DataError as e:
        pytest.skip(f"CIFAR-10 is not available here: {e}")
    g = torch.Generator().manual_seed(0)
    patch, mask, place = torch.rand(3, 8, 8, generator=g), make_mask(8), fixed_placement(32, 5, 9)
    for other in ((x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1),  # noise
                  blend_patch(x, patch, mask, place, alpha=0.7),  # a translucent patch
                  x.roll(1, 0)):  # other images
        ours = ssim(other, x, window=window, sigma=sigma)
        theirs = tm.structural_similarity_index_measure(other, x, gaussian_kernel=True, sigma=sigma, data_range=1.0,
                                                         reduction="none")
        assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
        reference = torch.stack([tm.peak_signal_noise_ratio(o[None], r[None], data_range=1.0) for o, r in zip(other, x)])
        assert torch.allclose(psnr(other, x), reference, atol=1e-3)


def test_opacity_zero_leaves_the_image_and_one_is_the_patch():
    x = torch.rand(2, 3, 32, 32)
    p, m, place = torch.ones(3, 6, 6), make_mask(6), fixed_placement(2, 3, 4)
    assert torch.equal(blend_patch(x, p, m, place, alpha=0.0), x)
    half = blend_patch(x, p, m, place, alpha=0.5)
    assert torch.allclose(half[..., 3:9, 4:10], 0.5 * x[..., 3:9, 4:10] + 0.5)
    with pytest.raises(ValueError, match="opacity 1.5"):
        blend_patch(x, p, m, place, alpha=1.5)


def test_linf_budget_inside_the_patch():
    x = torch.full((1, 3, 32, 32), 0.5)
    out = budget_patch(x, torch.ones(3, 6, 6), make_mask(6), fixed_placement(1, 0, 0), eps=0.1)
    assert torch.allclose(out[..., :6, :6], torch.full((1, 3, 6, 6), 0.6)) and torch.equal(out[..., 6:, :], x[..., 6:, :])


def test_asr_is_monotone_in_area_on_a_constructed_case():
    x = torch.full((20, 3, 32, 32), 0.1)
    x[:, 1:] = 0.3  # green-blue images: the colour model says class 1
    y = torch.ones(20, dtype=torch.long)
    model = ChannelMeanModel()
    asr = []
    for side in (4, 8, 12, 16, 20, 24):
        red = torch.zeros(3, side, side)
        red[0] = 1
        loc = location_asr(model, x, y, red, make_mask(side), target=0, stride=32)
        asr.append(float(loc.asr.iloc[0]))
    assert asr == sorted(asr) and asr[0] == 0.0 and asr[-1] == 1.0


def test_occlusion_mass_sits_where_the_model_looks():
    model = RegionModel(rows=slice(0, 8), cols=slice(0, 8))
    x = torch.rand(2, 3, 32, 32)
    x[:, 0, :8, :8] = 0.9  # red where the model looks: evidence for class 0
    x[:, 1:, :8, :8] = 0.1
    maps = attribution_map(model, x, torch.zeros(2, dtype=torch.long), "occlusion", window=4, stride=4)
    region = torch.zeros(1, 1, 32, 32)
    region[..., :8, :8] = 1
    assert torch.allclose(in_region_share(maps, region), torch.ones(2))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_nonnegative_map_on_a_quantized_model(method):
    torch.manual_seed(0)
    model = build_model("smallcnn").eval()
    x = torch.rand(2, 3, 32, 32)
    maps = attribution_map(model, x, torch.tensor([1, 2]), method, ig_steps=4, internal_batch_size=4)
    assert maps.shape == (2, 1, 32, 32) and (maps >= 0).all()
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribution_map(model, x, torch.tensor([1, 2]), "lime")
