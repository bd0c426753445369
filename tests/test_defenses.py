"""Defenses on a tiny model and data: each trains, components switch off exactly, GIR behaves."""
import copy
import dataclasses
import logging

import pytest
import torch

from qadtr_core import zoo
from qadtr_core.artifacts import load_tensors, save_tensors
from qadtr_core.defenses import (
    DWQ, PBAT, DWQConfig, PBATConfig, QADTR, QADTRConfig, RandomPrecision, dwq_loss, gir_penalty, pbat_loss, strategy_loss,
)
from qadtr_core.defenses.dwq import draw_bits
from qadtr_core.defenses.qadtr import input_gradient
from qadtr_core.models import build_model
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


@pytest.mark.parametrize("schedule", ["cycle", "sample"])
def test_the_bit_schedule_visits_every_bit(schedule):
    bit_set = (32, 8, 5, 4, 2)
    seen = [draw_bits(bit_set, 0, s, schedule) for s in range(100)]
    assert set(seen) == set(bit_set)
    if schedule == "cycle":
        assert seen[:5] == list(bit_set)
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
    no_dbwt = QADTR(dataclasses.replace(FAST_QADTR, dbwt=False, fixed_bits=5))
    assert {no_dbwt.train_bits(s) for s in range(20)} == {5}
    assert {QADTR(FAST_QADTR).train_bits(s) for s in range(5)} == {32, 8, 5, 4, 2}
    no_aqapa = QADTR(dataclasses.replace(FAST_QADTR, aqapa=False))
    assert no_aqapa.patch_cell(0) == (-1, 32, 6)


def test_aqapa_favours_the_hardest_cell():
    strategy = QADTR(dataclasses.replace(FAST_QADTR, temperature=0.1))
    strategy.avg_loss[3] = 5.0  # (8 bits, 6 px) was the hardest recently
    draws = [strategy.patch_cell(s)[0] for s in range(50)]
    assert draws.count(3) > 45 and strategy.cells[3] == (8, 6)


def test_gir_penalty_values():
    g = torch.randn(4, 3, 8, 8)
    assert gir_penalty(g, g).item() == pytest.approx(1.0)
    assert gir_penalty(g, -g).item() == pytest.approx(1.0)  # anti-aligned helps a sign attack as much
    a = torch.zeros(2, 1, 2, 2)
    b = torch.zeros(2, 1, 2, 2)
    a[:, 0, 0, 0], b[:, 0, 1, 1] = 1.0, 1.0
    assert gir_penalty(a, b).item() == 0.0  # orthogonal gradients: no penalty


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


@pytest.mark.parametrize("carry", [True, False])
def test_dwq_updates_only_the_batchnorm_of_the_drawn_bits(carry):
    model = _model().train()
    x, y = _batch()
    before = {k: v.running_mean.clone() for k, v in model.bns[1].bns.items()}
    dwq_loss(DWQConfig(pgd_steps=1, bit_set=(8, 2), carry=carry))(model, x, y, step=0)
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
    "PBAT": lambda steps: PBAT(PBATConfig(inner_steps=steps, patch_size=8)),
    "DWQ": lambda steps: DWQ(DWQConfig(pgd_steps=steps, bit_set=(4, 2), step_size=4 / 255)),
    "QADT-R": lambda steps: QADTR(dataclasses.replace(FAST_QADTR, inner_steps=steps, bit_set=(4, 2), patch_sizes=(8,))),
}


def _inner_loss_rise(strategy, model, x, y):
    """Mean CE of the strategy's inner adversarial images minus that of the same slots' starting point."""
    set_bits(model, 4)
    cell = {"cell": (0, 4, 8)} if isinstance(strategy, QADTR) else {}  # A-QAPA's (4 bits, 8 px) cell
    adv = strategy.inner(model, x, y, 0, **cell)
    start = type(strategy)(dataclasses.replace(strategy.config, **{
        "pgd_steps" if isinstance(strategy, DWQ) else "inner_steps": 0})).inner(model, x, y, 0, **cell)
    with torch.no_grad():
        ce = lambda z: torch.nn.functional.cross_entropy(model.eval()(z), y[:len(z)]).item()  # noqa: E731
        return ce(adv) - ce(start)


@pytest.mark.parametrize("name", list(INNER))
def test_the_inner_attack_raises_the_training_loss_and_a_no_op_does_not(name):
    model = _trained_tiny()
    x, y = _batch(16)
    assert _inner_loss_rise(INNER[name](3), model, x, y) > 0.05  # the attack works
    assert _inner_loss_rise(INNER[name](0), model, x, y) == pytest.approx(0.0, abs=1e-6)  # a no-op fails the check


def test_carried_patches_get_stronger_across_batches():
    model = _trained_tiny().eval()
    set_bits(model, 4)
    x, y = _batch(16)
    carried, fresh = PBAT(PBATConfig(inner_steps=1)), PBAT(PBATConfig(inner_steps=1, carry=False))
    for step in range(4):
        adv_c, adv_f = carried.inner(model, x, y, step), fresh.inner(model, x, y, step)
    ce = lambda z: torch.nn.functional.cross_entropy(model(z), y[:len(z)]).item()  # noqa: E731
    with torch.no_grad():
        assert ce(adv_c) > ce(adv_f)  # 4 carried steps beat 1 step from noise
    assert set(carried.state_dict()["bank"]) == {"4b_8px"}


def test_gir_runs_in_eval_mode_and_leaves_running_statistics_alone():
    model = _model().train()
    x, y = _batch(8)
    cfg = dataclasses.replace(FAST_QADTR, bit_set=(4, 2), aqapa=False)
    before = {k: v.running_mean.clone() for k, v in model.bns[1].bns.items()}
    strategy = QADTR(cfg)
    strategy(model, x, y, step=0)  # trains at 4 bits; GIR compares with 2 bits
    changed = {k for k, v in model.bns[1].bns.items() if not torch.equal(v.running_mean, before[k])}
    assert changed == {"4"} and model.training  # only the training forward at 4 bits updates statistics


def test_gir_lowers_the_cross_width_input_gradient_cosine():
    torch.manual_seed(0)
    model = _model().eval()
    x, y = _batch(8)

    def cosine():  # squared cosine between the input gradients at 32 and 8 bits (near 1 at the start)
        set_bits(model, 32)
        g1 = input_gradient(model, x, y, create_graph=True)
        set_bits(model, 8)
        g2 = input_gradient(model, x, y, create_graph=True)
        return gir_penalty(g1, g2)

    start = cosine().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        opt.zero_grad()
        cosine().backward()
        opt.step()
    assert start > 0.2 and cosine().item() < 0.5 * start


def test_qadtr_call_trains_the_gir_term_it_reports():
    """One QADT-R step with GIR and one without, from the same weights: the difference of their parameter
    gradients is the GIR term's (non-zero), and a step along it lowers the cross-width cosine more."""
    x, y = _batch(8)
    cfg = dataclasses.replace(FAST_QADTR, bit_set=(4, 2), aqapa=False, gir_images=8, gir_weight=1.0)
    adv = QADTR(cfg).inner(_model(), x, y, 0)  # the patched images both steps train on (same start, same seed)

    def cross_width_cosine(model):  # GIR's own quantity: the batch trains at 4 bits, the other width is 2
        with eval_mode(model):
            g1 = input_gradient(set_bits(model, 4), adv, y[:len(adv)], create_graph=False)
            g2 = input_gradient(set_bits(model, 2), adv, y[:len(adv)], create_graph=False)
        return gir_penalty(g1, g2).item()

    grads, after = {}, {}
    for gir in (True, False):
        model = _model().train()
        strategy = QADTR(dataclasses.replace(cfg, gir=gir))
        loss, _ = strategy(model, x, y, step=0)
        assert strategy.last_terms["bits"] == 4
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
    state["strategy"] = {"bank": state["strategy"]["bank"]}  # the A-QAPA averages are lost: unusable
    save_tensors(ckpt, state)
    resumed_strategy, resumed = QADTR(FAST_QADTR), _model()
    with caplog.at_level(logging.WARNING, logger="qadtr_core.train"):
        hist = train(resumed, data, cfg, checkpoint=ckpt, loss_fn=resumed_strategy, progress=False)
    assert "starting over" in caplog.text and [h["epoch"] for h in hist] == [1, 2]
    assert torch.equal(resumed_strategy.avg_loss, ref_strategy.avg_loss)  # not epoch 2 on a fresh strategy
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name", list(INNER))
def test_the_training_history_records_the_inner_loss_before_and_after_the_inner_steps(name):
    model, data = _trained_tiny(), synthetic_cifar(64, 4)
    runs = {}
    for steps in (2, 0):
        strategy = INNER[name](steps)
        params = strategy.config
        cfg = TrainConfig(arch="smallcnn", epochs=2, lr=0.01, bits=4, batch_size=16, n_train=64, schedule="cosine",
                          strategy={"PBAT": "pbat", "DWQ": "dwq", "QADT-R": "qadtr"}[name], strategy_params=params)
        runs[steps] = train(copy.deepcopy(model), data, cfg, loss_fn=strategy, progress=False)
    for h in runs[2]:  # the carried attack still raises the training loss, every epoch
        assert h["inner_loss_after"] > h["inner_loss_before"] + 0.01
    for h in runs[0]:  # a no-op attack raises nothing
        assert h["inner_loss_after"] == pytest.approx(h["inner_loss_before"])


def test_pbat_keeps_the_quantizer_steps_and_batchnorm_its_qat_start_learned(tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path))
    data = synthetic_cifar(32, 8)
    fp = TrainConfig(arch="smallcnn", epochs=1, lr=0.05, batch_size=16, n_train=32)
    qat = dataclasses.replace(fp, bits=4, schedule="cosine", init=fp, lr=0.5)
    parent = zoo.get_or_train(qat, data, progress=False).model.state_dict()
    pbat = dataclasses.replace(qat, init=qat, lr=0.0, strategy="pbat", strategy_params=PBATConfig(inner_steps=0))
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
