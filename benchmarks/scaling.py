"""How each method's cost grows with the number of tasks N and the number of rows R.

For every registered method and every point of two sweeps (N tasks at fixed rows, R rows at fixed N), a
fresh child process loads the synthetic `scale` data set (real SMILES, planted task groups, no download),
builds the method with its defaults, and runs `--steps` training steps (batch 128) after `--warmup`
untimed ones, exactly as Trainer.train_epoch does them (hooks.training_step, then hooks.after_step). It
reports:
- step: mean seconds of a timed step; epoch: step x (training rows / batch), an extrapolation from the
  timed steps, labelled as such;
- peak: the child's peak resident memory (ru_maxrss), which includes the data held in memory;
- data: seconds to load the data set (featurising on a cold cache, reading the cache on a warm one).
The growth exponent of a method is the slope of log(epoch time) (and of log(peak memory)) against log N
(or log R), a least-squares fit over the sweep's points. The parent prints the table, writes a CSV, a
log-log plot and, with --markdown, the table as Markdown.

    .venv/bin/python benchmarks/scaling.py                       # full sweeps: N=12,100,617; R=1e4,1e5,1e6
    .venv/bin/python benchmarks/scaling.py --tasks 4,8 --rows 500,1000 --methods hard_sharing --steps 2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ALL_METHODS = ("hard_sharing", "stl", "icnn", "rsn2", "soft_order", "muir", "evolving")


def measure(method: str, tasks: int, rows: int, steps: int, warmup: int, batch: int, keys: dict[str, str]) -> dict:
    """Runs in the child: load, build, train `warmup + steps` steps -> the figures of one point."""
    from manytask.allocator import tune_allocator
    tune_allocator()
    import torch
    from manytask.registry import get_dataset
    from manytask.runs import build, load_data, resolve
    from manytask.train import Trainer

    t0 = time.perf_counter()
    groups = min(tasks, get_dataset("scale").config().groups)  # the data set's default groups, or one per task
    spec = resolve("scale", method, {"data.n_tasks": str(tasks), "data.rows": str(rows), "data.groups": str(groups),
                                     "batch_size": str(batch), "progress": "false", **keys})
    data = load_data(spec)
    data_s = time.perf_counter() - t0
    model, hooks = build(spec, data)
    trainer = Trainer(model, data, spec.train, hooks)
    model.train()
    hooks.before_training(trainer)
    times: list[float] = []
    batches = trainer.batches("train")
    for i in range(warmup + steps):
        try:
            x, y = next(batches)
        except StopIteration:  # a small data set: start another epoch
            batches = trainer.batches("train")
            x, y = next(batches)
        t = time.perf_counter()
        hooks.training_step(trainer, x, y)
        trainer.step += 1
        hooks.after_step(trainer)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step = float(np.mean(times))
    train_rows = data.split("train").size(data.input_names[0])
    return {"method": method, "tasks": tasks, "rows": rows, "step_s": step,
            "epoch_s": step * math.ceil(train_rows / batch), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "data_s": data_s, "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}


def run_point(method: str, tasks: int, rows: int, args) -> dict:
    """One point in a fresh process, so that peak memory is that point's own."""
    cmd = [sys.executable, __file__, "--child", method, str(tasks), str(rows), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch),
           *[a for k in args.key if k.startswith(method + ":") for a in ("--key", k)]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"method": method, "tasks": tasks, "rows": rows, "error": last}
    return json.loads(done.stdout.strip().splitlines()[-1])


def exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of log y against log x (least squares); NaN with fewer than two points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y and y > 0 and math.isfinite(y)]
    if len(pts) < 2:
        return math.nan
    return float(np.polyfit(*zip(*pts), 1)[0])


def loglog(series: dict[str, tuple[list, list]], path: Path, xlabel: str) -> None:
    """{method: (x, epoch seconds)} as lines on log-log axes, one PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, (x, y) in series.items():
        ax.plot(x, y, marker="o", label=method)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("epoch time (s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--tasks", default="12,100,617", help="N sweep, at --base-rows rows")
    p.add_argument("--rows", default="10000,100000,1000000", help="R sweep, at --base-tasks tasks")
    p.add_argument("--base-rows", type=int, default=10000)
    p.add_argument("--base-tasks", type=int, default=12)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per point")
    p.add_argument("--out", default="scaling", help="folder for scaling.csv and scaling.png")
    p.add_argument("--markdown", default="", help="also write the tables as Markdown to this file")
    p.add_argument("--key", action="append", default=[], metavar="METHOD:KEY=VALUE",
                   help="a method's key at every point, e.g. icnn:widths=32,16 (repeatable)")
    p.add_argument("--child", nargs=3, metavar=("METHOD", "TASKS", "ROWS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        method, tasks, rows = args.child
        keys = dict(k.split(":", 1)[1].split("=", 1) for k in args.key if k.startswith(method + ":"))
        print(json.dumps({**measure(method, int(tasks), int(rows), args.steps, args.warmup, args.batch, keys),
                          "keys": keys}))
        return

    from manytask.report import write_csv

    methods = args.methods.split(",")
    sweeps = {"tasks": [(n, args.base_rows) for n in map(int, filter(None, args.tasks.split(",")))],
              "rows": [(args.base_tasks, r) for r in map(int, filter(None, args.rows.split(",")))]}
    sweeps = {axis: grid for axis, grid in sweeps.items() if grid}  # --tasks "" or --rows "": that sweep is skipped
    points: list[dict] = []
    for axis, grid in sweeps.items():
        for method in methods:
            for tasks, rows in grid:
                t = time.perf_counter()
                point = {**run_point(method, tasks, rows, args), "sweep": axis}
                points.append(point)
                shown = point.get("error") or (f"step {point['step_s'] * 1e3:.1f} ms, epoch {point['epoch_s']:.1f} s, "
                                                f"peak {point['peak_mb']:.0f} MB, data {point['data_s']:.1f} s")
                print(f"{axis:5s} {method:12s} N={tasks:<5d} R={rows:<8d} {shown}  ({time.perf_counter() - t:.0f} s)",
                      flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = ["sweep", "method", "tasks", "rows", "step_s", "epoch_s", "peak_mb", "data_s", "params", "error"]
    write_csv(out / "scaling.csv", keys, [[pt.get(k, "") for k in keys] for pt in points])
    lines = []
    for axis, grid in sweeps.items():
        xs = [g[0] if axis == "tasks" else g[1] for g in grid]
        head = "| method | " + " | ".join(f"{'N' if axis == 'tasks' else 'R'}={x:,}" for x in xs) + \
               " | time exponent | memory exponent |"
        lines += [f"Epoch time (s, extrapolated from {args.steps} timed steps) / peak RSS (MB), "
                  f"{'N tasks at R=' + format(args.base_rows, ',') if axis == 'tasks' else 'R rows at N=' + str(args.base_tasks)}:",
                  "", head, "|" + "---|" * (len(xs) + 3)]
        series = {}
        for method in methods:
            row = [pt for pt in points if pt["sweep"] == axis and pt["method"] == method]
            ok = [pt for pt in row if "error" not in pt]
            xs_ok = [pt[axis] for pt in ok]
            cells = [f"{pt['epoch_s']:.3g} / {pt['peak_mb']:.0f}" if "error" not in pt else "failed" for pt in row]
            t_exp, m_exp = exponent(xs_ok, [pt["epoch_s"] for pt in ok]), exponent(xs_ok, [pt["peak_mb"] for pt in ok])
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {t_exp:.2f} | {m_exp:.2f} |")
            series[method] = (xs_ok, [pt["epoch_s"] for pt in ok])
        lines.append("")
        loglog(series, out / f"scaling_{axis}.png", "tasks N" if axis == "tasks" else "rows R")
    text = "\n".join(lines)
    print("\n" + text)
    failed = [pt for pt in points if "error" in pt]
    for pt in failed:
        print(f"failed: {pt['method']} N={pt['tasks']} R={pt['rows']}: {pt['error']}")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    print(f"wrote {out}/scaling.csv and {out}/scaling_tasks.png, {out}/scaling_rows.png")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
