"""A content-addressed artifact cache: atomic writes, provenance, and safe loading.

Every artifact lives under ``<root>/<kind>/<config hash>/``. ``root`` is ``$QADTR_ARTIFACTS`` or
``artifacts/`` in the working directory. A checkpoint is trusted only when its ``.sha256`` sidecar
matches its bytes, so a truncated or half-written file is detected and rebuilt, never loaded; tensors
are read with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ENV_VAR = "QADTR_ARTIFACTS"
log = logging.getLogger(__name__)

# The cache key of every artifact includes the version of its kind. Bump a kind's version whenever a
# library change alters what it produces (a quantizer fix changes trained models; an attack change
# changes crafted patches), so that nothing built before the change is silently reused.
# Kinds that depend on models (patches, adversarial sets) key on the model's versioned id as well.
CACHE_VERSIONS: dict[str, int] = {"models": 2}
DEFAULT_CACHE_VERSION = 2


def cache_version(kind: str) -> int:
    """The current cache version of artifacts of ``kind``."""
    return CACHE_VERSIONS.get(kind, DEFAULT_CACHE_VERSION)


class CorruptArtifact(RuntimeError):
    """A cached file exists but cannot be trusted (truncated, edited or unreadable)."""


def artifact_root() -> Path:
    """The cache root: ``$QADTR_ARTIFACTS``, else ``artifacts/`` in the working directory.

    It never depends on where the package is installed; the Makefile sets ``QADTR_ARTIFACTS`` to the
    checkout's ``artifacts/`` (the notebooks run with their own folder as working directory).
    """
    return Path(os.environ.get(ENV_VAR) or Path.cwd() / "artifacts")


def canonical(obj: Any) -> Any:
    """A JSON-ready, order-stable view of dataclasses, tuples and plain values (for hashing)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__, **{f.name: canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return obj  # json keeps 1.0 distinct from 1
    return obj


def config_hash(config: Any) -> str:
    """A 16-hex-digit hash of a config's full content (type name included)."""
    text = json.dumps(canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def artifact_key(kind: str, config: Any) -> str:
    """The cache key of ``config`` under ``kind``: the hash of the config and the kind's cache version."""
    return config_hash({"cache_version": cache_version(kind), "key": config})


def artifact_dir(kind: str, config: Any) -> Path:
    """``<root>/<kind>/<key>`` (see :func:`artifact_key`), created if missing."""
    d = artifact_root() / kind / artifact_key(kind, config)
    d.mkdir(parents=True, exist_ok=True)
    return d


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``<directory>/.lock`` for the block (``fcntl.flock``).

    Builders of one artifact (training a model, computing cached tensors) take it, then look at the
    cache again before computing: of two processes or cluster workers after the same artifact, one
    builds it and the other loads the result. ``flock`` works across processes on one machine and on
    shared filesystems that support it (NFSv4, Lustre and BeeGFS do; check yours).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(canonical(obj), indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    """Read JSON written by :func:`write_json`; a truncated or invalid file raises :class:`CorruptArtifact`."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise CorruptArtifact(f"{path}: invalid JSON ({e}); delete it to rebuild") from e


def save_tensors(path: Path, obj: Any) -> None:
    """Save a state dict (or any tensors-only structure) atomically with a SHA-256 sidecar."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_bytes(Path(str(path) + ".sha256"), hashlib.sha256(data).hexdigest().encode())


def load_tensors(path: Path) -> Any:
    """Load what :func:`save_tensors` wrote, after checking its hash; ``weights_only=True``.

    Raises ``FileNotFoundError`` if it is absent and :class:`CorruptArtifact` if it cannot be trusted.
    """
    path = Path(path)
    data = path.read_bytes()
    sidecar = Path(str(path) + ".sha256")
    if not sidecar.exists():
        raise CorruptArtifact(f"{path}: no checksum file {sidecar.name}; the write was interrupted, rebuild it")
    if hashlib.sha256(data).hexdigest() != sidecar.read_text().strip():
        raise CorruptArtifact(f"{path}: checksum mismatch (truncated or modified); delete it to rebuild")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for unreadable archives
        raise CorruptArtifact(f"{path}: unreadable checkpoint ({e})") from e


def git_commit() -> str:
    """The commit this library runs from: one definition for artifacts and the book's stamp
    (:func:`qadtr_core.build.bookconfig.source_commit`, torch-free, which ignores the book's own outputs)."""
    from .build.bookconfig import source_commit

    return source_commit()


def provenance() -> dict[str, str]:
    """Library versions, commit and machine, stored with every result."""
    import numpy

    return {
        "commit": git_commit(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}",
    }


def save_table(chapter: str, profile: str, name: str, table: Any, meta: dict[str, Any], plain: bool = True) -> Path:
    """Write a result table (a pandas DataFrame) as CSV plus a JSON record of its provenance.

    Files go to ``<root>/results/<chapter>/<profile>/<name>.{csv,json}``; the book and the scorecard
    read them from there. ``meta`` should hold at least n, seed, bit-widths and wall time. ``plain=False``
    writes the per-seed copy only (a run beside the book's, e.g. the defenses chapter's second seed, leaves
    the book's own tables as they are); it needs ``meta["seed"]``.
    """
    if not plain and "seed" not in meta:
        raise ValueError(f"save_table({chapter!r}, {name!r}, plain=False) needs meta['seed']: it writes the seed's copy only")
    d = artifact_root() / "results" / chapter / profile
    record = {"chapter": chapter, "profile": profile, "name": name, **meta, "provenance": provenance()}
    csv = table.to_csv(index=False).encode()
    # the plain copy, and a per-seed copy so that runs of several seeds can be aggregated (jobs.seed_table)
    folders = ([d] if plain else []) + ([d / "seeds" / str(int(meta["seed"]))] if "seed" in meta else [])
    for f in folders:
        atomic_write_bytes(f / f"{name}.csv", csv)
        write_json(f / f"{name}.json", record)
    return folders[0] / f"{name}.csv"


def load_table(chapter: str, profile: str, name: str, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Read what :func:`save_table` wrote: ``(DataFrame, record)``; with ``seed``, that seed's copy."""
    import pandas as pd

    d = artifact_root() / "results" / chapter / profile
    if seed is not None:
        d = d / "seeds" / str(int(seed))
    return pd.read_csv(d / f"{name}.csv"), read_json(d / f"{name}.json")


def cached_tensors(kind: str, key: Any, compute: Callable[[], Any]) -> Any:
    """Return the tensors cached under ``(kind, key)``, computing and saving them on a miss.

    ``key`` must hold everything the result depends on (configs, the source model's hash); a corrupt
    entry is recomputed. Computing happens under :func:`file_lock`, so that concurrent processes
    compute an entry once.
    """
    d = artifact_dir(kind, key)
    path = d / "tensors.pt"

    def cached() -> Any:
        if path.exists():
            try:
                return load_tensors(path)
            except CorruptArtifact as e:
                log.warning("recomputing %s/%s: %s", kind, d.name, e)
        return None

    if (obj := cached()) is not None:
        return obj
    import time

    with file_lock(d):
        if (obj := cached()) is not None:  # another process computed it while we waited
            return obj
        t0 = time.perf_counter()
        obj = compute()
        save_tensors(path, obj)
        write_json(d / "record.json", {"key": key, "config_hash": d.name, "cache_version": cache_version(kind),
                                       "seconds": time.perf_counter() - t0,
                                       "provenance": provenance()})
    return obj
