"""benchmarks/stl.py on a tiny problem: made-up inputs, and a registered data set's own minibatch (--data),
each timed against N x one task's network in the same run."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stl.py"), "--contenders", "stl", "--reps", "1",
                           "--widths", "8", *args], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "MANYTASK_CACHE": os.environ["MANYTASK_CACHE"],  # this test run's
                               "OMP_NUM_THREADS": "1"})  # private cache (conftest): Tox21's features made once


def ratio_row(out: str, n: int) -> list[str]:
    (row,) = [line.split() for line in out.splitlines() if line.split()[:1] == [str(n)]]
    return row


def test_made_up_and_data_set_minibatches():
    made_up = run("--sizes", "3", "--in-dim", "64")
    assert made_up.returncode == 0, made_up.stderr[-2000:]
    assert "64 inputs (0.05 ones)" in made_up.stdout
    tox21 = run("--sizes", "12", "--data", "tox21")
    assert tox21.returncode == 0, tox21.stderr[-2000:]
    assert "a tox21 minibatch" in tox21.stdout
    row = ratio_row(tox21.stdout, 12)  # N, width, params, one ms, N x one, stl ms, ratio, ...
    assert row[1] == "8" and int(row[2].replace(",", "")) == 12 * (2048 * 8 + 8 + 8 + 1)
    stl_ms, n_one_ms, ratio = float(row[5]), float(row[4]), float(row[6])
    assert stl_ms > 0 and abs(ratio - stl_ms / n_one_ms) <= 0.06 / n_one_ms + 1e-3  # stl / (N x one), as printed
    too_many = run("--sizes", "13", "--data", "tox21")
    assert too_many.returncode != 0 and "tox21 has 12 tasks" in too_many.stderr
