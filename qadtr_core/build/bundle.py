"""Artifact bundles: the cache of one profile as one checksummed tar archive.

A cache built on a GPU can serve a CPU machine, and a reader can skip training:
``export_bundle("quick", Path("quick.tar.gz"))`` packs, ``import_bundle(Path("quick.tar.gz"))`` unpacks
(``qadtr export`` / ``qadtr import`` and ``make export`` / ``make import`` call these two functions; the
models bundle the repository ships is :mod:`qadtr_core.build.models_bundle`).

What belongs to a profile (the cache layout is ``<root>/<kind>/<key>/...``, see :mod:`qadtr_core.artifacts`):

* every model (``models/<key>``) whose ``record.json`` names the profile (``profile`` or ``config.profile``);
* every other cached artifact (patches, adversarial sets, ...) whose record's ``key`` references, anywhere
  in it, the key of an artifact already selected (applied until nothing new is added);
* the result tables ``results/<chapter>/<profile>/``.

Only complete entries travel: an artifact directory without its ``record.json`` (an interrupted build) is
left out, and so are resumable training states and temporary files.

The archive holds ``MANIFEST.json`` first (format, profile, commit, cache versions and the SHA-256 and
size of every file), then the files under their paths relative to the cache root. Import refuses an
archive that is truncated, corrupt, tampered with, incomplete, or that holds anything the manifest does
not list (or any link, device or path outside the cache) with :class:`BundleError`, before anything in
the cache changes: files are extracted into a temporary folder inside the cache root, every one is
verified, and only then is each entry moved into place with ``os.replace`` (one rename per artifact
directory; result tables file by file).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import lzma
import os
import shutil
import tarfile
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from ..artifacts import CACHE_VERSIONS, DEFAULT_CACHE_VERSION, artifact_root, git_commit

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
FORMAT = "qadtr-artifact-bundle"
FORMAT_VERSION = 1
# Files that never travel: resumable training state (rebuilt or discarded) and temporary writes.
_SKIP_NAMES = ("train_state.pt", "train_state.pt.sha256")
_UNREADABLE = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


def _reason(e: BaseException) -> str:
    """Why an archive was refused: tarfile's "could not be opened" lists every compression it tried, one per
    line, and becomes one sentence; anything else is the exception's own text (the command line folds it onto
    one line, :func:`qadtr_core.build.cli.one_line`)."""
    if isinstance(e, tarfile.ReadError) and str(e).startswith("file could not be opened successfully"):
        return "not a tar archive (plain, gzip, bzip2 or xz)"
    return str(e)


class BundleError(RuntimeError):
    """An archive could not be exported or was refused on import; the message names the archive and why."""


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def _read_record(d: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads((d / "record.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def _model_profile(rec: dict[str, Any]) -> str | None:
    config = rec.get("config")
    return rec.get("profile") or (config.get("profile") if isinstance(config, dict) else None)


def profile_entries(profile: str, root: Path | None = None) -> list[str]:
    """The entries (paths relative to ``root``, POSIX style) that make up the cache of ``profile``.

    See the module doc for the selection; the list is sorted.
    """
    root = Path(root) if root is not None else artifact_root()
    records: dict[str, tuple[str, dict[str, Any]]] = {}  # "kind/key" -> (key, record)
    for kind_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []:
        if kind_dir.name == "results":
            continue
        for d in sorted(p for p in kind_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            rec = _read_record(d)
            if rec is not None:
                records[f"{kind_dir.name}/{d.name}"] = (d.name, rec)
    chosen = {e for e, (_, rec) in records.items() if e.startswith("models/") and _model_profile(rec) == profile}
    keys = {records[e][0] for e in chosen}
    while True:  # artifacts built from chosen ones (patches of a model, sets crafted from patches, ...)
        new = {e for e, (_, rec) in records.items() if e not in chosen and keys.intersection(_strings(rec.get("key")))}
        if not new:
            break
        chosen |= new
        keys |= {records[e][0] for e in new}
    results = root / "results"
    if results.is_dir():
        chosen |= {f"results/{c.name}/{profile}" for c in sorted(results.iterdir()) if (c / profile).is_dir()}
    return sorted(chosen)


def _entry_files(root: Path, entry: str) -> list[str]:
    out = []
    for p in sorted((root / entry).rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name not in _SKIP_NAMES and not p.name.startswith("."):
            out.append(p.relative_to(root).as_posix())
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar_mode(archive: Path, write: bool) -> str:
    if not write:
        return "r:*"
    name = archive.name.lower()
    if name.endswith((".tar.gz", ".tgz")):
        return "w:gz"
    if name.endswith((".tar.xz", ".txz")):
        return "w:xz"
    if name.endswith((".tar.bz2", ".tbz2")):
        return "w:bz2"
    return "w"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    tar.addfile(info, io.BytesIO(data))


def export_bundle(profile: str, archive: Path, root: Path | None = None) -> Path:
    """Pack the artifact cache of ``profile`` (models, patches, result tables) into one tar archive.

    ``archive`` is compressed by its suffix (``.tar.gz``/``.tgz``, ``.tar.xz``, ``.tar.bz2``; plain tar
    otherwise) and written atomically. ``root`` defaults to :func:`qadtr_core.artifacts.artifact_root`.
    Returns the archive's path; raises :class:`BundleError` when the cache holds nothing of ``profile``.
    """
    root = Path(root) if root is not None else artifact_root()
    archive = Path(archive)
    entries = profile_entries(profile, root)
    if not entries:
        raise BundleError(f"{archive}: nothing to export, the artifact cache at {root} holds no models or results "
                          f"of profile {profile!r}")
    files = [f for e in entries for f in _entry_files(root, e)]
    write_archive(archive, profile, entries, {f: (root / f).read_bytes() for f in files},
                  {f: (root / f).stat().st_mtime for f in files})
    log.info("exported %d entries (%d files) of profile %s to %s", len(entries), len(files), profile, archive)
    return archive


def write_archive(archive: Path, profile: str, entries: list[str], contents: dict[str, bytes],
                  mtimes: dict[str, float] | None = None, **manifest_fields: Any) -> dict[str, Any]:
    """Write ``contents`` (path relative to the cache root -> bytes) as a bundle of ``entries``, its manifest
    first (with ``manifest_fields`` added), atomically; returns the manifest."""
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "profile": profile, "commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cache_versions": {"default": DEFAULT_CACHE_VERSION, **CACHE_VERSIONS},
        "entries": entries,
        "files": {f: {"sha256": _sha256(b), "size": len(b)} for f, b in contents.items()},
        **manifest_fields,
    }
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}.", suffix=".tmp")
    os.close(fd)
    try:
        now = time.time()
        with tarfile.open(tmp, _tar_mode(archive, write=True), format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), now)
            for f, b in contents.items():
                _add_bytes(tar, f, b, (mtimes or {}).get(f, now))
        os.replace(tmp, archive)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest


def read_manifest(archive: Path) -> dict[str, Any]:
    """The manifest of ``archive`` (its first member), checked, without reading the rest; raises
    :class:`BundleError` for a missing or unreadable archive or an invalid manifest."""
    archive = Path(archive)
    if not archive.is_file():
        raise BundleError(f"{archive}: no such archive")
    try:
        with tarfile.open(archive, _tar_mode(archive, write=False)) as tar:
            member = tar.next()
            if member is None or member.name != MANIFEST or not member.isfile():
                raise ValueError(f"the first member is not {MANIFEST}")
            manifest = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
        _check_manifest(manifest)
    except (*_UNREADABLE, ValueError, KeyError, TypeError, AttributeError) as e:
        raise BundleError(f"{archive}: refused: {_reason(e)}") from e
    return manifest


def _safe_name(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name and p.parts[0] != MANIFEST


def _check_manifest(manifest: Any) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{MANIFEST} is not a qadtr artifact bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"bundle format version {manifest.get('format_version')!r}, this library reads {FORMAT_VERSION}")
    files, entries = manifest.get("files"), manifest.get("entries")
    if not isinstance(files, dict) or not isinstance(entries, list) or not files:
        raise ValueError(f"{MANIFEST} lists no files")
    for f, meta in files.items():
        if not _safe_name(f) or not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            raise ValueError(f"{MANIFEST} has an invalid file entry {f!r}")
        if not any(f.startswith(e + "/") for e in entries):
            raise ValueError(f"{MANIFEST} lists {f!r} outside its entries")
    for e in entries:
        parts = PurePosixPath(e).parts if isinstance(e, str) and _safe_name(e) else ()
        if not (len(parts) == 2 or (len(parts) == 3 and parts[0] == "results")):
            raise ValueError(f"{MANIFEST} has an invalid entry {e!r}")


def _extract_verified(archive: Path, staging: Path) -> dict[str, Any]:
    """Extract ``archive`` into ``staging``, checking every member against the manifest; returns it."""
    seen: set[str] = set()
    manifest = None
    with tarfile.open(archive, _tar_mode(archive, write=False)) as tar:
        for member in tar:
            if manifest is None:
                if member.name != MANIFEST or not member.isfile():
                    raise ValueError(f"the first member is {member.name!r}, not {MANIFEST}")
                manifest = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                _check_manifest(manifest)
                continue
            name = member.name
            if not member.isfile():
                raise ValueError(f"member {name!r} is not a regular file (links and devices are refused)")
            if name not in manifest["files"]:
                raise ValueError(f"member {name!r} is not listed in the manifest")
            if name in seen:
                raise ValueError(f"member {name!r} appears twice")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            expected = manifest["files"][name]
            if len(data) != expected.get("size", len(data)) or _sha256(data) != expected["sha256"]:
                raise ValueError(f"member {name!r} does not match its checksum (corrupt or modified)")
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            seen.add(name)
    if manifest is None:
        raise ValueError("the archive is empty")
    missing = sorted(set(manifest["files"]) - seen)
    if missing:
        raise ValueError(f"{len(missing)} file(s) listed in the manifest are missing (a partial archive), "
                         f"e.g. {missing[0]!r}")
    return manifest


def _same_tree(a: Path, b: Path) -> bool:
    fa = {p.relative_to(a).as_posix(): p for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b).as_posix(): p for p in b.rglob("*") if p.is_file() and p.name not in _SKIP_NAMES}
    return fa.keys() == fb.keys() and all(fa[k].read_bytes() == fb[k].read_bytes() for k in fa)


def import_bundle(archive: Path, root: Path | None = None,
                  prepare: Callable[[Path, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Verify and unpack an archive written by :func:`export_bundle` into the artifact cache.

    Nothing in the cache changes unless every file of the archive matches the manifest. Artifact
    directories are replaced whole (the cache is content-addressed, so an entry present already with
    the same files is left alone); result tables are replaced file by file, other tables of the same
    chapter and profile are kept. Returns the manifest's summary: ``profile``, ``commit``, ``created``,
    ``entries``, plus ``files`` (count), ``bytes``, ``added``, ``replaced`` and ``unchanged`` (entries).
    Raises :class:`BundleError` (the cache untouched) for a missing, truncated, corrupt, tampered or
    partial archive. ``prepare(staging, manifest)``, when given, runs on the verified files (extracted
    under ``staging``) before anything moves into the cache; it may rewrite them, or raise
    :class:`BundleError` to refuse the archive (the models bundle restores compact weights this way,
    :mod:`qadtr_core.build.models_bundle`).
    """
    root = Path(root) if root is not None else artifact_root()
    archive = Path(archive)
    if not archive.is_file():
        raise BundleError(f"{archive}: no such archive")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".import-"))
    try:
        try:
            manifest = _extract_verified(archive, staging / "new")
        except (*_UNREADABLE, ValueError, KeyError, TypeError, AttributeError) as e:
            kind = "truncated or corrupt archive" if isinstance(e, _UNREADABLE) else "refused"
            raise BundleError(f"{archive}: {kind}: {_reason(e)}; the artifact cache at {root} was not changed") from e
        if prepare is None and manifest.get("kind") == "models":
            raise BundleError(f"{archive}: a models bundle with compact weights: import it with `qadtr import` "
                              f"(qadtr_core.build.models_bundle.import_models); the artifact cache at {root} was not changed")
        if prepare is not None:
            prepare(staging / "new", manifest)
        current = {"default": DEFAULT_CACHE_VERSION, **CACHE_VERSIONS}
        if manifest.get("cache_versions") != current:
            warnings.warn(f"{archive} was built with cache versions {manifest.get('cache_versions')}, this library uses "
                          f"{current}: artifacts of an older version are imported but not used (their keys differ)",
                          stacklevel=2)
        added, replaced, unchanged = [], [], []
        old = staging / "old"
        for entry in manifest["entries"]:
            src, dest = staging / "new" / entry, root / entry
            if entry.startswith("results/"):
                (replaced if dest.exists() else added).append(entry)
                for f in sorted(p for p in src.rglob("*") if p.is_file()):
                    target = dest / f.relative_to(src)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(f, target)
                continue
            if dest.exists():
                if _same_tree(src, dest):
                    unchanged.append(entry)
                    continue
                aside = old / entry
                aside.parent.mkdir(parents=True, exist_ok=True)
                os.replace(dest, aside)
                replaced.append(entry)
            else:
                added.append(entry)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = {k: manifest.get(k) for k in ("profile", "commit", "created", "entries")}
    summary.update(files=len(manifest["files"]), bytes=sum(m["size"] for m in manifest["files"].values()),
                   added=added, replaced=replaced, unchanged=unchanged)
    log.info("imported %s (profile %s, commit %s) into %s: %d added, %d replaced, %d unchanged", archive,
             summary["profile"], summary["commit"], root, len(added), len(replaced), len(unchanged))
    return summary
