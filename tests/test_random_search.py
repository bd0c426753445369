"""Random-search (Sparse-RS) patches: breaks what is easy to break, never claims the impossible, counts its queries."""
import pytest
import torch
from torch import nn

from qadtr_core.attacks import RandomSearchConfig, random_search_patch
from qadtr_core.attacks.random_search import _p_selection
from qadtr_core.patches import central_box


class CornerModel(nn.Module):
    """Class 1 iff the top-left 3x3 corner is bright (mean above 0.5), else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :, :3, :3].mean((1, 2, 3))
        return torch.stack([0.5 - s, s - 0.5], 1)


class Constant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0]]).expand(len(x), 2)


class Counting:
    """A predictor that counts the images it is asked about."""

    def __init__(self, predict) -> None:
        self.predict, self.images = predict, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.predict(x)


def _dark(n: int = 12, size: int = 12, seed: int = 0):
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 0.3
    return x, torch.zeros(n, dtype=torch.long)


def test_breaks_a_model_that_flips_on_a_bright_corner():
    x, y = _dark()
    model = Counting(CornerModel())
    res = random_search_patch(model, x, y, RandomSearchConfig(size=4, queries=400, avoid=None))
    assert res.fooled.all()
    assert (CornerModel()(res.apply(x)).argmax(1) == 1).all()  # the reported patches do fool it
    assert (res.placement.rows < 3).all() and (res.placement.cols < 3).all()  # on the corner, where it must be
    assert (res.queries <= 400).all() and res.queries.float().mean() < 200  # stops once fooled
    assert model.images == int(res.queries.sum())  # every query counted, none double
    assert set(res.patches.unique().tolist()) <= {0.0, 1.0}  # Sparse-RS patches are colour-cube corners
    assert torch.equal(res.fooled_within(int(res.queries.max())), res.fooled)
    assert not res.fooled_within(0).any()


def test_label_only_predictor_and_the_avoided_region():
    x, y = _dark(12, 16)
    labels_only = Counting(lambda im: CornerModel()(im).argmax(1))
    res = random_search_patch(labels_only, x, y, RandomSearchConfig(size=4, queries=1000, avoid=central_box(6, 16)))
    assert res.fooled.all() and (CornerModel()(res.apply(x)).argmax(1) == 1).all()
    assert labels_only.images == int(res.queries.sum())
    changed = (res.apply(x) != x).any(1)
    assert not changed[:, 5:11, 5:11].any()  # never on the avoided centre
    keep = random_search_patch(lambda im: CornerModel()(im).argmax(1), x, y,
                               RandomSearchConfig(size=4, queries=1000, hard_label="keep"))
    assert (keep.queries <= 1000).all()
    assert (CornerModel()(keep.apply(x)).argmax(1) != y).tolist() == keep.fooled.tolist()
    assert keep.fooled.sum() < res.fooled.sum()  # without a loss, only the walk keeps exploring


def test_an_unbreakable_model_is_never_reported_fooled_and_the_budget_holds():
    x, y = _dark(8)
    for predict in (Counting(Constant()), Counting(lambda im: torch.zeros(len(im), dtype=torch.long))):
        res = random_search_patch(predict, x, y, RandomSearchConfig(size=3, queries=60, avoid=None))
        assert not res.fooled.any()
        assert (res.queries <= 60).all() and (res.queries >= 30).all()
        assert predict.images == int(res.queries.sum())
    res = random_search_patch(Constant(), x, torch.ones(8, dtype=torch.long), RandomSearchConfig(size=3, queries=5))
    assert res.fooled.all() and (res.queries == 1).all()  # already wrong at the first query


def test_seeded_runs_repeat():
    x, y = _dark(6)
    cfg = RandomSearchConfig(size=3, queries=30, avoid=None)
    a, b = (random_search_patch(CornerModel(), x, y, cfg) for _ in range(2))
    assert torch.equal(a.patches, b.patches) and torch.equal(a.queries, b.queries)
    assert torch.equal(a.placement.rows, b.placement.rows)
    c = random_search_patch(CornerModel(), x, y, RandomSearchConfig(size=3, queries=30, avoid=None, seed=1))
    assert not torch.equal(a.patches, c.patches)


def test_schedule_is_sparse_rs():
    assert _p_selection(0, 10000, 0.4) == 0.4 and _p_selection(10, 10000, 0.4) == 0.4
    assert _p_selection(11, 10000, 0.4) == 0.2 and _p_selection(201, 10000, 0.4) == 0.05
    assert _p_selection(9999, 10000, 0.4) == 0.4 / 512
    assert _p_selection(2, 1000, 0.4) == 0.2  # rescaled: query 2 of 1000 is query 20 of 10,000


@pytest.mark.parametrize("kwargs,match", [
    (dict(size=0), "patch size 0"),
    (dict(queries=0), "queries must be a positive integer, got 0"),
    (dict(p_init=0.0), r"p_init must be in \(0, 1\]"),
    (dict(update_loc_period=1), "update_loc_period must be an integer of at least 2"),
    (dict(hard_label="soft"), "unknown hard_label rule 'soft'"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandomSearchConfig(**kwargs)


def test_input_errors():
    x, y = _dark(2)
    with pytest.raises(ValueError, match="finite"):
        random_search_patch(CornerModel(), x * float("inf"), y)
    with pytest.raises(ValueError, match=r"labels must be integer class indices of shape \(2,\)"):
        random_search_patch(CornerModel(), x, y.float())
    with pytest.raises(ValueError, match="patch size 13 px is larger than the image"):
        random_search_patch(CornerModel(), x, y, RandomSearchConfig(size=13))
    with pytest.raises(ValueError, match="square"):
        random_search_patch(CornerModel(), x[..., :10], y)
    with pytest.raises(ValueError, match="labels .* or .* logits"):
        random_search_patch(lambda im: torch.zeros(len(im), 2, 2), x, y, RandomSearchConfig(size=3, avoid=None))
    with pytest.raises(ValueError, match="no location"):
        random_search_patch(CornerModel(), x, y, RandomSearchConfig(size=6, avoid=(2, 2, 8, 8)))
