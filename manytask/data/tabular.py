"""Tables: any CSV with numeric feature columns and one or more target columns, scikit-learn's
embedded tables (wine, breast_cancer, iris: classification; diabetes: regression), and several of those
tables as one multi-input problem (sklearn_tables).

Each target column is one task. Features are standardised with the training split's mean and std. A
regression target keeps its own units in the labels, and its task carries the training split's mean and
std (Task.shift, Task.scale): the model learns the standardised target, the loss is the MSE in std units,
and metrics and predictions are in the target's units (nrmse beside them: RMSE / std). Loading a CSV
says so in one line, with each target's mean and std.

A CSV's first row is its header unless every cell of it is a number (or blank): then the file has no
header, the first row is data and the columns are numbered from 1 (data.header=true or false decides
instead of this guess, and loading says in one line that the header was found missing).

A CSV's features must be finite numbers that float32 holds (no blank, nan or inf); a blank or nan target is
a missing label. Every bad value, a target with no labels, labels that do not fit the task kind and too few
rows for the split are one-line ConfigErrors naming the file (and the line and column where one applies).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import ConfigError, option
from ..registry import register_dataset
from ..tasks import Task
from .base import (MultiTaskData, Split, check_split_sizes, column_list, combine, numbered_rows, parse_number,
                   random_split_indices, read_csv_rows)

log = logging.getLogger("manytask")

MAX_CLASSES = 1000  # multiclass labels are integers 0..MAX_CLASSES-1


def infer_kind(y: np.ndarray) -> str:
    """binary for {0, 1}, multiclass for at most 50 distinct integers in 0..MAX_CLASSES-1, regression otherwise."""
    vals = np.unique(y[~np.isnan(y)])
    if set(vals.tolist()) <= {0.0, 1.0}:
        return "binary"
    if np.all(vals == np.round(vals)) and vals.min() >= 0 and vals.max() < MAX_CLASSES and len(vals) <= 50:
        return "multiclass"
    return "regression"


def check_labels(y: np.ndarray, kind: str, column: str, source: object) -> None:
    """y (n,) with NaN = missing: some label present, 0/1 for binary, integers 0..MAX_CLASSES-1 for
    multiclass; else a ConfigError naming the column of `source`."""
    vals = np.unique(y[~np.isnan(y)])
    if len(vals) == 0:
        raise ConfigError(f"{source}: target column {column!r} has no values (every row blank); drop it from "
                          "data.target")
    if kind == "binary" and not set(vals.tolist()) <= {0.0, 1.0}:
        other = vals[~np.isin(vals, (0, 1))][:3].tolist()
        raise ConfigError(f"{source}: target column {column!r} is binary but holds {other}; binary labels are 0 "
                          "and 1 (or pass data.kind=regression)")
    if kind == "multiclass" and not (np.all(vals == np.round(vals)) and vals.min() >= 0 and vals.max() < MAX_CLASSES):
        raise ConfigError(f"{source}: target column {column!r} is multiclass but holds values other than the "
                          f"integers 0..{MAX_CLASSES - 1} (e.g. {vals[[0, -1]].tolist()}); number the classes from 0")


def table_data(name: str, x: np.ndarray, targets: dict[str, np.ndarray], kinds: dict[str, str],
               fractions=(0.8, 0.1, 0.1), seed: int = 0, standardize: bool = True,
               standardize_target: bool = True, columns: list[str] | None = None,
               source: object = None) -> MultiTaskData:
    """x (n, d) and {task: (n,)} -> MultiTaskData with input "x" (n, d), split at random.

    columns: the names of x's columns and source: the file, both for error messages. A split with a
    positive fraction left empty, and statistics that overflow float32 (values near 1e20 and beyond), are
    ConfigErrors."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"data.fractions={','.join(map(str, fractions))}: need three fractions (train, val, "
                          "test) that sum to 1")
    source = source or name
    parts = random_split_indices(len(x), tuple(fractions), seed)
    check_split_sizes(parts, fractions, source)
    x = raw = x.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        mu, sd = x[parts[0]].mean(0), x[parts[0]].std(0) + 1e-8
        if standardize:
            x = (x - mu) / sd
    bad = ~np.isfinite(x).all(0)  # (d,) columns that overflowed
    if standardize:
        bad |= ~(np.isfinite(mu) & np.isfinite(sd))
    if bad.any():
        j = int(np.argmax(bad))
        raise ConfigError(f"{source}: feature column {columns[j] if columns else j!r} has values too large to "
                          f"standardise in float32 (|value| up to {float(np.abs(raw[:, j]).max()):.3g}); rescale "
                          "it, or pass data.standardize=false")
    tasks, ys = [], {}
    for t, y in targets.items():
        y = ys[t] = y.astype(np.float32)  # labels keep the target's units
        kind = kinds[t]
        m, s = target_scale(y, parts[0], t, source) if kind == "regression" and standardize_target else (0.0, 1.0)
        outputs = int(np.nanmax(y)) + 1 if kind == "multiclass" else 1
        tasks.append(Task(t, kind, outputs, shift=m, scale=s))
    splits = [Split({"x": torch.as_tensor(x[p])}, {t: torch.as_tensor(y[p]) for t, y in ys.items()}) for p in parts]
    return MultiTaskData(name, tasks, *splits)


def target_scale(y: np.ndarray, train: np.ndarray, column: str, source: object,
                 table: bool = True) -> tuple[float, float]:
    """(mean, std + 1e-8) of a regression target's labels y (n,) (NaN = missing) on the training rows `train`:
    the shift and scale of the standardised target its model learns. A target without training labels, with
    one value on all of them, or whose mean, std or standardised values overflow float32, is a ConfigError
    whose fix names the keys of a table (table=True) or of a molecule CSV."""
    if np.isnan(y[train]).all():
        raise ConfigError(f"{source}: target column {column!r} has no labels in the training split; add "
                          f"labelled rows or change {'data.split_seed' if table else 'the split (data.split, data.split_seed)'}")
    with np.errstate(over="ignore", invalid="ignore"):
        m, s = float(np.nanmean(y[train])), float(np.nanstd(y[train]) + 1e-8)
        standardised = (y - m) / s
    if s <= 1e-8:
        raise ConfigError(f"{source}: target column {column!r} has one value ({m:g}) on every labelled training row; "
                          "a constant cannot be learnt as a regression: drop the column")
    if not (math.isfinite(m) and math.isfinite(s)) or np.isinf(standardised).any():
        raise ConfigError(f"{source}: target column {column!r} has values too large to standardise in float32; "
                          f"rescale it{', or pass data.standardize_target=false' if table else ' (e.g. to log units)'}")
    return m, s


FRACTIONS_HELP = "train, val and test fractions of the rows (summing to 1)"


@dataclass
class TabularConfig:
    path: str = option("", "a CSV (.csv or .csv.gz) of numbers, with or without a header row")
    target: tuple[str, ...] = option((), "target columns, one task each: header names, or column numbers "
                                     "counted from 1 when the file has no header")
    header: Literal["auto", "true", "false"] = option(
        "auto", "whether the first row names the columns; auto: it does unless every cell of it is a number; "
        "false: the first row is data and columns are named by number from 1 (data.target=3 is the third)")
    kind: Literal["auto", "binary", "multiclass", "regression"] = option(
        "auto", "task kind of every target; auto: binary for 0/1, multiclass for few integers, else regression")
    fractions: tuple[float, ...] = option((0.8, 0.1, 0.1), FRACTIONS_HELP + "; 0.8,0.1,0.1 like the molecule "
                                          "sets", low=0, high=1, min_len=3)
    split_seed: int = option(0, "seed of the random split", low=0)
    standardize: bool = option(True, "standardise the features with the training split's mean and std")
    standardize_target: bool = option(True, "the model learns each regression target standardised with the "
                                       "training split's mean and std (metrics stay in the target's units)")


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def headerless(first: list[str]) -> bool:
    """A first row whose cells are all numbers or blank (at least one a number) is data, not a header."""
    cells = [c.strip() for c in first]
    return any(cells) and all(is_number(c) for c in cells if c)


def plain_rows(path: Path) -> tuple[list[list[str]], list[int]]:
    """(every non-blank row, the first row included, and the file line where each starts) of a CSV, with
    none of a header's checks; an empty or unreadable file is a one-line ConfigError."""
    numbered = list(numbered_rows(path))
    if not numbered:
        raise ConfigError(f"{path} is empty; expected a header row and data rows")
    return [row for _, row in numbered], [line for line, _ in numbered]


def read_rows(path: Path, header: str) -> tuple[list[str], list[list[str]], list[int], bool]:
    """(column names, data rows, the file line of each, whether the names are column numbers because the
    file has no header). header: "true", "false" or "auto" (no header when headerless(first row)); a
    header found missing by "auto" is said in one line."""
    if header == "true":
        return (*read_csv_rows(path), False)
    rows, lines = plain_rows(path)
    if header == "auto" and not headerless(rows[0]):
        return (*read_csv_rows(path), False)
    names = [str(c + 1) for c in range(len(rows[0]))]
    for row, line in zip(rows, lines):
        if len(row) != len(names):
            raise ConfigError(f"{path}, line {line}: {len(row)} fields where the first row has {len(names)}; "
                              "fix the row or quote fields that contain commas")
    if header == "auto":
        shown = ", ".join(c.strip() for c in rows[0][:4]) + (", ..." if len(rows[0]) > 4 else "")
        log.warning("%s has no header row: its first row (%s) is all numbers, so it is read as data and the "
                    "columns are numbered 1..%d (data.target=N names column N; data.header=true reads that row "
                    "as the header)", path.name, shown, len(names))
    return names, rows, lines, True


def read_table(path: Path, targets: tuple[str, ...], header: str = "auto") -> tuple[
        list[str], np.ndarray, dict[str, np.ndarray]]:
    """-> (feature names (d,), features (n, d), {target: labels (n,) with NaN for a blank or nan}); the
    names are column numbers from 1 when the file has no header (see read_rows)."""
    names, rows, lines, numbered = read_rows(path, header)
    if not rows:
        raise ConfigError(f"{path}: needs a header row and at least one data row")
    columns = column_list(names) + (" (numbered from 1: the file has no header row; data.header=true reads its "
                                    "first row as the header)" if numbered else "")
    if not targets:
        raise ConfigError(f"name the target column(s) with data.target=COL[,COL]; columns: {columns}")
    missing = [t for t in targets if t not in names]
    if missing:
        raise ConfigError(f"{path} has no column(s) {missing}; its columns are {columns}")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"data.target names a column twice: {list(targets)}")
    feat = [c for c, h in enumerate(names) if h not in targets]
    if not feat:
        raise ConfigError(f"{path}: no feature columns left besides the targets")
    is_target = [h in targets for h in names]
    hints = ("features must be numbers: encode categorical columns as numbers, fill or drop blank values",
             "labels must be numbers, blank for missing")
    values = np.array([[parse_number(v, path, line, names[c], hints[is_target[c]], missing_ok=is_target[c])
                        for c, v in enumerate(row)] for row, line in zip(rows, lines)], dtype=np.float64)
    return [names[c] for c in feat], values[:, feat], {t: values[:, names.index(t)] for t in targets}


def units_line(data: MultiTaskData, source: object) -> str | None:
    """One line saying which units the regression metrics of `data` are in; None without regression tasks."""
    regression = [t for t in data.tasks if t.kind == "regression"]
    if not regression:
        return None
    names = column_list([t.name for t in regression], most=5)
    scaled = [t for t in regression if (t.shift, t.scale) != (0.0, 1.0)]
    if not scaled:
        return f"{source}: MSE and RMSE of {names} are in the target's own units; the model learns the target as it is"
    shown = "; ".join(f"{t.name}: mean {t.shift:.4g}, std {t.scale:.4g}" for t in scaled[:5])
    return (f"{source}: MSE and RMSE of {names} are in the target's own units; the model learns the standardised "
            f"target (training split {shown}{'; ...' if len(scaled) > 5 else ''}); nrmse is RMSE / std")


@register_dataset("table", TabularConfig, "any numeric CSV: data.path=FILE data.target=COL[,COL]")
def load_table(cfg: TabularConfig) -> MultiTaskData:
    if not cfg.path:
        raise ConfigError("data set 'table' needs a file: pass data.path=my.csv data.target=COL")
    path = Path(cfg.path)
    columns, x, ys = read_table(path, tuple(cfg.target), cfg.header)
    kinds = {t: infer_kind(y) if cfg.kind == "auto" else cfg.kind for t, y in ys.items()}
    for t, y in ys.items():
        check_labels(y, kinds[t], t, path)
    data = table_data(path.name.split(".")[0] or "table", x, ys, kinds, cfg.fractions, cfg.split_seed,
                      cfg.standardize, cfg.standardize_target, columns, path)
    units = units_line(data, path.name)
    if units:
        log.info(units)
    return data


@dataclass
class SklearnTableConfig:
    fractions: tuple[float, ...] = option((0.7, 0.15, 0.15), FRACTIONS_HELP, low=0, high=1, min_len=3)
    split_seed: int = option(0, "seed of the random split", low=0)
    standardize: bool = option(True, "standardise the features with the training split's mean and std")
    standardize_target: bool = option(True, "the model learns the regression target standardised with the "
                                       "training split's mean and std (metrics stay in the target's units)")


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


@dataclass
class SklearnTablesConfig:
    names: tuple[str, ...] = option(("wine", "breast_cancer", "iris"), "scikit-learn tables, one task and input each",
                                    choices=tuple(SKLEARN_TABLES), min_len=1)
    fractions: tuple[float, ...] = option((0.6, 0.2, 0.2), FRACTIONS_HELP, low=0, high=1, min_len=3)
    split_seed: int = option(0, "seed of the random split of every table", low=0)


@register_dataset("sklearn_tables", SklearnTablesConfig,
                  "several of scikit-learn's embedded tables as one multi-input problem (one task and input per table)")
def load_sklearn_tables(cfg: SklearnTablesConfig) -> MultiTaskData:
    """Input and task TABLE for every table of cfg.names: wine (n, 13), breast_cancer (n, 30), iris (n, 4), ..."""
    if len(set(cfg.names)) != len(cfg.names):
        raise ConfigError(f"data.names={','.join(cfg.names)}: name every table once")
    tables = [sklearn_table(name, SklearnTableConfig(tuple(cfg.fractions), cfg.split_seed)) for name in cfg.names]
    return combine(*tables, name="sklearn_tables")
