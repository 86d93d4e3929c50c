"""Tables and plots from runs: text tables for the terminal, CSV for tools, PNG for people.

Every file a run or an experiment writes besides its weights goes through here. Plots are drawn on a
matplotlib Figure of their own (no pyplot, no global backend), and matplotlib is imported only when a
plot is made."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .files import replacing, write_text


def fmt(v, digits: int = 3) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def text_table(header: Sequence[str], rows: Iterable[Sequence], digits: int = 3, left: int = 1) -> str:
    """Aligned plain-text table; floats to `digits` decimals; the first `left` columns left-aligned, the
    others right-aligned."""
    cells = [list(map(str, header))] + [[fmt(v, digits) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def mean_label(counts: Sequence[int], total: int, metric: str = "") -> str:
    """The label of a mean over tasks that says how many it covers (the tasks with a defined value):
    "mean over 602 of 617 tasks", "mean auc over 12 of 12 tasks"; with a count per column (e.g. split)
    that differ: "mean over 617/610/602 of 617 tasks"."""
    shown = str(counts[0]) if len(set(counts)) == 1 else "/".join(map(str, counts))
    return f"mean{' ' + metric if metric else ''} over {shown} of {total} task{'' if total == 1 else 's'}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for a single value), NaNs skipped."""
    v = np.array([x for x in values if not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def mean_pm(values: Sequence[float], digits: int = 3) -> str:
    """'mean ± std' over seeds (just the value for one seed)."""
    m, s = mean_std(values)
    return f"{fmt(m, digits)} ± {fmt(s, digits)}" if len(values) > 1 else fmt(m, digits)


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired comparison over seeds of a against b (two-sided): mean difference a - b, how many seeds a is
    lower, t-test and Wilcoxon signed-rank p-values. Identical pairs give p = 1 (no evidence of a
    difference); a constant non-zero difference gives t-test p = 0; fewer than 2 pairs give NaN."""
    from scipy import stats  # scipy is imported only by the experiments that report paired tests

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out = {"mean_diff": float(d.mean()) if len(d) else math.nan, "lower_in": int((d < 0).sum()), "seeds": len(d),
           "t_p": math.nan, "wilcoxon_p": math.nan}
    if len(d) < 2:
        return out
    if not np.any(d != 0):
        return {**out, "t_p": 1.0, "wilcoxon_p": 1.0}
    out["t_p"] = 0.0 if np.allclose(d, d[0]) else float(stats.ttest_rel(a, b).pvalue)
    out["wilcoxon_p"] = float(stats.wilcoxon(a, b).pvalue)
    return out


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A CSV file written whole or not at all (files.replacing)."""
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


RESULTS_HEADER = ("contender", "seed", "task", "split", "metric", "value")


def write_results(out: Path, records: Iterable[Sequence], table: str | None = None, summary: dict | None = None) -> None:
    """The one results format: out/results.csv in long format (RESULTS_HEADER), plus out/table.txt (the
    printed table) and out/summary.json when given."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", RESULTS_HEADER, records)
    if table is not None:
        write_text(out / "table.txt", table + "\n")
    if summary is not None:
        write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))


def read_results(path: Path) -> list[tuple]:
    """results.csv (or the directory holding it) -> records (contender, seed, task, split, metric, value)."""
    path = Path(path)
    path = path / "results.csv" if path.is_dir() else path
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != RESULTS_HEADER:
        raise ValueError(f"{path} is not a manytask results.csv (header {','.join(RESULTS_HEADER)})")
    return [(c, int(s), t, sp, m, float(v)) for c, s, t, sp, m, v in rows[1:]]


def _figure(figsize):
    """A matplotlib Figure of its own: no pyplot state, no backend switch."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    return fig


@dataclass
class Matrix:
    """A labelled matrix to show, e.g. a model's mixing weights or connector strengths: write_matrix
    writes NAME.csv (first column the row labels) and NAME.png (a heatmap)."""

    name: str
    values: np.ndarray  # (len(rows), len(cols))
    rows: Sequence[str]
    cols: Sequence[str]
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    fmt_cells: str | None = None  # e.g. ".2f" writes each value in its cell (small matrices only)
    hide_diagonal: bool = False  # the PNG leaves the diagonal blank (e.g. a task's connectors to itself)
    corner: str = ""  # the CSV's first header cell


def write_matrix(out: Path, m: Matrix) -> list[Path]:
    """out/NAME.csv and out/NAME.png of a Matrix -> their paths."""
    csv_path, png_path = Path(out) / f"{m.name}.csv", Path(out) / f"{m.name}.png"
    write_csv(csv_path, (m.corner, *m.cols), [(r, *map(float, row)) for r, row in zip(m.rows, m.values)])
    shown = np.array(m.values, dtype=float)
    if m.hide_diagonal:
        np.fill_diagonal(shown, np.nan)
    heatmap(shown, m.rows, m.cols, png_path, m.title, m.xlabel, m.ylabel, m.fmt_cells)
    return [csv_path, png_path]


MAX_INCHES, MAX_LABELS = 40.0, 80  # a heatmap of 617 tasks stays a figure, not a 12 GB canvas


def heatmap(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: Path, title: str = "",
            xlabel: str = "", ylabel: str = "", fmt_cells: str | None = None) -> None:
    """matrix (len(rows), len(cols)) as an annotated PNG heatmap. At most MAX_INCHES a side: past
    MAX_LABELS rows or columns the labels are left out (the CSV beside the figure names them)."""
    fig = _figure((min(1.0 + 0.55 * len(cols), MAX_INCHES), min(0.8 + 0.45 * len(rows), MAX_INCHES)))
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="viridis", aspect="auto")
    if len(cols) <= MAX_LABELS:
        ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    if len(rows) <= MAX_LABELS:
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if fmt_cells and matrix.size <= 400:
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(j, i, format(matrix[i, j], fmt_cells), ha="center", va="center", fontsize=6, color="w")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: Path, title: str = "",
              xlabel: str = "", ylabel: str = "") -> None:
    """{label: (x, y)} as lines in one PNG."""
    fig = _figure((6, 4))
    ax = fig.subplots()
    for i, (label, (x, y)) in enumerate(series.items()):  # past the 10 colours of the cycle, change the line style
        ax.plot(x, y, marker="o" if len(x) < 20 else None, label=label, linestyle=("-", "--", ":", "-.")[i // 10 % 4])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_history(history: list[dict], path: Path) -> None:
    """Training curves of one run (train and validation loss, and validation metrics) as a PNG."""
    if not history:
        return
    epochs = [r["epoch"] for r in history]
    metrics = [k for k in history[0] if k.startswith("val_") and k != "val_loss"]
    fig = _figure((9, 3.5))
    axes = fig.subplots(1, 2)
    for k in ("train_loss", "val_loss"):
        axes[0].plot(epochs, [r[k] for r in history], label=k)
    for k in metrics:
        axes[1].plot(epochs, [r.get(k, math.nan) for r in history], label=k)
    for ax, title in zip(axes, ("loss", "validation metrics")):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def dot_plot(series: dict[str, Sequence[tuple[float, float]]], categories: Sequence[str], path: Path,
             title: str = "", ylabel: str = "") -> None:
    """{label: [(mean, std) per category]} as dots with std bars, one column per category and the labels
    side by side within it, in one PNG."""
    fig = _figure((1.5 + 0.6 * len(categories) * max(1, len(series)) ** 0.5, 4))
    ax = fig.subplots()
    width = 0.7 / max(1, len(series))
    for i, (label, points) in enumerate(series.items()):
        x = np.arange(len(categories)) - 0.35 + width * (i + 0.5)
        means, stds = np.array(points, dtype=float).reshape(-1, 2).T
        ax.errorbar(x, means, yerr=stds, fmt="o", capsize=3, label=label)
    slanted = len(categories) > 6
    ax.set_xticks(range(len(categories)), categories, rotation=60 if slanted else 0,
                  ha="right" if slanted else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
