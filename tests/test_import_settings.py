"""`import manytask` changes nothing and stays light; tune_allocator() applies the CPU allocator settings,
reports them and respects the opt-outs; the command line tunes before torch is imported. Each check runs in
a fresh interpreter, since these are about what a process does from its start."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("sklearn", "scipy", "matplotlib", "rdkit")
GLIBC = platform.libc_ver()[0] == "glibc"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def run(code: str, **env_extra: str):
    """The JSON that `code` prints, run in a fresh interpreter without the allocator variables set."""
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "MANYTASK_MALLOC_TUNE")}
    out = subprocess.run([sys.executable, "-c", code], env={**env, **env_extra}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("first", ["", "import torch; "])
def test_import_changes_no_environment_and_loads_nothing_heavy(first):
    code = (f"import json, os, sys; {first}before = dict(os.environ); import manytask; "
            f"print(json.dumps([dict(os.environ) == before, [m for m in {HEAVY + ('torch',)!r} if m in sys.modules]]))")
    same, loaded = run(code)
    assert same and loaded == (["torch"] if first else [])


def test_training_modules_load_nothing_heavy_and_the_cli_no_torch():
    code = ("import json, sys; import manytask.cli; cli = [m for m in ('torch', 'numpy') if m in sys.modules]; "
            f"import manytask.train; print(json.dumps([cli, [m for m in {HEAVY!r} if m in sys.modules]]))")
    assert run(code) == [[], []]


def test_tune_allocator_applies_and_reports():
    code = ("import json, os; from manytask import tune_allocator; applied = tune_allocator(); "
            "print(json.dumps([applied, os.environ['THP_MEM_ALLOC_ENABLE']]))")
    assert run(code) == [{"huge_pages": True, "malloc": GLIBC}, "1"]


@pytest.mark.skipif(not THP_MODE.exists() or "[never]" in THP_MODE.read_text(), reason="no transparent huge pages")
def test_tuned_tensors_get_huge_pages():
    code = ("import json, manytask; manytask.tune_allocator(); import torch; x = torch.ones(32 << 20); "
            "kb = [int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHugePages')]; "
            "print(json.dumps(kb[0]))")
    assert run(code) >= 64 << 10  # most of the 128 MiB tensor in 2 MiB pages
    assert run(code, THP_MEM_ALLOC_ENABLE="0") == 0


def test_user_settings_win():
    code = ("import json, os, manytask; applied = manytask.tune_allocator(); "
            "print(json.dumps([applied, os.environ['THP_MEM_ALLOC_ENABLE']]))")
    assert run(code, THP_MEM_ALLOC_ENABLE="0") == [{"huge_pages": False, "malloc": GLIBC}, "0"]
    assert run(code, MANYTASK_MALLOC_TUNE="0") == [{"huge_pages": True, "malloc": False}, "1"]


def test_cli_tunes_before_torch_is_imported():
    code = ("import json, os, sys; import manytask.cli as cli; seen = []; tune = cli.tune_allocator\n"
            "def spy():\n    seen.append('torch' in sys.modules); return tune()\n"
            "cli.tune_allocator = spy; cli.main(['list', 'train'])\n"
            "print(json.dumps([seen, 'torch' in sys.modules, os.environ['THP_MEM_ALLOC_ENABLE']]))")
    assert run(code) == [[False], True, "1"]
