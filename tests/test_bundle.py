"""Artifact bundles: a profile's cache packed, verified and unpacked; bad archives refused, cache untouched."""
import dataclasses
import io
import json
import tarfile

import pandas as pd
import pytest
import torch

from qadtr_core import artifacts, zoo
from qadtr_core.build.bundle import MANIFEST, BundleError, export_bundle, import_bundle, profile_entries
from qadtr_core.testing import synthetic_cifar
from qadtr_core.train import TrainConfig

TINY = TrainConfig(arch="smallcnn", epochs=1, lr=0.05, batch_size=32, n_train=64, profile="test")


@pytest.fixture
def built(tmp_path, monkeypatch):
    """A cache with one model of profile "test", a patch keyed on it, a result table, and unrelated things."""
    root = tmp_path / "artifacts"
    monkeypatch.setenv("QADTR_ARTIFACTS", str(root))
    data = synthetic_cifar(64, 16)
    tm = zoo.get_or_train(TINY, data, progress=False)
    model_key = tm.record["config_hash"]
    artifacts.cached_tensors("patches", {"model": model_key, "attack": "demo"}, lambda: {"p": torch.rand(3, 4, 4)})
    artifacts.cached_tensors("patches", {"model": "0123456789abcdef", "attack": "demo"}, lambda: {"p": torch.zeros(1)})
    artifacts.save_table("00_demo", "test", "acc", pd.DataFrame({"bits": [32], "acc": [0.5]}), {"n": 16})
    artifacts.save_table("00_demo", "smoke", "acc", pd.DataFrame({"bits": [32], "acc": [0.4]}), {"n": 16})
    other = zoo.get_or_train(dataclasses.replace(TINY, profile="other"), data, progress=False)
    return root, data, tm, other


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_profile_is_its_models_what_was_built_from_them_and_its_tables(built):
    root, _, tm, other = built
    entries = profile_entries("test", root)
    patch = artifacts.artifact_dir("patches", {"model": tm.record["config_hash"], "attack": "demo"}).name
    assert entries == sorted([f"models/{tm.record['config_hash']}", f"patches/{patch}", "results/00_demo/test"])
    assert f"models/{other.record['config_hash']}" not in entries


def test_round_trip_is_byte_identical_and_the_model_predicts_the_same(built, tmp_path, monkeypatch):
    root, data, tm, _ = built
    archive = export_bundle("test", tmp_path / "test.tar.gz", root)
    fresh = tmp_path / "elsewhere"
    summary = import_bundle(archive, fresh)
    assert summary["profile"] == "test" and len(summary["added"]) == 3 and summary["files"] == len(_files(fresh))
    before, after = _files(root), _files(fresh)
    assert after and all(before[f] == b for f, b in after.items())
    assert not [p for p in fresh.iterdir() if p.name.startswith(".")]  # the staging folder is gone
    monkeypatch.setattr(zoo, "train", lambda *a, **k: pytest.fail("a cached model was retrained"))
    original = zoo.get_or_train(TINY, data, progress=False)  # as the exporting machine loads it
    monkeypatch.setenv("QADTR_ARTIFACTS", str(fresh))
    again = zoo.get_or_train(TINY, data, progress=False)
    x = data.test_subset(16)[0]
    with torch.no_grad():
        assert torch.equal(again.model(x), original.model(x))
        assert torch.allclose(again.model(x), tm.model.eval()(x), atol=1e-5)
    again_summary = import_bundle(archive, fresh)  # importing twice changes nothing
    assert again_summary["added"] == [] and len(again_summary["unchanged"]) == 2


def test_a_truncated_archive_is_refused_and_the_cache_is_untouched(built, tmp_path):
    root, *_ = built
    archive = export_bundle("test", tmp_path / "test.tar.gz", root)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    target = tmp_path / "target"
    import_bundle(export_bundle("test", tmp_path / "plain.tar", root), target)
    (target / "models" / "marker.txt").write_text("mine")
    before = _files(target)
    with pytest.raises(BundleError, match=r"cut\.tar\.gz: truncated or corrupt archive.*was not changed"):
        import_bundle(cut, target)
    assert _files(target) == before and not [p for p in target.iterdir() if p.name.startswith(".")]
    plain_cut = tmp_path / "cut.tar"  # an uncompressed archive cut short: the last files are missing
    plain_cut.write_bytes((tmp_path / "plain.tar").read_bytes()[:3000])
    with pytest.raises(BundleError, match="cut.tar"):
        import_bundle(plain_cut, target)
    assert _files(target) == before


def _rewrite(src, dst, change):
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin:
            data = tin.extractfile(m).read()
            data, m = change(m, data)
            if m is not None:
                m.size = len(data)
                tout.addfile(m, io.BytesIO(data))


def test_a_tampered_or_incomplete_archive_is_refused(built, tmp_path):
    root, *_ = built
    archive = export_bundle("test", tmp_path / "test.tar", root)
    target = tmp_path / "target"
    target.mkdir()

    def flip_weights(m, data):
        return (data[:-1] + bytes([data[-1] ^ 1]), m) if m.name.endswith("model.pt") else (data, m)

    _rewrite(archive, tmp_path / "tampered.tar", flip_weights)
    with pytest.raises(BundleError, match=r"tampered\.tar: refused: member 'models/.*model\.pt' does not match its checksum"):
        import_bundle(tmp_path / "tampered.tar", target)

    _rewrite(archive, tmp_path / "partial.tar", lambda m, d: (d, None if m.name.endswith(".csv") else m))
    with pytest.raises(BundleError, match="missing .a partial archive"):
        import_bundle(tmp_path / "partial.tar", target)

    def escape(m, data):
        if m.name.endswith(".csv"):
            m.name = "../evil.csv"
        return data, m

    _rewrite(archive, tmp_path / "escape.tar", escape)
    with pytest.raises(BundleError, match="not listed in the manifest"):
        import_bundle(tmp_path / "escape.tar", target)

    def bad_manifest(m, data):
        return (json.dumps({"format": "something else"}).encode(), m) if m.name == MANIFEST else (data, m)

    _rewrite(archive, tmp_path / "alien.tar", bad_manifest)
    with pytest.raises(BundleError, match="not a qadtr artifact bundle"):
        import_bundle(tmp_path / "alien.tar", target)
    assert list(target.iterdir()) == [] and not (tmp_path / "evil.csv").exists()
    with pytest.raises(BundleError, match="no such archive"):
        import_bundle(tmp_path / "absent.tar", target)


def test_nothing_to_export_is_an_error(tmp_path):
    with pytest.raises(BundleError, match="no models or results of profile 'quick'"):
        export_bundle("quick", tmp_path / "q.tar", tmp_path / "empty")
