"""Tables: any CSV with numeric feature columns and one or more target columns, and scikit-learn's
embedded tables (wine, breast_cancer, iris: classification; diabetes: regression).

Each target column is one task. Features are standardised with the training split's mean and std;
regression targets too (so MSE is in units of the target's std), unless turned off.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import ConfigError
from ..registry import register_dataset
from ..tasks import Task
from .base import MultiTaskData, Split, parse_number, random_split_indices, read_csv_rows


def infer_kind(y: np.ndarray) -> str:
    """binary for {0, 1}, multiclass for few non-negative integers, regression otherwise."""
    vals = np.unique(y[~np.isnan(y)])
    if set(vals.tolist()) <= {0.0, 1.0}:
        return "binary"
    if np.all(vals == np.round(vals)) and vals.min() >= 0 and len(vals) <= 50:
        return "multiclass"
    return "regression"


def table_data(name: str, x: np.ndarray, targets: dict[str, np.ndarray], kinds: dict[str, str],
               fractions=(0.7, 0.15, 0.15), seed: int = 0, standardize: bool = True,
               standardize_target: bool = True) -> MultiTaskData:
    """x (n, d) and {task: (n,)} -> MultiTaskData with input "x" (n, d), split at random."""
    parts = random_split_indices(len(x), tuple(fractions), seed)
    x = x.astype(np.float32)
    mu, sd = x[parts[0]].mean(0), x[parts[0]].std(0) + 1e-8
    if standardize:
        x = (x - mu) / sd
    tasks, ys, meta = [], {}, {"target_scale": {}}
    for t, y in targets.items():
        y = y.astype(np.float32)
        kind = kinds[t]
        if kind == "regression" and standardize_target:
            m, s = float(np.nanmean(y[parts[0]])), float(np.nanstd(y[parts[0]]) + 1e-8)
            y = (y - m) / s
            meta["target_scale"][t] = (m, s)
        outputs = int(np.nanmax(y)) + 1 if kind == "multiclass" else 1
        tasks.append(Task(t, kind, outputs))
        ys[t] = y
    splits = [Split({"x": torch.as_tensor(x[p])}, {t: torch.as_tensor(y[p]) for t, y in ys.items()}) for p in parts]
    return MultiTaskData(name, tasks, *splits, meta)


@dataclass
class TabularConfig:
    path: str = ""  # a CSV (.csv or .csv.gz) with a header row
    target: tuple[str, ...] = ()  # target columns, one task each
    kind: Literal["auto", "binary", "multiclass", "regression"] = "auto"
    fractions: tuple[float, ...] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    standardize: bool = True
    standardize_target: bool = True


def read_table(path: Path, targets: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    header, rows = read_csv_rows(path)
    if not rows:
        raise ConfigError(f"{path}: needs a header row and at least one data row")
    if not targets:
        raise ConfigError(f"name the target column(s) with data.target=COL[,COL]; columns: {', '.join(header)}")
    missing = [t for t in targets if t not in header]
    if missing:
        raise ConfigError(f"{path} has no column(s) {missing}; its columns are {', '.join(header)}")
    values = np.array([[parse_number(v, path, r + 2, header[c], "encode categorical columns as numbers first")
                        for c, v in enumerate(row)] for r, row in enumerate(rows)], dtype=np.float64)
    feat = [c for c, h in enumerate(header) if h not in targets]
    if not feat:
        raise ConfigError(f"{path}: no feature columns left besides the targets")
    if np.isnan(values[:, feat]).any():
        c = feat[int(np.argmax(np.isnan(values[:, feat]).any(0)))]
        raise ConfigError(f"{path}: feature column {header[c]!r} has blank values; fill or drop them first")
    return values[:, feat], {t: values[:, header.index(t)] for t in targets}


@register_dataset("table", TabularConfig, "any numeric CSV: data.path=FILE data.target=COL[,COL]")
def load_table(cfg: TabularConfig) -> MultiTaskData:
    if not cfg.path:
        raise ConfigError("data set 'table' needs a file: pass data.path=my.csv data.target=COL")
    path = Path(cfg.path)
    x, ys = read_table(path, tuple(cfg.target))
    kinds = {t: infer_kind(y) if cfg.kind == "auto" else cfg.kind for t, y in ys.items()}
    return table_data(path.name.split(".")[0], x, ys, kinds, cfg.fractions, cfg.split_seed, cfg.standardize,
                      cfg.standardize_target)


@dataclass
class SklearnTableConfig:
    fractions: tuple[float, ...] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    standardize: bool = True
    standardize_target: bool = True


SKLEARN_TABLES = {"wine": ("load_wine", "multiclass"), "breast_cancer": ("load_breast_cancer", "binary"),
                  "iris": ("load_iris", "multiclass"), "diabetes": ("load_diabetes", "regression")}


def sklearn_table(name: str, cfg: SklearnTableConfig | None = None) -> MultiTaskData:
    """One of scikit-learn's embedded tables as a one-task MultiTaskData named `name`."""
    import sklearn.datasets
    cfg = cfg or SklearnTableConfig()
    fn, kind = SKLEARN_TABLES[name]
    d = getattr(sklearn.datasets, fn)()
    return table_data(name, d.data, {name: d.target.astype(np.float64)}, {name: kind}, cfg.fractions,
                      cfg.split_seed, cfg.standardize, cfg.standardize_target)


for _name, (_fn, _kind) in SKLEARN_TABLES.items():
    register_dataset(_name, SklearnTableConfig, f"scikit-learn's {_name} table, one {_kind} task (embedded)")(
        lambda cfg, _n=_name: sklearn_table(_n, cfg))
