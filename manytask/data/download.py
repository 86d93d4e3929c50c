"""Fetching data files for users with internet: cache directory, progress bar, checksum."""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..config import ConfigError

log = logging.getLogger("manytask")


def cache_dir() -> Path:
    """$MANYTASK_CACHE, else ~/.cache/manytask."""
    root = Path(os.environ.get("MANYTASK_CACHE", Path.home() / ".cache" / "manytask"))
    root.mkdir(parents=True, exist_ok=True)
    return root


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
    if dest.exists() and (checksum is None or file_hash(dest, algo) == checksum):
        return dest
    tmp = dest.with_suffix(dest.suffix + ".part")
    log.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                for chunk in iter(lambda: r.read(1 << 16), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"could not download {url} ({e}); without internet, download it elsewhere and "
                          f"pass its local path (data.path=... or data.dir=...)") from None
    got = file_hash(tmp, algo)
    if checksum is not None and got != checksum:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{url}: {algo} {got} does not match the expected {checksum}; the file was removed, "
                          "try again or pass a local copy")
    if checksum is None:
        log.info("%s: sha256 %s (no published checksum to verify against)", dest.name, got)
    tmp.replace(dest)
    return dest
