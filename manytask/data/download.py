"""Fetching data files for users with internet: cache directory, progress bar, checksum. Processes that
fetch the same file at once download it once (a lock per file, manytask/data/cache.py); a download
appears under its name only when complete and verified."""
from __future__ import annotations

import hashlib
import logging
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..config import ConfigError
from ..files import atomic_write
from .cache import cache_dir, file_lock

__all__ = ["cache_dir", "fetch", "file_hash"]
log = logging.getLogger("manytask")


def file_hash(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, checksum: str | None = None, algo: str = "sha256", dest: Path | None = None) -> Path:
    """The cached copy of `url`, downloading it once. With `checksum`, a mismatch is an error and the
    bad file is removed; without one, the file's sha256 is logged so a user can pin it."""
    dest = dest or cache_dir() / url.rsplit("/", 1)[-1]

    def download(f) -> None:  # stream into f, hashing on the way; a bad checksum raises before the rename
        digest = hashlib.new(algo if checksum is not None else "sha256")
        with urllib.request.urlopen(url, timeout=60) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                for chunk in iter(lambda: r.read(1 << 16), b""):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        got = digest.hexdigest()
        if checksum is not None and got != checksum:
            raise ConfigError(f"{url}: {algo} {got} does not match the expected {checksum}; the file was removed, "
                              "try again or pass a local copy")
        if checksum is None:
            log.info("%s: sha256 %s (no published checksum to verify against)", dest.name, got)

    with file_lock(dest):
        if dest.exists() and (checksum is None or file_hash(dest, algo) == checksum):
            return dest
        log.info("downloading %s -> %s", url, dest)
        try:
            atomic_write(dest, download, suffix=".part")
        except OSError as e:
            raise ConfigError(f"could not download {url} ({e}); without internet, download it elsewhere and "
                              f"pass its local path (data.path=... or data.dir=...)") from None
        return dest
