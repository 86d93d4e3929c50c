"""The cache directory ($MANYTASK_CACHE, else ~/.cache/manytask): downloaded data files and arrays derived
from data files (molecule fingerprints), shared safely by processes that run at the same time.

- Every file appears at once or not at all: it is written under a unique temporary name in the same
  folder, then renamed over the final name (os.replace).
- A lock file per entry (fcntl.flock on .locks/NAME.lock next to it) makes a second process that wants
  the same entry wait for the first to finish it, then read it, instead of building it again. Lock files
  are empty and stay. Without a lock (Windows has no fcntl; a read-only cache folder; a file system
  without locks) both processes build, and the renames still leave one whole file.
- An entry that cannot be read back (damaged zip, missing array, wrong shape) is reported in a warning
  naming its path, deleted and built again.
"""
from __future__ import annotations

import contextlib
import logging
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..config import ConfigError
from ..files import atomic_write

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

log = logging.getLogger("manytask")
LOCKS = ".locks"
PARTIAL_SUFFIXES = (".tmp", ".part", ".tmp.npz")  # unfinished writes (".tmp.npz": the older feature cache)
GENERATED = "generated"  # the folder of generated data files (synthetic data sets), rebuilt when missing


def cache_dir() -> Path:
    """$MANYTASK_CACHE, else ~/.cache/manytask (created); an unusable folder is a ConfigError."""
    root = Path(os.environ.get("MANYTASK_CACHE", Path.home() / ".cache" / "manytask"))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the cache directory {root} ({e.strerror}); set MANYTASK_CACHE to a "
                          "writable folder, or pass data.cache=false") from None
    return root


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of the entry `path` (the file path.parent/.locks/NAME.lock) while inside.
    Where no lock can be had (no fcntl, a read-only folder, a file system without locks) it goes on
    without one, with a warning in the last two cases."""
    if fcntl is None:
        yield
        return
    lock = path.parent / LOCKS / f"{path.name}.lock"
    handle = None
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+b")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    except OSError as e:
        log.warning("cannot lock %s (%s); going on without the lock", lock, e)
        if handle is not None:
            handle.close()
            handle = None
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def read_arrays(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, each of the expected shape (None: any length on that axis); anything
    else raises ValueError."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in shapes}
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None
    for k, shape in shapes.items():
        if len(arrays[k].shape) != len(shape) or any(e is not None and a != e for a, e in zip(arrays[k].shape, shape)):
            raise ValueError(f"array {k!r} has shape {arrays[k].shape}, expected {tuple(shape)}")
    return arrays


def cached_arrays(name: str, build: Callable[[], dict[str, np.ndarray]],
                  shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The arrays stored as cache_dir()/NAME (an .npz), built by build() and stored the first time.

    shapes: the expected shape of every array (None: any length on that axis), checked when reading; a
    damaged entry is deleted (with a warning naming it) and built again. One process builds an entry while
    others wait for it. A failed write (disk full, read-only folder) only warns: the built arrays are
    returned uncached."""
    path = cache_dir() / name
    with file_lock(path):
        if path.exists():
            try:
                return read_arrays(path, shapes)
            except ValueError as e:
                log.warning("cache entry %s is damaged (%s); deleting it and building it again", path, e)
                path.unlink(missing_ok=True)
        arrays = build()
        try:
            atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
        except OSError as e:
            log.warning("could not write the cache entry %s (%s); continuing without caching it", path, e)
        return arrays


@dataclass(frozen=True)
class CacheEntry:
    """One file of the cache directory. kind: "features" (arrays derived from a data file, and the data
    files of synthetic sets under generated/, built again when missing), "download" (a data file fetched
    from the web, fetched again when missing) or "partial"
    (the temporary file of an unfinished write, e.g. of a killed process)."""

    path: Path
    kind: str
    size: int  # bytes


def entry_kind(path: Path) -> str:
    if path.name.endswith(PARTIAL_SUFFIXES):
        return "partial"
    return "features" if path.suffix == ".npz" or path.parent.name == GENERATED else "download"


def cache_info() -> list[CacheEntry]:
    """Every file under cache_dir() (lock files excepted), sorted by path."""
    root = cache_dir()
    files = sorted(p for p in root.rglob("*") if p.is_file() and LOCKS not in p.relative_to(root).parts)
    return [CacheEntry(p, entry_kind(p), p.stat().st_size) for p in files]


def clear_cache(downloads: bool = True) -> list[CacheEntry]:
    """Delete the cache's features and partial files, and its downloads unless downloads=False (folders
    and lock files stay). -> the entries deleted. Safe while other processes use the cache: a reader keeps
    the file it opened, and a write in progress finds its temporary file gone and only warns."""
    removed = [e for e in cache_info() if downloads or e.kind != "download"]
    for entry in removed:
        entry.path.unlink(missing_ok=True)
    return removed
