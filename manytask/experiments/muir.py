"""MUiR recipes: the grouped linear regression benchmark and a small cross-modal run (Meyerson &
Miikkulainen, "Modular Universal Reparameterization: Deep Multi-Task Learning Across Diverse Domains",
NeurIPS 2019).

muir-synthetic   30 linear tasks in 3 rank-one groups (Kang et al. 2011), clean and noisy: single-task
                 (per-task minimum-norm least squares on all training points), no-sharing (MUiR's
                 reparameterised model with one hypermodule per task, never aligned), an oracle alignment
                 that knows the groups (skipped, in one line, for a file without them), and MUiR;
                 full-batch training; RMSE = sqrt(mean over tasks of test MSE) and, where the groups are
                 known, the tasks MUiR leaves in a wrong group; seeds 0,1,2, next to the poster's table.
muir-crossmodal  a conv net on digits, an LSTM on SMILES characters (one Tox21 assay) and an MLP on
                 Tox21 fingerprints (another assay; data set `crossmodal`): no-sharing vs MUiR, per-task
                 table, sharing figure.

Sharing statistics of every MUiR run: sharing.csv (generation, modules in use, share of modules used by
each subset of tasks) and sharing.png / modules.png in the run directory.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn.linear_model import LinearRegression

from ..config import ConfigError, option
from ..data.base import MultiTaskData
from ..registry import register_experiment
from ..report import line_plot, mean_std, text_table, write_csv
from ..runs import RunSpec, load_data, records, resolve, train_run
from ..tasks import Task
from .runner import Contender, ExperimentConfig, ExperimentResult, compare, finish

# ---- sharing statistics -------------------------------------------------------------------------


def history_shares(row: dict) -> dict[str, float]:
    """{"a+b": share of the modules in use whose users are exactly tasks a and b} of one generation's row of
    MuirHooks.history (its "subsets" counts)."""
    total = max(1, sum(row["subsets"].values()))
    return {k: v / total for k, v in row["subsets"].items()}


def write_sharing(history: list[dict], out: Path, label: str = "") -> None:
    """sharing.csv (one row per generation and subset), modules.png and sharing.png under `out`; history:
    MuirHooks.history."""
    subsets = sorted({k for h in history for k in h["subsets"]}, key=lambda s: (s.count("+"), s))
    rows = []
    for h in history:
        shares = history_shares(h)
        rows += [(h["generation"], h["step"], h["modules"], h["changed"], s, shares.get(s, 0.0)) for s in subsets]
    write_csv(out / "sharing.csv", ("generation", "step", "modules", "changed", "subset", "share"), rows)
    generations = [h["generation"] for h in history]
    line_plot({"modules in use": (generations, [h["modules"] for h in history])}, out / "modules.png",
              f"{label} hypermodules in use", "generation", "modules")
    if len(subsets) <= 12:  # one line per subset of tasks; with many tasks the CSV is the record
        line_plot({s: (generations, [history_shares(h).get(s, 0.0) for h in history]) for s in subsets},
                  out / "sharing.png", f"{label} share of modules used exactly by each subset of tasks",
                  "generation", "share of modules in use")


# ---- muir-synthetic -----------------------------------------------------------------------------

POSTER = {"clean": {"single-task": 1.35, "oracle": 0.77, "muir": 0.00},  # no "no-sharing" row in the poster
          "noisy": {"single-task": 1.49, "oracle": 0.37, "muir": 0.38}}
SYNTH_METHOD = {"widths": "", "bias": "false", "context": "1", "challengers": "4", "init": "he",
                "soft_lr": "0.01", "steps_per_generation": "100", "challenger_mass": "0.8",  # 0.8: uniform start
                "lr": "1e-3", "weight_decay": "0"}
SYNTH_CONTENDERS = ("single-task", "no-sharing", "oracle", "muir")
FULL_BATCH_KEYS = ("epochs", "batch_size", "patience")  # set by muir-synthetic, not by the user


@dataclass
class MuirSyntheticConfig(ExperimentConfig):
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds: each draws its own data (data.seed) and initial weights",
                                    low=0, min_len=1)
    settings: tuple[Literal["clean", "noisy"], ...] = option(
        ("clean", "noisy"), "label noise: clean (none) and noisy (std `noise`); ignored with data.path",
        choices=("clean", "noisy"), min_len=1)
    noise: float = option(0.31, "std of the Gaussian label noise of the noisy setting", low=0.0)
    generations: int = option(1000, "generations of the EA (no-sharing and oracle train as many steps)", low=0)
    final: int = option(200, "generations with the alignment fixed after the EA", low=0)
    contenders: tuple[Literal["single-task", "no-sharing", "oracle", "muir"], ...] = option(
        SYNTH_CONTENDERS, "contenders to run (oracle only where the data knows its groups)",
        choices=SYNTH_CONTENDERS, min_len=1)


def full_batch(spec: RunSpec, data: MultiTaskData, steps: int) -> RunSpec:
    """spec with training for `steps` full-batch steps: one step per epoch holding every training point
    of every input, no early stopping (the hooks' schedule may stop it earlier), validated every 100 steps
    (without early stopping, validation does not change the training; every step would cost 2x the time)."""
    batch = max(data.train.size(name) for name in data.input_names)
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=steps, batch_size=batch, patience=0,
                                                               val_every=100))


def least_squares(data: MultiTaskData) -> tuple[dict, float]:
    """Single-task learning, the benchmark's reference: per task, the minimum-norm least-squares weight
    vector on ALL its training points, the training and the validation split together (it has nothing to
    choose, so nothing is held out for it: 15 points per task by default), no bias (scikit-learn's
    LinearRegression, an lstsq solve; with 15 points in 20 dimensions the weights outside the data's span
    are 0). -> ({split: {task: {"mse"}}}, s)."""
    t0 = time.perf_counter()
    tables = {name: {} for name in ("train", "val", "test")}
    for t in data.tasks:
        x = torch.cat([t.select(s.inputs).flatten(1) for s in (data.train, data.val)]).numpy()  # (n, d)
        y = torch.cat([s.labels[t.name] for s in (data.train, data.val)]).numpy()  # (n,)
        known = ~np.isnan(y)
        fit = LinearRegression(fit_intercept=False).fit(x[known], y[known])
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
            x, y = t.select(split.inputs).flatten(1).numpy(), split.labels[t.name].numpy()  # (n, d), (n,)
            known = ~np.isnan(y)
            tables[name][t.name] = {"mse": float(np.mean((fit.predict(x[known]) - y[known]) ** 2)) if known.any() else math.nan}
    return tables, time.perf_counter() - t0


def misplaced(sharing: dict[int, list[str]], groups: dict[str, int]) -> list[str]:
    """Tasks left in a wrong group: per hypermodule in use, the users whose true group is not the one most
    of its users belong to (ties: the lowest group number). sharing = {module: task names}."""
    wrong = set()
    for users in sharing.values():
        true = [groups[u] for u in users]
        major = max(sorted(set(true)), key=true.count)
        wrong.update(u for u, g in zip(users, true) if g != major)
    return sorted(wrong)


def rmse(tables: dict, tasks: list[Task]) -> float:
    """sqrt(mean over tasks of test MSE)."""
    return math.sqrt(float(np.mean([tables["test"][t.name]["mse"] for t in tasks])))


def synthetic_plan(cfg: MuirSyntheticConfig) -> list[tuple[str, int, MultiTaskData, dict[str, RunSpec | None]]]:
    """[(setting, seed, data, {contender: its full-batch spec, None for least squares})], every key resolved
    and every data set drawn before anything trains. The user's data.KEY, muir and training keys apply to
    every contender; a contender's schedule (generations, final, alignment) and the seeds win over them."""
    if any(k in cfg.overrides for k in FULL_BATCH_KEYS):
        raise ConfigError(f"{', '.join(k for k in FULL_BATCH_KEYS if k in cfg.overrides)}: muir-synthetic trains full "
                          "batch for (generations + final) x steps_per_generation steps; set those instead")
    if cfg.generations + cfg.final < 1:
        raise ConfigError(f"generations={cfg.generations} final={cfg.final}: need generations + final >= 1")
    data_keys = {k: v for k, v in cfg.overrides.items() if k.startswith("data.")}
    user_keys = {k: v for k, v in cfg.overrides.items() if not k.startswith("data.")}
    total = cfg.generations + cfg.final
    schedules = {"no-sharing": {"generations": "0", "final": str(total)},
                 "muir": {"generations": str(cfg.generations), "final": str(cfg.final)}}
    plan = []
    for setting in ("file",) if "data.path" in data_keys else cfg.settings:
        noise = {} if setting == "file" else {"data.noise": str(cfg.noise if setting == "noisy" else 0.0)}
        for seed in cfg.seeds:
            keys = {**data_keys, **noise, **SYNTH_METHOD, "progress": "false", **user_keys,
                    "seed": str(seed), "data.seed": str(seed)}
            base = resolve("grouped_regression", "muir", keys)
            data = load_data(base)
            block = {"block": f"1,{next(iter(data.input_shapes.values()))[0]}"}  # one 1 x d block per task
            trained = dict(schedules)
            groups = data.meta.get("groups")
            if groups is not None:  # the oracle alignment: psi(task) = the first task of its group
                trained["oracle"] = {**schedules["no-sharing"], "alignment": ",".join(str(groups.index(g)) for g in groups)}
            elif "oracle" in cfg.contenders and seed == cfg.seeds[0]:
                print(f"[muir-synthetic] oracle skipped: {data_keys['data.path']} has no `groups` array (the true group "
                      "of each task), which the oracle alignment needs", flush=True)
            steps = total * base.method_cfg.steps_per_generation
            specs = {label: None if label == "single-task" else
                     full_batch(resolve("grouped_regression", "muir", {**block, **keys, **trained[label]}), data, steps)
                     for label in cfg.contenders if label == "single-task" or label in trained}
            plan.append((setting, seed, data, specs))
    return plan


@register_experiment("muir-synthetic", MuirSyntheticConfig,
                     "MUiR on 30 grouped linear tasks, clean and noisy: single-task, no-sharing, oracle, MUiR; "
                     "3 seeds; default 1000 + 200 generations = 120,000 full-batch steps per run")
def muir_synthetic(cfg: MuirSyntheticConfig, out: Path) -> ExperimentResult:
    """Every contender on every (setting, seed): out/SETTING/CONTENDER/seedS run directories (sharing.csv
    and figures in MUiR's), results.csv with contender SETTING/CONTENDER: every task's metrics, the
    benchmark's RMSE (task "all") and seconds per run, their means over seeds (seed -1) and the poster's
    RMSE. The other keys are data.KEY (data.path=FILE.npz replaces the settings by that file), muir keys
    and training keys (lr=...)."""
    t0 = time.perf_counter()
    result_records, runs, rmse_of, seconds_of = [], {}, {}, {}
    for setting, seed, data, specs in synthetic_plan(cfg):
        for label, spec in specs.items():
            name = f"{setting}/{label}"
            if spec is None:
                tables, seconds = least_squares(data)
                what = "least squares"
            else:
                run = train_run(spec, data, out / setting / label, name=f"seed{seed}", echo=False)
                runs.setdefault(name, []).append(run)
                tables, seconds = run.tables, run.summary["wall_seconds"]
                history = run.trainer.hooks.history
                what = f"{history[-1]['modules']} modules, {run.trainer.step} steps"
                moved = [task for h in history for task in h.get("moved", [])]
                what += f", moved in the last stage: {', '.join(moved)}" if moved else ""
                if label == "muir":
                    write_sharing(history, run.dir, f"{setting} seed {seed}:")
                if "groups" in data.meta:
                    wrong = misplaced(run.model.sharing(), dict(zip((t.name for t in data.tasks), data.meta["groups"])))
                    result_records.append((name, seed, "all", "train", "misplaced", len(wrong)))
                    what += f", misplaced tasks: {', '.join(wrong) or 'none'}"
            rmse_of.setdefault(name, []).append(rmse(tables, data.tasks))
            seconds_of.setdefault(name, []).append(seconds)
            result_records += records(name, seed, tables) + [(name, seed, "all", "test", "rmse", rmse_of[name][-1]),
                                                             (name, seed, "all", "train", "seconds", seconds)]
            print(f"[muir-synthetic] {setting} {label} seed {seed}: RMSE {rmse_of[name][-1]:.4f}, {what}, "
                  f"{seconds:.0f} s", flush=True)
    rows = []
    for name, values in rmse_of.items():
        setting, label = name.split("/")
        (mean, std), seconds = mean_std(values), float(np.mean(seconds_of[name]))
        poster = POSTER.get(setting, {}).get(label, math.nan)
        rows.append((setting, label, mean, std, seconds, poster))
        result_records += [(name, -1, "all", "test", "rmse_mean", mean), (name, -1, "all", "test", "rmse_std", std),
                           (name, -1, "all", "train", "seconds_per_run", seconds)]
        result_records += [] if math.isnan(poster) else [(name, -1, "all", "test", "poster_rmse", poster)]
    table = text_table(("setting", "contender", "RMSE mean", "std", "s per run", "poster"), rows)
    summary = {"data": "grouped_regression", "seeds": list(cfg.seeds), "generations": cfg.generations,
               "final": cfg.final, "contenders": list(rmse_of)}
    return finish(ExperimentResult("muir-synthetic", out, result_records, table, summary, time.perf_counter() - t0,
                                   runs=runs))


# ---- muir-crossmodal ----------------------------------------------------------------------------

CROSS_METHOD = {"arch": "smiles:lstm", "vocab": "64", "block": "16,16", "context": "4", "challengers": "1",
                "challenger_mass": "0.5", "soft_lr": "0.1", "steps_per_generation": "50", "burn_in": "2",
                "generations": "1000", "widths": "64,64", "dropout": "0", "batch_size": "128", "lr": "1e-3",
                "weight_decay": "0"}


@dataclass
class MuirCrossmodalConfig(ExperimentConfig):
    seeds: tuple[int, ...] = option((0,), "seeds: every contender trains once per seed", low=0, min_len=1)


@register_experiment("muir-crossmodal", MuirCrossmodalConfig,
                     "MUiR across a conv net (digits), an LSTM (SMILES) and an MLP (Tox21 fingerprints) vs the "
                     "same models without sharing; per-task table and sharing figure")
def muir_crossmodal(cfg: MuirCrossmodalConfig, out: Path) -> ExperimentResult:
    """The other keys as for every compare() experiment: epochs=..., data.KEY=..., LABEL.KEY=..."""
    contenders = [Contender("no-sharing", "muir", {**CROSS_METHOD, "generations": "0"}),
                  Contender("muir", "muir", CROSS_METHOD)]
    result = compare("muir-crossmodal", "crossmodal", contenders, cfg, out,
                     defaults={"epochs": "10", "patience": "0", "progress": "false"})
    for run in result.runs["muir"]:
        write_sharing(run.trainer.hooks.history, run.dir, "cross-modal:")
        last = run.trainer.hooks.history[-1]
        shares = history_shares(last)
        print(f"muir seed {run.spec.train.seed}: {last['modules']} hypermodules in use of "
              f"{run.model.muir.n_locations} locations after generation {last['generation']}; shares: "
              + ", ".join(f"{subset} {share:.3f}" for subset, share in sorted(shares.items(), key=lambda item: -item[1])))
    return result
