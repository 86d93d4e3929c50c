"""Belharbi, Hérault, Chatelain & Adam, "Deep Multi-Task Learning with evolving weights", ESANN 2016:
Table 1 and Fig. 1.

    manytask run schedules                       Fig. 1: lambda_s(t) of every schedule (PNG)
    manytask run evolving-digits                 Table 1 on scikit-learn's digits (embedded); recipe=paper|fast
    manytask run evolving-mnist data.dir=DIR     the paper's protocol on MNIST-format files (GPU-sized)

Protocol (Sec. 4): for each network NN_K, l labelled and u unlabelled training images (data.base.hide_labels,
a new draw per seed), each schedule is trained from the same initial weights as its baseline: the same
network, seed, data and minibatches trained with lambda_r = 0 (schedule constant, value 1), so the pair
differs only by the reconstruction task. Reported: the test error difference evolving - baseline in points
(negative = better than the baseline), mean ± std over seeds, and a two-sided paired t-test over seeds.

The grid is the experiments' own keys (`manytask list evolving-digits`); every other key goes to each run:
training keys (epochs, lr, batch_size, ...), method keys (t1, sigma, noise, activation) and data.KEY.

results.csv (errors in percent, "points"): per run, contender "NET l=L u=U SCHEDULE" (U a number or `all`,
SCHEDULE a schedule name or `baseline`), the seed, split val/test, metric "error" (and split train, metric
"seconds"); per schedule and cell, the paired differences to the baseline (metric "delta_error", per seed)
and, with seed -1, delta_error_mean, delta_error_std, p_paired, baseline_error_mean, baseline_error_std.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from ..config import ConfigError, option
from ..data.base import MultiTaskData, hide_labels
from ..registry import register_experiment
from ..report import fmt, line_plot, mean_std, paired, text_table, write_csv
from ..runs import RunSpec, load_data, resolve, train_run
from ..weighting import SCHEDULES, Schedule
from .runner import ExperimentConfig, ExperimentResult, Record, finish

NETS = {"nn1": (50,), "nn2": (60, 50), "nn3": (70, 60, 50), "nn4": (80, 70, 60, 50)}  # the paper's NN_K
BASELINE = "baseline"  # schedule constant, value 1: lambda_s = 1, lambda_r = 0, supervised only
SET_BY_GRID = ("schedule", "value", "widths", "seed")  # method and training keys every run gets from the grid

# Table 1 of the paper (MNIST, 5000 epochs), row u = 5e4 - l: error difference to the baseline in points
PAPER_ALL_U = {
    ("nn1", 100): {"baseline": 31.0, "stairs": -0.19, "lin_t1": -1.89, "lin": -2.03, "exp": -2.44},
    ("nn1", 1000): {"baseline": 12.85, "stairs": -0.06, "lin_t1": -1.68, "lin": -1.56, "exp": -1.75},
    ("nn3", 100): {"baseline": 33.58, "exp": -1.23},
    ("nn3", 1000): {"baseline": 11.96, "exp": -1.3},
}


@dataclass
class EvolvingGridConfig(ExperimentConfig):
    """The grid of evolving-digits and evolving-mnist (defaults: the digits grid)."""

    l: tuple[int, ...] = option((50, 100, 300), "labelled training examples, one cell per value", low=1,  # noqa: E741
                                min_len=1)
    u: tuple[str, ...] = option(("0", "all"), "unlabelled training examples per cell: numbers, or all = every "
                                "training example that is not labelled", min_len=1)
    nets: tuple[str, ...] = option(("nn1", "nn3"), "networks: nn1..nn4 = hidden layers 50 / 60,50 / 70,60,50 / "
                                   "80,70,60,50", choices=tuple(NETS), min_len=1)
    schedules: tuple[str, ...] = option(("stairs", "lin", "lin_t1", "exp"), "schedules trained on nn1",
                                        choices=tuple(SCHEDULES), min_len=1)
    deep_schedules: tuple[str, ...] = option(("exp",), "schedules trained on the deeper nets (the paper's Table 1b: "
                                             "exp)", choices=tuple(SCHEDULES), min_len=1)
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "seeds: one label draw and initial weights per seed", low=0,
                                    min_len=1)
    batches: int = option(12, "minibatches per epoch, the same in every cell: batch_size = ceil((l + u) / batches); "
                          "0 = keep batch_size fixed, as the paper does", low=0)

    def __post_init__(self):
        for u in self.u:
            if u != "all" and not u.isdigit():
                raise ConfigError(f"u={u}: expected a number of unlabelled examples or all, e.g. u=0,500,all")


def redefault(cls: type, name: str, default):
    """The option `name` of dataclass cls with another default: the same help and valid values."""
    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return field(default=default, metadata=f.metadata)


@dataclass
class EvolvingDigitsConfig(EvolvingGridConfig):
    recipe: Literal["paper", "fast"] = option("paper", "run settings: paper = sigmoid, plain SGD, 1000 epochs; "
                                              "fast = ReLU, momentum, 40 epochs")


@dataclass
class EvolvingMnistConfig(EvolvingGridConfig):
    """The paper's grid: l in {100, 1e3, 1e4}, u up to all, NN1-NN4, a fixed batch size."""

    l: tuple[int, ...] = redefault(EvolvingGridConfig, "l", (100, 1000, 10000))  # noqa: E741
    u: tuple[str, ...] = redefault(EvolvingGridConfig, "u",
                                   ("0", "1000", "2000", "5000", "10000", "20000", "40000", "all"))
    nets: tuple[str, ...] = redefault(EvolvingGridConfig, "nets", ("nn1", "nn2", "nn3", "nn4"))
    schedules: tuple[str, ...] = redefault(EvolvingGridConfig, "schedules", ("stairs", "lin_t1", "lin", "exp"))
    batches: int = redefault(EvolvingGridConfig, "batches", 0)


@dataclass(frozen=True)
class Cell:
    """One (network, l, u) cell of the grid: its schedules are each compared with its baseline."""

    net: str
    labelled: int
    unlabelled: int
    all_unlabelled: bool  # u = every training example that is not labelled
    schedules: tuple[str, ...]

    def contender(self, schedule: str) -> str:
        """e.g. 'nn1 l=50 u=all lin', 'nn3 l=100 u=0 baseline'."""
        u = "all" if self.all_unlabelled else self.unlabelled
        return f"{self.net} l={self.labelled} u={u} {schedule}"


def grid_cells(cfg: EvolvingGridConfig, n_train: int, data_name: str) -> list[Cell]:
    """Every cell, in the order of the tables: network, l, then u ascending."""
    cells = []
    for net in cfg.nets:
        schedules = cfg.schedules if net == "nn1" else cfg.deep_schedules
        for labelled in cfg.l:
            unlabelled_all = max(n_train - labelled, 0)
            for unlabelled in sorted({unlabelled_all if u == "all" else int(u) for u in cfg.u}):
                if labelled + unlabelled > n_train:
                    raise ConfigError(f"l={labelled} + u={unlabelled} exceed the {n_train} training examples of "
                                      f"{data_name}; lower l or u")
                cells.append(Cell(net, labelled, unlabelled, unlabelled == unlabelled_all, schedules))
    return cells


def base_spec(data_name: str, overrides: dict[str, str]) -> RunSpec:
    """The settings every run shares, checked before anything is trained or written; the grid then sets
    each run's network, schedule, seed (and batch size)."""
    clash = [k for k in overrides if k.removeprefix("method.") in SET_BY_GRID]
    if clash:
        raise ConfigError(f"{clash[0]} is set by the grid; use schedules=..., nets=... and seeds=... instead")
    return resolve(data_name, "evolving", overrides)


def cell_spec(base: RunSpec, cell: Cell, schedule: str, seed: int, batches: int) -> RunSpec:
    """The run of one schedule (or the baseline) in one cell with one seed."""
    weighting = {"schedule": "constant", "value": 1.0} if schedule == BASELINE else {"schedule": schedule}
    method_cfg = dataclasses.replace(base.method_cfg, widths=NETS[cell.net], **weighting)
    batch = {"batch_size": math.ceil((cell.labelled + cell.unlabelled) / batches)} if batches else {}
    return dataclasses.replace(base, method_cfg=method_cfg, train=dataclasses.replace(base.train, seed=seed, **batch))


def schedule_label(schedule: str, spec: RunSpec) -> str:
    """The paper's name of a schedule with the runs' t1 / sigma, e.g. exp_10."""
    return Schedule(schedule, t1=spec.method_cfg.t1, sigma=spec.method_cfg.sigma).label


def points(per_cell: dict[tuple[str, str], float], contender: str, metric: str, signed: bool = False) -> str:
    """'mean ± std' of METRIC_mean and METRIC_std in per_cell {(contender, metric): value}, two decimals;
    signed: with a + for positive means."""
    mean, std = per_cell[contender, f"{metric}_mean"], per_cell[contender, f"{metric}_std"]
    return f"{mean:+.2f} ± {std:.2f}" if signed else f"{mean:.2f} ± {std:.2f}"


def train_cell(base: RunSpec, data: MultiTaskData, cell: Cell, seeds: tuple[int, ...], batches: int,
               test_errors: dict[str, list[float]]) -> list[Record]:
    """Train the baseline and every schedule of a cell with every seed; append each run's test error (%)
    to test_errors[contender] -> the runs' records (val/test error %, training seconds)."""
    task = data.tasks[0].name
    records = []
    for seed in seeds:
        semi = hide_labels(data, cell.labelled, cell.unlabelled, seed)
        for schedule in (BASELINE, *cell.schedules):
            run = train_run(cell_spec(base, cell, schedule, seed, batches), semi, out=None, echo=False)
            contender = cell.contender(schedule)
            errors = {split: 100 * run.tables[split][task]["error"] for split in ("val", "test")}
            records += [(contender, seed, task, split, "error", e) for split, e in errors.items()]
            records.append((contender, seed, task, "train", "seconds", run.summary["train_seconds"]))
            test_errors.setdefault(contender, []).append(errors["test"])
    return records


def cell_comparisons(cell: Cell, seeds: tuple[int, ...], test_errors: dict[str, list[float]],
                     task: str) -> list[Record]:
    """Each schedule of a cell against its baseline, test error in points: the paired difference per seed
    (delta_error), then with seed -1 its mean and std, the paired t-test p and the baseline's mean and std."""
    baseline = test_errors[cell.contender(BASELINE)]
    records = []
    for schedule in cell.schedules:
        contender = cell.contender(schedule)
        deltas = np.subtract(test_errors[contender], baseline)  # (seeds,)
        records += [(contender, seed, task, "test", "delta_error", float(d)) for seed, d in zip(seeds, deltas)]
        (delta_mean, delta_std), (base_mean, base_std) = mean_std(deltas), mean_std(baseline)
        stats = {"delta_error_mean": delta_mean, "delta_error_std": delta_std,
                 "p_paired": paired(test_errors[contender], baseline)["t_p"],
                 "baseline_error_mean": base_mean, "baseline_error_std": base_std}
        records += [(contender, -1, task, "test", metric, v) for metric, v in stats.items()]
    return records


def grid_tables(cfg: EvolvingGridConfig, cells: list[Cell], per_cell: dict[tuple[str, str], float],
                base: RunSpec) -> str:
    """One text table per (network, l): a row per u with the baseline's error and each schedule's difference
    to it (p), then the paper's row where it has one. per_cell: {(contender, metric): value} of the
    comparisons (seed -1)."""
    texts = []
    for net in cfg.nets:
        for labelled in cfg.l:
            block = [c for c in cells if c.net == net and c.labelled == labelled]
            schedules = block[0].schedules
            rows = [[c.unlabelled, points(per_cell, c.contender(schedules[0]), "baseline_error"),
                     *(f"{points(per_cell, c.contender(s), 'delta_error', signed=True)} "
                       f"(p={fmt(per_cell[c.contender(s), 'p_paired'], 3)})" for s in schedules)] for c in block]
            paper = PAPER_ALL_U.get((net, labelled))
            if paper:
                rows.append(["paper u=5e4-l", fmt(paper["baseline"], 2),
                             *(fmt(paper[s], 2) if s in paper else "" for s in schedules)])
            header = ["u", "baseline error %", *(schedule_label(s, base) for s in schedules)]
            texts.append(f"{net} {NETS[net]}, l = {labelled}: test error difference to the baseline, points "
                         f"(mean ± std over {len(cfg.seeds)} seeds, paired t-test)\n" + text_table(header, rows))
    return "\n\n".join(texts)


def plot_deltas(name: str, net: str, cells: list[Cell], per_cell: dict[tuple[str, str], float], base: RunSpec,
                out: Path) -> None:
    """out/delta_vs_u_NET.png: the mean difference to the baseline against u, one line per (l, schedule)."""
    series: dict[str, tuple[list, list]] = {}
    for c in cells:
        if c.net == net:
            for s in c.schedules:
                us, deltas = series.setdefault(f"l={c.labelled} {schedule_label(s, base)}", ([], []))
                us.append(c.unlabelled)
                deltas.append(per_cell[c.contender(s), "delta_error_mean"])
    line_plot(series, out / f"delta_vs_u_{net}.png", f"{name}: {net} {NETS[net]}", "unlabelled examples u",
              "test error - baseline (points)")


def evolving_grid(name: str, data_name: str, cfg: EvolvingGridConfig, defaults: dict[str, str],
                  out: Path) -> ExperimentResult:
    """Train every (cell, seed, baseline or schedule); write results.csv, table.txt, summary.json and the
    plots of the difference against u. `defaults`: the experiment's run keys, which cfg.overrides replace."""
    t0 = time.perf_counter()
    overrides = {**defaults, **cfg.overrides}
    base = base_spec(data_name, overrides)
    data = load_data(base)
    task = data.tasks[0].name
    n_train = data.train.size(data.input_names[0])
    cells = grid_cells(cfg, n_train, data_name)  # l + u checked before any training
    out.mkdir(parents=True, exist_ok=True)
    test_errors: dict[str, list[float]] = {}  # contender -> test error % per seed
    per_cell: dict[tuple[str, str], float] = {}  # (contender, metric) -> the comparison's value (seed -1)
    records = []
    for cell in cells:
        records += train_cell(base, data, cell, cfg.seeds, cfg.batches, test_errors)
        comparisons = cell_comparisons(cell, cfg.seeds, test_errors, task)
        records += comparisons
        per_cell.update({(r[0], r[4]): r[5] for r in comparisons if r[1] == -1})
        print(f"[{name}] {cell.net} l={cell.labelled} u={cell.unlabelled}: baseline "
              f"{fmt(per_cell[cell.contender(cell.schedules[0]), 'baseline_error_mean'], 2)}%  "
              + "  ".join(f"{s} {fmt(per_cell[cell.contender(s), 'delta_error_mean'], 2)}" for s in cell.schedules)
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    table = grid_tables(cfg, cells, per_cell, base)
    for net in cfg.nets:
        plot_deltas(name, net, cells, per_cell, base, out)
    grid = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "overrides"}
    runs = sum(len(cfg.seeds) * (1 + len(c.schedules)) for c in cells)
    summary = {"data": data_name, "grid": grid, "run_overrides": overrides, "runs": runs, "n_train": n_train}
    return finish(ExperimentResult(name, out, records, table, summary, time.perf_counter() - t0, data))


# Digits (1,078 training images), two recipes (docs/evolving.md has the tables and the pilots behind them):
# - paper (default): the paper's optimisation, sigmoid units and plain SGD at a constant learning rate, with its
#   schedule scaled to the run (t1 = 100 and sigma = 40 of 5000 epochs -> 20 and 8 of 1000 epochs), lr 0.1;
#   NN1's lin lowers the test error here (pre-registered test on 20 fresh seeds). NN3 barely trains with it
#   (39-66 % error at l <= 100 in 1000 epochs; the paper's NN3 baseline, 33.6 %, is also its worst).
# - fast: ReLU and momentum 0.9 (still linear in lambda: a step on lambda * J is lambda times the step on J),
#   40 epochs, t1 15, sigma 5: every net trains in seconds, and no schedule beats the baseline.
# Both take 12 minibatches per epoch whatever l + u is (the grid's batches=12). Masking noise 0.25 and no weight
# decay in all the paper's protocols (the method's defaults are the ones tuned on Tox21).
PAPER = {"noise": "0.25", "weight_decay": "0"}
DIGITS_COMMON = {**PAPER, "optimizer": "sgd", "patience": "0", "progress": "false"}
DIGITS_RECIPES = {
    "paper": {**DIGITS_COMMON, "activation": "sigmoid", "momentum": "0", "lr": "0.1", "epochs": "1000",
              "t1": "20", "sigma": "8"},
    "fast": {**DIGITS_COMMON, "activation": "relu", "momentum": "0.9", "lr": "0.02", "epochs": "40",
             "t1": "15", "sigma": "5"},
}


@register_experiment("evolving-digits", EvolvingDigitsConfig, "Belharbi et al. 2016 Table 1 on the embedded digits: "
                     "NN1/NN3, l x u x schedules vs the supervised baseline, 5 seeds, paired t-test; recipe=paper "
                     "(default, sigmoid + plain SGD, 1000 epochs, ~30 min on one core) or recipe=fast (ReLU + "
                     "momentum, ~5 min)")
def evolving_digits(cfg: EvolvingDigitsConfig, out: Path) -> ExperimentResult:
    return evolving_grid("evolving-digits", "digits", cfg, DIGITS_RECIPES[cfg.recipe], out)


MNIST = {**PAPER, "epochs": "5000", "batch_size": "600", "optimizer": "sgd", "momentum": "0", "lr": "0.01",
         "patience": "0", "progress": "false", "t1": "100", "sigma": "40", "data.val_fraction": "0.1666667"}


@register_experiment("evolving-mnist", EvolvingMnistConfig, "Belharbi et al. 2016 Table 1 protocol on MNIST-format "
                     "files (data.dir=DIR): 5000 epochs, batch 600, lr 0.01, stairs_100/lin_100/lin/exp_40; "
                     "GPU-sized, shrink with keys")
def evolving_mnist(cfg: EvolvingMnistConfig, out: Path) -> ExperimentResult:
    return evolving_grid("evolving-mnist", "mnist", cfg, MNIST, out)


@dataclass
class SchedulesConfig(ExperimentConfig):
    epochs: int = option(300, "epochs drawn (lin ends at the last one)", low=1)
    t1: float = option(100.0, "stairs and lin_t1: the epoch where lambda_s reaches 1", low=0)
    sigma: float = option(40.0, "exp: lambda_r(t) = exp(-t / sigma)", low=0, low_open=True)
    seeds: tuple[int, ...] = field(default=(), metadata={"hidden": True})  # nothing is trained
    takes_overrides: ClassVar[bool] = False


@register_experiment("schedules", SchedulesConfig, "Fig. 1 of Belharbi et al. 2016: lambda_s(t) of every schedule "
                     "(epochs, t1, sigma as keys), PNG + CSV")
def schedules(cfg: SchedulesConfig, out: Path) -> ExperimentResult:
    """schedules.png and schedules.csv (schedule, epoch, lambda_s, lambda_r); results.csv and the table hold,
    per schedule, lambda_s at the first and the last epoch and the first epoch where lambda_s >= 0.5."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    epochs = list(range(cfg.epochs))
    series, curve, records, rows = {}, [], [], []
    for name in ("stairs", "lin_t1", "lin", "exp"):
        s = Schedule(name, cfg.epochs, cfg.t1, cfg.sigma)
        lam = [s.main(t) for t in epochs]
        series[s.label] = (epochs, lam)
        curve += [(s.label, t, v, 1.0 - v) for t, v in zip(epochs, lam)]
        half = next((t for t, v in zip(epochs, lam) if v >= 0.5), math.nan)
        rows.append((s.label, lam[0], half, lam[-1]))
        records += [(s.label, -1, "main", "train", metric, v) for metric, v in
                    (("lambda_s_first", lam[0]), ("half_weight_epoch", half), ("lambda_s_last", lam[-1]))]
    line_plot(series, out / "schedules.png", "lambda_s(t); lambda_r(t) = 1 - lambda_s(t)", "epoch t", "lambda_s")
    write_csv(out / "schedules.csv", ("schedule", "epoch", "lambda_s", "lambda_r"), curve)
    table = text_table(("schedule", "lambda_s at epoch 0", "first epoch with lambda_s >= 0.5",
                        f"lambda_s at epoch {cfg.epochs - 1}"), rows)
    summary = {"epochs": cfg.epochs, "t1": cfg.t1, "sigma": cfg.sigma, "files": ["schedules.png", "schedules.csv"]}
    return finish(ExperimentResult("schedules", out, records, table, summary, time.perf_counter() - t0))
