"""Training throughput of several processes against one, side by side: `manytask train DATA METHOD` in one
process and with nproc=K (torchrun, one process per share of every global minibatch), taking turns.

    .venv/bin/python benchmarks/distributed.py [--data tox21] [--method hard_sharing] [--nproc 2] [--threads 1]
                                               [--epochs 3] [--reps 3] [--device cpu] [KEY=VALUE ...]

Every run trains `--epochs` epochs without early stopping (patience=0) with the same global batch, in a fresh
process, with OMP_NUM_THREADS=--threads per process (so 1 x 1 thread against K x 1 thread by default). The
figure is the run's samples/s (results.json: examples of the training split per second of training time,
validation excluded), the best of --reps runs each, alternating one and K processes. speed-up = K processes /
one. The runs' test AUCs are printed beside them (the same global minibatches: they should agree).
On a machine with fewer free cores than processes the speed-up falls below 1: the processes share cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(args, nproc: int, out: Path) -> dict:
    keys = [f"epochs={args.epochs}", "patience=0", "progress=false", f"device={args.device}", *args.keys]
    command = [sys.executable, "-m", "manytask", "train", args.data, args.method, *keys,
               *([f"nproc={nproc}"] if nproc > 1 else []), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    r = subprocess.run(command, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}): {' '.join(command)}\n{r.stderr[-2000:]}")
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return json.loads((run_dir / "results.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="tox21")
    p.add_argument("--method", default="hard_sharing")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("keys", nargs="*", help="more training or method keys, e.g. batch_size=256")
    args = p.parse_args()
    best = {1: None, args.nproc: None}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for n in best:
                r = run(args, n, Path(tmp) / f"{n}-{rep}")
                sps, auc = r["samples_per_second"], r["mean"]["test"].get("auc", float("nan"))
                print(f"rep {rep}  {n} process(es) x {args.threads} thread(s): {sps:8,.0f} samples/s  "
                      f"test AUC {auc:.4f}", flush=True)
                if best[n] is None or sps > best[n]:
                    best[n] = sps
    one, many = best[1], best[args.nproc]
    print(f"{args.method} on {args.data}, {args.epochs} epochs, device {args.device}: 1 process {one:,.0f} samples/s, "
          f"{args.nproc} processes {many:,.0f} samples/s, speed-up {many / one:.2f}x (cores here: {os.cpu_count()})")


if __name__ == "__main__":
    main()
