#!/usr/bin/env python3
"""Cut a ``.npz`` of arrays (CIFAR-10's ``cifar10-uint8.npz``) into parts of bounded size, and join them again.

Why: the GPU machine sometimes lent to this project receives the working tree per call, at most 64 MiB a
call (data included), and keeps ignored files between the calls of one session. CIFAR-10 as an npz is about
165 MiB, so it travels in parts, one part per call, and is reassembled there.

Commands::

    python scripts/cifar_parts.py split NPZ OUTDIR [--max-mib 40] [--codec auto|webp|png|lzma]
    python scripts/cifar_parts.py join OUTDIR NPZ [--compressed]

``split`` encodes every array of NPZ losslessly, writes the encoded bytes as one stream cut into
``part01.bin``, ``part02.bin``, ... (each at most ``--max-mib`` MiB) and writes ``manifest.json`` last. Image
arrays (uint8, shape ``(N, H, W, 3)``) are tiled 50 images wide, 1000 images per tile sheet, and stored as
lossless WebP (``--codec auto`` when Pillow can write WebP; else PNG; else lzma); every other array (labels,
masks, class names) is lzma-compressed raw bytes. Each encoded chunk is decoded again at once and compared
with the source rows, so ``split`` never writes a lossy part. On the shared ``cifar10-uint8.npz`` (164.7 MiB)
lossless WebP gives the smallest parts: 96.3 MiB in all, 3 parts at ``--max-mib 40`` (2 at 50), against
125.9 MiB (4 parts) for PNG and 135.8 MiB (4 parts) for lzma on the raw bytes; the original file would need 5.

The manifest names every part with its size and SHA-256, and every array with its name, shape, dtype, the
SHA-256 of its raw C-order bytes (the same definition as the ``SHA-256 of each array's raw C-order bytes``
table in the shared data's README) and where its chunks lie in the stream. It also records the size and
SHA-256 of the original npz file, for information only.

``join`` checks that every part is there (a missing one: a one-line error naming it, exit 2), checks each
part's size and SHA-256 (a bad one: a one-line error naming it, exit 2), decodes the arrays, checks each
array's SHA-256 against the manifest, writes the npz to a temporary file beside NPZ, reads it back and checks
the arrays once more, then moves it into place with ``os.replace`` (so NPZ is either absent, the old file, or
complete and verified).

What is verified is the arrays, not the file: the npz that ``join`` writes (``np.savez``, uncompressed by
default; ``--compressed`` for ``np.savez_compressed``) holds arrays whose bytes, shapes and dtypes equal the
original's, but it is not byte-identical to the original npz file (zip timestamps, compression level and
zlib version differ), so its SHA-256 differs from the file's. ``np.load(NPZ)[key]`` gives the same arrays.

How a GPU session uses it (here ``run`` is the device tool; the paths are relative to the repository root)::

    # here, once: the parts go to data/parts/ (ignored by git: ``data/*`` is in .gitignore)
    .venv/bin/python scripts/cifar_parts.py split /work/shared/data/cifar10/cifar10-uint8.npz data/parts --max-mib 40
    # on the device, one call per part, back to back:
    run(carry=["data/parts/manifest.json", "data/parts/part01.bin"], command="ls -l data/parts")
    run(carry=["data/parts/manifest.json", "data/parts/part02.bin"], command="ls -l data/parts")
    run(carry=["data/parts/manifest.json", "data/parts/part03.bin"],
        command="python3 scripts/cifar_parts.py join data/parts data/cifar10-uint8.npz"
                " && export QADTR_CIFAR10=$PWD/data/cifar10-uint8.npz && <the GPU job>")

Points to mind there:

- Name the part files in ``carry``, never the folder ``data/parts``: a carried path replaces that path on
  the machine, so carrying the folder would delete the parts sent before. A carried path missing here is
  removed there, so keep every part here until the join is done.
- Each call's tree (tracked files, untracked files git does not ignore, carried paths) must stay under
  64 MiB: ``--max-mib 40`` leaves room for the tree (a few MiB) and the manifest (about 8 KiB for CIFAR-10).
- Ignored files are kept only while the machine stays warm (about 30 s after a call); a fresh machine starts
  bare. Send the parts in consecutive calls and put the ``join`` (and the job) in the call carrying the last
  part. If the machine went back in between, ``join`` names the missing parts: send them again.
- ``QADTR_CIFAR10`` does not outlive a call: set it in every command that loads the data (the joined file at
  ``data/cifar10-uint8.npz`` is also found without it, as the data folder defaults to ``data/``).
- ``join`` needs numpy and, for WebP or PNG parts, Pillow: the device's ``python3`` has both; nothing else
  from this repository is imported, so it runs without installing the package.

Errors (missing or bad input, a missing or damaged part, an array that does not decode to its hash) are one
line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

try:  # Pillow is optional: without it, images fall back to lzma (bigger parts, same bytes)
    from PIL import Image, features
except ImportError:  # pragma: no cover - Pillow ships with matplotlib in this project's environment
    Image = None
    features = None

FORMAT = "qadtr-cifar-parts"
VERSION = 1
MANIFEST = "manifest.json"
MIB = 2**20
GRID_COLS = 50  # images per row of a tile sheet
CHUNK_IMAGES = 1000  # images per tile sheet (1600 x 640 pixels for CIFAR-10)
MAX_SIDE = 16383  # WebP's largest side
LZMA_PRESET = 6
CODECS = ("webp", "png", "lzma")


class PartsError(Exception):
    """A one-line reason why split or join cannot go on (the CLI prints it and exits with status 2)."""


def _c_order(a: np.ndarray) -> np.ndarray:
    """``a`` in C order, keeping 0-d arrays 0-d (``np.ascontiguousarray`` makes them 1-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def sha256_array(a: np.ndarray) -> str:
    """SHA-256 of an array's raw bytes in C order (the data README's definition)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    return hashlib.sha256(flat.view(np.uint8)).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def available_codecs() -> tuple[str, ...]:
    """The image codecs this Python can write and read, best (smallest parts) first."""
    out = []
    if Image is not None:
        if features.check("webp"):
            out.append("webp")
        out.append("png")
    out.append("lzma")
    return tuple(out)


def _is_image_array(a: np.ndarray) -> bool:
    return a.dtype == np.uint8 and a.ndim == 4 and a.shape[3] == 3 and 0 < a.shape[2] <= MAX_SIDE and a.shape[1] <= MAX_SIDE


def _sheet_layout(h: int, w: int, chunk_images: int) -> tuple[int, int]:
    """(images per chunk, images per sheet row) for images of h x w pixels, within WebP's side limit."""
    cols = max(1, min(GRID_COLS, MAX_SIDE // w, chunk_images))
    rows = max(1, min(-(-chunk_images // cols), MAX_SIDE // h))
    return rows * cols, cols


def _to_sheet(a: np.ndarray, cols: int) -> np.ndarray:
    n, h, w, c = a.shape
    rows = -(-n // cols)
    padded = np.zeros((rows * cols, h, w, c), np.uint8)
    padded[:n] = a
    return padded.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def _from_sheet(sheet: np.ndarray, n: int, h: int, w: int) -> np.ndarray:
    rows, cols = sheet.shape[0] // h, sheet.shape[1] // w
    return sheet.reshape(rows, h, cols, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, h, w, 3)[:n]


def _encode(codec: str, rows: np.ndarray, cols: int) -> bytes:
    if codec == "lzma":
        return lzma.compress(np.ascontiguousarray(rows).reshape(-1).view(np.uint8), preset=LZMA_PRESET)
    buf = io.BytesIO()
    img = Image.fromarray(_to_sheet(rows, cols), "RGB")
    if codec == "webp":
        img.save(buf, "WEBP", lossless=True, quality=75, method=4, exact=True)
    else:
        img.save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def _decode(codec: str, blob: bytes, count: int, shape: tuple[int, ...], dtype: np.dtype, cols: int) -> np.ndarray:
    """The ``count`` rows of an array of ``shape``/``dtype`` that ``blob`` encodes."""
    row_shape = tuple(shape[1:]) if shape else ()
    if codec == "lzma":
        raw = lzma.decompress(blob)
        out = np.frombuffer(raw, dtype=dtype)
        return out.reshape((count, *row_shape) if shape else ())
    if Image is None:
        raise PartsError(f"the parts hold {codec} images, which need Pillow (pip install pillow)")
    with Image.open(io.BytesIO(blob)) as img:
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
        sheet = np.asarray(img)
    h, w = row_shape[0], row_shape[1]
    need_rows = -(-count // cols)
    if sheet.shape != (need_rows * h, cols * w, 3):
        raise PartsError(f"a {codec} chunk decodes to {sheet.shape}, expected {(need_rows * h, cols * w, 3)}")
    return _from_sheet(sheet, count, h, w)


class _PartWriter:
    """Writes one byte stream into files part01.bin, part02.bin, ... of at most ``max_bytes`` each."""

    def __init__(self, outdir: Path, max_bytes: int):
        self.outdir, self.max_bytes = outdir, max_bytes
        self.parts: list[dict] = []
        self.offset = 0
        self._f = None
        self._h = None
        self._size = 0

    def _open(self) -> None:
        name = f"part{len(self.parts) + 1:02d}.bin"
        self.parts.append({"name": name})
        self._f = open(self.outdir / name, "wb")
        self._h = hashlib.sha256()
        self._size = 0

    def _close(self) -> None:
        if self._f is not None:
            self._f.close()
            self.parts[-1].update(size=self._size, sha256=self._h.hexdigest())
            self._f = None

    def write(self, data: bytes) -> int:
        """Append ``data``; return its offset in the stream."""
        start = self.offset
        view = memoryview(data)
        while len(view):
            if self._f is None or self._size == self.max_bytes:
                self._close()
                self._open()
            take = min(len(view), self.max_bytes - self._size)
            self._f.write(view[:take])
            self._h.update(view[:take])
            self._size += take
            self.offset += take
            view = view[take:]
        return start

    def finish(self) -> list[dict]:
        self._close()
        return self.parts


def _clear_outdir(outdir: Path, force: bool) -> None:
    old = sorted(p.name for p in outdir.glob("part*.bin")) + ([MANIFEST] if (outdir / MANIFEST).exists() else [])
    if old and not force:
        raise PartsError(f"{outdir} already holds {', '.join(old[:3])}{' ...' if len(old) > 3 else ''}; "
                         "remove them or pass --force")
    for name in old:
        (outdir / name).unlink()


def split(npz: str | os.PathLike, outdir: str | os.PathLike, max_mib: float = 40.0, codec: str = "auto",
          chunk_images: int = CHUNK_IMAGES, force: bool = False) -> dict:
    """Write the parts and ``manifest.json`` for ``npz`` into ``outdir``; return the manifest."""
    npz, outdir = Path(npz), Path(outdir)
    if not max_mib > 0:
        raise PartsError(f"--max-mib must be positive, got {max_mib}")
    max_bytes = int(max_mib * MIB)
    if max_bytes < 1:
        raise PartsError(f"--max-mib {max_mib} is under one byte")
    if chunk_images < 1:
        raise PartsError(f"--chunk-images must be at least 1, got {chunk_images}")
    usable = available_codecs()
    if codec == "auto":
        codec = usable[0]
    elif codec not in usable:
        raise PartsError(f"codec {codec} is not available here (available: {', '.join(usable)})")
    if not npz.is_file():
        raise PartsError(f"{npz}: no such file")
    try:
        archive = np.load(npz, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise PartsError(f"{npz}: cannot be read as an npz ({e})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise PartsError(f"{npz}: is a single .npy array, not an npz archive")
    outdir.mkdir(parents=True, exist_ok=True)
    _clear_outdir(outdir, force)
    writer = _PartWriter(outdir, max_bytes)
    arrays = []
    with archive:
        for key in archive.files:
            try:
                a = archive[key]
            except ValueError as e:  # object arrays need pickle, which we never use
                raise PartsError(f"{npz}: array {key} cannot be loaded without pickle ({e})") from None
            if a.dtype.hasobject:
                raise PartsError(f"{npz}: array {key} has an object dtype, which cannot be stored losslessly")
            a = _c_order(a)
            entry = {"name": key, "shape": list(a.shape), "dtype": np.lib.format.dtype_to_descr(a.dtype),
                     "sha256": sha256_array(a)}
            if codec != "lzma" and _is_image_array(a):
                per_chunk, cols = _sheet_layout(a.shape[1], a.shape[2], chunk_images)
                entry.update(codec=codec, grid_cols=cols)
                spans = [(i, min(i + per_chunk, len(a))) for i in range(0, len(a), per_chunk)]
            else:
                entry.update(codec="lzma", grid_cols=0)
                spans = [(0, len(a) if a.ndim else 1)]
            chunks = []
            for lo, hi in spans:
                rows = a[lo:hi] if a.ndim else a
                blob = _encode(entry["codec"], rows, entry["grid_cols"])
                back = _decode(entry["codec"], blob, hi - lo, a.shape, a.dtype, entry["grid_cols"])
                if back.shape != rows.shape or not np.array_equal(back, rows):
                    raise PartsError(f"{key}: rows {lo}..{hi} do not survive {entry['codec']} losslessly")
                chunks.append({"offset": writer.write(blob), "length": len(blob), "rows": hi - lo})
            entry["chunks"] = chunks
            arrays.append(entry)
    parts = writer.finish()
    manifest = {
        "format": FORMAT, "version": VERSION, "max_bytes": max_bytes, "stream_bytes": writer.offset,
        "source": {"file": npz.name, "size": npz.stat().st_size, "sha256": sha256_file(npz),
                   "note": "the joined npz holds the same arrays (checked by their sha256) but is not this file"},
        "parts": parts, "arrays": arrays,
    }
    tmp = outdir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, outdir / MANIFEST)
    return manifest


def read_manifest(outdir: str | os.PathLike) -> dict:
    path = Path(outdir) / MANIFEST
    if not path.is_file():
        raise PartsError(f"{path}: no manifest (run split first, or carry {MANIFEST} along with the parts)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PartsError(f"{path}: not a readable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise PartsError(f"{path}: not a {FORMAT} version {VERSION} manifest")
    try:
        for p in manifest["parts"]:
            if not (isinstance(p["name"], str) and p["name"] == Path(p["name"]).name and p["name"].startswith("part")):
                raise ValueError(f"part name {p['name']!r}")
            int(p["size"]), str(p["sha256"])
        for a in manifest["arrays"]:
            if a["codec"] not in CODECS:
                raise ValueError(f"codec {a['codec']!r}")
            np.lib.format.descr_to_dtype(a["dtype"]), tuple(a["shape"]), str(a["name"]), str(a["sha256"])
            for c in a["chunks"]:
                int(c["offset"]), int(c["length"]), int(c["rows"])
        int(manifest["stream_bytes"])
    except (KeyError, TypeError, ValueError) as e:
        raise PartsError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from None
    return manifest


def _read_parts(outdir: Path, manifest: dict) -> bytes:
    parts = manifest["parts"]
    missing = [p["name"] for p in parts if not (outdir / p["name"]).is_file()]
    if missing:
        raise PartsError(f"missing part{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                         f"(of {len(parts)}) in {outdir}")
    data = []
    for p in parts:
        blob = (outdir / p["name"]).read_bytes()
        if len(blob) != p["size"]:
            raise PartsError(f"bad part {p['name']}: {len(blob)} bytes, the manifest says {p['size']}")
        if hashlib.sha256(blob).hexdigest() != p["sha256"]:
            raise PartsError(f"bad part {p['name']}: its SHA-256 differs from the manifest's")
        data.append(blob)
    stream = b"".join(data)
    if len(stream) != manifest["stream_bytes"]:
        raise PartsError(f"the parts hold {len(stream)} bytes, the manifest says {manifest['stream_bytes']}")
    return stream


def decode_arrays(outdir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Verify the parts in ``outdir`` and return the arrays, each checked against its SHA-256."""
    outdir = Path(outdir)
    manifest = read_manifest(outdir)
    stream = _read_parts(outdir, manifest)
    out = {}
    for entry in manifest["arrays"]:
        shape, dtype = tuple(entry["shape"]), np.lib.format.descr_to_dtype(entry["dtype"])
        pieces = []
        for c in entry["chunks"]:
            blob = stream[c["offset"]:c["offset"] + c["length"]]
            try:
                pieces.append(_decode(entry["codec"], blob, c["rows"], shape, dtype, entry["grid_cols"]))
            except (OSError, ValueError, lzma.LZMAError) as e:
                raise PartsError(f"array {entry['name']}: a chunk does not decode ({e})") from None
        if not shape:
            a = pieces[0]
        elif pieces:
            a = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        else:
            a = np.empty(shape, dtype)
        a = _c_order(a.reshape(shape))
        if a.dtype != dtype or sha256_array(a) != entry["sha256"]:
            raise PartsError(f"array {entry['name']}: decoded bytes differ from the manifest's SHA-256")
        out[entry["name"]] = a
    return out


def _new_file_mode(path: Path) -> int:
    """The mode of ``path`` if it exists, else 0666 less the umask."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def join(outdir: str | os.PathLike, npz: str | os.PathLike, compressed: bool = False) -> dict[str, str]:
    """Reassemble the npz from the parts in ``outdir``, verified array by array; return {name: sha256}."""
    outdir, npz = Path(outdir), Path(npz)
    manifest = read_manifest(outdir)
    arrays = decode_arrays(outdir)
    expected = {e["name"]: e["sha256"] for e in manifest["arrays"]}
    npz.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{npz.name}.", suffix=".tmp", dir=npz.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        with np.load(tmp, allow_pickle=False) as back:
            for name, digest in expected.items():
                if sha256_array(back[name]) != digest:
                    raise PartsError(f"{tmp}: array {name} read back differs from the manifest's SHA-256")
        os.chmod(tmp, _new_file_mode(npz))  # mkstemp makes it 0600; give it the mode a plain open() would
        os.replace(tmp, npz)
    finally:
        if tmp.exists():
            tmp.unlink()
    return expected


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's default prints the usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="cifar_parts", description="Split an npz into bounded parts, or join them (see the docstring).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("split", help="write parts and manifest.json for NPZ into OUTDIR")
    s.add_argument("npz")
    s.add_argument("outdir")
    s.add_argument("--max-mib", type=float, default=40.0, help="largest part, MiB (default 40)")
    s.add_argument("--codec", choices=("auto", *CODECS), default="auto", help="image codec (default: best available)")
    s.add_argument("--chunk-images", type=int, default=CHUNK_IMAGES, help="images per encoded sheet (default 1000)")
    s.add_argument("--force", action="store_true", help="replace parts and manifest already in OUTDIR")
    j = sub.add_parser("join", help="verify the parts in OUTDIR and write NPZ")
    j.add_argument("outdir")
    j.add_argument("npz")
    j.add_argument("--compressed", action="store_true", help="write with np.savez_compressed (smaller, slower)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.command == "split":
            m = split(args.npz, args.outdir, args.max_mib, args.codec, args.chunk_images, args.force)
            sizes = [p["size"] for p in m["parts"]]
            codecs = sorted({a["codec"] for a in m["arrays"]})
            print(f"split {args.npz} into {len(sizes)} parts ({sum(sizes) / MIB:.2f} MiB, "
                  f"largest {max(sizes, default=0) / MIB:.2f} MiB; {', '.join(codecs)}) + {MANIFEST} "
                  f"in {args.outdir} in {time.perf_counter() - t0:.1f} s")
        else:
            hashes = join(args.outdir, args.npz, args.compressed)
            print(f"joined {args.outdir} into {args.npz} ({Path(args.npz).stat().st_size / MIB:.1f} MiB; "
                  f"{len(hashes)} arrays, each matching its SHA-256) in {time.perf_counter() - t0:.1f} s")
            print(f"export QADTR_CIFAR10={Path(args.npz).resolve()}")
    except (PartsError, OSError) as e:
        msg = str(e).replace("\n", " ")
        print(f"cifar_parts: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
