"""The baselines side by side: the `demo` job that `make demo` runs."""
from __future__ import annotations

from pathlib import Path

from ..registry import register_experiment
from .runner import Contender, compare

DEMO = [
    Contender("hard_sharing", "hard_sharing"),
    Contender("stl", "stl", {"widths": "256"}),  # 12 nets: the slowest contender, kept small for the demo
    Contender("icnn", "icnn", {"widths": "32,16"}),  # interconnected subnetworks (thesis 000), small widths
]


@register_experiment("demo", "Tox21 (embedded): hard sharing vs single-task nets vs ICNN, one seed, about 1-2 minutes")
def demo(overrides: list[str], out: Path):
    return compare("demo", "tox21", DEMO, seeds=(0,), overrides=["epochs=30", "patience=5", *overrides], out=out)
