"""Shared machinery of registered experiments: several methods x several seeds on ONE split, and one
side-by-side table of per-task test metrics (mean ± std over seeds).

    compare("demo", "tox21", [Contender("hard_sharing", "hard_sharing"), Contender("stl", "stl")],
            seeds=(0,), overrides=["epochs=5"], out=Path("runs/demo-..."))

Overrides: `seeds=0,1,2` picks the seeds; `data.k=v` and training keys go to every contender;
`LABEL.k=v` goes to one contender; a bare method key goes to every contender whose method has it.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..config import ConfigError, field_types, split_overrides
from ..data.base import MultiTaskData
from ..metrics import mean_over_tasks, primary
from ..registry import get_dataset, get_method
from ..report import fmt, mean_std, pm, text_table, write_csv
from ..runs import RunResult, load_data, resolve, train_run
from ..train import TrainConfig


@dataclass
class Contender:
    label: str  # column name in the table
    method: str  # registered method
    overrides: dict[str, str] = field(default_factory=dict)  # method and training keys for this contender


@dataclass
class ExperimentResult:
    name: str
    dir: Path
    data: MultiTaskData
    runs: dict[str, list[RunResult]]  # label -> one RunResult per seed
    table: str
    seconds: float

    def metric(self, label: str, task: str, split: str = "test", metric: str | None = None) -> list[float]:
        """One value per seed."""
        t = next(t for t in self.data.tasks if t.name == task)
        return [r.tables[split][task][metric or primary(t)] for r in self.runs[label]]

    def mean_metric(self, label: str, split: str = "test", metric: str | None = None) -> list[float]:
        """Mean over tasks of their primary metric (or `metric`), one value per seed."""
        out = []
        for r in self.runs[label]:
            m = metric or primary(self.data.tasks[0])
            out.append(mean_over_tasks(r.tables[split], self.data.tasks)[m])
        return out


def parse_overrides(overrides: Sequence[str], contenders: Sequence[Contender], default_seeds: Sequence[int],
                    data_name: str) -> tuple[tuple[int, ...], dict[str, dict[str, str]]]:
    """-> (seeds, {label: overrides for resolve()})."""
    kv = split_overrides(list(overrides))
    seeds = tuple(default_seeds)
    if "seeds" in kv:
        try:
            seeds = tuple(int(s) for s in kv.pop("seeds").split(",") if s.strip())
        except ValueError:
            raise ConfigError("seeds=...: expected comma-separated integers, e.g. seeds=0,1,2") from None
    labels = {c.label for c in contenders}
    per = {c.label: dict(c.overrides) for c in contenders}
    tkeys, dkeys = field_types(TrainConfig), field_types(get_dataset(data_name).config)
    for k, v in kv.items():
        head, _, rest = k.partition(".")
        if head in labels and rest:
            per[head][rest] = v
        elif k.startswith("data.") or k in tkeys:
            for c in contenders:
                per[c.label][k] = v
        else:
            takers = [c for c in contenders if k in field_types(get_method(c.method).config)]
            if not takers:
                raise ConfigError(f"unknown key {k!r}; valid: seeds, training keys ({', '.join(sorted(tkeys))}), "
                                  f"data.KEY ({', '.join(sorted(dkeys))}), LABEL.KEY for labels {', '.join(sorted(labels))}, "
                                  "or a key of one of the methods")
            for c in takers:
                per[c.label][k] = v
    return seeds, per


def compare(name: str, data_name: str, contenders: Sequence[Contender], seeds: Sequence[int],
            overrides: Sequence[str], out: Path, paper: dict[str, dict[str, float]] | None = None,
            data: MultiTaskData | None = None, echo: bool = True) -> ExperimentResult:
    """Train every contender with every seed on the same data and split; write out/LABEL/seedS runs,
    table.csv and summary.json; print the table. `paper` = {column: {task: value}} adds the paper's
    numbers beside ours."""
    t0 = time.perf_counter()
    seeds, per = parse_overrides(overrides, contenders, seeds, data_name)
    specs = {c.label: [resolve(data_name, c.method, {**per[c.label], "seed": str(s)}) for s in seeds]
             for c in contenders}  # resolve everything first: a bad key fails before any training
    data = data or load_data(specs[contenders[0].label][0])
    if echo:
        print(data.summary())
    runs: dict[str, list[RunResult]] = {}
    for c in contenders:
        runs[c.label] = []
        for spec in specs[c.label]:
            if echo:
                print(f"[{name}] {c.label} ({c.method}) seed {spec.train.seed}")
            runs[c.label].append(train_run(spec, data, out / c.label, name=f"seed{spec.train.seed}", echo=False))
    result = ExperimentResult(name, out, data, runs, "", time.perf_counter() - t0)
    result.table = side_by_side(result, paper)
    rows = []
    for c in contenders:
        for t in data.tasks:
            vals = result.metric(c.label, t.name)
            rows.append((c.label, t.name, primary(t), *mean_std(vals), json.dumps(vals)))
    write_csv(out / "table.csv", ("contender", "task", "metric", "mean", "std", "per_seed"), rows)
    summary = {"experiment": name, "data": data_name, "seeds": list(seeds), "seconds": round(result.seconds, 1),
               "contenders": {c.label: {"method": c.method, "overrides": per[c.label],
                                        "params": runs[c.label][0].summary["params"],
                                        "mean_test": result.mean_metric(c.label)} for c in contenders}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if echo:
        print(result.table)
        print(f"{name}: {len(seeds)} seed(s), {result.seconds:.0f} s; results in {out}")
    return result


def side_by_side(result: ExperimentResult, paper: dict[str, dict[str, float]] | None = None) -> str:
    """Rows: tasks and their mean; columns: each contender's test metric (mean ± std over seeds), then
    the paper's columns."""
    labels = list(result.runs)
    paper = paper or {}
    header = ["task", *labels, *(f"paper {p}" for p in paper)]
    rows = []
    for t in result.data.tasks:
        rows.append([t.name, *(pm(result.metric(label, t.name)) for label in labels),
                     *(fmt(paper[p].get(t.name, math.nan), 2) for p in paper)])
    metric = primary(result.data.tasks[0])
    paper_means = []
    for p in paper:
        vals = [v for v in paper[p].values() if not math.isnan(v)]
        paper_means.append(fmt(sum(vals) / len(vals), 3) if vals else "")
    rows.append([f"mean {metric}", *(pm(result.mean_metric(label)) for label in labels), *paper_means])
    params = ["parameters", *(f"{result.runs[label][0].summary['params']:,}" for label in labels), *([""] * len(paper))]
    rows.append(params)
    return text_table(header, rows)
