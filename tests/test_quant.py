"""Quantizer grids, the straight-through gradient, bit switching and one BatchNorm per bit-width."""
import pytest
import torch
import torch.nn.functional as F

from qadtr_core.models import build_model
from qadtr_core.quant import (
    QuantAct,
    QuantConv2d,
    SwitchBatchNorm2d,
    act_range,
    bits,
    check_bits,
    fake_quant,
    get_bits,
    grid_levels,
    mse_step,
    prepare_bits,
    set_bits,
    weight_range,
)


@pytest.mark.parametrize("bad", [0, 1, 9, 16, 33, -4, 4.0, "4", True, None])
def test_bad_bit_width_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"bit-width .* not supported; allowed: 2, 3, 4, 5, 6, 7, 8 or 32"):
        check_bits(bad)


def test_integer_grids():
    assert weight_range(2) == (-1, 1)  # ternary
    assert weight_range(4) == (-7, 7)
    assert weight_range(8) == (-127, 127)
    assert act_range(2) == (0, 3)
    assert act_range(4) == (0, 15)


def test_signed_two_bit_hand_example():
    x = torch.tensor([-1.0, -0.26, -0.24, 0.0, 0.3, 0.74, 0.76, 2.0])
    out = fake_quant(x, torch.tensor(0.5), *weight_range(2))
    assert torch.allclose(out, torch.tensor([-0.5, -0.5, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]))


def test_grid_levels_are_the_levels_fake_quant_uses():
    x = torch.tensor([-1.0, -0.26, -0.24, 0.0, 0.3, 0.74, 0.76, 2.0])
    lv = grid_levels(x, torch.tensor(-0.5), *weight_range(2))  # a negative step: its size decides
    assert weight_range(2) == (-1, 1) and lv.tolist() == [-1, -1, 0, 0, 1, 1, 1, 1]
    assert torch.equal(lv * 0.5, fake_quant(x, torch.tensor(-0.5), *weight_range(2)))


def test_unsigned_four_bit_hand_example_and_ste_mask():
    x = torch.tensor([-0.3, 0.04, 0.06, 0.71, 1.49, 1.51, 3.0], requires_grad=True)
    out = fake_quant(x, torch.tensor(0.1), *act_range(4))
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 0.1, 0.7, 1.5, 1.5, 1.5]))
    out.sum().backward()
    # gradient passes inside [0, 1.5] and is zero where the value was clipped
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_step_gradient_is_lsq():
    step = torch.tensor(0.1, requires_grad=True)
    x = torch.tensor([0.71, 3.0, -1.0])
    fake_quant(x, step, *act_range(4), grad_scale=0.5).sum().backward()
    # inside: round(7.1) - 7.1 = -0.1; above: qmax = 15; below: qmin = 0; all times grad_scale
    assert step.grad.item() == pytest.approx(0.5 * (-0.1 + 15 + 0), abs=1e-5)


@pytest.mark.parametrize("b", [2, 3, 4, 5, 8])
def test_weight_channel_takes_at_most_2_to_the_b_values(b):
    torch.manual_seed(b)
    conv = QuantConv2d(8, 6, 3, bias=False)
    set_bits(conv, b)
    w = conv.quantized_weight().detach()
    for channel in w:
        assert len(torch.unique(channel)) <= 2**b
    assert len(torch.unique(w[0])) > 2  # and it is not collapsed to a constant
    set_bits(conv, 32)
    assert torch.equal(conv.quantized_weight(), conv.weight)


def test_full_precision_conv_is_a_plain_conv():
    torch.manual_seed(0)
    conv = QuantConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))


def test_mse_step_finds_the_exact_grid():
    x = torch.tensor([0.0, 0.1, 0.2, 0.3])
    assert mse_step(x, 0, 3).item() == pytest.approx(0.1)
    w = torch.stack([torch.tensor([-0.2, 0.0, 0.2]), torch.tensor([-2.0, 0.0, 2.0])])
    assert torch.allclose(mse_step(w, -1, 1, dim=0), torch.tensor([0.2, 2.0]))


def test_activation_is_unsigned_per_tensor():
    act = QuantAct()
    set_bits(act, 2)
    out = act(torch.tensor([0.0, 0.1, 0.2, 0.3, 0.9]))
    assert len(torch.unique(out)) <= 4 and out.min() >= 0


def test_set_bits_reaches_every_layer_and_the_context_manager_restores():
    model = build_model("smallcnn")
    prepare_bits(model, 4)
    set_bits(model, 4)
    layers = [m for m in model.modules() if hasattr(m, "bits") and not isinstance(m, type(model))]
    assert layers and all(m.bits == 4 for m in layers)
    with bits(model, 32):
        assert get_bits(model) == 32 and all(m.bits == 32 for m in layers)
    assert get_bits(model) == 4
    # the first conv and the classifier stay at 8 bits when the model is quantized
    assert model.convs[0].effective_bits() == 8 and model.fc.effective_bits() == 8
    assert model.convs[1].effective_bits() == 4


def test_one_batchnorm_per_bit_width_updates_only_its_own():
    bn = SwitchBatchNorm2d(3)
    before = {k: v.running_mean.clone() for k, v in bn.bns.items()}
    set_bits(bn, 4)
    bn.train()
    bn(torch.randn(8, 3, 4, 4) + 5.0)
    changed = [k for k, v in bn.bns.items() if not torch.equal(v.running_mean, before[k])]
    assert changed == ["4"]


def test_untrained_batchnorm_is_refused_until_prepared():
    model = build_model("smallcnn").eval()
    set_bits(model, 2)
    with pytest.raises(RuntimeError, match=r"BatchNorm for 2 bits was never trained.*prepare_bits"):
        model(torch.rand(1, 3, 32, 32))
    model.bns[0].bns["32"].running_mean.fill_(0.7)
    prepare_bits(model, 2)
    assert torch.equal(model.bns[0].bns["2"].running_mean, model.bns[0].bns["32"].running_mean)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_prepare_bits_reinitialises_steps_from_data():
    act = QuantAct()
    set_bits(act, 2)
    act(torch.tensor([0.0, 0.3]))
    first = act.astep.steps["2"].item()
    prepare_bits(act, 2)
    act(torch.tensor([0.0, 3.0]))
    assert act.astep.steps["2"].item() == pytest.approx(10 * first)


def test_a_step_that_crossed_zero_quantizes_like_its_magnitude():
    x = torch.tensor([-0.3, -0.1, 0.0, 0.12, 0.5])
    pos = fake_quant(x, torch.tensor(0.1), *weight_range(3))
    assert torch.equal(fake_quant(x, torch.tensor(-0.1), *weight_range(3)), pos)


def test_a_frozen_step_gives_the_same_input_gradient_and_no_step_gradient():
    # An attack freezes the parameters (utils.input_gradients_only): the quantizer then skips LSQ's step term
    x = torch.tensor([0.71, 3.0, -1.0, 0.26])
    grads = []
    for trainable in (True, False):
        step = torch.tensor(0.1, requires_grad=trainable)
        xi = x.clone().requires_grad_(True)
        (fake_quant(xi, step, *act_range(4)) * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
        grads.append(xi.grad)
        assert (step.grad is not None) == trainable
    assert grads[0].tolist() == grads[1].tolist() == [1.0, 0.0, 0.0, 4.0]
