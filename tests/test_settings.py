"""The artifact and data folders come from settings or the working directory, never the install path."""
import pytest

from qadtr_core import artifacts
from qadtr_core import data as data_mod


def test_artifact_root_follows_the_setting_else_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("QADTR_ARTIFACTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert artifacts.artifact_root() == tmp_path / "artifacts"
    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path / "elsewhere"))
    assert artifacts.artifact_root() == tmp_path / "elsewhere"


def test_data_folder_follows_the_setting_else_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("QADTR_CIFAR10", raising=False)
    monkeypatch.delenv("QADTR_DATA_DIR", raising=False)
    monkeypatch.delenv("QADTR_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setattr(data_mod, "_CACHE", {})
    monkeypatch.chdir(tmp_path)
    assert data_mod.data_dir() == tmp_path / "data"
    monkeypatch.setenv("QADTR_DATA_DIR", str(tmp_path / "cifar"))
    assert data_mod.data_dir() == tmp_path / "cifar"
    with pytest.raises(data_mod.DataError, match="cifar"):
        data_mod.load_cifar10()
