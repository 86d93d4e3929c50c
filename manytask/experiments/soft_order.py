"""Soft layer ordering experiments (Meyerson & Miikkulainen, "Beyond Shared Hierarchies: Deep Multitask
Learning through Soft Layer Ordering", ICLR 2018).

soft-order-digits    10 binary "digit a vs digit b" tasks, each with its own few examples (data set
                     digit_pairs: the embedded 8x8 digits, or data.dir=IDX folder for MNIST): soft vs
                     parallel vs permuted ordering vs single-task networks.
soft-order-tables    scikit-learn's classification tables (wine, breast_cancer, iris) as tasks with their
                     own encoders (13, 30 and 4 features), the same four contenders.
soft-order-patterns  the authors' expressivity test: two tasks on the same inputs, fitted to random
                     patterns through two shared layers and one shared output layer O. In parallel order both
                     tasks are the same function, so they cannot both be fitted; in permuted order
                     (y1 = O.W2.W1(x), y2 = O.W1.W2(x)) they can.

Every contender is trained with every seed on one split. Besides every run's metrics, results.csv holds
per contender and seed the test error (task "mean", metric "error": 1 - accuracy, averaged over tasks),
with binary tasks the test error at the best threshold per task (metric "best_threshold_error": what the
ranking alone leaves) and, for the soft_order contenders, the ordering distance of the learned mixing
weights (task "mean", split "train", metric "ordering_distance"). The table shows mean ± std over seeds;
soft ordering is compared with each other contender by paired tests over the seeds (scipy.stats.ttest_rel
and wilcoxon), stored in summary.json under "soft_vs". Each soft/parallel/permuted run directory holds mixing.csv and
mixing.png (the per-task mixing weights, rows task and depth, columns layers).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..config import option
from ..data.base import MultiTaskData, Split
from ..methods.soft_order import PerTask, SoftOrder
from ..nn.soft_order import DenseBank
from ..registry import register_experiment
from ..report import fmt, line_plot, mean_pm, paired, text_table, write_matrix
from ..runs import RunResult
from ..tasks import Task
from ..train import TrainConfig, Trainer, predict_split, seed_everything
from .runner import Contender, ExperimentConfig, ExperimentResult, Record, compare, finish

ORDERED = ("soft", "parallel", "permuted")  # contenders built by soft_order: they have mixing weights
# Every training key the recipes rely on, pinned here: the methods' own training defaults (soft_order's
# `train_defaults`) must not move these experiments.
DIGITS_TRAIN = {"epochs": "150", "patience": "50", "batch_size": "16", "lr": "0.003", "weight_decay": "0",
                "progress": "false"}
TABLES_TRAIN = {**DIGITS_TRAIN, "patience": "20"}


@dataclass
class OrderingsConfig(ExperimentConfig):
    """soft-order-digits and soft-order-tables: the shape of every contender."""

    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "seeds: every contender trains once per seed", low=0,
                                    min_len=1)
    width: int = option(64, "units of every shared layer; the single-task nets get depth+1 layers of this width", low=1)
    depth: int = option(4, "D, the number of shared layers", low=1)
    dropout: float = option(0.2, "dropout after every layer of every contender", low=0, high=1, high_open=True)
    scores_lr: float = option(0.03, "learning rate of soft ordering's mixing scores (10x the recipes' lr); "
                              "0: the training lr", low=0)
    preserve_scale: bool = option(True, "soft, parallel and permuted: He-uniform shared layers and the soft "
                                  "mixture divided by the L2 norm of its weights; false: the plain mixture "
                                  "with nn.Linear's initialisation, which collapses on 28x28 digits")


def contenders(cfg: OrderingsConfig) -> list[Contender]:
    """soft, parallel and permuted soft_order, and single-task MLPs of the same shape (encoder + D layers)."""
    shape = {"width": cfg.width, "depth": cfg.depth, "dropout": cfg.dropout}
    ordered = {**shape, "preserve_scale": cfg.preserve_scale}
    soft_only = {"scores_lr": cfg.scores_lr}
    single_task = Contender("single_task", "stl", {"widths": (cfg.width,) * (cfg.depth + 1), "dropout": cfg.dropout})
    return [Contender(o, "soft_order", {"ordering": o, **ordered, **(soft_only if o == "soft" else {})})
            for o in ORDERED] + [single_task]


def best_threshold_error(scores: np.ndarray, labels: np.ndarray) -> float:
    """One binary task: scores (n,) (any monotone score, e.g. logits), labels (n,) 0/1 (NaN: missing,
    skipped) -> 1 - the highest accuracy that any threshold on the scores reaches. The part of the error
    that the ranking leaves; the error at the model's own threshold minus this is due to where that
    threshold falls. Tied scores are never split. NaN without labels."""
    keep = ~np.isnan(labels)
    s, y = scores[keep], labels[keep]
    n = len(y)
    if n == 0:
        return math.nan
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    below_pos = np.concatenate([[0.0], np.cumsum(y)])  # positives among the i lowest, i = 0..n
    above_neg = (n - np.arange(n + 1)) - (y.sum() - below_pos)  # negatives among the n - i highest
    cut = np.concatenate([[True], s[1:] > s[:-1], [True]])  # thresholds between distinct scores only
    return float((below_pos + above_neg)[cut].min() / n)


def mean_best_threshold_error(run: RunResult, data: MultiTaskData) -> float:
    """best_threshold_error of a run's test outputs, mean over its binary tasks (NaN if it has none)."""
    tasks = [t for t in data.tasks if t.kind == "binary"]
    if not tasks:
        return math.nan
    out = predict_split(run.model, data.test, tasks)  # {task: (n, 1) logits}
    return float(np.mean([best_threshold_error(out[t.name][:, 0].numpy(), data.test.labels[t.name].numpy())
                          for t in tasks]))


def ordering_records(result: ExperimentResult) -> list[Record]:
    """Per contender and seed: the test error, mean over tasks of 1 - accuracy (binary at threshold 0.5,
    multiclass argmax); with binary tasks the test error at the best threshold per task
    (mean_best_threshold_error, metric "best_threshold_error"); and the ordering distance of the runs that
    have mixing weights."""
    records = []
    for label, runs in result.runs.items():
        for run in runs:
            seed = run.spec.train.seed
            records.append((label, seed, "mean", "test", "error", 1.0 - run.summary["mean"]["test"]["accuracy"]))
            best = mean_best_threshold_error(run, result.data)
            if not math.isnan(best):
                records.append((label, seed, "mean", "test", "best_threshold_error", best))
            if "artifacts" in run.summary:
                records.append((label, seed, "mean", "train", "ordering_distance",
                                run.summary["artifacts"]["ordering_distance"]))
    return records


def paired_report(result: ExperimentResult, reference: str = "soft") -> tuple[str, dict[str, dict]]:
    """(table of test error and ordering distance per contender plus the paired tests, {label: paired test
    of `reference` against it}) from the records of ordering_records."""
    labels = list(result.runs)
    errors = {label: result.values(label, "error", "mean") for label in labels}
    distances = {label: result.values(label, "ordering_distance", "mean", "train") for label in labels}
    best = {label: result.values(label, "best_threshold_error", "mean") for label in labels}
    tests = {label: paired(errors[reference], errors[label]) for label in labels if label != reference}
    rows = [(label, mean_pm(errors[label], 4), mean_pm(best[label], 4) if best[label] else "",
             mean_pm(distances[label]) if distances[label] else "",
             f"{result.runs[label][0].summary['params']:,}", " ".join(f"{e:.4f}" for e in errors[label]))
            for label in labels]
    table = text_table(("contender", "test error", "at best threshold", "ordering distance", "parameters",
                        "per seed"), rows)
    tests_table = text_table((f"{reference} vs", "mean diff", f"{reference} lower", "t-test p", "Wilcoxon p"),
                             [(label, f"{t['mean_diff']:+.4f}", f"{t['lower_in']}/{t['seeds']}", fmt(t["t_p"], 4),
                               fmt(t["wilcoxon_p"], 4)) for label, t in tests.items()])
    return table + "\n\n" + tests_table, tests


def compare_orderings(name: str, data_name: str, cfg: OrderingsConfig, out: Path,
                      defaults: dict[str, str]) -> ExperimentResult:
    """The four contenders on one data set, then the test errors, ordering distances and paired tests."""
    result = compare(name, data_name, contenders(cfg), cfg, out, defaults=defaults, write=False)
    result.records += ordering_records(result)
    report, result.summary["soft_vs"] = paired_report(result)
    result.table += "\n\n" + report
    return finish(result)


@register_experiment("soft-order-digits", OrderingsConfig,
                     "soft vs parallel vs permuted ordering vs single-task on 10 'digit a vs b' tasks with 10 "
                     "training examples each (embedded digits; data.dir=IDX folder for MNIST), 5 seeds, paired tests")
def soft_order_digits(cfg: OrderingsConfig, out: Path) -> ExperimentResult:
    return compare_orderings("soft-order-digits", "digit_pairs", cfg, out, {**DIGITS_TRAIN, "data.n_train": "10"})


@register_experiment("soft-order-tables", OrderingsConfig,
                     "soft vs parallel vs permuted ordering vs single-task on wine, breast_cancer and iris as "
                     "three tasks with their own encoders, 5 seeds, paired tests")
def soft_order_tables(cfg: OrderingsConfig, out: Path) -> ExperimentResult:
    return compare_orderings("soft-order-tables", "sklearn_tables", cfg, out, TABLES_TRAIN)


# --- soft-order-patterns: the expressivity test -----------------------------------------------------------

@dataclass
class PatternsConfig(ExperimentConfig):
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "seeds: data, initial weights and one fit per ordering",
                                    low=0, min_len=1)
    n: int = option(32, "random input points, shared by both tasks", low=1)
    width: int = option(16, "input size = width of the two shared layers", low=1)
    epochs: int = option(300, "full-batch Adam steps", low=1)
    lr: float = option(0.02, "Adam learning rate", low=0, low_open=True)
    takes_overrides: ClassVar[bool] = False


def pattern_data(n: int, width: int, seed: int) -> MultiTaskData:
    """Inputs x (n, width) ~ N(0, 1) read by two regression tasks with independent N(0, 1) targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    y = {"pattern1": torch.randn(n, generator=g), "pattern2": torch.randn(n, generator=g)}
    split = Split({"x": x}, y)
    tasks = [Task("pattern1", "regression"), Task("pattern2", "regression")]
    return MultiTaskData("patterns", tasks, split, split, split)


def pattern_model(tasks: list[Task], width: int, ordering: str) -> SoftOrder:
    """The authors' network: no encoders, two shared layers W1, W2 (ReLU), ONE output layer O for both
    tasks. parallel: y_t = O.W2.W1(x); permuted: y1 = O.W2.W1(x), y2 = O.W1.W2(x); soft: learned mixing."""
    out_layer = nn.Linear(width, 1)  # O, the same module for both tasks
    order = {"parallel": torch.tensor([[0, 1], [0, 1]]), "permuted": torch.tensor([[0, 1], [1, 0]]), "soft": None}[ordering]
    return SoftOrder(tasks, {"x": PerTask([nn.Identity() for _ in tasks])}, {t.name: out_layer for t in tasks},
                     DenseBank(2, width, 0.0), order)


def fit_patterns(ordering: str, cfg: PatternsConfig, seed: int) -> tuple[float, float, SoftOrder, list[float]]:
    """-> (mean training MSE over both tasks, the parallel floor mean((y1 - y2)^2) / 4, model, loss curve)."""
    data = pattern_data(cfg.n, cfg.width, seed)
    seed_everything(seed)
    model = pattern_model(data.tasks, cfg.width, ordering)
    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.n, lr=cfg.lr, patience=0, progress=False, seed=seed)
    trainer = Trainer(model, data, train_cfg).fit()
    _, loss = trainer.evaluate("train")
    y1, y2 = data.train.labels["pattern1"], data.train.labels["pattern2"]
    floor = float(((y1 - y2) ** 2).mean() / 4)  # best a single function can do on both: predict (y1 + y2) / 2
    return loss, floor, model, [row["train_loss"] for row in trainer.history]


@register_experiment("soft-order-patterns", PatternsConfig,
                     "the authors' expressivity test: two tasks fitted to random patterns on the same inputs; "
                     "parallel ordering cannot fit both, permuted can (5 seeds, about 25 s of CPU)")
def soft_order_patterns(cfg: PatternsConfig, out: Path) -> ExperimentResult:
    """Records: (ordering or "parallel floor", seed, "mean", "train", "mse", training MSE); out/loss.png
    (the first seed's loss curves) and out/soft, out/permuted: that seed's mixing.csv and mixing.png."""
    t0 = time.perf_counter()
    mse: dict[str, list[float]] = {label: [] for label in (*ORDERED, "parallel floor")}  # per seed
    curves = {}
    for seed in cfg.seeds:
        for o in ORDERED:
            loss, floor, model, curve = fit_patterns(o, cfg, seed)
            mse[o].append(loss)
            if o == "parallel":
                mse["parallel floor"].append(floor)
            if seed == cfg.seeds[0]:
                curves[o] = (list(range(1, len(curve) + 1)), curve)
                if o != "parallel":
                    (out / o).mkdir(parents=True, exist_ok=True)
                    for m in model.artifacts()[1]:
                        write_matrix(out / o, dataclasses.replace(m, title=f"patterns {o} {m.title}"))
    line_plot(curves, out / "loss.png", "random patterns: training loss", "epoch", "mean MSE")
    records = [(label, seed, "mean", "train", "mse", v) for label, vs in mse.items() for seed, v in zip(cfg.seeds, vs)]
    table = text_table(("ordering", "train MSE (mean of 2 tasks)", "per seed"),
                       [(label, mean_pm(vs, 4), " ".join(f"{v:.4f}" for v in vs)) for label, vs in mse.items()])
    summary = {"config": {"n": cfg.n, "width": cfg.width, "epochs": cfg.epochs, "lr": cfg.lr}, "seeds": list(cfg.seeds),
               "permuted_vs_parallel": paired(mse["permuted"], mse["parallel"])}
    return finish(ExperimentResult("soft-order-patterns", out, records, table, summary, time.perf_counter() - t0))
