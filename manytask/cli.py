"""`manytask` console script: list, train, run, evaluate, predict."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .config import ConfigError, split_overrides
from .registry import DATASETS, EXPERIMENTS, METHODS, get_experiment, load_all


def cmd_list(args) -> None:
    load_all()
    for title, table in (("methods", METHODS), ("data sets", DATASETS), ("experiments", EXPERIMENTS)):
        print(f"{title}:")
        width = max(map(len, table)) if table else 0
        for name in sorted(table):
            print(f"  {name.ljust(width)}  {table[name].description}")


def cmd_train(args) -> None:
    from .runs import resolve, train_run
    spec = resolve(args.data, args.method, split_overrides(args.overrides))
    train_run(spec, out=args.out)


def cmd_run(args) -> None:
    entry = get_experiment(args.experiment)
    split_overrides(args.overrides)  # fail on malformed input before creating anything
    from .runs import new_run_dir
    out = new_run_dir(args.out, f"{args.experiment}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        entry.fn(list(args.overrides), out)
    except ConfigError:
        if not any(out.iterdir()):
            out.rmdir()  # nothing was written: leave no empty directory behind
        raise


def cmd_evaluate(args) -> None:
    from .runs import evaluate_run
    _, same = evaluate_run(args.run)
    if not same:
        sys.exit(1)


def cmd_predict(args) -> None:
    from .runs import predict_run
    strings = list(args.smiles)
    if args.file:
        path = Path(args.file)
        if not path.exists():
            raise ConfigError(f"--file {path}: no such file; give a text file with one SMILES per line")
        strings += [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not strings:
        raise ConfigError("nothing to predict: give SMILES as arguments or --file with one per line")
    for s, preds in predict_run(args.run, strings):
        if preds is None:
            print(f"{s}\tinvalid SMILES: RDKit cannot parse it, no prediction")
        else:
            print(s + "\t" + "\t".join(f"{k}={v:.3f}" for k, v in preds.items()))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="manytask", description="Deep multi-task learning: train, compare, predict.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="methods, data sets and experiments").set_defaults(fn=cmd_list)
    t = sub.add_parser("train", help="train one method on one data set: manytask train tox21 hard_sharing seed=0")
    t.add_argument("data")
    t.add_argument("method")
    t.add_argument("overrides", nargs="*", help="key=value: training keys, method keys, data.KEY")
    t.add_argument("--out", default="runs", help="parent of the new run directory (default: runs)")
    t.set_defaults(fn=cmd_train)
    r = sub.add_parser("run", help="run a registered experiment: manytask run demo")
    r.add_argument("experiment")
    r.add_argument("overrides", nargs="*", help="key=value, e.g. seeds=0,1,2 epochs=50")
    r.add_argument("--out", default="runs")
    r.set_defaults(fn=cmd_run)
    e = sub.add_parser("evaluate", help="recompute a run's tables from its saved weights")
    e.add_argument("run")
    e.set_defaults(fn=cmd_evaluate)
    q = sub.add_parser("predict", help="per-task probabilities for new SMILES from a run")
    q.add_argument("run")
    q.add_argument("smiles", nargs="*")
    q.add_argument("--file", help="a text file with one SMILES per line")
    q.set_defaults(fn=cmd_predict)
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="manytask: %(message)s", stream=sys.stderr)
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except ConfigError as e:
        print(f"manytask: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
