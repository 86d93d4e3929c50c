"""Per-task metrics that skip missing labels, their mean over tasks, and delta-m against a baseline.

Binary tasks: ROC-AUC, PRC-AUC (average precision) and accuracy at 0.5; both AUCs are NaN where a split's
labels have one class only. Multiclass: accuracy and error. Regression: MSE and RMSE in the target's units,
and nrmse, the RMSE in units of the standardised target the model learns (RMSE / Task.scale). A task's
primary metric (Task.metric, default the first of tasks.METRICS[kind]) is the one tables show.

Computing a metric never warns: an undefined value is NaN, and undefined_note() says once per split which
tasks have none (runs log it once per split at the end of a run, not every epoch).
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from .data.base import column_list
from .tasks import METRICS, Task

PRIMARY = {kind: metrics[0] for kind, metrics in METRICS.items()}  # each kind's default primary metric
HIGHER_IS_BETTER = {"auc": True, "prc_auc": True, "accuracy": True, "error": False, "mse": False, "rmse": False,
                    "nrmse": False, "loss": False}
NAMES = {"auc": "ROC-AUC", "prc_auc": "PRC-AUC", "accuracy": "accuracy", "error": "error", "mse": "MSE",
         "rmse": "RMSE", "nrmse": "RMSE of the standardised target"}


def task_metrics(task: Task, scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """scores: (n,) P(1) for binary, (n, C) probabilities for multiclass, (n,) values for regression (the
    target's units, as Task.predict gives them); y: (n,) labels with NaN for missing. Returns {metric: value}
    over the labelled examples."""
    known = ~np.isnan(y)
    score, label = scores[known], y[known]  # the labelled examples only
    out: dict[str, float] = {"n": float(known.sum())}
    if task.kind == "binary":
        # imported on first use: scikit-learn takes a second to import
        from sklearn.metrics import average_precision_score, roc_auc_score
        if len(np.unique(label)) < 2:  # no ranking to score: undefined, and silent (see undefined_note)
            out["auc"] = out["prc_auc"] = math.nan
        else:
            out["auc"] = float(roc_auc_score(label, score))
            out["prc_auc"] = float(average_precision_score(label, score))
        out["accuracy"] = float(np.mean((score >= 0.5) == (label == 1))) if len(label) else math.nan
    elif task.kind == "multiclass":
        out["accuracy"] = float(np.mean(score.argmax(axis=1) == label.astype(int))) if len(label) else math.nan
        out["error"] = 1.0 - out["accuracy"]
    else:
        mse = float(np.mean((score - label) ** 2)) if len(label) else math.nan
        out["mse"], out["rmse"] = mse, math.sqrt(mse)
        out["nrmse"] = out["rmse"] / task.scale
    return out


def primary(task: Task) -> str:
    """The metric a table shows for this task: its own choice (Task.metric), else its kind's default."""
    return task.metric or PRIMARY[task.kind]


def mean_over_tasks(table: dict[str, dict[str, float]], tasks: list[Task]) -> dict[str, float]:
    """{metric: mean over the tasks that have it (NaN skipped)} for each metric kind present."""
    names = sorted({m for t in tasks for m in table[t.name] if m != "n"})
    out = {}
    for m in names:
        vals = [table[t.name][m] for t in tasks if m in table[t.name] and not math.isnan(table[t.name][m])]
        out[m] = float(np.mean(vals)) if vals else math.nan
    return out


IN_TARGET_UNITS = ("rmse", "mse")  # regression metrics in the target's own units (nrmse is scale-free)


def scales_differ(tasks: list[Task]) -> bool:
    """Whether a mean of RMSE or MSE over these tasks adds up regression targets of different scales
    (Task.scale, the training split's std), where the largest-scale target outweighs the others; a mean of
    nrmse (RMSE / scale) weighs each target alike."""
    return len({t.scale for t in tasks if t.kind == "regression"}) > 1


def scale_note(tasks: list[Task]) -> str | None:
    """One line when the tasks' mean primary metric is RMSE or MSE over targets of different scales: what it is
    dominated by and how to compare them alike (metric=nrmse); None otherwise."""
    reg = [t for t in tasks if t.kind == "regression" and primary(t) in IN_TARGET_UNITS]
    if not scales_differ(reg):
        return None
    low, high = min(reg, key=lambda t: t.scale), max(reg, key=lambda t: t.scale)
    return (f"the mean {primary(reg[0])} adds up {len(reg)} regression targets of different scales (training std "
            f"{low.scale:.3g} for {low.name} to {high.scale:.3g} for {high.name}), so {high.name} outweighs the rest; "
            "metric=nrmse compares them in units of their std")


def ranking_metric(tasks: list[Task]) -> str:
    """The one mean that ranks runs (tune's objective, compare's mean difference): the tasks' common primary
    metric, else, when their primary metrics differ (binary and regression tasks together), the mean loss,
    which every task has: the training objective (cross-entropy; squared error of the standardised target)."""
    metrics = {primary(t) for t in tasks}
    return metrics.pop() if len(metrics) == 1 else "loss"


def ranking_note(tasks: list[Task]) -> str | None:
    """One line on what ranking_metric's mean adds up, where it is not plain: the mean loss when the tasks'
    primary metrics differ (which metrics they have), else scale_note's; None otherwise."""
    if ranking_metric(tasks) != "loss":
        return scale_note(tasks)
    counts = Counter(primary(t) for t in tasks)
    return (f"the tasks' primary metrics differ ({', '.join(f'{m} for {n}' for m, n in counts.items())}), so runs "
            f"are ranked by the mean loss over all {len(tasks)} tasks (cross-entropy; squared error of the "
            "standardised targets)")


def covered(table: dict[str, dict[str, float]], tasks: list[Task], metric: str) -> int:
    """How many of `tasks` have a defined (not NaN) value of `metric` in table: the tasks its mean covers."""
    return sum(1 for t in tasks if not math.isnan(table[t.name].get(metric, math.nan)))


def undefined_note(split: str, table: dict[str, dict[str, float]], tasks: list[Task]) -> str | None:
    """One line naming the tasks whose primary metric is undefined (NaN) on this split and why, e.g.
    "test: ROC-AUC undefined for 15 of 617 tasks (one class only): A, B, ... (15 in all)"; None when every
    task has a value."""
    missing = [t for t in tasks if math.isnan(table[t.name].get(primary(t), math.nan))]
    if not missing:
        return None
    names = {NAMES[primary(t)] for t in missing}
    what = names.pop() if len(names) == 1 else "the primary metric"
    unlabelled = sum(1 for t in missing if not table[t.name].get("n"))
    reasons = [(len(missing) - unlabelled, "one class only"), (unlabelled, "no labels")]
    given = [(n, why) for n, why in reasons if n]
    why = given[0][1] if len(given) == 1 else ", ".join(f"{n} with {why}" for n, why in given)
    return (f"{split}: {what} undefined for {len(missing)} of {len(tasks)} tasks ({why}): "
            + column_list([t.name for t in missing], most=6))


def delta_m(run: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]], tasks: list[Task]) -> float:
    """Mean relative improvement over the baseline, in percent, on each task's primary metric:
    100/T * sum_t s_t (M_t - B_t) / B_t, with s_t = +1 when higher is better, -1 otherwise
    (Maninis et al. 2019). Tasks whose metric is NaN in either run are skipped."""
    terms = []
    for t in tasks:
        m = primary(t)
        a, b = run[t.name][m], baseline[t.name][m]
        if math.isnan(a) or math.isnan(b) or b == 0:
            continue
        sign = 1.0 if HIGHER_IS_BETTER[m] else -1.0
        terms.append(sign * (a - b) / abs(b))
    return 100.0 * float(np.mean(terms)) if terms else math.nan
