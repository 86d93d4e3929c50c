"""Files written whole or not at all: a unique temporary file beside the target, flushed to disk, then
renamed over it (os.replace), so no reader, and no crash, ever leaves half a file under the real name."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


@contextmanager
def replacing(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a new temporary path beside `path` to write; when the block ends without error the file
    replaces `path`, otherwise it is removed and the error raised."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # as open() would create it (mkstemp makes it private)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path | str, write: Callable[[BinaryIO], None], suffix: str = ".tmp") -> None:
    """write(file) into `path` through replacing()."""
    with replacing(path, suffix) as tmp, open(tmp, "wb") as f:
        write(f)


def write_text(path: Path | str, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once: setting it again on every write would race with other threads
