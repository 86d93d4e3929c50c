"""Soft layer ordering experiments (Meyerson & Miikkulainen 2018, shared/papers/002).

soft-order-digits    10 binary "digit a vs digit b" tasks, each with its own few examples (data set
                     digit_pairs: the embedded 8x8 digits, or data.dir=IDX folder for MNIST): soft vs
                     parallel vs permuted ordering vs single-task networks.
soft-order-tables    scikit-learn's classification tables (wine, breast_cancer, iris) as tasks with their
                     own encoders (13, 30 and 4 features), the same four contenders.
soft-order-patterns  the slides' expressivity test: two tasks on the same inputs, fitted to random
                     patterns through two shared layers and one shared output layer O. In parallel order both
                     tasks are the same function, so they cannot both be fitted; in permuted order
                     (y1 = O.W2.W1(x), y2 = O.W1.W2(x)) they can.

Every contender is trained with every seed on one split; the tables show mean ± std of the test error
(1 - accuracy) over seeds, and soft ordering is compared with each other contender by paired tests over the
seeds (scipy.stats.ttest_rel and wilcoxon). Each soft/parallel/permuted run directory holds mixing.csv and
mixing.png (the per-task mixing weights, depth x layer); the table adds their ordering distance.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, apply, split_overrides
from ..data.base import MultiTaskData, Split, combine
from ..data.tabular import SKLEARN_TABLES, SklearnTableConfig, sklearn_table
from ..methods.soft_order import SoftOrder, write_mixing
from ..nn.soft_order import DenseBank
from ..registry import register_dataset, register_experiment
from ..report import fmt, line_plot, paired, pm, text_table, write_csv
from ..tasks import Task
from ..train import TrainConfig, Trainer, seed_everything
from .runner import Contender, ExperimentResult, compare

SEEDS = (0, 1, 2, 3, 4)
ORDERED = ("soft", "parallel", "permuted")  # contenders built by soft_order: they have mixing weights


def contenders(width: int = 64, depth: int = 4, dropout: float = 0.2, scores_lr: float = 0.03) -> list[Contender]:
    """soft, parallel and permuted soft_order, and single-task MLPs of the same shape (encoder + D layers).
    Soft ordering's mixing scores get their own learning rate (10x the default lr of the recipes)."""
    stl_widths = ",".join([str(width)] * (depth + 1))
    shape = {"width": str(width), "depth": str(depth), "dropout": str(dropout)}
    return [Contender(o, "soft_order", {"ordering": o, **shape, **({"scores_lr": str(scores_lr)} if o == "soft" else {})})
            for o in ORDERED] + [Contender("single_task", "stl", {"widths": stl_widths, "dropout": str(dropout)})]


def test_errors(result: ExperimentResult, label: str) -> list[float]:
    """Per seed: mean over tasks of the test error, 1 - accuracy (binary at threshold 0.5, multiclass argmax)."""
    return [1.0 - r.summary["mean"]["test"]["accuracy"] for r in result.runs[label]]


def report(result: ExperimentResult, out: Path, reference: str = "soft") -> str:
    """Test error and ordering distance per contender, paired tests of `reference` against the others;
    writes errors.csv and paired.json under out (every soft_order run directory already holds its
    mixing.csv and mixing.png, written by train_run)."""
    labels = list(result.runs)
    errors = {lab: test_errors(result, lab) for lab in labels}
    dists = {lab: [r.summary["artifacts"]["ordering_distance"] for r in result.runs[lab]]
             for lab in labels if "artifacts" in result.runs[lab][0].summary}  # soft_order runs wrote mixing.*
    tests = {lab: paired(errors[reference], errors[lab]) for lab in labels if lab != reference}
    rows = [(lab, pm(errors[lab], 4), pm(dists[lab]) if lab in dists else "", f"{result.runs[lab][0].summary['params']:,}",
             " ".join(f"{e:.4f}" for e in errors[lab])) for lab in labels]
    table = text_table(("contender", "test error", "ordering distance", "parameters", "per seed"), rows)
    ptab = text_table((f"{reference} vs", "mean diff", f"{reference} lower", "t-test p", "Wilcoxon p"),
                      [(lab, f"{t['mean_diff']:+.4f}", f"{t['lower_in']}/{t['seeds']}", fmt(t["t_p"], 4),
                        fmt(t["wilcoxon_p"], 4)) for lab, t in tests.items()])
    write_csv(out / "errors.csv", ("contender", "seed", "test_error", "ordering_distance"),
              [(lab, r.spec.train.seed, errors[lab][i], dists[lab][i] if lab in dists else "")
               for lab in labels for i, r in enumerate(result.runs[lab])])
    (out / "paired.json").write_text(json.dumps({"errors": errors, "ordering_distance": dists, "tests": tests}, indent=2))
    return table + "\n\n" + ptab


def _run(name: str, data_name: str, defaults: list[str], overrides: list[str], out: Path) -> ExperimentResult:
    kv = split_overrides(overrides)
    shape = {k: kv.pop(k) for k in ("width", "depth", "dropout", "scores_lr") if k in kv}  # shape every contender
    try:
        shape = {k: (int if k in ("width", "depth") else float)(v) for k, v in shape.items()}
    except ValueError:
        raise ConfigError(f"{shape}: width and depth take integers, dropout and scores_lr numbers") from None
    rest = [f"{k}={v}" for k, v in kv.items()]
    result = compare(name, data_name, contenders(**shape), SEEDS, [*defaults, *rest], out)
    text = report(result, out)
    print(text)
    (out / "report.txt").write_text(result.table + "\n\n" + text + "\n")
    return result


@register_experiment("soft-order-digits",
                     "soft vs parallel vs permuted ordering vs single-task on 10 'digit a vs b' tasks with 10 "
                     "training examples each (embedded digits; data.dir=IDX folder for MNIST), 5 seeds, paired tests")
def soft_order_digits(overrides: list[str], out: Path) -> ExperimentResult:
    return _run("soft-order-digits", "digit_pairs",
                ["epochs=150", "patience=50", "batch_size=16", "lr=0.003", "data.n_train=10", "progress=false"], overrides, out)


@dataclass
class SklearnTablesConfig:
    names: tuple[str, ...] = ("wine", "breast_cancer", "iris")  # scikit-learn tables, one task each
    fractions: tuple[float, ...] = (0.6, 0.2, 0.2)
    split_seed: int = 0


@register_dataset("sklearn_tables", SklearnTablesConfig,
                  "several of scikit-learn's embedded tables as one multi-input problem (one task and input per table)")
def load_sklearn_tables(cfg: SklearnTablesConfig) -> MultiTaskData:
    bad = [n for n in cfg.names if n not in SKLEARN_TABLES]
    if bad or not cfg.names:
        raise ConfigError(f"data.names={','.join(cfg.names)}: choose tables among {', '.join(SKLEARN_TABLES)}")
    sub = SklearnTableConfig(tuple(cfg.fractions), cfg.split_seed)
    return combine(*(sklearn_table(n, sub) for n in cfg.names), name="sklearn_tables")


@register_experiment("soft-order-tables",
                     "soft vs parallel vs permuted ordering vs single-task on wine, breast_cancer and iris as "
                     "three tasks with their own encoders, 5 seeds, paired tests")
def soft_order_tables(overrides: list[str], out: Path) -> ExperimentResult:
    return _run("soft-order-tables", "sklearn_tables",
                ["epochs=150", "patience=20", "batch_size=16", "lr=0.003", "progress=false"], overrides, out)


# --- soft-order-patterns: the expressivity test -----------------------------------------------------------

@dataclass
class PatternsConfig:
    n: int = 32  # random input points, shared by both tasks
    width: int = 16  # input size = width of the two shared layers
    epochs: int = 300  # full-batch Adam steps
    lr: float = 0.02


def pattern_data(n: int, width: int, seed: int) -> MultiTaskData:
    """Inputs x (n, width) ~ N(0, 1) read by two regression tasks with independent N(0, 1) targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    y = {"pattern1": torch.randn(n, generator=g), "pattern2": torch.randn(n, generator=g)}
    split = Split({"x": x}, y)
    tasks = [Task("pattern1", "regression"), Task("pattern2", "regression")]
    return MultiTaskData("patterns", tasks, split, split, split)


def pattern_model(tasks: list[Task], width: int, ordering: str) -> SoftOrder:
    """The slides' network: no encoders, two shared layers W1, W2 (ReLU), ONE output layer O for both tasks.
    parallel: y_t = O.W2.W1(x); permuted: y1 = O.W2.W1(x), y2 = O.W1.W2(x); soft: learned mixing."""
    out_layer = nn.Linear(width, 1)  # O, the same module for both tasks
    order = {"parallel": torch.tensor([[0, 1], [0, 1]]), "permuted": torch.tensor([[0, 1], [1, 0]]), "soft": None}[ordering]
    return SoftOrder(tasks, {t.name: nn.Identity() for t in tasks}, {t.name: out_layer for t in tasks},
                     DenseBank(2, width, 0.0), order)


def fit_patterns(ordering: str, cfg: PatternsConfig, seed: int) -> tuple[float, float, SoftOrder, list[float]]:
    """-> (mean training MSE over both tasks, the parallel floor mean((y1 - y2)^2) / 4, model, loss curve)."""
    data = pattern_data(cfg.n, cfg.width, seed)
    seed_everything(seed)
    model = pattern_model(data.tasks, cfg.width, ordering)
    tc = TrainConfig(epochs=cfg.epochs, batch_size=cfg.n, lr=cfg.lr, patience=0, progress=False, seed=seed)
    tr = Trainer(model, data, tc).fit()
    table, loss = tr.evaluate("train")
    y1, y2 = data.train.labels["pattern1"], data.train.labels["pattern2"]
    floor = float(((y1 - y2) ** 2).mean() / 4)  # best a single function can do on both: predict (y1 + y2) / 2
    return loss, floor, model, [row["train_loss"] for row in tr.history]


@register_experiment("soft-order-patterns",
                     "the slides' expressivity test: two tasks fitted to random patterns on the same inputs; "
                     "parallel ordering cannot fit both, permuted can (5 seeds, about 25 s of CPU)")
def soft_order_patterns(overrides: list[str], out: Path) -> dict:
    kv = split_overrides(overrides)
    seeds = SEEDS
    if "seeds" in kv:
        seeds = tuple(int(s) for s in kv.pop("seeds").split(",") if s.strip())
    cfg = apply(PatternsConfig(), kv, "soft-order-patterns")
    mse: dict[str, list[float]] = {o: [] for o in ORDERED}
    floors, curves = [], {}
    for seed in seeds:
        for o in ORDERED:
            loss, floor, model, curve = fit_patterns(o, cfg, seed)
            mse[o].append(loss)
            if o == "parallel":
                floors.append(floor)
            if seed == seeds[0]:
                curves[o] = (list(range(1, len(curve) + 1)), curve)
                if o != "parallel":
                    (out / o).mkdir(parents=True, exist_ok=True)
                    write_mixing(model, out / o, f"patterns {o}")
    rows = [(o, pm(mse[o], 4), " ".join(f"{v:.4f}" for v in mse[o])) for o in ORDERED]
    rows.append(("parallel floor", pm(floors, 4), " ".join(f"{v:.4f}" for v in floors)))
    table = text_table(("ordering", "train MSE (mean of 2 tasks)", "per seed"), rows)
    write_csv(out / "table.csv", ("ordering", "seed", "train_mse"),
              [(o, s, v) for o in ORDERED for s, v in zip(seeds, mse[o])] + [("parallel floor", s, v) for s, v in zip(seeds, floors)])
    line_plot(curves, out / "loss.png", "random patterns: training loss", "epoch", "mean MSE")
    summary = {"config": vars(cfg), "seeds": list(seeds), "train_mse": mse, "parallel_floor": floors,
               "permuted_vs_parallel": paired(mse["permuted"], mse["parallel"])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table)
    print(f"results in {out}")
    return summary
