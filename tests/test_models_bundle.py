"""The models bundle: the graph's models in float16, restored to float32; stale or corrupt bundles refused."""
import dataclasses
import json
import tarfile

import pytest
import torch

from qadtr_core import zoo
from qadtr_core.build import cli, models_bundle
from qadtr_core.build.bundle import BundleError, import_bundle
from qadtr_core.build.models_bundle import (
    compact_state,
    ensure_models,
    export_models,
    import_models,
    restore_state,
    stale_reason,
)
from qadtr_core.testing import synthetic_cifar
from qadtr_core.train import TrainConfig

TINY = TrainConfig(arch="smallcnn", epochs=1, lr=0.05, batch_size=32, n_train=64, profile="test")
OTHER = dataclasses.replace(TINY, seed=5)


@pytest.fixture
def built(tmp_path, monkeypatch):
    """A cache with two trained models; the "test" graph holds both unless a test changes it."""
    root = tmp_path / "artifacts"
    monkeypatch.setenv("QADTR_ARTIFACTS", str(root))
    data = synthetic_cifar(64, 16)
    a, b = zoo.get_or_train(TINY, data, progress=False), zoo.get_or_train(OTHER, data, progress=False)
    graph = [a.record["config_hash"], b.record["config_hash"]]
    monkeypatch.setattr(models_bundle, "graph_model_keys", lambda profile, seeds: list(graph))
    return root, data, a, b, graph


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_compact_state_halves_the_weights_and_keeps_small_tensors_exact():
    state = {"conv.weight": torch.randn(8, 3, 3, 3), "bn.running_var": torch.rand(8) * 3, "steps": torch.tensor(0.0123),
             "bn.num_batches_tracked": torch.tensor(7)}
    small = compact_state(state)
    assert small["conv.weight"].dtype == torch.float16 and small["bn.running_var"].dtype == torch.float32
    back = restore_state(small)
    assert all(back[k].dtype == v.dtype for k, v in state.items())
    assert torch.equal(back["bn.running_var"], state["bn.running_var"]) and torch.equal(back["steps"], state["steps"])
    err = (back["conv.weight"] - state["conv.weight"]).abs().max()
    assert 0 < err <= 1e-3 * state["conv.weight"].abs().max()  # rounded, but only to float16's precision


def test_round_trip_restores_float32_models_that_predict_as_before_and_are_not_retrained(built, tmp_path, monkeypatch):
    root, data, a, _, graph = built
    s = export_models("test", tmp_path / "m.tar", root=root)
    assert s["models"] == graph and s["missing"] == []
    with tarfile.open(tmp_path / "m.tar") as tar:
        names = tar.getnames()
    assert all(n == "MANIFEST.json" or n.endswith(("/model.pt", "/record.json")) for n in names)
    fresh = tmp_path / "fresh"
    summary = import_models(tmp_path / "m.tar", fresh)
    assert sorted(summary["added"]) == sorted(f"models/{k}" for k in graph)
    record = json.loads((fresh / "models" / graph[0] / "record.json").read_text())
    assert record["weights_from_bundle"]["dtype"] == "float16"
    monkeypatch.setattr(zoo, "train", lambda *a, **k: pytest.fail("a bundled model was retrained"))
    monkeypatch.setenv("QADTR_ARTIFACTS", str(fresh))
    again = zoo.get_or_train(TINY, data, progress=False)
    assert all(v.dtype == torch.float32 for v in again.model.state_dict().values() if v.is_floating_point())
    x = data.test_subset(16)[0]
    with torch.no_grad():
        assert torch.allclose(again.model(x), a.model.eval()(x), atol=2e-2)
    assert import_models(tmp_path / "m.tar", fresh)["added"] == []  # a second import changes nothing


def test_a_model_whose_config_changed_is_replaced_not_kept_beside(built, tmp_path, monkeypatch):
    root, _, a, b, graph = built
    monkeypatch.setattr(models_bundle, "graph_model_keys", lambda profile, seeds: [graph[0]])  # OTHER's config changed
    s = export_models("test", tmp_path / "m.tar", root=root)
    with tarfile.open(tmp_path / "m.tar") as tar:
        assert not [n for n in tar.getnames() if graph[1] in n] and s["models"] == [graph[0]]


def test_a_stale_bundle_is_refused_and_the_cache_untouched(built, tmp_path, monkeypatch, capsys):
    root, _, _, _, graph = built
    export_models("test", tmp_path / "m.tar", root=root)
    monkeypatch.setattr(models_bundle, "graph_model_keys", lambda profile, seeds: [graph[0]])
    target = tmp_path / "target"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    before = _files(target)
    with pytest.raises(BundleError, match=r"stale models bundle: 1 of its 2 models are not in the current configs"):
        import_models(tmp_path / "m.tar", target)
    assert _files(target) == before
    assert cli.main(["import", str(tmp_path / "m.tar"), "--root", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stale" in err and "Traceback" not in err
    with pytest.raises(BundleError):
        cli.main(["import", str(tmp_path / "m.tar"), "--root", str(target), "--debug"])


def test_a_bundle_of_other_cache_versions_is_stale(built, tmp_path):
    root, *_ = built
    export_models("test", tmp_path / "m.tar", root=root)
    manifest = models_bundle.read_manifest(tmp_path / "m.tar")
    assert stale_reason(manifest) is None
    assert "cache versions" in stale_reason({**manifest, "cache_versions": {"default": 1}})


def test_a_corrupt_bundle_is_refused_with_one_line_and_the_cache_untouched(built, tmp_path, capsys):
    root, *_ = built
    archive = export_models("test", tmp_path / "m.tar", root=root)["archive"]
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("model.pt"))
    raw = bytearray(open(archive, "rb").read())
    raw[member.offset_data + member.size // 2] ^= 0xFF  # a flipped byte inside a model's weights
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(raw))
    target = tmp_path / "target"
    with pytest.raises(BundleError, match="was not changed"):
        import_models(bad, target)
    assert not [p for p in target.rglob("*") if p.is_file()]
    assert cli.main(["import", str(bad), "--root", str(target)]) == 2
    assert cli.main(["import", str(tmp_path / "absent.tar"), "--root", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "absent.tar: no such archive" in err[1]


def test_a_corrupt_compressed_bundle_is_refused_with_one_line(built, tmp_path, capsys):
    """The committed bundle is xz-compressed: a flipped byte inside the compressed stream (the decompressor's
    own error, not a checksum mismatch) is refused the same way, the cache untouched."""
    root, *_ = built
    archive = export_models("test", tmp_path / "m.tar.xz", root=root)["archive"]
    raw = bytearray(open(archive, "rb").read())
    assert raw[:6] == b"\xfd7zXZ\x00"  # really compressed
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "bad.tar.xz"
    bad.write_bytes(bytes(raw))
    target = tmp_path / "target"
    with pytest.raises(BundleError):
        import_models(bad, target)
    assert not [p for p in target.rglob("*") if p.is_file()]
    capsys.readouterr()
    assert cli.main(["import", str(bad), "--root", str(target)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_plain_import_refuses_compact_weights(built, tmp_path):
    root, *_ = built
    export_models("test", tmp_path / "m.tar", root=root)
    with pytest.raises(BundleError, match="models bundle with compact weights"):
        import_bundle(tmp_path / "m.tar", tmp_path / "target")


def test_ensure_imports_only_what_is_missing_and_only_for_its_profile(built, tmp_path, capsys):
    root, _, _, _, graph = built
    export_models("test", tmp_path / "m.tar", root=root)
    target = tmp_path / "target"
    assert ensure_models(tmp_path / "m.tar", "smoke", target) is None  # another profile's bundle
    assert not target.exists() or not any(target.rglob("model.pt"))
    assert len(ensure_models(tmp_path / "m.tar", "test", target)["added"]) == 2
    assert ensure_models(tmp_path / "m.tar", "test", target) is None  # nothing missing now
    import shutil

    shutil.rmtree(target / "models" / graph[1])
    cli.main(["import", "--missing-only", "--profile", "smoke", str(tmp_path / "m.tar"), "--root", str(target)])
    assert not (target / "models" / graph[1]).exists()
    assert cli.main(["import", str(tmp_path / "m.tar"), "--root", str(target)]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert "profile test" in out and "1 entries added, 0 replaced, 1 unchanged" in out


def test_the_size_cap_refuses_and_writes_nothing(built, tmp_path):
    root, *_ = built
    with pytest.raises(BundleError, match="over the cap"):
        export_models("test", tmp_path / "m.tar", root=root, max_bytes=1000)
    assert not (tmp_path / "m.tar").exists()
    # the cap is on the compressed file a repository holds, and an archive over it leaves the old one as it was
    old = export_models("test", tmp_path / "m.tar.xz", root=root)
    size = old["bytes"]
    assert size < sum(len(b) for b in _member_bytes(tmp_path / "m.tar.xz"))  # xz really shrinks it
    before = (tmp_path / "m.tar.xz").read_bytes()
    # (half the size, not size - 1: the manifest's creation time and the members' mtimes make two exports of
    # the same models differ by a few compressed bytes, so a cap of size - 1 could let the second one through)
    with pytest.raises(BundleError, match="over the cap"):
        export_models("test", tmp_path / "m.tar.xz", root=root, max_bytes=size // 2)
    assert (tmp_path / "m.tar.xz").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()
                                                                     if p.name.endswith(".xz")) == ["m.tar.xz"]


def _member_bytes(archive):
    with tarfile.open(archive) as tar:
        return [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]


def test_a_build_rewrites_the_bundle_after_every_model(tmp_path, monkeypatch):
    """`qadtr build --bundle`: a long CPU build leaves a bundle holding every model finished so far."""
    root = tmp_path / "artifacts"
    monkeypatch.setenv("QADTR_ARTIFACTS", str(root))
    from qadtr_core.build import jobs
    from qadtr_core.data import ENV_VAR

    data = synthetic_cifar(64, 16)
    monkeypatch.setattr("qadtr_core.data.load_cifar10", lambda *a, **k: data)
    graph = jobs.build_graph("smoke", configs={"tiny": [TINY, OTHER]})
    monkeypatch.setattr(jobs, "build_graph", lambda *a, **k: graph)
    monkeypatch.setattr(models_bundle, "graph_model_keys", lambda profile, seeds: list(graph))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert cli.main(["build", "--profile", "smoke", "--device", "cpu", "--models-only",
                     "--bundle", str(tmp_path / "m.tar")]) == 0
    assert sorted(e.split("/")[1] for e in models_bundle.read_manifest(tmp_path / "m.tar")["entries"]) == sorted(graph)
    # The cache holds the bundle's weights (float16-rounded), so a model fine-tuned from another starts from what
    # a user of the bundle gets: a fresh import elsewhere gives the same tensors.
    import_models(tmp_path / "m.tar", tmp_path / "fresh")
    for key in graph:
        cached = torch.load(root / "models" / key / "model.pt", weights_only=True)
        fresh = torch.load(tmp_path / "fresh" / "models" / key / "model.pt", weights_only=True)
        assert cached.keys() == fresh.keys() and all(torch.equal(cached[k], fresh[k]) for k in cached)


def test_the_committed_bundle_is_current_small_and_intact(tmp_path):
    """The bundle the repository ships: under the cap, of the quick profile, every model in the current
    configs (not stale), every file matching its checksum (a real import into an empty cache)."""
    from pathlib import Path

    archive = Path(__file__).resolve().parents[1] / models_bundle.DEFAULT_ARCHIVE
    assert archive.is_file(), f"{archive} is missing: `make models-bundle` writes it"
    assert archive.stat().st_size <= models_bundle.MAX_BYTES
    manifest = models_bundle.read_manifest(archive)
    assert manifest["profile"] == "quick" and manifest["kind"] == "models" and manifest["entries"]
    assert stale_reason(manifest) is None
    summary = import_models(archive, tmp_path / "cache")
    assert len(summary["added"]) == len(manifest["entries"])


def test_a_restored_quantized_model_computes_exactly_what_the_original_did():
    """The bundle's float16 weights never move a weight to another grid level: at every width a model
    learned a step for, the restored model's logits equal the original's bit for bit (a first version
    that also rounded the per-channel steps changed 100 of 1,000 predictions of a 2-bit ResNet-20)."""
    from qadtr_core.build.models_bundle import EXACT_INDEX
    from qadtr_core.models import build_model
    from qadtr_core.quant import set_bits
    from qadtr_core.train import train

    torch.manual_seed(0)
    data = synthetic_cifar(64, 16)
    model = build_model("smallcnn")
    for b in (4, 2):
        train(model, data, dataclasses.replace(TINY, bits=b, lr=0.5, schedule="cosine"), progress=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    small = compact_state(state)
    assert all(v.dtype == torch.float32 for k, v in small.items() if "wstep.steps" in k)  # steps stay exact
    assert any(k.endswith(EXACT_INDEX) for k in small)  # some weights sat within float16 of a level boundary
    original, restored = build_model("smallcnn"), build_model("smallcnn")  # the same memory layout for both
    original.load_state_dict(state)
    restored.load_state_dict(restore_state(small))
    x = data.test_subset(16)[0]
    with torch.no_grad():
        for b in (4, 2):
            assert torch.equal(set_bits(original, b).eval()(x), set_bits(restored, b).eval()(x)), b
