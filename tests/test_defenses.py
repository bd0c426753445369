"""Defenses on a tiny model and data: each trains, components switch off exactly, GIR behaves."""
import copy
import dataclasses
import logging

import pytest
import torch

from qadtr_core import zoo
from qadtr_core.artifacts import load_tensors, save_tensors
from qadtr_core.defenses import (
    DWQ,
    PBAT,
    QADTR,
    DWQConfig,
    PBATConfig,
    QADTRConfig,
    RandomPrecision,
    dwq_loss,
    gir_penalty,
    strategy_loss,
)
from qadtr_core.defenses.dwq import draw_bits
from qadtr_core.defenses.qadtr import input_gradient
from qadtr_core.evaluation.threats import seen_table
from qadtr_core.models import build_model
from qadtr_core.quant import bits as at_bits
from qadtr_core.quant import prepare_bits, set_bits
from qadtr_core.testing import synthetic_cifar
from qadtr_core.train import TrainConfig, train
from qadtr_core.utils import eval_mode

FAST_QADTR = QADTRConfig(inner_steps=1, patch_sizes=(4, 6), gir_images=4)


def _model():
    torch.manual_seed(0)
    m = build_model("smallcnn")
    for b in (32, 8, 5, 4, 2):
        prepare_bits(m, b)
    return m


def _batch(n=16):
    d = synthetic_cifar(n, 4)
    return d.x_train.float() / 255, d.y_train


@pytest.mark.parametrize("strategy,params", [
    ("pbat", PBATConfig(inner_steps=1)),
    ("dwq", DWQConfig(pgd_steps=1)),
    ("qadtr", FAST_QADTR),
])
def test_each_defense_trains_one_tiny_epoch_and_changes_the_weights(strategy, params):
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(arch="smallcnn", epochs=1, lr=0.05, bits=4, batch_size=16, n_train=32, schedule="cosine",
                      strategy=strategy, strategy_params=params)
    hist = train(model, synthetic_cifar(32, 4), cfg, loss_fn=strategy_loss(cfg), progress=False)
    assert torch.isfinite(torch.tensor(hist[0]["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_unknown_defense_and_bad_bit_sets_are_clear_errors():
    with pytest.raises(ValueError, match="unknown strategy 'adv'; registered: standard, multiwidth, .*pbat"):
        strategy_loss(TrainConfig(arch="smallcnn", epochs=1, lr=0.1, strategy="adv"))
    with pytest.raises(ValueError, match="bit set is empty"):
        QADTRConfig(bit_set=())
    with pytest.raises(ValueError, match="repeats"):
        DWQConfig(bit_set=(4, 4))
    with pytest.raises(ValueError, match="bit-width 1"):
        DWQConfig(bit_set=(1, 4))
    with pytest.raises(ValueError, match="unknown bit schedule"):
        draw_bits((4, 2), 0, 0, "random")
    with pytest.raises(ValueError, match="at least two"):
        QADTRConfig(bit_set=(4,))


@pytest.mark.parametrize("schedule", ["cycle", "sample", "shuffle"])
def test_the_bit_schedule_visits_every_bit(schedule):
    bit_set = (32, 8, 5, 4, 2)
    seen = [draw_bits(bit_set, 0, s, schedule) for s in range(100)]
    assert set(seen) == set(bit_set)
    if schedule == "cycle":
        assert seen[:5] == list(bit_set)
    if schedule == "shuffle":  # random per batch, yet every width the same steps in every run of five
        assert all(sorted(seen[i:i + 5]) == sorted(bit_set) for i in range(0, 100, 5))
        assert seen[:25] != [bit_set[i % 5] for i in range(25)]
    assert seen == [draw_bits(bit_set, 0, s, schedule) for s in range(100)]  # seeded


def test_switching_off_a_component_removes_exactly_its_term():
    x, y = _batch()
    runs = {}
    for name, cfg in {"all": FAST_QADTR, "no_gir": dataclasses.replace(FAST_QADTR, gir=False)}.items():
        model = _model().train()
        strategy = QADTR(cfg)
        loss, _ = strategy(model, x, y, step=3)
        runs[name] = (float(loss.detach()), strategy.last_terms)
    (l_all, t_all), (l_off, t_off) = runs["all"], runs["no_gir"]
    assert "gir" not in t_off and t_all["gir"] > 0
    assert t_all["ce"] == pytest.approx(t_off["ce"], abs=1e-6)
    assert l_all - l_off == pytest.approx(t_all["gir"], abs=1e-5)


def test_dbwt_and_aqapa_switches():
    # without DBWT: the same widths and the same steps per width, in contiguous blocks (no per-batch change)
    no_dbwt = QADTR(dataclasses.replace(FAST_QADTR, dbwt=False, block_steps=4))
    assert [no_dbwt.train_bits(s) for s in range(20)] == [b for b in (32, 8, 5, 4, 2) for _ in range(4)]
    no_dbwt.check_steps(20)  # every width gets its block
    with pytest.raises(ValueError, match="need 20 steps .4 each., the run has 14: only 32, 8, 5, 4 bits would train"):
        no_dbwt.check_steps(14)
    QADTR(FAST_QADTR).check_steps(3)  # DBWT draws every width within each run of len(bit_set): no blocks
    assert {QADTR(FAST_QADTR).train_bits(s) for s in range(5)} == {32, 8, 5, 4, 2}
    no_aqapa = QADTR(dataclasses.replace(FAST_QADTR, aqapa=False))
    assert no_aqapa.patch_cell(0) == (-1, 32, 6)


def test_aqapa_favours_the_hardest_cell_but_starves_none():
    strategy = QADTR(dataclasses.replace(FAST_QADTR, temperature=0.1, uniform_floor=0.0))
    strategy.visits[:] = 1
    strategy.avg_loss[3] = 5.0  # (8 bits, 6 px) was the hardest recently
    draws = [strategy.patch_cell(s)[0] for s in range(50)]
    assert draws.count(3) > 45 and strategy.cells[3] == (8, 6)
    default = QADTR(FAST_QADTR)  # temperature 2, uniform floor 0.25: a cell 5 nats ahead does not take over
    default.visits[:] = 1
    default.avg_loss[3] = 5.0
    probs = default.cell_probabilities()
    assert probs.sum().item() == pytest.approx(1.0) and probs.min() >= 0.25 / len(default.cells) - 1e-7
    assert probs[3] < 0.75 and probs[3] == probs.max()


def test_aqapa_scores_a_cell_at_its_own_width_and_records_draws():
    model = _trained_tiny()
    x, y = _batch(16)
    strategy = QADTR(dataclasses.replace(FAST_QADTR, bit_set=(4, 2), gir=False, probe_every=0))
    for step in range(6):
        strategy(model.train(), x, y, step)
    rec = strategy.inner_record()
    assert sum(rec["aqapa_draws"].values()) == 6 and set(rec["aqapa_draws"]) == {"4b_4px", "4b_6px", "2b_4px", "2b_6px"}
    # which width each batch's patches were crafted at, per width trained at (what "seen" rests on)
    pairs = rec["patch_widths"]
    assert sum(pairs.values()) == 6 and set(pairs) <= {"4b<-4b", "4b<-2b", "2b<-4b", "2b<-2b"}
    assert sum(k for p, k in pairs.items() if p.startswith("4b")) == sum(strategy.train_bits(s) == 4 for s in range(6))
    assert "patch_widths" not in strategy.inner_record()  # per epoch: the counts start again
    from qadtr_core.evaluation.robustness import crafted_width_table
    from qadtr_core.zoo import TrainedModel
    tm = TrainedModel(model, TrainConfig(arch="smallcnn", epochs=1, lr=0.1), {"config_hash": "q", "history": [rec, rec]})
    table = crafted_width_table({"QADT-R": {4: tm, 2: tm}}).set_index("bits")
    same4 = 100 * pairs.get("4b<-4b", 0) / max(pairs.get("4b<-4b", 0) + pairs.get("4b<-2b", 0), 1)
    assert table.loc[4, "crafted at the same width (%)"] == pytest.approx(same4) and len(table) == len(
        {p.split("<-")[0] for p in pairs})
    seen = seen_table({"QADT-R": strategy.config.training_patches()}, (4, 2)).set_index("threat")
    assert strategy.config.training_patches().cross_width and "crafted at another width" in seen.loc["4x4 square", "QADT-R"]
    i = next(i for i, n in enumerate(strategy.visits) if n > 0)
    b, size = strategy.cells[i]
    # the hardness of a cell is the cross-entropy of its patched images at the cell's width: recompute one
    probe = QADTR(dataclasses.replace(strategy.config))
    adv = probe.inner(model, x, y, 0, (i, b, size))
    from qadtr_core.defenses.inner import mean_ce
    with at_bits(model, b):
        at_cell = mean_ce(model, adv, y[:len(adv)])
    probe._record_cell(i, at_cell)
    assert probe.avg_loss[i] == pytest.approx(at_cell)  # a first visit sets the average to the observation


def test_gir_penalty_values():
    g = torch.randn(4, 3, 8, 8)
    assert gir_penalty(g, g).item() == pytest.approx(1.0)
    assert gir_penalty(g, -g).item() == pytest.approx(1.0)  # anti-aligned helps a sign attack as much
    a = torch.zeros(2, 1, 2, 2)
    b = torch.zeros(2, 1, 2, 2)
    a[:, 0, 0, 0], b[:, 0, 1, 1] = 1.0, 1.0
    assert gir_penalty(a, b).item() == 0.0  # orthogonal gradients of equal norm: no penalty
    # a vanishing gradient never satisfies GIR: zero costs as much as perfect alignment, a small one nearly so
    assert gir_penalty(torch.zeros_like(g), g).item() == pytest.approx(1.0)
    assert gir_penalty(0.1 * a, b, norm_floor=0.5).item() == pytest.approx(((0.5 - 0.1) / 0.5) ** 2)
    assert gir_penalty(0.6 * a, b, norm_floor=0.5).item() == 0.0


def test_gir_double_backprop_gives_finite_parameter_gradients():
    model = _model().train()
    x, y = _batch(8)
    set_bits(model, 4)
    g1 = input_gradient(model, x, y, create_graph=True)
    set_bits(model, 2)
    g2 = input_gradient(model, x, y, create_graph=True)
    penalty = gir_penalty(g1, g2)
    grads = torch.autograd.grad(penalty, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    flat = torch.cat([g.flatten() for g in grads if g is not None])
    assert torch.isfinite(flat).all() and flat.abs().sum() > 0


def test_dwq_updates_only_the_batchnorm_of_the_drawn_bits():
    model = _model().train()
    x, y = _batch()
    before = {k: v.running_mean.clone() for k, v in model.bns[1].bns.items()}
    dwq_loss(DWQConfig(pgd_steps=1, bit_set=(8, 2)))(model, x, y, step=0)
    drawn = str(DWQConfig(bit_set=(8, 2)).train_bits(0))
    changed = [k for k, v in model.bns[1].bns.items() if not torch.equal(v.running_mean, before[k])]
    assert changed == [drawn]


def test_random_precision_inference_is_random_and_repeatable():
    model = _model().eval()
    x, _ = _batch(2)
    draws = []
    for seed in (0, 0):
        rp = RandomPrecision(model, (32, 4, 2), seed=seed)
        draws.append([rp(x) is not None and rp.last_bits for _ in range(12)])
    assert draws[0] == draws[1] and len(set(draws[0])) == 3


def test_defended_models_come_from_the_zoo_with_every_bit_ready(tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path))
    data = synthetic_cifar(32, 8)
    parent = TrainConfig(arch="smallcnn", epochs=1, lr=0.05, batch_size=16, n_train=32)
    cfg = dataclasses.replace(parent, bits=4, schedule="cosine", init=parent, strategy="qadtr",
                              strategy_params=dataclasses.replace(FAST_QADTR, bit_set=(32, 4, 2)))
    tm = zoo.get_or_train(cfg, data, progress=False)
    for b in (32, 4, 2):
        set_bits(tm.model, b)
        assert tm.model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def _killed_after_one_epoch(tmp_path, data, cfg):
    """Train QADT-R under ``cfg`` until it is killed at the first step of epoch 2; the checkpoint it leaves."""
    class Dies(QADTR):
        def __call__(self, model, x, y, step):
            if step == 2:  # first step of epoch 2: the checkpoint holds epoch 1
                raise KeyboardInterrupt
            return super().__call__(model, x, y, step)

    ckpt = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        train(_model(), data, cfg, checkpoint=ckpt, loss_fn=Dies(FAST_QADTR), progress=False)
    return ckpt


def test_qadtr_state_is_checkpointed_and_resumed(tmp_path):
    data = synthetic_cifar(32, 4)
    cfg = TrainConfig(arch="smallcnn", epochs=2, lr=0.05, bits=4, batch_size=16, n_train=32, schedule="cosine",
                      strategy="qadtr", strategy_params=FAST_QADTR)
    ref_strategy = QADTR(FAST_QADTR)
    reference = _model()
    train(reference, data, cfg, loss_fn=ref_strategy, progress=False)

    ckpt = _killed_after_one_epoch(tmp_path, data, cfg)
    resumed_strategy = QADTR(FAST_QADTR)
    resumed = _model()
    train(resumed, data, cfg, checkpoint=ckpt, loss_fn=resumed_strategy, progress=False)
    assert torch.equal(resumed_strategy.avg_loss, ref_strategy.avg_loss)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_adaptive_attacks_run_with_eot_over_bits_and_over_random_precision():
    from qadtr_core.attacks import UniversalPatchAttack, UniversalPatchConfig

    model = _model().eval()
    x, y = _batch(8)
    cfg = UniversalPatchConfig(steps=3, batch_size=4, target=0)
    over_bits = UniversalPatchAttack([(model, b) for b in (32, 8, 5, 4, 2)], x, y, cfg)
    over_bits.run()
    rp = RandomPrecision(model, (32, 4, 2), seed=1)
    over_randomness = UniversalPatchAttack([(rp, 32)], x, y, cfg)  # each step meets a fresh random width
    patch = over_randomness.run()
    assert len(over_bits.history) == 3 and patch.min() >= 0 and patch.max() <= 1
    assert rp.last_bits in (32, 4, 2)


# --- inner attacks, GIR in eval mode, carried state, the PBAT start (issue 11) ---------------------------

def _trained_tiny():
    """A smallcnn that fits the synthetic data a little (so that an attack has something to break)."""
    model = _model()
    cfg = TrainConfig(arch="smallcnn", epochs=3, lr=0.05, bits=4, batch_size=32, n_train=128, schedule="cosine")
    train(model, synthetic_cifar(128, 4), cfg, progress=False)
    return model


INNER = {
    "PBAT": lambda steps: PBAT(PBATConfig(inner_steps=steps, patch_size=8, probe_every=1)),
    "DWQ": lambda steps: DWQ(DWQConfig(pgd_steps=steps, bit_set=(4, 2), probe_every=1)),
    "QADT-R": lambda steps: QADTR(dataclasses.replace(FAST_QADTR, inner_steps=steps, bit_set=(4, 2), patch_sizes=(8,),
                                                      probe_every=1)),
}


def _inner(strategy, model, x, y, step=0):
    set_bits(model, 4)
    cell = {"cell": (0, 4, 8)} if isinstance(strategy, QADTR) else {}  # A-QAPA's (4 bits, 8 px) cell
    return strategy.inner(model, x, y, step, **cell)


def _fidelity(strategy, model, x, y):
    """The share of a fresh 20-step attack's loss gain (same kind, same images, same width) that the
    strategy's training attack reaches: the defenses chapter's fidelity ratio."""
    from qadtr_core.defenses.inner import FRESH_STEP_SIZE, FRESH_STEPS, fidelity_ratio, mean_ce, patch_inner, pgd_inner

    adv = _inner(strategy, model, x, y)
    k = len(adv)
    if isinstance(strategy, DWQ):
        fresh = pgd_inner(model, x, y, strategy.config.eps, FRESH_STEPS, seed=99)
    else:
        fresh = patch_inner(model, x[:k], y[:k], 8, FRESH_STEPS, FRESH_STEP_SIZE, strategy.config.avoid, seed=99)
    return fidelity_ratio(mean_ce(model, x[:k], y[:k]), mean_ce(model, adv, y[:k]), mean_ce(model, fresh, y[:k]))


@pytest.mark.parametrize("name", list(INNER))
def test_the_training_attack_reaches_80_percent_of_a_fresh_20_step_attack(name):
    from qadtr_core.profiles import get_profile

    model, (x, y) = _trained_tiny(), _batch(32)
    k = get_profile("quick").defense_inner_steps  # the quick profile's shared inner steps
    assert _fidelity(INNER[name](k), model, x, y) >= 0.8


@pytest.mark.parametrize("name", list(INNER))
def test_the_fidelity_bar_fails_each_strategy_with_a_one_step_inner_attack(name):
    """Each strategy's own inner attack cut to one step (what the old carried form took per batch) falls short
    of the bar the defenses chapter applies, where the quick profile's steps clear it (test above)."""
    model, (x, y) = _trained_tiny(), _batch(32)
    assert _fidelity(INNER[name](1), model, x, y) < 0.8


def test_the_fidelity_bar_fails_a_patch_carried_from_other_images():
    """What carry.py did: patches crafted (4 steps, location optimisation) for other images, moved onto this
    batch at new random locations: far below the bar against a fresh attack on this batch's own images."""
    from qadtr_core.attacks.image_patch import ImagePatchConfig, image_patch_attack
    from qadtr_core.defenses.inner import FRESH_STEP_SIZE, FRESH_STEPS, fidelity_ratio, mean_ce, patch_inner
    from qadtr_core.patches import apply_patch, make_mask, random_placement
    from qadtr_core.profiles import get_profile

    model, (x, y) = _trained_tiny(), _batch(64)
    set_bits(model, 4)
    xa, ya, xb, yb = x[:32], y[:32], x[32:], y[32:]
    a_patches = image_patch_attack(model, xa, ya, ImagePatchConfig(size=8, steps=4, step_size=0.1, seed=3,
                                                                   location_opt=True)).patches
    place = random_placement(32, 8, torch.Generator().manual_seed(5), 32, PBATConfig().avoid)
    carried = apply_patch(xb, a_patches, make_mask(8), place)
    k = get_profile("quick").defense_inner_steps  # the training attack on B's own images, as the defenses run it
    own = patch_inner(model, xb, yb, 8, k, 1.0 / k, PBATConfig().avoid, seed=3)
    fresh = patch_inner(model, xb, yb, 8, FRESH_STEPS, FRESH_STEP_SIZE, PBATConfig().avoid, seed=99)
    clean, top = mean_ce(model, xb, yb), mean_ce(model, fresh, yb)
    assert fidelity_ratio(clean, mean_ce(model, carried, yb), top) < 0.8 <= fidelity_ratio(clean, mean_ce(model, own, yb), top)


@pytest.mark.parametrize("name", list(INNER))
def test_the_inner_attack_is_crafted_for_the_batch_and_carries_nothing(name):
    model, (x, y) = _trained_tiny(), _batch(32)
    a = _inner(INNER[name](2), model, x[:16], y[:16], step=5)
    strategy = INNER[name](2)
    _inner(strategy, model, x[16:], y[16:], step=4)  # another batch first: nothing may carry over
    assert torch.equal(_inner(strategy, model, x[:16], y[:16], step=5), a)
    with torch.no_grad():
        assert torch.nn.functional.cross_entropy(model.eval()(a), y[:len(a)]) > \
            torch.nn.functional.cross_entropy(model.eval()(x[:len(a)]), y[:len(a)]) + 0.05  # the attack works


def test_gir_runs_in_eval_mode_and_leaves_running_statistics_alone():
    model = _model().train()
    x, y = _batch(8)
    cfg = dataclasses.replace(FAST_QADTR, bit_set=(4, 2), aqapa=False, schedule="cycle")
    before = {k: v.running_mean.clone() for k, v in model.bns[1].bns.items()}
    strategy = QADTR(cfg)
    strategy(model, x, y, step=0)  # trains at 4 bits; GIR compares with 2 bits
    changed = {k for k, v in model.bns[1].bns.items() if not torch.equal(v.running_mean, before[k])}
    assert changed == {"4"} and model.training  # only the training forward at 4 bits updates statistics


def test_gir_lowers_the_cross_width_cosine_without_shrinking_the_gradient():
    """Minimising GIR alone on a tiny model: the squared cosine between the 32- and 8-bit input gradients
    falls, and the 32-bit input gradient keeps more than half of its norm (no win by masking)."""
    torch.manual_seed(0)
    model = _model().eval()
    x, y = _batch(8)

    def grads():
        set_bits(model, 32)
        g1 = input_gradient(model, x, y, create_graph=True)
        set_bits(model, 8)
        return g1, input_gradient(model, x, y, create_graph=False)

    def cos2(g1, g2):
        return torch.nn.functional.cosine_similarity(g1.flatten(1), g2.flatten(1)).pow(2).mean().item()

    g1, g2 = grads()
    start_cos, start_norm = cos2(g1, g2), g1.flatten(1).norm(dim=1).mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        opt.zero_grad()
        gir_penalty(*grads()).backward()
        opt.step()
    g1, g2 = grads()
    assert start_cos > 0.2 and cos2(g1, g2) < 0.5 * start_cos
    assert g1.flatten(1).norm(dim=1).mean().item() > 0.5 * start_norm


def test_qadtr_call_trains_the_gir_term_it_reports():
    """One QADT-R step with GIR and one without, from the same weights: the difference of their parameter
    gradients is the GIR term's (non-zero), and a step along it lowers the cross-width cosine more."""
    x, y = _batch(8)
    cfg = dataclasses.replace(FAST_QADTR, bit_set=(32, 8), aqapa=False, gir_images=8, gir_weight=1.0, schedule="cycle")
    adv = QADTR(cfg).inner(_model(), x, y, 0)  # the patched images both steps train on (same start, same seed)

    def cross_width_cosine(model):  # GIR's own quantity: the batch trains at 32 bits, the other width is 8
        with eval_mode(model):  # (the two widths' gradients start nearly parallel: cosine^2 about 0.9)
            g1 = input_gradient(set_bits(model, 32), adv, y[:len(adv)], create_graph=False)
            g2 = input_gradient(set_bits(model, 8), adv, y[:len(adv)], create_graph=False)
        return gir_penalty(g1, g2).item()

    grads, after = {}, {}
    for gir in (True, False):
        model = _model().train()
        strategy = QADTR(dataclasses.replace(cfg, gir=gir))
        loss, _ = strategy(model, x, y, step=0)
        assert strategy.last_terms["bits"] == 32
        params = [p for p in model.parameters() if p.requires_grad]
        grads[gir] = [g if g is not None else torch.zeros_like(p)
                      for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True), params)]
        with torch.no_grad():
            for p, g in zip(params, grads[gir]):
                p -= 0.05 * g
        after[gir] = cross_width_cosine(model)
    gir_grad = torch.cat([(a - b).flatten() for a, b in zip(grads[True], grads[False])])
    assert torch.isfinite(gir_grad).all() and gir_grad.norm() > 1e-3  # a detached or constant GIR term gives 0
    assert after[True] < after[False]


def test_a_checkpoint_with_a_broken_strategy_state_starts_over(tmp_path, caplog):
    data = synthetic_cifar(32, 4)
    cfg = TrainConfig(arch="smallcnn", epochs=2, lr=0.05, bits=4, batch_size=16, n_train=32, schedule="cosine",
                      strategy="qadtr", strategy_params=FAST_QADTR)
    ref_strategy, reference = QADTR(FAST_QADTR), _model()
    train(reference, data, cfg, loss_fn=ref_strategy, progress=False)

    ckpt = _killed_after_one_epoch(tmp_path, data, cfg)
    state = load_tensors(ckpt)
    state["strategy"] = {"visits": state["strategy"]["visits"]}  # the A-QAPA averages are lost: unusable
    save_tensors(ckpt, state)
    resumed_strategy, resumed = QADTR(FAST_QADTR), _model()
    with caplog.at_level(logging.WARNING, logger="qadtr_core.train"):
        hist = train(resumed, data, cfg, checkpoint=ckpt, loss_fn=resumed_strategy, progress=False)
    assert "starting over" in caplog.text and [h["epoch"] for h in hist] == [1, 2]
    assert torch.equal(resumed_strategy.avg_loss, ref_strategy.avg_loss)  # not epoch 2 on a fresh strategy
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_the_trainer_refuses_a_run_too_short_for_every_width_block():
    model, data = _trained_tiny(), synthetic_cifar(64, 4)
    params = dataclasses.replace(FAST_QADTR, dbwt=False, block_steps=2)  # 5 widths x 2 steps; 64 images / 16 = 4
    cfg = TrainConfig(arch="smallcnn", epochs=1, lr=0.01, bits=32, batch_size=16, n_train=64, strategy="qadtr",
                      strategy_params=params)
    with pytest.raises(ValueError, match="without DBWT the 5 widths need 10 steps"):
        train(copy.deepcopy(model), data, cfg, loss_fn=QADTR(params), progress=False)


@pytest.mark.parametrize("name", list(INNER))
def test_the_training_history_records_the_fidelity_of_the_inner_attack(name):
    model, data = _trained_tiny(), synthetic_cifar(64, 4)
    strategy = INNER[name](2)
    cfg = TrainConfig(arch="smallcnn", epochs=2, lr=0.01, bits=4, batch_size=16, n_train=64, schedule="cosine",
                      strategy={"PBAT": "pbat", "DWQ": "dwq", "QADT-R": "qadtr"}[name], strategy_params=strategy.config)
    hist = train(copy.deepcopy(model), data, cfg, loss_fn=strategy, progress=False)
    for h in hist:  # every epoch: probes on every step, the training attack raises the loss, a fresh one more
        assert h["probes"] == 4 and h["inner_loss_train"] > h["inner_loss_clean"] + 0.01
        assert h["inner_loss_fresh"] >= h["inner_loss_clean"] and h["fidelity"] > 0
        assert h["inner_n_ok"] > 0 and 0 <= h["inner_asr_train"] <= 1 and 0 <= h["inner_asr_fresh"] <= 1


def test_pbat_keeps_the_quantizer_steps_and_batchnorm_its_qat_start_learned(tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path))
    data = synthetic_cifar(32, 8)
    fp = TrainConfig(arch="smallcnn", epochs=1, lr=0.05, batch_size=16, n_train=32)
    qat = dataclasses.replace(fp, bits=4, schedule="cosine", init=fp, lr=0.5)
    parent = zoo.get_or_train(qat, data, progress=False).model.state_dict()
    pbat = dataclasses.replace(qat, init=qat, lr=0.0, strategy="pbat", strategy_params=PBATConfig(inner_steps=1))
    child = zoo.get_or_train(pbat, data, progress=False).model.state_dict()  # lr 0: no parameter may change
    keys = [k for k in parent if "steps.4" in k]
    assert keys and all(torch.equal(parent[k], child[k]) for k in keys)  # a reset re-initialises them from data


def test_prepare_bits_from_the_same_width_is_a_no_op():
    model = _model()
    set_bits(model, 4)
    model(torch.rand(2, 3, 32, 32))
    step = model.convs[1].wstep.steps["4"].detach().clone()
    with torch.no_grad():
        model.convs[1].wstep.steps["4"].mul_(3)
    prepare_bits(model, 4, source_bits=4)
    model(torch.rand(2, 3, 32, 32))
    assert torch.equal(model.convs[1].wstep.steps["4"], 3 * step)


def test_the_multiwidth_strategy_cycles_the_bit_set():
    from qadtr_core.train import MultiWidthConfig, multiwidth_loss

    model = _model().train()
    x, y = _batch(4)
    loss = multiwidth_loss(MultiWidthConfig((32, 4, 2)))
    seen = []
    for step in range(6):
        loss(model, x, y, step)
        seen.append(model.qadtr_bits)
    assert seen == [32, 4, 2, 32, 4, 2]


# --- no win by collapse (issue 17) ------------------------------------------------------------------------

class _ByRed(torch.nn.Module):
    """Predicts class 1 when the red channel's mean is above 0.5, else 0; ``broken`` always says 0."""

    def __init__(self, broken=False):
        super().__init__()
        self.broken, self.w = broken, torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        red = x[:, 0].mean((1, 2))
        logits = torch.stack([0.5 - red, red - 0.5], 1) + 0 * self.w
        return torch.stack([torch.ones_like(red), torch.zeros_like(red)], 1) if self.broken else logits


def _red_data(n=40):
    from qadtr_core.data import Cifar10

    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    y = torch.arange(n) % 2
    x[y == 1, 0] = 200
    return Cifar10(x, y, x, y, "hand-built")


def test_a_defense_that_breaks_at_a_width_is_flagged_collapsed():
    data = _red_data()
    check = zoo.collapse_check(_ByRed(broken=True), _ByRed(), [32, 4], data)
    assert check["start_clean"] == {"32": 100.0, "4": 100.0} and check["clean"] == {"32": 50.0, "4": 50.0}
    assert check["collapsed"] == [32, 4] and check["n"] == 40
    assert zoo.collapse_check(_ByRed(), _ByRed(), [32, 4], data)["collapsed"] == []  # equal to its start: fine


def test_the_build_record_of_a_defense_carries_its_collapse_check(tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path))
    data = synthetic_cifar(32, 8)
    fp = TrainConfig(arch="smallcnn", epochs=1, lr=0.05, batch_size=16, n_train=32)
    pbat = dataclasses.replace(fp, bits=4, schedule="cosine", init=fp, strategy="pbat",
                               strategy_params=PBATConfig(inner_steps=1, probe_every=0))
    rec = zoo.get_or_train(pbat, data, progress=False).record
    assert set(rec["collapse_check"]["clean"]) == {"4"} and isinstance(rec["collapse_check"]["collapsed"], list)
    assert "collapse_check" not in zoo.get_or_train(fp, data, progress=False).record  # undefended: no check


def test_input_gradient_norm_sees_a_masked_gradient():
    from qadtr_core.metrics import input_gradient_norm

    x, y = _batch(8)
    model = _model().eval()
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    with torch.no_grad():
        flat[1].weight.zero_()
    assert input_gradient_norm(model, x, y) > 0 and input_gradient_norm(flat, x, y) == 0.0
