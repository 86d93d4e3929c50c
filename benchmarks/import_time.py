"""Import time of manytask against torch's, each measured in fresh interpreters.

    .venv/bin/python benchmarks/import_time.py [--reps 7]

Every repetition starts one interpreter per statement below, in turn, and times the statement inside it
(time.perf_counter around the imports, so the interpreter's own start is not counted):

    torch              import torch
    manytask           import torch; import manytask
    manytask.train     import torch; import manytask.train      (the training loop: a fuller picture)

It prints the median of each and manytask's share, (median(both) - median(torch)) / median(torch). Medians
of separate processes differ by noise of a few percent of torch's time, so the same interpreters also time
the manytask part alone (after torch), which is the precise figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATEMENTS = {"torch": "", "manytask": "import manytask", "manytask.train": "import manytask.train"}
PROBE = ("import json, time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); {}; "
         "t2 = time.perf_counter(); print(json.dumps([t2 - t0, t2 - t1]))")


def time_once(statement: str) -> tuple[float, float]:
    """(seconds of torch plus the statement, seconds of the statement alone) in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", PROBE.format(statement or "pass")], env=env, capture_output=True,
                         text=True, check=True)
    both, alone = json.loads(out.stdout)
    return both, alone


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="interpreters per statement")
    args = ap.parse_args(argv)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in STATEMENTS}
    time_once("import manytask.train")  # warm the file cache so that the first repetition is not slower
    for _ in range(args.reps):
        for name, statement in STATEMENTS.items():
            times[name].append(time_once(statement))
    torch_s = statistics.median(both for both, _ in times["torch"])
    print(f"median of {args.reps} fresh interpreters each, {sys.executable}")
    print(f"{'import':<34} {'median s':>9} {'share of torch':>15} {'alone after torch s':>20} {'alone share':>12}")
    shares = {}
    for name in STATEMENTS:
        both = statistics.median(b for b, _ in times[name])
        alone = statistics.median(a for _, a in times[name])
        label = "torch" if name == "torch" else f"torch + {name}"
        if name == "torch":
            print(f"{label:<34} {both:>9.3f}")
            continue
        shares[name] = alone / torch_s
        print(f"{label:<34} {both:>9.3f} {(both - torch_s) / torch_s:>14.1%} {alone:>20.4f} {alone / torch_s:>11.1%}")
    return shares


if __name__ == "__main__":
    main()
