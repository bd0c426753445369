"""scripts/cifar_parts.py: an npz cut into parts of bounded size and joined again, verified array by array."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cifar_parts.py"
_spec = importlib.util.spec_from_file_location("cifar_parts", SCRIPT)
cp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cp)

MAX_MIB = 0.05  # 52428 bytes: several parts for 300 random images


def _arrays(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x[: n // 2] //= 16  # half of them smooth-ish, so the codecs have something to compress
    return {
        "x_train": x,
        "y_train": rng.integers(0, 10, n).astype(np.uint8),
        "x_test": rng.integers(0, 256, (17, 32, 32, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 17).astype(np.uint8),
        "test_exact_mask": rng.random(17) < 0.5,
        "class_names": np.array(["airplane", "automobile", "bird"]),
        "scalar": np.array(3.5),
    }


@pytest.fixture()
def npz(tmp_path):
    path = tmp_path / "synthetic.npz"
    np.savez_compressed(path, **_arrays())
    return path


def _run(*args):
    """The CLI in a fresh interpreter (as on the device machine)."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60)


def _main(capsys, *args):
    """The CLI in this process (faster): (exit status, stdout, stderr)."""
    try:
        rc = cp.main([str(a) for a in args])
    except SystemExit as e:  # argparse's errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("codec", cp.available_codecs())
def test_round_trip_exact(tmp_path, npz, codec):
    parts = tmp_path / "parts"
    m = cp.split(npz, parts, max_mib=MAX_MIB, codec=codec, chunk_images=64)
    assert len(m["parts"]) >= 3
    assert {a["codec"] for a in m["arrays"] if a["name"].startswith("x_")} == {codec}
    out = tmp_path / "joined" / "c.npz"
    cp.join(parts, out)
    src = _arrays()
    with np.load(out, allow_pickle=False) as back:
        assert sorted(back.files) == sorted(src)
        for k, a in src.items():
            assert back[k].dtype == a.dtype and back[k].shape == a.shape and np.array_equal(back[k], a), k
    # the manifest's hashes are those of the arrays' raw C-order bytes, as the data README defines them
    for entry in m["arrays"]:
        assert entry["sha256"] == cp.sha256_array(src[entry["name"]])
    assert not list(out.parent.glob("*.tmp"))  # the temp file was moved into place
    assert out.stat().st_mode & 0o777 == cp._new_file_mode(tmp_path / "absent")  # not mkstemp's 0600


def test_size_cap_and_manifest(tmp_path, npz):
    parts = tmp_path / "parts"
    m = cp.split(npz, parts, max_mib=MAX_MIB)
    cap = int(MAX_MIB * 2**20)
    files = sorted(parts.glob("part*.bin"))
    assert [f.name for f in files] == [p["name"] for p in m["parts"]]
    assert all(f.stat().st_size <= cap for f in files)
    assert all(f.stat().st_size == cap for f in files[:-1])  # the stream is cut only at the cap
    assert sum(f.stat().st_size for f in files) == m["stream_bytes"]
    on_disk = json.loads((parts / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    x = next(a for a in on_disk["arrays"] if a["name"] == "x_train")
    assert x["shape"] == [300, 32, 32, 3] and x["dtype"] == "|u1" and len(x["sha256"]) == 64
    assert on_disk["source"]["sha256"] == cp.sha256_file(npz)


def test_flipped_byte_refused_naming_the_part(tmp_path, npz):
    parts = tmp_path / "parts"
    cp.split(npz, parts, max_mib=MAX_MIB)
    victim = parts / "part02.bin"
    blob = bytearray(victim.read_bytes())
    blob[100] ^= 0x01
    victim.write_bytes(bytes(blob))
    out = tmp_path / "c.npz"
    with pytest.raises(cp.PartsError, match="bad part part02.bin"):
        cp.join(parts, out)
    r = _run("join", parts, out)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "part02.bin" in r.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_missing_part_refused(tmp_path, npz, capsys):
    parts = tmp_path / "parts"
    m = cp.split(npz, parts, max_mib=MAX_MIB)
    (parts / "part03.bin").unlink()
    rc, _, err = _main(capsys, "join", parts, tmp_path / "c.npz")
    assert rc == 2 and err.count("\n") == 1
    assert f"missing part part03.bin (of {len(m['parts'])})" in err
    assert not (tmp_path / "c.npz").exists()


def test_tampered_manifest_hash_refused(tmp_path, npz):
    parts = tmp_path / "parts"
    cp.split(npz, parts, max_mib=MAX_MIB)
    path = parts / "manifest.json"
    m = json.loads(path.read_text())
    m["arrays"][1]["sha256"] = "0" * 64
    path.write_text(json.dumps(m))
    with pytest.raises(cp.PartsError, match=f"array {m['arrays'][1]['name']}: decoded bytes differ"):
        cp.join(parts, tmp_path / "c.npz")


def test_join_keeps_an_existing_file_on_failure(tmp_path, npz, capsys):
    parts = tmp_path / "parts"
    cp.split(npz, parts, max_mib=MAX_MIB)
    (parts / "part01.bin").write_bytes(b"junk")
    out = tmp_path / "c.npz"
    out.write_bytes(b"old")
    assert _main(capsys, "join", parts, out)[0] == 2
    assert out.read_bytes() == b"old"


@pytest.mark.parametrize("args", [
    ["split", "/nonexistent/cifar.npz", "OUT"],
    ["split", "NOT_AN_NPZ", "OUT"],
    ["split", "NPZ", "OUT", "--max-mib", "0"],
    ["split", "NPZ", "OUT", "--max-mib", "lots"],
    ["join", "/nonexistent/parts", "c.npz"],
    ["join", "BAD_MANIFEST", "c.npz"],
    ["frobnicate"],
    [],
])
def test_cli_bad_input_one_line_exit_2(tmp_path, npz, args, capsys):
    (tmp_path / "not.npz").write_bytes(b"this is not a zip file")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"format": "qadtr-cifar-parts", "version": 1, "parts": [{"name": "../x"}]}')
    subst = {"NPZ": npz, "NOT_AN_NPZ": tmp_path / "not.npz", "OUT": tmp_path / "out", "BAD_MANIFEST": bad}
    rc, out, err = _main(capsys, *[subst.get(a, a) for a in args])
    assert rc == 2, err
    assert out == "" and err.count("\n") == 1 and "error" in err, err


def test_split_refuses_a_used_outdir_without_force(tmp_path, npz):
    parts = tmp_path / "parts"
    cp.split(npz, parts, max_mib=MAX_MIB)
    with pytest.raises(cp.PartsError, match="already holds"):
        cp.split(npz, parts, max_mib=1)
    m = cp.split(npz, parts, max_mib=1, force=True)
    assert sorted(p.name for p in parts.glob("part*.bin")) == [p["name"] for p in m["parts"]]


def test_cli_round_trip(tmp_path, npz):
    parts, out = tmp_path / "parts", tmp_path / "c.npz"
    r = _run("split", npz, parts, "--max-mib", MAX_MIB)
    assert r.returncode == 0 and "parts" in r.stdout, r.stderr
    r = _run("join", parts, out)
    assert r.returncode == 0, r.stderr
    assert f"export QADTR_CIFAR10={out.resolve()}" in r.stdout
    with np.load(out) as back:
        assert np.array_equal(back["x_train"], _arrays()["x_train"])
