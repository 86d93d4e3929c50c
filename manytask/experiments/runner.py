"""What every registered experiment shares: its config base, the ONE result type, and compare().

An experiment is a typed config plus a small function:

    @dataclass
    class DemoConfig(ExperimentConfig):
        seeds: tuple[int, ...] = option((0,), "seeds", low=0, min_len=1)

    @register_experiment("demo", DemoConfig, "Tox21: hard sharing vs single-task nets")
    def demo(cfg: DemoConfig, out: Path) -> ExperimentResult:
        return compare("demo", "tox21", DEMO, cfg, out, defaults={"epochs": "30"})

`manytask run NAME key=value ...` parses the experiment's own keys into its config (type and range
checked, a one-line error before anything is written). The other keys go to the contenders
(cfg.overrides): training keys and data.KEY to every contender, LABEL.KEY to one, a bare method key to
every contender whose method has it; compare() resolves every contender's configs before training.

Every experiment returns an ExperimentResult and writes, through finish(): results.csv in the long format
`contender,seed,task,split,metric,value`, table.txt (the table it prints) and summary.json.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..config import ConfigError, apply, did_you_mean, field_types, option, split_overrides
from ..data.base import MultiTaskData
from ..metrics import covered, mean_over_tasks, primary
from ..registry import get_dataset, get_method
from ..report import fmt, mean_label, mean_pm, text_table, write_results
from ..runs import RunResult, choose_metric, load_data, log_undefined, records, resolve, train_run
from ..train import TrainConfig


@dataclass
class ExperimentConfig:
    """Keys every experiment takes; an experiment's own config subclasses it and adds its keys."""

    seeds: tuple[int, ...] = option((0, 1, 2), "seeds: every contender trains once per seed", low=0, min_len=1)
    # key=value pairs for the contenders (training keys, data.KEY, LABEL.KEY, method keys), checked when
    # the contenders are resolved, before anything trains
    overrides: dict[str, str] = field(default_factory=dict, metadata={"hidden": True})
    takes_overrides: ClassVar[bool] = True  # False: only the config's own keys are valid

    @classmethod
    def key_tables(cls) -> tuple[tuple[str, Any], ...]:
        """The configs that cfg.overrides is checked against, as (key prefix, config with the experiment's
        defaults), for `manytask list NAME`; empty: compare()'s routing (training keys, data.KEY, method
        keys, LABEL.KEY)."""
        return ()


def parse_experiment(cfg_cls: type, args: Sequence[str], name: str = "experiment") -> ExperimentConfig:
    """`key=value` strings -> the experiment's config; own keys typed and range-checked, the rest kept in
    cfg.overrides for the contenders (or an error when the experiment takes none)."""
    kv = split_overrides(list(args))
    own = set(field_types(cfg_cls)) - {"overrides"}
    rest = {k: v for k, v in kv.items() if k not in own}
    if rest and not cfg_cls.takes_overrides:
        key = next(iter(rest))
        raise ConfigError(f"unknown key {key!r} for {name}{did_you_mean(key, sorted(own))}; valid keys: "
                          f"{', '.join(sorted(own))} (manytask list {name})")
    cfg = apply(cfg_cls(), {k: v for k, v in kv.items() if k in own}, name)
    return dataclasses.replace(cfg, overrides=rest)


@dataclass
class Contender:
    label: str  # column name in the table
    method: str  # registered method
    overrides: dict[str, Any] = field(default_factory=dict)  # method and training keys (text or typed values)


Record = tuple  # (contender, seed, task, split, metric, value): one row of results.csv


@dataclass
class ExperimentResult:
    """What every experiment returns. `runs` (label -> one RunResult per seed) and `data` are set by
    experiments built on compare()."""

    name: str
    dir: Path
    records: list[Record]
    table: str
    summary: dict
    seconds: float
    data: MultiTaskData | None = None
    runs: dict[str, list[RunResult]] = field(default_factory=dict)

    def values(self, contender: str, metric: str, task: str | None = None, split: str = "test") -> list[float]:
        """The recorded values of one contender, metric, split (and task), in seed order."""
        return [r[5] for r in self.records if r[0] == contender and r[4] == metric and r[3] == split
                and (task is None or r[2] == task)]

    def metric(self, label: str, task: str, split: str = "test", metric: str | None = None) -> list[float]:
        """compare() results: one value per seed of a task's metric (default: its primary metric)."""
        t = next(t for t in self.data.tasks if t.name == task)
        return [r.tables[split][task][metric or primary(t)] for r in self.runs[label]]

    def mean_metric(self, label: str, split: str = "test", metric: str | None = None) -> list[float]:
        """compare() results: mean over tasks of their primary metric (or `metric`), one value per seed."""
        m = metric or primary(self.data.tasks[0])
        return [mean_over_tasks(r.tables[split], self.data.tasks)[m] for r in self.runs[label]]

    def mean_label(self, split: str = "test", metric: str | None = None) -> str:
        """compare() results: "mean auc over 602 of 617 tasks", the tasks that mean_metric's means cover
        (those with a defined value; "600/602" when runs differ)."""
        m = metric or primary(self.data.tasks[0])
        first = next(iter(self.runs.values()))[0].tables[split]
        tasks = [t for t in self.data.tasks if m in first[t.name]]  # those mean_over_tasks averages over
        counts = sorted({covered(r.tables[split], tasks, m) for runs in self.runs.values() for r in runs})
        return mean_label(counts, len(tasks), m)


def run_records(label: str, run: RunResult) -> list[Record]:
    """Every (split, task, metric) value of one trained run as records."""
    return records(label, run.spec.train.seed, run.tables)


def finish(result: ExperimentResult, echo: bool = True) -> ExperimentResult:
    """Write results.csv, table.txt and summary.json of an experiment and print its table."""
    write_results(result.dir, result.records, result.table,
                  {"experiment": result.name, "seconds": round(result.seconds, 1), **result.summary})
    if echo:
        print(result.table)
        print(f"{result.name}: {result.seconds:.0f} s; results in {result.dir}")
    return result


def contender_overrides(overrides: dict[str, Any], contenders: Sequence[Contender],
                        data_name: str) -> dict[str, dict[str, Any]]:
    """{label: the keys resolve() gets for that contender}: its own, then the user's routed to it."""
    labels = {c.label for c in contenders}
    per = {c.label: dict(c.overrides) for c in contenders}
    tkeys, dkeys = field_types(TrainConfig), field_types(get_dataset(data_name).config)
    for k, v in overrides.items():
        head, _, rest = k.partition(".")
        if head in labels and rest:
            per[head][rest] = v
        elif k.startswith("data.") or k in tkeys:
            for c in contenders:
                per[c.label][k] = v
        else:
            takers = [c for c in contenders if k in field_types(get_method(c.method).config)]
            if not takers:
                known = ["seeds", *tkeys, *(f"data.{d}" for d in dkeys),
                         *(m for c in contenders for m in field_types(get_method(c.method).config))]
                raise ConfigError(f"unknown key {k!r}{did_you_mean(k, known)}; valid: seeds, "
                                  f"training keys ({', '.join(sorted(tkeys))}), "
                                  f"data.KEY ({', '.join(sorted(dkeys))}), "
                                  f"LABEL.KEY for labels {', '.join(sorted(labels))}, "
                                  "or a key of one of the methods")
            for c in takers:
                per[c.label][k] = v
    return per


def compare(name: str, data_name: str, contenders: Sequence[Contender], cfg: ExperimentConfig, out: Path,
            defaults: dict[str, Any] | None = None, paper: dict[str, dict[str, float]] | None = None,
            data: MultiTaskData | None = None, echo: bool = True, write: bool = True) -> ExperimentResult:
    """Train every contender with every seed of cfg on the same data and split; write out/LABEL/seedS
    runs and the experiment's results; print the side-by-side table. `defaults` are the experiment's
    training and data keys, which cfg.overrides may replace; `paper` = {column: {task: value}} adds the
    paper's numbers beside ours. write=False leaves writing and printing the result to the caller, which
    adds its own records and figures first and then calls finish()."""
    t0 = time.perf_counter()
    per = contender_overrides({**(defaults or {}), **cfg.overrides}, contenders, data_name)
    specs = {c.label: [resolve(data_name, c.method, {**per[c.label], "seed": str(s)}) for s in cfg.seeds]
             for c in contenders}  # resolve everything first: a bad key fails before any training
    metrics = {spec.train.metric for ss in specs.values() for spec in ss}
    if len(metrics) > 1:
        raise ConfigError(f"metric differs between contenders ({', '.join(sorted(metrics))}); a comparison "
                          "shows one metric: set metric=... for every contender")
    data = choose_metric(data or load_data(specs[contenders[0].label][0]), metrics.pop())
    if echo:
        print(data.summary())
    runs: dict[str, list[RunResult]] = {}
    for c in contenders:
        runs[c.label] = []
        for spec in specs[c.label]:
            if echo:
                print(f"[{name}] {c.label} ({c.method}) seed {spec.train.seed}", flush=True)
            runs[c.label].append(train_run(spec, data, out / c.label, name=f"seed{spec.train.seed}", echo=False))
    records = [rec for c in contenders for run in runs[c.label] for rec in run_records(c.label, run)]
    result = ExperimentResult(name, out, records, "", {}, time.perf_counter() - t0, data, runs)
    result.table = side_by_side(result, paper)
    if echo:  # once for the experiment: every run has the same data, so the same undefined metrics
        log_undefined(runs[contenders[0].label][0].tables, data.tasks)
    result.summary = {"data": data_name, "seeds": list(cfg.seeds), "mean_test_label": result.mean_label(),
                      "contenders": {c.label: {"method": c.method, "overrides": per[c.label],
                                               "params": runs[c.label][0].summary["params"],
                                               "mean_test": result.mean_metric(c.label)} for c in contenders}}
    return finish(result, echo) if write else result


def side_by_side(result: ExperimentResult, paper: dict[str, dict[str, float]] | None = None) -> str:
    """Rows: tasks and their mean; columns: each contender's test metric (mean ± std over seeds), then
    the paper's columns."""
    labels = list(result.runs)
    paper = paper or {}
    header = ["task", *labels, *(f"paper {p}" for p in paper)]
    rows = []
    for t in result.data.tasks:
        rows.append([t.name, *(mean_pm(result.metric(label, t.name)) for label in labels),
                     *(fmt(paper[p].get(t.name, math.nan), 2) for p in paper)])
    paper_means = []
    for p in paper:
        vals = [v for v in paper[p].values() if not math.isnan(v)]
        paper_means.append(fmt(sum(vals) / len(vals), 3) if vals else "")
    rows.append([result.mean_label(), *(mean_pm(result.mean_metric(label)) for label in labels), *paper_means])
    params = ["parameters", *(f"{result.runs[label][0].summary['params']:,}" for label in labels), *([""] * len(paper))]
    rows.append(params)
    return text_table(header, rows)

