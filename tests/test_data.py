"""Loading CIFAR-10 from an npz or a torchvision folder, clear errors, and batched augmentation."""
import pickle

import numpy as np
import pytest
import torch

from qadtr_core import data as data_mod
from qadtr_core.data import DataError, augment, batches, load_cifar10


def _arrays(n_train=12, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_train).astype(np.uint8),
            rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_test).astype(np.uint8))


def test_npz_round_trip(tmp_path):
    xtr, ytr, xte, yte = _arrays()
    path = tmp_path / "c.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    d = load_cifar10(path)
    assert d.x_train.shape == (12, 3, 32, 32) and d.x_train.dtype == torch.uint8
    assert torch.equal(d.x_train[3].permute(1, 2, 0), torch.from_numpy(xtr[3]))
    assert d.y_test.tolist() == yte.tolist()
    x, y = d.test_subset(4)
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and len(y) == 4
    assert torch.allclose(x[0] * 255, torch.from_numpy(xte[0]).permute(2, 0, 1).float())


def test_torchvision_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    xtr, ytr, xte, yte = _arrays(n_train=10)
    for i in range(5):  # torchvision's layout: rows of 3072 bytes, channel-major
        part = slice(2 * i, 2 * i + 2)
        rows = xtr[part].transpose(0, 3, 1, 2).reshape(2, -1)
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": rows, "labels": ytr[part].tolist()}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": xte.transpose(0, 3, 1, 2).reshape(len(xte), -1), "labels": yte.tolist()}, f)
    d = load_cifar10(tmp_path)  # the folder that holds cifar-10-batches-py works too
    assert torch.equal(d.x_train.permute(0, 2, 3, 1), torch.from_numpy(xtr))
    assert d.y_train.tolist() == ytr.tolist() and len(d.x_test) == 6


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="nowhere.npz"):
        load_cifar10(tmp_path / "nowhere.npz")


def test_nothing_found_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("QADTR_CIFAR10", raising=False)
    monkeypatch.delenv("QADTR_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setattr(data_mod, "DATA_DIR", tmp_path)
    monkeypatch.setattr(data_mod, "_CACHE", {})
    with pytest.raises(DataError, match=r"(?s)QADTR_CIFAR10.*cifar10-uint8.npz.*QADTR_ALLOW_DOWNLOAD=1"):
        load_cifar10()


def test_environment_setting_is_used(tmp_path, monkeypatch):
    xtr, ytr, xte, yte = _arrays(seed=3)
    path = tmp_path / "env.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    monkeypatch.setenv("QADTR_CIFAR10", str(path))
    assert load_cifar10().source == str(path)


def test_truncated_npz_is_a_clear_error(tmp_path):
    xtr, ytr, xte, yte = _arrays()
    path = tmp_path / "t.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_cifar10(path)


def test_wrong_shapes_and_keys_are_refused(tmp_path):
    xtr, ytr, xte, yte = _arrays()
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=xtr[:, :16], y_train=ytr, x_test=xte, y_test=yte)
    with pytest.raises(DataError, match=r"uint8 of shape \(N, 32, 32, 3\)"):
        load_cifar10(bad)
    nokeys = tmp_path / "nokeys.npz"
    np.savez(nokeys, images=xtr)
    with pytest.raises(DataError, match="missing keys"):
        load_cifar10(nokeys)


def test_corrupt_batch_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="corrupt CIFAR-10 batch"):
        load_cifar10(folder)


def test_augment_is_a_padded_crop_or_its_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    out = augment(x, g, pad=4)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        crops = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)
    assert not torch.equal(out, x)


def test_batches_cover_the_data():
    x = torch.randint(0, 255, (10, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(10)
    ys = torch.cat([yb for _, yb in batches(x, y, 4)])
    assert ys.tolist() == list(range(10))
    g = torch.Generator().manual_seed(1)
    train = list(batches(x, y, 4, g, train=True))
    assert len(train) == 2 and len(set(torch.cat([yb for _, yb in train]).tolist())) == 8
    with pytest.raises(ValueError, match="seeded"):
        next(batches(x, y, 4, None, train=True))
