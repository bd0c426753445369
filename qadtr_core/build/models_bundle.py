"""The models bundle: every trained model of a profile as one small checksummed archive in the repository.

A fresh clone cannot re-execute a chapter without the models behind it, and the quick profile's models
take hours on 2 CPU cores. So the repository ships them: ``bundle/quick-models.tar.xz`` (``make
models-bundle`` writes it, ``make book`` imports it when the cache lacks one of its models).

- **What it holds**: the models of the profile's job graph (:func:`qadtr_core.build.jobs.build_graph` over the
  bundle's seeds) that the cache has, each as ``models/<key>/model.pt`` and its ``record.json``; no attack
  caches, no result tables, no training states. A model whose config changed has a new key, so rebuilding
  the bundle *replaces* it (the bundle is written whole from the current graph; a key the graph no longer
  has is never carried over).
- **Compact weights**: every convolution and linear weight (99 % of the bytes) is stored as float16;
  BatchNorm statistics, biases and quantizer steps stay float32. A weight whose float16 value would fall
  on another level of the quantization grid, at any width whose step the layer has learned, is kept
  exactly (its index and float32 value), so that every quantized forward pass of a restored model equals
  the original's; only the full-precision forward sees the float16 rounding (on the quick FP ResNet-20 it
  changes none of the first 1,000 test predictions). The archive is xz-compressed (``.tar.xz``): the
  float16 weights of a trained network and the tar's per-tensor records compress to about half (10 quick
  models: 9.5 MiB as a plain tar, 4.7 MiB as ``.tar.xz``), which leaves room under the 25 MB cap for every
  model of the quick graph. A first version that also stored the per-channel
  quantizer steps in float16 changed 7, 16, 29 and 100 of those 1,000 predictions of the 8-, 5-, 4- and
  2-bit QAT models; this one changes none. Import restores float32 tensors, writes them with
  :func:`~qadtr_core.artifacts.save_tensors` (a new checksum sidecar) and notes in the model's record that
  its weights came from the bundle. The book is executed on the restored weights, so it shows what a user
  of the bundle gets (the builder of the bundle re-imports it into their own cache before executing).
- **Refused with a one-line error, the cache untouched** (:class:`~qadtr_core.build.bundle.BundleError`): a corrupt,
  truncated or tampered archive (checked file by file against the manifest by :mod:`qadtr_core.build.bundle`),
  and a *stale* one: built with other cache versions, or holding a model whose key is not in the current
  graph of its profile (its config changed since; rebuild the bundle).
"""
from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..artifacts import CACHE_VERSIONS, DEFAULT_CACHE_VERSION, artifact_root, load_tensors, save_tensors
from ..quant import QUANT_BITS, grid_levels, weight_range
from .bundle import BundleError, import_bundle, read_manifest, write_archive

log = logging.getLogger(__name__)

KIND = "models"
WEIGHTS = "float16"
MAX_BYTES = 25_000_000  # 25 MB (issue 21): room left in the GPU machine's 64 MiB working tree, data included
DEFAULT_ARCHIVE = Path("bundle") / "quick-models.tar.xz"


EXACT_INDEX, EXACT_VALUE = ".bundle_exact_index", ".bundle_exact_value"


def _levels(w: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """The integer grid levels of weights ``w`` at ``bits``, as the quantized layers compute them."""
    return grid_levels(w, step, *weight_range(bits))


def compact_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every convolution and linear weight (floating, two or more dimensions, a key ending in
    ``weight``; the per-channel quantizer steps stay float32) as float16, except the elements whose
    float16 value would fall on another grid level at a width whose quantizer step the layer has learned:
    those are kept exactly (their flat indices and float32 values, under ``<key>.bundle_exact_index`` /
    ``_value``), so that every quantized forward pass of the restored model equals the original's."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not (v.is_floating_point() and v.dim() >= 2 and k.endswith("weight")):  # steps (C,1,1,1) stay exact
            out[k] = v
            continue
        half = v.to(torch.float16)
        out[k] = half
        prefix = k[: -len("weight")] if k.endswith("weight") else None
        init = state.get(f"{prefix}wstep.initialized") if prefix is not None else None
        if init is None:
            continue
        moved = torch.zeros(v.shape, dtype=torch.bool)
        for i, b in enumerate(QUANT_BITS):
            if bool(init[i]):
                step = state[f"{prefix}wstep.steps.{b}"]
                moved |= _levels(v, step, b) != _levels(half.to(v.dtype), step, b)
        if moved.any():
            idx = moved.flatten().nonzero()[:, 0]
            out[k + EXACT_INDEX], out[k + EXACT_VALUE] = idx.to(torch.int32), v.flatten()[idx].clone()
    return out


def restore_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 state dict of a :func:`compact_state` one (float16 tensors widened exactly, the elements
    kept exactly put back)."""
    out = {k: v.to(torch.float32) if v.dtype == torch.float16 else v for k, v in state.items()
           if not k.endswith((EXACT_INDEX, EXACT_VALUE))}
    for k in [k for k in state if k.endswith(EXACT_INDEX)]:
        key = k[: -len(EXACT_INDEX)]
        flat = out[key].flatten().clone()
        flat[state[k].long()] = state[key + EXACT_VALUE]
        out[key] = flat.reshape(out[key].shape)
    return out


def _complete(d: Path) -> bool:
    return (d / "model.pt").is_file() and (d / "record.json").is_file()


def graph_model_keys(profile: str, seeds: Iterable[int] | None = None) -> list[str]:
    """The model keys of ``profile``'s job graph over ``seeds`` (None: the default build's, each chapter at
    its own seeds; :func:`~qadtr_core.build.jobs.build_graph`), every model a chapter trains, in order."""
    from .jobs import build_graph

    return [k for k, j in build_graph(profile, None if seeds is None else tuple(seeds), models_only=True).items()
            if j.kind == "train"]


def export_models(profile: str, archive: Path, seeds: Iterable[int] | None = None, root: Path | None = None,
                  max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """Write the models bundle of ``profile`` (the graph's models over ``seeds`` that the cache holds; None:
    the default build's graph, as ``make book`` builds it).

    Returns a summary: ``archive``, ``models`` (keys packed), ``missing`` (keys of the graph not trained yet),
    ``bytes``. Raises :class:`BundleError` when the cache holds none of them or the archive would exceed
    ``max_bytes`` (nothing is written then).
    """
    root = Path(root) if root is not None else artifact_root()
    archive = Path(archive)
    seeds = None if seeds is None else tuple(sorted(set(int(s) for s in seeds)))
    keys = graph_model_keys(profile, seeds)
    have = [k for k in keys if _complete(root / "models" / k)]
    if not have:
        raise BundleError(f"{archive}: nothing to export, the artifact cache at {root} holds none of the {len(keys)} "
                          f"models of profile {profile!r} (seeds {'of the default build' if seeds is None else list(seeds)})")
    contents: dict[str, bytes] = {}
    for k in have:
        buf = io.BytesIO()  # load_tensors checks the checksum: a corrupt model is never packed
        torch.save(compact_state(load_tensors(root / "models" / k / "model.pt")), buf)
        contents[f"models/{k}/model.pt"] = buf.getvalue()
        contents[f"models/{k}/record.json"] = (root / "models" / k / "record.json").read_bytes()
    new = archive.parent / f".new-{archive.name}"  # the same suffix: the same compression
    write_archive(new, profile, [f"models/{k}" for k in have], contents, kind=KIND, weights=WEIGHTS,
                  seeds=None if seeds is None else list(seeds))
    size = new.stat().st_size
    if size > max_bytes:
        new.unlink()
        raise BundleError(f"{archive}: {len(have)} models take {size / 1e6:.1f} MB, over the cap of "
                          f"{max_bytes / 1e6:.1f} MB; nothing was written")
    os.replace(new, archive)
    missing = [k for k in keys if k not in have]
    log.info("models bundle %s: %d models of profile %s (%.1f MiB), %d of the graph not trained yet",
             archive, len(have), profile, archive.stat().st_size / 2**20, len(missing))
    return {"archive": str(archive), "models": have, "missing": missing, "bytes": archive.stat().st_size}


def stale_reason(manifest: dict[str, Any]) -> str | None:
    """Why a models bundle no longer matches this library (other cache versions, or models whose configs
    changed), or None when it is current."""
    current = {"default": DEFAULT_CACHE_VERSION, **CACHE_VERSIONS}
    if manifest.get("cache_versions") != current:
        return f"built with cache versions {manifest.get('cache_versions')}, this library uses {current}"
    keys = set(graph_model_keys(manifest["profile"], manifest.get("seeds", [0])))
    old = [e.split("/", 1)[1] for e in manifest["entries"] if e.split("/", 1)[1] not in keys]
    if old:
        return (f"{len(old)} of its {len(manifest['entries'])} models are not in the current configs of profile "
                f"{manifest['profile']!r} (e.g. {old[0]}): rebuild it with `make models-bundle`")
    return None


def _restore(staging: Path, manifest: dict[str, Any], archive: Path) -> None:
    """Widen the compact weights under ``staging`` to float32 checkpoints with sidecars; note it in each record."""
    for entry in manifest["entries"]:
        d = staging / entry
        state = torch.load(io.BytesIO((d / "model.pt").read_bytes()), map_location="cpu", weights_only=True)
        save_tensors(d / "model.pt", restore_state(state))
        record = json.loads((d / "record.json").read_text())
        record["weights_from_bundle"] = {"dtype": manifest.get("weights"), "bundle": archive.name,
                                         "bundle_commit": manifest.get("commit")}
        (d / "record.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def import_models(archive: Path, root: Path | None = None) -> dict[str, Any]:
    """Verify a models bundle, refuse it when stale, and unpack its models into the cache (float32).

    Returns :func:`~qadtr_core.build.bundle.import_bundle`'s summary. Raises :class:`BundleError`, the cache
    untouched, for a corrupt or stale bundle (see the module doc).
    """
    archive = Path(archive)
    manifest = read_manifest(archive)
    if manifest.get("kind") != KIND:
        raise BundleError(f"{archive}: not a models bundle (no kind {KIND!r} in its manifest)")
    if (why := stale_reason(manifest)) is not None:
        raise BundleError(f"{archive}: stale models bundle: {why}; the artifact cache was not changed")
    return import_bundle(archive, root, prepare=lambda staging, m: _restore(staging, m, archive))


def missing_models(manifest: dict[str, Any], root: Path | None = None) -> list[str]:
    """The models of a bundle's manifest that the cache lacks (no checkpoint or no record)."""
    root = Path(root) if root is not None else artifact_root()
    return [e for e in manifest["entries"] if not _complete(root / e)]


def ensure_models(archive: Path, profile: str, root: Path | None = None) -> dict[str, Any] | None:
    """Import ``archive`` when it is ``profile``'s models bundle and the cache lacks one of its models
    (what ``make book`` runs first). Returns the import summary, or None when there was nothing to do."""
    manifest = read_manifest(archive)
    if manifest.get("profile") != profile or manifest.get("kind") != KIND:
        log.info("%s holds the models of profile %s, not %s: nothing imported", archive, manifest.get("profile"), profile)
        return None
    if not missing_models(manifest, root):
        log.info("%s: the cache holds all %d of its models", archive, len(manifest["entries"]))
        return None
    return import_models(archive, root)
