"""Attacks on tiny hand-built models with hand-computed answers, plus invariants and a smoke test."""
import pytest
import torch
import torch.nn.functional as F

from qadtr_core.attacks import (
    ImagePatchConfig,
    PGDConfig,
    UniversalPatchAttack,
    UniversalPatchConfig,
    image_patch_attack,
    patch_loss,
    pgd_attack,
    universal_patch,
)
from qadtr_core.evaluation.transfer import add_relative, asr_matrix, patched_versions, transfer_table
from qadtr_core.metrics import Rate, clean_accuracy, targeted_asr, untargeted_asr
from qadtr_core.models import build_model
from qadtr_core.patches import make_mask, random_placement
from qadtr_core.quant import prepare_bits, set_bits
from qadtr_core.testing import ChannelMeanModel


def _images(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(2, 10, (n,), generator=g)


def test_targeted_universal_patch_turns_red_on_a_colour_model():
    x, y = _images()
    cfg = UniversalPatchConfig(size=6, target=0, steps=30, batch_size=16, optimizer="sign", step_size=0.1)
    patch = universal_patch([(ChannelMeanModel(), 32)], x, y, cfg)
    # class 0's logit grows with red and shrinks with green and blue: the optimum is pure red
    assert torch.equal(patch[0], torch.ones(6, 6)) and torch.equal(patch[1:], torch.zeros(2, 6, 6))


def test_targeted_loss_goes_down_and_the_patch_stays_in_range():
    x, y = _images()
    attack = UniversalPatchAttack([(ChannelMeanModel(), 32)], x, y, UniversalPatchConfig(target=0, steps=20, batch_size=16))
    patch = attack.run()
    assert attack.history[-1] < attack.history[0]
    assert patch.min() >= 0 and patch.max() <= 1


def test_untargeted_loss_goes_up():
    x, _ = _images()
    y = torch.zeros(len(x), dtype=torch.long)  # the colour model's class 0
    attack = UniversalPatchAttack([(ChannelMeanModel(), 32)], x, y,
                                  UniversalPatchConfig(target=None, steps=15, batch_size=16, optimizer="sign", step_size=0.1))
    attack.run()
    # history holds the minimised loss (minus CE); the cross-entropy itself rises
    assert -attack.history[-1] > -attack.history[0]


def test_n_plus_n_steps_equal_2n_and_seeded_runs_repeat():
    x, y = _images()
    cfg = UniversalPatchConfig(target=0, steps=6, batch_size=8, max_angle=20, scale_range=(0.9, 1.1))
    full = UniversalPatchAttack([(ChannelMeanModel(), 32)], x, y, cfg).run()
    first = UniversalPatchAttack([(ChannelMeanModel(), 32)], x, y, cfg)
    first.run(3)
    resumed = UniversalPatchAttack([(ChannelMeanModel(), 32)], x, y, cfg)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed.run(3), full)
    assert torch.equal(UniversalPatchAttack([(ChannelMeanModel(), 32)], x, y, cfg).run(), full)
    other = UniversalPatchAttack([(ChannelMeanModel(), 32)], x, y,
                                 UniversalPatchConfig(target=0, steps=6, batch_size=8, seed=1)).run()
    assert not torch.equal(other, full)


def test_patch_loss_definitions():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 0])
    assert patch_loss(logits, y, None) == pytest.approx(-F.cross_entropy(logits, y).item())
    assert patch_loss(logits, y, 1) == pytest.approx(F.cross_entropy(logits, torch.tensor([1, 1])).item())


@pytest.mark.parametrize("kwargs,match", [
    (dict(target=10), "target class 10 out of range"),
    (dict(target=-1), "target class -1 out of range"),
    (dict(size=33), "patch size 33"),
    (dict(optimizer="sgd"), "unknown optimizer"),
])
def test_universal_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UniversalPatchConfig(**kwargs)


def test_image_patch_config_errors_and_more_classes():
    with pytest.raises(ValueError, match=r"target class 10 out of range; allowed: 0..9"):
        ImagePatchConfig(target=10)
    with pytest.raises(ValueError, match="restarts"):
        ImagePatchConfig(restarts=0)
    assert UniversalPatchConfig(target=50, num_classes=100).target == 50


def test_attacks_refuse_non_finite_images():
    x, y = _images(4)
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        UniversalPatchAttack([(ChannelMeanModel(), 32)], x, y)
    with pytest.raises(ValueError, match="finite"):
        image_patch_attack(ChannelMeanModel(), x, y)
    with pytest.raises(ValueError, match="bit-width 1"):
        UniversalPatchAttack([(ChannelMeanModel(), 1)], _images(4)[0], y)


def test_image_patch_raises_the_loss_and_avoids_the_centre():
    x, _ = _images(16)
    y = torch.zeros(16, dtype=torch.long)
    model = ChannelMeanModel()
    res = image_patch_attack(model, x, y, ImagePatchConfig(size=8, steps=10, step_size=0.1))
    adv = res.apply(x)
    assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y) + 0.5
    assert res.patches.min() >= 0 and res.patches.max() <= 1 and res.patches.shape == (16, 3, 8, 8)
    changed = (adv != x).any(1)
    assert not changed[:, 11:21, 11:21].any()
    # pure green-blue is the hand-computed optimum against class 0
    assert torch.equal(res.patches[:, 0], torch.zeros(16, 8, 8)) and torch.equal(res.patches[:, 1:], torch.ones(16, 2, 8, 8))


def test_more_restarts_never_fool_fewer():
    torch.manual_seed(0)
    model = build_model("smallcnn").eval()
    x, y = _images(24, seed=3)
    fooled = []
    for r in (1, 3):
        res = image_patch_attack(model, x, y, ImagePatchConfig(size=4, steps=2, restarts=r))
        fooled.append(int((model(res.apply(x)).argmax(1) != y).sum()))
    assert fooled[1] >= fooled[0]


def test_pgd_on_a_linear_model_is_the_hand_computed_sign_step():
    x = torch.full((2, 3, 32, 32), 0.5)
    y = torch.tensor([0, 1])
    adv = pgd_attack(ChannelMeanModel(), x, y, PGDConfig(eps=0.1, step_size=0.1, steps=1, random_start=False))
    # label 0: less red, more green/blue; label 1: the opposite
    assert torch.allclose(adv[0].mean((1, 2)), torch.tensor([0.4, 0.6, 0.6]))
    assert torch.allclose(adv[1].mean((1, 2)), torch.tensor([0.6, 0.4, 0.4]))


def test_pgd_stays_in_the_ball_and_in_range():
    x, y = _images(8)
    adv = pgd_attack(build_model("smallcnn"), x, y, PGDConfig(steps=3))
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_pgd_is_seeded_and_leaves_the_callers_random_stream_alone():
    x, y = _images(4)
    model = build_model("smallcnn")
    torch.manual_seed(123)
    expected = torch.rand(5)  # what the caller's stream gives next without an attack in between
    torch.manual_seed(123)
    a = pgd_attack(model, x, y, PGDConfig(steps=1, seed=7))
    assert torch.equal(torch.rand(5), expected)
    b = pgd_attack(model, x, y, PGDConfig(steps=1, seed=7))
    c = pgd_attack(model, x, y, PGDConfig(steps=1, seed=8))
    assert torch.equal(a, b) and not torch.equal(a, c)  # the random start follows the config's seed


def test_asr_definitions_on_hand_made_predictions():
    y = torch.tensor([0, 1, 2, 0])
    r = untargeted_asr(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 2, 1]), y)
    assert (r.k, r.n) == (1, 3)  # image 3 was wrong when clean, so it is not counted
    t = targeted_asr(torch.tensor([0, 0, 2, 0]), torch.tensor([0, 1, 2, 3]), 0)
    assert (t.k, t.n) == (2, 3) and "target 0" in t.definition
    assert "n=3" in str(t) and Rate(0, 0, "x").value != Rate(0, 0, "x").value  # nan when n = 0


def test_transfer_table_and_matrix():
    x = torch.full((20, 3, 32, 32), 0.1)
    x[:, 0] = 0.9  # red images: the colour model says class 0
    y = torch.zeros(20, dtype=torch.long)
    red, same = ChannelMeanModel(), ChannelMeanModel()
    assert clean_accuracy(red, x, y).value == 1
    blue = torch.zeros(3, 24, 24)
    blue[2] = 1  # covers 56 % of the image: the mean colour turns blue, so class 1
    place = random_placement(20, 24, torch.Generator().manual_seed(0))
    adv = patched_versions({"blue": blue, "black": torch.zeros(3, 24, 24)}, x, make_mask(24), place)
    table = transfer_table(adv, {"blue": (red, 32), "black": (same, 32)}, x, y)
    assert len(table) == 4 and table.white_box.sum() == 2
    assert table.set_index(["source", "target"])["asr"].to_dict() == {
        ("blue", "blue"): 1.0, ("blue", "black"): 1.0, ("black", "blue"): 0.0, ("black", "black"): 0.0}
    rel = add_relative(table)
    assert rel[(rel.source == "blue")]["relative"].tolist() == [1.0, 1.0]
    m = asr_matrix(table)
    assert list(m.index) == ["blue", "black"] and list(m.columns) == ["blue", "black"]
    assert (table.n == 20).all()


@pytest.mark.parametrize("name", ["universal", "universal_bits", "image", "pgd"])
def test_every_public_attack_runs_on_a_quantized_model(name):
    torch.manual_seed(0)
    model = build_model("smallcnn").eval()
    prepare_bits(model, 4)
    x, y = _images(8)
    if name == "universal":
        out = universal_patch([(model, 32)], x, y, UniversalPatchConfig(steps=2, batch_size=4))
        assert out.shape == (3, 6, 6)
    elif name == "universal_bits":
        out = universal_patch([(model, 32), (model, 4)], x, y, UniversalPatchConfig(steps=2, batch_size=4, target=None))
        assert out.shape == (3, 6, 6) and model.qadtr_bits == 32
    elif name == "image":
        res = image_patch_attack(model, x, y, ImagePatchConfig(steps=2, restarts=2))
        assert res.apply(x).shape == x.shape
    else:
        assert pgd_attack(model, x, y, PGDConfig(steps=2)).shape == x.shape


def test_universal_patches_are_cached_per_source(tmp_path, monkeypatch):
    from qadtr_core.evaluation import transfer

    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path))
    x, y = _images(16)
    cfg = UniversalPatchConfig(steps=3, batch_size=8)
    sources = {"a": (ChannelMeanModel(), 32), "b": (ChannelMeanModel(), 32)}
    first = transfer.universal_patches(sources, x, y, cfg, cache_keys={"a": "model-a", "b": "model-b"})
    assert torch.equal(first["a"], first["b"])  # same model, same seed
    monkeypatch.setattr(transfer, "UniversalPatchAttack", None)  # a cache hit must not craft again
    again = transfer.universal_patches(sources, x, y, cfg, cache_keys={"a": "model-a", "b": "model-b"})
    assert torch.equal(again["a"], first["a"])
    place = transfer.evaluation_placement(16, cfg, seed=3)
    assert torch.equal(place.rows, transfer.evaluation_placement(16, cfg, seed=3).rows)


@pytest.mark.parametrize("name", ["universal", "image", "pgd"])
def test_attacks_freeze_the_weights_while_they_run_and_restore_every_flag(name):
    # The attacks need input gradients only: every parameter is frozen while they run (so the quantizers skip
    # their step gradient), a parameter frozen before stays frozen, the others are trainable again, no .grad
    model = build_model("smallcnn").eval()
    prepare_bits(model, 4)
    set_bits(model, 4)
    frozen_before = next(model.parameters())
    frozen_before.requires_grad_(False)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(any(p.requires_grad for p in m.parameters())))
    x, y = _images(8)
    if name == "universal":
        universal_patch([(model, 4)], x, y, UniversalPatchConfig(steps=2, batch_size=4))
    elif name == "image":
        image_patch_attack(model, x, y, ImagePatchConfig(steps=2, location_opt=True))
    else:
        pgd_attack(model, x, y, PGDConfig(steps=2))
    assert seen and not any(seen)
    params = list(model.parameters())
    assert not params[0].requires_grad and all(p.requires_grad for p in params[1:])
    assert all(p.grad is None for p in params)


def test_input_gradients_only_restores_shared_parameters_even_after_an_error():
    from qadtr_core.utils import input_gradients_only

    shared = torch.nn.Linear(2, 2)
    a, b = torch.nn.Sequential(shared), torch.nn.Sequential(shared, torch.nn.Linear(2, 1))
    b[1].bias.requires_grad_(False)
    with pytest.raises(RuntimeError, match="inside"), input_gradients_only(a, b):
        assert not any(p.requires_grad for p in b.parameters())
        raise RuntimeError("inside")
    assert [p.requires_grad for p in b.parameters()] == [True, True, True, False]
