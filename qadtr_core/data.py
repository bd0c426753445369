"""CIFAR-10 as uint8 tensors, found without a network, and fast batched augmentation.

Where the data comes from, in order:

1. ``source`` passed to :func:`load_cifar10`, else the environment variable ``QADTR_CIFAR10``: a
   ``.npz`` file (keys ``x_train, y_train, x_test, y_test``; uint8, NHWC) or a torchvision
   ``cifar-10-batches-py`` folder (or the folder that holds it);
2. ``cifar10-uint8.npz`` or ``cifar-10-batches-py`` in the data folder: ``$QADTR_DATA_DIR``, else
   ``data/`` in the working directory (the Makefile sets it to the checkout's ``data/``);
3. a torchvision download into the data folder, only if ``QADTR_ALLOW_DOWNLOAD=1``.

Images are kept as uint8 ``(N, 3, 32, 32)`` tensors and turned into floats in [0, 1] per batch.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ENV_VAR = "QADTR_CIFAR10"
DOWNLOAD_VAR = "QADTR_ALLOW_DOWNLOAD"
DATA_DIR_VAR = "QADTR_DATA_DIR"
DATA_DIR: Path | None = None  # an override of the data folder (tests); see data_dir()
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def data_dir() -> Path:
    """The data folder: ``$QADTR_DATA_DIR``, else ``data/`` in the working directory (not the install path)."""
    if DATA_DIR is not None:
        return Path(DATA_DIR)
    return Path(os.environ.get(DATA_DIR_VAR) or Path.cwd() / "data")


class DataError(RuntimeError):
    """CIFAR-10 could not be found or read; the message says where we looked and what to do."""


@dataclass(frozen=True)
class Cifar10:
    """The data set as uint8 tensors: images ``(N, 3, 32, 32)``, labels ``(N,)`` int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str

    def test_subset(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test images as floats in [0, 1] and their labels (the evaluation subset)."""
        if not 1 <= n <= len(self.x_test):
            raise ValueError(f"evaluation subset size {n} must be between 1 and {len(self.x_test)}")
        return to_float(self.x_test[:n]), self.y_test[:n]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]."""
    return x.float().div_(255.0)


def _check_arrays(x: np.ndarray, y: np.ndarray, name: str, where: Path) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise DataError(f"{where}: {name} images must be uint8 of shape (N, 32, 32, 3), got {x.dtype} {x.shape}")
    if y.shape != (len(x),) or y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{where}: {name} labels must be N={len(x)} integers in 0..9, got shape {y.shape}")


def _from_arrays(xtr, ytr, xte, yte, where: Path) -> Cifar10:
    _check_arrays(xtr, ytr, "train", where)
    _check_arrays(xte, yte, "test", where)

    def nchw(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(y, dtype=np.int64))

    return Cifar10(nchw(xtr), labels(ytr), nchw(xte), labels(yte), str(where))


def _load_npz(path: Path) -> Cifar10:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
            if missing:
                raise DataError(f"{path}: not a CIFAR-10 npz, missing keys {sorted(missing)}")
            return _from_arrays(z["x_train"], z["y_train"], z["x_test"], z["y_test"], path)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: the file is corrupt or truncated ({e}); copy it again") from e


def _load_batches_folder(folder: Path) -> Cifar10:
    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        f = folder / name
        try:
            with open(f, "rb") as fh:
                d = pickle.load(fh, encoding="latin1")  # torchvision's own format is a pickle
            x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            return x, np.asarray(d["labels"], dtype=np.int64)
        except FileNotFoundError as e:
            raise DataError(f"{folder}: missing {name}; a torchvision CIFAR-10 folder holds data_batch_1..5 "
                            "and test_batch") from e
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
            raise DataError(f"{f}: corrupt CIFAR-10 batch file ({e!r}); copy the folder again") from e

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    xte, yte = read("test_batch")
    return _from_arrays(np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), xte, yte, folder)


def _load_path(path: Path) -> Cifar10:
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        return _load_batches_folder(folder)
    if path.is_file():
        return _load_npz(path)
    raise DataError(f"CIFAR-10 not found at {path} (from {ENV_VAR} or the argument): no such file or folder")


_CACHE: dict[str, Cifar10] = {}


def load_cifar10(source: str | os.PathLike | None = None) -> Cifar10:
    """Load CIFAR-10 from ``source``, ``$QADTR_CIFAR10``, ``data/`` or (opt-in) a download; see module doc."""
    setting = source if source is not None else os.environ.get(ENV_VAR) or None
    folder = data_dir()
    candidates = [Path(setting).expanduser()] if setting else [folder / "cifar10-uint8.npz", folder / "cifar-10-batches-py"]
    key = str(candidates[0].resolve()) if setting else f"default:{folder.resolve()}"
    if key in _CACHE:
        return _CACHE[key]
    if setting:
        data = _load_path(candidates[0])
    else:
        found = [c for c in candidates if c.exists()]
        if found:
            data = _load_path(found[0])
        elif (opted_in := os.environ.get(DOWNLOAD_VAR) == "1"):
            import torchvision  # only on explicit opt-in

            torchvision.datasets.CIFAR10(str(folder), train=True, download=opted_in)
            data = _load_batches_folder(folder / "cifar-10-batches-py")
        else:
            raise DataError(
                "CIFAR-10 not found. Looked at: $" + ENV_VAR + " (unset), "
                + ", ".join(str(c) for c in candidates)
                + f". Set {ENV_VAR} to a cifar10-uint8.npz file or a torchvision cifar-10-batches-py folder, "
                f"put one of them in {folder} (or set {DATA_DIR_VAR}), or set {DOWNLOAD_VAR}=1 to let torchvision download it."
            )
    _CACHE[key] = data
    return data


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, batched (no per-image loop)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (n, h)
    cols = dx[:, None] + torch.arange(w)[None]  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)
    idx = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    train: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield float batches in [0, 1]; with ``train`` shuffled (by ``generator``), augmented, full batches only."""
    if train and generator is None:
        raise ValueError("training batches need a seeded torch.Generator")
    order = torch.randperm(len(x), generator=generator) if train else torch.arange(len(x))
    stop = len(x) - len(x) % batch_size if train and len(x) >= batch_size else len(x)
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size]
        xb = to_float(x[idx])
        yield (augment(xb, generator) if train else xb), y[idx]
