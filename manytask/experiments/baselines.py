"""The baselines side by side: the `demo` job that `make demo` runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import option
from ..registry import register_experiment
from .runner import Contender, ExperimentConfig, ExperimentResult, compare

# Small and fast, not the methods' tuned defaults (`manytask compare tox21 hard_sharing,stl,icnn` trains those):
# the single-task nets and the ICNN train with hard sharing's settings (Adam lr 1e-3, batch 128, dropout 0.25).
FAST = {"dropout": "0.25", "batch_size": "128", "lr": "1e-3", "weight_decay": "0"}
DEMO = [
    Contender("hard_sharing", "hard_sharing"),
    Contender("stl", "stl", {**FAST, "widths": "256"}),  # 12 nets: the slowest contender, kept small for the demo
    Contender("icnn", "icnn", {**FAST, "widths": "32,16"}),  # interconnected subnetworks, small widths
]


@dataclass
class DemoConfig(ExperimentConfig):
    seeds: tuple[int, ...] = option((0,), "seeds: every contender trains once per seed", low=0, min_len=1)


@register_experiment("demo", DemoConfig,
                     "Tox21 (embedded): hard sharing vs single-task nets vs ICNN, one seed, about 1-2 minutes")
def demo(cfg: DemoConfig, out: Path) -> ExperimentResult:
    return compare("demo", "tox21", DEMO, cfg, out, defaults={"epochs": "30", "patience": "5"})
