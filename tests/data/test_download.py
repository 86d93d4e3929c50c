"""The download code, exercised offline through file:// URLs: caching, checksum check, bad files removed."""
from __future__ import annotations

import hashlib

import pytest

from manytask.config import ConfigError
from manytask.data.download import fetch


def test_fetch_checks_md5_and_caches(tmp_path):
    src = tmp_path / "src.csv.gz"
    src.write_bytes(b"some bytes")
    md5 = hashlib.md5(b"some bytes").hexdigest()
    dest = tmp_path / "cache" / "f.gz"
    dest.parent.mkdir()
    assert fetch(src.as_uri(), md5, "md5", dest).read_bytes() == b"some bytes"
    src.write_bytes(b"changed")  # the cached copy is used, not fetched again
    assert fetch(src.as_uri(), md5, "md5", dest).read_bytes() == b"some bytes"


def test_fetch_rejects_a_wrong_checksum_and_leaves_nothing(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"tampered")
    dest = tmp_path / "out"
    with pytest.raises(ConfigError, match="does not match the expected"):
        fetch(src.as_uri(), "0" * 32, "md5", dest)
    assert not dest.exists() and not list(tmp_path.glob("out*"))


def test_fetch_unreachable_url_says_how_to_work_offline(tmp_path):
    with pytest.raises(ConfigError, match="pass its local path"):
        fetch((tmp_path / "absent").as_uri(), None, "sha256", tmp_path / "x")
