"""The per-image patch attack's budget options: early stopping (restarts only on the unfooled images
included), step-size schedules and the margin loss, on tiny hand-built models."""
import math

import pytest
import torch
from torch import nn

from qadtr_core.attacks.image_patch import ImagePatchConfig, _per_image_loss, image_patch_attack
from qadtr_core.evaluation.strength import AttackStrength, image_patch_curve, image_patch_strength
from qadtr_core.testing import ChannelMeanModel


def _tiny(seed: int) -> nn.Module:
    """A random 4x4-stride conv net: its clean predictions are the labels, so every image starts clean-correct
    and patches fool them at different steps (an easy model: most are fooled long before the last step)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10)).eval()


def _data(model: nn.Module, n: int = 40, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, model(x).argmax(1)


def _cumulative(success: torch.Tensor) -> torch.Tensor:
    """success[:, r, t] -> fooled within t steps of any of restarts 0..r."""
    return success.cummax(1).values


def _expected_image_steps(full: torch.Tensor) -> int:
    """What early stopping must run, from a full run's record: image i is attacked at step t < steps of restart
    k unless restart k or an earlier restart had fooled it within t - 1 steps (the restarts run side by side,
    so restart k learns of an earlier restart's success at the step after it)."""
    cum = _cumulative(full)
    n, n_r, n_t1 = full.shape
    return sum(int((~cum[:, k, t - 1]).sum()) if t > 0 else n for k in range(n_r) for t in range(n_t1 - 1))


def _serial_image_steps(full: torch.Tensor) -> int:
    """What early stopping would run with the restarts one after another: as above, but restart k also skips
    step t where an earlier restart fooled the image within t steps."""
    cum = _cumulative(full)
    n, n_r, n_t1 = full.shape
    total = 0
    for k in range(n_r):
        for t in range(n_t1 - 1):
            settled = torch.zeros(n, dtype=torch.bool)
            if t > 0:
                settled |= cum[:, k, t - 1]
            if k > 0:
                settled |= cum[:, k - 1, t]
            total += int((~settled).sum())
    return total


class _Sizes(nn.Module):
    """Records the batch size of every forward pass of ``inner``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.sizes = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.inner(x)


# ------------------------------------------------------------------------------------------ early stopping


@pytest.mark.parametrize("location_opt", [False, True])
@pytest.mark.parametrize("model_seed", [0, 1, 2])
def test_early_stop_keeps_the_whole_success_curve_and_runs_fewer_image_steps(model_seed, location_opt):
    model = _tiny(model_seed)
    x, y = _data(model)
    for seed in (0, 1):
        cfg = ImagePatchConfig(size=6, steps=12, step_size=0.05, restarts=3, seed=seed, location_opt=location_opt)
        full = image_patch_attack(model, x, y, cfg, batch_size=25)
        early = image_patch_attack(model, x, y, ImagePatchConfig(**{**cfg.__dict__, "early_stop": True}), batch_size=25)
        # the first restart's record is identical; later ones are the cumulative record of the full run
        assert torch.equal(early.success[:, 0], full.success[:, 0])
        assert torch.equal(early.success, _cumulative(full.success))
        for r in (1, 2, 3):
            for t in range(cfg.steps + 1):
                assert torch.equal(early.fooled_within(t, r), full.fooled_within(t, r)), (seed, t, r)
        valid = torch.ones(len(x), dtype=torch.bool)
        assert image_patch_curve(early, valid).equals(image_patch_curve(full, valid))
        a, b = image_patch_strength("full", full, valid), image_patch_strength("early", early, valid)
        assert (a.white_box_asr, a.white_box_asr_half_steps) == (b.white_box_asr, b.white_box_asr_half_steps)
        assert a.white_box_asr > 0.5 and full.fooled_within(0).float().mean() < 0.5  # a curve, not a start
        # the cost: exactly the steps of the images whose record is still open, far below the full budget
        assert full.image_steps_run == full.image_steps_full_budget == len(x) * 3 * 12
        assert early.image_steps_full_budget == full.image_steps_full_budget
        assert early.image_steps_run == _expected_image_steps(full.success)
        assert early.image_steps_run < 0.8 * early.image_steps_full_budget
        # side by side costs at most one image-step more per image and later restart than a schedule that stops
        # restart k at step t once an earlier restart fooled the image within t steps (not strictly serial)
        serial = _serial_image_steps(full.success)
        assert serial <= early.image_steps_run <= serial + len(x) * (cfg.restarts - 1)
        assert (b.image_steps_run, b.image_steps_full_budget) == (early.image_steps_run, early.image_steps_full_budget)
        # the kept patch is one that fools wherever the record says fooled
        with torch.no_grad():
            assert torch.equal(model(early.apply(x)).argmax(1) != y, early.fooled_within(cfg.steps))


def test_early_stop_shrinks_the_batch_and_skips_images_fooled_by_an_earlier_restart():
    model = _tiny(0)
    x, y = _data(model)
    y[:8] = (y[:8] + 1) % 10  # eight images misclassified from the start: fooled at step 0 of restart 0
    seen = _Sizes(model)
    cfg = ImagePatchConfig(size=6, steps=12, restarts=2, seed=0, early_stop=True)
    found = image_patch_attack(seen, x, y, cfg)
    assert found.success[:8].all()  # fooled at every step of every restart
    # step 0: both restarts of all 40 images in one pass; from step 1 on never the eight again, in either
    assert seen.sizes[0] == 80 and max(seen.sizes[1:]) <= 64
    assert all(b <= a for a, b in zip(seen.sizes, seen.sizes[1:])) and min(seen.sizes) < 40  # it only shrinks
    # without location optimisation every forward pass at a step t < steps is one image-step per pair
    assert found.image_steps_run <= sum(seen.sizes) <= found.image_steps_run + 2 * 40
    full_seen = _Sizes(model)
    image_patch_attack(full_seen, x, y, ImagePatchConfig(**{**cfg.__dict__, "early_stop": False}))
    assert full_seen.sizes == [80] * 13 and sum(seen.sizes) < 0.6 * sum(full_seen.sizes)


# ------------------------------------------------------------------------------------------ restarts side by side


@pytest.mark.parametrize("early_stop", [False, True])
def test_restarts_run_side_by_side_one_pass_per_step(early_stop):
    model = _tiny(2)
    x, y = _data(model, 30)
    seen = _Sizes(model)
    cfg = ImagePatchConfig(size=6, steps=10, restarts=3, location_opt=True, seed=1, early_stop=early_stop)
    image_patch_attack(seen, x, y, cfg, batch_size=30)
    # one forward per step and one per location try (the last step has no try): never one per restart
    assert len(seen.sizes) <= 2 * cfg.steps + 1 and seen.sizes[0] == 90
    if not early_stop:
        assert seen.sizes == [90] * (2 * cfg.steps + 1)


def _each_restart_alone(monkeypatch, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        cfg: ImagePatchConfig) -> list:
    """Each restart r of ``cfg`` run as a 1-restart attack drawn from restart r's seed (one batch)."""
    from qadtr_core.attacks import image_patch as ip
    seed_of = ip._restart_seed
    alone = []
    for r in range(cfg.restarts):
        monkeypatch.setattr(ip, "_restart_seed", lambda seed, offset, restart, r=r: seed_of(seed, offset, restart + r))
        alone.append(image_patch_attack(model, x, y, ImagePatchConfig(**{**cfg.__dict__, "restarts": 1}), batch_size=len(x)))
    return alone


@pytest.mark.parametrize("location_opt", [False, True])
def test_each_restart_is_the_attack_that_restart_would_run_alone(monkeypatch, location_opt):
    # Restart r of a 3-restart run (no early stop: each restart's own record) equals a 1-restart run drawn
    # from restart r's seed: the restarts share a pass but nothing else (no generator, no best, no location).
    model = _tiny(0)
    x, y = _data(model, 30)
    cfg = ImagePatchConfig(size=6, steps=10, step_size=0.05, restarts=3, location_opt=location_opt, seed=2)
    together = image_patch_attack(model, x, y, cfg, batch_size=30)
    alone = _each_restart_alone(monkeypatch, model, x, y, cfg)
    for r in range(3):
        assert torch.equal(together.success[:, r], alone[r].success[:, 0]), r
    assert not torch.equal(alone[0].success, alone[1].success)  # the restarts do differ
    with torch.no_grad():  # the kept patch: one that fools if any restart fooled, else the highest loss
        losses = torch.stack([_per_image_loss(model(a.apply(x)), y, None) for a in alone])
        fooled = torch.stack([model(a.apply(x)).argmax(1) != y for a in alone])
        kept = model(together.apply(x))
    assert torch.equal(kept.argmax(1) != y, fooled.any(0))
    never = ~fooled.any(0)
    assert torch.allclose(_per_image_loss(kept, y, None)[never], losses[:, never].amax(0), atol=1e-5)


def test_early_stop_keeps_the_earliest_restart_s_first_fooling_patch(monkeypatch):
    # Not the fooling patch with the highest loss: the one of the first restart that fooled the image, as
    # that restart alone (early stop: its first fooling iterate) would keep it.
    model = _tiny(1)
    x, y = _data(model, 30)
    cfg = ImagePatchConfig(size=6, steps=10, step_size=0.05, restarts=3, location_opt=True, seed=4, early_stop=True)
    together = image_patch_attack(model, x, y, cfg, batch_size=30)
    alone = _each_restart_alone(monkeypatch, model, x, y, cfg)
    own = torch.stack([a.fooled_within(cfg.steps) for a in alone])  # (restarts, n): restart r alone fools image i
    assert (own.sum(0) >= 2).sum() >= 5  # images that several restarts fool, so the choice matters
    with torch.no_grad():
        ce = torch.stack([_per_image_loss(model(a.apply(x)), y, None) for a in alone])
    first = own.float().argmax(0)
    highest = torch.where(own, ce, -float("inf")).argmax(0)
    assert ((first != highest) & own.any(0)).any()  # somewhere the first is not the highest-loss one
    for i in range(len(x)):
        if own[:, i].any():
            r = int(first[i])
            assert torch.equal(together.patches[i], alone[r].patches[i]), i
            assert (together.placement.rows[i], together.placement.cols[i]) == \
                (alone[r].placement.rows[i], alone[r].placement.cols[i])


def test_ties_go_to_the_earlier_restart_and_the_earlier_step():
    # A model that ignores its input: every candidate has the same loss and never fools, so nothing ever beats
    # restart 0's random start (its patch and location), which is what one restart with no step keeps.
    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * 0).flatten(1)[:, :10] + torch.arange(10.0)
    x = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.full((12,), 9)
    for early_stop in (False, True):
        cfg = ImagePatchConfig(size=6, steps=5, restarts=3, location_opt=True, seed=3, early_stop=early_stop)
        got = image_patch_attack(Constant(), x, y, cfg)
        start = image_patch_attack(Constant(), x, y, ImagePatchConfig(**{**cfg.__dict__, "steps": 0, "restarts": 1}))
        assert not got.success.any()
        assert torch.equal(got.patches, start.patches)
        assert torch.equal(got.placement.rows, start.placement.rows) and torch.equal(got.placement.cols, start.placement.cols)


def test_early_stop_targeted_and_split_into_batches():
    model = _tiny(1)
    x, y = _data(model, 30)
    cfg = ImagePatchConfig(size=8, steps=10, step_size=0.1, restarts=2, target=8, location_opt=True, seed=3)
    full = image_patch_attack(model, x, y, cfg, batch_size=7)
    early = image_patch_attack(model, x, y, ImagePatchConfig(**{**cfg.__dict__, "early_stop": True}), batch_size=7)
    assert torch.equal(early.success, _cumulative(full.success))
    assert early.image_steps_run == _expected_image_steps(full.success) < full.image_steps_run == 30 * 2 * 10
    with torch.no_grad():
        assert torch.equal(model(early.apply(x)).argmax(1) == 8, early.fooled_within(10))


def test_on_batch_reports_each_batch_in_order_and_changes_nothing():
    model = _tiny(2)
    x, y = _data(model, 23)
    cfg = ImagePatchConfig(size=6, steps=6, step_size=0.1, restarts=2, location_opt=True, early_stop=True, seed=5)
    seen: list[tuple[int, torch.Tensor, int]] = []
    got = image_patch_attack(model, x, y, cfg, batch_size=10,
                             on_batch=lambda i, f: seen.append((i, f.success, f.image_steps_run)))
    plain = image_patch_attack(model, x, y, cfg, batch_size=10)
    assert [i for i, _, _ in seen] == [0, 10, 20] and [len(s) for _, s, _ in seen] == [10, 10, 3]
    assert torch.equal(torch.cat([s for _, s, _ in seen]), got.success)
    assert sum(k for _, _, k in seen) == got.image_steps_run
    assert torch.equal(got.success, plain.success) and torch.equal(got.patches, plain.patches)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        image_patch_attack(model, x, y, cfg, batch_size=0)


def test_strength_records_carry_the_image_steps():
    s = AttackStrength("x", 0.9, 0.895, 0.0, 100, 500)
    assert s.image_steps_run is None and s.image_steps_full_budget is None and s.converged
    rec = AttackStrength("x", 0.9, 0.895, 0.0, 100, 500, image_steps_run=1200, image_steps_full_budget=50000).record()
    assert rec["image_steps_run"] == 1200 and rec["image_steps_full_budget"] == 50000 and rec["converged"]


# ------------------------------------------------------------------------------------------ step schedules


def test_step_schedules_by_hand():
    assert ImagePatchConfig(steps=4, step_size=0.1).step_sizes() == [0.1] * 4
    assert ImagePatchConfig(steps=8, step_size=0.1, step_schedule="steps").step_sizes() == [0.1] * 4 + [0.05] * 2 + [0.025] * 2
    assert ImagePatchConfig(steps=4, step_size=0.1, step_schedule="steps").step_sizes() == [0.1, 0.1, 0.05, 0.025]
    cos = ImagePatchConfig(steps=5, step_size=0.1, step_schedule="cosine", final_step_fraction=0.1).step_sizes()
    c = math.cos(math.pi / 4)
    assert cos == pytest.approx([0.1, 0.1 * (0.1 + 0.9 * (1 + c) / 2), 0.055, 0.1 * (0.1 + 0.9 * (1 - c) / 2), 0.01])
    assert ImagePatchConfig(steps=1, step_size=0.1, step_schedule="cosine").step_sizes() == [0.1]
    assert ImagePatchConfig(steps=0, step_schedule="cosine").step_sizes() == []
    assert ImagePatchConfig(steps=3, step_size=0.2, step_schedule="cosine", final_step_fraction=0.0).step_sizes() == \
        pytest.approx([0.2, 0.1, 0.0])


@pytest.mark.parametrize("schedule,steps", [("constant", 6), ("cosine", 5), ("steps", 8)])
def test_the_attack_takes_the_scheduled_steps(schedule, steps):
    # Against class 0 of the colour model the signed gradient is always red down, green and blue up, so the
    # patch after the steps is its start moved by the sum of the step sizes, clamped to [0, 1].
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(6, dtype=torch.long)
    cfg = ImagePatchConfig(size=8, steps=steps, step_size=0.1, step_schedule=schedule, seed=5)
    start = image_patch_attack(ChannelMeanModel(), x, y, ImagePatchConfig(**{**cfg.__dict__, "steps": 0})).patches
    total = sum(cfg.step_sizes())
    expected = torch.cat([(start[:, :1] - total).clamp(0, 1), (start[:, 1:] + total).clamp(0, 1)], 1)
    got = image_patch_attack(ChannelMeanModel(), x, y, cfg).patches
    assert torch.allclose(got, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------ margin loss


def test_margin_loss_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 4.0, -1.0]])
    y = torch.tensor([0, 0])
    # untargeted: the largest other logit minus the true one
    assert _per_image_loss(logits, y, None, "margin").tolist() == [2.0 - 3.0, 4.0 - 0.0]
    # targeted at class 2: its logit minus the largest other
    assert _per_image_loss(logits, y, 2, "margin").tolist() == [2.0 - 3.0, -1.0 - 4.0]
    # and the default is still the cross-entropy
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    assert torch.equal(_per_image_loss(logits, y, None), ce)


class _Scaled(nn.Module):
    def __init__(self, inner: nn.Module, scale: float) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.inner(x)


def test_margin_loss_fools_where_the_cross_entropy_saturates():
    # Logits scaled by 1e6: the softmax is one-hot in float32, the cross-entropy's gradient is exactly zero (but
    # for an image or two whose top two logits nearly tie) and its signed step does not move the patch; the
    # margin's gradient does not care about the scale.
    model = _Scaled(_tiny(0), 1e6).eval()
    x, y = _data(model)
    cfg = ImagePatchConfig(size=6, steps=12, step_size=0.05, seed=0)
    ce = image_patch_attack(model, x, y, cfg)
    margin = image_patch_attack(model, x, y, ImagePatchConfig(**{**cfg.__dict__, "loss": "margin"}))
    assert torch.equal(ce.fooled_within(12), ce.fooled_within(1))  # CE: stalled after its first step
    assert int(margin.fooled_within(12).sum()) >= int(ce.fooled_within(12).sum()) + 20
    # unscaled, the margin loss is at least as strong as the cross-entropy here too
    plain = _tiny(0)
    a = image_patch_attack(plain, x, y, cfg).fooled_within(12).sum()
    b = image_patch_attack(plain, x, y, ImagePatchConfig(**{**cfg.__dict__, "loss": "margin"})).fooled_within(12).sum()
    assert b >= a


# ------------------------------------------------------------------------------------------ bad options


@pytest.mark.parametrize("kwargs,match", [
    (dict(step_schedule="linear"), r"unknown step_schedule 'linear'; allowed: 'constant', 'cosine', 'steps'"),
    (dict(loss="cw"), r"unknown loss 'cw'; allowed: 'ce', 'margin'"),
    (dict(final_step_fraction=1.5), r"final_step_fraction must be in \[0, 1\], got 1.5"),
    (dict(final_step_fraction=-0.1), r"final_step_fraction must be in \[0, 1\], got -0.1"),
    (dict(early_stop="yes"), r"early_stop must be True or False, got 'yes'"),
])
def test_bad_options_name_the_value_and_what_is_allowed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImagePatchConfig(**kwargs)


def test_defaults_are_the_full_budget_constant_step_cross_entropy():
    cfg = ImagePatchConfig()
    assert (cfg.early_stop, cfg.step_schedule, cfg.loss) == (False, "constant", "ce")
    assert cfg.step_sizes() == [cfg.step_size] * cfg.steps


# ------------------------------------------------------------------------------------------ cost off the record


@pytest.mark.parametrize("early_stop", [False, True])
@pytest.mark.parametrize("location_search", [1, 4])
def test_image_steps_read_off_the_record_equal_what_the_run_counted(early_stop, location_search):
    # The defense chapters cache success records, not costs: image_steps_of must give back the count.
    from qadtr_core.attacks.image_patch import image_steps_of
    model = _tiny(1)
    x, y = _data(model, 30)
    cfg = ImagePatchConfig(size=6, steps=12, restarts=3, location_opt=True, seed=7, early_stop=early_stop,
                           location_search=location_search)
    found = image_patch_attack(model, x, y, cfg, batch_size=30)
    assert image_steps_of(found.success, early_stop) == found.image_steps_run
    if early_stop:  # the easy model is fooled early: a real saving, which the formula must see
        assert found.image_steps_run < found.image_steps_full_budget


# ------------------------------------------------------------------------------------------ location search


class _Corner(nn.Module):
    """Class 1's logit is 10 x the sum of the pixels in the image's top-left 2x2 corner (all channels), class
    0's is 0. On black images labelled 0, a patch fools the model exactly when it covers a corner pixel with
    any non-zero content: for a 4 px patch on an 8 px image, at 4 of the 25 locations (row <= 1 and col <= 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :, :2, :2].sum((1, 2, 3))
        return torch.stack([torch.zeros_like(s), 10 * s], 1)


def test_location_search_starts_each_restart_where_its_content_scores_highest():
    model, n = _Corner(), 60
    x, y = torch.zeros(n, 3, 8, 8), torch.zeros(n, dtype=torch.long)
    base = dict(size=4, steps=0, restarts=1, avoid=None, seed=3, num_classes=2)
    plain = image_patch_attack(model, x, y, ImagePatchConfig(**base))
    found = image_patch_attack(model, x, y, ImagePatchConfig(**base, location_search=64))
    covers = lambda f: (f.placement.rows <= 1) & (f.placement.cols <= 1)  # noqa: E731
    # by hand: fooled iff the patch covers a corner pixel; one random location does so with p = 4/25, the best
    # of 64 misses with p = (21/25)^64 < 2e-5 per image
    assert torch.equal(plain.fooled_within(0), covers(plain)) and torch.equal(found.fooled_within(0), covers(found))
    assert found.fooled_within(0).all()
    assert plain.fooled_within(0).sum() < n // 2
    # the search's first candidate is the plain start, so no image starts worse than without the search
    assert (found.fooled_within(0) >= plain.fooled_within(0)).all()
    assert found.location_queries == n * 63 and plain.location_queries == 0


def test_location_search_restarts_search_on_their_own_so_fewer_restarts_stay_exact(monkeypatch):
    # restart r of a searched 3-restart run is the searched 1-restart run drawn from restart r's seed
    model = _tiny(0)
    x, y = _data(model, 30)
    cfg = ImagePatchConfig(size=6, steps=8, step_size=0.05, restarts=3, location_opt=True, seed=2, location_search=5)
    together = image_patch_attack(model, x, y, cfg, batch_size=30)
    for r, one in enumerate(_each_restart_alone(monkeypatch, model, x, y, cfg)):
        assert torch.equal(together.success[:, r], one.success[:, 0])


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_location_search_must_be_a_positive_whole_number(bad):
    with pytest.raises(ValueError, match="location_search"):
        ImagePatchConfig(location_search=bad)


# ------------------------------------------------------------------------------------------ bounded passes


@pytest.mark.parametrize("early_stop", [False, True])
def test_max_rows_bounds_every_pass_and_changes_nothing_else(early_stop):
    model = _tiny(0)
    x, y = _data(model, 20)
    cfg = ImagePatchConfig(size=6, steps=8, restarts=3, location_opt=True, early_stop=early_stop, seed=4,
                           location_search=3, loss="margin")
    whole = image_patch_attack(model, x, y, cfg, batch_size=20)
    seen = _Sizes(model)
    cut = image_patch_attack(seen, x, y, cfg, batch_size=20, max_rows=7)
    assert max(seen.sizes) == 7 and sum(seen.sizes) > 60  # 60 rows, never more than 7 in one pass
    assert torch.equal(whole.success, cut.success) and torch.equal(whole.patches, cut.patches)
    assert torch.equal(whole.placement.rows, cut.placement.rows) and whole.image_steps_run == cut.image_steps_run


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_max_rows_must_be_a_positive_whole_number(bad):
    model = _tiny(0)
    x, y = _data(model, 4)
    with pytest.raises(ValueError, match="max_rows"):
        image_patch_attack(model, x, y, ImagePatchConfig(size=6, steps=1), max_rows=bad)
