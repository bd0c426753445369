"""PatchCleanser: mask-set coverage, double masking and certificates on hand-built models with hand-computed answers."""
from collections import Counter

import pytest
import torch
from torch import nn

from qadtr_core.attacks import ImagePatchConfig, RandomSearchConfig, image_patch_attack, random_search_patch
from qadtr_core.certify import (
    CertifyConfig,
    MaskSet,
    apply_masks,
    certify,
    covers,
    double_masking_classifier,
    double_masking_predict,
    mask_set,
    random_mask_augment,
    uncovered,
)
from qadtr_core.models import build_model
from qadtr_core.quant import get_bits, prepare_bits, set_bits
from qadtr_core.stats import wilson
from qadtr_core.testing import ChannelMeanModel, colour_images


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    """(K, 4) row0, row1, col0, col1 (inclusive) of rectangular masks, read off the pixels."""
    rows, cols = masks.any(2), masks.any(1)
    first = lambda t: t.float().argmax(1)  # noqa: E731
    last = lambda t: t.shape[1] - 1 - t.flip(1).float().argmax(1)  # noqa: E731
    return torch.stack([first(rows), last(rows), first(cols), last(cols)], 1)


def test_mask_geometry_is_the_papers():
    ms = mask_set(32, 8, 6)  # s = ceil(25 / 6) = 5, m = 12, positions 0..20 by 5: only 5 per side
    assert (ms.stride, ms.mask_size, ms.positions, ms.per_side, len(ms)) == (5, 12, (0, 5, 10, 15, 20), 5, 25)
    ms = mask_set(16, 2, 4)  # s = ceil(15 / 4) = 4, m = 5, positions 0, 4, 8 and the clamped 11
    assert (ms.stride, ms.mask_size, ms.positions) == (4, 5, (0, 4, 8, 11))
    assert ms.masks.shape == (16, 16, 16) and ms.masks.dtype == torch.bool
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:9, 11:16] = True  # row position 4 (second), column position 11 (fourth): index 1 * 4 + 3
    assert torch.equal(ms.masks[7], expected)
    assert torch.equal(mask_set(10, 3, 1).masks, torch.ones(1, 10, 10, dtype=torch.bool))  # k = 1: the whole image


def test_mask_sets_cover_every_patch_location_exhaustively():
    for n in range(8, 17):
        for p in range(1, 6):
            for k in range(1, 5):
                ms = mask_set(n, p, k)
                assert covers(ms, p), (n, p, k)
                assert ms.per_side <= k and len(ms) == ms.per_side**2
                assert ms.mask_size == min(p + ms.stride - 1, n)
                # Independent check: the masks' rectangles, read off the pixels, contain every placement.
                b = _boxes(ms.masks)
                assert ((b[:, 1] - b[:, 0] + 1) == ms.mask_size).all() and ((b[:, 3] - b[:, 2] + 1) == ms.mask_size).all()
                loc = torch.arange(n - p + 1)
                r, c = loc[:, None, None], loc[None, :, None]
                inside = (b[:, 0] <= r) & (r + p - 1 <= b[:, 1]) & (b[:, 2] <= c) & (c + p - 1 <= b[:, 3])
                assert inside.any(-1).all(), (n, p, k)


def test_covers_rejects_mask_sets_with_a_gap():
    ms = mask_set(16, 2, 4)
    assert not covers(ms.masks[1:], 2)  # only the first mask holds the patch at (0, 0)
    assert [0, 0] in uncovered(ms.masks[1:], 2).tolist()
    two = torch.zeros(2, 8, 8, dtype=torch.bool)
    two[0, :4, :4] = True
    two[1, 4:, 4:] = True
    gaps = uncovered(two, 2).tolist()
    assert [3, 3] in gaps and [0, 4] in gaps and [0, 0] not in gaps and [6, 6] not in gaps
    strided = torch.zeros(2, 10, 10, dtype=torch.bool)  # 1-D positions 0 and 6 of a 4 px mask: rows 3-4 straddle
    strided[0, :4] = True
    strided[1, 6:] = True
    assert not covers(strided, 2) and [3, 0] in uncovered(strided, 2).tolist()
    holed = mask_set(16, 3, 4).masks.clone()
    holed[:, 0, 0] = False  # one pixel short: no mask holds the patch at (0, 0) any more
    assert uncovered(holed, 3).tolist() == [[0, 0]]
    assert covers(torch.ones(1, 8, 8, dtype=torch.bool), 8)
    assert not covers(mask_set(16, 3, 4), 4)  # a set for 3 px patches does not hold 4 px ones


@pytest.mark.parametrize("args,match", [
    ((8, 9, 2), "patch size 9 px must be from 1 to the image size 8"),
    ((8, 0, 2), "patch size 0 px"),
    ((8, 2, 0), "masks_per_side must be at least 1, got 0"),
    ((8, 2.5, 2), "patch_size must be an integer"),
])
def test_mask_set_errors(args, match):
    with pytest.raises(ValueError, match=match):
        mask_set(*args)


class BlockModel(nn.Module):
    """Class 1 iff the mean of the 3x3 block at rows/cols 3..5 exceeds 0.1; nothing else matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, :, 3:6, 3:6].mean((1, 2, 3))
        return torch.stack([0.1 - m, m - 0.1], 1)


def _block_images(values: list[float]) -> torch.Tensor:
    x = torch.rand(len(values), 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for i, v in enumerate(values):
        x[i, :, 3:6, 3:6] = v
    return x


def test_certified_set_on_a_one_region_model_is_the_hand_computed_one():
    # 16 px images, 2 px patches, k = 4: masks of 5 px at 0, 4, 8, 11 per side, filled black (fill 0). Two
    # of the four row (column) masks cover 2 of the block's 3 rows (columns): a single mask covers at most
    # 4/9 of the block, two masks up to 7/9. Masking keeps (1 - covered) of the block's mean v.
    ms = mask_set(16, 2, 4)
    x = _block_images([0.05, 0.15, 0.35, 0.6])
    y = torch.tensor([0, 1, 1, 1])
    res = certify(BlockModel(), x, y, ms, CertifyConfig(patch_size=2, masks_per_side=4, fill=0.0, batch_size=7))
    assert res.clean_correct.all()
    # 0.05: masking only lowers it (certified). 0.6: 0.6 * 2/9 = 0.133 > 0.1 (certified).
    # 0.35: 0.35 * 5/9 = 0.19 (every one-mask prediction right) but 0.35 * 2/9 = 0.078 (some pair wrong).
    # 0.15: 0.15 * 5/9 = 0.083: the 4 masks on the block say 0, the 12 others 1; every pair with one of the
    # four covers >= 4/9, so all say 0: the disagreer wins (case II) and double masking is wrong.
    assert res.certified.tolist() == [True, False, False, True]
    assert res.masked_correct.tolist() == [True, False, True, True]
    assert res.masked_pred.tolist() == [0, 0, 1, 1]
    k = len(ms)
    assert res.forwards[0] == res.forwards[3] == 1 + k + k * (k - 1) // 2  # clean, one-mask, all pairs
    assert res.forwards[1] == 1 + k + (k - 1)  # one disagreer row, its diagonal already known
    assert 1 + k < res.forwards[2] < 1 + k + k * (k - 1) // 2  # stopped after its first wrong batch
    assert (res.patch_size, res.num_masks, res.bits) == (2, 16, 32)
    pred, forwards = double_masking_predict(BlockModel(), x, ms, fill=0.0, return_forwards=True)
    assert torch.equal(pred, res.masked_pred) and forwards.tolist() == [k, 2 * k - 1, k, k]  # no clean pass here


def test_a_single_mask_vote_would_certify_what_double_masking_does_not():
    ms = mask_set(16, 2, 4)
    x, y = _block_images([0.35]), torch.tensor([1])
    model = BlockModel()
    one_mask = model(apply_masks(x.expand(len(ms), -1, -1, -1), ms.masks, 0.0)).argmax(1)
    assert (one_mask == 1).all()  # every one-mask prediction is right ...
    worst = apply_masks(x, ms.masks[0] | ms.masks[5], 0.0)  # ... but masks (0, 0) and (4, 4) cover 7 of 9
    assert model(worst).argmax(1).item() == 0
    res = certify(model, x, y, ms, CertifyConfig(patch_size=2, fill=0.0))
    assert not res.certified.item() and res.masked_correct.item()


class ConstantModel(nn.Module):
    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((len(x),), self.label), 10).float()


class MaskSpotter(nn.Module):
    """Class 1 as soon as any pixel is exactly the fill value 0.5 (any mask destroys it), else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hit = (x == 0.5).flatten(1).any(1).float()
        return torch.stack([1 - hit, hit], 1)


def test_a_model_blind_to_masks_and_one_destroyed_by_any_mask():
    ms = mask_set(12, 3, 3)
    x = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(1)) * 0.4
    y = torch.tensor([3, 3, 0, 1, 3, 9])
    res = certify(ConstantModel(3), x, y, ms, CertifyConfig(patch_size=3))
    assert res.certified.tolist() == res.masked_correct.tolist() == res.clean_correct.tolist() == (y == 3).tolist()
    k = len(ms)
    expected = torch.where(y == 3, 1 + k + k * (k - 1) // 2, 1 + k)  # wrong one-mask round: stop, no second round
    assert torch.equal(res.forwards, expected)
    res = certify(MaskSpotter(), x, torch.zeros(6, dtype=torch.long), ms, CertifyConfig(patch_size=3))
    assert res.clean_correct.all() and not res.certified.any() and not res.masked_correct.any()
    assert torch.equal(res.forwards, torch.full((6,), 1 + k))
    ci = res.intervals()
    assert ci["certified_accuracy"] == wilson(0, 6) and ci["clean_accuracy"] == wilson(6, 6)


class ProbeModel(nn.Module):
    """Reads which masks were applied off one pixel each mask alone covers, and which image it is off the
    darkest pixel of channel 1, then answers from that image's prediction map ``maps[img, i, j]``."""

    def __init__(self, masks: torch.Tensor, maps: torch.Tensor) -> None:
        super().__init__()
        alone = (masks.sum(0) == 1) & masks
        self.probes = torch.stack([a.flatten().nonzero()[0, 0] for a in alone])
        self.maps = maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = (x[:, 1].flatten(1).amin(1) * 1000).round().long()
        hit = x[:, 0].flatten(1)[:, self.probes] == 0.5  # (B, K)
        order = hit.float() * torch.arange(hit.shape[1], 0, -1)  # the masked indices first, ascending
        idx = order.argsort(1, descending=True)[:, :2]
        n_hit = hit.sum(1)
        i, j = idx[:, 0], torch.where(n_hit == 2, idx[:, 1], idx[:, 0])
        label = torch.where(n_hit == 0, torch.zeros_like(i), self.maps[img, i, j])
        return nn.functional.one_hot(label, 10).float()


def _reference_double_masking(pm: list[list[int]]) -> tuple[int, str]:
    """Algorithm 1 of the paper, written out on a precomputed two-mask prediction map: (label, case)."""
    k = len(pm)
    one = [pm[i][i] for i in range(k)]
    counts = Counter(one)
    if len(counts) == 1:
        return one[0], "I"
    top = max(counts.values())
    majority = max(label for label, c in counts.items() if c == top)
    for i in range(k):
        if one[i] != majority and all(pm[i][j] == one[i] for j in range(k)):
            return one[i], "II"
    return majority, "III"


def _dm(maps: torch.Tensor) -> list[int]:
    return [_reference_double_masking(m.tolist())[0] for m in maps]


def _probe_setup(n_img: int, seed: int):
    ms = mask_set(16, 2, 4)
    k = len(ms)
    g = torch.Generator().manual_seed(seed)
    maps = torch.zeros(n_img, k, k, dtype=torch.long)
    for t in range(n_img):
        kind = t % 4
        if kind == 0:  # free-for-all over 3 labels
            m = torch.randint(0, 3, (k, k), generator=g)
        else:  # mostly one label, a few disagreeing masks whose rows agree (case II) or not (case III)
            m = torch.full((k, k), t % 3)
            dis = torch.randperm(k, generator=g)[: 1 + t % 3]
            other = (t + 1) % 3
            m[dis] = other
            m[:, dis] = other
            if kind == 2:
                m[dis[0], torch.randint(0, k, (1,), generator=g)] = t % 3
            if kind == 3 and t % 8 == 3:
                m = torch.full((k, k), t % 3)  # unanimous everywhere: certified for label t % 3
        m = torch.triu(m) + torch.triu(m, 1).T  # the pair (i, j) is the pair (j, i)
        maps[t] = m
    x = torch.zeros(n_img, 3, 16, 16)
    x[:, 1] = (torch.arange(n_img).float() / 1000)[:, None, None]
    return ms, maps, x


def test_double_masking_is_algorithm_1_on_arbitrary_prediction_maps():
    ms, maps, x = _probe_setup(240, seed=0)
    model = ProbeModel(ms.masks, maps)
    pred = double_masking_predict(model, x, ms, fill=0.5, batch_size=64)
    assert pred.tolist() == _dm(maps)
    cases = Counter(_reference_double_masking(m.tolist())[1] for m in maps)
    assert cases["I"] > 0 and cases["II"] > 10 and cases["III"] > 10, cases  # the sample exercises every case
    # a tie for the majority goes to the largest label (as the paper's code); no disagreer row is unanimous
    tie = torch.tensor([[1, 0], [0, 2]])
    assert _reference_double_masking(tie.tolist()) == (2, "III")
    two = torch.zeros(2, 8, 8, dtype=torch.bool)
    two[0, :, :3] = True
    two[1, :, 5:] = True
    tie_model = ProbeModel(two, tie[None])
    assert double_masking_predict(tie_model, torch.zeros(1, 3, 8, 8), two).tolist() == [2]


def test_certificate_is_all_pairs_right_and_independent_of_batching():
    ms, maps, x = _probe_setup(96, seed=1)
    model = ProbeModel(ms.masks, maps)
    y = maps[:, 0, 0].clone()
    results = [certify(model, x, y, ms, CertifyConfig(patch_size=2, batch_size=b)) for b in (1, 13, 1000)]
    expected = (maps == y[:, None, None]).flatten(1).all(1)
    assert expected.sum() >= 5 and (~expected).sum() >= 5
    for r in results:
        assert torch.equal(r.certified, expected)
        assert r.masked_pred.tolist() == _dm(maps)
        assert torch.equal(r.forwards[expected], results[0].forwards[expected])


def test_certify_runs_at_the_models_bit_width_and_matches_brute_force():
    torch.manual_seed(0)
    model = build_model("smallcnn")
    x = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    prepare_bits(model, 4)
    set_bits(model, 4)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)  # calibrates the 4-bit steps; the labels are the clean predictions
    model.train()
    ms = mask_set(12, 3, 3)
    res = certify(model, x, y, ms, CertifyConfig(patch_size=3, batch_size=16))
    assert model.training and get_bits(model) == 4 and res.bits == 4
    model.eval()
    k = len(ms)
    with torch.no_grad():
        pairs = (ms.masks[:, None] | ms.masks[None]).reshape(k * k, 12, 12)
        maps = torch.stack([model(apply_masks(xi.expand(k * k, -1, -1, -1), pairs, 0.5)).argmax(1).view(k, k) for xi in x])
    assert torch.equal(res.certified, (maps == y[:, None, None]).flatten(1).all(1))
    assert res.masked_pred.tolist() == _dm(maps)
    assert torch.equal(double_masking_predict(model, x, ms), res.masked_pred)


def test_no_certified_image_is_ever_broken():
    model = ChannelMeanModel()
    x, y = colour_images()
    ms = mask_set(12, 3, 3)
    res = certify(model, x, y, ms, CertifyConfig(patch_size=3))
    cert = res.certified
    assert 4 <= int(cert.sum()) <= len(x) - 4 and res.clean_correct.all()
    defended = double_masking_classifier(model, ms)
    broken_any = torch.zeros(len(x), dtype=torch.bool)
    for seed in range(3):
        for size in (3, 2):
            rs = random_search_patch(defended, x, y, RandomSearchConfig(size=size, queries=40, avoid=None, seed=seed))
            assert not (rs.fooled & cert).any()
            assert torch.equal(defended(rs.apply(x))[cert], y[cert])
            broken_any |= rs.fooled
        adv = image_patch_attack(model, x, y, ImagePatchConfig(size=3, steps=8, step_size=0.2, avoid=None, seed=seed,
                                                               location_opt=True)).apply(x)
        after = defended(adv)
        assert torch.equal(after[cert], y[cert])
        broken_any |= after != y
    assert broken_any[~cert].any()  # the attacks do break the defense where it certifies nothing


def test_no_patch_of_an_extreme_colour_anywhere_breaks_a_certified_image():
    """Exhaustive: a 3x3 patch of each of the RGB cube's 8 corners at every one of the 100 places of a 12 px
    image, on the double-masking predictor itself (the strongest constant patches for a mean-colour model):
    no certified image changes its label, and some uncertified one does."""
    model = ChannelMeanModel()
    x, y = colour_images()
    ms = mask_set(12, 3, 3)
    cert = certify(model, x, y, ms, CertifyConfig(patch_size=3)).certified
    corners = torch.tensor([[r, g, b] for r in (0.0, 1.0) for g in (0.0, 1.0) for b in (0.0, 1.0)])
    broken = torch.zeros(len(x), dtype=torch.bool)
    for i in range(len(x)):
        adv = x[i].expand(8 * 100, -1, -1, -1).clone()
        for j, (r, c) in enumerate((r, c) for r in range(10) for c in range(10)):
            adv[j * 8:(j + 1) * 8, :, r:r + 3, c:c + 3] = corners[:, :, None, None]
        pred = double_masking_predict(model, adv, ms)
        broken[i] = bool((pred != y[i]).any())
    assert not (broken & cert).any() and (broken & ~cert).any()


def test_random_mask_augment_applies_one_or_two_masks_of_the_set():
    ms = mask_set(12, 3, 3)
    x = torch.rand(64, 3, 12, 12, generator=torch.Generator().manual_seed(4)) * 0.4
    out = random_mask_augment(x, ms, torch.Generator().manual_seed(0), fill=0.5)
    masked = (out == 0.5).all(1)
    assert torch.equal(out[~masked[:, None].expand_as(x)], x[~masked[:, None].expand_as(x)])
    singles = {tuple(m.flatten().tolist()) for m in ms.masks}
    pairs = {tuple((a | b).flatten().tolist()) for a in ms.masks for b in ms.masks}
    kinds = Counter("one" if tuple(m.flatten().tolist()) in singles else "two" for m in masked)
    assert all(tuple(m.flatten().tolist()) in pairs for m in masked)
    assert kinds["one"] > 10 and kinds["two"] > 10
    again = random_mask_augment(x, ms, torch.Generator().manual_seed(0), fill=0.5)
    assert torch.equal(out, again)
    only_one = (random_mask_augment(x, ms.masks, torch.Generator().manual_seed(1), max_masks=1) == 0.5).all(1)
    assert all(tuple(m.flatten().tolist()) in singles for m in only_one)
    with pytest.raises(ValueError, match="max_masks must be a positive integer, got 0"):
        random_mask_augment(x, ms, torch.Generator(), max_masks=0)


def test_certify_errors():
    ms = mask_set(12, 3, 3)
    x, y = torch.rand(2, 3, 12, 12), torch.tensor([0, 1])
    model = ChannelMeanModel()
    with pytest.raises(ValueError, match="do not cover every placement of a 3 px patch"):
        certify(model, x, y, ms.masks[1:], CertifyConfig(patch_size=3))
    with pytest.raises(ValueError, match="mask set is for 3 px patches, config.patch_size is 8"):
        certify(model, x, y, ms)
    with pytest.raises(ValueError, match=r"labels must be integer class indices of shape \(2,\)"):
        certify(model, x, y[:1], ms, CertifyConfig(patch_size=3))
    with pytest.raises(ValueError, match=r"finite and in \[0, 1\]"):
        certify(model, x * 2, y, ms, CertifyConfig(patch_size=3))
    with pytest.raises(ValueError, match=r"masks are \(12, 12\) px, the images \(16, 16\) px"):
        double_masking_predict(model, torch.rand(2, 3, 16, 16), ms)
    with pytest.raises(ValueError, match="fill must be a value in"):
        double_masking_predict(model, x, ms, fill=(0.5, 0.5))
    with pytest.raises(ValueError, match="bool tensor"):
        double_masking_predict(model, x, ms.masks.float())
    for kwargs, match in [(dict(patch_size=0), "patch_size"), (dict(masks_per_side=0), "masks_per_side"),
                          (dict(batch_size=0), "batch_size"), (dict(fill=1.5), "fill")]:
        with pytest.raises(ValueError, match=match):
            CertifyConfig(**kwargs)
    assert isinstance(mask_set(12, 3, 3), MaskSet)
    empty = certify(model, x[:0], y[:0], ms, CertifyConfig(patch_size=3))
    assert len(empty) == 0 and empty.certified.dtype == torch.bool
