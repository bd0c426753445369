"""Config hashing, atomic writes, checksummed checkpoints and the model cache."""
import dataclasses
import fractions

import pytest
import torch

from qadtr_core import artifacts, zoo
from qadtr_core.artifacts import (
    CorruptArtifact,
    artifact_key,
    atomic_write_bytes,
    config_hash,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from qadtr_core.profiles import get_profile
from qadtr_core.testing import synthetic_cifar
from qadtr_core.train import TrainConfig

TINY = TrainConfig(arch="smallcnn", epochs=1, lr=0.05, batch_size=32, n_train=64, profile="test")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"


def test_hash_is_stable_and_sees_every_field():
    assert config_hash(TINY) == config_hash(dataclasses.replace(TINY))
    assert config_hash(TINY) != config_hash(dataclasses.replace(TINY, seed=1))
    child = dataclasses.replace(TINY, bits=4, init=TINY)
    assert config_hash(child) != config_hash(dataclasses.replace(child, init=dataclasses.replace(TINY, lr=0.1)))
    assert len(config_hash(TINY)) == 16


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "a" / "x.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]


def test_checkpoint_round_trip_and_truncation(tmp_path):
    path = tmp_path / "m.pt"
    state = {"w": torch.arange(6.0).view(2, 3), "n": torch.tensor(3)}
    save_tensors(path, state)
    back = load_tensors(path)
    assert torch.equal(back["w"], state["w"])
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CorruptArtifact, match="checksum mismatch"):
        load_tensors(path)
    (tmp_path / "m.pt.sha256").unlink()
    with pytest.raises(CorruptArtifact, match="no checksum"):
        load_tensors(path)


def test_checkpoints_refuse_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    save_tensors(path, {"obj": fractions.Fraction(1, 3)})
    with pytest.raises(CorruptArtifact, match="unreadable"):
        load_tensors(path)  # weights_only=True refuses arbitrary objects


def test_json_round_trip_and_corruption(tmp_path):
    write_json(tmp_path / "r.json", {"config": TINY, "acc": 0.5})
    back = read_json(tmp_path / "r.json")
    assert back["config"]["arch"] == "smallcnn" and back["config"]["__type__"] == "TrainConfig"
    (tmp_path / "r.json").write_text('{"acc": 0.')
    with pytest.raises(CorruptArtifact):
        read_json(tmp_path / "r.json")


def test_get_or_train_caches_and_rebuilds_a_corrupt_checkpoint(cache, monkeypatch):
    data = synthetic_cifar(64, 16)
    first = zoo.get_or_train(TINY, data, progress=False)
    assert first.record["config_hash"] == artifact_key("models", TINY) != config_hash(TINY)  # versioned key
    assert first.record["provenance"]["commit"]  # every artifact names the commit that built it
    assert {"profile", "seed", "bits", "train_seconds", "provenance"} <= set(first.record)

    def no_training(*a, **k):
        raise AssertionError("a cached model was retrained")

    monkeypatch.setattr(zoo, "train", no_training)
    again = zoo.get_or_train(TINY, data, progress=False)
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    ckpt = artifacts.artifact_dir("models", TINY) / "model.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(AssertionError, match="retrained"):
        zoo.get_or_train(TINY, data, progress=False)  # a truncated checkpoint is rebuilt, never loaded


def test_qat_config_is_fine_tuned_from_full_precision():
    p = get_profile("quick")
    q = zoo.qat_config(p, 2)
    assert q.init == zoo.fp_config(p) and q.bits == 2 and q.epochs == p.qat_epochs_for(2) == 4
    assert zoo.qat_config(p, 32) == zoo.fp_config(p)
    with pytest.raises(ValueError, match="bit-width 1"):
        zoo.qat_config(p, 1)


def test_qat_model_is_trained_at_its_bits_and_ptq_calibrates(cache):
    data = synthetic_cifar(64, 16)
    q = zoo.get_or_train(dataclasses.replace(TINY, bits=2, init=TINY), data, progress=False)
    assert q.model.qadtr_bits == 2 and bool(q.model.bns[1].ready[0])
    fp = zoo.get_or_train(TINY, data, progress=False)
    ptq = zoo.post_training_quantize(fp, 4, data, n_calib=32)
    assert ptq.record["method"] == "ptq" and ptq.model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_cached_tensors_computes_once_and_recomputes_when_corrupt(cache):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(3.0)}

    key = {"attack": "demo", "seed": 0}
    assert torch.equal(artifacts.cached_tensors("demo", key, compute)["x"], torch.arange(3.0))
    artifacts.cached_tensors("demo", key, compute)
    assert len(calls) == 1
    path = artifacts.artifact_dir("demo", key) / "tensors.pt"
    path.write_bytes(b"broken")
    artifacts.cached_tensors("demo", key, compute)
    assert len(calls) == 2


def test_result_tables_round_trip_with_provenance(cache):
    import pandas as pd

    df = pd.DataFrame({"bits": [32, 4], "accuracy": [0.9, 0.85]})
    artifacts.save_table("00_demo", "smoke", "acc", df, {"n": 200, "seed": 0, "wall_seconds": 1.5})
    back, meta = artifacts.load_table("00_demo", "smoke", "acc")
    assert back.equals(df) and meta["n"] == 200 and meta["profile"] == "smoke" and "torch" in meta["provenance"]
    # a run beside the book (another seed) writes its per-seed copy and leaves the book's table as it was
    other = df.assign(accuracy=[0.5, 0.4])
    artifacts.save_table("00_demo", "smoke", "acc", other, {"n": 200, "seed": 1, "wall_seconds": 2.0}, plain=False)
    assert artifacts.load_table("00_demo", "smoke", "acc")[0].equals(df)
    assert artifacts.load_table("00_demo", "smoke", "acc", seed=1)[0].equals(other)
    with pytest.raises(ValueError, match="needs meta"):
        artifacts.save_table("00_demo", "smoke", "acc", other, {"n": 200}, plain=False)


def test_baseline_models_names_and_bits(cache, monkeypatch):
    data = synthetic_cifar(64, 16)
    profile = dataclasses.replace(get_profile("smoke"), n_train=64, fp_epochs=1, qat_epochs=1, batch_size=32, n_calib=32)
    models = zoo.baseline_models(profile, [4, 2], [4], data=data, progress=False)
    assert list(models) == ["FP", "4b", "2b", "PTQ 4b"]
    assert [b for _, b in models.values()] == [32, 4, 2, 4]
    assert models["2b"][0].record["config_hash"] != models["4b"][0].record["config_hash"]
