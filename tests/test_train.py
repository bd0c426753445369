"""The training loop: the loss goes down, and an interrupted run resumes to the same weights."""
import dataclasses

import pytest
import torch

from qadtr_core.models import build_model
from qadtr_core.profiles import get_profile
from qadtr_core.testing import synthetic_cifar
from qadtr_core.train import TrainConfig, standard_loss, train

CFG = TrainConfig(arch="smallcnn", epochs=2, lr=0.05, batch_size=32, n_train=96, profile="test")


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("smallcnn")


def test_loss_goes_down_on_a_tiny_run():
    data = synthetic_cifar(256, 16)
    hist = train(_model(), data, dataclasses.replace(CFG, epochs=4, n_train=256), progress=False)
    assert hist[-1]["loss"] < 0.8 * hist[0]["loss"]


@pytest.mark.parametrize("bits", [32, 2])
def test_interrupted_training_resumes_to_the_same_weights(tmp_path, bits):
    data = synthetic_cifar(96, 8)
    cfg = dataclasses.replace(CFG, bits=bits, schedule="cosine" if bits != 32 else "onecycle")
    reference = _model()
    train(reference, data, cfg, progress=False)

    calls = {"n": 0}
    base = standard_loss()

    def dies_in_second_epoch(model, x, y, step):
        calls["n"] += 1
        assert step == calls["n"] - 1  # the loop hands out the global step
        if calls["n"] == 4:  # 3 steps per epoch: the 4th step is in epoch 2
            raise KeyboardInterrupt
        return base(model, x, y, step)

    ckpt = tmp_path / "state.pt"
    resumed = _model()
    with pytest.raises(KeyboardInterrupt):
        train(resumed, data, cfg, checkpoint=ckpt, loss_fn=dies_in_second_epoch, progress=False)
    fresh = _model(seed=123)  # a new process: different init, weights come from the checkpoint
    hist = train(fresh, data, cfg, checkpoint=ckpt, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2]
    for (name, a), b in zip(reference.state_dict().items(), fresh.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="bit-width 33"):
        TrainConfig(arch="smallcnn", epochs=1, lr=0.1, bits=33)
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(arch="smallcnn", epochs=1, lr=0.1, schedule="step")
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(arch="smallcnn", epochs=0, lr=0.1)


def test_unknown_profile_and_architecture():
    with pytest.raises(ValueError, match=r"unknown profile 'fast'; allowed: smoke, quick, paper"):
        get_profile("fast")
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        build_model("vgg")


@pytest.mark.parametrize("arch,params", [("resnet20", 0.27e6), ("resnet56", 0.85e6)])
def test_resnet_sizes_match_he_et_al(arch, params):
    m = build_model(arch)
    n = sum(p.numel() for name, p in m.named_parameters() if "steps" not in name and "bns." not in name)
    n += sum(p.numel() for name, p in m.named_parameters() if "bns.32." in name)
    assert abs(n - params) / params < 0.05
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
