"""The cache directory: concurrent processes build an entry once, a damaged entry is rebuilt, writes are
atomic, cache_info lists the files by kind and clear_cache deletes them."""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from manytask.data import moleculenet as mn
from manytask.data.cache import atomic_write, cache_dir, cache_info, cached_arrays, clear_cache, file_lock

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCN", "c1ccncc1", "CCCC", "c1ccccc1CC", "OCC(O)CO",
          "c1ccc2ccccc2c1", "CC(C)O", "c1ccccc1N", "CCOC(=O)C"]
REPO = Path(__file__).resolve().parents[2]

# One process of the race: it waits for "go", then loads the CSV; its fingerprints() marks that it built
# the features and takes a second, so that every process asks for the entry while the first one builds it.
CHILD = """
import sys, time
from pathlib import Path
import numpy as np
from manytask.data import moleculenet as mn
work, me = Path(sys.argv[1]), sys.argv[2]
fingerprints = mn.fingerprints
def slow(smiles, cfg):
    (work / f"built-{me}").touch()
    time.sleep(1.0)
    return fingerprints(smiles, cfg)
mn.fingerprints = slow
(work / f"ready-{me}").touch()
while not (work / "go").exists():
    time.sleep(0.01)
data = mn.load_any(mn.MoleculeNetConfig(path=str(work / "mols.csv"), bits=128, fractions=(0.5, 0.25, 0.25)))
np.save(work / f"x-{me}.npy", np.concatenate([data.split(s).inputs["x"].numpy() for s in ("train", "val", "test")]))
"""


@pytest.fixture(autouse=True)
def _own_cache(_private_cache, tmp_path, monkeypatch):
    """A cache directory for each test, so that cache_info lists only its entries."""
    monkeypatch.setenv("MANYTASK_CACHE", str(tmp_path / "cache"))


def write_molecules(path: Path) -> Path:
    path.write_text("smiles,A\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(SMILES)))
    return path


def wait_for(condition, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the child processes did not get ready in time")
        time.sleep(0.05)


def test_three_processes_featurise_a_new_csv_once_and_agree(tmp_path):
    write_molecules(tmp_path / "mols.csv")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(3)]
    try:
        wait_for(lambda: all((tmp_path / f"ready-{i}").exists() or procs[i].poll() is not None for i in range(3)), 120)
        (tmp_path / "go").touch()
        errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    finally:
        for p in procs:
            p.kill() if p.poll() is None else None
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert len(list(tmp_path.glob("built-*"))) == 1  # one process built, the others waited and read
    xs = [np.load(tmp_path / f"x-{i}.npy") for i in range(3)]
    assert xs[0].shape == (12, 128) and xs[0].sum() > 0
    assert all(np.array_equal(xs[0], x) for x in xs[1:])
    assert [e.kind for e in cache_info()] == ["features"]  # one entry, no temporary file left


def damage(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        z = dict(np.load(path))
        arrays = {"x": z["x"]} if how == "missing array" else {"x": z["x"][:5], "valid": z["valid"][:5]}
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("how", ["garbage", "truncated", "missing array", "wrong shape"])
def test_a_damaged_feature_entry_is_named_deleted_and_rebuilt(tmp_path, caplog, how):
    cfg = mn.MoleculeNetConfig(path=str(write_molecules(tmp_path / "mols.csv")), bits=128, fractions=(0.5, 0.25, 0.25))
    good = mn.load_any(cfg)
    (entry,) = [e.path for e in cache_info()]
    damage(entry, how)
    with caplog.at_level(logging.WARNING, logger="manytask"):
        again = mn.load_any(cfg)
    assert f"cache entry {entry} is damaged" in caplog.text
    assert np.array_equal(good.train.inputs["x"].numpy(), again.train.inputs["x"].numpy())
    z = np.load(entry)  # rebuilt: whole again, 128 bits packed in 16 bytes a row
    assert z["x"].shape == (12, 16) and z["x"].dtype == np.uint8 and z["valid"].shape == (12,)


def test_the_entry_holds_packed_bits_and_is_read_back_without_featurising(tmp_path, monkeypatch):
    path = write_molecules(tmp_path / "mols.csv")
    cfg = mn.MoleculeNetConfig(path=str(path), bits=100, fractions=(0.5, 0.25, 0.25))
    first = mn.load_any(cfg)
    (entry,) = [e.path for e in cache_info()]
    z = np.load(entry)
    assert z["x"].shape == (12, 13) and z["x"].dtype == np.uint8  # 100 bits -> 13 bytes a row
    dense, valid = mn.featurize(SMILES, cfg)
    assert valid.all() and np.array_equal(np.unpackbits(z["x"], axis=1, count=100), dense)

    def refuse(smiles, cfg):
        raise AssertionError("featurised again instead of reading the cache")

    monkeypatch.setattr(mn, "fingerprints", refuse)
    again = mn.load_any(cfg)
    assert again.train.inputs["x"].data.dtype == torch.uint8 and again.train.inputs["x"].shape == (6, 100)
    for s in ("train", "val", "test"):
        assert torch.equal(first.split(s).inputs["x"][:], again.split(s).inputs["x"][:])


def test_an_entry_of_the_older_format_is_not_read_but_built_again(tmp_path, caplog):
    """The older format kept unpacked uint8 bits as morgan-KEY.npz; its name stays unread, and an entry of
    the older layout under the new name fails the shape check and is rebuilt."""
    from manytask.data.download import file_hash
    path = write_molecules(tmp_path / "mols.csv")
    cfg = mn.MoleculeNetConfig(path=str(path), bits=64, fractions=(0.5, 0.25, 0.25))
    old = cache_dir() / f"morgan-{file_hash(path)[:16]}-smiles-r2-b64-bits.npz"
    np.savez_compressed(old, x=np.ones((12, 64), dtype=np.uint8), valid=np.ones(12, dtype=bool))  # all bits set
    data = mn.load_any(cfg)
    dense, _ = mn.featurize(SMILES, cfg)
    got = np.concatenate([data.split(s).inputs["x"][:].numpy() for s in ("train", "val", "test")])
    assert np.array_equal(np.sort(got, axis=0), np.sort(dense, axis=0)) and not got.all()
    new = sorted(p for p in cache_dir().glob("morgan-*.npz") if p != old)
    assert [p.name for p in new] == [old.name.replace(".npz", f"-v{mn.FORMAT}.npz")]
    np.savez_compressed(new[0], x=np.ones((12, 64), dtype=np.uint8), valid=np.ones(12, dtype=bool))
    with caplog.at_level(logging.WARNING, logger="manytask"):
        again = mn.load_any(cfg)
    assert f"cache entry {new[0]} is damaged" in caplog.text
    assert torch.equal(again.train.inputs["x"][:], data.train.inputs["x"][:])
    assert np.load(new[0])["x"].shape == (12, 8)


def test_cached_arrays_builds_once_then_reads(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"a": np.arange(6).reshape(2, 3)}

    first = cached_arrays("test-entry.npz", build, {"a": (2, 3)})
    second = cached_arrays("test-entry.npz", build, {"a": (2, 3)})
    assert len(calls) == 1 and np.array_equal(first["a"], second["a"])
    assert oct((cache_dir() / "test-entry.npz").stat().st_mode & 0o777) != oct(0o600)  # not private to one user


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "out.bin"

    def write(f):
        f.write(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(target, write)
    assert list(tmp_path.iterdir()) == []
    atomic_write(target, lambda f: f.write(b"whole"))
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]


def test_cache_info_kinds_and_clear(tmp_path):
    cfg = mn.MoleculeNetConfig(path=str(write_molecules(tmp_path / "mols.csv")), bits=32)
    mn.load_any(cfg)
    root = cache_dir()
    (root / "mnist").mkdir(exist_ok=True)
    (root / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"1234")
    (root / ".toxcast_data.csv.gz.abc.part").write_bytes(b"12")
    kinds = {e.path.relative_to(root).as_posix(): (e.kind, e.size) for e in cache_info()}
    assert kinds["mnist/train-images-idx3-ubyte.gz"] == ("download", 4)
    assert kinds[".toxcast_data.csv.gz.abc.part"] == ("partial", 2)
    assert any(kind == "features" for kind, _ in kinds.values())
    assert not any(".locks" in name for name in kinds)
    removed = clear_cache(downloads=False)
    assert {e.kind for e in removed} == {"features", "partial"}
    assert [e.kind for e in cache_info()] == ["download"]
    assert [e.kind for e in clear_cache()] == ["download"] and cache_info() == []
    assert mn.load_any(cfg).train.inputs["x"].shape == (10, 32)  # built again on demand
    assert [e.kind for e in cache_info()] == ["features"]


def test_without_a_lock_file_the_work_goes_on_with_a_warning(tmp_path, caplog):
    (tmp_path / "a file").write_text("")
    ran = []
    with caplog.at_level(logging.WARNING, logger="manytask"):
        with file_lock(tmp_path / "a file" / "entry.npz"):  # the lock's folder cannot be made under a file
            ran.append(True)
    assert ran and "going on without the lock" in caplog.text


def test_cache_command_lists_and_clears(tmp_path, monkeypatch, capsys):
    from manytask import cli
    monkeypatch.setenv("MANYTASK_CACHE", str(tmp_path / "c"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "morgan-abc.npz").write_bytes(b"x" * 2000)
    cli.main(["cache"])
    assert "features: 1 files" in capsys.readouterr().out
    cli.main(["cache", "--clear"])
    assert "deleted 1 files" in capsys.readouterr().out
    assert not (tmp_path / "c" / "morgan-abc.npz").exists()


def test_generated_data_files_count_as_features_and_clear_with_them(monkeypatch):
    from manytask.data import scale
    pool = (SMILES, np.packbits(np.eye(12, scale.LATENT_BITS, dtype=np.uint8), axis=1))  # a small stand-in pool
    monkeypatch.setattr(scale, "smiles_pool", lambda sources=(), workers=1: pool)
    path = scale.scale_csv(scale.ScaleConfig(n_tasks=2, rows=20, groups=1))
    assert path.parent == cache_dir() / "generated" and path.read_text().startswith("smiles,t0_g0,t1_g0\n")
    assert {e.path: e.kind for e in cache_info()}[path] == "features"
    clear_cache(downloads=False)
    assert not path.exists()
