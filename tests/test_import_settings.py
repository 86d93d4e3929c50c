"""What `import manytask` sets up for PyTorch's CPU allocations (manytask/__init__.py)."""
import os
import platform
import subprocess
import sys

import pytest


def _probe(env_extra: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "MANYTASK_MALLOC_TUNE")}
    code = "import os, manytask; print(manytask.MALLOC_TUNED, os.environ['THP_MEM_ALLOC_ENABLE'])"
    out = subprocess.run([sys.executable, "-c", code], env={**env, **env_extra}, capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_tuned_by_default_and_opt_out():
    assert _probe({}) == ["True", "1"]
    assert _probe({"MANYTASK_MALLOC_TUNE": "0"})[0] == "False"


def test_user_settings_win():
    assert _probe({"THP_MEM_ALLOC_ENABLE": "0"})[1] == "0"
