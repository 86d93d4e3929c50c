"""The experiments of Ramabaja, Interconnected Neural Networks for Multi Task Learning, 2018: embedded
Tox21, seeded random split, 3 seeds.

    manytask run icnn-tox21         Table 1: ICNN vs NN MTL, NN STL, NN2 STL
    manytask run icnn-tox21-noise   Table 2: the same with 4 random correlated tasks added
    manytask run icnn-tox21-fake    section 5.3: each assay alone with 11 fake correlated tasks
    manytask run icnn-prune         sections 6.2 and 8: prune connectors after training, fine-tune
    manytask run icnn-merge         one table from icnn-tox21(-noise) directories run with different seeds=

The four contenders (section 4, scenario 1):
    ICNN      icnn with widths W_I per subnetwork (icnn_widths=, default 128,64)
    NN_MTL    hard sharing, widths W_M (mtl_widths=, default 1024,512 x N/12 for N tasks, as the thesis
              grew it by 33% for 16 tasks)
    NN_STL    one net per task whose units sum to NN MTL's (network A): widths W_M / N per task
    NN2_STL   one net per task with as many parameters as one ICNN subnetwork's root weights and biases
              (network B): stl params_per_task = mlp_params(d, W_I, 1)
icnn-tox21 adds ICNN_joint: the same ICNN trained without gradient isolation (isolate=false), an ablation.
Other keys go to compare(): training keys (epochs=, lr=...), data.KEY=, LABEL.KEY= (e.g. ICNN.dropout=0.5).
Every ICNN run directory gets connectors.csv/png (the last inter-layer's heatmap, ICNN.artifacts).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from safetensors.torch import save_model
from torch import nn

from ..config import ConfigError, option
from ..data.base import MultiTaskData
from ..methods.icnn import ICNNHooks, connector_heatmap
from ..metrics import mean_over_tasks
from ..nn.interconnected import apply_masks, count_connectors, prune_connectors
from ..nn.mlp import mlp_params
from ..registry import register_experiment
from ..report import fmt, mean_pm, mean_std, read_results, text_table, write_matrix
from ..runs import RunSpec, load_data, load_run, n_params, records, resolve
from ..train import Trainer, evaluate_split
from .runner import Contender, ExperimentConfig, ExperimentResult, compare, finish

# Thesis Table 1 and Table 2 (test AUC, mean of 3 trainings), task names as in our Tox21 file.
_T1 = {  # task: (ICNN MTL, NN MTL, NN STL, NN2 STL)
    "NR-AhR": (0.81, 0.77, 0.78, 0.65), "NR-AR": (0.71, 0.66, 0.64, 0.46), "NR-AR-LBD": (0.52, 0.54, 0.56, 0.47),
    "NR-Aromatase": (0.71, 0.69, 0.71, 0.59), "NR-ER": (0.71, 0.75, 0.74, 0.68), "NR-ER-LBD": (0.63, 0.61, 0.61, 0.53),
    "NR-PPAR-gamma": (0.71, 0.62, 0.59, 0.49), "SR-ARE": (0.70, 0.67, 0.70, 0.64), "SR-ATAD5": (0.72, 0.62, 0.71, 0.43),
    "SR-HSE": (0.63, 0.55, 0.57, 0.49), "SR-MMP": (0.80, 0.76, 0.77, 0.67), "SR-p53": (0.75, 0.69, 0.73, 0.48)}
_T2 = {
    "NR-AhR": (0.79, 0.78, 0.78, 0.65), "NR-AR": (0.70, 0.69, 0.64, 0.46), "NR-AR-LBD": (0.62, 0.59, 0.56, 0.47),
    "NR-Aromatase": (0.72, 0.65, 0.71, 0.59), "NR-ER": (0.72, 0.74, 0.74, 0.68), "NR-ER-LBD": (0.63, 0.60, 0.61, 0.53),
    "NR-PPAR-gamma": (0.69, 0.66, 0.59, 0.49), "SR-ARE": (0.70, 0.68, 0.70, 0.64), "SR-ATAD5": (0.71, 0.72, 0.71, 0.43),
    "SR-HSE": (0.65, 0.60, 0.57, 0.49), "SR-MMP": (0.79, 0.76, 0.77, 0.67), "SR-p53": (0.71, 0.73, 0.73, 0.48)}
COLUMNS = ("ICNN", "NN_MTL", "NN_STL", "NN2_STL")
TOX21 = tuple(_T1)

# Training settings of every experiment here (before the user's overrides), the same for every contender:
# early stopping on the mean validation loss with a short patience, and L2 weight decay (Adam's
# weight_decay) 5e-4, chosen on seed 0 by the ICNN's mean VALIDATION AUC among 0, 1e-4, 5e-4, 1e-3, 3e-3, 1e-2
# (docs/icnn.md, "Choosing the recipe"): without it every network overfits Tox21 within 3 epochs. Adam lr 1e-3,
# batch 128 and dropout 0.25 in every network, as when the recipe was chosen (the methods' own defaults differ);
# no schedule and chemprop's aggregation on graphs too (hard sharing's graph recipe would differ).
TRAIN = {"epochs": 40, "patience": 3, "weight_decay": 5e-4, "batch_size": 128, "lr": 1e-3, "dropout": 0.25,
         "lr_schedule": "constant", "encoder_aggregation": "norm"}


@dataclass
class IcnnConfig(ExperimentConfig):
    icnn_widths: tuple[int, ...] = option((128, 64), "ICNN units per subnetwork; the second and later widths are "
                                                     "inter-layers", low=1, min_len=2)


@dataclass
class IcnnTox21Config(IcnnConfig):
    mtl_widths: tuple[int, ...] | None = option(None, "NN MTL trunk widths; none: 1024,512 scaled by N/12 for N tasks",
                                                low=1, min_len=2)


@dataclass
class IcnnFakeConfig(IcnnTox21Config):
    assays: tuple[str, ...] = option(TOX21, "Tox21 assay names (default all 12), each trained with 11 fake tasks", choices=TOX21, min_len=1)
    with_mtl: bool = option(False, "also train NN MTL on every assay + 11 fake tasks")


@dataclass
class IcnnPruneConfig(IcnnConfig):
    prune: float = option(0.9, "fraction of each inter-layer's connectors set to zero, smallest |w| first",
                          low=0, high=1, high_open=True)
    finetune: int = option(3, "epochs of fine-tuning after pruning, pruned connectors held at zero", low=0)
    sources: tuple[str, ...] = option((), "trained ICNNs to prune instead of training new ones: run directories or "
                                          "icnn-tox21 directories (their ICNN/seed* runs)")


@dataclass
class IcnnMergeConfig(ExperimentConfig):
    sources: tuple[str, ...] = option((), "directories of one experiment (icnn-tox21 or icnn-tox21-noise) run "
                                          "with different seeds=")
    takes_overrides: ClassVar[bool] = False


def paper_table(table: dict[str, tuple[float, ...]]) -> dict[str, dict[str, float]]:
    """{column: {task: AUC}} for compare(paper=...)."""
    return {c: {t: v[j] for t, v in table.items()} for j, c in enumerate(COLUMNS)}


def contenders(data: MultiTaskData, icnn_w: tuple[int, ...], mtl_w: tuple[int, ...] | None = None) -> list[Contender]:
    """The thesis's four networks for `data` (see the module docstring); mtl_w None: 1024,512 x N/12."""
    N, d = len(data.tasks), math.prod(data.input_shapes["x"])
    scale = N / 12  # the thesis grew NN MTL by 33% when it added 4 tasks to 12
    mtl_w = mtl_w or tuple(round(w * scale) for w in (1024, 512))
    stl_w = tuple(max(1, round(w / N)) for w in mtl_w)  # network A: units sum to NN MTL's
    roots = mlp_params(d, icnn_w, 1)  # one ICNN subnetwork's roots + biases + head
    return [Contender("ICNN", "icnn", {"widths": icnn_w}),
            Contender("NN_MTL", "hard_sharing", {"widths": mtl_w}),
            Contender("NN_STL", "stl", {"widths": stl_w}),
            Contender("NN2_STL", "stl", {"widths": icnn_w, "params_per_task": roots})]


def task_mean_decay(defaults: dict, cfg: ExperimentConfig, cons: list[Contender], n_tasks: int) -> dict:
    """compare()'s defaults with the experiment's weight decay as Adam's L2 under the task mean for every
    contender, as when its results were measured: icnn's isolated subnetworks and stl's networks take
    weight_decay as that of each task's own objective (make_optimizer's "tasks" groups), so they are given
    n_tasks times it (LABEL.weight_decay; a user's own LABEL.weight_decay is kept)."""
    wd = float({**defaults, **cfg.overrides}["weight_decay"])
    per_task = [c.label for c in cons if c.method == "stl" or (c.method == "icnn" and c.overrides.get("isolate", True))]
    return {**defaults, **{f"{label}.weight_decay": wd * n_tasks for label in per_task
                           if f"{label}.weight_decay" not in cfg.overrides}}


def tox21(cfg: ExperimentConfig, data_defaults: dict | None = None) -> tuple[MultiTaskData, dict]:
    """The experiment's Tox21 data, loaded once (the user's data.KEY over `data_defaults`), and compare()'s
    defaults: TRAIN plus data_defaults."""
    defaults = {**TRAIN, **(data_defaults or {})}
    data_keys = {k: v for k, v in {**defaults, **cfg.overrides}.items() if k.startswith("data.")}
    return load_data(resolve("tox21", "icnn", data_keys)), defaults


def mean_connectors(result: ExperimentResult, label: str = "ICNN") -> np.ndarray:
    """The mean over seeds of the last inter-layer's connector matrix (each run's connectors.csv), written
    as connectors_mean.csv/png in the experiment directory; -> the mean (N_src, N_dst) matrix."""
    names = [t.name for t in result.data.tasks]
    maps = [connector_heatmap(r.model, names) for r in result.runs[label]]
    mean = np.mean([m.values for m in maps], axis=0)
    write_matrix(result.dir, dataclasses.replace(
        maps[0], name="connectors_mean", values=mean,
        title=f"sum |W(source->target)|, last inter-layer, mean of {len(maps)} seeds (diagonal omitted)"))
    return mean


def diff_line(result: ExperimentResult, tasks: tuple[str, ...], a: str = "ICNN", b: str = "NN2_STL") -> tuple[float, float, str]:
    """Mean test AUC over `tasks` of a minus b, per seed -> (mean, std, text)."""
    ts = [t for t in result.data.tasks if t.name in tasks]
    per = [mean_over_tasks(ra.tables["test"], ts)["auc"] - mean_over_tasks(rb.tables["test"], ts)["auc"]
           for ra, rb in zip(result.runs[a], result.runs[b])]
    m, s = mean_std(per)
    return m, s, f"{a} - {b}, mean test AUC over {len(ts)} tasks: {mean_pm(per)} (per seed {[round(v, 4) for v in per]})"


def means_over(result: ExperimentResult, tasks: tuple[str, ...]) -> dict[str, list[float]]:
    ts = [t for t in result.data.tasks if t.name in tasks]
    return {label: [mean_over_tasks(r.tables["test"], ts)["auc"] for r in runs] for label, runs in result.runs.items()}


def amend(result: ExperimentResult, text: str, summary: dict) -> ExperimentResult:
    """Add an experiment's own figures to a compare(write=False) result: `text` to the table and `summary`
    to the summary; then write and print it."""
    result.table += "\n" + text
    result.summary.update(summary)
    return finish(result)


@register_experiment("icnn-tox21", IcnnTox21Config, "Ramabaja 2018, Table 1: ICNN vs NN MTL / NN STL / NN2 STL on Tox21, 3 seeds")
def icnn_tox21(cfg: IcnnTox21Config, out: Path) -> ExperimentResult:
    data, defaults = tox21(cfg)
    cons = contenders(data, cfg.icnn_widths, cfg.mtl_widths)
    cons.append(Contender("ICNN_joint", "icnn", {**cons[0].overrides, "isolate": False}))  # ablation: trained jointly
    defaults = task_mean_decay(defaults, cfg, cons, len(data.tasks))
    result = compare("icnn-tox21", "tox21", cons, cfg, out, defaults=defaults, paper=paper_table(_T1), data=data,
                     write=False)
    mean = mean_connectors(result)
    m, s, line = diff_line(result, TOX21)
    return amend(result, line, {"icnn_minus_nn2": {"mean": m, "std": s},
                                "connector_sum_offdiag": float(mean.sum() - np.trace(mean))})


@register_experiment("icnn-tox21-noise", IcnnTox21Config, "Ramabaja 2018, Table 2: Tox21 plus 4 random correlated tasks, 3 seeds")
def icnn_tox21_noise(cfg: IcnnTox21Config, out: Path) -> ExperimentResult:
    data, defaults = tox21(cfg, {"data.fake_tasks": 4})
    cons = contenders(data, cfg.icnn_widths, cfg.mtl_widths)
    defaults = task_mean_decay(defaults, cfg, cons, len(data.tasks))
    result = compare("icnn-tox21-noise", "tox21", cons, cfg, out, defaults=defaults, paper=paper_table(_T2), data=data,
                     write=False)
    mean = mean_connectors(result)
    names = [t.name for t in data.tasks]
    real = [i for i, n in enumerate(names) if n in TOX21]
    fake = [i for i, n in enumerate(names) if n not in TOX21]
    off = ~np.eye(len(names), dtype=bool)

    def block(src, dst):  # mean sum|W| per ordered pair between two groups (diagonal excluded)
        sel = np.zeros_like(off)
        sel[np.ix_(src, dst)] = True
        return float(mean[sel & off].mean())

    blocks = {"real->real": block(real, real), "fake->fake": block(fake, fake),
              "real->fake": block(real, fake), "fake->real": block(fake, real)}
    means = means_over(result, TOX21)
    m, s, line = diff_line(result, TOX21)
    text = "\n".join([text_table(("pair of groups", "mean sum|W| per ordered pair"), list(blocks.items())),
                      text_table(("contender", "mean test AUC, 12 Tox21 tasks"), [(k, mean_pm(v)) for k, v in means.items()]),
                      line])
    return amend(result, text, {"connector_blocks": blocks, "icnn_minus_nn2_tox21": {"mean": m, "std": s},
                                "mean_test_auc_tox21": means})


@register_experiment("icnn-tox21-fake", IcnnFakeConfig, "Ramabaja 2018, s. 5.3: each Tox21 assay with 11 fake correlated tasks (ICNN), 3 seeds")
def icnn_tox21_fake(cfg: IcnnFakeConfig, out: Path) -> ExperimentResult:
    """For each assay: data.tasks=ASSAY data.fake_tasks=11, ICNN (and NN MTL with with_mtl=true), trained
    into out/ASSAY; the results hold the assay's records of every run, the table its test AUC beside its
    Table 1 value."""
    t0 = time.perf_counter()
    labels = ("ICNN", "NN_MTL") if cfg.with_mtl else ("ICNN",)
    rows, recs, heat = [], [], {}
    for assay in cfg.assays:
        data, defaults = tox21(cfg, {"data.tasks": (assay,), "data.fake_tasks": 11})
        cons = [c for c in contenders(data, cfg.icnn_widths, cfg.mtl_widths) if c.label in labels]
        defaults = task_mean_decay(defaults, cfg, cons, len(data.tasks))
        result = compare(f"icnn-tox21-fake {assay}", "tox21", cons, cfg, out / assay, defaults=defaults, data=data, echo=False)
        mean = mean_connectors(result)
        heat[assay] = {"to_assay_from_fakes": float(mean[1:, 0].mean()), "fake_to_fake": float(
            mean[1:, 1:][~np.eye(len(mean) - 1, dtype=bool)].mean())}
        recs += [r for r in result.records if r[2] == assay]
        aucs = {label: result.metric(label, assay) for label in labels}
        rows.append((assay, *(mean_pm(aucs[lb]) for lb in labels), fmt(_T1[assay][0], 2), fmt(_T1[assay][1], 2)))
        print(f"[icnn-tox21-fake] {assay}: " + ", ".join(f"{lb} {mean_pm(aucs[lb])}" for lb in labels), flush=True)
    table = text_table(("assay + 11 fake", *(f"{lb} test AUC" for lb in labels), "paper T1 ICNN", "paper T1 NN MTL"), rows)
    return finish(ExperimentResult("icnn-tox21-fake", out, recs, table, {"assays": list(cfg.assays), "connector_means": heat},
                                   time.perf_counter() - t0))


class KeepPruned(ICNNHooks):
    """Fine-tuning after pruning: put the pruned connectors back to zero after every optimizer step; the
    weight decay of each subnetwork as in its training (ICNNHooks, no connector L1)."""

    def __init__(self, kept):
        super().__init__(0.0)
        self.kept = kept

    def after_step(self, trainer) -> None:
        apply_masks(self.kept)


def trained_icnns(sources: tuple[str, ...]) -> list[tuple[RunSpec, MultiTaskData, nn.Module]]:
    """(spec, data, model) of every ICNN run in `sources`: run directories, or experiment directories whose
    ICNN/seed* runs are used."""
    dirs = []
    for src in map(Path, sources):
        found = [src] if (src / "config.json").exists() else sorted(src.glob("ICNN/seed*"))
        if not found:
            raise ConfigError(f"sources={src}: neither a run directory nor an experiment directory with ICNN/seed* runs")
        dirs += found
    runs = [load_run(d) for d in dirs]
    for d, (spec, _, _) in zip(dirs, runs):
        if spec.method != "icnn":
            raise ConfigError(f"sources=...: {d} is a {spec.method} run, not icnn")
    return runs


def prune_and_finetune(spec: RunSpec, data: MultiTaskData, model: nn.Module, fraction: float,
                       epochs: int) -> tuple[dict, list[tuple]]:
    """Zero the `fraction` smallest connectors of each inter-layer, then fine-tune `epochs` epochs with them
    held at zero. -> (the table row of this seed, records): per stage ("ICNN", "ICNN pruned", "ICNN
    fine-tuned") the test metrics per task and the mean AUC, and (task "all", split "model") the non-zero
    parameters and connectors."""
    seed, total = spec.train.seed, n_params(model)
    model.to("cpu")
    connectors0 = count_connectors(model)[0]
    recs, aucs, counts = [], {}, {}

    def stage(label: str) -> None:
        table = evaluate_split(model, data.test, data.tasks)[0]
        aucs[label], counts[label] = mean_over_tasks(table, data.tasks)["auc"], count_connectors(model)[0]
        recs.extend([*records(label, seed, {"test": table}), (label, seed, "mean", "test", "auc", aucs[label]),
                     (label, seed, "all", "model", "params", total - (connectors0 - counts[label])),
                     (label, seed, "all", "model", "connectors", counts[label])])

    stage("ICNN")
    kept = prune_connectors(model, fraction)
    stage("ICNN pruned")
    if epochs > 0:
        ft = dataclasses.replace(spec.train, epochs=epochs, patience=0, progress=False)
        Trainer(model, data, ft, KeepPruned(kept)).fit()
        model.to("cpu")
        stage("ICNN fine-tuned")
    final = counts.get("ICNN fine-tuned", counts["ICNN pruned"])
    row = {"seed": seed, "params_before": total, "params_after": total - (connectors0 - final),
           "connectors_before": connectors0, "connectors_after": counts["ICNN pruned"], "auc_before": aucs["ICNN"],
           "auc_pruned": aucs["ICNN pruned"], "auc_finetuned": aucs.get("ICNN fine-tuned", math.nan)}
    return row, recs


@register_experiment("icnn-prune", IcnnPruneConfig, "Ramabaja 2018, s. 6.2: prune ICNN connectors after training, fine-tune, report the change")
def icnn_prune(cfg: IcnnPruneConfig, out: Path) -> ExperimentResult:
    """Train ICNN on Tox21 (one run per seed) or load trained ICNN runs (sources=); then zero the prune=
    fraction of smallest-|w| connectors of each inter-layer and fine-tune finetune= epochs with them held
    at zero. Reports parameters and test AUC before, after pruning, and after fine-tuning. connector_l1=
    trains with the L1 penalty first (section 8). The pruned weights go to out/pruned-seedS.safetensors."""
    t0 = time.perf_counter()
    if cfg.sources:
        if cfg.overrides:
            raise ConfigError(f"icnn-prune sources=...: the runs are trained already; {', '.join(cfg.overrides)} "
                              "would change nothing (only prune= and finetune= apply)")
        trained, summary = trained_icnns(cfg.sources), {}
    else:
        data, defaults = tox21(cfg)
        cons = contenders(data, cfg.icnn_widths)[:1]
        result = compare("icnn-prune", "tox21", cons, cfg, out, defaults=task_mean_decay(defaults, cfg, cons, len(data.tasks)),
                         data=data, write=False)
        mean_connectors(result)
        trained, summary = [(r.spec, data, r.model) for r in result.runs["ICNN"]], result.summary
    rows, recs = [], []
    for spec, data, model in trained:
        row, seed_recs = prune_and_finetune(spec, data, model, cfg.prune, cfg.finetune)
        rows.append(row)
        recs += seed_recs
        save_model(model, str(out / f"pruned-seed{spec.train.seed}.safetensors"))
    table = text_table(tuple(rows[0]), [tuple(r.values()) for r in rows], digits=4)
    summary = {**summary, "prune": cfg.prune, "finetune_epochs": cfg.finetune, "sources": list(cfg.sources),
               "auc_change_pruned": mean_std([r["auc_pruned"] - r["auc_before"] for r in rows]),
               "auc_change_finetuned": mean_std([r["auc_finetuned"] - r["auc_before"] for r in rows]),
               "params_before": rows[0]["params_before"], "params_after": [r["params_after"] for r in rows]}
    return finish(ExperimentResult("icnn-prune", out, recs, table, summary, time.perf_counter() - t0))


@register_experiment("icnn-merge", IcnnMergeConfig, "merge icnn-tox21(-noise) directories run with different seeds= into one table")
def icnn_merge(cfg: IcnnMergeConfig, out: Path) -> ExperimentResult:
    """sources=DIR1,DIR2,...: directories of the SAME experiment (icnn-tox21 or icnn-tox21-noise) run with
    different seeds (e.g. in parallel processes); writes their records together, and the combined table with
    the paper's columns and the ICNN - NN2 STL difference over all seeds. The merged directory is itself a
    directory of that experiment (it can be merged again)."""
    t0 = time.perf_counter()
    dirs = [Path(d) for d in cfg.sources]
    if not dirs:
        raise ConfigError("icnn-merge needs sources=DIR1,DIR2,...: icnn-tox21 or icnn-tox21-noise directories")
    for d in dirs:
        if not (d / "summary.json").exists() or not (d / "results.csv").exists():
            raise ConfigError(f"sources=: {d} has no summary.json and results.csv; is it a finished icnn-tox21 run?")
    summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
    names = {s["experiment"] for s in summaries}
    if len(names) != 1 or names - {"icnn-tox21", "icnn-tox21-noise"}:
        raise ConfigError(f"sources=: need directories of one experiment (icnn-tox21 or icnn-tox21-noise), got {sorted(names)}")
    name = names.pop()
    seeds = [s for sm in summaries for s in sm["seeds"]]
    recs = [r for d in dirs for r in read_results(d)]
    per: dict[tuple[str, str], list[float]] = {}  # (contender, task) -> test AUC per seed, in the order of `seeds`
    for label, _, task, split, metric, value in recs:
        if split == "test" and metric == "auc":
            per.setdefault((label, task), []).append(value)
    labels = list(dict.fromkeys(c for c, _ in per))
    tasks = list(dict.fromkeys(t for _, t in per))
    paper = paper_table(_T1 if name == "icnn-tox21" else _T2)
    rows = [[t, *(mean_pm(per[(lb, t)]) for lb in labels), *(fmt(paper[p].get(t, math.nan), 2) for p in paper)] for t in tasks]

    def mean_over(label, subset):  # mean over `subset` tasks of the test AUC, one value per seed
        return [float(np.nanmean([per[(label, t)][i] for t in subset])) for i in range(len(seeds))]

    rows.append(["mean auc", *(mean_pm(mean_over(lb, tasks)) for lb in labels), *(fmt(float(np.mean(list(paper[p].values()))), 3) for p in paper)])
    if name == "icnn-tox21-noise":
        rows.append(["mean auc (12 Tox21)", *(mean_pm(mean_over(lb, TOX21)) for lb in labels), *([""] * len(paper))])
    params = {lb: summaries[0]["contenders"][lb]["params"] for lb in labels}
    rows.append(["parameters", *(f"{params[lb]:,}" for lb in labels), *([""] * len(paper))])
    table = text_table(["task", *labels, *(f"paper {p}" for p in paper)], rows)
    diff = [a - b for a, b in zip(mean_over("ICNN", TOX21), mean_over("NN2_STL", TOX21))]
    line = f"ICNN - NN2_STL, mean test AUC over the 12 Tox21 tasks: {mean_pm(diff)} (per seed {[round(v, 4) for v in diff]})"
    summary = {"merged_from": [str(d) for d in dirs], "seeds": seeds,
               "icnn_minus_nn2_tox21": dict(zip(("mean", "std"), mean_std(diff))),
               "mean_test_auc": {lb: mean_over(lb, tasks) for lb in labels},
               "contenders": {lb: {"params": params[lb]} for lb in labels},
               "source_seconds": [sm["seconds"] for sm in summaries],
               **{k: [sm.get(k) for sm in summaries] for k in ("connector_blocks",) if k in summaries[0]}}
    return finish(ExperimentResult(name, out, recs, f"{name}, seeds {seeds}\n{table}\n{line}", summary,
                                   time.perf_counter() - t0))
