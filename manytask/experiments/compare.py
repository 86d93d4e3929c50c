"""`manytask compare DATA METHOD,METHOD,...`: registered methods side by side on one data set, each tested
against a baseline over the same seeds.

Every method is one contender labelled by its name, so `stl.widths=16` sets a key of the stl contender only;
the other keys are routed as compare() routes an experiment's keys. `recipe=FILE` (a best.json of `manytask
tune`) reads as its keys written first, `stl.recipe=FILE` as its keys written stl.KEY=value; the keys on the
command line override them. Besides compare()'s records, results.csv
holds, per contender against the baseline, delta-m per seed (seed = the seed) and the paired test over seeds
(seed -1): metric delta_m, mean_diff, t_p, wilcoxon_p, all with task "mean" and split "test". compare.png
shows each contender's mean test metric per task.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..config import ConfigError, option
from ..metrics import HIGHER_IS_BETTER, delta_m, ranking_metric, ranking_note
from ..registry import get_method
from ..report import dot_plot, mean_pm, mean_std, paired, text_table
from .runner import Contender, ExperimentConfig, ExperimentResult, Record, compare, finish


@dataclass
class CompareConfig(ExperimentConfig):
    baseline: str = option("", "the method every contender is tested against (default: the first method)")


def contenders_of(methods: Sequence[str]) -> list[Contender]:
    """One contender per registered method, labelled by the method's name."""
    if not methods:
        raise ConfigError("no method to compare: name them comma-separated, e.g. hard_sharing,stl")
    for m in methods:
        get_method(m)  # an unknown method: ConfigError naming the registered ones
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise ConfigError(f"method {repeated[0]!r} named twice; name each method once")
    return [Contender(m, m) for m in methods]


def with_recipes(overrides: dict[str, Any], contenders: Sequence[Contender]) -> dict[str, Any]:
    """`overrides` with recipe=FILE (every contender) and LABEL.recipe=FILE (one contender, whose method the
    recipe must be for) replaced by the recipe's keys, placed before the other keys, which override them."""
    from ..tune import read_recipe
    methods = {c.label: c.method for c in contenders}
    recipes, rest = {}, {}
    for key, value in overrides.items():
        label, _, last = key.rpartition(".")
        if key == "recipe":
            recipes.update(read_recipe(value))
        elif last == "recipe" and label in methods:
            recipes.update({f"{label}.{k}": v for k, v in read_recipe(value, methods[label]).items()})
        else:
            rest[key] = value
    return {**recipes, **rest}


def against_baseline(result: ExperimentResult, baseline: str) -> tuple[list[Record], str, dict]:
    """Each contender against the baseline over the seeds -> (records, table, summary): the mean difference
    of the mean test metric, the seeds it is better in, paired t-test and Wilcoxon p, delta-m per seed."""
    tasks = result.data.tasks
    metric = ranking_metric(tasks)  # the tasks' common primary metric, else the mean loss
    base_mean = result.mean_metric(baseline, metric=metric)
    records: list[Record] = []
    rows, summary = [], {}
    for label, runs in result.runs.items():
        seeds = [run.spec.train.seed for run in runs]
        deltas = [delta_m(run.tables["test"], base.tables["test"], tasks)
                  for run, base in zip(runs, result.runs[baseline])]
        means = result.mean_metric(label, metric=metric)
        test = paired(means, base_mean)
        better = sum(a > b if HIGHER_IS_BETTER[metric] else a < b for a, b in zip(means, base_mean))
        records += [(label, seed, "mean", "test", "delta_m", d) for seed, d in zip(seeds, deltas)]
        records += [(label, -1, "mean", "test", key, test[key]) for key in ("mean_diff", "t_p", "wilcoxon_p")]
        rows.append([label + (" (baseline)" if label == baseline else ""), test["mean_diff"],
                     f"{better}/{len(seeds)}", test["t_p"], test["wilcoxon_p"], mean_pm(deltas, 2)])
        summary[label] = {**test, "better_in": better, "delta_m": deltas, "delta_m_mean": mean_std(deltas)[0]}
    header = ["contender", "mean diff", "better in", "t-test p", "Wilcoxon p", "delta-m %"]
    return records, text_table(header, rows), summary


def compare_methods(data_name: str, methods: Sequence[str], cfg: CompareConfig, out: Path,
                    echo: bool = True) -> ExperimentResult:
    """Train every method with every seed of cfg on data_name (keys in cfg.overrides), test each against
    cfg.baseline (default: the first method), write the results and compare.png into out."""
    contenders = contenders_of(list(methods))
    baseline = cfg.baseline or contenders[0].label
    if baseline not in methods:
        raise ConfigError(f"baseline={baseline}: not among the methods compared ({', '.join(methods)})")
    cfg = dataclasses.replace(cfg, overrides=with_recipes(cfg.overrides, contenders))
    result = compare("compare", data_name, contenders, cfg, out, echo=echo, write=False)
    records, table, summary = against_baseline(result, baseline)
    ranking = ranking_metric(result.data.tasks)
    metric = ranking if ranking != "loss" else "primary metric"  # of the per-task plot
    result.records += records
    result.table += f"\n\nagainst {baseline} (test {result.mean_label(metric=ranking)}, paired over seeds):\n" + table
    if note := ranking_note(result.data.tasks):
        result.table += f"\n{note}; delta-m is per task, relative"
    result.summary.update(baseline=baseline, against_baseline=summary)
    task_names = [t.name for t in result.data.tasks]
    dot_plot({label: [mean_std(result.metric(label, task)) for task in task_names] for label in result.runs},
             task_names, out / "compare.png", title=f"{data_name}: test {metric}, mean ± std over seeds",
             ylabel=f"test {metric}")
    return finish(result, echo)
