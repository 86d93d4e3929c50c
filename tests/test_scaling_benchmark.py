"""benchmarks/scaling.py on tiny sizes: every point runs in its own process, the CSV and tables come out,
and the growth exponent is the slope of a power law."""
import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import scaling  # noqa: E402


@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_exponent_is_the_power_of_a_power_law(power):
    xs = [12, 100, 617]
    assert scaling.exponent(xs, [3.0 * x ** power for x in xs]) == pytest.approx(power)
    assert math.isnan(scaling.exponent([12], [1.0]))


def test_tiny_sweep_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("MANYTASK_CACHE", str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--methods", "hard_sharing",
                           "--tasks", "2,6", "--rows", "300,600", "--base-rows", "300", "--steps", "1", "--warmup", "0",
                           "--key", "hard_sharing:widths=16", "--out", str(tmp_path / "out"),
                           "--markdown", str(tmp_path / "t.md")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "scaling.csv")))
    assert [(r["sweep"], r["tasks"], r["rows"]) for r in rows] == [
        ("tasks", "2", "300"), ("tasks", "6", "300"), ("rows", "12", "300"), ("rows", "12", "600")]
    assert all(float(r["step_s"]) > 0 and float(r["peak_mb"]) > 0 and not r["error"] for r in rows)
    assert (tmp_path / "out" / "scaling_tasks.png").exists() and "| hard_sharing |" in (tmp_path / "t.md").read_text()
