"""Per-task metrics that skip missing labels, their mean over tasks, and delta-m against a baseline.

Binary tasks: ROC-AUC (NaN with a warning when a split has one class only) and accuracy at 0.5.
Multiclass: accuracy. Regression: MSE and RMSE. Each kind has one primary metric used for tables.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .tasks import Task

PRIMARY = {"binary": "auc", "multiclass": "accuracy", "regression": "rmse"}
HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "error": False, "mse": False, "rmse": False, "loss": False}


def task_metrics(task: Task, scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """scores: (n,) P(1) for binary, (n, C) probabilities for multiclass, (n,) values for regression;
    y: (n,) labels with NaN for missing. Returns {metric: value} over the labelled examples."""
    known = ~np.isnan(y)
    score, label = scores[known], y[known]  # the labelled examples only
    out: dict[str, float] = {"n": float(known.sum())}
    if task.kind == "binary":
        from sklearn.metrics import roc_auc_score  # imported on first use: scikit-learn takes a second to import
        if len(np.unique(label)) < 2:
            warnings.warn(f"task {task.name}: only one class among {len(label)} labels, ROC-AUC is undefined (NaN)",
                          stacklevel=2)
            out["auc"] = math.nan
        else:
            out["auc"] = float(roc_auc_score(label, score))
        out["accuracy"] = float(np.mean((score >= 0.5) == (label == 1))) if len(label) else math.nan
    elif task.kind == "multiclass":
        out["accuracy"] = float(np.mean(score.argmax(axis=1) == label.astype(int))) if len(label) else math.nan
        out["error"] = 1.0 - out["accuracy"]
    else:
        mse = float(np.mean((score - label) ** 2)) if len(label) else math.nan
        out["mse"], out["rmse"] = mse, math.sqrt(mse)
    return out


def primary(task: Task) -> str:
    """The metric a table shows for this task."""
    return PRIMARY[task.kind]


def mean_over_tasks(table: dict[str, dict[str, float]], tasks: list[Task]) -> dict[str, float]:
    """{metric: mean over the tasks that have it (NaN skipped)} for each metric kind present."""
    names = sorted({m for t in tasks for m in table[t.name] if m != "n"})
    out = {}
    for m in names:
        vals = [table[t.name][m] for t in tasks if m in table[t.name] and not math.isnan(table[t.name][m])]
        out[m] = float(np.mean(vals)) if vals else math.nan
    return out


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
